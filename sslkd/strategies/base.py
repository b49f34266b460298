"""What every distillation strategy is made of: members (backbone + heads + optional EMA teacher) and the
Strategy interface the trainer drives. A strategy owns no loop, optimiser or I/O (DESIGN.md)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Sequence

import torch
from torch import nn
from torch.utils.data import Dataset, Sampler

from sslkd.config import Config, MemberConfig, read_yaml, strategy_options, PACKAGE_CONFIGS
from sslkd.data import DatasetInfo
from sslkd.data.sampling import EpochSampler
from sslkd.data.transforms import MultiCropTransform, scaled_crop_sizes
from sslkd.core.distributed import all_reduce_mean
from sslkd.errors import UserError
from sslkd.core.schedules import ema_momentum
from sslkd.losses.dino import updated_center
from sslkd.losses.precision import loss_precision
from sslkd.models.backbones import build_backbone, frozen_modules
from sslkd.models.teacher import EMATeacher


@dataclass(frozen=True)
class StepInfo:
    """Where training is: every schedule is a function of these (resume-safe)."""

    step: int
    epoch: int
    steps_per_epoch: int
    total_steps: int

    def epochs_to_steps(self, epochs: float) -> int:
        return int(round(epochs * self.steps_per_epoch))


@dataclass(frozen=True)
class Declared:
    """What a strategy declares about one member's parameters (``Strategy.parameter_declarations``), by student
    module name: the modules whose lr stays at its base value (``fixed_lr``), the modules the last-layer freeze holds
    still in the first epochs (``last_layer``), per-module multipliers of the scheduled lr and weight decay
    (``lr_scale``, ``weight_decay_scale``; 0 turns weight decay off), and the modules kept out of training
    (``frozen``: no gradient, in no optimiser group)."""

    fixed_lr: tuple[str, ...] = ()
    last_layer: tuple[str, ...] = ()
    lr_scale: dict[str, float] = field(default_factory=dict)
    weight_decay_scale: dict[str, float] = field(default_factory=dict)
    frozen: tuple[str, ...] = ()


@dataclass
class NoOptions:
    """A strategy without options of its own."""


class Member(nn.Module):
    """One model of a cohort: the student (``backbone`` + named heads) and, optionally, its EMA teacher.

    ``build(drop_path_rate)`` makes a fresh student; the teacher is built the same way without stochastic depth
    (as DINO builds its teacher) and starts from the student's weights. ``ema_teacher``: False (none), True (a
    teacher of the whole student) or the names of the student modules the teacher holds (its EMA pairs; BYOL's
    teacher has the backbone and projector, not the predictor).
    """

    def __init__(self, name: str, cfg: MemberConfig, build: Callable[[float], nn.ModuleDict],
                 ema_teacher: bool | Sequence[str]):
        super().__init__()
        self.name = name
        self.cfg = cfg
        self.student = build(cfg.drop_path_rate)
        self.teacher_modules = list(self.student) if ema_teacher is True else list(ema_teacher or [])
        self.teacher = None
        if ema_teacher is True:
            self.teacher = EMATeacher(self.student, build(0.0))
        elif ema_teacher:
            copy = build(0.0)
            self.teacher = EMATeacher(self.teacher_source(), nn.ModuleDict({k: copy[k] for k in self.teacher_modules}))

    def teacher_source(self) -> nn.Module:
        """The student modules the EMA teacher follows, in the teacher's order."""
        if self.teacher_modules == list(self.student):
            return self.student
        return nn.ModuleDict({k: self.student[k] for k in self.teacher_modules})

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        self.teacher.update(self.teacher_source(), momentum)

    @property
    def backbone(self) -> nn.Module:
        return self.student["backbone"]

    @property
    def kind(self) -> str:
        return self.backbone.kind

    def eval_backbone(self, encoder: str = "teacher") -> nn.Module:
        """The backbone evaluated by k-NN / linear probe: the EMA teacher's for ``teacher`` where there is one (DINO
        protocol), else the student's (``student``: BYOL's and MoCo v3's online encoder)."""
        return self.teacher.module["backbone"] if encoder == "teacher" and self.teacher is not None else self.backbone


def build_member_backbone(cfg: MemberConfig, drop_path_rate: float) -> nn.Module:
    overrides = dict(cfg.backbone_args)
    if drop_path_rate > 0:
        overrides["drop_path_rate"] = drop_path_rate
    return build_backbone(cfg.backbone, small_image_stem=cfg.small_image_stem, **overrides)


