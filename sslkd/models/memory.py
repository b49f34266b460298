"""Non-trainable stores of past embeddings, held in buffers so checkpoints carry them.

``MemoryBank``: one L2-normalised embedding per training item, written at the item's data-set index with momentum
(Wu et al. 2018; MCL's memory-based mining, Sec. 4.5.1). ``FeatureQueue``: a FIFO of the most recent keys (MoCo).
``ClassIndex``: draws, for labelled anchors, same-class positives and other-class negatives among the training
items (MCL Alg. 2), exactly and without per-class lists of the complement.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _random_unit_vectors(rows: int, dim: int, generator: torch.Generator | None = None) -> torch.Tensor:
    return F.normalize(torch.randn(rows, dim, generator=generator), dim=1)


class MemoryBank(nn.Module):
    """``features[i]`` is the running embedding of training item i (MCL Alg. 2: "initialize M memory banks with
    random unit vectors"). Sized to the data set with ``resize`` once it is known; a checkpoint restores its size."""

    def __init__(self, dim: int, size: int = 0):
        super().__init__()
        self.dim = dim
        self.register_buffer("features", _random_unit_vectors(size, dim))

    def __len__(self) -> int:
        return self.features.shape[0]

    def resize(self, size: int, seed: int = 0) -> None:
        """(Re)allocate ``size`` random unit vectors, unless the bank already has that size (e.g. restored)."""
        if size != len(self):
            generator = torch.Generator().manual_seed(seed)
            self.features = _random_unit_vectors(size, self.dim, generator).to(self.features.device)

    def gather(self, indices: torch.Tensor) -> torch.Tensor:
        """The stored embeddings at ``indices`` (any shape), as a new tensor: later writes do not touch it."""
        return self.features[indices]

    @torch.no_grad()
    def update(self, indices: torch.Tensor, features: torch.Tensor, momentum: float) -> None:
        """bank[i] = normalise(momentum * bank[i] + (1 - momentum) * v_i) at each item's index (Wu et al. 2018)."""
        mixed = self.features[indices] * momentum + features.detach().to(self.features.dtype) * (1.0 - momentum)
        self.features.index_copy_(0, indices, F.normalize(mixed, dim=1))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        stored = state_dict.get(prefix + "features")
        if stored is not None and stored.shape != self.features.shape:
            self.features = torch.empty_like(stored, device=self.features.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class FeatureQueue(nn.Module):
    """MoCo's dictionary: ``size`` keys in a ring buffer, the oldest replaced first; ``pointer`` is where the next
    key goes. Starts as random unit vectors (MoCo)."""

    def __init__(self, size: int, dim: int):
        super().__init__()
        self.register_buffer("keys", _random_unit_vectors(size, dim))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))

    def __len__(self) -> int:
        return self.keys.shape[0]

    def snapshot(self) -> torch.Tensor:
        """A copy of the keys, safe to use in a graph before ``enqueue`` writes in place."""
        return self.keys.clone()

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Write ``keys`` [n, dim] at the pointer, wrapping around, and advance it (n may exceed the queue)."""
        keys = keys.detach().to(self.keys.dtype)[-len(self):]
        slots = (int(self.pointer) + torch.arange(keys.shape[0], device=self.keys.device)) % len(self)
        self.keys.index_copy_(0, slots, keys)
        self.pointer.fill_((int(self.pointer) + keys.shape[0]) % len(self))


class ClassIndex:
    """The training items (data-set indices) sorted by label, with each class's slice, for exact sampling.

    A draw among the items of other classes than c is a uniform position in [0, n - n_c) mapped past class c's
    slice; a positive is a uniform other item of the anchor's class (the anchor itself when it is alone).
    """

    def __init__(self, item_indices: torch.Tensor, labels: torch.Tensor):
        labels = labels.long()
        order = torch.argsort(labels, stable=True)
        self.sorted_items = item_indices.long()[order]
        counts = torch.bincount(labels)
        self.starts = torch.cumsum(counts, 0) - counts
        self.counts = counts
        self.positions = torch.empty_like(order)
        self.positions[order] = torch.arange(len(order))
        self.position_of_item = {int(i): int(p) for i, p in zip(item_indices.tolist(), self.positions.tolist())}
        self.total = len(labels)

    def to(self, device: torch.device) -> ClassIndex:
        for name in ("sorted_items", "starts", "counts"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def positives(self, anchor_items: torch.Tensor, anchor_labels: torch.Tensor,
                  generator: torch.Generator | None = None) -> torch.Tensor:
        """One random other item of each anchor's class (data-set indices)."""
        counts = self.counts[anchor_labels]
        own = torch.tensor([self.position_of_item[int(i)] for i in anchor_items.tolist()],
                           device=anchor_items.device) - self.starts[anchor_labels]
        others = (counts - 1).clamp_min(1)
        draw = (torch.rand(len(anchor_items), generator=generator).to(counts.device) * others).long()
        draw = torch.where(counts > 1, draw + (draw >= own).long(), own)
        return self.sorted_items[self.starts[anchor_labels] + draw]

    def negatives(self, anchor_labels: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """[B, k] random items of other classes than each anchor's (with replacement)."""
        counts = self.counts[anchor_labels][:, None]
        starts = self.starts[anchor_labels][:, None]
        pool = self.total - counts
        if bool((pool <= 0).any()):
            raise ValueError("an anchor's class holds every training item: there are no negatives to draw")
        draw = (torch.rand(len(anchor_labels), k, generator=generator).to(counts.device) * pool).long()
        return self.sorted_items[torch.where(draw < starts, draw, draw + counts)]
