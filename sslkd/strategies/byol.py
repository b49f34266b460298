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

The objective is ``BYOLObjective`` (registered in ``OBJECTIVES``; ``MomentumObjective`` is the part it shares with
MoCo v3: heads, EMA pairs, views, passes); ``byol`` is the independent coupling over it, and a DoGo peer with
``objectives: byol`` computes exactly what this baseline does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torchvision.transforms import v2

from sslkd.data.transforms import SimCLRTransform
from sslkd.errors import UserError
from sslkd.losses.sdssl import byol_loss
from sslkd.registry import OBJECTIVES, STRATEGIES
from sslkd.strategies.base import Strategy
from sslkd.strategies.objectives import Independent, Objective, PairOutputs


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

    def forward_views(self, x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        """The head on views stacked in ``x`` (``sizes`` rows each), as one pass per view computes it: every batch
        norm sees one view's rows (in view order, so running statistics update as before), while the linear layers
        take all rows at once (larger products, one weight gradient instead of a sum of one per view)."""
        if len(sizes) == 1:
            return self(x)
        for layer in self:
            per_view = isinstance(layer, nn.modules.batchnorm._BatchNorm)  # also its SyncBatchNorm under DDP
            x = torch.cat([layer(part) for part in x.split(sizes)]) if per_view else layer(x)
        return x


def byol_views(strategy: Strategy, n_views: int = 2) -> SimCLRTransform:
    """BYOL's two asymmetric views (also MoCo v3's and SDSSL's) at the training crop size, repeated as pairs for
    ``n_views`` > 2 (DoGo's per-peer views); ``data.augment.blur`` false drops the blur (the CIFAR recipes of
    solo-learn and lightly), keeping the asymmetric solarisation."""
    if n_views % 2:
        raise UserError(f"BYOL's views come in asymmetric pairs; {n_views} views were asked for")
    size, _ = strategy.crop_sizes()
    blur_p = (1.0, 0.1) * (n_views // 2) if strategy.cfg.data.augment.blur else 0.0
    return SimCLRTransform(size, scale=(0.08, 1.0), jitter=(0.4, 0.4, 0.2, 0.1), jitter_p=0.8, gray_p=0.2,
                           blur_p=blur_p, solarize_p=(0.0, 0.2) * (n_views // 2), mean=strategy.info.mean,
                           std=strategy.info.std, n_views=n_views, interpolation=v2.InterpolationMode.BICUBIC)


def view_passes(network: Callable[[torch.Tensor], torch.Tensor | tuple[torch.Tensor, ...]], views: list[torch.Tensor],
                concat: bool) -> list:
    """``network`` on each view: one pass per view (batch-norm statistics over each view's N rows, MoCo v3's and
    BYOL's code), or, with ``concat``, one pass over the views concatenated, split back per view (statistics over
    all 2N rows, the SDSSL code's SimCLR). A network returning a tuple gives a tuple per view."""
    if not concat:
        return [network(view) for view in views]
    sizes = [view.shape[0] for view in views]
    out = network(torch.cat(views))
    if isinstance(out, tuple):
        return list(zip(*(part.split(sizes) for part in out)))
    return list(out.split(sizes))


class MomentumObjective(Objective):
    """Two views, a student with projector + predictor, an EMA teacher of backbone + projector; ``pair_loss(q, k)``
    is the objective of one direction, symmetrised over the two views (SDSSL Eq. 1-2)."""

    teacher_modules = ("backbone", "projector")

    def heads(self, in_dim: int) -> dict[str, nn.Module]:
        opts = self.options
        return {
            "projector": MLPHead(3, in_dim, opts.out_dim, opts.proj_hidden_dim, opts.last_bn),
            "predictor": MLPHead(2, opts.out_dim, opts.out_dim, opts.pred_hidden_dim, opts.last_bn),
        }

    def views(self, strategy, n_views: int) -> SimCLRTransform:
        return byol_views(strategy, n_views)

    def embed(self, student, teacher, view_a, view_b) -> PairOutputs:
        """The student's projections z and predictions p, and the teacher's projections k (no gradient)."""
        def online(x):
            z = student["projector"](student["backbone"](x))
            return z, student["predictor"](z)

        concat = self.options.concat_views
        z, p = zip(*view_passes(online, [view_a, view_b], concat))
        with torch.no_grad():
            k = view_passes(lambda x: teacher["projector"](teacher["backbone"](x)), [view_a, view_b], concat)
        return PairOutputs(z=tuple(z), p=tuple(p), k=tuple(k))

    def pair_loss(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, outputs: PairOutputs) -> torch.Tensor:
        """L_ssl(p1, k2) + L_ssl(p2, k1) (SDSSL Eq. 1 or 2, both directions)."""
        return self.pair_loss(outputs.p[0], outputs.k[1]) + self.pair_loss(outputs.p[1], outputs.k[0])


@OBJECTIVES.register("byol")
class BYOLObjective(MomentumObjective):
    name = "byol"
    Options = BYOLOptions

    def pair_loss(self, q, k):
        return byol_loss(q, k)


@STRATEGIES.register("byol")
class BYOL(Independent):
    name = "byol"
    Options = BYOLOptions
    Objective = BYOLObjective
