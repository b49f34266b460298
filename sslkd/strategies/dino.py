"""DINO (Caron et al., 2021): self-distillation with no labels; MOKD's independent baseline (MOKD Table 1).

Each member is trained alone: student over all crops, EMA teacher over the global crops, DINO loss with
centering and sharpening (MOKD Eq. 2 is this loss with two views).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch

from sslkd.engine.schedules import linear_warmup_then_constant
from sslkd.losses.dino import dino_loss
from sslkd.models.heads import DINOHead
from sslkd.registry import STRATEGIES
from sslkd.strategies.base import Centers, StepInfo, Strategy, group_by_resolution


@dataclass
class DINOOptions:
    out_dim: int = 65536
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    norm_last_layer: bool = True
    momentum_teacher: float = 0.996
    student_temp: float = 0.1
    warmup_teacher_temp: float = 0.04
    teacher_temp: float = 0.07
    warmup_teacher_temp_epochs: float = 30
    center_momentum: float = 0.9


def teacher_temperature(step: StepInfo, warmup_epochs: float, start: float, end: float) -> float:
    return linear_warmup_then_constant(step.step, step.epochs_to_steps(warmup_epochs), start, end)


def dino_head(in_dim: int, options) -> DINOHead:
    return DINOHead(in_dim, options.out_dim, options.hidden_dim, options.bottleneck_dim, norm_last_layer=options.norm_last_layer)


@STRATEGIES.register("dino")
class DINO(Strategy):
    """Every member trains independently with DINO; a run with one member is the usual baseline."""

    name = "dino"
    Options = DINOOptions

    def __init__(self, cfg, info):
        super().__init__(cfg, info)
        opts = self.options
        self.add_members(lambda name, backbone, rate: {"dino": dino_head(backbone.num_features, opts)}, ema_teacher=True)
        self.centers = Centers([f"{name}/dino" for name in self.members], opts.out_dim)

    def forward(self, views, labels, indices, step):
        opts = self.options
        n_global = self.cfg.data.augment.n_global
        tau_t = teacher_temperature(step, opts.warmup_teacher_temp_epochs, opts.warmup_teacher_temp, opts.teacher_temp)
        losses: dict[str, torch.Tensor] = {}
        for name, (student_logits, teacher_logits) in self._network_passes(views).items():
            losses[f"{name}/loss"] = dino_loss(
                student_logits, teacher_logits, self.centers[f"{name}/dino"], len(views), n_global, opts.student_temp, tau_t
            )
            self.defer(partial(self.centers.update, f"{name}/dino", teacher_logits.detach(), opts.center_momentum))
        losses["loss"] = sum(losses[f"{name}/loss"] for name in self.members)
        return losses

    def _network_passes(self, views) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per member: the student head over every crop (one backbone pass per resolution), the EMA teacher's
        over the global crops."""
        groups = group_by_resolution(views)
        global_batch = groups[0][2][: self.cfg.data.augment.n_global * views[0].shape[0]]
        outputs = {}
        for name, member in self.members.items():
            student = member.student
            student_logits = torch.cat([student["dino"](student["backbone"](batch)) for _, _, batch in groups])
            with torch.no_grad():
                teacher = member.teacher.module
                outputs[name] = student_logits, teacher["dino"](teacher["backbone"](global_batch))
        return outputs

    def network_passes(self, views):
        return sum(student.float().mean() for student, _ in self._network_passes(views).values())

    def after_step(self, step):
        self.update_teachers(step, self.options.momentum_teacher)
