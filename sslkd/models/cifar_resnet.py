"""CIFAR networks that timm lacks: He et al. (2016) CIFAR ResNets and Zagoruyko & Komodakis (2016) wide ResNets.

Both take 32-px inputs at full resolution (3x3 stride-1 stem, no max-pool) and use only plain conv/BN/ReLU, so
they run in channels_last. Block names follow module paths (``stages.1.0`` = stage 2, block 1).
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from sslkd.models.backbones import Backbone
from sslkd.registry import BACKBONES


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def _init_weights(module: nn.Module) -> None:
    """He initialisation for convs (fan_out, as in the papers' code), BN gain 1 and bias 0."""
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class BasicBlock(nn.Module):
    """Post-activation residual block: conv-BN-ReLU-conv-BN, plus a 1x1-conv shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = _conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = _conv3x3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.act = nn.ReLU(inplace=True)
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        return self.act(self.bn2(self.conv2(out)) + self.shortcut(x))


class PreActBlock(nn.Module):
    """WRN block: BN-ReLU-conv-BN-ReLU-dropout-conv; the 1x1 shortcut sees the pre-activated input (WRN code)."""

    def __init__(self, cin: int, cout: int, stride: int, dropout: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = _conv3x3(cin, cout, stride)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = _conv3x3(cout, cout)
        self.act = nn.ReLU()
        self.dropout = nn.Dropout(dropout)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride=stride, bias=False) if stride != 1 or cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.act(self.bn1(x))
        out = self.conv2(self.dropout(self.act(self.bn2(self.conv1(pre)))))
        return out + (x if self.shortcut is None else self.shortcut(pre))


class _StagedCNN(Backbone):
    """Stem, three stages of blocks (strides 1, 2, 2), an optional final norm; the common Backbone plumbing."""

    kind = "cnn"

    def __init__(self, stem: nn.Module, stages: list[nn.Sequential], head_norm: nn.Module, out_channels: int):
        super().__init__()
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self.head_norm = head_norm
        self.num_features = out_channels
        self.token_dim = out_channels
        self.apply(_init_weights)

    def forward_tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        feat = self.head_norm(x)
        h, w = feat.shape[-2:]
        return feat.mean((-2, -1)), feat.flatten(2).transpose(1, 2), (h, w)

    def intermediate_names(self) -> list[str]:
        return [f"stages.{i}.{j}" for i, stage in enumerate(self.stages) for j in range(len(stage))]

    def blocks(self) -> list[tuple[str, nn.Module]]:
        return [(f"stages.{i}.{j}", block) for i, stage in enumerate(self.stages) for j, block in enumerate(stage)]

    def pool_block(self, output: torch.Tensor) -> torch.Tensor:
        return output.mean((-2, -1))

    def forward_intermediates(self, x: torch.Tensor, names: list[str] | None = None) -> dict[str, torch.Tensor]:
        wanted = self._wanted(names)
        pooled = {}
        x = self.stem(x)
        for i, stage in enumerate(self.stages):
            for j, block in enumerate(stage):
                x = block(x)
                name = f"stages.{i}.{j}"
                if name in wanted:
                    pooled[name] = x.mean((-2, -1))
                if len(pooled) == len(wanted):
                    return pooled
        return pooled


class CifarResNet(_StagedCNN):
    """He et al. 2016, Sec. 4.2: 3x3 conv, then 3 stages of n = (depth-2)/6 BasicBlocks of widths 16/32/64.

    ``widths`` rescales the three stages (the stem takes the first width); the shortcut is option B (1x1 conv).
    """

    def __init__(self, depth: int, widths: tuple[int, int, int] = (16, 32, 64)):
        n = (depth - 2) // 6
        widths = tuple(int(w) for w in widths)
        stem = nn.Sequential(_conv3x3(3, widths[0]), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        stages, cin = [], widths[0]
        for i, width in enumerate(widths):
            blocks = [BasicBlock(cin if b == 0 else width, width, 2 if i > 0 and b == 0 else 1) for b in range(n)]
            stages.append(nn.Sequential(*blocks))
            cin = width
        super().__init__(stem, stages, nn.Identity(), widths[-1])


class WideResNet(_StagedCNN):
    """Zagoruyko & Komodakis 2016: WRN-d-k, (d-4)/6 pre-activation blocks per stage, widths 16k/32k/64k.

    The stem is a 3x3 conv to 16 channels; BN-ReLU follows the last stage. ``dropout`` sits between the convs.
    """

    def __init__(self, depth: int, widen_factor: int, dropout: float = 0.0):
        n = (depth - 4) // 6
        widths = [16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        stages, cin = [], 16
        for i, width in enumerate(widths):
            blocks = [
                PreActBlock(cin if b == 0 else width, width, 2 if i > 0 and b == 0 else 1, dropout) for b in range(n)
            ]
            stages.append(nn.Sequential(*blocks))
            cin = width
        head_norm = nn.Sequential(nn.BatchNorm2d(widths[-1]), nn.ReLU(inplace=True))
        super().__init__(_conv3x3(3, 16), stages, head_norm, widths[-1])


for _depth in (20, 32, 56, 110):
    BACKBONES.register(f"cifar_resnet{_depth}")(partial(CifarResNet, _depth))

for _depth, _k in ((10, 2), (16, 2), (28, 2), (40, 2), (28, 4)):
    BACKBONES.register(f"wrn_{_depth}_{_k}")(partial(WideResNet, _depth, _k))
