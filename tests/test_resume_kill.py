"""A run killed at any moment (SIGKILL, even while writing a checkpoint) resumes from its last complete checkpoint
and ends with exactly the weights of a run never interrupted: queues, centers, optimiser and RNG states, and the
sampler position mid-epoch included."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny_overrides

from sslkd.core.rundir import RunDir
from sslkd.engine.trainer import Trainer

STEPS = 8  # 2 epochs of 4 batches of 16 on the 64-image subset
KILL_SEED = 17  # draws the step after which the run is killed, and where inside the next step
RUN = ["train", "--method", "dino", *tiny_overrides("dino", epochs=2), "train.device=cpu",
       "train.checkpoint_every_steps=1", "data.num_workers=2"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}


def sslkd(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sslkd", *args], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def finish(process: subprocess.Popen) -> None:
    _, stderr = process.communicate(timeout=900)  # generous: the machine may be busy
    assert process.returncode == 0, stderr[-2000:]


def logged_steps(run: Path) -> int:
    """Training steps logged so far: complete lines holding a loss (evaluation records have none)."""
    metrics = run / "metrics.jsonl"
    complete_lines = metrics.read_text().split("\n")[:-1] if metrics.exists() else []
    return sum("loss" in json.loads(line) for line in complete_lines if line)


def wait_for_step(process: subprocess.Popen, run: Path, step: int) -> float:
    """Wait until ``step`` steps of ``run`` are logged; return the shortest time one step took meanwhile, so a
    delay drawn as a fraction of it lands inside the next step on a fast machine and on a loaded one alike."""
    seen, seen_at, step_durations = logged_steps(run), time.perf_counter(), []
    while seen < step:
        assert process.poll() is None, f"the run ended before step {step}: {process.stderr.read()[-2000:]}"
        time.sleep(0.005)
        logged, now = logged_steps(run), time.perf_counter()
        if logged > seen:
            if seen > 0:
                step_durations.append((now - seen_at) / (logged - seen))
            seen, seen_at = logged, now
    return min(step_durations, default=0.0)


def assert_same_state(a: dict, b: dict) -> None:
    assert a["step"] == b["step"] and a["strategy"].keys() == b["strategy"].keys()
    for key, value in a["strategy"].items():
        assert torch.equal(value, b["strategy"][key]), key
    assert a["optimizers"].keys() == b["optimizers"].keys()
    for name, opt in a["optimizers"].items():
        for index, state in opt["state"].items():
            for key, value in state.items():
                assert torch.equal(torch.as_tensor(value), torch.as_tensor(b["optimizers"][name]["state"][index][key]))


def test_sigkilled_run_resumes_to_the_weights_of_an_uninterrupted_run(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    first = sslkd(*RUN, "--output-dir", str(straight))
    second = sslkd(*RUN, "--output-dir", str(killed))
    # seeded: the same kill point on every run. Step k is logged after checkpoint k - 1 is complete; at least
    # three steps and the final evaluation are left after the kill point, so the kill always lands in the run
    kill_rng = random.Random(KILL_SEED)
    kill_after = kill_rng.randint(2, STEPS - 3)
    step_seconds = wait_for_step(second, killed, kill_after)
    time.sleep(kill_rng.random() * step_seconds)  # anywhere in the next step, often inside a checkpoint write
    os.killpg(second.pid, signal.SIGKILL)
    second.wait()
    assert not (killed / "summary.json").exists(), f"the run ended before the kill after step {kill_after}"
    interrupted_at = torch.load(killed / RunDir.CHECKPOINT, weights_only=True)["step"]
    assert 1 <= interrupted_at <= STEPS
    finish(sslkd("train", "--resume", str(killed)))
    finish(first)
    a = torch.load(straight / RunDir.CHECKPOINT, weights_only=True)
    b = torch.load(killed / RunDir.CHECKPOINT, weights_only=True)
    assert_same_state(a, b)
    knn = [json.loads((run / "summary.json").read_text())["members"]["cnn"]["knn_top1"] for run in (straight, killed)]
    assert knn[0] == knn[1]
    assert not list((killed / "checkpoints").glob(".*.tmp")), "a resumed run removes partial checkpoint writes"


class Killed(Exception):
    """Stands for the process dying: raised from inside a step, nothing after it runs."""


def test_run_stopped_mid_epoch_resumes_at_the_next_batch(tmp_path, tiny_cfg):
    extra = ["train.checkpoint_every_steps=1", "data.augment.n_local=2"]
    straight = Trainer(tiny_cfg("dino", extra, epochs=2), tmp_path / "straight")
    straight.fit()
    stopped = Trainer(tiny_cfg("dino", extra, epochs=2), tmp_path / "stopped")
    forward = stopped.strategy.forward

    def dies_at_step_six(views, labels, indices, step):
        if step.step == 6:
            raise Killed
        return forward(views, labels, indices, step)

    stopped.strategy.forward = dies_at_step_six
    with pytest.raises(Killed):
        stopped.fit()
    resumed = Trainer(tiny_cfg("dino", extra, epochs=2), tmp_path / "stopped", resume=True)
    assert (resumed.epoch, resumed.step) == (1, 6)
    resumed.fit()
    assert_same_state(torch.load(tmp_path / "straight" / RunDir.CHECKPOINT, weights_only=True),
                      torch.load(tmp_path / "stopped" / RunDir.CHECKPOINT, weights_only=True))


def test_death_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, tiny_cfg, monkeypatch):
    trainer = Trainer(tiny_cfg("dino", ["train.checkpoint_every_steps=1"], epochs=2), tmp_path / "run")
    trainer.fit(stop_at_epoch=1)
    good = torch.load(tmp_path / "run" / RunDir.CHECKPOINT, weights_only=True)

    def dies_halfway(obj, handle):
        handle.write(b"PK\x03\x04 half a checkpoint")
        raise Killed

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(Killed):
        trainer._save()
    monkeypatch.undo()
    assert torch.load(tmp_path / "run" / RunDir.CHECKPOINT, weights_only=True)["step"] == good["step"]
    (tmp_path / "run" / "checkpoints" / ".last.pt.abc123.tmp").write_bytes(b"left by a SIGKILL")
    Trainer(tiny_cfg("dino", ["train.checkpoint_every_steps=1"], epochs=2), tmp_path / "run", resume=True)
    assert not list((tmp_path / "run" / "checkpoints").glob(".*.tmp"))


def test_samplers_start_mid_epoch_with_or_without_their_own_start():
    from torch.utils.data import Sampler

    from sslkd.data.sampling import ClassAwareSampler
    from sslkd.engine.trainer import StartableSampler, startable

    class EpochOnly(Sampler):
        def __init__(self):
            self.epoch = 0

        def set_epoch(self, epoch: int) -> None:
            self.epoch = epoch

        def __iter__(self):
            return iter(torch.randperm(20, generator=torch.Generator().manual_seed(self.epoch)).tolist())

        def __len__(self) -> int:
            return 20

    for sampler in (ClassAwareSampler(torch.arange(40) % 5, batch_size=4, seed=1), EpochOnly()):
        loader_sampler = startable(sampler)
        assert isinstance(loader_sampler, StartableSampler) == isinstance(sampler, EpochOnly)
        loader_sampler.set_epoch(3)
        whole = list(loader_sampler)
        loader_sampler.set_epoch(3, start=8)
        assert list(loader_sampler) == whole[8:] and len(loader_sampler) == len(whole)
