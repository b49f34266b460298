"""Evaluation protocols beyond k-NN and the linear probe: each checked for what it must guarantee, on digits and
tiny models (semi-supervised label fractions, transfer, noisy labels, prediction consistency, attention distance,
t-SNE) and through the CLI with --record."""

import json
import math

import pytest
import torch
from torchvision.io import write_png

from sslkd.cli import main
from sslkd.config import to_dict
from sslkd.data import build_dataset
from sslkd.core.checkpoint import save_checkpoint
from sslkd.errors import UserError
from sslkd.eval.attention import (
    feature_self_attention,
    grid_distances,
    layer_distances,
    mean_attention_distance,
)
from sslkd.eval.consistency import consistency_of_checkpoints, prediction_consistency
from sslkd.eval.noisy import noisy_labels, noisy_of_checkpoint
from sslkd.eval.semisup import class_balanced_fraction, semisup_of_checkpoint
from sslkd.eval.transfer import transfer_of_checkpoint
from sslkd.eval.tsne import tsne_of_checkpoint
from sslkd.models.backbones import build_backbone
from sslkd.registry import STRATEGIES

TINY_VIT = {"img_size": 16, "patch_size": 4, "depth": 2, "embed_dim": 16, "num_heads": 2}


@pytest.fixture
def run_dir(tmp_path, tiny_cfg):
    """A finished-looking dino run on digits: checkpoints/last.pt and a summary.json without evals."""
    cfg = tiny_cfg("dino", ["eval.batch_size=512"])
    strategy = STRATEGIES.get("dino")(cfg, build_dataset("digits").info)
    run = tmp_path / "run"
    save_checkpoint(run / "checkpoints" / "last.pt", {"method": "dino", "config": to_dict(cfg),
                                                      "strategy": strategy.state_dict()})
    summary = {"method": "dino", "dataset": "digits", "seed": 0, "epochs": 1, "wall_time_s": 1.0,
               "members": {"cnn": {"backbone": "cifar_resnet20", "knn_top1": 50.0, "linear_top1": None}}}
    (run / "summary.json").write_text(json.dumps(summary))
    return run


# ------------------------------------------------------------------------------------------ semi-supervised
def test_label_fraction_is_class_balanced_and_fixed_by_seed():
    labels = torch.tensor([0] * 100 + [1] * 50 + [2] * 10)
    idx = class_balanced_fraction(labels, 0.1, seed=3)
    assert torch.bincount(labels[idx]).tolist() == [10, 5, 1]
    assert torch.equal(idx, class_balanced_fraction(labels, 0.1, seed=3))
    assert not torch.equal(idx, class_balanced_fraction(labels, 0.1, seed=4))
    assert torch.bincount(labels[class_balanced_fraction(labels, 0.01, 0)]).tolist() == [1, 1, 1]  # >= 1 per class
    assert len(class_balanced_fraction(labels, 1.0, 0)) == 160
    with pytest.raises(UserError, match="label fraction"):
        class_balanced_fraction(labels, 0.0, 0)


def test_semisup_finetunes_a_copy_on_the_fraction(run_dir):
    checkpoint = run_dir / "checkpoints" / "last.pt"
    before = checkpoint.read_bytes()
    results = semisup_of_checkpoint(checkpoint, 0.1, protocol="dogo", epochs=1, batch_size=32, device="cpu")
    p = results["cnn"]["protocol"]
    train = build_dataset("digits").labels
    n_val = sum(round(0.15 * int(n)) for n in torch.bincount(train))
    assert p["n_val"] == n_val and p["label_fraction"] == 0.1 and p["class_balanced"]
    assert p["n_train"] == sum(round(0.1 * (int(n) - round(0.15 * int(n)))) for n in torch.bincount(train))
    assert 0 <= results["cnn"]["top1"] <= 100 and p["epochs"] == 1 and p["best_epoch"] == 1
    assert checkpoint.read_bytes() == before


