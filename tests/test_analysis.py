"""Sec. 4.4 analyses on hand-made features (alignment, uniformity, negative alignment, linear CKA and its
invariances), and the multi-exit / analysis commands on a tiny trained run."""

import math

import pytest
import torch

from sslkd.cli import main
import pandas as pd

from sslkd.eval.analysis import (METRICS, alignment, cka_matrix, layer_metrics, linear_cka, negative_alignment,
                                 summarize, uniformity)

TINY = ["train.epochs=1", "train.batch_size=16", "data.train_subset=64", "data.num_workers=0", "eval.knn_k=[5]",
        "members.vit.backbone_args={img_size: 32, patch_size: 8, depth: 2, embed_dim: 24, num_heads: 2}",
        "strategy.proj_hidden_dim=16", "strategy.layer_proj_hidden_dim=12", "strategy.pred_hidden_dim=16",
        "strategy.out_dim=8"]


def test_alignment_uniformity_and_negative_alignment_by_hand():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    y = torch.tensor([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    assert alignment(x, y) == pytest.approx((2 + 0 + 4) / 3)
    assert alignment(x, y, gamma=1) == pytest.approx((math.sqrt(2) + 0 + 2) / 3)
    # pairwise squared distances of x: (0,1): 2, (0,2): 4, (1,2): 2
    assert negative_alignment(x) == pytest.approx(8 / 3)
    assert uniformity(x, t=2) == pytest.approx(math.log((2 * math.exp(-4) + math.exp(-8)) / 3), abs=1e-6)
    metrics = layer_metrics(x, y)
    assert metrics["alignment_ratio"] == pytest.approx(metrics["negative_alignment"] / metrics["alignment"])
    assert metrics["uniformity_alignment_ratio"] == pytest.approx(-metrics["uniformity"] / metrics["alignment"])


def test_linear_cka_is_one_with_itself_and_invariant_to_rotation_and_scale():
    torch.manual_seed(0)
    x = torch.randn(50, 6)
    q, _ = torch.linalg.qr(torch.randn(6, 6))
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-9)
    assert linear_cka(x, x @ q) == pytest.approx(1.0, abs=1e-9)
    assert linear_cka(x, 3.5 * x) == pytest.approx(1.0, abs=1e-9)
    y = torch.randn(50, 4)
    assert linear_cka(x, y) == pytest.approx(linear_cka(y, x))
    assert linear_cka(x, y) < 0.9
    assert linear_cka(x, torch.cat([x, y], dim=1)) > linear_cka(x, y)


def test_linear_cka_by_hand_on_one_dimensional_features():
    # one column each: CKA = squared correlation of the centred columns
    x = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    y = torch.tensor([[1.0], [3.0], [2.0], [4.0]])
    # centred: (-1.5, -0.5, 0.5, 1.5) and (-1.5, 0.5, -0.5, 1.5): correlation 4 / 5 = 0.8
    assert linear_cka(x, y) == pytest.approx(0.64, abs=1e-9)
    matrix = cka_matrix({"a": x, "b": y})
    assert matrix.loc["a", "a"] == 1.0 and matrix.loc["a", "b"] == matrix.loc["b", "a"]


def test_summary_is_mean_and_sample_std_over_seeds_per_framework_and_layer():
    values = {metric: 0.0 for metric, _ in METRICS}
    rows = pd.DataFrame([
        {"framework": "SimCLR", "layer": 1, "seed": 0, **values, "alignment": 1.0},
        {"framework": "SimCLR", "layer": 1, "seed": 1, **values, "alignment": 3.0},
        {"framework": "SD-SimCLR", "layer": 1, "seed": 0, **values, "alignment": 5.0}])
    summary = summarize(rows).set_index("framework")
    assert summary.loc["SimCLR", "alignment_mean"] == 2.0
    assert summary.loc["SimCLR", "alignment_std"] == pytest.approx(math.sqrt(2.0))
    assert summary.loc["SimCLR", "seeds"] == 2
    assert summary.loc["SD-SimCLR", "alignment_std"] == 0.0 and summary.loc["SD-SimCLR", "seeds"] == 1


def test_multiexit_and_analysis_commands(tmp_path, capsys):
    runs = []
    for name, extra in (("base", ["strategy.layers=[]", "strategy.beta=0.0"]), ("sd", [])):
        out = tmp_path / name
        assert main(["train", "--method", "sdssl", "--output-dir", str(out), *TINY, *extra]) == 0
        runs.append(str(out))
    assert main(["eval", "knn", "--checkpoint", runs[1] + "/checkpoints/last.pt", "--layers", "1,final"]) == 0
    assert "layer  2 (blocks.1)" in capsys.readouterr().out
    assert main(["eval", "multiexit", "--checkpoints", *runs, "--out", str(tmp_path / "me")]) == 0
    table = (tmp_path / "me" / "multiexit_knn.md").read_text()
    assert "MoCo v3" in table and "SD-MoCo v3" in table
    assert (tmp_path / "me" / "multiexit_knn.png").stat().st_size > 0
    assert main(["eval", "multiexit", "--checkpoints", runs[1], "--protocol", "linear", "--probe", "dino",
                 "--epochs", "1", "--no-augment", "--out", str(tmp_path / "me_linear")]) == 0
    rows = pd.read_csv(tmp_path / "me_linear" / "multiexit_linear_rows.csv")
    assert sorted(rows["layer"]) == [1, 2] and rows["top1"].between(0, 100).all()
    assert main(["eval", "analyze", "--checkpoints", *runs, "--out", str(tmp_path / "an"), "--max-images", "50"]) == 0
    assert (tmp_path / "an" / "cka.png").stat().st_size > 0 and (tmp_path / "an" / "metrics.png").stat().st_size > 0
    summary = (tmp_path / "an" / "analysis_summary.md").read_text()
    assert "| SD-MoCo v3 | 2 |" in summary and "| MoCo v3 | 1 |" in summary
    assert main(["eval", "linear", "--checkpoint", runs[1], "--layers", "1", "--epochs", "1",
                 "--protocol", "dogo"]) == 0
    assert "layer  1" in capsys.readouterr().out
