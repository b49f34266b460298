"""End to end: a run leaves its files; a stopped and resumed run equals an uninterrupted one; k-NN of a checkpoint."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sslkd.cli import main
from sslkd.engine.trainer import Trainer
from conftest import tiny_overrides

REPO = Path(__file__).resolve().parents[1]


def test_mokd_run_leaves_config_metrics_checkpoint_summary(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--method", "mokd", "--output-dir", str(run), *tiny_overrides("mokd"), "tag=lambda 1"]) == 0
    assert (run / "config.yaml").is_file() and (run / "checkpoints" / "last.pt").is_file()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert set(records[0]) == {"step", "epoch", "knn/cnn", "knn/vit"} and records[0]["step"] == 0  # the floor
    first_step = records[1]
    assert {"loss", "cnn/sm", "cnn/st", "cnn/cm", "cnn/ct", "lr/cnn", "lr/vit", "images_per_s"} <= set(first_step)
    assert {"teacher_temp/cross", "teacher_temp/cnn/self", "teacher_temp/vit/self"} <= set(first_step)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["method"] == "mokd" and summary["dataset"] == "digits" and summary["epochs"] == 1
    assert summary["tag"] == "lambda 1"  # tables keep tagged runs apart (report.core.setting_label)
    for name in ("cnn", "vit"):
        assert 0 <= summary["members"][name]["knn_top1"] <= 100
    assert summary["protocol"]["knn_k"] == 20 and summary["protocol"]["n_test"] == 360


def test_resumed_run_equals_uninterrupted_run(tmp_path, tiny_cfg):
    straight = Trainer(tiny_cfg("mokd", epochs=2), tmp_path / "straight")
    straight.fit()
    interrupted = Trainer(tiny_cfg("mokd", epochs=2), tmp_path / "resumed")
    assert interrupted.fit(stop_at_epoch=1) is None
    resumed = Trainer(tiny_cfg("mokd", epochs=2), tmp_path / "resumed", resume=True)
    assert resumed.epoch == 1
    resumed.fit()
    a, b = straight.strategy.state_dict(), resumed.strategy.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key

    def losses(run):
        records = [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k != "images_per_s"} for r in records]

    assert losses("straight") == losses("resumed")


def test_teachers_follow_students_during_training(tmp_path, tiny_cfg):
    trainer = Trainer(tiny_cfg("mokd"), tmp_path / "run")
    start = {n: p.clone() for n, p in trainer.strategy.members["cnn"].teacher.named_parameters()}
    trainer.fit(stop_at_epoch=1)
    moved = [not torch.equal(start[n], p) for n, p in trainer.strategy.members["cnn"].teacher.named_parameters()]
    assert any(moved)


def test_knn_eval_of_checkpoint_cli_and_tool(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--method", "dino", "--output-dir", str(run), *tiny_overrides("dino")]) == 0
    summary = json.loads((run / "summary.json").read_text())
    capsys.readouterr()
    assert main(["eval", "knn", "--checkpoint", str(run / "checkpoints" / "last.pt"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["cnn"]["knn_top1"] == summary["members"]["cnn"]["knn_top1"]
    assert result["cnn"]["protocol"]["encoder"] == "teacher"  # DINO's protocol
    assert main(["eval", "knn", "--checkpoint", str(run), "--encoder", "student", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["cnn"]["protocol"]["encoder"] == "student"
    tool = subprocess.run(
        [sys.executable, str(REPO / "tools" / "knn_eval.py"), "--checkpoint", str(run / "checkpoints" / "last.pt"), "--member", "cnn"],
        capture_output=True, text=True, check=True,
    )
    assert f"{summary['members']['cnn']['knn_top1']:.2f}" in tool.stdout


def inject_nan(trainer, at_step):
    forward = trainer.strategy.forward

    def poisoned(views, labels, indices, step):
        losses = forward(views, labels, indices, step)
        if step.step == at_step:
            losses["cnn/sm"] = losses["cnn/sm"] * float("nan")
            losses["loss"] = losses["loss"] + losses["cnn/sm"]
        return losses

    trainer.strategy.forward = poisoned


def test_nonfinite_loss_stops_naming_step_and_term_and_keeps_checkpoint(tmp_path, tiny_cfg):
    import pytest

    from sslkd.errors import UserError

    trainer = Trainer(tiny_cfg("mokd", epochs=2), tmp_path / "run")
    inject_nan(trainer, at_step=trainer.steps_per_epoch + 1)
    with pytest.raises(UserError, match=rf"step {trainer.steps_per_epoch + 1} \(epoch 1\) in cnn/sm"):
        trainer.fit()
    kept = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert kept["epoch"] == 1 and kept["step"] == trainer.steps_per_epoch


def test_nonfinite_loss_can_skip_the_step(tmp_path, tiny_cfg):
    trainer = Trainer(tiny_cfg("mokd", ["train.on_nonfinite=skip"]), tmp_path / "run")
    inject_nan(trainer, at_step=1)
    summary = trainer.fit()
    assert summary["skipped_steps"] == 1
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    skipped = [r for r in records if "skipped_steps" in r]
    assert skipped == [{"step": 2, "epoch": 0, "skipped_steps": 1, "nonfinite_terms": ["cnn/sm"]}]


def test_finished_or_stopped_fit_leaves_no_loader_workers_behind(tmp_path, tiny_cfg):
    """A trainer still referenced after fit (as reference cycles keep one alive in a long-lived process) holds no
    worker processes: tools/reproduce.py runs many trainings in one process."""
    import multiprocessing

    trainer = Trainer(tiny_cfg("dino", ["data.num_workers=2"], epochs=2), tmp_path / "run")
    assert trainer.fit(stop_at_epoch=1) is None
    assert multiprocessing.active_children() == []
    assert trainer.fit()["epochs"] == 2  # a stopped trainer can go on
    assert multiprocessing.active_children() == []


@pytest.mark.parametrize("batched", [True, False])
def test_the_batches_do_not_depend_on_the_loader_worker_count(tmp_path, tiny_cfg, batched):
    """Each item's views come from its own seed, so runs differing only in data.num_workers are one setting
    (sslkd.report.records.NOT_SETTINGS)."""
    batches = []
    for workers in (0, 2):
        cfg = tiny_cfg("dino", [f"data.num_workers={workers}", f"data.augment.batched={batched}"])
        trainer = Trainer(cfg, tmp_path / f"run{workers}")
        batches.append(next(iter(trainer.loader)))
        trainer._release_workers()
    flat = [tensors_of(batch) for batch in batches]
    assert len(flat[0]) == len(flat[1]) > 2
    for mine, theirs in zip(*flat):
        assert torch.equal(mine, theirs)


def tensors_of(batch) -> list[torch.Tensor]:
    """The tensors of a loader batch (nested lists and tuples of views, labels and indices), in order."""
    if isinstance(batch, torch.Tensor):
        return [batch]
    return [tensor for item in batch for tensor in tensors_of(item)]
