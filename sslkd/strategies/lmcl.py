"""L-MCL: layer-wise Mutual Contrastive Learning with gated ensemble distillation (paper 002 Sec. 4), M >= 2.

Member m's backbone phi_m has L stages. After each intermediate stage l < L an auxiliary branch r_m^[l] (fresh
copies of the later stages and the final norm, then global average pooling) gives F_m^[l]; F_m^[L] = phi_m(x)
(Eq. 11). Every layer has a projection zeta_m^[l] and a classifier g_m^[l] (Eq. 12); a gate G_m = Linear(L D,
``gate_hidden_dim``)-ReLU-Linear(., L)-softmax over concat(F_m^[1..L]) weights the branch logits into
z_m^ens = sum_l w_m^[l] z_m^[l] (Eq. 16-17). Loss (Eq. 20):

    L = sum_m sum_l CE(z_m^[l], y)                                   task, Eq. (15)
      + sum_m CE(z_m^ens, y)                                         task-G, Eq. (18)
      + T^2 sum_a sum_{b != a} KL(sigma(z_b^ens / T) || sigma(z_a^[L] / T)), z^ens detached, T = 3   Eq. (19)
      + sum_l L_MCL({v_m^[l]}_m)                                     layer-wise MCL, Eq. (13) with Eq. (10)

Contrastive mining and the MCL options are ``mcl``'s (batch-based with the class-aware sampler, or memory-based
with one bank per member and layer). At inference every auxiliary part is dropped: the kept network is the plain
backbone and its final classifier (``classifier_logits``, k-NN, export).

Options (``strategy:``, besides mcl's ``mining``, ``alpha``, ``beta``, ``tau``, ``soft_temperature``, ``embed_dim``,
``embed_hidden_dim``, ``terms``, ``memory``): ``contrast_stages`` (1-based stages whose embeddings enter L-MCL,
default all; MCL Table 8), ``layer_mcl``, ``task_gate``, ``logit_distillation`` (switch Eq. 13, 18 and 19 on/off,
MCL Table 7; without the gate the ensemble is the plain mean, w = 1/L), ``logit_temperature`` (3),
``logit_teachers`` (``peers``: b != a as Eq. 19; ``all``: also the member's own ensemble), ``gate_hidden_dim``
(the paper does not give it; default 128), ``soft_anchor_column`` (as mcl's: ``drop`` the paper's Eq. 8-9,
``keep`` the authors' code), ``pair_weights`` (``none``, default: Eq. 13; ``meta``: the TPAMI code's meta-learned
pair weights, below) and ``meta: {every, inner_steps, lr, momentum, weight_decay, proj_dim}``.

Meta-learned pair weights (``pair_weights: meta``; the authors' ``Sup_MCL_Loss_Meta``, not in the paper). Eq. (13)'s
sum over matching stages becomes a sum over every ordered member pair (a, b), a != b, and every stage pair (k, z):
the two-network MCL loss (Eq. 10 with M = 2) between v_a^[k] and v_b^[z], each anchor's row of every term weighted
by w_i = sigmoid(cos(P_a^[k] F_a^[k]_i, P_b^[z] F_b^[z]_i)), P a per-member, per-stage Linear(D, ``meta.proj_dim``)
(the loss-weight network, head ``pair_weight_proj``). The weights are constants of the training loss. Every
``meta.every`` steps the weight network learns by a look-ahead: ``meta.inner_steps`` SGD steps (momentum, weight
decay, lr ``meta.lr`` on a cosine to 0) of the networks on the weighted MCL loss, then one on the outer objective
(the task cross-entropy of every stage's classifier, as the authors' code steps it once more), and the gradient of
the outer objective after them with respect to the weight network, differentiated through the unrolled steps by
autograd (the soft labels' stop-gradient kept there, as in the authors' reverse pass). It
reaches the weight network through the member's own optimiser (a zero-valued term of the total loss carries it).
Differences from the authors' code: the look-ahead starts from the parameters before this step's update (theirs
after it), on the global step counter (theirs the batch index in the epoch), and uses exact autograd through the
unrolled steps (theirs a hand-written reverse pass over the same unroll); batch-based mining only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from sslkd.core.distributed import all_gather_no_grad, all_gather_with_grad, rank
from sslkd.core.schedules import cosine
from sslkd.errors import UserError
from sslkd.losses.classification import ensemble_distillation
from sslkd.losses.mcl import batch_contrastive_logits, mcl_loss
from sslkd.losses.precision import loss_precision
from sslkd.registry import STRATEGIES
from sslkd.strategies.base import build_member_backbone
from sslkd.strategies.mcl import (
    CohortContrast,
    ContrastOptions,
    check_soft_anchor_column,
    check_terms,
    contrastive_coupling,
    mining_sampler,
)
from sslkd.strategies.mocov2 import Projection
from sslkd.strategies.supervised import SupervisedCohort


@dataclass
class MetaWeightOptions:
    every: int = 50
    inner_steps: int = 2
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5.0e-4
    proj_dim: int = 128


@dataclass
class LMCLOptions(ContrastOptions):
    pair_weights: Literal["none", "meta"] = "none"
    meta: MetaWeightOptions = field(default_factory=MetaWeightOptions)
    contrast_stages: list[int] | None = None
    layer_mcl: bool = True
    task_gate: bool = True
    logit_distillation: bool = True
    logit_temperature: float = 3.0
    logit_teachers: Literal["peers", "all"] = "peers"
    gate_hidden_dim: int = 128


def backbone_stages(backbone: nn.Module) -> tuple[list[nn.Module], list[nn.Module], nn.Module]:
    """(stem modules, stage modules, final norm) of a staged CNN: the CIFAR ResNets/WRNs and ShuffleNets of sslkd,
    or a timm ResNet (conv1-bn1-act1-maxpool, layer1..layer4)."""
    if hasattr(backbone, "stages") and hasattr(backbone, "stem"):
        return [backbone.stem], list(backbone.stages), backbone.head_norm
    model = getattr(backbone, "model", None)
    if model is not None and all(hasattr(model, f"layer{i}") for i in range(1, 5)) and hasattr(model, "conv1"):
        return ([model.conv1, model.bn1, model.act1, model.maxpool],
                [getattr(model, f"layer{i}") for i in range(1, 5)], nn.Identity())
    raise UserError(f"lmcl attaches branches after CNN stages, and {type(backbone).__name__} has no stages it knows; "
                    "use a CIFAR ResNet/WRN, a cifar_shufflenetv2_* or a timm ResNet")


def stage_features(backbone: nn.Module, branches: nn.ModuleList, images: torch.Tensor) -> list[torch.Tensor]:
    """F^[1..L] of one member (MCL Eq. 11): one pass through the stages, each intermediate stage's output also
    through its branch, all globally average-pooled; F^[L] equals the backbone's own pooled feature."""
    stem, stages, head_norm = backbone_stages(backbone)
    x = images
    for module in stem:
        x = module(x)
    features = []
    for index, stage in enumerate(stages):
        x = stage(x)
        if index < len(branches):
            features.append(branches[index](x).mean((-2, -1)))
    features.append(head_norm(x).mean((-2, -1)))
    return features


