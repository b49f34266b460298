"""``train.linear_kernel``: oneDNN computes the same Linear products and gradients as torch's path (to fp32
rounding), only for fp32 CPU tensors, and a run trains the same model with either kernel."""

import contextlib

import pytest
import torch
import torch.nn.functional as F
from conftest import step_past_warmup
from torch.utils.flop_counter import FlopCounterMode

from sslkd.config import TrainConfig
from sslkd.models.kernels import (OneDNNLinearFunction, OneDNNLinears, evaluation_kernel, linear_kernel,
                                  onednn_linear)
from sslkd.engine.trainer import Trainer
from sslkd.errors import UserError

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")


def _inputs(shape, out_features, bias, layout="row-major"):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=generator, dtype=torch.float64)
    if layout == "column-major":  # as tokens read out of a feature map are
        x = x.transpose(-1, -2).contiguous().transpose(-1, -2)
    if layout == "sliced":  # as a CLS token taken out of [B, N, C] tokens is
        x = torch.stack([x, x + 1], dim=-2)[..., 0, :]
    weight = torch.randn(out_features, shape[-1], generator=generator, dtype=torch.float64)
    b = torch.randn(out_features, generator=generator, dtype=torch.float64) if bias else None
    return x, weight, b


@pytest.mark.parametrize("shape", [(5, 7), (2, 6, 7), (7,)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("layout", ["row-major", "column-major", "sliced"])
def test_products_and_gradients_equal_float64_reference(shape, bias, layout):
    if layout != "row-major" and len(shape) < 2:
        pytest.skip("a vector has one layout")
    x64, w64, b64 = _inputs(shape, 9, bias, layout)
    grad_out = torch.randn(*shape[:-1], 9, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def run(fn, dtype):
        x, w = (t.to(dtype, copy=True).requires_grad_() for t in (x64, w64))
        b = b64.to(dtype, copy=True).requires_grad_() if bias else None
        y = fn(x, w, b)
        y.backward(grad_out.to(dtype))
        return [t.double() for t in (y, x.grad, w.grad) + ((b.grad,) if bias else ())]

    reference = run(F.linear, torch.float64)
    ours = run(onednn_linear, torch.float32)
    assert ours[0].shape == (*shape[:-1], 9)
    for got, expected in zip(ours, reference):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_second_derivatives_equal_torch_kernel():
    """A backward with create_graph=True (L-MCL's meta-gradient) stays differentiable and exact: the gradient of
    ||dL/dW1||^2 with respect to W2 through a two-layer tanh network, in fp32, either kernel."""
    x, w1 = (t.float() for t in _inputs((6, 4), 5, False)[:2])
    w2 = torch.randn(3, 5, generator=torch.Generator().manual_seed(2))
    results = []
    for context in (contextlib.nullcontext(), OneDNNLinears()):
        a, b = w1.clone().requires_grad_(), w2.clone().requires_grad_()
        with context:
            loss = F.linear(torch.tanh(F.linear(x, a)), b).pow(2).sum()
            (grad_a,) = torch.autograd.grad(loss, a, create_graph=True)
            (second,) = torch.autograd.grad(grad_a.pow(2).sum(), b)
        results.append(second)
    assert results[0].abs().sum() > 0
    torch.testing.assert_close(results[1], results[0], rtol=1e-4, atol=1e-5)


def test_mode_routes_only_fp32_cpu_linears():
    x, w, b = (t.float() for t in _inputs((4, 3), 5, True))
    seen = []
    original = OneDNNLinearFunction.apply

    def spy(*args):
        seen.append(args[0].dtype)
        return original(*args)

    OneDNNLinearFunction.apply = spy
    try:
        with OneDNNLinears():
            F.linear(x, w, b)
            torch.nn.Linear(3, 5)(x)
            F.linear(x.double(), w.double(), b.double())  # float64: torch's path
            x @ w.t()  # not a Linear: untouched
    finally:
        OneDNNLinearFunction.apply = original
    assert seen == [torch.float32, torch.float32]


def test_output_takes_in_place_ops():
    """nn.ReLU(inplace=True) after a Linear (MCL's and DoGo's heads) modifies the layer's output in place."""
    for shape in ((4, 3), (2, 4, 3)):
        x, w, b = (t.float().requires_grad_() for t in _inputs(shape, 5, True))
        with OneDNNLinears():
            y = torch.relu_(F.linear(x, w, b))
        y.sum().backward()
        expected = F.linear(x.detach(), w.detach(), b.detach()) > 0
        torch.testing.assert_close(b.grad, expected.reshape(-1, 5).sum(0).float())


def test_teacher_forward_under_no_grad_builds_no_graph():
    x, w, b = (t.float() for t in _inputs((4, 3), 5, True))
    w.requires_grad_()
    with torch.no_grad(), OneDNNLinears():
        y = F.linear(x, w, b)
    assert y.grad_fn is None and not y.requires_grad


def test_flop_counter_counts_the_products_as_matrix_products():
    x, w, b = (t.float().requires_grad_() for t in _inputs((2, 6, 3), 5, True))
    counts = {}
    for name, context in (("torch", contextlib.nullcontext()), ("onednn", OneDNNLinears())):
        with FlopCounterMode(display=False) as flops:
            with context:
                y = F.linear(x, w, b)
            y.sum().backward()
        counts[name] = flops.get_total_flops()
    assert counts["onednn"] == counts["torch"] == 3 * 2 * 12 * 3 * 5  # forward, grad input, grad weight


def test_kernel_choice():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert linear_kernel(TrainConfig(), cpu, None) == "onednn"
    assert linear_kernel(TrainConfig(), cpu, torch.bfloat16) == "torch"  # autocast keeps torch's path
    assert linear_kernel(TrainConfig(), cuda, None) == "torch"
    assert linear_kernel(TrainConfig(compile=True), cpu, None) == "torch"  # inductor lowers the products itself
    assert linear_kernel(TrainConfig(linear_kernel="torch"), cpu, None) == "torch"
    for train, device in ((TrainConfig(linear_kernel="onednn"), cuda),
                          (TrainConfig(linear_kernel="onednn", compile=True), cpu)):
        with pytest.raises(UserError, match="linear_kernel=onednn runs fp32 products on a CPU"):
            linear_kernel(train, device, None)
        assert evaluation_kernel(train, device) == "torch"  # evaluating such a run elsewhere is no error
    assert evaluation_kernel(TrainConfig(linear_kernel="onednn"), cpu) == "onednn"
    assert evaluation_kernel(TrainConfig(), cpu) == "onednn"
    assert evaluation_kernel(TrainConfig(linear_kernel="torch"), cpu) == "torch"


@pytest.mark.parametrize("method", ["dino", "mokd"])
def test_a_step_trains_the_same_model_with_either_kernel(tiny_cfg, tmp_path, method, monkeypatch):
    results, products = {}, []
    original = OneDNNLinearFunction.apply
    monkeypatch.setattr(OneDNNLinearFunction, "apply", lambda *args: products.append(1) or original(*args))
    for kernel in ("onednn", "torch"):
        trainer = Trainer(tiny_cfg(method, [f"train.linear_kernel={kernel}", "train.device=cpu"]), tmp_path / kernel)
        assert trainer.linear_kernel == kernel
        products.clear()
        losses = step_past_warmup(trainer)
        assert bool(products) == (kernel == "onednn")  # the trainer's step enters the kernel's mode, or does not
        results[kernel] = ({k: v.detach() for k, v in losses.items()},
                           {k: v.detach().clone() for k, v in trainer.strategy.state_dict().items()})
    for name, value in results["torch"][0].items():
        torch.testing.assert_close(results["onednn"][0][name], value, rtol=1e-4, atol=1e-5)
    for name, value in results["torch"][1].items():
        torch.testing.assert_close(results["onednn"][1][name], value, rtol=1e-3, atol=1e-4)


def test_knn_evaluation_extracts_with_the_runs_kernel(tiny_cfg, tmp_path, monkeypatch):
    """``evaluate_members`` computes the ViT's Linear layers with oneDNN exactly when the run's kernel is onednn, and
    the k-NN features agree with torch's to fp32 rounding."""
    import sslkd.eval.protocol as protocol

    features, products = {}, []
    original_apply, original_extract = OneDNNLinearFunction.apply, protocol.extract_features
    monkeypatch.setattr(OneDNNLinearFunction, "apply", lambda *args: products.append(1) or original_apply(*args))

    def keep(backbone, loader, device):
        result = original_extract(backbone, loader, device)
        features.setdefault(kernel, []).append(result[0])
        return result

    monkeypatch.setattr(protocol, "extract_features", keep)
    for kernel in ("onednn", "torch"):
        trainer = Trainer(tiny_cfg("mokd", [f"train.linear_kernel={kernel}", "train.device=cpu"]), tmp_path / kernel)
        products.clear()
        protocol.evaluate_members(trainer.strategy, trainer.cfg, trainer.device, only="vit")
        assert bool(products) == (kernel == "onednn")
    for ours, theirs in zip(features["onednn"], features["torch"], strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
