"""Data sets and view transforms; importing this package registers every data set in ``sslkd.registry.DATASETS``."""

from __future__ import annotations

import inspect

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


def build_dataset(name: str, root=None, split: str = "train", transform=None, skip_corrupt: bool = False) -> Dataset:
    """The registered data set ``name`` at ``root`` (ignored by "digits"); items are (view(s), label, index).
    ``skip_corrupt`` leaves out undecodable image files, for the data sets made of image files."""
    builder = DATASETS.get(name)
    if skip_corrupt and "skip_corrupt" in inspect.signature(builder).parameters:
        return builder(root, split, transform, skip_corrupt=True)
    return builder(root, split, transform)
