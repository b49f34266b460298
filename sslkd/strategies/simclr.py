"""SimCLR (Chen et al., 2020) as DoGo trains it: DoGo's contrastive baseline ("Baseline" of DoGo Table 1).

Each member trains alone: backbone f, projector g = Linear(d, 512, no bias)-BN-ReLU-Linear(512, 128) (the DoGo
code's head), and NT-Xent over the 2B projections of two views with cosine similarity at tau_c = 0.5 (DoGo
Eq. 1). Each view goes through the network on its own, so BatchNorm statistics are per view (as the DoGo code
runs it). No EMA teacher: k-NN and probes evaluate the trained backbone itself.

Views: DoGo's 32-px SimCLR recipe (Sec. 4.1): RandomResizedCrop (0.08, 1), flip, colour jitter (0.8, 0.8, 0.8,
0.2) p=0.8, grayscale p=0.2, no blur. Of ``data.augment`` only ``global_size`` is read (the crop size, default
the data's image size); the multi-crop fields (scales, local crops) do not apply to two-view methods.

Options (``strategy:``): ``temperature`` (tau_c), ``hidden_dim`` and ``out_dim`` of the projector.

``TwoViewSSL`` is the shared skeleton of the two-view baselines (this one and SimSiam): the objective is the
class's ``heads``/``embed``/``loss``, which DoGo reuses so a DoGo peer computes exactly what its baseline does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sslkd.data.transforms import SimCLRTransform
from sslkd.losses.contrastive import nt_xent
from sslkd.registry import STRATEGIES
from sslkd.strategies.base import Strategy


@dataclass
class SimCLROptions:
    temperature: float = 0.5
    hidden_dim: int = 512
    out_dim: int = 128


@dataclass
class PairOutputs:
    """One member's outputs on its two views: projections (z', z'') and, for SimSiam, predictions (p', p'')."""

    z: tuple[torch.Tensor, torch.Tensor]
    p: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def own(self) -> tuple[torch.Tensor, torch.Tensor]:
        """What the member's own similarity distribution is built from: predictions where it has them (DoGo
        Sec. 4.7 uses a SimSiam peer's predictions), else projections."""
        return self.p if self.p is not None else self.z

    def mean(self) -> torch.Tensor:
        """A scalar of every output, for ``sslkd bench`` to back-propagate through the network passes alone."""
        outputs = [*self.z, *(self.p or ())]
        return sum(t.float().mean() for t in outputs)


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


class TwoViewSSL(Strategy):
    """Every member trains alone with the class's two-view objective; one member is the usual baseline."""

    def __init__(self, cfg, info):
        super().__init__(cfg, info)
        self.add_members(lambda name, backbone, rate: self.heads(backbone.num_features, self.options), ema_teacher=False)

    @staticmethod
    def heads(in_dim: int, opts) -> dict[str, nn.Module]:
        raise NotImplementedError

    @staticmethod
    def embed(student: nn.ModuleDict, view_a: torch.Tensor, view_b: torch.Tensor) -> PairOutputs:
        raise NotImplementedError

    @staticmethod
    def loss(outputs: PairOutputs, opts) -> torch.Tensor:
        raise NotImplementedError

    def train_transform(self) -> SimCLRTransform:
        return two_view_transform(self, 2)

    def network_outputs(self, views) -> dict[str, PairOutputs]:
        """Every member's head outputs on the two views, keyed by member name."""
        return {name: self.embed(member.student, views[0], views[1]) for name, member in self.members.items()}

    def losses(self, outputs: dict[str, PairOutputs], labels, indices, step) -> dict[str, torch.Tensor]:
        """``<member>/loss``: each member's own objective on its outputs; ``loss``: their sum."""
        losses = {f"{name}/loss": self.loss(out, self.options) for name, out in outputs.items()}
        losses["loss"] = sum(losses.values())
        return losses


@STRATEGIES.register("simclr")
class SimCLR(TwoViewSSL):
    name = "simclr"
    Options = SimCLROptions

    @staticmethod
    def heads(in_dim: int, opts: SimCLROptions) -> dict[str, nn.Module]:
        return {"projector": SimCLRProjector(in_dim, opts.hidden_dim, opts.out_dim)}

    @staticmethod
    def embed(student, view_a, view_b) -> PairOutputs:
        z = tuple(student["projector"](student["backbone"](view)) for view in (view_a, view_b))
        return PairOutputs(z=z)

    @staticmethod
    def loss(outputs: PairOutputs, opts: SimCLROptions) -> torch.Tensor:
        return nt_xent(*outputs.z, opts.temperature)