@STRATEGIES.register("lmcl")
class LMCL(SupervisedCohort):
    name = "lmcl"
    Options = LMCLOptions

    def __init__(self, cfg, info):
        super().__init__(cfg, info)
        opts = self.options
        self.require_members(2)
        check_terms(opts.terms)
        check_soft_anchor_column(opts.soft_anchor_column, opts.mining)
        if opts.pair_weights == "meta" and opts.mining != "batch":
            raise UserError("strategy.pair_weights=meta follows the authors' CIFAR code, which mines its contrastive "
                            "samples in the batch: set strategy.mining=batch or strategy.pair_weights=none")
        if opts.meta.every < 1 or opts.meta.inner_steps < 0:
            raise UserError(f"strategy.meta needs every >= 1 and inner_steps >= 0 (got every={opts.meta.every}, "
                            f"inner_steps={opts.meta.inner_steps})")
        self.build_members()
        depths = {name: len(m.student["branches"]) + 1 for name, m in self.members.items()}
        if len(set(depths.values())) != 1:
            raise UserError(f"lmcl contrasts matching stages, but the members have different numbers of stages "
                            f"{depths}; pair backbones with the same number of stages")
        self.num_stages = next(iter(depths.values()))
        stages = opts.contrast_stages or list(range(1, self.num_stages + 1))
        bad = [s for s in stages if not 1 <= s <= self.num_stages]
        if bad:
            raise UserError(f"strategy.contrast_stages {bad} out of range: the members have stages 1..{self.num_stages}")
        opts.contrast_stages = sorted(set(stages))
        names = list(self.members)
        self.contrasts = nn.ModuleDict({
            str(s): CohortContrast(names, opts.embed_dim, opts.mining, opts.tau, opts.memory, opts.soft_anchor_column)
            for s in opts.contrast_stages
        })

    def member_heads(self, name, backbone):
        opts = self.options
        _, stages, _ = backbone_stages(backbone)
        depth = len(stages)
        branches = nn.ModuleList()
        for index in range(depth - 1):
            fresh = build_member_backbone(self.cfg.members[name], 0.0)
            _, fresh_stages, fresh_norm = backbone_stages(fresh)
            branches.append(nn.Sequential(*fresh_stages[index + 1:], fresh_norm))
        dim, classes = backbone.num_features, self.info.num_classes
        weight_heads = {}
        if opts.pair_weights == "meta":
            weight_heads["pair_weight_proj"] = nn.ModuleList(nn.Linear(dim, opts.meta.proj_dim) for _ in range(depth))
        return {
            **weight_heads,
            "classifier": nn.Linear(dim, classes),
            "embed": Projection(dim, opts.embed_dim, opts.embed_hidden_dim),
            "branches": branches,
            "aux_classifiers": nn.ModuleList(nn.Linear(dim, classes) for _ in range(depth - 1)),
            "aux_embeds": nn.ModuleList(Projection(dim, opts.embed_dim, opts.embed_hidden_dim) for _ in range(depth - 1)),
            "gate": nn.Sequential(nn.Linear(depth * dim, opts.gate_hidden_dim), nn.ReLU(inplace=True),
                                  nn.Linear(opts.gate_hidden_dim, depth)),
        }

    def train_sampler(self, dataset, batch_size, seed, rank, world_size):
        return mining_sampler(self, list(self.contrasts.values()), self.options.mining, dataset, batch_size, seed,
                              rank, world_size)

    def member_outputs(self, student: nn.ModuleDict, images: torch.Tensor) -> dict:
        """Layer features F^[l], logits z^[l], embeddings v^[l], gate weights w and ensemble logits z^ens."""
        features = stage_features(student["backbone"], student["branches"], images)
        classifiers = [*student["aux_classifiers"], student["classifier"]]
        embeds = [*student["aux_embeds"], student["embed"]]
        logits = [loss_precision(g(f)) for g, f in zip(classifiers, features)]
        embeddings = [F.normalize(loss_precision(z(f)), dim=1) for z, f in zip(embeds, features)]
        if self.options.task_gate:
            weights = gate_weights(student["gate"], features)
        else:
            weights = torch.full((images.shape[0], len(features)), 1.0 / len(features), device=images.device,
                                 dtype=logits[0].dtype)
        ensemble = (weights[:, :, None] * torch.stack(logits, dim=1)).sum(dim=1)
        return {"features": features, "logits": logits, "embeddings": embeddings, "weights": weights,
                "ensemble": ensemble}

    def network_outputs(self, views):
        """{"members": {m: member_outputs}} on the one view; with meta-learned pair weights also the "images",
        which the look-ahead of the weight network passes through the networks again."""
        outputs = {"members": {name: self.member_outputs(m.student, views[0]) for name, m in self.members.items()}}
        if self.options.pair_weights == "meta":
            outputs["images"] = views[0]
        return outputs

    def losses(self, outputs, labels, indices, step):
        """MCL Eq. (20): task (15), task-G (18), ensemble distillation (19) and layer-wise MCL (13)."""
        opts = self.options
        members = outputs["members"]
        losses: dict[str, torch.Tensor] = {}
        for name, out in members.items():
            losses[f"{name}/task"] = sum(F.cross_entropy(z, labels) for z in out["logits"])
            if opts.task_gate:
                losses[f"{name}/task_gate"] = F.cross_entropy(out["ensemble"], labels)
        total = sum(losses.values())
        if opts.logit_distillation:
            losses["logit"] = ensemble_distillation(
                {n: out["logits"][-1] for n, out in members.items()}, {n: out["ensemble"] for n, out in members.items()},
                opts.logit_temperature, include_own=opts.logit_teachers == "all")
            total = total + losses["logit"]
        if opts.layer_mcl and opts.pair_weights == "meta":
            with torch.no_grad():
                weights = self.pair_weights(members)
            terms = self.weighted_pair_mcl(members, labels, weights)
            losses.update({f"layer_mcl/{term}": value for term, value in terms.items() if term != "loss"})
            losses["layer_mcl"] = terms["loss"]
            total = total + losses["layer_mcl"]
            if self.training and step.step % opts.meta.every == 0:
                total = total + self.weight_network_hypergradient(outputs["images"], labels, step)
        elif opts.layer_mcl:
            layer_losses = []
            for stage, contrast in self.contrasts.items():
                embeddings = {n: out["embeddings"][int(stage) - 1] for n, out in members.items()}
                mcl = contrastive_coupling(self, contrast, embeddings, labels, indices)
                losses[f"mcl/stage{stage}"] = mcl["loss"]
                layer_losses.append(mcl["loss"])
            losses["layer_mcl"] = sum(layer_losses)
            total = total + losses["layer_mcl"]
        losses["loss"] = total
        return losses

    # ------------------------------------------------------------------------------ meta-learned pair weights
    def pair_weights(self, members: dict[str, dict]) -> dict[tuple[str, int, str, int], torch.Tensor]:
        """w[(a, k, b, z)] = sigmoid(cos(P_a^[k] F_a^[k], P_b^[z] F_b^[z])) per anchor [B], for every ordered pair
        of members a != b and every pair of their stages (the authors' loss-weight network)."""
        projected = {name: [F.normalize(loss_precision(p(f)), dim=1)
                            for p, f in zip(self.members[name].student["pair_weight_proj"], out["features"])]
                     for name, out in members.items()}
        return {(a, k, b, z): torch.sigmoid((pa * pb).sum(dim=1))
                for a in projected for b in projected if a != b
                for k, pa in enumerate(projected[a]) for z, pb in enumerate(projected[b])}

    def weighted_pair_mcl(self, members: dict[str, dict], labels: torch.Tensor,
                          weights: dict[tuple[str, int, str, int], torch.Tensor]) -> dict[str, torch.Tensor]:
        """sum over (a, k, b, z) of the two-network MCL terms (Eq. 2, 5, 8, 9) between v_a^[k] and v_b^[z], each
        anchor's rows weighted by w[(a, k, b, z)]; "loss" = alpha (VCL + ICL) + beta (soft VCL + soft ICL)."""
        opts = self.options
        all_labels = all_gather_no_grad(labels)
        positions = rank() * labels.shape[0] + torch.arange(labels.shape[0], device=labels.device)
        sums: dict[str, torch.Tensor] = {}
        for (a, k, b, z), weight in weights.items():
            anchors = {"a": members[a]["embeddings"][k], "b": members[b]["embeddings"][z]}
            contrast = {key: all_gather_with_grad(v) for key, v in anchors.items()}
            logits = batch_contrastive_logits(anchors, contrast, labels, all_labels, positions, opts.tau,
                                              opts.soft_anchor_column, anchor_weights=weight)
            for term, value in mcl_loss(logits, opts.alpha, opts.beta, opts.soft_temperature, tuple(opts.terms)).items():
                sums[term] = sums[term] + value if term in sums else value
        return sums

    def weight_network_hypergradient(self, images: torch.Tensor, labels: torch.Tensor, step) -> torch.Tensor:
        """One meta-update of the loss-weight network, as a zero-valued term whose gradient with respect to the
        ``pair_weight_proj`` heads is d L_outer(theta') / d phi, theta' the networks after the look-ahead steps
        (module docstring); its value is exactly 0, so the total loss is unchanged."""
        meta = self.options.meta
        weight_params = {n: p for n, p in self.named_parameters() if ".pair_weight_proj." in n}
        network_params = {n: p for n, p in self.named_parameters()
                          if ".student." in n and ".pair_weight_proj." not in n and ".gate." not in n}
        buffers = {n: b.clone() for n, b in self.named_buffers() if ".student." in n}
        lr = cosine(step.step, step.total_steps, meta.lr, 0.0)

        def inner(members: dict[str, dict]) -> torch.Tensor:
            return self.weighted_pair_mcl(members, labels, self.pair_weights(members))["loss"]

        def outer(members: dict[str, dict]) -> torch.Tensor:
            return sum(F.cross_entropy(z, labels) for out in members.values() for z in out["logits"])

        def outputs_with(params: dict[str, torch.Tensor]) -> dict[str, dict]:
            return _call_with(self, {**weight_params, **params, **buffers},
                              lambda: {n: self.member_outputs(m.student, images) for n, m in self.members.items()})

        params, velocity = dict(network_params), None
        for objective in [inner] * meta.inner_steps + [outer]:
            loss = objective(outputs_with(params))
            grads = torch.autograd.grad(loss, list(params.values()), create_graph=True, allow_unused=True)
            grads = [(g if g is not None else torch.zeros_like(p)) + meta.weight_decay * p
                     for g, p in zip(grads, params.values())]
            velocity = grads if velocity is None else [meta.momentum * v + g for v, g in zip(velocity, grads)]
            params = {n: p - lr * v for (n, p), v in zip(params.items(), velocity)}
        hypergradients = torch.autograd.grad(outer(outputs_with(params)), list(weight_params.values()),
                                             allow_unused=True)
        surrogate = sum((p * g.detach()).sum() for p, g in zip(weight_params.values(), hypergradients) if g is not None)
        return surrogate - surrogate.detach()


class _Thunk(nn.Module):
    """Runs a closure over ``root`` under ``torch.func.functional_call``, so the closure sees substituted tensors."""

    def __init__(self, root: nn.Module):
        super().__init__()
        self.root = root

    def forward(self, closure):
        return closure()


def _call_with(root: nn.Module, tensors: dict[str, torch.Tensor], closure):
    """``closure()`` with ``root``'s parameters and buffers named in ``tensors`` replaced (functional, no copy)."""
    return torch.func.functional_call(_Thunk(root), {f"root.{n}": t for n, t in tensors.items()}, (closure,),
                                      strict=False)


def gate_weights(gate: nn.Module, features: list[torch.Tensor]) -> torch.Tensor:
    """w_m = softmax(G_m(concat(F_m^[1..L]))) (MCL Eq. 17): [B, L], each row sums to 1."""
    return F.softmax(loss_precision(gate(torch.cat(features, dim=1))), dim=1)
