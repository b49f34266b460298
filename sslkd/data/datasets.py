"""Image data sets: the embedded digits demo, CIFAR-10/100, STL-10, ImageFolder, Tiny-ImageNet and ImageNet.

Every data set holds RGB images as uint8 tensors [3,H,W] and yields ``(transform(image), label, index)``. Small
data sets are decoded once, in the main process, into one uint8 tensor [N,3,H,W] so DataLoader workers share it
instead of decoding PNGs every epoch (decoding plus augmenting in one process is the CPU bottleneck here). Decoded
image folders are also cached on disk under ``$SSLKD_CACHE`` (default ``~/.cache/sslkd``), so a second run starts
in well under a second. Large or mixed-size folders (ImageNet) are decoded lazily per item.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import pickle
import tempfile
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2 import functional as TF

from sslkd.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from sslkd.errors import UserError
from sslkd.registry import DATASETS

# Published per-channel statistics of the CIFAR training sets (pixel values scaled to 0..1).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
# Folders whose decoded pixels fit under this many bytes are held in memory as one tensor and cached on disk.
MEMORY_BUDGET_BYTES = 2 * 1024**3
# Side assumed for variable-size photographs (ImageNet-style folders decoded lazily).
LAZY_IMAGE_SIZE = 224
CACHE_FORMAT_VERSION = 1

Transform = Callable[[torch.Tensor], object]


@dataclass(frozen=True)
class DatasetInfo:
    """What models and transforms need to know about a data set; mean/std are per RGB channel on a 0..1 scale."""

    name: str
    num_classes: int
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    classes: tuple[str, ...]


class ImageDataset(Dataset, ABC):
    """Base of all sslkd data sets: items are ``(transform(image), label, index)``; subclasses supply ``image(i)``."""

    def __init__(self, info: DatasetInfo, labels: torch.Tensor, transform: Transform | None = None):
        self.info = info
        self.labels = labels.long()
        self.transform = transform

    @abstractmethod
    def image(self, index: int) -> torch.Tensor:
        """The uint8 RGB image [3,H,W] at ``index``."""

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        img = self.image(index)
        return (self.transform(img) if self.transform is not None else img), int(self.labels[index]), int(index)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.info.name!r}, n={len(self)}, classes={self.info.num_classes})"


class TensorImageDataset(ImageDataset):
    """All images in one uint8 tensor [N,3,H,W], shared copy-on-write by forked DataLoader workers."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, info: DatasetInfo,
                 transform: Transform | None = None):
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be uint8 [N,3,H,W], got {images.dtype} {tuple(images.shape)}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        super().__init__(info, labels, transform)
        self.images = images

    def image(self, index: int) -> torch.Tensor:
        return self.images[index]


class FileImageDataset(ImageDataset):
    """Images decoded from their files on every access, for folders too large or too mixed to hold in memory."""

    def __init__(self, paths: Sequence[str], labels: torch.Tensor, info: DatasetInfo,
                 transform: Transform | None = None):
        super().__init__(info, labels, transform)
        self.paths = [str(p) for p in paths]

    def image(self, index: int) -> torch.Tensor:
        return decode_file(self.paths[index])


class STL10MemmapDataset(ImageDataset):
    """STL-10 images read lazily from memory-mapped ``*_X.bin`` files (the unlabeled split is 2.8 GB).

    The maps are opened per process and dropped when pickled, so spawned DataLoader workers do not copy the files.
    """

    def __init__(self, files: Sequence[Path], counts: Sequence[int], labels: torch.Tensor, info: DatasetInfo,
                 transform: Transform | None = None):
        super().__init__(info, labels, transform)
        self.files = [str(f) for f in files]
        self.offsets = np.cumsum([0, *counts]).tolist()
        self._maps: list[np.memmap] | None = None

    def image(self, index: int) -> torch.Tensor:
        if self._maps is None:
            self._maps = [np.memmap(f, dtype=np.uint8, mode="r").reshape(-1, 3, 96, 96) for f in self.files]
        seg = bisect.bisect_right(self.offsets, index) - 1
        raw = self._maps[seg][index - self.offsets[seg]]
        return torch.from_numpy(np.ascontiguousarray(raw.transpose(0, 2, 1)))

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_maps"] = None
        return state


