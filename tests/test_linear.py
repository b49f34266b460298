"""Linear probes (DINO and DoGo protocols): they learn separable data, keep the backbone frozen, cache features
when nothing is augmented, validate on a held-out split and repeat exactly for a seed."""

import json
import math

import pytest
import torch
from torch import nn

from sslkd.cli import main
from sslkd.config import to_dict
from sslkd.data import build_dataset
from sslkd.data.datasets import DatasetInfo, TensorImageDataset
from sslkd.data.transforms import EvalTransform
from sslkd.core.checkpoint import save_checkpoint
from sslkd.errors import UserError
from sslkd.eval.linear import linear_of_checkpoint, linear_probe, probe_feature_fn, split_train_val
from sslkd.models.backbones import Backbone, build_backbone
from sslkd.registry import STRATEGIES

COLOURS = torch.tensor([[200, 40, 40], [40, 200, 40], [40, 40, 200], [200, 200, 40]])
SIZE = 16


class ColourMean(Backbone):
    """A CNN-kind backbone whose pooled feature is the (signed) mean colour: classes of colours are separable.

    The BatchNorm would move its running statistics if the probe ran it in training mode; ``calls`` counts passes.
    """

    kind = "cnn"

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.cat([torch.eye(3), -torch.eye(3)])[:, :, None, None])
            self.conv.bias.zero_()
        self.norm = nn.BatchNorm2d(6)
        self.num_features = self.token_dim = 6
        self.calls = 0

    def forward_tokens(self, x):
        self.calls += 1
        feat = self.norm(self.conv(x))
        return feat.mean((-2, -1)), feat.flatten(2).transpose(1, 2), tuple(feat.shape[-2:])

    def intermediate_names(self):
        return ["norm"]

    def forward_intermediates(self, x, names=None):
        return {"norm": self(x)}

    def blocks(self):
        return [("norm", self.norm)]

    def pool_block(self, output):
        return output.mean((-2, -1))


class LoggedDataset(TensorImageDataset):
    """Records which items were read and whether through the probe's un-augmented (eval) transform."""

    def __init__(self, *args):
        super().__init__(*args)
        self.log = []

    def __getitem__(self, index):
        self.log.append((int(index), isinstance(self.transform, EvalTransform)))
        return super().__getitem__(index)


