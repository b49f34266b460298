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
from sslkd.engine.checkpoint import FORMAT

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
    from sslkd.engine import checkpoint

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
