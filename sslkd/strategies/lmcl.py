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
(the paper does not give it; default 128). Not offered: the TPAMI code's meta-learned per-pair loss weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from sslkd.errors import UserError
from sslkd.losses.classification import ensemble_distillation
from sslkd.losses.mcl import TERMS, mcl_loss
from sslkd.registry import STRATEGIES
from sslkd.strategies.base import build_member_backbone
from sslkd.strategies.mcl import (
    CohortContrast,
    MemoryOptions,
    Projection,
    check_terms,
    mining_sampler,
)
from sslkd.strategies.supervised import SupervisedCohort


@dataclass
class LMCLOptions:
    mining: Literal["batch", "memory"] = "batch"
    alpha: float = 0.1
    beta: float = 1.0
    tau: float = 0.1
    soft_temperature: float = 3.0
    embed_dim: int = 128
    embed_hidden_dim: int | None = 128
    terms: list[str] = field(default_factory=lambda: list(TERMS))
    memory: MemoryOptions = field(default_factory=MemoryOptions)
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
            str(s): CohortContrast(names, opts.embed_dim, opts.mining, opts.tau, opts.memory) for s in opts.contrast_stages
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
        return {
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
        logits = [g(f).float() for g, f in zip(classifiers, features)]
        embeddings = [F.normalize(z(f).float(), dim=1) for z, f in zip(embeds, features)]
        if self.options.task_gate:
            weights = gate_weights(student["gate"], features)
        else:
            weights = torch.full((images.shape[0], len(features)), 1.0 / len(features), device=images.device)
        ensemble = (weights[:, :, None] * torch.stack(logits, dim=1)).sum(dim=1)
        return {"logits": logits, "embeddings": embeddings, "weights": weights, "ensemble": ensemble}

    def forward(self, views, labels, indices, step):
        opts = self.options
        outputs = {name: self.member_outputs(m.student, views[0]) for name, m in self.members.items()}
        losses: dict[str, torch.Tensor] = {}
        for name, out in outputs.items():
            losses[f"{name}/task"] = sum(F.cross_entropy(z, labels) for z in out["logits"])
            if opts.task_gate:
                losses[f"{name}/task_gate"] = F.cross_entropy(out["ensemble"], labels)
        total = sum(losses.values())
        if opts.logit_distillation:
            losses["logit"] = ensemble_distillation(
                {n: out["logits"][-1] for n, out in outputs.items()}, {n: out["ensemble"] for n, out in outputs.items()},
                opts.logit_temperature, include_own=opts.logit_teachers == "all")
            total = total + losses["logit"]
        if opts.layer_mcl:
            layer_losses = []
            for stage, contrast in self.contrasts.items():
                embeddings = {n: out["embeddings"][int(stage) - 1] for n, out in outputs.items()}
                mcl = mcl_loss(contrast.logits(embeddings, labels, indices), opts.alpha, opts.beta,
                               opts.soft_temperature, tuple(opts.terms))
                contrast.write(embeddings, indices)
                losses[f"mcl/stage{stage}"] = mcl["loss"]
                layer_losses.append(mcl["loss"])
            losses["layer_mcl"] = sum(layer_losses)
            total = total + losses["layer_mcl"]
        losses["loss"] = total
        return losses

    def network_passes(self, views):
        total = 0.0
        for member in self.members.values():
            out = self.member_outputs(member.student, views[0])
            total = total + out["ensemble"].mean() + sum(v.mean() for v in out["embeddings"])
        return total


def gate_weights(gate: nn.Module, features: list[torch.Tensor]) -> torch.Tensor:
    """w_m = softmax(G_m(concat(F_m^[1..L]))) (MCL Eq. 17): [B, L], each row sums to 1."""
    return F.softmax(gate(torch.cat(features, dim=1)).float(), dim=1)
