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
    """Linear warm-up from ``warmup_start`` to ``base`` over ``warmup_steps``, then cosine to ``final`` (DINO lr)."""
    if step < warmup_steps:
        return warmup_start + (base - warmup_start) * step / warmup_steps
    return cosine(step - warmup_steps, total_steps - warmup_steps, base, final)


def linear_warmup_then_constant(step: int, warmup_steps: int, start: float, end: float) -> float:
    """DINO's teacher-temperature schedule: linear from ``start`` to ``end`` over the warm-up, then constant.

    The DINO code builds ``linspace(start, end, warmup_epochs)`` per epoch, so the final value is reached at
    epoch ``warmup - 1``; per step we interpolate the same line and reach ``end`` at that epoch's first step.
    """
    if warmup_steps <= 0 or step >= warmup_steps:
        return end
    return start + (end - start) * step / warmup_steps


def ema_momentum(step: int, total_steps: int, base: float, final: float = 1.0) -> float:
    """EMA-teacher momentum: cosine from ``base`` to ``final`` over training, per iteration (DINO, BYOL)."""
    return cosine(step, total_steps, base, final)
