"""How the forward passes compute: their precision (``train.precision``) and who runs the fp32 products of the
Linear layers (``train.linear_kernel``); ``forward_context`` enters both, for the trainer, ``sslkd bench`` and the
k-NN evaluation alike."""

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
    usable = _onednn_usable(train, device, dtype)
    if train.linear_kernel == "onednn" and not usable:
        raise UserError("train.linear_kernel=onednn runs fp32 products on a CPU with oneDNN (torch built with "
                        "mkldnn, train.compile=false); set train.linear_kernel=auto")
    return "onednn" if usable and train.linear_kernel != "torch" else "torch"


def evaluation_kernel(train: TrainConfig, device: torch.device) -> str:
    """The kernel of fp32 feature extraction: ``linear_kernel``'s choice, except that where oneDNN cannot run it is
    torch's instead of an error, so a checkpoint trained with oneDNN is evaluated on a GPU."""
    return "onednn" if _onednn_usable(train, device, None) and train.linear_kernel != "torch" else "torch"


def _onednn_usable(train: TrainConfig, device: torch.device, dtype: torch.dtype | None) -> bool:
    return (device.type == "cpu" and dtype is None and not train.compile
            and torch.backends.mkldnn.is_available())


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
