"""Training curves: read from metrics.jsonl, drawn by `sslkd plot RUN_DIR` and at the end of every run."""

import json

import pytest

from sslkd.cli import main
from sslkd.errors import UserError
from sslkd.report.plots import curves, plot_run, read_metrics

PNG = b"\x89PNG\r\n\x1a\n"


def _write(run, records):
    run.mkdir(parents=True, exist_ok=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_curves_split_losses_lr_and_knn(tmp_path):
    records = [
        {"step": 1, "epoch": 0, "loss": 2.0, "cnn/loss": 1.5, "lr/cnn": 0.1, "images_per_s": 50.0},
        {"step": 2, "epoch": 0, "skipped_steps": 1, "nonfinite_terms": ["loss"]},
        {"step": 3, "epoch": 0, "loss": 1.0, "cnn/loss": 0.5, "lr/cnn": 0.05, "images_per_s": 60.0},
        {"epoch": 1, "step": 3, "knn/cnn": 31.5},
    ]
    data = curves(records)
    assert data["loss"] == {"loss": ([1, 3], [2.0, 1.0]), "cnn/loss": ([1, 3], [1.5, 0.5])}
    assert data["lr"] == {"cnn": ([1, 3], [0.1, 0.05])}
    assert data["knn"] == {"cnn": ([1], [31.5])}
    _write(tmp_path / "run", records)
    written = plot_run(tmp_path / "run")
    assert [p.name for p in written] == ["losses.png", "lr.png", "knn.png"]
    assert all(p.parent == tmp_path / "run" / "plots" and p.read_bytes()[:8] == PNG for p in written)


def test_plot_cli_and_errors(tmp_path, capsys):
    _write(tmp_path / "run", [{"epoch": 0, "step": 0, "knn/cnn": 30.0}])
    assert main(["plot", str(tmp_path / "run"), "--out-dir", str(tmp_path / "out")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "out" / "knn.png")
    assert main(["plot", str(tmp_path / "missing")]) == 2
    assert "no metrics.jsonl" in capsys.readouterr().err
    (tmp_path / "run" / "metrics.jsonl").write_text("{not json\n")
    with pytest.raises(UserError, match="line 1 is not JSON"):
        read_metrics(tmp_path / "run")


def test_a_finished_run_draws_its_curves(tmp_path, tiny_cfg):
    from sslkd.engine.trainer import Trainer

    Trainer(tiny_cfg("dino"), tmp_path / "run").fit()
    assert sorted(p.name for p in (tmp_path / "run" / "plots").iterdir()) == ["knn.png", "losses.png", "lr.png"]
