"""Data sets and transforms, on tiny fake files written in each data set's real on-disk format."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.io import ImageReadMode, decode_image, write_jpeg, write_png

import sslkd.data.datasets as ds
from sslkd.data import (
    DatasetInfo,
    EvalTransform,
    MultiCropTransform,
    SimCLRTransform,
    TwoViewTransform,
    blur_kernel_size,
    build_dataset,
    scaled_crop_sizes,
)
from sslkd.errors import UserError
from sslkd.registry import DATASETS

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own decoded-image cache, never the user's ~/.cache."""
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("SSLKD_CACHE", str(cache))
    return cache


@pytest.fixture(autouse=True)
def one_thread():
    """Transforms run in DataLoader workers with one intra-op thread; on a loaded 2-core machine, two threads make
    blur and hue ~100x slower on tiny images."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def random_images(n: int, size: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def dump(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


# ----------------------------------------------------------------------------------------------------------------
# fake data sets in their distributed formats


def make_cifar10(root: Path) -> dict[str, tuple[torch.Tensor, list[int]]]:
    """cifar-10-batches-py with 2 images per training batch and 3 test images; rows are R, G, B planes."""
    base = root / "cifar-10-batches-py"
    out = {}
    train_imgs, train_labels = [], []
    for i in range(1, 6):
        imgs, labels = random_images(2, 32, seed=i), [(2 * i) % 10, (2 * i + 1) % 10]
        dump(base / f"data_batch_{i}", {b"batch_label": b"x", b"labels": labels,
                                        b"data": imgs.reshape(2, -1).numpy(), b"filenames": [b"a", b"b"]})
        train_imgs.append(imgs)
        train_labels += labels
    test_imgs = random_images(3, 32, seed=9)
    dump(base / "test_batch", {b"labels": [7, 0, 3], b"data": test_imgs.reshape(3, -1).numpy()})
    dump(base / "batches.meta", {b"label_names": [n.encode() for n in CIFAR10_NAMES], b"num_vis": 3072})
    out["train"] = (torch.cat(train_imgs), train_labels)
    out["test"] = (test_imgs, [7, 0, 3])
    return out


def make_cifar100(root: Path) -> dict[str, tuple[torch.Tensor, list[int]]]:
    base = root / "cifar-100-python"
    out = {}
    for split, n, seed in (("train", 4, 1), ("test", 2, 2)):
        imgs, fine = random_images(n, 32, seed), [99, 3, 50, 0][:n]
        dump(base / split, {b"fine_labels": fine, b"coarse_labels": [1] * n, b"data": imgs.reshape(n, -1).numpy()})
        out[split] = (imgs, fine)
    dump(base / "meta", {b"fine_label_names": [f"c{i}".encode() for i in range(100)],
                         b"coarse_label_names": [f"s{i}".encode() for i in range(20)]})
    return out


def write_stl(path: Path, images: torch.Tensor) -> None:
    """STL-10 stores each channel column-major: the bytes of every [96,96] plane are its transpose."""
    path.write_bytes(images.transpose(2, 3).contiguous().numpy().tobytes())


def make_stl10(root: Path) -> dict[str, torch.Tensor]:
    base = root / "stl10_binary"
    base.mkdir(parents=True)
    imgs = {"train": random_images(3, 96, 1), "test": random_images(2, 96, 2), "unlabeled": random_images(4, 96, 3)}
    for split, x in imgs.items():
        write_stl(base / f"{split}_X.bin", x)
    (base / "train_y.bin").write_bytes(bytes([1, 10, 4]))
    (base / "test_y.bin").write_bytes(bytes([2, 2]))
    (base / "class_names.txt").write_text("\n".join(f"class{i}" for i in range(10)) + "\n")
    return imgs


def make_image_folder(root: Path, layout: dict[str, dict[str, int]], size: int = 8) -> dict[str, dict]:
    """PNG files root/<split>/<class>/<i>.png; returns {split: {relative path: image}}."""
    written: dict[str, dict] = {}
    seed = 0
    for split, classes in layout.items():
        written[split] = {}
        for cls, n in classes.items():
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                seed += 1
                img = random_images(1, size, seed)[0]
                write_png(img, str(root / split / cls / f"{i:03d}.png"))
                written[split][f"{cls}/{i:03d}.png"] = img
    return written


def make_tiny_imagenet(root: Path) -> Path:
    """tiny-imagenet-200 with two wnids (listed unsorted), 2 JPEG train images each, 3 val images."""
    base = root / "tiny-imagenet-200"
    wnids = ["n02", "n01"]
    base.mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
    for k, wnid in enumerate(wnids):
        (base / "train" / wnid / "images").mkdir(parents=True)
        (base / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
        for i in range(2):
            write_jpeg(random_images(1, 16, 10 * k + i)[0], str(base / "train" / wnid / "images" / f"{wnid}_{i}.JPEG"))
    (base / "val" / "images").mkdir(parents=True)
    rows = []
    for i, wnid in enumerate(["n01", "n02", "n01"]):
        write_jpeg(random_images(1, 16, 100 + i)[0], str(base / "val" / "images" / f"val_{i}.JPEG"))
        rows.append(f"val_{i}.JPEG\t{wnid}\t0\t0\t15\t15")
    (base / "val" / "val_annotations.txt").write_text("\n".join(rows) + "\n")
    return base


# ----------------------------------------------------------------------------------------------------------------
# data sets


def test_registry_and_build_dataset():
    for name in ("digits", "cifar10", "cifar100", "stl10", "imagefolder", "imagenet", "tiny_imagenet"):
        assert name in DATASETS
    with pytest.raises(UserError, match="unknown data set 'cifar11'.*cifar10"):
        build_dataset("cifar11", None, "train")


def test_digits_split_shapes_and_stats():
    train = build_dataset("digits", "/ignored", "train")
    test = build_dataset("digits", None, "test")
    assert len(train) + len(test) == 1797
    assert (len(train), len(test)) == (1437, 360)
    assert train.images.shape == (1437, 3, 32, 32) and train.images.dtype == torch.uint8
    assert torch.equal(train.images[:, 0], train.images[:, 2])
    assert int(train.images.max()) == 255 and int(train.images.min()) == 0
    all_counts = torch.bincount(torch.cat([train.labels, test.labels]), minlength=10)
    test_counts = torch.bincount(test.labels, minlength=10)
    assert torch.all((test_counts.float() - 0.2 * all_counts.float()).abs() <= 1)
    assert train.info == test.info and train.info.num_classes == 10 and train.info.image_size == 32
    mean, std = train.images.float().div(255).mean().item(), train.images.float().div(255).std().item()
    assert train.info.mean[0] == pytest.approx(mean, abs=1e-4) and train.info.std[0] == pytest.approx(std, abs=1e-3)
    again = build_dataset("digits", None, "test")
    assert torch.equal(again.images, test.images) and torch.equal(again.labels, test.labels)
    img, label, index = test[5]
    assert img.shape == (3, 32, 32) and label == int(test.labels[5]) and index == 5
    with pytest.raises(UserError, match="unknown split 'val'"):
        build_dataset("digits", None, "val")


@pytest.mark.parametrize("point_at_folder", [False, True])
def test_cifar10_round_trip(tmp_path, point_at_folder):
    truth = make_cifar10(tmp_path)
    root = tmp_path / "cifar-10-batches-py" if point_at_folder else tmp_path
    for split in ("train", "test"):
        d = build_dataset("cifar10", str(root), split)
        imgs, labels = truth[split]
        assert len(d) == len(labels)
        assert torch.equal(d.images, imgs)
        assert d.labels.tolist() == labels
        assert d.info.classes == tuple(CIFAR10_NAMES) and d.info.num_classes == 10 and d.info.image_size == 32
    img, label, index = d[2]
    assert torch.equal(img, truth["test"][0][2]) and label == 3 and index == 2
    # the R plane is the first 1024 bytes of a row
    row = pickle.loads((tmp_path / "cifar-10-batches-py" / "test_batch").read_bytes(), encoding="bytes")[b"data"][0]
    assert torch.equal(d.images[0, 0].flatten(), torch.from_numpy(row[:1024]))


def test_cifar100_fine_labels(tmp_path):
    truth = make_cifar100(tmp_path)
    for split in ("train", "test"):
        d = build_dataset("cifar100", tmp_path, split)
        assert torch.equal(d.images, truth[split][0])
        assert d.labels.tolist() == truth[split][1]
    assert d.info.num_classes == 100 and d.info.classes[99] == "c99"


def test_cifar_errors(tmp_path):
    make_cifar10(tmp_path)
    with pytest.raises(UserError, match="unknown split 'val'"):
        build_dataset("cifar10", tmp_path, "val")
    with pytest.raises(UserError, match="no cifar100 files under"):
        build_dataset("cifar100", tmp_path, "train")
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"garbage")
    with pytest.raises(UserError, match="cannot read .*data_batch_3"):
        build_dataset("cifar10", tmp_path, "train")
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(UserError, match="missing file .*data_batch_3"):
        build_dataset("cifar10", tmp_path, "train")


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "stl10", "imagefolder", "imagenet", "tiny_imagenet"])
def test_missing_root(tmp_path, name):
    with pytest.raises(UserError, match="needs a data root: set data.root="):
        build_dataset(name, None, "train")
    with pytest.raises(UserError, match=r"data root '.*nowhere' does not exist: set data.root=/path/to/"):
        build_dataset(name, str(tmp_path / "nowhere"), "train")


def test_stl10_transposition_labels_and_splits(tmp_path):
    truth = make_stl10(tmp_path)
    train = build_dataset("stl10", tmp_path, "train")
    assert torch.equal(train.images, truth["train"])
    assert train.labels.tolist() == [0, 9, 3]
    assert train.info.image_size == 96 and train.info.classes[9] == "class9"
    assert train.info.mean[0] == pytest.approx(truth["train"][:, 0].float().mean().item() / 255, abs=1e-4)
    test = build_dataset("stl10", tmp_path / "stl10_binary", "test")
    assert torch.equal(test.images, truth["test"]) and test.labels.tolist() == [1, 1]
    unlabeled = build_dataset("stl10", tmp_path, "unlabeled")
    assert len(unlabeled) == 4 and unlabeled.labels.tolist() == [-1] * 4
    for i in range(4):
        img, label, index = unlabeled[i]
        assert torch.equal(img, truth["unlabeled"][i]) and label == -1 and index == i
    both = build_dataset("stl10", tmp_path, "train+unlabeled")
    assert len(both) == 7 and both.labels.tolist() == [0, 9, 3, -1, -1, -1, -1]
    assert torch.equal(both[1][0], truth["train"][1]) and torch.equal(both[5][0], truth["unlabeled"][2])
    clone = pickle.loads(pickle.dumps(both))
    assert clone._maps is None and torch.equal(clone[6][0], truth["unlabeled"][3])
    with pytest.raises(UserError, match="unknown split"):
        build_dataset("stl10", tmp_path, "val")


def test_stl10_corrupt_files(tmp_path):
    make_stl10(tmp_path)
    base = tmp_path / "stl10_binary"
    (base / "test_y.bin").write_bytes(bytes([1]))
    with pytest.raises(UserError, match="test_y.bin' does not hold 2 labels"):
        build_dataset("stl10", tmp_path, "test")
    (base / "train_X.bin").write_bytes(b"short")
    with pytest.raises(UserError, match="train_X.bin' is not a whole number"):
        build_dataset("stl10", tmp_path, "train")


def test_image_folder_round_trip_and_stats(tmp_path):
    written = make_image_folder(tmp_path, {"train": {"dog": 2, "cat": 3}, "test": {"cat": 1, "dog": 1}})
    train = build_dataset("imagefolder", tmp_path, "train")
    assert isinstance(train, ds.TensorImageDataset)
    assert train.info.classes == ("cat", "dog") and train.info.image_size == 8 and len(train) == 5
    assert train.labels.tolist() == [0, 0, 0, 1, 1]
    expected = torch.stack([written["train"][k] for k in sorted(written["train"])])
    assert torch.equal(train.images, expected)
    mean = expected.float().div(255).mean(dim=(0, 2, 3))
    assert train.info.mean == pytest.approx(tuple(mean.tolist()), abs=1e-4)
    test = build_dataset("imagefolder", tmp_path, "test")
    assert test.labels.tolist() == [0, 1] and torch.equal(test[1][0], written["test"]["dog/000.png"])
    assert test.info == train.info  # statistics come from the train split
    with pytest.raises(UserError, match="split folder .*val' does not exist \\(found: test, train\\)"):
        build_dataset("imagefolder", tmp_path, "val")


def test_image_folder_cache(tmp_path, private_cache, monkeypatch):
    make_image_folder(tmp_path / "data", {"train": {"a": 3, "b": 3}})
    calls = []
    real = ds.decode_image
    monkeypatch.setattr(ds, "decode_image", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = build_dataset("imagefolder", tmp_path / "data", "train")
    assert len(calls) == 7  # one size probe + six images
    assert len(list(private_cache.glob("imagefolder-train-*.npy"))) == 1
    assert not list(private_cache.glob("*.tmp"))
    calls.clear()
    second = build_dataset("imagefolder", tmp_path / "data", "train")
    assert len(calls) == 1  # only the size probe: pixels come from the cache
    assert torch.equal(first.images, second.images) and first.info == second.info
    write_png(random_images(1, 8, 99)[0], str(tmp_path / "data" / "train" / "b" / "new.png"))
    calls.clear()
    third = build_dataset("imagefolder", tmp_path / "data", "train")
    assert len(third) == 7 and len(calls) == 8  # a changed folder is decoded again
    assert len(list(private_cache.glob("imagefolder-train-*.npy"))) == 1  # and its old entry removed
    for stale in private_cache.glob("imagefolder-train-*.npy"):
        np.save(stale, np.zeros((1, 3, 2, 2), np.uint8))
    assert torch.equal(build_dataset("imagefolder", tmp_path / "data", "train").images, third.images)


def test_image_folder_lazy_when_mixed_or_large(tmp_path, private_cache, monkeypatch):
    written = make_image_folder(tmp_path, {"train": {"a": 2}}, size=8)
    big = random_images(1, 12, 7)[0]
    write_png(big, str(tmp_path / "train" / "a" / "002.png"))
    mixed = build_dataset("imagefolder", tmp_path, "train")
    assert isinstance(mixed, ds.FileImageDataset) and len(mixed) == 3
    assert torch.equal(mixed[0][0], written["train"]["a/000.png"]) and torch.equal(mixed[2][0], big)
    assert mixed.info.image_size == ds.LAZY_IMAGE_SIZE
    assert not list(private_cache.glob("*.npy")) and len(list(private_cache.glob("*.json"))) == 1
    (tmp_path / "train" / "a" / "002.png").unlink()
    monkeypatch.setattr(ds, "MEMORY_BUDGET_BYTES", 100)
    large = build_dataset("imagefolder", tmp_path, "train")
    assert isinstance(large, ds.FileImageDataset) and large.info.mean == ds.IMAGENET_MEAN


def test_image_folder_errors(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(UserError, match="no class folders in"):
        build_dataset("imagefolder", tmp_path, "train")
    (tmp_path / "train" / "cat").mkdir()
    (tmp_path / "train" / "cat" / "notes.txt").write_text("x")
    with pytest.raises(UserError, match="no images .* found under"):
        build_dataset("imagefolder", tmp_path, "train")
    make_image_folder(tmp_path, {"train": {"cat": 1}, "test": {"cow": 1}})
    with pytest.raises(UserError, match="class folder\\(s\\) cow .* missing from"):
        build_dataset("imagefolder", tmp_path, "test")
    (tmp_path / "train" / "cat" / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(UserError, match="cannot decode image file '.*broken.png'"):
        build_dataset("imagefolder", tmp_path, "train")


def test_lazy_corrupt_image_names_the_file(tmp_path):
    paths = [str(tmp_path / "bad.jpg")]
    Path(paths[0]).write_bytes(b"\xff\xd8\xff\xe0 truncated")
    info = DatasetInfo("x", 1, 8, (0.5,) * 3, (0.5,) * 3, ("a",))
    lazy = ds.FileImageDataset(paths, torch.zeros(1, dtype=torch.long), info)
    with pytest.raises(UserError, match="bad.jpg"):
        lazy[0]


def test_imagenet_alias(tmp_path):
    make_image_folder(tmp_path, {"train": {"n1": 1, "n2": 1}, "val": {"n2": 2}})
    val = build_dataset("imagenet", tmp_path, "test")
    assert val.labels.tolist() == [1, 1] and val.info.mean == ds.IMAGENET_MEAN and val.info.name == "imagenet"
    with pytest.raises(UserError, match="unknown split"):
        build_dataset("imagenet", tmp_path, "unlabeled")


def test_tiny_imagenet(tmp_path):
    base = make_tiny_imagenet(tmp_path)
    train = build_dataset("tiny_imagenet", tmp_path, "train")
    assert train.info.classes == ("n01", "n02") and train.labels.tolist() == [0, 0, 1, 1] and len(train) == 4
    expected = decode_image(str(base / "train" / "n02" / "images" / "n02_1.JPEG"), mode=ImageReadMode.RGB)
    assert torch.equal(train[3][0], expected)
    for split in ("val", "test"):
        val = build_dataset("tiny_imagenet", base, split)
        assert val.labels.tolist() == [0, 1, 0] and val.info == train.info
    expected = decode_image(str(base / "val" / "images" / "val_1.JPEG"), mode=ImageReadMode.RGB)
    assert torch.equal(val[1][0], expected)
    (base / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn99\t0\t0\t1\t1\n")
    with pytest.raises(UserError, match="wnid 'n99'"):
        build_dataset("tiny_imagenet", base, "val")


# ----------------------------------------------------------------------------------------------------------------
# transforms


def test_crop_size_helpers():
    assert scaled_crop_sizes(224) == (224, 96)
    assert scaled_crop_sizes(32) == (32, 14)
    assert scaled_crop_sizes(96) == (96, 41)
    assert scaled_crop_sizes(16) == (16, 8)
    assert [blur_kernel_size(s) for s in (8, 16, 32, 64, 96, 224)] == [3, 3, 3, 7, 11, 23]


def test_multi_crop_views_and_pickling():
    torch.manual_seed(0)
    t = MultiCropTransform(32, 16, n_global=2, n_local=6, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    img = random_images(1, 32, 0)[0]
    views = t(img)
    assert [tuple(v.shape) for v in views] == [(3, 32, 32)] * 2 + [(3, 16, 16)] * 6
    assert all(v.dtype == torch.float32 for v in views)
    assert not torch.equal(views[2], views[3])
    clone = pickle.loads(pickle.dumps(t))
    assert len(clone(img)) == 8
    assert len(MultiCropTransform(64, 24, n_global=3, n_local=0)(random_images(1, 40, 1)[0])) == 3
    assert len(MultiCropTransform(32, 16, n_local=8, blur=False)(img)) == 10


def test_multi_crop_through_dataset_and_loader():
    d = build_dataset("digits", None, "test", transform=MultiCropTransform(32, 16, n_local=2))
    loader = torch.utils.data.DataLoader(d, batch_size=4)
    views, labels, index = next(iter(loader))
    assert [tuple(v.shape) for v in views] == [(4, 3, 32, 32)] * 2 + [(4, 3, 16, 16)] * 2
    assert labels.tolist() == d.labels[:4].tolist() and index.tolist() == [0, 1, 2, 3]


def test_simclr_views():
    img = random_images(1, 32, 3)[0]
    t = SimCLRTransform(32)
    views = t(img)
    assert len(views) == 2 and all(v.shape == (3, 32, 32) and v.dtype == torch.float32 for v in views)
    assert TwoViewTransform is SimCLRTransform
    byol = SimCLRTransform(24, blur_p=(1.0, 0.1), solarize_p=(0.0, 0.2), n_views=2)
    assert [v.shape for v in pickle.loads(pickle.dumps(byol))(img)] == [(3, 24, 24)] * 2
    assert len(SimCLRTransform(16, n_views=4)(img)) == 4
    with pytest.raises(ValueError, match="blur_p has 3 entries"):
        SimCLRTransform(32, blur_p=(1.0, 0.5, 0.1))


def test_eval_transform():
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 0.2)
    img = random_images(1, 32, 4)[0]
    out = EvalTransform(32, mean, std)(img)
    expected = (img.float() / 255 - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    assert torch.allclose(out, expected, atol=1e-5)
    assert EvalTransform(16, mean, std)(img).shape == (3, 16, 16)
    assert EvalTransform(96)(random_images(1, 128, 5)[0]).shape == (3, 96, 96)
    wide = torch.randint(0, 256, (3, 300, 400), dtype=torch.uint8)
    assert EvalTransform(224)(wide).shape == (3, 224, 224)
    assert EvalTransform(32, resize=36)(img).shape == (3, 32, 32)
    assert pickle.loads(pickle.dumps(EvalTransform(32)))(img).shape == (3, 32, 32)
