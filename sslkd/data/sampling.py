"""Deterministic data order and augmentation: a run resumed at any epoch sees exactly the same views.

The sampler yields ``(index, seed)`` pairs, and the view transform of each item is drawn from an RNG seeded with
that seed, a function of (run seed, epoch, index) alone. Views therefore do not depend on the number of workers,
on which worker loads an item, or on where a run was interrupted.
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch
from torch.utils.data import Dataset, Sampler, get_worker_info


def item_seed(seed: int, epoch: int, index: int) -> int:
    return (seed * 1_000_003 + epoch) * 10_000_019 + index


class EpochSampler(Sampler):
    """A per-epoch permutation seeded by (seed, epoch), sharded across ``world_size`` processes."""

    def __init__(self, num_samples: int, seed: int, shuffle: bool = True, rank: int = 0, world_size: int = 1):
        self.num_samples = num_samples
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> torch.Tensor:
        if not self.shuffle:
            order = torch.arange(self.num_samples)
        else:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.num_samples, generator=generator)
        usable = self.num_samples - self.num_samples % self.world_size
        return order[:usable][self.rank :: self.world_size]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for index in self._order().tolist():
            yield index, item_seed(self.seed, self.epoch, index)

    def __len__(self) -> int:
        return self.num_samples // self.world_size


class SeededViews(Dataset):
    """Wraps a data set returning ``(image, label, index)``; applies ``transform`` with the item's own seed."""

    def __init__(self, base: Dataset, transform: Callable):
        self.base = base
        self.transform = transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int]):
        index, seed = key
        image, label, index = self.base[index]
        if get_worker_info() is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                views = self.transform(image)
        else:
            torch.manual_seed(seed)
            views = self.transform(image)
        return views, label, index
