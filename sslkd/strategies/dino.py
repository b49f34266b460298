"""DINO (Caron et al., 2021): self-distillation with no labels; MOKD's independent baseline (MOKD Table 1).

Each member is trained alone: student over all crops, EMA teacher over the global crops, DINO loss with
centering and sharpening (MOKD Eq. 2 is this loss with two views).

Options beyond the paper's text (METHODS.md):
- ``teacher_temp_schedule``: ``per_epoch`` (default) is the DINO code's ``linspace(warmup_teacher_temp,
  teacher_temp, W)`` indexed by the epoch (constant within an epoch, final value at epoch W-1, W an integer);
  ``per_step`` ramps linearly over the steps of W epochs (W may be fractional, for short proxy runs).
- ``use_bn_in_head``: BatchNorm in the head's MLP (the authors' ``DINOHead(use_bn=...)``; off in their configs).
- ``norm_last_layer_per_member``: ``norm_last_layer`` of one member's head (the MOKD code builds the ViT's with
  False and the CNN's with True).
- ``layer_distillation``: SDSSL's layer-wise self-distillation over DINO (``sslkd.strategies.layerwise``): each
  chosen intermediate block gets a DINO head whose output learns the teacher's centred, sharpened target as the
  final head's does (SDSSL Eq. 3-4 with DINO's loss). A combination neither paper runs
  (zoo_configs/combos/sdssl_dino.yaml).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Literal

import torch

from sslkd.core.schedules import linear_warmup_then_constant, per_epoch_warmup_then_constant
from sslkd.errors import UserError
from sslkd.losses.dino import dino_loss
from sslkd.models.heads import DINOHead
from sslkd.registry import STRATEGIES
from sslkd.strategies.base import Centers, StepInfo, Strategy, group_by_resolution
from sslkd.strategies.layerwise import LayerDistillation, LayerDistillationOptions


@dataclass
class DINOOptions:
    out_dim: int = 65536
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    norm_last_layer: bool = True
    norm_last_layer_per_member: dict[str, bool] = field(default_factory=dict)
    use_bn_in_head: bool = False
    momentum_teacher: float = 0.996
    student_temp: float = 0.1
    warmup_teacher_temp: float = 0.04
    teacher_temp: float = 0.07
    warmup_teacher_temp_epochs: float = 30
    teacher_temp_schedule: Literal["per_epoch", "per_step"] = "per_epoch"
    center_momentum: float = 0.9
    layer_distillation: LayerDistillationOptions | None = None


def teacher_temperature(step: StepInfo, options: DINOOptions, warmup_epochs: float | None = None) -> float:
    """tau_t at ``step`` under ``options`` (warm-up of ``warmup_epochs``, default the options' own)."""
    warmup = options.warmup_teacher_temp_epochs if warmup_epochs is None else warmup_epochs
    if options.teacher_temp_schedule == "per_epoch":
        return per_epoch_warmup_then_constant(step.epoch, int(warmup), options.warmup_teacher_temp, options.teacher_temp)
    return linear_warmup_then_constant(step.step, step.epochs_to_steps(warmup), options.warmup_teacher_temp, options.teacher_temp)


def check_dino_options(options: DINOOptions, members, warmups: dict[str, float]) -> None:
    """Per-epoch warm-ups index linspace by the epoch, so they need whole epochs; per-member settings need members."""
    unknown = set(options.norm_last_layer_per_member) - set(members)
    if unknown:
        raise UserError(f"strategy.norm_last_layer_per_member names unknown members {sorted(unknown)}; members are {sorted(members)}")
    if options.teacher_temp_schedule == "per_epoch":
        for key, epochs in warmups.items():
            if epochs != int(epochs):
                raise UserError(
                    f"strategy.{key}={epochs}: the per-epoch teacher-temperature warm-up needs whole epochs; "
                    "round it, or set strategy.teacher_temp_schedule=per_step"
                )


def dino_head(in_dim: int, options: DINOOptions, member: str, hidden_dim: int | None = None) -> DINOHead:
    """``member``'s DINO head on features of width ``in_dim`` (``hidden_dim``: the options' unless given)."""
    norm_last_layer = options.norm_last_layer_per_member.get(member, options.norm_last_layer)
    return DINOHead(in_dim, options.out_dim, hidden_dim or options.hidden_dim, options.bottleneck_dim,
                    norm_last_layer=norm_last_layer, use_bn=options.use_bn_in_head)


def layer_distillation(strategy: Strategy) -> LayerDistillation:
    """The layer-wise distillation of a DINO-based strategy (``strategy.layer_distillation``; none when absent)."""
    return LayerDistillation(strategy.options.layer_distillation, strategy.crop_sizes()[0])


def dino_layer_heads(layers: LayerDistillation, options: DINOOptions, member: str, backbone) -> dict:
    """One DINO head per distilled block of ``member`` (none without layer distillation)."""
    return layers.heads(member, backbone, lambda width, hidden: dino_head(width, options, member, hidden))


@STRATEGIES.register("dino")
class DINO(Strategy):
    """Every member trains independently with DINO; a run with one member is the usual baseline."""

    name = "dino"
    Options = DINOOptions
    optimizer_defaults = {"clip_grad": 3.0, "freeze_last_layer_epochs": 1}  # DINO's clip_grad, freeze_last_layer

    def __init__(self, cfg, info):
        super().__init__(cfg, info)
        opts = self.options
        check_dino_options(opts, cfg.members, {"warmup_teacher_temp_epochs": opts.warmup_teacher_temp_epochs})
        self.layerwise = layer_distillation(self)
        self.add_members(lambda name, backbone, rate: {"dino": dino_head(backbone.num_features, opts, name),
                                                       **dino_layer_heads(self.layerwise, opts, name, backbone)},
                         ema_teacher=self.layerwise.teacher_modules(["backbone", "dino"]))
        self.centers = Centers([f"{name}/dino" for name in self.members], opts.out_dim)

    def network_outputs(self, views):
        """Per member: the student head over every crop (one backbone pass per resolution, globals first, then
        one head pass over all their features, as DINO's MultiCropWrapper: head batch-norm sees every crop), the
        EMA teacher's head over the global crops; with layer distillation, each distilled block's head over the
        same crops (``layers``, from the same backbone passes)."""
        groups = group_by_resolution(views)
        global_batch = groups[0][2][: self.cfg.data.augment.n_global * views[0].shape[0]]
        outputs = {}
        for name, member in self.members.items():
            student = member.student
            with self.layerwise.capturing(name, student) as captured:
                student_logits = student["dino"](torch.cat([student["backbone"](batch) for _, _, batch in groups]))
            with torch.no_grad():
                teacher = member.teacher.module
                teacher_logits = teacher["dino"](teacher["backbone"](global_batch))
            outputs[name] = {"student": student_logits, "teacher": teacher_logits, "n_crops": len(views),
                             "layers": self.layerwise.outputs(name, student, captured)}
        return outputs

    def losses(self, outputs, labels, indices, step):
        opts = self.options
        tau_t = teacher_temperature(step, opts)
        losses: dict[str, torch.Tensor] = {}
        for name, out in outputs.items():
            key = f"{name}/dino"
            to_teacher = partial(dino_loss, center=self.centers[key], n_student_crops=out["n_crops"],
                                 n_teacher_crops=self.cfg.data.augment.n_global, student_temp=opts.student_temp,
                                 teacher_temp=tau_t)
            losses[f"{name}/loss"] = to_teacher(out["student"], out["teacher"])
            self.layerwise.add_to(losses, name, out["layers"], out["teacher"], to_teacher, step)
            self.defer(partial(self.centers.update, key, out["teacher"].detach(), opts.center_momentum))
        losses["loss"] = sum(losses[f"{name}/loss"] for name in outputs)
        return losses

    def parameter_declarations(self, member):
        return self.declare(member, last_layer=("dino.last_layer", *self.layerwise.last_layers(member)))

    def schedule_values(self, step):
        values = {"teacher_temp": teacher_temperature(step, self.options)}
        if self.layerwise.active:
            values["alpha"] = self.layerwise.weight(step)
        return values

    def after_step(self, step):
        self.update_teachers(step, self.options.momentum_teacher)
