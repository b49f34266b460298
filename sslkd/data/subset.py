"""``sslkd data cifar10-subset``: build the CIFAR-10 subset the CPU-proxy configs train on from the standard CIFAR-10
python version, image for image the same as the copy these machines hold (../shared/data/cifar10_subset).

The selection rule is the one that copy's meta.json states: for each split and class, the source images are sorted
by the sha256 hex digest of '<split>/<class>/<source file name>' and the first N kept (1,000 per class from the
train split, 200 from the test split); an image's output index is its rank in that order. The output is an
ImageFolder tree (``<split>/<class>/<index:04d>.png``) with a manifest.csv whose ``pixel_sha256`` (of the 32x32x3
RGB bytes) lets ``--verify`` compare it with another copy's manifest, and a meta.json.
"""

from __future__ import annotations

import csv
import hashlib
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from sslkd.errors import UserError

TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCHES = ("test_batch",)
DOWNLOAD = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
SELECTION = ("deterministic: for each split and class, source files are sorted by sha256('<split>/<class>/<source "
             "file name>') hex digest ascending and the first N are kept; output index = rank in that order (0-based, "
             "4 digits). train subset drawn only from the original train split, test subset only from the original "
             "test split.")
MANIFEST_FIELDS = ("split", "class", "label", "index", "file", "source_path", "pixel_sha256")


def batches_folder(source: str | Path) -> Path:
    """The folder holding data_batch_1..5, test_batch and batches.meta: ``source`` itself or its
    cifar-10-batches-py."""
    source = Path(source)
    for folder in (source, source / "cifar-10-batches-py"):
        if (folder / "batches.meta").is_file():
            return folder
    raise UserError(f"'{source}' holds no CIFAR-10 python version (batches.meta, data_batch_1..5, test_batch): "
                    f"download {DOWNLOAD}, extract it, and pass the cifar-10-batches-py folder")


def _unpickle(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"'{path}' is missing: the CIFAR-10 python version is incomplete; extract {DOWNLOAD} again")
    try:
        with open(path, "rb") as handle:
            return pickle.load(handle, encoding="bytes")
    except (pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise UserError(f"'{path}' is not a CIFAR-10 python batch ({exc}); extract {DOWNLOAD} again") from exc


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read_split(folder: Path, split: str) -> tuple[list[str], np.ndarray, list[str]]:
    """(source file names, images N x 32 x 32 x 3 uint8, class names per image) of one split."""
    classes = [_text(name) for name in _unpickle(folder / "batches.meta")[b"label_names"]]
    names, images, labels = [], [], []
    for batch in TRAIN_BATCHES if split == "train" else TEST_BATCHES:
        data = _unpickle(folder / batch)
        names += [_text(name) for name in data[b"filenames"]]
        images.append(np.asarray(data[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels += [classes[label] for label in data[b"labels"]]
    return names, np.concatenate(images), labels


def selection_order(split: str, cls: str, names: list[str]) -> list[int]:
    """Positions of ``names`` (one class of one split) in the subset's order: sha256 of '<split>/<class>/<name>'."""
    return sorted(range(len(names)), key=lambda i: hashlib.sha256(f"{split}/{cls}/{names[i]}".encode()).hexdigest())


def _write_split(folder: Path, out: Path, split: str, per_class: int, classes: list[str]) -> list[dict]:
    names, images, labels = read_split(folder, split)
    rows = []
    for label, cls in enumerate(classes):
        members = [i for i, name in enumerate(labels) if name == cls]
        if len(members) < per_class:
            raise UserError(f"the {split} split has {len(members)} images of class {cls!r}, fewer than the "
                            f"{per_class} per class asked for; lower --{split}-per-class")
        order = selection_order(split, cls, [names[i] for i in members])[:per_class]
        (out / split / cls).mkdir(parents=True)
        for index, position in enumerate(order):
            image = images[members[position]]
            file = f"{split}/{cls}/{index:04d}.png"
            Image.fromarray(image).save(out / file)
            rows.append({"split": split, "class": cls, "label": label, "index": index, "file": file,
                         "source_path": f"{split}/{cls}/{names[members[position]]}",
                         "pixel_sha256": hashlib.sha256(image.tobytes()).hexdigest()})
    return rows


def _verify(rows: list[dict], reference: Path) -> None:
    """Every image must have the pixels the reference manifest records for its file."""
    if not reference.is_file():
        raise UserError(f"--verify '{reference}' does not exist; pass the manifest.csv of the copy to compare with")
    with open(reference, newline="") as handle:
        expected = {row["file"]: row["pixel_sha256"] for row in csv.DictReader(handle)}
    differing = [row["file"] for row in rows if expected.get(row["file"]) != row["pixel_sha256"]]
    if differing or len(expected) != len(rows):
        raise UserError(f"the subset differs from '{reference}' ({len(differing)} of {len(rows)} images differ, e.g. "
                        f"{(differing or ['none'])[0]}; the reference lists {len(expected)}): check that the source "
                        "is the standard CIFAR-10 python version")


def build_cifar10_subset(source: str | Path, out: str | Path, train_per_class: int = 1000,
                         test_per_class: int = 200, verify: str | Path | None = None) -> dict:
    """Write the subset to ``out`` (which must not exist or be empty) and return its meta.json; built beside it
    and renamed when complete, so a failure leaves nothing that looks like a data set."""
    folder, out = batches_folder(source), Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out '{out}' already exists and is not empty; choose a new folder")
    classes = [_text(name) for name in _unpickle(folder / "batches.meta")[b"label_names"]]
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        rows = [row for split, per_class in (("train", train_per_class), ("test", test_per_class))
                for row in _write_split(folder, partial, split, per_class, classes)]
        if verify is not None:
            _verify(rows, Path(verify))
        meta = _meta(classes, train_per_class, test_per_class, folder)
        with open(partial / "manifest.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=MANIFEST_FIELDS)
            writer.writeheader()
            writer.writerows(rows)
        (partial / "meta.json").write_text(json.dumps(meta, indent=2))
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if out.exists():
        out.rmdir()
    partial.rename(out)
    return meta


def _meta(classes: list[str], train_per_class: int, test_per_class: int, source: Path) -> dict:
    counts = {"train": train_per_class, "test": test_per_class}
    return {
        "dataset": "cifar10_subset",
        "original_dataset": "CIFAR-10 (Krizhevsky 2009), python version",
        "source": str(source),
        "num_classes": len(classes),
        "classes": classes,
        "class_to_label": {cls: label for label, cls in enumerate(classes)},
        "per_class": counts,
        "totals": {split: n * len(classes) for split, n in counts.items()},
        "selection": SELECTION,
        "manifest": f"manifest.csv ({','.join(MANIFEST_FIELDS)})",
        "created_by": "sslkd data cifar10-subset",
    }
