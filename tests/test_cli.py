"""Every user mistake ends with one clear line on stderr and exit status 2."""

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