# ----------------------------------------------------------------------------------------------------------------
# helpers


def decode_file(path: str | Path) -> torch.Tensor:
    """Decode one image file to uint8 RGB [3,H,W]; a corrupt or unreadable file is a UserError naming it."""
    try:
        img = decode_image(str(path), mode=ImageReadMode.RGB)
    except (RuntimeError, OSError, ValueError) as exc:
        raise UserError(f"cannot decode image file '{path}' ({str(exc).splitlines()[0]}): "
                        "replace or delete it, or set data.skip_corrupt=true to leave such files out") from exc
    if img.dtype != torch.uint8:
        img = TF.to_dtype(img, torch.uint8, scale=True)
    return img


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std (0..1 scale) of uint8 images [N,3,H,W], in chunks so memory stays small."""
    moments = _Moments()
    moments.add_many(images)
    return moments.mean_std()


class _Moments:
    """Running per-channel pixel sums, so statistics can be gathered while images stream past."""

    def __init__(self):
        self.total = torch.zeros(3, dtype=torch.float64)
        self.squares = torch.zeros(3, dtype=torch.float64)
        self.count = 0

    def add(self, images: torch.Tensor) -> None:
        x = images.to(torch.float64)
        self.total += x.sum(dim=(0, 2, 3))
        self.squares += x.square().sum(dim=(0, 2, 3))
        self.count += x.shape[0] * x.shape[2] * x.shape[3]

    def add_many(self, images: torch.Tensor) -> None:
        chunk = max(1, 2**24 // max(1, images[0].numel())) if len(images) else 1
        for start in range(0, len(images), chunk):
            self.add(images[start:start + chunk])

    def mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        mean = self.total / self.count
        var = (self.squares / self.count - mean.square()).clamp_min(0)
        return tuple(round(v / 255, 5) for v in mean.tolist()), tuple(round(v / 255, 5) for v in var.sqrt().tolist())


def cache_dir() -> Path:
    """Where decoded image folders are cached: ``$SSLKD_CACHE`` or ``~/.cache/sslkd``."""
    return Path(os.environ.get("SSLKD_CACHE") or Path.home() / ".cache" / "sslkd")


def _set_root(layout: str) -> str:
    """How to point sslkd at the data: a config key for train, a flag for eval."""
    return f"set data.root=/path/to/{layout} (sslkd eval: --data-root /path/to/{layout})"


def _require_root(name: str, root, layout: str) -> Path:
    """The data root as an absolute path; a relative one is relative to the current folder, as every path sslkd
    reads (config files, data roots, run directories)."""
    if root is None or str(root) == "":
        raise UserError(f"data set {name!r} needs a data root: {_set_root(layout)}")
    path = Path(root).expanduser()
    if not path.is_dir():
        where = f" (relative to the current folder: {path.absolute()})" if not path.is_absolute() else ""
        build = (f"; build it from the CIFAR-10 python version with `sslkd data cifar10-subset --cifar10 "
                 f"cifar-10-batches-py --out {root}`" if "cifar10_subset" in str(root) else "")
        raise UserError(f"data root '{root}' does not exist{where}: {_set_root(layout)}{build}")
    return path.resolve()


def _locate(root: Path, folder: str, marker: str, name: str) -> Path:
    """``root/folder`` or ``root`` itself, whichever holds ``marker``; users point at either."""
    for candidate in (root / folder, root):
        if (candidate / marker).exists():
            return candidate
    raise UserError(f"no {name} files under '{root}' (expected {folder}/{marker}): "
                    f"set data.root to the folder holding {folder}")


def _check_split(name: str, split: str, allowed: Sequence[str]) -> None:
    if split not in allowed:
        raise UserError(f"unknown split {split!r} for data set {name!r}: use one of {', '.join(allowed)}")


def _unpickle(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"missing file '{path}': the data root must hold the complete python-pickle release")
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="bytes")
    except Exception as exc:  # any failure here means the file is not a CIFAR pickle
        raise UserError(f"cannot read '{path}' ({type(exc).__name__}: {exc}): "
                        "re-download the python-pickle release") from exc


def _list_images(folder: Path) -> list[str]:
    """Image files under ``folder`` (recursively), sorted so labels and indices never depend on the file system.

    Plain strings, not Paths: pathlib costs more than the whole cached load on a 10,000-file folder.
    """
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames.sort()
        found.extend(os.path.join(dirpath, f) for f in sorted(filenames) if f.lower().endswith(IMAGE_EXTENSIONS))
    return found


def _subdirs(folder: Path) -> list[str]:
    return sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


# ----------------------------------------------------------------------------------------------------------------
# decoded-folder cache


@dataclass(frozen=True)
class _Decoded:
    """Result of decoding a file list: the images (None when they must stay lazy) and their statistics."""

    images: torch.Tensor | None
    mean: tuple[float, ...]
    std: tuple[float, ...]


def _cache_key(tag: str, paths: Sequence[str]) -> str:
    h = hashlib.sha256(f"v{CACHE_FORMAT_VERSION}\n{tag}\n".encode())
    for p in paths:
        st = os.stat(p)
        h.update(f"{p}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


def _atomic_write(path: Path, write: Callable[[object], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_cache(meta_path: Path, npy_path: Path, want_images: bool) -> _Decoded | None:
    try:
        meta = json.loads(meta_path.read_text())
        mean, std = tuple(meta["mean"]), tuple(meta["std"])
        if meta["lazy"] or not want_images:
            return _Decoded(None, mean, std)
        images = np.load(npy_path)
        if list(images.shape) != meta["shape"] or images.dtype != np.uint8:
            return None
        return _Decoded(torch.from_numpy(images), mean, std)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_cache(meta_path: Path, npy_path: Path, decoded: _Decoded) -> None:
    try:
        if decoded.images is not None:
            _atomic_write(npy_path, lambda f: np.save(f, decoded.images.numpy()))
        meta = {"lazy": decoded.images is None, "mean": decoded.mean, "std": decoded.std,
                "shape": None if decoded.images is None else list(decoded.images.shape)}
        _atomic_write(meta_path, lambda f: f.write(json.dumps(meta).encode()))
    except OSError as exc:
        warnings.warn(f"could not write the decoded-image cache under {cache_dir()} ({exc}); "
                      "set SSLKD_CACHE to a writable folder to start faster next time", stacklevel=3)


def _decode_stream(paths: Sequence[str], first: torch.Tensor) -> _Decoded:
    """Decode every file into one tensor; if sizes differ, keep only the statistics.

    Serial on purpose: a thread pool measured 1.5x slower than one loop on the 10,000 32-px CIFAR PNGs here (each
    decode is ~50 us, mostly per-call overhead) and no faster on large images on these 2 cores.
    """
    images: torch.Tensor | None = torch.empty((len(paths), *first.shape), dtype=torch.uint8)
    moments = _Moments()
    for i, path in enumerate(paths):
        img = decode_file(path)
        if images is not None and img.shape == first.shape:
            images[i] = img
            continue
        if images is not None:
            moments.add_many(images[:i])
            images = None
        moments.add(img[None])
    if images is not None:
        return _Decoded(images, *channel_stats(images))
    return _Decoded(None, *moments.mean_std())


def _decode_folder(tag: str, paths: Sequence[str], want_images: bool = True) -> _Decoded:
    """Images of ``paths`` as one uint8 tensor (disk-cached), or lazy (images None) when too large or mixed-size.

    ``tag`` names the cache entry (e.g. "imagefolder-train"); the key also hashes every path, size and mtime, so
    an edited folder is decoded again. With ``want_images=False`` only the statistics are read from the cache.
    """
    first = decode_file(paths[0])
    if len(paths) * first.numel() > MEMORY_BUDGET_BYTES:
        return _Decoded(None, IMAGENET_MEAN, IMAGENET_STD)
    folder = hashlib.sha256(os.path.commonpath([paths[0], paths[-1]]).encode()).hexdigest()[:8]
    prefix = f"{tag}-{folder}"
    stem = f"{prefix}-{_cache_key(tag, paths)}"
    meta_path, npy_path = cache_dir() / f"{stem}.json", cache_dir() / f"{stem}.npy"
    cached = _read_cache(meta_path, npy_path, want_images)
    if cached is not None:
        return cached
    decoded = _decode_stream(paths, first)
    _write_cache(meta_path, npy_path, decoded)
    _remove_stale(prefix, keep=stem)
    return decoded


def _remove_stale(prefix: str, keep: str) -> None:
    """Delete older cache entries of the same folder, so an edited folder does not leave its old pixels behind."""
    for old in cache_dir().glob(f"{prefix}-*"):
        if not old.name.startswith(keep) and old.suffix in (".npy", ".json"):
            old.unlink(missing_ok=True)


def readable_files(paths: Sequence[str], labels: Sequence[int]) -> tuple[list[str], list[int], list[str]]:
    """(paths, labels) of the files that decode, and the paths of those that do not (``data.skip_corrupt``)."""
    kept, kept_labels, skipped = [], [], []
    for path, label in zip(paths, labels):
        try:
            decode_file(path)
        except UserError:
            skipped.append(path)
            continue
        kept.append(path)
        kept_labels.append(label)
    if not kept:
        raise UserError(f"none of the {len(paths)} image files (e.g. '{paths[0]}') can be decoded: check data.root "
                        "(sslkd eval: --data-root)")
    return kept, kept_labels, skipped


def _folder_dataset(name: str, split: str, paths: list[str], labels: list[int], classes: Sequence[str],
                    transform: Transform | None, train_paths: list[str] | None,
                    stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
                    skip_corrupt: bool = False) -> ImageDataset:
    """Build an in-memory or lazy data set from image files; mean/std come from ``train_paths`` when given.

    A file that cannot be decoded stops with an error naming it; with ``skip_corrupt`` every file is decoded once
    up front and the unreadable ones are left out, listed in the data set's ``skipped_files``."""
    skipped: list[str] = []
    if skip_corrupt:
        paths, labels, skipped = readable_files(paths, labels)
        if train_paths is not None and train_paths != paths:
            train_paths = readable_files(train_paths, [0] * len(train_paths))[0]
    dataset = _build_folder_dataset(name, split, paths, labels, classes, transform, train_paths, stats)
    dataset.skipped_files = skipped
    return dataset


