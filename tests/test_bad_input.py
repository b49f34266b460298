"""One test per row of the README's "When something goes wrong" table: every mistake a user can make ends with one
line on stderr naming the problem and the fix, exit status 2, no traceback, and no run directory left behind when
it fails before training."""

from __future__ import annotations

import errno

import pytest
import torch
from conftest import tiny_overrides
from torchvision.io import write_png

from sslkd.cli import main
from sslkd.core.checkpoint import FORMAT

TINY_DINO = ["train", "--method", "dino", *tiny_overrides("dino")]


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SSLKD_CACHE", str(tmp_path_factory.mktemp("cache")))


def fails(capsys, *argv: str) -> str:
    """Run the CLI; it must exit 2 with exactly one error line and no traceback. Returns that line."""
    code = main(list(argv))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("sslkd: error: ")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def image_folder(root, corrupt: bool = False):
    """root/train/<class>/*.png with 8 images in each of 2 classes, and a test split like it."""
    generator = torch.Generator().manual_seed(0)
    for split in ("train", "test"):
        for cls in ("a", "b"):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(8):
                write_png(torch.randint(0, 255, (3, 16, 16), generator=generator, dtype=torch.uint8),
                          str(folder / f"{i}.png"))
    if corrupt:
        (root / "train" / "a" / "3.png").write_bytes(b"\x89PNG\r\n\x1a\n not really an image")
    return root / "train" / "a" / "3.png"


