"""BYOL (Grill et al., 2020) as SDSSL trains it: the BYOL baseline of SDSSL Table 1.

Each member trains alone: backbone + projector (3-layer MLP) + predictor (2-layer MLP), and an EMA teacher of the
backbone and projector only (the teacher has no predictor; momentum cosine 0.996 -> 1 per iteration). With views
x1, x2, student predictions q and teacher projections z:

    L = L_ssl(q1, z2) + L_ssl(q2, z1),   L_ssl(q, z) = 2 - 2 cos(q, sg(z))                      (SDSSL Eq. 1)

MLP heads (SDSSL Sec. 4.1, the authors' MoCo v3-style ``MLP``): Linear (no bias)-BN-ReLU per hidden layer, then a
Linear (no bias) to ``out_dim``, followed by a BatchNorm without affine parameters on every output layer *except
BYOL's* (``last_bn``: False here, True for MoCo v3). Widths: hidden 4096, out 256.

Views: BYOL's asymmetric augmentation (``byol_views``): RandomResizedCrop (0.08, 1) bicubic, flip, colour jitter
(0.4, 0.4, 0.2, 0.1) p=0.8, grayscale 0.2, blur p=1.0 / 0.1 and solarise p=0 / 0.2 on the two views. Of
``data.augment`` only ``global_size`` (the crop size) and ``blur`` (false: no blur on either view) are read.

Options (``strategy:``): ``proj_hidden_dim``, ``pred_hidden_dim``, ``out_dim``, ``last_bn``, ``momentum_teacher``,
``concat_views`` (False: one pass per view, as BYOL's and the SDSSL code; True: one pass over both views
concatenated, batch-norm statistics over 2N).

Evaluation: the online (student) encoder by default (``eval.encoder: auto``), as BYOL's protocol does.

``MomentumSSL`` is the skeleton shared with ``mocov3`` (and reused by ``sdssl``): the class's ``pair_loss`` is the
objective; ``momentum_members`` builds members whose EMA teacher holds only the heads the teacher needs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torchvision.transforms import v2

from sslkd.data.transforms import SimCLRTransform
from sslkd.core.schedules import ema_momentum
from sslkd.losses.sdssl import byol_loss
from sslkd.models.teacher import EMATeacher
from sslkd.registry import STRATEGIES
from sslkd.strategies.base import Member, Strategy, build_member_backbone


@dataclass
class BYOLOptions:
    proj_hidden_dim: int = 4096
    pred_hidden_dim: int = 4096
    out_dim: int = 256
    last_bn: bool = False
    momentum_teacher: float = 0.996
    concat_views: bool = False


class MLPHead(nn.Sequential):
    """SDSSL's projector / predictor: ``num_layers`` Linear layers without bias; BN + ReLU after each hidden one;
    with ``last_bn`` a BatchNorm without affine parameters on the output (SimCLR's design, as MoCo v3 has it)."""

    def __init__(self, num_layers: int, in_dim: int, out_dim: int, hidden_dim: int, last_bn: bool):
        layers: list[nn.Module] = []
        for i in range(num_layers):
            last = i == num_layers - 1
            layers.append(nn.Linear(in_dim if i == 0 else hidden_dim, out_dim if last else hidden_dim, bias=False))
            if not last:
                layers += [nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True)]
            elif last_bn:
                layers.append(nn.BatchNorm1d(out_dim, affine=False))
        super().__init__(*layers)


def byol_views(strategy: Strategy) -> SimCLRTransform:
    """BYOL's two asymmetric views (also MoCo v3's and SDSSL's) at the training crop size; ``data.augment.blur``
    false drops the blur (the CIFAR recipes of solo-learn and lightly), keeping the asymmetric solarisation."""
    size, _ = strategy.crop_sizes()
    blur_p = (1.0, 0.1) if strategy.cfg.data.augment.blur else 0.0
    return SimCLRTransform(size, scale=(0.08, 1.0), jitter=(0.4, 0.4, 0.2, 0.1), jitter_p=0.8, gray_p=0.2,
                           blur_p=blur_p, solarize_p=(0.0, 0.2), mean=strategy.info.mean, std=strategy.info.std,
                           interpolation=v2.InterpolationMode.BICUBIC)