def _build_folder_dataset(name: str, split: str, paths: list[str], labels: list[int], classes: Sequence[str],
                          transform: Transform | None, train_paths: list[str] | None,
                          stats: tuple[tuple[float, ...], tuple[float, ...]] | None) -> ImageDataset:
    decoded = _decode_folder(f"{name}-{split}", paths)
    if stats is None:
        if train_paths is not None and train_paths != paths:
            source = _decode_folder(f"{name}-train", train_paths, want_images=False)
        else:
            source = decoded
        stats = (source.mean, source.std)
    label_tensor = torch.tensor(labels, dtype=torch.long)
    if decoded.images is not None:
        size = min(decoded.images.shape[-2:])
        info = DatasetInfo(name, len(classes), size, stats[0], stats[1], tuple(classes))
        return TensorImageDataset(decoded.images, label_tensor, info, transform)
    info = DatasetInfo(name, len(classes), LAZY_IMAGE_SIZE, stats[0], stats[1], tuple(classes))
    return FileImageDataset(paths, label_tensor, info, transform)


# ----------------------------------------------------------------------------------------------------------------
# data sets


@DATASETS.register("digits")
def build_digits(root=None, split: str = "train", transform: Transform | None = None) -> TensorImageDataset:
    """scikit-learn's bundled 8x8 handwritten digits, upsampled to 32x32 RGB: the offline demo (root ignored).

    A fixed stratified 80/20 split (random_state=0) gives 1,437 train and 360 test images.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    _check_split("digits", split, ("train", "test"))
    pixels, targets = load_digits(return_X_y=True)
    x = torch.from_numpy(pixels.reshape(-1, 1, 8, 8) * (255.0 / 16.0)).float()
    x = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    images = x.round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    labels = torch.from_numpy(targets).long()
    train_idx, test_idx = train_test_split(np.arange(len(labels)), test_size=0.2, stratify=targets, random_state=0)
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    mean, std = channel_stats(images[train_idx])
    info = DatasetInfo("digits", 10, 32, mean, std, tuple(str(d) for d in range(10)))
    idx = torch.from_numpy(train_idx if split == "train" else test_idx)
    return TensorImageDataset(images[idx].contiguous(), labels[idx], info, transform)


def _cifar(name: str, root, split: str, transform: Transform | None) -> TensorImageDataset:
    _check_split(name, split, ("train", "test"))
    if name == "cifar10":
        base = _locate(_require_root(name, root, "cifar-10-batches-py"), "cifar-10-batches-py", "batches.meta", name)
        files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        label_key, meta_file, names_key = b"labels", "batches.meta", b"label_names"
        mean, std = CIFAR10_MEAN, CIFAR10_STD
    else:
        base = _locate(_require_root(name, root, "cifar-100-python"), "cifar-100-python", "meta", name)
        files = [split]
        label_key, meta_file, names_key = b"fine_labels", "meta", b"fine_label_names"
        mean, std = CIFAR100_MEAN, CIFAR100_STD
    data, labels = [], []
    for file in files:
        batch = _unpickle(base / file)
        try:
            data.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.extend(int(v) for v in batch[label_key])
        except (KeyError, ValueError) as exc:
            raise UserError(f"'{base / file}' is not a {name} batch ({exc}): re-download the python-pickle release") \
                from exc
    classes = tuple(c.decode() if isinstance(c, bytes) else str(c) for c in _unpickle(base / meta_file)[names_key])
    images = torch.from_numpy(np.concatenate(data))
    if len(images) != len(labels):
        raise UserError(f"{name} {split}: {len(images)} images but {len(labels)} labels in '{base}': re-download it")
    info = DatasetInfo(name, len(classes), 32, mean, std, classes)
    return TensorImageDataset(images, torch.tensor(labels, dtype=torch.long), info, transform)


@DATASETS.register("cifar10")
def build_cifar10(root, split: str = "train", transform: Transform | None = None) -> TensorImageDataset:
    """CIFAR-10 in its python-pickle release (``cifar-10-batches-py``)."""
    return _cifar("cifar10", root, split, transform)


@DATASETS.register("cifar100")
def build_cifar100(root, split: str = "train", transform: Transform | None = None) -> TensorImageDataset:
    """CIFAR-100 in its python-pickle release (``cifar-100-python``), with the 100 fine labels."""
    return _cifar("cifar100", root, split, transform)


def _stl10_images(path: Path) -> int:
    """Number of 3x96x96 images in an STL-10 ``*_X.bin`` file, checking that it is whole."""
    if not path.is_file():
        raise UserError(f"missing file '{path}': the data root must hold the complete stl10_binary release")
    size, per_image = path.stat().st_size, 3 * 96 * 96
    if size == 0 or size % per_image:
        raise UserError(f"'{path}' is not a whole number of 96x96 RGB images (corrupt download?): re-download it")
    return size // per_image


def _stl10_labels(path: Path, count: int) -> torch.Tensor:
    if not path.is_file():
        raise UserError(f"missing file '{path}': the data root must hold the complete stl10_binary release")
    labels = torch.from_numpy(np.fromfile(path, dtype=np.uint8).astype(np.int64)) - 1
    if len(labels) != count or labels.min() < 0 or labels.max() > 9:
        raise UserError(f"'{path}' does not hold {count} labels in 1..10 (corrupt download?): re-download it")
    return labels


@DATASETS.register("stl10")
def build_stl10(root, split: str = "train", transform: Transform | None = None) -> ImageDataset:
    """STL-10 binary release: splits train, test, unlabeled (label -1) and train+unlabeled (the SSL set).

    Images are stored column-major per channel and are transposed to [3,H,W]; labels 1..10 become 0..9. The
    labelled splits are held in memory; the unlabeled ones are memory-mapped. mean/std come from the train split.
    """
    _check_split("stl10", split, ("train", "test", "unlabeled", "train+unlabeled"))
    base = _locate(_require_root("stl10", root, "stl10_binary"), "stl10_binary", "class_names.txt", "stl10")
    classes = tuple(line.strip() for line in (base / "class_names.txt").read_text().splitlines() if line.strip())
    n_train = _stl10_images(base / "train_X.bin")
    train_map = np.memmap(base / "train_X.bin", dtype=np.uint8, mode="c").reshape(-1, 3, 96, 96)
    mean, std = channel_stats(torch.from_numpy(train_map))
    info = DatasetInfo("stl10", len(classes), 96, mean, std, classes)
    if split in ("train", "test"):
        n = n_train if split == "train" else _stl10_images(base / "test_X.bin")
        raw = np.fromfile(base / f"{split}_X.bin", dtype=np.uint8).reshape(n, 3, 96, 96)
        images = torch.from_numpy(np.ascontiguousarray(raw.transpose(0, 1, 3, 2)))
        return TensorImageDataset(images, _stl10_labels(base / f"{split}_y.bin", n), info, transform)
    n_unlabeled = _stl10_images(base / "unlabeled_X.bin")
    unlabeled = torch.full((n_unlabeled,), -1, dtype=torch.long)
    if split == "unlabeled":
        return STL10MemmapDataset([base / "unlabeled_X.bin"], [n_unlabeled], unlabeled, info, transform)
    labels = torch.cat([_stl10_labels(base / "train_y.bin", n_train), unlabeled])
    return STL10MemmapDataset([base / "train_X.bin", base / "unlabeled_X.bin"], [n_train, n_unlabeled], labels, info,
                              transform)


def _class_folder_files(name: str, root: Path, split_dir: Path, classes: Sequence[str]):
    """(paths, labels) of ``split_dir/<class>/...`` with labels indexing ``classes``."""
    index = {c: i for i, c in enumerate(classes)}
    extra = [d for d in _subdirs(split_dir) if d not in index]
    if extra:
        raise UserError(f"class folder(s) {', '.join(extra[:3])} in '{split_dir}' are missing from "
                        f"'{root / 'train'}': every split must use the training classes")
    paths, labels = [], []
    for c in classes:
        if (split_dir / c).is_dir():
            files = _list_images(split_dir / c)
            paths.extend(files)
            labels.extend([index[c]] * len(files))
    if not paths:
        raise UserError(f"no images ({'/'.join(IMAGE_EXTENSIONS)}) found under '{split_dir}/<class>/': "
                        f"set data.root to a folder laid out as <split>/<class>/<image>")
    return paths, labels


def _image_folder(name: str, root, split: str, transform: Transform | None,
                  stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
                  skip_corrupt: bool = False) -> ImageDataset:
    base = _require_root(name, root, "folder_with_<split>/<class>/<images>")
    split_dir = base / split
    if not split_dir.is_dir():
        have = ", ".join(_subdirs(base)) or "none"
        raise UserError(f"split folder '{split_dir}' does not exist (found: {have}): "
                        f"use data.root=/path/with/{split}/<class>/ (sslkd eval: --data-root) or another split")
    train_dir = base / "train"
    classes = _subdirs(train_dir if train_dir.is_dir() else split_dir)
    if not classes:
        raise UserError(f"no class folders in '{split_dir}': lay the images out as {split}/<class>/<image>")
    paths, labels = _class_folder_files(name, base, split_dir, classes)
    train_paths = None
    if train_dir.is_dir() and split != "train" and stats is None:
        train_paths = _class_folder_files(name, base, train_dir, classes)[0]
    return _folder_dataset(name, split, paths, labels, classes, transform, train_paths, stats, skip_corrupt)


@DATASETS.register("imagefolder")
def build_imagefolder(root, split: str = "train", transform: Transform | None = None,
                      skip_corrupt: bool = False) -> ImageDataset:
    """``root/<split>/<class>/<image>`` (PNG/JPEG/WebP); classes are the sorted folder names of ``root/train``.

    mean/std are measured on the train split (or on ``split`` when there is no train folder).
    """
    return _image_folder("imagefolder", root, split, transform, skip_corrupt=skip_corrupt)


@DATASETS.register("imagenet")
def build_imagenet(root, split: str = "train", transform: Transform | None = None,
                   skip_corrupt: bool = False) -> ImageDataset:
    """ImageNet in ImageFolder layout (``train/``, ``val/``); split "test" reads ``val``; ImageNet mean/std."""
    _check_split("imagenet", split, ("train", "val", "test"))
    return _image_folder("imagenet", root, "val" if split == "test" else split, transform,
                         stats=(IMAGENET_MEAN, IMAGENET_STD), skip_corrupt=skip_corrupt)


def _tiny_train_files(base: Path, wnids: Sequence[str]):
    paths, labels = [], []
    for label, wnid in enumerate(wnids):
        files = _list_images(base / "train" / wnid / "images")
        paths.extend(files)
        labels.extend([label] * len(files))
    if not paths:
        raise UserError(f"no images found under '{base / 'train'}/<wnid>/images/': "
                        "set data.root to the tiny-imagenet-200 folder")
    return paths, labels


@DATASETS.register("tiny_imagenet")
def build_tiny_imagenet(root, split: str = "train", transform: Transform | None = None,
                        skip_corrupt: bool = False) -> ImageDataset:
    """Tiny-ImageNet-200 release layout; split "val" or "test" reads ``val/`` via ``val_annotations.txt``.

    Classes are the sorted wnids of ``wnids.txt``; mean/std are measured on the train split.
    """
    _check_split("tiny_imagenet", split, ("train", "val", "test"))
    base = _locate(_require_root("tiny_imagenet", root, "tiny-imagenet-200"), "tiny-imagenet-200", "wnids.txt",
                   "tiny_imagenet")
    wnids = sorted({w.strip() for w in (base / "wnids.txt").read_text().split() if w.strip()})
    train_paths, train_labels = _tiny_train_files(base, wnids)
    if split == "train":
        return _folder_dataset("tiny_imagenet", "train", train_paths, train_labels, wnids, transform, None,
                               skip_corrupt=skip_corrupt)
    annotations = base / "val" / "val_annotations.txt"
    if not annotations.is_file():
        raise UserError(f"missing '{annotations}': the data root must hold the complete tiny-imagenet-200 release")
    index = {w: i for i, w in enumerate(wnids)}
    paths, labels = [], []
    for line in annotations.read_text().splitlines():
        fields = line.split("\t")
        if len(fields) < 2:
            continue
        if fields[1] not in index:
            raise UserError(f"'{annotations}' names wnid {fields[1]!r}, which is not in wnids.txt: re-download it")
        path = os.path.join(base, "val", "images", fields[0])
        if not os.path.isfile(path):
            raise UserError(f"'{annotations}' lists '{path}', which does not exist: re-download the release")
        paths.append(path)
        labels.append(index[fields[1]])
    if not paths:
        raise UserError(f"no images listed in '{annotations}': re-download the tiny-imagenet-200 release")
    return _folder_dataset("tiny_imagenet", "val", paths, labels, wnids, transform, train_paths,
                           skip_corrupt=skip_corrupt)
