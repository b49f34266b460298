"""Memory layouts and compilation of a run's members (``train.channels_last``, ``train.compile``), applied by the
trainer and by ``sslkd bench`` in exactly the same way, so the benchmark measures what training runs; the precision
and the Linear-layer kernel are in ``sslkd.models.kernels``."""

from __future__ import annotations

import torch

from sslkd.config import TrainConfig
from sslkd.models.backbones import probing


def channels_last_safe(module: torch.nn.Module) -> bool:
    """False when ``module`` has a strided 1x1 convolution reading fewer than 8 channels: in channels-last layout
    oneDNN's AVX2 kernel for its backward pass corrupts the heap or hangs (torch 2.14, e.g. 4 -> 8 channels at
    stride 2, a ResNet shortcut of a very narrow network); such a member stays in the default layout."""
    return not any(isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1) and max(m.stride) > 1
                   and m.in_channels < 8 for m in module.modules())


WIDE_CONV_CHANNELS = 256  # a block whose k x k convolutions are this wide may run faster in the default layout


def small_wide_blocks(backbone: torch.nn.Module, batch: int, image_size: int, min_positions: int) -> list[str]:
    """Blocks of a CNN backbone that train faster in the default (NCHW) layout than channels-last: those whose
    dense k x k convolutions (k > 1, one group) have at least ``WIDE_CONV_CHANNELS`` output channels and whose
    output has fewer than ``min_positions`` positions for ``batch`` images of ``image_size`` (batch x height x
    width; ``prepare_members`` gives ``train.batch_size``, though a strategy that stacks views runs more per pass).

    For such blocks oneDNN's channels-last backward is the slow part (it also reorders each weight gradient out of
    oneDNN's layout), while larger maps run faster channels-last: a ResNet-18 step at 32 px, batch 16, whose last
    stage runs NCHW is 1.05x faster on this project's AVX-512 EPYC (``python tools/bench_kernel_options.py
    resnet18 --small-image-stem --size 32 --batch 16 --option small_blocks_nchw``). Depthwise and grouped
    convolutions are left out: with them EfficientNet-B0's step was slower (0.86-0.88x, by hand). The output sizes
    come from one probe pass of a single image (``probing``: no batch-norm statistics change)."""
    blocks = dict(backbone.blocks())
    wide = {name for name, block in blocks.items()
            if max((m.out_channels for m in block.modules() if isinstance(m, torch.nn.Conv2d)
                    and max(m.kernel_size) > 1 and m.groups == 1), default=0) >= WIDE_CONV_CHANNELS}
    if not wide or min_positions <= 0:
        return []
    positions: dict[str, int] = {}

    def record(name: str):
        def hook(module, args, output) -> None:
            positions[name] = batch * output.shape[-2] * output.shape[-1]
        return hook

    hooks = [blocks[name].register_forward_hook(record(name)) for name in wide]
    device = next(backbone.parameters()).device
    try:
        with probing(backbone):
            backbone(torch.zeros(1, 3, image_size, image_size, device=device))
    finally:
        for hook in hooks:
            hook.remove()
    return [name for name in blocks if positions.get(name, min_positions) < min_positions]


def _nchw_input(module: torch.nn.Module, args: tuple) -> tuple:
    return (args[0].contiguous(),) + args[1:]


def run_blocks_nchw(backbone: torch.nn.Module, names: list[str]) -> None:
    """NCHW weights for the named blocks of a channels-last backbone, and NCHW input (one copy where the previous
    block hands over channels-last activations)."""
    blocks = dict(backbone.blocks())
    for name in names:
        blocks[name].to(memory_format=torch.contiguous_format)
        blocks[name].register_forward_pre_hook(_nchw_input)


def prepare_members(strategy: torch.nn.Module, train: TrainConfig) -> None:
    """Channels-last weights for CNN members (students and EMA teachers alike, so the fused EMA update sees
    matching layouts; the activations follow the weights) where oneDNN handles them (``channels_last_safe``), except,
    on a CPU, the blocks ``small_wide_blocks`` finds at ``train.batch_size`` and the global crop, which keep NCHW
    weights and turn their input to NCHW; and ``torch.compile`` of every backbone's ``forward_tokens`` and every
    head when ``train.compile`` is set. Parameter names and checkpoints are unchanged by either."""
    image_size = strategy.crop_sizes()[0]
    for member in strategy.members.values():
        teacher = member.teacher.module if member.teacher is not None else {}
        backbones = [member.student["backbone"]] + ([teacher["backbone"]] if "backbone" in teacher else [])
        if train.channels_last and member.kind == "cnn" and channels_last_safe(member):
            member.to(memory_format=torch.channels_last)
            if next(member.parameters()).device.type == "cpu":  # measured with oneDNN; cuDNN keeps channels-last
                nchw = small_wide_blocks(backbones[0], train.batch_size, image_size, train.channels_last_min_positions)
                for backbone in backbones:
                    run_blocks_nchw(backbone, nchw)
        if train.compile:
            for model in [member.student] + ([teacher] if teacher else []):
                for name, module in model.items():
                    if name == "backbone":
                        module.forward_tokens = torch.compile(module.forward_tokens)
                    else:
                        module.compile()
