"""Objectives and the independent coupling (issue 15): what one member learns from on its own, behind one interface.

An objective gives a member
- its heads (``heads``), built on the member's backbone;
- its EMA pairs (``teacher_modules``): the student modules its momentum teacher follows (none: no teacher), and the
  teacher's momentum (``teacher_momentum``);
- its views (``views``): the augmentation recipe of its paper;
- its network passes on two views (``embed``) and its loss on them (``loss``);
- state of its own that the coupling holds and checkpoints (``build_state``: MoCo v2's queues), which its loss reads
  (``member_loss``) and updates only through ``Strategy.defer``.

A coupling combines the members of a cohort. ``Independent`` is the trivial one: every member trains alone with the
objective, so a one-member run is the objective's baseline (``simclr``, ``simsiam``, ``byol``, ``mocov3`` are this
coupling over their objective; ``mocov2`` is it over MoCo v2, an objective with state: its queues). DoGo couples
peers that each have any objective registered here (``OBJECTIVES``).
The multi-crop objective of DINO (and MOKD, which builds on it) and the supervised cross-entropy of MCL's cohorts
keep their own strategies: their couplings (MOKD's cross-distillation, DML/MCL's contrast) are defined for them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar

import torch
from torch import nn

from sslkd.core.schedules import ema_momentum
from sslkd.strategies.base import Declared, Strategy


@dataclass
class PairOutputs:
    """One member's outputs on its two views: student projections ``z``, student predictions ``p`` (SimSiam, BYOL,
    MoCo v3) and the EMA teacher's projections ``k`` (BYOL, MoCo v3; computed without gradient)."""

    z: tuple[torch.Tensor, torch.Tensor]
    p: tuple[torch.Tensor, torch.Tensor] | None = None
    k: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def own(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The student's own embeddings of the two views, what a coupling compares across members: predictions
        where it has them (DoGo Sec. 4.7 uses a SimSiam peer's predictions), else projections."""
        return self.p if self.p is not None else self.z


class Objective:
    """A member's own self-supervised objective on two views. ``options`` is the objective's options dataclass
    (``Options``), as the ``strategy:`` block of its baseline gives it."""

    name: ClassVar[str] = ""
    Options: ClassVar[type]
    teacher_modules: ClassVar[tuple[str, ...]] = ()
    eval_encoder: ClassVar[str] = "student"

    def __init__(self, options):
        self.options = options

    def heads(self, in_dim: int) -> dict[str, nn.Module]:
        raise NotImplementedError

    def views(self, strategy: Strategy, n_views: int) -> Callable:
        """``n_views`` views per image in the objective's recipe at ``strategy``'s crop size."""
        raise NotImplementedError

    def embed(self, student: nn.ModuleDict, teacher: nn.ModuleDict | None, view_a: torch.Tensor,
              view_b: torch.Tensor) -> PairOutputs:
        raise NotImplementedError

    def loss(self, outputs: PairOutputs) -> torch.Tensor:
        raise NotImplementedError

    def build_state(self, members: nn.ModuleDict) -> dict[str, nn.Module]:
        """Modules of state the objective keeps per member (none by default), which the coupling holds, and so
        checkpoints, under these names."""
        return {}

    def member_loss(self, strategy: Strategy, member: str, outputs: PairOutputs) -> torch.Tensor:
        """``member``'s loss on its outputs: ``loss``, unless the objective reads state of its own, whose update it
        then queues with ``strategy.defer`` (applied once the trainer accepts the step)."""
        return self.loss(outputs)

    def fixed_lr_modules(self) -> tuple[str, ...]:
        """Heads whose lr stays at the base value through training (SimSiam's predictor, optionally)."""
        return ()

    def teacher_momentum(self) -> float:
        """Base momentum of the EMA teacher (cosine to 1 over training); only asked when ``teacher_modules``."""
        return self.options.momentum_teacher

    def teacher_momentum_end(self) -> float:
        """Momentum the cosine reaches at the end of training: 1 (BYOL, MoCo v3), or the objective's own."""
        return 1.0


def teacher_module(member) -> nn.ModuleDict | None:
    return member.teacher.module if member.teacher is not None else None


def update_teacher(strategy: Strategy, member: str, objective: Objective, step) -> None:
    """One EMA step of ``member``'s teacher at its objective's momentum schedule (no-op without a teacher)."""
    if strategy.members[member].teacher is not None:
        momentum = ema_momentum(step.step, step.total_steps, objective.teacher_momentum(),
                                objective.teacher_momentum_end())
        strategy.members[member].update_teacher(momentum)


class Independent(Strategy):
    """Every member trains alone with the class's ``Objective``; one member is the usual baseline."""

    Objective: ClassVar[type[Objective]]

    def __init__(self, cfg, info):
        super().__init__(cfg, info)
        self.objective = self.Objective(self.options)
        self.add_members(lambda name, backbone, rate: self.objective.heads(backbone.num_features),
                         ema_teacher=self.objective.teacher_modules)
        for attribute, module in self.objective.build_state(self.members).items():
            self.add_module(attribute, module)

    def member_eval_encoder(self, member: str) -> str:
        return self.objective.eval_encoder

    def parameter_declarations(self, member: str) -> Declared:
        return self.declare(member, fixed_lr=self.objective.fixed_lr_modules())

    def train_transform(self) -> Callable:
        return self.objective.views(self, 2)

    def network_outputs(self, views) -> dict[str, PairOutputs]:
        """Every member's head outputs on the two views, keyed by member name."""
        return {name: self.objective.embed(member.student, teacher_module(member), views[0], views[1])
                for name, member in self.members.items()}

    def losses(self, outputs: dict[str, PairOutputs], labels, indices, step) -> dict[str, torch.Tensor]:
        """``<member>/loss``: each member's own objective on its outputs; ``loss``: their sum."""
        losses = {f"{name}/loss": self.objective.member_loss(self, name, out) for name, out in outputs.items()}
        losses["loss"] = sum(losses.values())
        return losses

    def after_step(self, step):
        for name in self.members:
            update_teacher(self, name, self.objective, step)
