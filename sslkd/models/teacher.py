"""EMA teacher: a parameter-wise exponential moving average of a student, updated with fused multi-tensor ops."""

from __future__ import annotations

import torch
from torch import nn


class EMATeacher(nn.Module):
    """Holds the momentum copy of ``student``; never receives gradients.

    The copy is built by the caller (so it can differ in stochastic depth, as DINO's teacher has no drop-path) and
    starts from the student's weights. Buffers (BN running stats) are the teacher's own, as in DINO.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module):
        super().__init__()
        teacher.load_state_dict(student.state_dict())
        teacher.requires_grad_(False)
        self.module = teacher
        self._param_lists: tuple[list, list] | None = None

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    @torch.no_grad()
    def update(self, student: nn.Module, momentum: float) -> None:
        """teacher = momentum * teacher + (1 - momentum) * student, for every parameter (one fused op)."""
        if self._param_lists is None:
            self._param_lists = (list(self.module.parameters()), list(student.parameters()))
        teacher_params, student_params = self._param_lists
        torch._foreach_lerp_(teacher_params, student_params, 1.0 - momentum)
