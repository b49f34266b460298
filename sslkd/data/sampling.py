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


def seed_views(seed: int) -> None:
    """Seed the CPU generator that view transforms draw from. Not ``torch.manual_seed``: on a CUDA build it also
    queues a lazy CUDA seeding that records a Python stack trace, ~3 ms per call, more than the views of a
    32-px image cost."""
    torch.default_generator.manual_seed(seed)


class EpochSampler(Sampler):
    """A per-epoch permutation seeded by (seed, epoch), sharded across ``world_size`` processes.

    Process r takes items r, r + W, r + 2W, ... of the permutation, so its k-th batch of b items and the other
    processes' k-th batches together are exactly the k-th batch of W x b items one process would draw: the global
    batches do not depend on the number of processes. ``set_epoch(epoch, start)`` skips the first ``start`` items
    of this process's shard, where a run resumed mid-epoch continues; ``len`` is always the whole shard.
    """

    def __init__(self, num_samples: int, seed: int, shuffle: bool = True, rank: int = 0, world_size: int = 1):
        self.num_samples = num_samples
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch = epoch
        self.start = start

    def _order(self) -> torch.Tensor:
        if not self.shuffle:
            order = torch.arange(self.num_samples)
        else:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.num_samples, generator=generator)
        usable = self.num_samples - self.num_samples % self.world_size
        return order[:usable][self.rank :: self.world_size]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for index in self._order()[self.start:].tolist():
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
                seed_views(seed)
                views = self.transform(image)
        else:
            seed_views(seed)
            views = self.transform(image)
        return views, label, index


class SeededImages(Dataset):
    """Wraps a data set returning ``(image, label, index)``; yields ``(image, label, index, seed)`` for a collate
    function that makes the views of a whole batch from each item's seed (``batched.BatchedViews``)."""

    def __init__(self, base: Dataset):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int]):
        index, seed = key
        image, label, index = self.base[index]
        return image, label, index, seed


def dataset_labels(dataset: Dataset) -> torch.Tensor:
    """The label of every item of ``dataset`` in item order; a ``Subset`` (data.train_subset) reads its parent's."""
    from torch.utils.data import Subset

    if isinstance(dataset, Subset):
        return dataset_labels(dataset.dataset)[torch.as_tensor(dataset.indices, dtype=torch.long)]
    labels = getattr(dataset, "labels", None)
    if labels is None:
        raise TypeError(f"{type(dataset).__name__} has no `labels`: class-aware sampling needs labelled items")
    return torch.as_tensor(labels, dtype=torch.long)


class ClassAwareSampler(Sampler):
    """MCL's class-aware batches (Sec. 4.5.1): every batch of ``batch_size`` is ``batch_size / 2`` pairs of images,
    each pair from one class, so every image has a positive in its batch.

    The pairs' classes in a batch are distinct whenever the data set has at least ``batch_size / 2`` classes (then
    each anchor has exactly one positive and B - 2 negatives, as in the paper); with fewer classes they repeat as
    evenly as possible. Each class's images are visited in a per-epoch random order (reshuffled when used up), so an
    epoch of ``len(self)`` items sees about every image once. Deterministic given (seed, epoch). Under DDP the
    class-aware batch is the global one (``batch_size x world_size``) and process ``rank`` takes its ``rank``-th
    slice of whole pairs, so any number of processes sees the batches one process would. Yields ``(index,
    item_seed)`` pairs like ``EpochSampler``.
    """

    def __init__(self, labels: torch.Tensor, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        if batch_size < 2 or batch_size % 2:
            raise ValueError(f"class-aware batches are pairs of images: batch_size must be even, got {batch_size}")
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.start = 0
        self.classes = [c for c in torch.unique(self.labels).tolist() if int((self.labels == c).sum()) >= 2]
        if not self.classes:
            raise ValueError("class-aware batches need at least one class with two or more images")
        self.batches_per_rank = len(self.labels) // (batch_size * world_size)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """As ``EpochSampler``: ``start`` skips the first items of this process's shard (a mid-epoch resume)."""
        self.epoch = epoch
        self.start = start

    def _batches(self) -> list[list[int]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        members = {c: torch.nonzero(self.labels == c).flatten() for c in self.classes}
        queues = {c: [] for c in self.classes}

        def take(c: int) -> list[int]:
            queue = queues[c]
            if len(queue) < 2:
                fresh = members[c][torch.randperm(len(members[c]), generator=generator)].tolist()
                if queue and fresh[0] == queue[0]:
                    fresh = fresh[1:] + fresh[:1]
                queue += fresh
            pair = queue[:2]
            del queue[:2]
            return pair

        def shuffled_classes() -> list[int]:
            return [self.classes[i] for i in torch.randperm(len(self.classes), generator=generator).tolist()]

        pairs_per_batch = self.batch_size * self.world_size // 2
        batches, class_pool = [], []
        for _ in range(self.batches_per_rank):
            chosen: list[int] = []
            while len(chosen) < pairs_per_batch:
                candidates = [c for c in class_pool if c not in chosen]
                if not candidates:
                    if not class_pool or len(set(chosen)) < len(self.classes):
                        class_pool += shuffled_classes()
                        continue
                    candidates = class_pool
                pick = candidates[0]
                class_pool.remove(pick)
                chosen.append(pick)
            global_batch = [i for c in chosen for i in take(c)]
            batches.append(global_batch[self.rank * self.batch_size : (self.rank + 1) * self.batch_size])
        return batches

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = [index for batch in self._batches() for index in batch]
        for index in order[self.start:]:
            yield index, item_seed(self.seed, self.epoch, index)

    def __len__(self) -> int:
        return self.batches_per_rank * self.batch_size