class Strategy(nn.Module):
    """Base of every method. Subclasses build ``self.members`` and implement ``forward``.

    ``forward(views, labels, indices, step)`` returns a dict of named scalar losses; ``"loss"`` is the total that
    the trainer back-propagates (members' graphs are disjoint, so one backward equals one per member).
    Non-trainable state (centers, queues) lives in buffers so it is checkpointed with the weights.
    """

    name: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    eval_encoder: ClassVar[str] = "teacher"  # what ``eval.encoder: auto`` evaluates: the method's authors' choice
    # the method's own optimiser defaults, under a member's unset ``optimizer`` fields (DINO clips and freezes)
    optimizer_defaults: ClassVar[dict] = {"clip_grad": 0.0, "freeze_last_layer_epochs": 0}

    def __init__(self, cfg: Config, info: DatasetInfo):
        super().__init__()
        self.cfg = cfg
        self.info = info
        self.options = strategy_options(cfg, self.Options)
        self.members = nn.ModuleDict()
        self._deferred: list[Callable[[], None]] = []

    def add_members(self, heads: Callable[[str, nn.Module, float], dict[str, nn.Module]],
                    ema_teacher: bool | Sequence[str]) -> None:
        """One member per ``members:`` entry: its backbone plus ``heads(name, backbone, drop_path_rate)``, and its
        EMA teacher (see ``Member``)."""
        for name, member_cfg in self.cfg.members.items():
            self.add_member(name, member_cfg, heads, ema_teacher)

    def add_member(self, name: str, member_cfg: MemberConfig, heads: Callable[[str, nn.Module, float], dict[str, nn.Module]],
                   ema_teacher: bool | Sequence[str]) -> None:
        def build(drop_path_rate: float) -> nn.ModuleDict:
            backbone = build_member_backbone(member_cfg, drop_path_rate)
            return nn.ModuleDict({"backbone": backbone, **heads(name, backbone, drop_path_rate)})

        self.members[name] = Member(name, member_cfg, build, ema_teacher)

    def require_members(self, minimum: int) -> None:
        if len(self.cfg.members) < minimum:
            raise UserError(
                f"{self.name} needs at least {minimum} members, the config has {len(self.cfg.members)}; "
                "add one under `members:`"
            )

    @classmethod
    def default_config(cls) -> dict:
        """The raw config `sslkd train --method NAME` runs when no --config is given."""
        return read_yaml(PACKAGE_CONFIGS / f"{cls.name}.yaml")

    def crop_sizes(self) -> tuple[int, int]:
        aug = self.cfg.data.augment
        image_size = self.cfg.data.image_size or self.info.image_size
        default_global, default_local = scaled_crop_sizes(image_size)
        return aug.global_size or default_global, aug.local_size or default_local

    def train_transform(self) -> Callable:
        """Multi-crop views (DINO recipe); strategies with other augmentations override this."""
        aug = self.cfg.data.augment
        global_size, local_size = self.crop_sizes()
        return MultiCropTransform(
            global_size=global_size,
            local_size=local_size,
            n_global=aug.n_global,
            n_local=aug.n_local,
            global_scale=aug.global_scale,
            local_scale=aug.local_scale,
            blur=aug.blur,
            mean=self.info.mean,
            std=self.info.std,
        )

    def train_sampler(self, dataset: Dataset, batch_size: int, seed: int, rank: int, world_size: int) -> Sampler:
        """The order of training items as (index, seed) pairs, one shard per process; a strategy that mines its
        batches (MCL's class-aware batches) overrides this."""
        return EpochSampler(len(dataset), seed, rank=rank, world_size=world_size)

    def forward(self, views: list[torch.Tensor], labels: torch.Tensor, indices: torch.Tensor, step: StepInfo) -> dict[str, torch.Tensor]:
        """One step's named losses: the network passes, then the loss computation on their outputs."""
        return self.losses(self.network_outputs(views), labels, indices, step)

    def network_outputs(self, views: list[torch.Tensor]) -> dict:
        """Every network pass a step needs (students with gradients, teachers without), as a dict of head
        outputs: what ``losses`` consumes. Public so a test or a user can compare against another implementation
        by feeding ``losses`` head outputs of their own."""
        raise NotImplementedError

    def losses(self, outputs: dict, labels: torch.Tensor, indices: torch.Tensor, step: StepInfo) -> dict[str, torch.Tensor]:
        """The named loss terms of one step from ``network_outputs``; ``"loss"`` is the total. State updates
        (centers, queues, banks) are queued with ``defer``, never applied here."""
        raise NotImplementedError

    def parameter_declarations(self, member: str) -> Declared:
        """What the trainer must know about ``member``'s parameters (``Declared``): by default only the backbone
        modules its options freeze (``declare``)."""
        return self.declare(member)

    def declare(self, member: str, **declarations) -> Declared:
        """``Declared(**declarations)`` for ``member``, its ``frozen`` the backbone modules that the member's
        ``backbone_args`` keep out of training (``freeze_patch_embed``: MoCo v3's fixed random patch projection)."""
        frozen = tuple(f"backbone.{module}" for module in frozen_modules(self.members[member].cfg.backbone_args))
        return Declared(frozen=frozen, **declarations)

    def schedule_values(self, step: StepInfo) -> dict[str, float]:
        """Scheduled quantities the losses use at ``step`` (e.g. teacher temperatures per term), logged with the lr."""
        return {}

    def network_passes(self, views: list[torch.Tensor]) -> torch.Tensor:
        """Only the network passes a step of this method needs (students forward, teachers forward) on ``views``,
        reduced to a scalar to back-propagate through the students; ``sslkd bench`` measures the rest as overhead."""
        return sum_of_trained_outputs(self.network_outputs(views))

    def defer(self, update: Callable[[], None]) -> None:
        """Queue a state update computed in ``forward`` (a center, a queue or a bank write). The trainer applies it
        with ``apply_deferred`` only once it accepts the step, so a skipped (non-finite) step leaves no trace."""
        self._deferred.append(update)

    @torch.no_grad()
    def apply_deferred(self) -> None:
        updates, self._deferred = self._deferred, []
        for update in updates:
            update()

    def discard_deferred(self) -> None:
        self._deferred = []

    @torch.no_grad()
    def after_step(self, step: StepInfo) -> None:
        """Called after every accepted optimiser step, once the deferred updates are applied (EMA teachers)."""

    @torch.no_grad()
    def update_teachers(self, step: StepInfo, base_momentum: float) -> None:
        momentum = ema_momentum(step.step, step.total_steps, base_momentum)
        for member in self.members.values():
            if member.teacher is not None:
                member.update_teacher(momentum)

    def member_eval_encoder(self, member: str) -> str:
        """What ``eval.encoder: auto`` evaluates for ``member``: the method's authors' choice (``eval_encoder``)."""
        return self.eval_encoder

    def evaluated_encoder(self, member: str) -> str:
        """``teacher`` or ``student``: the encoder of ``member`` that evaluation uses (``eval.encoder``, ``auto``
        resolved by ``member_eval_encoder``); a member without an EMA teacher always has its student evaluated."""
        choice = self.member_eval_encoder(member) if self.cfg.eval.encoder == "auto" else self.cfg.eval.encoder
        return choice if self.members[member].teacher is not None else "student"

    def eval_backbones(self) -> dict[str, nn.Module]:
        return {name: member.eval_backbone(self.evaluated_encoder(name)) for name, member in self.members.items()}


