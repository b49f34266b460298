"""Speed options of a run (``train.precision``, ``train.linear_kernel``, ``train.channels_last``, ``train.compile``),
applied by the trainer and by ``sslkd bench`` in exactly the same way, so the benchmark measures what training runs."""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import register_flop_formula

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


def linear_kernel(train: TrainConfig, device: torch.device, dtype: torch.dtype | None) -> str:
    """``onednn`` or ``torch``: who computes the Linear layers' fp32 matrix products (forward passes and backward).

    ``auto`` takes oneDNN for fp32 on a CPU: torch's own CPU path calls MKL's sgemm, which runs its AVX2 code on
    every non-Intel x86 CPU, while oneDNN uses the widest vector unit there is (on this project's AMD EPYC with
    AVX-512 a ViT-S/16 training step at 64 px, batch 16, is 1.63x faster: ``python tools/bench_kernel_options.py
    vit_small_patch16_224 --size 64 --batch 16 --option onednn_linear``).
    Reduced precision (autocast) keeps torch's path, which already hands bf16 products to oneDNN, and so does
    ``train.compile`` (inductor lowers the products itself and cannot take them as a custom autograd function).
    """
    choice = train.linear_kernel
    usable = (device.type == "cpu" and dtype is None and not train.compile
              and torch.backends.mkldnn.is_available())
    if choice == "onednn" and not usable:
        raise UserError("train.linear_kernel=onednn runs fp32 products on a CPU with oneDNN (torch built with "
                        "mkldnn, train.compile=false); set train.linear_kernel=auto")
    return "onednn" if choice == "onednn" or (choice == "auto" and usable) else "torch"


class OneDNNLinearFunction(torch.autograd.Function):
    """``y = x W^T + b`` for rows ``x`` [M, K] and its gradients, every product through oneDNN
    (``mkldnn::_linear_pointwise``, which reads transposed operands in place): the products of ``F.linear``, another
    kernel. ``onednn_linear`` takes inputs of any rank.

    A backward that builds a graph (``create_graph=True``: L-MCL's meta-gradient differentiates through its
    look-ahead steps) takes torch's differentiable ``mm`` instead, so gradients of gradients stay exact."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        return _onednn_product(x, weight, bias)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        differentiable = torch.is_grad_enabled()
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = grad.mm(weight) if differentiable else _onednn_product(grad, weight.t())
        if ctx.needs_input_grad[1]:
            grad_weight = grad.t().mm(x) if differentiable else _onednn_product(grad.t(), x.t())
        if ctx.needs_input_grad[2]:
            grad_bias = grad.sum(0)
        return grad_x, grad_weight, grad_bias


def _onednn_product(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``a @ b.T (+ bias)`` for ``a`` [M, K] and ``b`` [N, K]."""
    return torch.ops.mkldnn._linear_pointwise(_row_or_column_major(a), _row_or_column_major(b), bias, "none", [], "")


if torch.backends.mkldnn.is_available():
    @register_flop_formula(torch.ops.mkldnn._linear_pointwise)
    def _onednn_product_flops(x_shape, weight_shape, *args, out_shape=None, **kwargs) -> int:
        """``torch.utils.flop_counter`` counts these products as it counts ``aten.mm``'s: 2 M N K."""
        return 2 * math.prod(x_shape[:-1]) * weight_shape[0] * x_shape[-1]


