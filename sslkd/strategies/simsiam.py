"""SimSiam (Chen & He, 2021) as DoGo trains it: the SimSiam baseline of DoGo Table 4.

Each member trains alone: backbone f, projection MLP g = 3 x [Linear-BN], ReLU between, widths 2048 (the DoGo
code's; its BatchNorms keep their affine parameters), prediction MLP h = Linear(2048, 512, no bias)-BN-ReLU-
Linear(512, 2048). The loss is the symmetrised negative cosine 1/2 D(p', z'') + 1/2 D(p'', z') with the
stop-gradient on z (DoGo Eq. 6). Each view goes through the network on its own; no EMA teacher.

Views: the same 32-px SimCLR recipe as ``simclr`` (``data.augment`` gives only the crop size). Not offered: the
DoGo code's weaker SimSiam jitter (strength 0.5): DoGo's paper describes one augmentation module for all peers.

Options (``strategy:``): ``hidden_dim`` and ``out_dim`` of the projector, ``pred_hidden_dim`` of the predictor,
``predictor_lr``: ``scheduled`` (default: the member's warm-up + cosine, as the DoGo code) or ``fixed`` (the
predictor keeps the base lr throughout: SimSiam's own recipe, "fixed lr" for h, and solo-learn's ``static_lr``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from sslkd.losses.contrastive import simsiam_loss
from sslkd.data.transforms import SimCLRTransform
from sslkd.registry import OBJECTIVES, STRATEGIES
from sslkd.strategies.objectives import Independent, Objective, PairOutputs
from sslkd.strategies.simclr import two_view_transform


@dataclass
class SimSiamOptions:
    hidden_dim: int = 2048
    out_dim: int = 2048
    pred_hidden_dim: int = 512
    predictor_lr: Literal["scheduled", "fixed"] = "scheduled"


class SimSiamProjector(nn.Sequential):
    """g: Linear(d, h)-BN-ReLU-Linear(h, h)-BN-ReLU-Linear(h, out)-BN, linear layers without bias (BN follows)."""

    def __init__(self, in_dim: int, hidden_dim: int = 2048, out_dim: int = 2048):
        super().__init__(
            nn.Linear(in_dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim, bias=False), nn.BatchNorm1d(out_dim),
        )


class SimSiamPredictor(nn.Sequential):
    """h: a bottleneck MLP Linear(out, hidden, no bias)-BN-ReLU-Linear(hidden, out)."""

    def __init__(self, dim: int = 2048, hidden_dim: int = 512):
        super().__init__(
            nn.Linear(dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, dim),
        )


@OBJECTIVES.register("simsiam")
class SimSiamObjective(Objective):
    name = "simsiam"
    Options = SimSiamOptions

    def heads(self, in_dim: int) -> dict[str, nn.Module]:
        return {
            "projector": SimSiamProjector(in_dim, self.options.hidden_dim, self.options.out_dim),
            "predictor": SimSiamPredictor(self.options.out_dim, self.options.pred_hidden_dim),
        }

    def views(self, strategy, n_views: int) -> SimCLRTransform:
        return two_view_transform(strategy, n_views)

    def embed(self, student, teacher, view_a, view_b) -> PairOutputs:
        z = tuple(student["projector"](student["backbone"](view)) for view in (view_a, view_b))
        p = tuple(student["predictor"](projection) for projection in z)
        return PairOutputs(z=z, p=p)

    def loss(self, outputs: PairOutputs) -> torch.Tensor:
        return simsiam_loss(*outputs.p, *outputs.z)

    def fixed_lr_modules(self) -> tuple[str, ...]:
        return ("predictor",) if self.options.predictor_lr == "fixed" else ()


@STRATEGIES.register("simsiam")
class SimSiam(Independent):
    name = "simsiam"
    Options = SimSiamOptions
    Objective = SimSiamObjective
