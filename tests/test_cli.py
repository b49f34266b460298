"""Every user mistake ends with one clear line on stderr and exit status 2."""

import json
import re

import pytest

from sslkd.cli import main
from conftest import tiny_overrides


def run_cli(capsys, *argv):
    code = main(list(argv))
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["train", "--method", "mokdd"], "unknown strategy 'mokdd'. Did you mean 'mokd'?"),
        (["train", "--method", "dino", "members.cnn.backbone=resnet_foo"], "unknown backbone 'resnet_foo'"),
        (["train", "--method", "dino", "data.name=cifar11"], "unknown data set 'cifar11'. Did you mean 'cifar10'?"),
        (["train", "--method", "dino", "train.epocs=1"], "unknown config key 'train.epocs' (did you mean 'epochs'?)"),
        (["train", "--method", "dino", "data.name=cifar10", "data.root=/nonexistent/cifar"], "/nonexistent/cifar"),
        (["train", "--config", "/nonexistent.yaml"], "config file '/nonexistent.yaml' does not exist"),
        (["eval", "knn", "--checkpoint", "/nonexistent.pt"], "checkpoint '/nonexistent.pt' does not exist"),
        (["compare", "/nonexistent_run"], "/nonexistent_run"),
    ],
)
def test_user_errors_give_one_line_and_status_2(capsys, tmp_path, argv, expected):
    argv = [a.replace("/nonexistent_run", str(tmp_path / "none")) for a in argv]
    code, err = run_cli(capsys, *argv, *(["--output-dir", str(tmp_path / "run")] if argv[0] == "train" else []))
    assert code == 2
    assert len(err) == 1 and err[0].startswith("sslkd: error: "), err
    assert expected.replace("/nonexistent_run", "") in err[0]


def test_truncated_checkpoint(capsys, tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--method", "dino", "--output-dir", str(run), *tiny_overrides("dino")]) == 0
    checkpoint = run / "checkpoints" / "last.pt"
    data = checkpoint.read_bytes()
    checkpoint.write_bytes(data[: len(data) // 2])
    capsys.readouterr()
    code, err = run_cli(capsys, "eval", "knn", "--checkpoint", str(checkpoint))
    assert code == 2 and len(err) == 1 and "unreadable or truncated" in err[0]
    code, err = run_cli(capsys, "train", "--resume", str(run))
    assert code == 2 and len(err) == 1 and "truncated" in err[0]


def test_finished_run_is_not_overwritten(capsys, tmp_path):
    run = tmp_path / "run"
    args = ["train", "--method", "dino", "--output-dir", str(run), *tiny_overrides("dino")]
    assert main(args) == 0
    capsys.readouterr()
    code, err = run_cli(capsys, *args)
    assert code == 2 and "already holds a finished run" in err[0]


def test_list_names_everything(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "mokd" in out and "dino" in out and "cifar_resnet20" in out and "digits" in out


def test_bench_names_its_two_overhead_ratios(capsys, monkeypatch):
    from sslkd.engine import bench

    figures = {"method": "dino", "batch_size": 64, "device": "cpu", "precision": "float32", "linear_kernel": "onednn",
               "timed_steps": 3, "step_s": 0.2, "network_s": 0.16, "overhead_ratio": 1.25, "overhead_ratio_cpu": 1.05,
               "train_images_per_s": 320.0, "data_images_per_s": 900.0, "data_workers": 2, "data_to_train": 2.8,
               "peak_memory_mb": 800.0, "knn_size": [100, 20, 8], "knn_s": 0.1, "matmul_s": 0.08, "knn_to_matmul": 1.2}
    monkeypatch.setattr(bench, "run_bench", lambda *a, **k: figures)
    monkeypatch.setenv("COLUMNS", "160")
    assert main(["bench", "--method", "dino"]) == 0
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1] == "overhead ratio: 1.25"
    assert re.search(r"overhead ratio \(wall clock; the line below\) .* 1\.25", out)
    assert re.search(r"overhead ratio by CPU time \(all threads\) .* 1\.05", out)
    assert "onednn Linear layers" in out


def test_eval_knn_accepts_a_run_directory(capsys, tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--method", "dino", "--output-dir", str(run), *tiny_overrides("dino")]) == 0
    capsys.readouterr()
    assert main(["eval", "knn", "--checkpoint", str(run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["cnn"]["knn_top1"] >= 0