# ---------------------------------------------------------------------------------------------------- names
@pytest.mark.parametrize("override, expected", [
    ("members.cnn.backbone=resnet_foo", "unknown backbone 'resnet_foo'"),
    ("data.name=cifar11", "unknown data set 'cifar11'"),
])
def test_unknown_names(capsys, tmp_path, override, expected):
    assert expected in fails(capsys, *TINY_DINO, override, "--output-dir", str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_unknown_method(capsys, tmp_path):
    assert "unknown strategy 'mokdd'. Did you mean 'mokd'?" in fails(capsys, "train", "--method", "mokdd")


def test_misspelt_table_names_the_tables_close_to_it(capsys):
    line = fails(capsys, "compare", "--table", "mokd_tabel1_v3")
    assert "unknown table 'mokd_tabel1_v3' (close: mokd_table1_v3, " in line  # the closest first


# ---------------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize("override, expected", [
    ("train.epocs=1", "unknown config key 'train.epocs' (did you mean 'epochs'?)"),
    ("train.epochs=many", "config key 'train.epochs': expected int, got 'many'"),
    ("train.on_nonfinite=ignore", "config key 'train.on_nonfinite'"),
])
def test_wrong_config_keys_and_types(capsys, tmp_path, override, expected):
    assert expected in fails(capsys, *TINY_DINO, override, "--output-dir", str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------------- combinations
def test_batch_larger_than_the_data(capsys, tmp_path):
    line = fails(capsys, *TINY_DINO, "train.batch_size=100", "--output-dir", str(tmp_path / "run"))
    assert "train.batch_size=100 is larger than the 64 training images per process" in line
    assert not (tmp_path / "run").exists()


def test_class_aware_batches_need_an_even_batch(capsys, tmp_path):
    line = fails(capsys, "train", "--method", "mcl", "train.batch_size=15", "data.num_workers=0",
                 "--output-dir", str(tmp_path / "run"))
    assert "set an even train.batch_size" in line
    assert not (tmp_path / "run").exists()


def test_vit_only_option_on_a_cnn(capsys, tmp_path):
    line = fails(capsys, *TINY_DINO, "members.cnn.drop_path_rate=0.1", "--output-dir", str(tmp_path / "run"))
    assert "does not accept the override 'drop_path_rate'" in line
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------------- data
def test_missing_data_root(capsys, tmp_path):
    line = fails(capsys, *TINY_DINO, "data.name=imagefolder", f"data.root={tmp_path / 'nowhere'}",
                 "--output-dir", str(tmp_path / "run"))
    assert str(tmp_path / "nowhere") in line
    assert not (tmp_path / "run").exists()


def test_empty_data_root(capsys, tmp_path):
    (tmp_path / "empty" / "train" / "a").mkdir(parents=True)
    line = fails(capsys, *TINY_DINO, "data.name=imagefolder", f"data.root={tmp_path / 'empty'}",
                 "--output-dir", str(tmp_path / "run"))
    assert "no images" in line
    assert not (tmp_path / "run").exists()


def test_corrupt_image_names_the_file(capsys, tmp_path):
    bad = image_folder(tmp_path / "data", corrupt=True)
    line = fails(capsys, *TINY_DINO, "data.name=imagefolder", f"data.root={tmp_path / 'data'}",
                 "data.train_subset=null", "--output-dir", str(tmp_path / "run"))
    assert f"cannot decode image file '{bad}'" in line and "data.skip_corrupt=true" in line
    assert not (tmp_path / "run").exists()


def test_corrupt_image_skipped_and_counted_when_asked(capsys, tmp_path):
    import json

    image_folder(tmp_path / "data", corrupt=True)
    run = tmp_path / "run"
    assert main([*TINY_DINO, "data.name=imagefolder", f"data.root={tmp_path / 'data'}", "data.train_subset=null",
                 "data.skip_corrupt=true", "train.batch_size=5", "data.augment.global_size=16",
                 "data.augment.local_size=8", "--output-dir", str(run)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["skipped_images"] == 1


# ---------------------------------------------------------------------------------------------------- checkpoints
def test_checkpoint_from_another_method(capsys, tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("method: simclr\nmembers: {cnn: {backbone: cifar_resnet20}}\n")
    torch.save({"format": FORMAT, "method": "dino"}, run / "checkpoints" / "last.pt")
    line = fails(capsys, "train", "--resume", str(run))
    assert "was written by method 'dino', not 'simclr'" in line


def test_truncated_checkpoint(capsys, tmp_path):
    path = tmp_path / "last.pt"
    torch.save({"format": FORMAT, "method": "dino", "weights": torch.zeros(1000)}, path)
    path.write_bytes(path.read_bytes()[:300])
    line = fails(capsys, "export", "--checkpoint", str(path), "--out", str(tmp_path / "x.safetensors"))
    assert "unreadable or truncated" in line
    assert not (tmp_path / "x.safetensors").exists()


def test_not_a_run_directory(capsys, tmp_path):
    assert "holds no resumable run" in fails(capsys, "train", "--resume", str(tmp_path))


# ---------------------------------------------------------------------------------------------------- output dir
def test_finished_run_is_refused(capsys, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "summary.json").write_text("{}")
    line = fails(capsys, *TINY_DINO, "--output-dir", str(tmp_path / "run"))
    assert "already holds a finished run" in line and "--overwrite" in line
    assert (tmp_path / "run" / "summary.json").read_text() == "{}"


def test_unfinished_run_is_refused(capsys, tmp_path):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "last.pt").write_bytes(b"x")
    assert "--resume" in fails(capsys, *TINY_DINO, "--output-dir", str(tmp_path / "run"))


# ---------------------------------------------------------------------------------------------------- disk
def test_full_disk_while_saving_keeps_the_previous_checkpoint(capsys, tmp_path, monkeypatch):
    from sslkd.core import checkpoint

    real_save, saves = torch.save, []

    def fills_the_disk(obj, handle):
        saves.append(obj["step"])
        if len(saves) > 1:
            handle.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(obj, handle)

    monkeypatch.setattr(checkpoint.torch, "save", fills_the_disk)
    run = tmp_path / "run"
    line = fails(capsys, *TINY_DINO, "train.epochs=2", "--output-dir", str(run))
    monkeypatch.undo()
    assert "No space left on device" in line and f"sslkd train --resume {run}" in line
    kept = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert kept["step"] == saves[0] and kept["epoch"] == 1
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["last.pt"]


# ---------------------------------------------------------------------------------------------------- values
@pytest.mark.parametrize("override, expected", [
    ("members.cnn.optimizer.lr=-0.1", "config key 'members.cnn.optimizer.lr': -0.1 is below 0"),
    ("train.epochs=0", "train.epochs=0 trains nothing"),
    ("train.batch_size=0", "config key 'train.batch_size': 0 is below 1"),
    ("data.num_workers=-1", "config key 'data.num_workers': -1 is below 0"),
    ("train.channels_last_min_positions=-1", "config key 'train.channels_last_min_positions': -1 is below 0"),
    ("data.augment.global_scale=[1.5,0.2]", "config key 'data.augment.global_scale': [1.5, 0.2] is not a range"),
    ("data.augment.local_scale=[0.4,0.05]", "write the smaller number first: data.augment.local_scale=[0.05,0.4]"),
])
def test_values_that_cannot_train(capsys, tmp_path, override, expected):
    assert expected in fails(capsys, *TINY_DINO, override, "--output-dir", str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_yaml_error_names_line_and_column(capsys, tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("method: dino\ntrain:\n  epochs: [1, 2\n")
    assert "line 4, column 1" in fails(capsys, "train", "--config", str(config), "--output-dir", str(tmp_path / "r"))
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------------------------------------------- output dir
def test_output_dir_that_cannot_be_created(capsys, tmp_path):
    (tmp_path / "a_file").write_text("x")
    line = fails(capsys, *TINY_DINO, "--output-dir", str(tmp_path / "a_file" / "run"))
    assert "cannot create --output-dir" in line and "is a file" in line


def test_output_dir_that_cannot_be_written(capsys, tmp_path, monkeypatch):
    import os

    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: str(path) != str(tmp_path) and real_access(path, mode))
    line = fails(capsys, *TINY_DINO, "--output-dir", str(tmp_path / "run"))
    assert "no write permission" in line
    assert not (tmp_path / "run").exists()


def test_output_dir_holding_something_else_is_refused(capsys, tmp_path):
    image_folder(tmp_path / "data")
    for extra in ([], ["--overwrite"]):
        line = fails(capsys, *TINY_DINO, "--output-dir", str(tmp_path / "data"), *extra)
        assert "is not empty and holds no sslkd run" in line
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["test", "train"]


def test_compare_output_into_a_missing_folder_is_created(tmp_path, capsys):
    from test_report import write_configured_run

    write_configured_run(tmp_path / "run", 0)
    out = tmp_path / "new" / "folder" / "table.md"
    assert main(["compare", str(tmp_path / "run"), "--output", str(out)]) == 0
    assert out.read_text().startswith("**Runs")


# ---------------------------------------------------------------------------------------------------- checkpoints
def test_config_yaml_passed_as_a_checkpoint(capsys, tmp_path):
    (tmp_path / "config.yaml").write_text("method: dino\n")
    line = fails(capsys, "eval", "knn", "--checkpoint", str(tmp_path / "config.yaml"))
    assert "is not a checkpoint" in line and "truncated" not in line


def test_random_init_run_is_asked_for_by_name(tmp_path, capsys):
    import json

    run = tmp_path / "floor"
    assert main([*TINY_DINO, "--random-init", "--output-dir", str(run)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs"] == 0
    assert summary["members"]["cnn"]["random_init"]["knn_top1"] == summary["members"]["cnn"]["knn_top1"]


# ---------------------------------------------------------------------------------------------------- pipes
def test_broken_pipe_is_one_line(tmp_path):
    """`sslkd compare ... | true`: the reader is gone before sslkd (seconds to start) writes a byte."""
    import subprocess
    import sys

    from test_report import write_configured_run

    write_configured_run(tmp_path / "run", 0)
    done = subprocess.run(["bash", "-c", f"set -o pipefail; {sys.executable} -m sslkd compare {tmp_path} | true"],
                          capture_output=True, text=True, timeout=120)
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(errors) == 1, done.stderr
    assert errors[0].startswith("sslkd: error: ") and "broken pipe" in errors[0]


# ---------------------------------------------------------------------------------------------------- warnings
def warnings_of(cfg, run_dir) -> list[str]:
    """The warning lines a trainer prints when it is built (the run then goes on)."""
    from io import StringIO

    from rich.console import Console

    from sslkd.engine.trainer import Trainer

    out = StringIO()
    Trainer(cfg, run_dir, console=Console(file=out, width=300))
    return [line for line in out.getvalue().splitlines() if line.startswith("warning: ")]


def test_one_class_data_set_warns(tmp_path, tiny_cfg):
    import shutil

    root = tmp_path / "data"
    image_folder(root)
    for split in ("train", "test"):
        shutil.rmtree(root / split / "b")
    cfg = tiny_cfg("dino", ["data.name=imagefolder", f"data.root={root}", "data.train_subset=null",
                            "train.batch_size=4"])
    lines = warnings_of(cfg, tmp_path / "run")
    assert len(lines) == 1 and "only one class" in lines[0]


def test_fewer_steps_than_the_warm_up_warns(tmp_path, tiny_cfg):
    lines = warnings_of(tiny_cfg("dino", ["members.cnn.optimizer.warmup_epochs=10"]), tmp_path / "run")
    assert len(lines) == 1 and "warms its learning rate up over 40 steps but the run has only 4" in lines[0]
    assert warnings_of(tiny_cfg("dino"), tmp_path / "other") == []