def colour_set(n_per_class, seed, cls=TensorImageDataset):
    """Uniform-colour images (4 classes) with pixel noise; crops and flips keep the class colour."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(len(COLOURS)).repeat(n_per_class)
    noise = torch.randint(-20, 21, (len(labels), 3, SIZE, SIZE), generator=g)
    images = (COLOURS[labels][:, :, None, None] + noise).clamp(0, 255).to(torch.uint8)
    info = DatasetInfo("colours", len(COLOURS), SIZE, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), ("r", "g", "b", "y"))
    return cls(images, labels, info)


@pytest.fixture
def data():
    return colour_set(40, seed=0), colour_set(20, seed=1)


def tiny_vit(depth=4):
    return build_backbone("vit_tiny_patch16_224", img_size=SIZE, patch_size=8, depth=depth, embed_dim=16,
                          num_heads=2)


def test_separable_data_reaches_100_percent(data):
    train, test = data
    dogo = linear_probe(ColourMean(), train, test, "dogo", epochs=4, batch_size=16, base_lr=0.05)
    dino = linear_probe(ColourMean(), train, test, "dino", epochs=4, batch_size=16, base_lr=2.0)
    assert dogo["linear_top1"] == 100.0 and dogo["protocol"]["val_top1"] == 100.0
    assert dino["linear_top1"] == 100.0
    p = dino["protocol"]
    assert (p["optimizer"], p["lr"], p["schedule"], p["selection"]) == ("sgd", 2.0 * 16 / 256, "cosine to 0, per epoch",
                                                                       "final epoch")
    assert p["augmentation"].startswith(f"RandomResizedCrop({SIZE}, scale=(0.08, 1.0))")
    assert p["n_last_blocks"] is None and p["feature_dim"] == 6 and p["best_epoch"] == 4


def test_protocol_defaults_follow_the_papers(data):
    train, test = data
    dino = linear_probe(ColourMean(), train, test, "dino", epochs=1)["protocol"]
    assert (dino["batch_size"], dino["base_lr"], dino["lr"], dino["momentum"], dino["weight_decay"]) == (
        256, 0.01, 0.01, 0.9, 0.0)
    assert dino["val_fraction"] == 0.0 and dino["n_val"] == 0 and dino["val_top1"] is None
    dogo = linear_probe(ColourMean(), train, test, "dogo", epochs=1)["protocol"]
    assert (dogo["optimizer"], dogo["batch_size"], dogo["lr"], dogo["weight_decay"], dogo["augmentation"]) == (
        "adam", 64, 3e-4, 1e-6, "none")
    assert dogo["schedule"] == "constant" and dogo["selection"] == "best validation top-1"
    vit = linear_probe(tiny_vit(), train, test, "dino", epochs=1, augment=False)["protocol"]
    assert vit["base_lr"] == 1e-3 and vit["n_last_blocks"] == 4


def test_vit_features_are_the_last_four_cls_tokens(data):
    backbone = tiny_vit().eval()
    fn, description = probe_feature_fn(backbone, 4)
    x = torch.randn(3, 3, SIZE, SIZE)
    with torch.no_grad():
        feats = fn(x)
        first = backbone.forward_intermediates(x, ["blocks.0"])["blocks.0"]
        assert feats.shape == (3, 4 * 16)
        torch.testing.assert_close(feats[:, :16], first)
        torch.testing.assert_close(feats[:, -16:], backbone(x))  # the last block's CLS after the final norm
    assert "blocks.0, blocks.1, blocks.2, blocks.3" in description
    result = linear_probe(backbone, *data, "dogo", epochs=1, n_last_blocks=2)
    assert result["protocol"]["feature_dim"] == 2 * 16 and result["protocol"]["n_last_blocks"] == 2
    with pytest.raises(UserError, match="n_last_blocks=5 but this ViT has 4 blocks"):
        probe_feature_fn(backbone, 5)


def test_backbone_stays_frozen(data):
    backbone = ColourMean().train()
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    linear_probe(backbone, *data, "dino", epochs=2, batch_size=32, val_fraction=0.2)
    after = backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in backbone.parameters())
    assert backbone.training


def test_features_are_extracted_once_without_augmentation(data):
    train, test = data  # 160 train and 80 test images: 5 + 3 batches of 32
    for protocol, epochs, augment in (("dogo", 1, None), ("dogo", 3, None), ("dino", 3, False)):
        backbone = ColourMean()
        result = linear_probe(backbone, train, test, protocol, epochs=epochs, augment=augment, batch_size=16,
                              feature_batch_size=32)
        assert backbone.calls == 5 + 3, (protocol, epochs)
        assert result["protocol"]["cached_train_features"] and result["protocol"]["augmentation"] == "none"
    backbone = ColourMean()
    linear_probe(backbone, train, test, "dino", epochs=3, batch_size=16, feature_batch_size=32)
    assert backbone.calls == 3 + 3 * 10  # the test set once, then 10 augmented batches every epoch


def test_validation_split_is_stratified_disjoint_and_fixed_by_seed():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    train_idx, val_idx = split_train_val(labels, 0.1, seed=3)
    assert set(train_idx.tolist()).isdisjoint(val_idx.tolist())
    assert sorted(train_idx.tolist() + val_idx.tolist()) == list(range(100))
    assert torch.bincount(labels[val_idx]).tolist() == [5, 3, 2]
    again = split_train_val(labels, 0.1, seed=3)
    assert torch.equal(again[0], train_idx) and torch.equal(again[1], val_idx)
    assert not torch.equal(split_train_val(labels, 0.1, seed=4)[1], val_idx)
    assert len(split_train_val(labels, 0.0, seed=3)[1]) == 0


def test_probe_trains_only_on_the_train_part_of_the_split(data):
    train = colour_set(40, seed=0, cls=LoggedDataset)
    result = linear_probe(ColourMean(), train, data[1], "dino", epochs=2, batch_size=32, val_fraction=0.25, seed=5)
    train_idx, val_idx = split_train_val(train.labels, 0.25, seed=5)
    augmented = {i for i, eval_view in train.log if not eval_view}
    validated = {i for i, eval_view in train.log if eval_view}
    assert augmented == set(train_idx.tolist()) and validated == set(val_idx.tolist())
    p = result["protocol"]
    assert (p["n_train"], p["n_val"], p["n_test"]) == (120, 40, 80)
    assert 1 <= p["best_epoch"] <= 2 and p["selection"] == "best validation top-1"


def test_same_seed_same_result(data):
    train, test = data
    backbones = [ColourMean() for _ in range(3)]
    rng = torch.get_rng_state()
    runs = [linear_probe(b, train, test, "dino", seed=s, epochs=2, batch_size=32, val_fraction=0.1)
            for b, s in zip(backbones, (7, 7, 8))]
    assert runs[0] == runs[1]
    assert runs[0]["protocol"]["final_train_loss"] != runs[2]["protocol"]["final_train_loss"]
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's random stream is left where it was


@pytest.mark.parametrize("kwargs, message", [
    (dict(protocol="simclr"), "unknown linear-probe protocol 'simclr'"),
    (dict(epochs=0), "epochs >= 1"),
    (dict(val_fraction=1.0), "val_fraction must lie in [0, 1)"),
])
def test_user_mistakes_are_user_errors(data, kwargs, message):
    with pytest.raises(UserError) as info:
        linear_probe(ColourMean(), *data, **{"protocol": "dino", **kwargs})
    assert message in str(info.value) and "\n" not in str(info.value)


def test_checkpoint_probe_through_the_cli(tmp_path, tiny_cfg, capsys):
    cfg = tiny_cfg("dino")
    strategy = STRATEGIES.get("dino")(cfg, build_dataset("digits").info)
    checkpoint = tmp_path / "last.pt"
    save_checkpoint(checkpoint, {"method": "dino", "config": to_dict(cfg), "strategy": strategy.state_dict()})

    probe = ["eval", "linear", "--checkpoint", str(checkpoint)]
    assert main([*probe, "--protocol", "dogo", "--epochs", "2", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    p = results["cnn"]["protocol"]
    assert set(results) == {"cnn"} and 0 <= results["cnn"]["linear_top1"] <= 100
    assert (p["name"], p["epochs"], p["n_train"] + p["n_val"], p["n_test"]) == ("dogo", 2, 1437, 360)
    assert p["backbone"] == "cifar_resnet20" and p["dataset"] == "digits" and math.isfinite(p["final_train_loss"])

    assert main([*probe, "--epochs", "1", "--no-augment"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("cnn: linear top-1 ") and "dino protocol, 1 epochs" in out and "final epoch" in out
    with pytest.raises(UserError, match="checkpoint has no member 'vit'; its members are cnn"):
        linear_of_checkpoint(checkpoint, member="vit", device="cpu")
