"""Supervised baselines (independent training, DML): the training view, the cross-entropy wiring, test top-1 in
summary.json, and the 32-px ShuffleNetV2 backbones of MCL Tables 1 and 3."""

import json

import pytest
import torch
import torch.nn.functional as F
from test_mcl import INFO, TINY, tiny_run

from sslkd.config import load_config
from sslkd.data.transforms import SupervisedTransform
from sslkd.engine.trainer import Trainer
from sslkd.models.backbones import build_backbone
from sslkd.registry import STRATEGIES
from sslkd.strategies.base import StepInfo
from sslkd.strategies.lmcl import backbone_stages
from sslkd.strategies.supervised import Supervised


def test_supervised_transform_is_one_pad_crop_flip_view():
    img = torch.randint(0, 255, (3, 32, 32), dtype=torch.uint8)
    views = SupervisedTransform(32, mean=(0.5,) * 3, std=(0.5,) * 3)(img)
    assert len(views) == 1 and views[0].shape == (3, 32, 32) and views[0].dtype == torch.float32
    big = SupervisedTransform(64)(torch.randint(0, 255, (3, 80, 80), dtype=torch.uint8))
    assert big[0].shape == (3, 64, 64)


def test_supervised_members_learn_alone():
    torch.manual_seed(0)
    cfg = load_config("supervised", None, [f"members.small.backbone_args={TINY}", f"members.large.backbone_args={TINY}"])
    strategy: Supervised = STRATEGIES.get("supervised")(cfg, INFO).train()
    images, labels = torch.randn(6, 3, 32, 32), torch.tensor([0, 1, 2, 3, 0, 1])
    losses = strategy([images], labels, torch.arange(6), StepInfo(0, 0, 1, 1))
    logits = strategy.logits(images)
    assert torch.allclose(losses["small/loss"], F.cross_entropy(logits["small"], labels), atol=1e-5)
    losses["small/loss"].backward()
    assert all(p.grad is None for p in strategy.members["large"].student.parameters())
    assert strategy.classifier_logits(images)["large"].shape == (6, 4)


@pytest.mark.parametrize("method", ["supervised", "dml"])
def test_baselines_train_end_to_end_with_test_top1(tmp_path, method):
    cfg = load_config(method, None, tiny_run(method))
    summary = Trainer(cfg, tmp_path).fit()
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert all(0.0 <= m["test_top1"] <= 100.0 for m in summary["members"].values())
    assert summary["protocol"]["classify"]["split"] == "test"


@pytest.mark.parametrize("name,channels", [("cifar_shufflenetv2_x0_5", 1024), ("cifar_shufflenetv2_x1_0", 1024)])
def test_cifar_shufflenet_keeps_32px_resolution_and_has_three_stages(name, channels):
    net = build_backbone(name).eval()
    x = torch.randn(2, 3, 32, 32)
    pooled, _, grid = net.forward_tokens(x)
    assert pooled.shape == (2, channels) and grid == (4, 4)  # stride-1 stem, no max-pool: 32 -> 16 -> 8 -> 4
    _, stages, _ = backbone_stages(net)
    assert len(stages) == 3 and net.num_features == channels
    names = net.intermediate_names()
    assert names[0] == "stages.0.0" and len(names) == 16
    assert net.forward_intermediates(x, [names[-1]])[names[-1]].shape == (2, 464 if "x1_0" in name else 192)


def test_lmcl_builds_branches_on_shufflenet():
    torch.manual_seed(0)
    cfg = load_config("lmcl", None, ["members.small.backbone=cifar_shufflenetv2_x0_5", "members.small.backbone_args={}",
                                     "members.large.backbone=cifar_shufflenetv2_x0_5", "members.large.backbone_args={}",
                                     "strategy.embed_dim=8"])
    strategy = STRATEGIES.get("lmcl")(cfg, INFO).train()
    out = strategy.member_outputs(strategy.members["small"].student, torch.randn(4, 3, 32, 32))
    assert [f.shape[1] for f in out["logits"]] == [4, 4, 4] and out["ensemble"].shape == (4, 4)


class HandMadeClassifiers(torch.nn.Module):
    """Two members whose logits for test image i are fixed by hand (image i is the constant 10 i / 255)."""

    has_classifiers = True
    LOGITS = {"a": [[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [4.0, 0.0, 0.0], [0.0, 0.0, 1.0]],
              "b": [[0.0, 2.5, 0.0], [0.0, 1.0, 0.0], [0.0, 4.5, 4.5], [4.0, 0.0, 0.0]]}

    def classifier_logits(self, images):
        rows = (images[:, 0, 0, 0] * 255 / 10).round().long()
        return {name: torch.tensor(table)[rows] for name, table in self.LOGITS.items()}


def test_test_accuracy_of_each_member_and_the_probability_ensemble(monkeypatch):
    """labels 0, 1, 0, 0. Member a is right on images 0, 1, 2 (75%), member b on 1 and 3 (50%). The ensemble averages
    the softmax probabilities: image 0 -> class 1 (0.48 > 0.43, wrong), 1 right, 2 -> class 0 (0.485 > 0.257, right,
    where averaging the logits would pick class 1), 3 -> class 0 (0.588, right): 75%."""
    from sslkd.data import DatasetInfo
    from sslkd.data.datasets import TensorImageDataset
    from sslkd.eval import classify

    info = DatasetInfo("hand", 3, 4, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), ("x", "y", "z"))
    images = (torch.arange(4) * 10).to(torch.uint8)[:, None, None, None].expand(4, 3, 4, 4).contiguous()
    monkeypatch.setattr(classify, "build_dataset",
                        lambda name, root, split: TensorImageDataset(images, torch.tensor([0, 1, 0, 0]), info))
    cfg = load_config("supervised", None, ["eval.batch_size=3", "data.num_workers=0"])  # two batches: 3 + 1
    strategy = HandMadeClassifiers().train()
    result = classify.classify_members(strategy, cfg, torch.device("cpu"))
    assert result == {"members": {"a": 75.0, "b": 50.0}, "ensemble_top1": 75.0, "n_test": 4}
    assert strategy.training  # the evaluator restores the training mode
