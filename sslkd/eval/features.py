"""Feature extraction for frozen-backbone evaluation (k-NN, linear probe on cached features)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DistributedSampler


def extract_features(
    fn: Callable[[torch.Tensor], torch.Tensor],
    loader: Iterable,
    device: str | torch.device = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run `fn` over a loader of (images, labels, indices); return L2-normalised features and labels.

    Rows are placed at the data set indices, so the result is in data set order whatever the sampler
    shuffles. With a DistributedSampler each rank sees part of the data, so every rank must call this: the
    ranks' rows are summed and divided by how often each index was seen, which also undoes the sampler's
    padding duplicates. Any other loader is read by this process alone (e.g. evaluation on rank 0 only).
    Every index of `loader.dataset` must be seen.
    """
    n = len(loader.dataset)
    feats = labels = None
    seen = torch.zeros(n, dtype=torch.float32)  # buffers live outside inference mode: all_reduce writes them
    for images, batch_labels, indices in loader:
        with torch.inference_mode():
            out = fn(images.to(device, non_blocking=True)).float().cpu()
        indices = torch.as_tensor(indices, dtype=torch.long)
        if feats is None:
            feats = torch.zeros(n, out.shape[1], dtype=torch.float32)
            labels = torch.zeros(n, dtype=torch.float32)
        feats.index_copy_(0, indices, out)
        labels.index_copy_(0, indices, torch.as_tensor(batch_labels, dtype=torch.float32))
        seen[indices] = 1.0
    if feats is None:
        raise ValueError("extract_features got an empty loader: the data set has no samples")
    if isinstance(getattr(loader, "sampler", None), DistributedSampler):
        feats, labels, seen = _sum_over_ranks(feats, labels, seen)
    missing = int((seen == 0).sum())
    if missing:
        raise ValueError(
            f"extract_features: {missing} of {n} samples were never yielded; use drop_last=False and a sampler "
            "that covers the whole data set"
        )
    feats = feats / seen[:, None]
    labels = torch.round(labels / seen).long()
    return F.normalize(feats, dim=1), labels


def _sum_over_ranks(
    feats: torch.Tensor, labels: torch.Tensor, seen: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sum the per-rank partial tensors (zeros where a rank saw nothing) on the process group's device."""
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    out = []
    for t in (feats, labels, seen):
        t = t.to(device)
        dist.all_reduce(t)
        out.append(t.cpu())
    return out[0], out[1], out[2]
