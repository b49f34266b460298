"""SimCLR (Chen et al., 2020) as DoGo trains it: DoGo's contrastive baseline ("Baseline" of DoGo Table 1).

Each member trains alone: backbone f, projector g = Linear(d, 512, no bias)-BN-ReLU-Linear(512, 128) (the DoGo
code's head), and NT-Xent over the 2B projections of two views with cosine similarity at tau_c = 0.5 (DoGo
Eq. 1). Each view goes through the network on its own, so BatchNorm statistics are per view (as the DoGo code
runs it). No EMA teacher: k-NN and probes evaluate the trained backbone itself.

Views: DoGo's 32-px SimCLR recipe (Sec. 4.1): RandomResizedCrop (0.08, 1), flip, colour jitter (0.8, 0.8, 0.8,
0.2) p=0.8, grayscale p=0.2, no blur. Of ``data.augment`` only ``global_size`` is read (the crop size, default
the data's image size); the multi-crop fields (scales, local crops) do not apply to two-view methods.

Options (``strategy:``): ``temperature`` (tau_c), ``hidden_dim`` and ``out_dim`` of the projector.

The objective is ``SimCLRObjective`` (registered in ``OBJECTIVES``); ``simclr`` is the independent coupling over it,
and a DoGo peer with ``objectives: simclr`` computes exactly what this baseline does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sslkd.data.transforms import SimCLRTransform
from sslkd.losses.contrastive import nt_xent
from sslkd.registry import OBJECTIVES, STRATEGIES
from sslkd.strategies.base import Strategy
from sslkd.strategies.objectives import Independent, Objective, PairOutputs


@dataclass
class SimCLROptions:
    temperature: float = 0.5
    hidden_dim: int = 512
    out_dim: int = 128


class SimCLRProjector(nn.Sequential):
    """DoGo's projector g: Linear(d, hidden, no bias)-BN-ReLU-Linear(hidden, out)."""

    def __init__(self, in_dim: int, hidden_dim: int = 512, out_dim: int = 128):
        super().__init__(
            nn.Linear(in_dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )


def two_view_transform(strategy: Strategy, n_views: int) -> SimCLRTransform:
    """``n_views`` independent views in DoGo's 32-px SimCLR recipe at the training crop size."""
    size, _ = strategy.crop_sizes()
    return SimCLRTransform(size, mean=strategy.info.mean, std=strategy.info.std, n_views=n_views)


@OBJECTIVES.register("simclr")
class SimCLRObjective(Objective):
    name = "simclr"
    Options = SimCLROptions

    def heads(self, in_dim: int) -> dict[str, nn.Module]:
        return {"projector": SimCLRProjector(in_dim, self.options.hidden_dim, self.options.out_dim)}

    def views(self, strategy: Strategy, n_views: int) -> SimCLRTransform:
        return two_view_transform(strategy, n_views)

    def embed(self, student, teacher, view_a, view_b) -> PairOutputs:
        return PairOutputs(z=tuple(student["projector"](student["backbone"](view)) for view in (view_a, view_b)))

    def loss(self, outputs: PairOutputs) -> torch.Tensor:
        return nt_xent(*outputs.z, self.options.temperature)


@STRATEGIES.register("simclr")
class SimCLR(Independent):
    name = "simclr"
    Options = SimCLROptions
    Objective = SimCLRObjective
