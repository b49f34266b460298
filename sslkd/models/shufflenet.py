"""ShuffleNetV2 (Ma et al., ECCV 2018) for 32-px images, the ShuffleNetV2 0.5x / 1x of MCL Tables 1 and 3.

Built from torchvision's ShuffleNetV2 with the stem adapted to CIFAR as the CIFAR online-KD code bases do: the first
conv is 3x3 with stride 1 and the max-pool is removed, so a 32-px image reaches the last stage at 4x4. Stages 2-4
(strides 2) are the three stages L-MCL branches after; conv5 (1x1 conv to 1024 channels, BN, ReLU) is the final
block before pooling. Same interface as the CIFAR ResNets (block names ``stages.i.j``).
"""

from __future__ import annotations

from functools import partial

from torch import nn
from torchvision.models.shufflenetv2 import ShuffleNetV2

from sslkd.models.cifar_resnet import _StagedCNN
from sslkd.registry import BACKBONES

# torchvision's stage widths per width multiplier (stem, stage 2-4, conv5) and the blocks per stage
STAGE_CHANNELS = {0.5: (24, 48, 96, 192, 1024), 1.0: (24, 116, 232, 464, 1024)}
STAGE_REPEATS = (4, 8, 4)


class CifarShuffleNetV2(_StagedCNN):
    """torchvision's ShuffleNetV2 at width ``width`` with a 3x3 stride-1 stem and no max-pool."""

    def __init__(self, width: float):
        if width not in STAGE_CHANNELS:
            raise ValueError(f"ShuffleNetV2 width must be one of {sorted(STAGE_CHANNELS)}, got {width}")
        channels = STAGE_CHANNELS[width]
        net = ShuffleNetV2(list(STAGE_REPEATS), list(channels))
        stem = nn.Sequential(nn.Conv2d(3, channels[0], 3, stride=1, padding=1, bias=False), nn.BatchNorm2d(channels[0]),
                             nn.ReLU(inplace=True))
        super().__init__(stem, [net.stage2, net.stage3, net.stage4], net.conv5, channels[-1])


BACKBONES.register("cifar_shufflenetv2_x0_5")(partial(CifarShuffleNetV2, 0.5))
BACKBONES.register("cifar_shufflenetv2_x1_0")(partial(CifarShuffleNetV2, 1.0))
