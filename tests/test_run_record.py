"""What a run records and shows so that its numbers can be trusted: each member's k-NN at step 0 (the floor),
measured once and without changing the training; provenance; normally readable files; a progress line that keeps
step/total and the time left at 80 columns; one log line per record when output is not a terminal."""

from __future__ import annotations

import io
import json
import os
import re

import pytest
import torch
from rich.console import Console

from sslkd.config import Config, from_dict, read_yaml
from sslkd.engine import trainer as trainer_module
from sslkd.core.checkpoint import current_umask
from sslkd.core.rundir import RunDir
from sslkd.engine.trainer import Trainer


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SSLKD_CACHE", str(tmp_path_factory.mktemp("cache")))


def counted_evaluations(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = trainer_module.evaluate_members
    monkeypatch.setattr(trainer_module, "evaluate_members", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def test_floor_is_measured_once_recorded_and_kept_across_a_resume(tmp_path, tiny_cfg, monkeypatch):
    calls = counted_evaluations(monkeypatch)
    run = tmp_path / "run"
    log = io.StringIO()
    assert Trainer(tiny_cfg("dino", epochs=2), run, console=Console(file=log, width=40)).fit(stop_at_epoch=1) is None
    assert len(calls) == 1
    cfg = from_dict(Config, read_yaml(run / "config.yaml"))
    summary = Trainer(cfg, run, resume=True, console=Console(file=log, width=40)).fit()
    assert len(calls) == 2  # the floor is not measured again, only the run-end evaluation
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    floor_records = [r for r in records if r["step"] == 0]
    assert len(floor_records) == 1
    assert summary["members"]["cnn"]["random_init"] == {"knn_top1": floor_records[0]["knn/cnn"]}
    lines = log.getvalue().splitlines()  # a log file: one line per record, never wrapped, with step/total and ETA
    assert lines and all(re.match(r"step \d+/8 eta \d+:\d\d:\d\d  loss ", line) for line in lines), lines


def test_floor_leaves_training_unchanged_and_summary_has_provenance_and_readable_files(tmp_path, tiny_cfg,
                                                                                          monkeypatch):
    run = tmp_path / "a"
    with_floor = Trainer(tiny_cfg("dino"), run, console=Console(file=io.StringIO()))
    summary = with_floor.fit()
    provenance = summary["provenance"]
    assert provenance["world_size"] == 1 and provenance["device_type"] == "cpu" and provenance["precision"] == "fp32"
    assert provenance["torch_version"] == torch.__version__ and provenance["sslkd_version"]
    assert re.fullmatch(r"[0-9a-f]{40}", provenance["git_revision"]["commit"])
    assert isinstance(provenance["git_revision"]["dirty"], bool)
    assert json.loads((run / "summary.json").read_text())["provenance"] == provenance
    expected = 0o666 & ~current_umask()
    for path in (run / "summary.json", run / RunDir.CHECKPOINT):
        assert os.stat(path).st_mode & 0o777 == expected, path
    monkeypatch.setattr(Trainer, "_measure_floor", lambda self: None)
    without = Trainer(tiny_cfg("dino"), tmp_path / "b", console=Console(file=io.StringIO()))
    without.fit()
    for a, b in zip(with_floor.strategy.state_dict().values(), without.strategy.state_dict().values()):
        assert torch.equal(a, b)


def test_provenance_outside_a_git_checkout_has_no_revision(monkeypatch, tmp_path):
    from sslkd.report import provenance

    monkeypatch.setattr(provenance, "PACKAGE_ROOT", tmp_path)
    assert provenance.git_revision() is None


@pytest.mark.parametrize("width", [80, 120])
def test_progress_keeps_step_and_time_left_visible(width):
    trainer = Trainer.__new__(Trainer)
    out = io.StringIO()
    trainer.console = Console(file=out, width=width, force_terminal=True, color_system=None)
    record = {"loss": 47.12, "cnn/loss": 19.148, "vit/loss": 27.972, "images_per_s": 32.0,
              "lr/cnn": 6.3e-3, "lr/vit": 1.9e-5, "lr/cnn/thead": 1.9e-5}
    progress = trainer._progress()
    progress.add_task("mokd", total=12480, completed=1234, info=Trainer._short(record))
    trainer.console.print(progress.make_tasks_table(progress.tasks))
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and "1234/12480" in lines[0] and "-:--:--" in lines[0], lines
    assert "loss 47.120" in lines[0]
