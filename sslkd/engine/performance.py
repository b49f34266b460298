"""Speed options of a run (``train.precision``, ``train.channels_last``, ``train.compile``), applied by the trainer
and by ``sslkd bench`` in exactly the same way, so the benchmark measures what training runs."""

from __future__ import annotations

import contextlib

import torch

from sslkd.config import TrainConfig
from sslkd.errors import UserError


def autocast_dtype(train: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The dtype the forward passes autocast to, or None for plain fp32."""
    precision = train.precision
    if precision == "auto":
        precision = "fp16-amp" if train.amp and device.type == "cuda" else "fp32"
    if precision == "fp16-amp" and device.type != "cuda":
        raise UserError("train.precision=fp16-amp needs a GPU; use train.precision=bf16 or fp32 on a CPU")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16-amp": torch.float16}[precision]


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to ``dtype`` on ``device``, or nothing for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def channels_last_safe(module: torch.nn.Module) -> bool:
    """False when ``module`` has a strided 1x1 convolution reading fewer than 8 channels: in channels-last layout
    oneDNN's AVX2 kernel for its backward pass corrupts the heap or hangs (torch 2.14, e.g. 4 -> 8 channels at
    stride 2, a ResNet shortcut of a very narrow network); such a member stays in the default layout."""
    return not any(isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1) and max(m.stride) > 1
                   and m.in_channels < 8 for m in module.modules())


def prepare_members(strategy: torch.nn.Module, train: TrainConfig) -> None:
    """Channels-last weights for CNN members (students and EMA teachers alike, so the fused EMA update sees
    matching layouts; the activations follow the weights) where oneDNN handles them (``channels_last_safe``),
    and ``torch.compile`` of every backbone's ``forward_tokens`` and every head when ``train.compile`` is set.
    Parameter names and checkpoints are unchanged by either."""
    for member in strategy.members.values():
        if train.channels_last and member.kind == "cnn" and channels_last_safe(member):
            member.to(memory_format=torch.channels_last)
        if train.compile:
            models = [member.student] + ([member.teacher.module] if member.teacher is not None else [])
            for model in models:
                for name, module in model.items():
                    if name == "backbone":
                        module.forward_tokens = torch.compile(module.forward_tokens)
                    else:
                        module.compile()
