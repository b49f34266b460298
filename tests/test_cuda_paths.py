"""CUDA paths (run by tools/gpu_check.py on a GPU machine; skipped without a GPU): optimisers (AdamW fused), fp16-AMP and bf16
training steps, the EMA teacher and k-NN on CUDA tensors, each against the CPU result."""

import pytest
import torch

from sslkd.config import OptimConfig
from sslkd.engine.optim import build_optimizer
from sslkd.eval.knn import knn_predict, knn_predict_torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_optimizer_step_on_cuda_matches_cpu(name):
    torch.manual_seed(0)
    cpu = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.LayerNorm(128), torch.nn.Linear(128, 8))
    gpu = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.LayerNorm(128), torch.nn.Linear(128, 8)).cuda()
    gpu.load_state_dict(cpu.state_dict())
    cfg = OptimConfig(name=name, momentum=0.9, weight_decay=0.05)
    optimizers = [build_optimizer(model.named_parameters(), cfg) for model in (cpu, gpu)]
    assert bool(optimizers[1].defaults["fused"]) == (name == "adamw")  # AdamW takes its fused kernel
    x = torch.randn(32, 64)
    for model, optimizer, inputs in zip((cpu, gpu), optimizers, (x, x.cuda())):
        for group in optimizer.param_groups:
            group["lr"] = 0.01
        for _ in range(3):
            optimizer.zero_grad(set_to_none=True)
            model(inputs).square().mean().backward()
            optimizer.step()
    for a, b in zip(cpu.parameters(), gpu.parameters()):
        torch.testing.assert_close(a, b.cpu(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("precision", ["fp16-amp", "bf16"])
def test_training_steps_on_cuda(tmp_path, precision):
    from sslkd.config import load_config
    from sslkd.engine.trainer import Trainer
    from sslkd.strategies.base import StepInfo

    cfg = load_config("dino", None, ["train.device=cuda", f"train.precision={precision}", "train.batch_size=16",
                                     "data.num_workers=0"])
    trainer = Trainer(cfg, tmp_path)
    views, labels, indices = next(iter(trainer.loader))
    before = [p.detach().clone() for p in trainer.strategy.parameters() if p.requires_grad]
    for step in range(3):
        info = StepInfo(step + 100, 1, trainer.steps_per_epoch, 10_000)
        trainer.set_schedules(info)
        losses = trainer.train_step(views, labels, indices, info)
        assert losses is not None and all(torch.isfinite(v) for v in losses.values())
    assert trainer.use_amp == (precision == "fp16-amp")
    after = [p for p in trainer.strategy.parameters() if p.requires_grad]
    assert any(not torch.equal(a, b) for a, b in zip(before, after))


def test_knn_on_cuda_features_matches_the_cpu_reference():
    generator = torch.Generator().manual_seed(0)
    train = torch.nn.functional.normalize(torch.randn(5000, 64, generator=generator), dim=1)
    test = torch.nn.functional.normalize(torch.randn(500, 64, generator=generator), dim=1)
    labels = torch.randint(0, 10, (5000,), generator=generator)
    want = knn_predict_torch(train, labels, test, ks=(20,), num_classes=10)[20]
    got = knn_predict(train.cuda(), labels.cuda(), test.cuda(), ks=(20,), num_classes=10)[20]
    assert (got.cpu() == want).float().mean() > 0.99


def test_cnn_stays_channels_last_on_cuda(tiny_cfg, tmp_path):
    """The NCHW small-wide-block rule was measured with oneDNN: on a GPU a wide CNN is channels-last throughout."""
    from sslkd.engine.trainer import Trainer

    trainer = Trainer(tiny_cfg("dino", ["train.device=cuda", "train.batch_size=4",
                                        "members.cnn.backbone_args={widths: [8, 16, 256]}"]), tmp_path)
    backbone = trainer.strategy.members["cnn"].student["backbone"]
    assert all(block.conv1.weight.is_contiguous(memory_format=torch.channels_last) for _, block in backbone.blocks())
