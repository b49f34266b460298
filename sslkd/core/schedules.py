"""Schedules as plain functions of the global step, so a resumed run picks up exactly where it stopped (DINO)."""

from __future__ import annotations

import math


def cosine(step: int, total_steps: int, start: float, end: float) -> float:
    """Half-cosine from ``start`` at step 0 to ``end`` at ``total_steps`` (held at ``end`` afterwards)."""
    if total_steps <= 0:
        return end
    progress = min(max(step / total_steps, 0.0), 1.0)
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * progress))


def warmup_cosine(step: int, total_steps: int, base: float, final: float, warmup_steps: int, warmup_start: float = 0.0) -> float:
    """DINO's ``cosine_scheduler``: ``linspace(warmup_start, base, warmup_steps)`` (``base`` at the last warm-up
    step), then a cosine from ``base`` to ``final`` over the remaining steps."""
    if step < warmup_steps:
        return linspace_at(step, warmup_steps, warmup_start, base)
    return cosine(step - warmup_steps, total_steps - warmup_steps, base, final)


def linspace_at(index: int, count: int, start: float, end: float) -> float:
    """``numpy.linspace(start, end, count)[index]`` without building the array (``start`` when count is 1)."""
    if count <= 1:
        return start
    return start + (end - start) * index / (count - 1)


def linear_warmup_then_constant(step: int, warmup_steps: int, start: float, end: float) -> float:
    """A per-step ramp: linear from ``start`` at step 0 to ``end`` at ``warmup_steps``, then constant."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return end
    return start + (end - start) * step / warmup_steps


def per_epoch_warmup_then_constant(epoch: int, warmup_epochs: int, start: float, end: float) -> float:
    """DINO's teacher-temperature schedule, as the DINO and MOKD code build it: ``linspace(start, end,
    warmup_epochs)`` followed by ``end``, indexed by the epoch. Constant within an epoch; ``end`` is reached at
    epoch ``warmup_epochs - 1`` (W=3: 0.04, 0.055, 0.07)."""
    if epoch >= warmup_epochs:
        return end
    return linspace_at(epoch, warmup_epochs, start, end)


def ema_momentum(step: int, total_steps: int, base: float, final: float = 1.0) -> float:
    """EMA-teacher momentum: cosine from ``base`` to ``final`` over training, per iteration (DINO, BYOL)."""
    return cosine(step, total_steps, base, final)