def momentum_members(strategy: Strategy, heads: Callable[[nn.Module], dict[str, nn.Module]],
                     teacher_keys: list[str] | None) -> dict[str, nn.ModuleDict]:
    """One member per ``members:`` entry (backbone + ``heads(backbone)``) and, when ``teacher_keys`` is given, an
    EMA teacher holding only those modules (e.g. backbone + final projector: BYOL's and MoCo v3's teacher has no
    predictor, SDSSL's no intermediate heads). The teacher is built without stochastic depth, from the student's
    weights. Returns, per member, the student modules the teacher follows (for ``MomentumSSL.update_teachers``)."""
    sources = {}
    for name, member_cfg in strategy.cfg.members.items():
        def build(drop_path_rate: float, member_cfg=member_cfg) -> nn.ModuleDict:
            backbone = build_member_backbone(member_cfg, drop_path_rate)
            return nn.ModuleDict({"backbone": backbone, **heads(backbone)})

        member = Member(name, member_cfg, build, ema_teacher=False)
        if teacher_keys is not None:
            copy = build(0.0)
            sources[name] = nn.ModuleDict({k: member.student[k] for k in teacher_keys})
            member.teacher = EMATeacher(sources[name], nn.ModuleDict({k: copy[k] for k in teacher_keys}))
        strategy.members[name] = member
    return sources


@dataclass
class MomentumOutputs:
    """One member's head outputs on the two views: student predictions q and teacher projections z."""

    q: list[torch.Tensor]
    z: list[torch.Tensor]


def view_passes(network: Callable[[torch.Tensor], torch.Tensor], views: list[torch.Tensor],
                concat: bool) -> list[torch.Tensor]:
    """``network`` on each view: one pass per view (batch-norm statistics over each view's N rows, MoCo v3's and
    BYOL's code), or, with ``concat``, one pass over the views concatenated, split back per view (statistics over
    all 2N rows, the SDSSL code's SimCLR)."""
    if not concat:
        return [network(view) for view in views]
    return list(network(torch.cat(views)).split([view.shape[0] for view in views]))


class MomentumSSL(Strategy):
    """Two views, a student with projector + predictor, an EMA teacher with projector; ``pair_loss(q, z, opts)``
    is the objective of one direction, symmetrised over the two views."""

    def __init__(self, cfg, info):
        super().__init__(cfg, info)
        self._teacher_sources = self.build_members()

    def build_members(self) -> dict[str, nn.ModuleDict]:
        """The members and their teachers; returns what ``momentum_members`` returns."""
        return momentum_members(self, lambda backbone: self.heads(backbone.num_features, self.options),
                                teacher_keys=["backbone", "projector"])

    @staticmethod
    def heads(in_dim: int, opts) -> dict[str, nn.Module]:
        return {
            "projector": MLPHead(3, in_dim, opts.out_dim, opts.proj_hidden_dim, opts.last_bn),
            "predictor": MLPHead(2, opts.out_dim, opts.out_dim, opts.pred_hidden_dim, opts.last_bn),
        }

    @staticmethod
    def pair_loss(q: torch.Tensor, z: torch.Tensor, opts) -> torch.Tensor:
        raise NotImplementedError

    def train_transform(self) -> SimCLRTransform:
        return byol_views(self)

    def network_outputs(self, views) -> dict[str, MomentumOutputs]:
        """Per member: the student's predictions q and the teacher's projections z (no gradient) of both views."""
        outputs = {}
        for name, member in self.members.items():
            student, teacher = member.student, member.teacher.module
            q = view_passes(lambda x: student["predictor"](student["projector"](student["backbone"](x))),
                            views[:2], self.options.concat_views)
            with torch.no_grad():
                z = view_passes(lambda x: teacher["projector"](teacher["backbone"](x)), views[:2],
                                self.options.concat_views)
            outputs[name] = MomentumOutputs(q, z)
        return outputs

    def losses(self, outputs: dict[str, MomentumOutputs], labels, indices, step) -> dict[str, torch.Tensor]:
        """``<member>/loss``: L_ssl(q1, z2) + L_ssl(q2, z1) (SDSSL Eq. 1 or 2, both directions); ``loss``: the sum."""
        losses = {f"{name}/loss": self.pair_loss(out.q[0], out.z[1], self.options)
                  + self.pair_loss(out.q[1], out.z[0], self.options) for name, out in outputs.items()}
        losses["loss"] = sum(losses.values())
        return losses

    def after_step(self, step):
        self.update_teachers(step, self.options.momentum_teacher)

    @torch.no_grad()
    def update_teachers(self, step, base_momentum: float) -> None:
        momentum = ema_momentum(step.step, step.total_steps, base_momentum)
        for name, source in self._teacher_sources.items():
            self.members[name].teacher.update(source, momentum)


@STRATEGIES.register("byol")
class BYOL(MomentumSSL):
    name = "byol"
    Options = BYOLOptions
    eval_encoder = "student"

    @staticmethod
    def pair_loss(q, z, opts):
        return byol_loss(q, z)
