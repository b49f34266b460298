"""`sslkd data cifar10-subset`: the CPU-proxy subset built from the CIFAR-10 python version, by the rule in the
shared copy's meta.json, tested on tiny fake batches in the true on-disk format (pickled dicts of bytes keys)."""

from __future__ import annotations

import csv
import hashlib
import json
import pickle

import numpy as np
import pytest

from sslkd.cli import main

CLASSES = ["airplane", "automobile", "bird"]


def fake_cifar10(root, per_batch: int = 6, seed: int = 0):
    """root/cifar-10-batches-py with five train batches and a test batch of ``per_batch`` random images each."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [c.encode() for c in CLASSES]}))
    for batch in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = [i % len(CLASSES) for i in range(per_batch)]
        names = [f"{batch}_img_{i:03d}.png".encode() for i in range(per_batch)]
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        (folder / batch).write_bytes(pickle.dumps({b"batch_label": batch.encode(), b"labels": labels,
                                                   b"data": data, b"filenames": names}))
    return folder


def expected_selection(folder, split: str, cls: str, per_class: int) -> list[tuple[str, bytes]]:
    """(source name, HWC pixel bytes) of the images the meta.json rule keeps, in output order."""
    label = CLASSES.index(cls)
    batches = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    found = []
    for batch in batches:
        data = pickle.loads((folder / batch).read_bytes(), encoding="bytes")
        for name, lab, row in zip(data[b"filenames"], data[b"labels"], data[b"data"]):
            if lab == label:
                found.append((name.decode(), row.reshape(3, 32, 32).transpose(1, 2, 0).tobytes()))
    found.sort(key=lambda item: hashlib.sha256(f"{split}/{cls}/{item[0]}".encode()).hexdigest())
    return found[:per_class]


def test_subset_follows_the_rule_and_trains(tmp_path, capsys, monkeypatch):
    from PIL import Image

    folder = fake_cifar10(tmp_path / "src")
    out = tmp_path / "cifar10_subset"
    assert main(["data", "cifar10-subset", "--cifar10", str(tmp_path / "src"), "--out", str(out),
                 "--train-per-class", "6", "--test-per-class", "1"]) == 0
    assert "18 train and 3 test images of 3 classes" in capsys.readouterr().out
    for split, per_class in (("train", 6), ("test", 1)):
        for cls in CLASSES:
            files = sorted((out / split / cls).iterdir())
            assert [f.name for f in files] == [f"{i:04d}.png" for i in range(per_class)]
            for file, (_, pixels) in zip(files, expected_selection(folder, split, cls, per_class)):
                assert np.asarray(Image.open(file).convert("RGB")).tobytes() == pixels
    rows = list(csv.DictReader(open(out / "manifest.csv")))
    assert len(rows) == 21 and rows[0]["source_path"].startswith("train/airplane/data_batch_")
    assert json.loads((out / "meta.json").read_text())["totals"] == {"train": 18, "test": 3}
    monkeypatch.setenv("SSLKD_CACHE", str(tmp_path / "cache"))
    assert main(["train", "--method", "simclr", "data.name=imagefolder", f"data.root={out}", "train.epochs=1",
                 "train.batch_size=6", "data.num_workers=0", "members.cnn.backbone_args={widths: [4, 8, 8]}",
                 "eval.knn_k=[1]", "--output-dir", str(tmp_path / "run")]) == 0
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["dataset"] == "cifar10_subset"


def test_verify_compares_pixels_with_another_copy(tmp_path, capsys):
    fake_cifar10(tmp_path / "src")
    args = ["data", "cifar10-subset", "--cifar10", str(tmp_path / "src" / "cifar-10-batches-py"),
            "--train-per-class", "2", "--test-per-class", "1"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--out", str(tmp_path / "b"), "--verify", str(tmp_path / "a" / "manifest.csv")]) == 0
    manifest = (tmp_path / "a" / "manifest.csv").read_text()
    first_hash = manifest.splitlines()[1].rsplit(",", 1)[1]
    (tmp_path / "a" / "manifest.csv").write_text(manifest.replace(first_hash, "0" * 64))
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "c"), "--verify", str(tmp_path / "a" / "manifest.csv")]) == 2
    assert "1 of 9 images differ" in capsys.readouterr().err
    assert not (tmp_path / "c").exists() and not (tmp_path / "c.partial").exists()


@pytest.mark.parametrize("problem, expected", [
    ("no_source", "holds no CIFAR-10 python version"),
    ("missing_batch", "data_batch_3' is missing"),
    ("out_not_empty", "already exists and is not empty"),
    ("too_many", "fewer than the 100 per class"),
])
def test_subset_errors(tmp_path, capsys, problem, expected):
    folder = fake_cifar10(tmp_path / "src")
    out = tmp_path / "out"
    extra = []
    if problem == "no_source":
        folder = tmp_path / "nothing"
    elif problem == "missing_batch":
        (folder / "data_batch_3").unlink()
    elif problem == "out_not_empty":
        out.mkdir()
        (out / "keep.txt").write_text("x")
    else:
        extra = ["--train-per-class", "100"]
    assert main(["data", "cifar10-subset", "--cifar10", str(folder), "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sslkd: error: ") and expected in err[0], err
    assert not (tmp_path / "out.partial").exists()
    assert problem == "out_not_empty" or not out.exists()
