"""MOKD: Multi-mode Online Knowledge Distillation (Bai et al., CVPR 2023), Algorithm 1.

Each member i has a backbone, an MLP-Head (DINO head), a T-Head and an EMA teacher of all three. Its loss is

    L_i = L_sm_i + L_st_i + lambda_i (L_cm_i + L_ct_i)                                          (Eq. 9)

- L_sm (Eq. 2): DINO loss of the student MLP-Head against its own teacher (self-distillation);
- L_st (Eq. 3): the same for the T-Head, with the T-Head teacher's own center;
- L_cm (Eq. 5): the student MLP-Head against the *peer's* EMA teacher MLP-Head (centered with the peer's center);
- L_ct (Eq. 7): the student T-Head against the peer teacher's T-Head output after cross-attention feature search
  (Eq. 6): the student's query token (detached) is prepended to the peer teacher's T-Head tokens.

lambda_i is ``members.<name>.distill_weight`` (Sec. 4.5: 1 and 0.1 for the larger and smaller model; Table 8's
best R50/ViT-S setting is 0.1 for R50 and 1 for ViT-S). All T-Heads share one width ``thead_dim`` (ViT-S blocks:
384, 6 heads), since a query token crosses from one model's head into the other's.
With M > 2 members the cross terms average over peers (the paper has M = 2).

Options for paper/code differences (METHODS.md); the paper-reproduction configs set the code's choice:
- ``feature_search: paper | code``: paper (Eq. 6-7): the query comes from the student's global view a, the peer
  teacher's tokens from the other global view b, and the student output is t_a. code: the query comes from each
  of the student's *local* crops, the peer teacher's tokens from its *first* global crop (repeated per local
  crop), and the student output is its T-Head on that local crop.
- ``self_warmup_teacher_temp_epochs``: per member, the teacher-temperature warm-up of its self terms (the code
  uses 50 epochs for the CNN, 30 for everything else).
- ``detach_search_query``: the code detaches the query token; the paper does not say. The searched output is a
  target, detached inside L_ct, so this changes no gradient: only whether the search keeps the student's graph.
- ``norm_last_layer_per_member`` (DINOOptions): the code builds the ViT's MLP-Head with ``norm_last_layer=False``
  (trainable gain) and the CNN's with True; ``members.<name>.module_optimizers`` (config): the code trains the
  CNN's T-Head in its own parameter group with the ViT's AdamW settings and schedules, e.g.
  ``members.cnn.module_optimizers: {thead: {name: adamw, lr: 3.0e-4, ...}}``.
- ``loss_terms`` (MOKD Table 7): which of sm, st, cm, ct each member's loss keeps (default all four; ``[sm]`` is
  DINO on each member). Terms left out are not computed; without st and ct no T-Head is built or run.
- ``layer_distillation`` (DINOOptions): each member's intermediate blocks also distil its own teacher's MLP-Head
  output the SDSSL way (``sslkd.strategies.layerwise``; L_i gains alpha(t) L_isd_i with L_sm's loss and
  temperature), a combination neither paper runs (zoo_configs/combos/mokd_sdssl_layers.yaml).
- ``center_search_targets`` (a probe, not the paper's or the code's method; default false): L_ct's targets are
  centred as L_st's are, each member's searched targets with their own EMA center (``search_centers``). The code
  centres no searched output; at small scale those targets can collapse onto a few outputs whatever the image
  (``tools/dino_targets.py``), which this tests.
L_ct takes no centering, as in the code, unless ``center_search_targets``. The members' graphs are disjoint (targets
are teachers or detached), so one backward of sum_i L_i equals the code's two backward passes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Literal

import torch
from torch import nn

from sslkd.errors import UserError
from sslkd.losses.dino import dino_loss, feature_search_loss
from sslkd.models.backbones import probing
from sslkd.models.heads import THead
from sslkd.registry import STRATEGIES
from sslkd.strategies.base import Centers, Member, Strategy, group_by_resolution
from sslkd.strategies.dino import (DINO, DINOOptions, check_dino_options, dino_head, dino_layer_heads,
                                   layer_distillation, teacher_temperature)


@dataclass
class MOKDOptions(DINOOptions):
    thead_dim: int = 384
    thead_depth: int = 3
    thead_num_heads: int = 6
    thead_out_dim: int | None = None
    feature_search: Literal["paper", "code"] = "paper"
    detach_search_query: bool = True
    self_warmup_teacher_temp_epochs: dict[str, float] = field(default_factory=dict)
    loss_terms: list[str] = field(default_factory=lambda: list(LOSS_TERMS))
    center_search_targets: bool = False


LOSS_TERMS = ("sm", "st", "cm", "ct")


def token_grid(backbone: nn.Module, size: int) -> tuple[int, int]:
    """The last-stage token grid of ``backbone`` for a square input of ``size`` pixels."""
    with probing(backbone):
        _, _, grid = backbone.forward_tokens(torch.zeros(1, 3, size, size))
    return tuple(grid)


@STRATEGIES.register("mokd")
class MOKD(Strategy):
    name = "mokd"
    Options = MOKDOptions
    optimizer_defaults = DINO.optimizer_defaults

    def __init__(self, cfg, info):
        super().__init__(cfg, info)
        opts = self.options
        self.require_members(2)
        unknown = set(opts.self_warmup_teacher_temp_epochs) - set(cfg.members)
        if unknown:
            raise UserError(
                f"strategy.self_warmup_teacher_temp_epochs names unknown members {sorted(unknown)}; members are {sorted(cfg.members)}"
            )
        warmups = {f"self_warmup_teacher_temp_epochs.{name}": w for name, w in opts.self_warmup_teacher_temp_epochs.items()}
        check_dino_options(opts, cfg.members, {"warmup_teacher_temp_epochs": opts.warmup_teacher_temp_epochs, **warmups})
        if opts.feature_search == "code" and cfg.data.augment.n_local == 0:
            raise UserError("strategy.feature_search=code searches from local crops: set data.augment.n_local > 0")
        unknown_terms = [term for term in opts.loss_terms if term not in LOSS_TERMS]
        if unknown_terms or not opts.loss_terms:
            raise UserError(f"strategy.loss_terms must be a non-empty list of {list(LOSS_TERMS)} (MOKD Table 7), "
                            f"not {opts.loss_terms}")
        self.terms = set(opts.loss_terms)
        self.uses_thead = bool(self.terms & {"st", "ct"})
        self.n_global = cfg.data.augment.n_global
        if self.n_global != 2:
            raise UserError(f"mokd crosses two global views (Eq. 2-7): set data.augment.n_global=2, not {self.n_global}")
        global_size, _ = self.crop_sizes()
        thead_out = opts.thead_out_dim or opts.out_dim

        def heads(name: str, backbone: nn.Module, drop_path_rate: float) -> dict[str, nn.Module]:
            thead = {"thead": THead(
                backbone.token_dim,
                dim=opts.thead_dim,
                depth=opts.thead_depth,
                num_heads=opts.thead_num_heads,
                out_dim=thead_out,
                grid=token_grid(backbone, global_size),
                drop_path_rate=drop_path_rate,
            )} if self.uses_thead else {}
            return {"dino": dino_head(backbone.num_features, opts, name), **thead,
                    **dino_layer_heads(self.layerwise, opts, name, backbone)}

        self.layerwise = layer_distillation(self)
        self.head_names = ["dino", "thead"] if self.uses_thead else ["dino"]
        self.add_members(heads, ema_teacher=self.layerwise.teacher_modules(["backbone", *self.head_names]))
        keys = [f"{name}/dino" for name in self.members]
        self.centers = Centers(keys, opts.out_dim)
        self.thead_centers = Centers([f"{name}/thead" for name in self.members] if "st" in self.terms else [], thead_out)
        self.centred_search = "ct" in self.terms and opts.center_search_targets
        self.search_centers = Centers([f"{name}/search" for name in self.members] if self.centred_search else [],
                                      thead_out)

    def self_teacher_temperature(self, step, name: str) -> float:
        """tau_t of member ``name``'s self terms (the code warms the CNN's up over 50 epochs, the rest over 30)."""
        opts = self.options
        return teacher_temperature(step, opts, opts.self_warmup_teacher_temp_epochs.get(name, opts.warmup_teacher_temp_epochs))

    def losses(self, outputs, labels, indices, step):
        opts = self.options
        students, teachers, searched = outputs["students"], outputs["teachers"], outputs["searched"]
        n_crops = outputs["n_crops"]
        tau_cross = teacher_temperature(step, opts)
        losses: dict[str, torch.Tensor] = {}
        for name, member in self.members.items():
            s, t = students[name], teachers[name]
            tau_self = self.self_teacher_temperature(step, name)
            peers = [p for p in self.members if p != name]
            to_own_teacher = partial(dino_loss, center=self.centers[f"{name}/dino"], n_student_crops=n_crops,
                                     n_teacher_crops=2, student_temp=opts.student_temp, teacher_temp=tau_self)
            terms = {
                "sm": lambda: to_own_teacher(s["mlp"], t["mlp"]),
                "st": lambda: dino_loss(s["thead"], t["thead"], self.thead_centers[f"{name}/thead"], n_crops, 2,
                                        opts.student_temp, tau_self),
                "cm": lambda: sum(
                    dino_loss(s["mlp"], teachers[p]["mlp"], self.centers[f"{p}/dino"], n_crops, 2, opts.student_temp,
                              tau_cross)
                    for p in peers
                ) / len(peers),
                "ct": lambda: sum(
                    feature_search_loss(*searched[name, p], opts.student_temp, tau_cross, self.search_center(name))
                    for p in peers
                ) / len(peers),
            }
            computed = {term: terms[term]() for term in LOSS_TERMS if term in self.terms}
            losses.update({f"{name}/{term}": value for term, value in computed.items()})
            self_terms = sum(computed.get(term, 0.0) for term in ("sm", "st"))
            cross_terms = sum(computed.get(term, 0.0) for term in ("cm", "ct"))
            losses[f"{name}/loss"] = self_terms + member.cfg.distill_weight * cross_terms
            self.layerwise.add_to(losses, name, s["layers"], t["mlp"], to_own_teacher, step)

        for name in self.members:
            self.defer(partial(self.centers.update, f"{name}/dino", teachers[name]["mlp"].detach(), opts.center_momentum))
            if "st" in self.terms:
                self.defer(partial(self.thead_centers.update, f"{name}/thead", teachers[name]["thead"].detach(),
                                   opts.center_momentum))
            if self.centred_search:
                targets = torch.cat([searched[name, p][1].detach() for p in self.members if p != name])
                self.defer(partial(self.search_centers.update, f"{name}/search", targets, opts.center_momentum))
        losses["loss"] = sum(losses[f"{name}/loss"] for name in self.members)
        return losses

    def search_center(self, name: str) -> torch.Tensor | None:
        """The center of member ``name``'s L_ct targets (``center_search_targets``), else None (the code's L_ct)."""
        return self.search_centers[f"{name}/search"] if self.centred_search else None

    def parameter_declarations(self, member):
        """Both heads' last layers are held still in the first epochs (the code freezes every ``last_layer``), and
        so are the layer heads' with layer distillation."""
        return self.declare(member, last_layer=(*(f"{head}.last_layer" for head in self.head_names),
                                                *self.layerwise.last_layers(member)))

    def schedule_values(self, step):
        values = {f"teacher_temp/{name}/self": self.self_teacher_temperature(step, name) for name in self.members}
        values["teacher_temp/cross"] = teacher_temperature(step, self.options)
        if self.layerwise.active:
            values["alpha"] = self.layerwise.weight(step)
        return values

    def network_outputs(self, views):
        """Every network pass a MOKD step needs: students over all crops (one backbone pass per resolution), EMA
        teachers over the global crops, and each peer teacher's T-Head over the searched sequences (Eq. 6).
        ``searched[name, peer]`` is (student T-Head rows, searched peer-teacher output), the pair L_ct compares."""
        batch = views[0].shape[0]
        groups = group_by_resolution(views)
        global_batch = groups[0][2][: 2 * batch]
        students, teachers = {}, {}
        for name, member in self.members.items():
            students[name] = self._student_outputs(name, member.student, groups)
            with torch.no_grad():
                teachers[name] = self._teacher_outputs(member.teacher.module, global_batch)
        searched = {
            (name, peer): self._feature_search(member, students[name], self.members[peer], teachers[peer], batch)
            for name, member in self.members.items()
            for peer in self.members
            if peer != name and "ct" in self.terms
        }
        return {"students": students, "teachers": teachers, "searched": searched, "n_crops": len(views)}

    def after_step(self, step):
        self.update_teachers(step, self.options.momentum_teacher)

    def _student_outputs(self, name: str, student: nn.ModuleDict, groups) -> dict:
        """Both heads over every crop and the pooled features for queries: one backbone and T-Head pass per
        resolution (their token grids differ), one MLP-Head pass over every crop's pooled feature (DINO); with
        layer distillation, each distilled block's head over the same crops, from the same passes."""
        pooled, thead = [], []
        with self.layerwise.capturing(name, student) as captured:
            for _, _, batch in groups:
                feats, tokens, grid = student["backbone"].forward_tokens(batch)
                pooled.append(feats)
                if self.uses_thead:
                    thead.append(student["thead"](tokens, grid))
        pooled = torch.cat(pooled)
        outputs = {"pooled": pooled, "mlp": student["dino"](pooled), "layers": self.layerwise.outputs(name, student, captured)}
        if self.uses_thead:
            outputs["thead"] = torch.cat(thead)
        return outputs

    def _teacher_outputs(self, teacher: nn.ModuleDict, global_batch: torch.Tensor) -> dict[str, torch.Tensor]:
        """Teacher heads on the global crops; the embedded T-Head tokens are kept for the feature search."""
        feats, tokens, grid = teacher["backbone"].forward_tokens(global_batch)
        outputs = {"mlp": teacher["dino"](feats)}
        if self.uses_thead:
            outputs["tokens"] = teacher["thead"].embed(tokens, grid)
        if "st" in self.terms:
            outputs["thead"] = teacher["thead"].head(outputs["tokens"])
        return outputs

    def _feature_search(self, member: Member, s: dict, peer: Member, peer_teacher: dict, batch: int):
        """(student T-Head rows, ``peer``'s teacher T-Head output after feature search (Eq. 6)): the pair L_ct
        (Eq. 7) compares."""
        opts = self.options
        tokens = peer_teacher["tokens"]
        if opts.feature_search == "paper":
            query_rows = slice(0, 2 * batch)
            first, second = tokens[:batch], tokens[batch : 2 * batch]
            tokens = torch.cat([second, first])
        else:
            query_rows = slice(2 * batch, None)
            n_local = s["pooled"].shape[0] // batch - 2
            tokens = tokens[:batch].repeat(n_local, 1, 1)
        query = member.student["thead"].embed_query(s["pooled"][query_rows])
        if opts.detach_search_query:
            query = query.detach()
        return s["thead"][query_rows], peer.teacher.module["thead"].search(query, tokens)
