"""Data sets and view transforms; importing this package registers every data set in ``sslkd.registry.DATASETS``."""

from __future__ import annotations

from torch.utils.data import Dataset

from sslkd.data import datasets, transforms
from sslkd.data.datasets import DatasetInfo, ImageDataset, cache_dir
from sslkd.data.transforms import (
    EvalTransform,
    MultiCropTransform,
    SimCLRTransform,
    TwoViewTransform,
    blur_kernel_size,
    scaled_crop_sizes,
)
from sslkd.registry import DATASETS

__all__ = [
    "DatasetInfo",
    "EvalTransform",
    "ImageDataset",
    "MultiCropTransform",
    "SimCLRTransform",
    "TwoViewTransform",
    "blur_kernel_size",
    "build_dataset",
    "cache_dir",
    "datasets",
    "scaled_crop_sizes",
    "transforms",
]


def build_dataset(name: str, root=None, split: str = "train", transform=None) -> Dataset:
    """The registered data set ``name`` at ``root`` (ignored by "digits"); items are (view(s), label, index)."""
    return DATASETS.get(name)(root, split, transform)