def sum_of_trained_outputs(outputs) -> torch.Tensor:
    """The mean of every output that carries a gradient, summed over nested dicts, lists, tuples and dataclasses
    (other values are skipped): a scalar whose backward runs every student pass of ``network_outputs``."""
    if isinstance(outputs, torch.Tensor):
        return outputs.float().mean() if outputs.requires_grad else outputs.new_zeros((), dtype=torch.float32)
    if dataclasses.is_dataclass(outputs):
        outputs = [getattr(outputs, f.name) for f in dataclasses.fields(outputs)]
    elif isinstance(outputs, dict):
        outputs = list(outputs.values())
    elif not isinstance(outputs, (list, tuple)):
        return torch.zeros(())
    return sum((sum_of_trained_outputs(value) for value in outputs), torch.zeros(()))


class Centers(nn.Module):
    """DINO's output centers, one per teacher head, keyed "member/head"; buffers, so checkpoints hold them.

    A center belongs to a teacher output: every loss that targets that output centers it the same way (METHODS.md).
    """

    def __init__(self, keys: list[str], dim: int):
        super().__init__()
        for key in keys:
            self.register_buffer(self._buffer_name(key), torch.zeros(1, dim))

    @staticmethod
    def _buffer_name(key: str) -> str:
        return key.replace("/", "__")

    def __getitem__(self, key: str) -> torch.Tensor:
        return getattr(self, self._buffer_name(key))

    @torch.no_grad()
    def update(self, key: str, teacher_logits: torch.Tensor, momentum: float) -> None:
        batch_mean = all_reduce_mean(loss_precision(teacher_logits).mean(dim=0, keepdim=True))
        self[key].copy_(updated_center(self[key], batch_mean, momentum))


def group_by_resolution(views: list[torch.Tensor]) -> list[tuple[int, int, torch.Tensor]]:
    """Concatenate consecutive views of the same size, so each resolution takes one forward pass (DINO).

    Returns (first view index, number of views, batch) per group.
    """
    groups: list[tuple[int, int, torch.Tensor]] = []
    start = 0
    while start < len(views):
        end = start + 1
        while end < len(views) and views[end].shape[-2:] == views[start].shape[-2:]:
            end += 1
        groups.append((start, end - start, torch.cat(views[start:end])))
        start = end
    return groups
