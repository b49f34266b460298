"""One process at a time per run directory: a second ``sslkd train`` of a run another process is training stops with
one line (exit 2) instead of interleaving checkpoints, a crashed holder leaves nothing stale, and two ``sslkd
reproduce`` of one table share its runs (each takes the runs the other is not training, then waits for the rest)."""

import fcntl
import subprocess
import sys
import threading

import yaml
from conftest import tiny_overrides

from sslkd import reproduce
from sslkd.cli import main as cli
from sslkd.core.rundir import RunDir, hold

HOLDER = "import sys; from sslkd.core.rundir import RunDir; h = RunDir(sys.argv[1]).hold(); h.__enter__(); " \
         "print('held', flush=True); sys.stdin.read()"


def tiny_table(tmp_path, seeds: int):
    """A one-config DINO table on the digits: its run folder, results folder and reproduce arguments."""
    (tmp_path / "dino").mkdir()
    config = tmp_path / "dino" / "tiny_dino.yaml"
    config.write_text("method: dino\n")
    spec = {"name": "tiny_table", "about": "a tiny DINO table on digits", "configs": [str(config)],
            "overrides": tiny_overrides("dino"), "compare": "runs"}
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    out, results = tmp_path / "runs", tmp_path / "results"
    return out, results, ["--spec", str(spec_file), "--proxy", "--seeds", str(seeds), "--out", str(out),
                          "--results", str(results)]


def test_a_run_another_process_trains_is_refused_and_freed_when_it_dies(tmp_path, capsys):
    run_dir = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        argv = ["train", "--method", "dino", *tiny_overrides("dino"), "--output-dir", str(run_dir)]
        assert cli(argv) == 2
        err = capsys.readouterr().err
        assert f"another process (pid {holder.pid}) is training '{run_dir}'" in err
        assert "choose another --output-dir" in err and len(err.strip().splitlines()) == 1
        assert not RunDir(run_dir).config.exists()  # nothing was written beside the live run
    finally:
        holder.kill()  # dies without releasing: the kernel frees the lock
        holder.wait()
    assert cli(argv) == 0
    assert RunDir(run_dir).summary.is_file()


def test_hold_is_reentrant_within_a_process_and_exclusive_across_descriptions(tmp_path):
    lock = tmp_path / "run" / ".lock"
    with hold(lock):
        with hold(lock):  # reproduce holds a run around the sslkd train it calls in the same process
            pass
        with open(lock) as other:  # a second open file description stands for another process
            try:
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
                taken = True
            except BlockingIOError:
                taken = False
        assert not taken  # the inner exit did not release the outer hold
    with open(lock) as other:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released by the outer exit


def test_reproduce_leaves_a_busy_run_to_its_holder_and_waits_for_it(tmp_path):
    out, results, argv = tiny_table(tmp_path, seeds=2)
    seed1 = out / "dino" / "tiny_dino" / "seed1"
    seed1.mkdir(parents=True)
    other = open(seed1 / RunDir.LOCK, "w")  # "another process" holds seed 1 ...
    fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    log = []

    def log_and_release(line):
        log.append(line)
        if line.startswith("wait"):  # ... and gives it up (unfinished) once this one waits for it
            threading.Timer(0.5, other.close).start()

    assert reproduce.main(argv, log=log_and_release) == 0
    actions = [line.split()[0] for line in log if line.split()[0] in ("busy", "wait", "train", "skip")]
    assert actions == ["train", "busy", "wait", "train"]  # seed 0; seed 1 left, waited for, then trained here
    assert (seed1 / "summary.json").is_file()
    assert (results / "tiny_table_proxy_runs.md").is_file()


def test_reproduce_jobs_share_a_table_and_train_each_run_once(tmp_path):
    out, results, argv = tiny_table(tmp_path, seeds=3)
    log = []
    assert reproduce.main([*argv, "--jobs", "2"], log=log.append) == 0
    helper_log = (out / ".jobs" / "job1.log").read_text().splitlines()
    trained = [line.split()[1] for line in log + helper_log if line.startswith("train ")]
    assert sorted(trained) == sorted(str(out / "dino" / "tiny_dino" / f"seed{seed}") for seed in range(3))
    assert [line for line in log if line.startswith("job ")]
    assert len(list(out.rglob("summary.json"))) == 3 and (results / "tiny_table_proxy_runs.md").is_file()