# ------------------------------------------------------------------------------------------ noisy labels
@pytest.mark.parametrize("rate", [0.0, 0.2, 0.5, 1.0])
def test_noise_rate_is_what_was_asked(rate):
    labels = torch.arange(1000) % 10
    noisy, redrawn = noisy_labels(labels, rate, 10, seed=0)
    assert len(redrawn) == round(rate * 1000)
    untouched = torch.ones(1000, dtype=torch.bool)
    untouched[redrawn] = False
    assert torch.equal(noisy[untouched], labels[untouched])
    flipped, redrawn = noisy_labels(labels, rate, 10, seed=0, exclude_true=True)
    assert (flipped != labels).float().mean().item() == pytest.approx(rate)
    assert int(flipped.min()) >= 0 and int(flipped.max()) <= 9
    if rate == 1.0:  # uniform over all classes keeps about 1/C of the labels right
        assert 0.05 < (noisy == labels).float().mean().item() < 0.15
    assert torch.equal(noisy_labels(labels, rate, 10, seed=0)[0], noisy)


def test_noisy_probe_trains_on_noisy_labels_and_tests_on_clean(run_dir):
    results = noisy_of_checkpoint(run_dir, 0.4, epochs=1, exclude_true=True, device="cpu")
    p = results["cnn"]["protocol"]
    assert p["noise_rate"] == 0.4 and p["n_redrawn"] == round(0.4 * 1437)
    assert p["wrong_label_fraction"] == pytest.approx(round(0.4 * 1437) / 1437)
    assert p["test_labels"] == "clean" and 0 <= results["cnn"]["top1"] <= 100


# ------------------------------------------------------------------------------------------ consistency
def test_prediction_consistency_values():
    a = torch.tensor([0, 1, 2, 3])
    assert prediction_consistency(a, a) == 1.0
    assert prediction_consistency(a, torch.tensor([0, 1, 0, 0])) == 0.5
    with pytest.raises(ValueError):
        prediction_consistency(a, a[:2])


def test_consistency_of_a_model_with_itself_is_one(run_dir):
    results = consistency_of_checkpoints(run_dir, "cnn", run_dir / "checkpoints" / "last.pt", "cnn", device="cpu")
    assert results["cnn"]["consistency"] == 1.0
    assert results["cnn"]["knn_top1"] == results["cnn"]["other_knn_top1"]
    assert results["cnn"]["protocol"]["n_test"] == 360


# ------------------------------------------------------------------------------------------ attention distance
def test_mean_attention_distance_on_hand_made_maps():
    n = 4  # a 2 x 2 grid, tokens 8 px apart
    identity = torch.eye(n).expand(1, 1, n, n)
    assert mean_attention_distance(identity, (2, 2), 8.0).tolist() == [0.0]
    uniform = torch.full((1, 1, n, n), 1 / n)
    assert mean_attention_distance(uniform, (2, 2), 8.0).item() == pytest.approx((8 + 8 + 8 * math.sqrt(2)) / 4)
    right = torch.zeros(1, 2, 2, 2)  # 1 x 2 grid: head 0 looks at the other token, head 1 at itself
    right[0, 0] = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    right[0, 1] = torch.eye(2)
    assert mean_attention_distance(right, (1, 2), 4.0).tolist() == [4.0, 0.0]
    assert grid_distances((1, 3), 2.0)[0].tolist() == [0.0, 2.0, 4.0]


def test_vit_attention_is_read_from_its_blocks():
    vit = build_backbone("vit_tiny_patch16_224", **TINY_VIT).eval()
    for block in vit.model.blocks:  # q = k = 0: every token attends uniformly, whatever the input
        torch.nn.init.zeros_(block.attn.qkv.weight)
        torch.nn.init.zeros_(block.attn.qkv.bias)
    distances = layer_distances(vit, torch.randn(3, 3, 16, 16))
    expected = grid_distances((4, 4), 4.0).mean().item()
    assert list(distances) == ["blocks.0", "blocks.1"]
    for heads in distances.values():
        assert heads.shape == (2,) and torch.allclose(heads, torch.full((2,), expected))