def _row_or_column_major(matrix: torch.Tensor) -> torch.Tensor:
    """``matrix`` itself when it is row- or column-major, else a row-major copy: oneDNN reads both layouts at full
    speed but any other stride (a CLS token sliced out of [B, N, C] tokens, an expanded gradient) sends it to a
    reference kernel ~100x slower."""
    if matrix.is_contiguous() or matrix.t().is_contiguous():
        return matrix
    return matrix.contiguous()


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear`` through ``OneDNNLinearFunction``; inputs other than rows are reshaped outside it, so its output
    is never a view made inside a custom Function (which in-place ops after the layer could not modify)."""
    if x.dim() == 2:
        return OneDNNLinearFunction.apply(x, weight, bias)
    rows = OneDNNLinearFunction.apply(x.reshape(-1, x.shape[-1]), weight, bias)
    return rows.reshape(*x.shape[:-1], weight.shape[0])


class OneDNNLinears(TorchFunctionMode):
    """While active, ``F.linear`` on fp32 CPU tensors (every ``nn.Linear``, timm's attention and MLP layers, the
    weight-normed last layers) runs as ``onednn_linear``; everything else passes through unchanged."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            x, weight = args[0], args[1]
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            if (x.dtype == weight.dtype == torch.float32 and x.device.type == weight.device.type == "cpu"
                    and (bias is None or bias.dtype == torch.float32) and x.dim() > 0):
                return onednn_linear(x, weight, bias)
        return func(*args, **kwargs)


def forward_context(device: torch.device, dtype: torch.dtype | None, linear: str) -> contextlib.ExitStack:
    """What the forward passes run under: ``torch.autocast`` to ``dtype`` (none for fp32) and, for
    ``linear == "onednn"``, ``OneDNNLinears``."""
    stack = contextlib.ExitStack()
    if dtype is not None:
        stack.enter_context(torch.autocast(device.type, dtype=dtype))
    if linear == "onednn":
        stack.enter_context(OneDNNLinears())
    return stack


def channels_last_safe(module: torch.nn.Module) -> bool:
    """False when ``module`` has a strided 1x1 convolution reading fewer than 8 channels: in channels-last layout
    oneDNN's AVX2 kernel for its backward pass corrupts the heap or hangs (torch 2.14, e.g. 4 -> 8 channels at
    stride 2, a ResNet shortcut of a very narrow network); such a member stays in the default layout."""
    return not any(isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1) and max(m.stride) > 1
                   and m.in_channels < 8 for m in module.modules())


WIDE_CONV_CHANNELS = 256  # a block whose k x k convolutions are this wide may run faster in the default layout


def small_wide_blocks(backbone: torch.nn.Module, batch: int, image_size: int, min_positions: int) -> list[str]:
    """Blocks of a CNN backbone that train faster in the default (NCHW) layout than channels-last: those whose
    k x k convolutions (k > 1) have at least ``WIDE_CONV_CHANNELS`` output channels and whose output has fewer than
    ``min_positions`` positions in a pass of ``batch`` images at ``image_size`` (batch x height x width).

    For such blocks oneDNN's channels-last backward is the slow part (it also reorders each weight gradient out of
    oneDNN's layout), while larger maps run faster channels-last: a ResNet-18 step at 32 px, batch 16, whose last
    stage runs NCHW is 1.05x faster on this project's AVX-512 EPYC (``python tools/bench_kernel_options.py
    resnet18 --small-image-stem --size 32 --batch 16 --option small_blocks_nchw``). The output sizes come from one
    probe pass of a single image, without gradients and with batch norm in evaluation mode (no statistics change)."""
    blocks = dict(backbone.blocks())
    wide = {name for name, block in blocks.items()
            if max((m.out_channels for m in block.modules() if isinstance(m, torch.nn.Conv2d)
                    and max(m.kernel_size) > 1), default=0) >= WIDE_CONV_CHANNELS}
    if not wide or min_positions <= 0:
        return []
    positions: dict[str, int] = {}

    def record(name: str):
        def hook(module, args, output) -> None:
            positions[name] = batch * output.shape[-2] * output.shape[-1]
        return hook

    hooks = [blocks[name].register_forward_hook(record(name)) for name in wide]
    first_conv = next(m for m in backbone.modules() if isinstance(m, torch.nn.Conv2d))
    probe = torch.zeros(1, first_conv.in_channels, image_size, image_size, device=first_conv.weight.device)
    training = backbone.training
    try:
        backbone.eval()
        with torch.no_grad():
            backbone(probe)
    finally:
        backbone.train(training)
        for hook in hooks:
            hook.remove()
    return [name for name in blocks if name in wide and positions[name] < min_positions]


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