def test_cnn_analogue_uses_feature_self_attention():
    constant = torch.ones(2, 5, 3, 3)  # equal features everywhere: uniform weights
    assert torch.allclose(feature_self_attention(constant), torch.full((2, 1, 9, 9), 1 / 9))
    cnn = build_backbone("cifar_resnet20", widths=[4, 8, 8]).eval()
    distances = layer_distances(cnn, torch.randn(2, 3, 16, 16))
    assert list(distances) == cnn.intermediate_names()
    assert all(0 <= d.item() <= 16 * math.sqrt(2) for d in distances.values())


# ------------------------------------------------------------------------------------------ transfer, t-SNE
def _image_folder(root, classes=2, per_class=6, size=8):
    generator = torch.Generator().manual_seed(0)
    for split in ("train", "test"):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                image = torch.randint(0, 100, (3, size, size), generator=generator, dtype=torch.uint8) + 150 * c
                write_png(image, str(folder / f"{i}.png"))


def test_transfer_probes_and_finetunes_on_another_data_set(run_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("SSLKD_CACHE", str(tmp_path / "cache"))
    _image_folder(tmp_path / "target")
    linear = transfer_of_checkpoint(run_dir, "imagefolder", str(tmp_path / "target"), protocol="mcl", epochs=2,
                                    device="cpu")["cnn"]
    p = linear["protocol"]
    assert (p["mode"], p["source_dataset"], p["target_dataset"], p["n_test"]) == ("linear", "digits",
                                                                                    "imagefolder", 12)
    assert p["image_size"] == 32 and p["optimizer"] == "sgd" and "divided by 10" in p["schedule"]
    tuned = transfer_of_checkpoint(run_dir, "imagefolder", str(tmp_path / "target"), mode="finetune",
                                   protocol="mokd", epochs=1, device="cpu")["cnn"]
    assert tuned["protocol"]["trained"].startswith("whole backbone") and tuned["protocol"]["n_train"] == 12
    with pytest.raises(UserError, match="not a finetune protocol"):
        transfer_of_checkpoint(run_dir, "imagefolder", str(tmp_path / "target"), mode="finetune", protocol="mcl")


def test_tsne_writes_a_png(run_dir, tmp_path):
    results = tsne_of_checkpoint(run_dir, str(tmp_path / "tsne"), num_images=60, device="cpu")
    png = tmp_path / "tsne_cnn.png"
    assert results["cnn"]["png"] == str(png) and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert results["cnn"]["protocol"]["n_images"] == 60


# ------------------------------------------------------------------------------------------ CLI and --record
def test_cli_records_results_in_the_summary(run_dir, tmp_path, capsys):
    out = tmp_path / "noisy.json"
    assert main(["eval", "noisy", "--checkpoint", str(run_dir), "--rate", "0.2", "--epochs", "1", "--device", "cpu",
                 "--output", str(out), "--record"]) == 0
    assert capsys.readouterr().out.startswith("cnn: top1 ")
    assert json.loads(out.read_text())["key"] == "noisy_0.2_dogo"
    assert main(["eval", "linear", "--checkpoint", str(run_dir / "checkpoints" / "last.pt"), "--protocol", "dogo",
                 "--epochs", "1", "--record"]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert set(summary["evals"]) == {"noisy_0.2_dogo", "linear_dogo_1ep"}
    assert summary["evals"]["noisy_0.2_dogo"]["cnn"]["protocol"]["noise_rate"] == 0.2
    assert summary["members"]["cnn"]["linear_top1"] == summary["evals"]["linear_dogo_1ep"]["cnn"]["linear_top1"]
    assert main(["eval", "semisup", "--checkpoint", str(run_dir), "--fraction", "0.1", "--member", "vit"]) == 2
    assert "no member 'vit'" in capsys.readouterr().err


def test_zero_epoch_run_is_rebuilt_from_its_config(tmp_path, tiny_cfg):
    from sslkd.engine.trainer import Trainer

    cfg = tiny_cfg("dino", ["train.epochs=0"])
    summary = Trainer(cfg, tmp_path / "floor").fit()
    results = consistency_of_checkpoints(tmp_path / "floor", "cnn", tmp_path / "floor", "cnn", device="cpu")
    assert results["cnn"]["knn_top1"] == pytest.approx(summary["members"]["cnn"]["knn_top1"])


# ------------------------------------------------------------------------------------------ tables of recorded evals
def _fake_run(path, method, members, evals, seed=0):
    path.mkdir(parents=True)
    summary = {"method": method, "dataset": "cifar10_subset", "seed": seed, "epochs": 4, "wall_time_s": 60.0,
               "members": {name: {"backbone": backbone, "paper_name": paper, "knn_top1": 30.0, "linear_top1": None}
                           for name, (backbone, paper) in members.items()},
               "evals": evals}
    (path / "summary.json").write_text(json.dumps(summary))


def test_recorded_evaluations_table_shows_ours_and_the_papers(tmp_path):
    from sslkd.report import compare_table

    pair = {"cnn": ("cifar_resnet20", "R50"), "vit": ("vit_tiny", "ViT-S")}
    for seed, (a, b) in enumerate(((40.0, 30.0), (42.0, 32.0))):
        _fake_run(tmp_path / f"mokd{seed}", "mokd", pair,
                  {"semisup_1pct": {"cnn": {"top1": a}, "vit": {"top1": b}, "wall_time_s": 3.0}}, seed)
    _fake_run(tmp_path / "dino", "dino", {"cnn": ("cifar_resnet20", "R50")},
              {"semisup_1pct": {"cnn": {"top1": 35.0}}, "linear_dino": {"cnn": {"linear_top1": 1.0}}})
    table = compare_table([tmp_path], "mokd_table4")
    ours = table[table.Setting.str.startswith("ours")].set_index(["Method", "Member"])
    assert ours.loc[("mokd", "cnn"), "semisup_1pct"] == "41.0 +- 1.4 (2)"
    assert ours.loc[("mokd", "vit"), "semisup_1pct"] == "31.0 +- 1.4 (2)"
    assert ours.loc[("dino", "cnn"), "semisup_1pct"] == "35.0 (1)" and "linear_dino" not in table.columns
    paper = table[table.Setting.str.startswith("paper")].set_index(["Method", "Backbone"])
    assert paper.loc[("paper: MOKD", "R50"), ["paper 1%", "paper 10%"]].tolist() == ["53.8", "68.7"]
    assert paper.loc[("paper: MOKD", "ViT-S"), ["paper 1%", "paper 10%"]].tolist() == ["44.9", "68.2"]
    assert paper.loc[("paper: Independent", "R50"), ["paper 1%", "paper 10%"]].tolist() == ["49.5", "67.3"]


@pytest.mark.parametrize("protocol", ["consistency", "tsne"])
def test_protocols_extract_features_under_the_extraction_context(run_dir, tmp_path, monkeypatch, protocol):
    """Consistency and t-SNE extract features as the k-NN protocol does (``extraction_context``: the run's Linear
    kernel on a CPU), with the checkpoint's config."""
    import sslkd.eval.consistency as consistency
    import sslkd.eval.tsne as tsne
    from sslkd.eval.protocol import extraction_context

    entered = []

    def spy(cfg, device):
        entered.append((cfg.method, str(device)))
        return extraction_context(cfg, device)

    module = consistency if protocol == "consistency" else tsne
    monkeypatch.setattr(module, "extraction_context", spy)
    if protocol == "consistency":
        consistency_of_checkpoints(run_dir, "cnn", run_dir / "checkpoints" / "last.pt", "cnn", device="cpu")
    else:
        tsne_of_checkpoint(run_dir, str(tmp_path / "tsne"), num_images=30, device="cpu")
    assert entered and all(entry == ("dino", "cpu") for entry in entered)
