"""A paper's claim against measured seeds: the difference, its 95% confidence interval and a plain verdict.

A claim names two numbers per seed (e.g. MOKD's CNN and the CNN trained alone with DINO) and the direction the
paper reports. Unpaired groups use Welch's t interval (unequal variances); paired ones (a run against its own
random-init floor, same seed and weights) the t interval of the per-seed differences. The verdict reads the
interval: it excludes 0 on the paper's side (reproduced), on the other side (reversed), or contains it (within
noise). With fewer than two seeds on a side there is no interval and the verdict says so. A result within noise
also gets the budget that would settle it: the seeds per side at which the interval would exclude 0 if the measured
means and standard deviations held (a planning figure, not a promise: the next seeds move both).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

LEVEL = 0.95
MAX_SEEDS = 50  # beyond this many seeds per side the difference is reported as too small to settle by seeds


@dataclass(frozen=True)
class Verdict:
    claim: str
    treated: tuple[float, ...]
    baseline: tuple[float, ...]
    paired: bool
    direction: int
    difference: float
    low: float | None
    high: float | None
    p_value: float | None
    verdict: str
    threshold: float = 0.0
    seeds_to_settle: int | None = None


def mean_std(values: Sequence[float]) -> str:
    """``mean +- std (n=k)``; the std is the sample std (ddof 1), left out for one value."""
    if not values:
        return "n/a"
    mean = float(np.mean(values))
    if len(values) == 1:
        return f"{mean:.2f} (n=1)"
    return f"{mean:.2f} +- {float(np.std(values, ddof=1)):.2f} (n={len(values)})"


def _interval(mean: float, se: float, df: float) -> tuple[float, float, float]:
    """(low, high, two-sided p against 0) of the t interval; se 0 gives a point interval."""
    if se == 0.0:
        return mean, mean, 0.0 if mean != 0.0 else 1.0
    half = float(stats.t.ppf(0.5 + LEVEL / 2, df)) * se
    return mean - half, mean + half, float(2 * stats.t.sf(abs(mean) / se, df))


def seeds_to_settle(treated: Sequence[float], baseline: Sequence[float], *, paired: bool) -> int | None:
    """The fewest seeds per side (more than now, at most MAX_SEEDS) at which the 95% interval would exclude 0 if
    the measured mean difference and standard deviations held; None when even MAX_SEEDS would not (or the sides
    are equal). Paired: the t interval of the per-seed differences; unpaired: Welch's with n seeds on each side."""
    a, b = np.asarray(treated, dtype=float), np.asarray(baseline, dtype=float)
    if paired:
        d = a - b
        difference, var_sum, var_sq = float(d.mean()), float(d.var(ddof=1)), None
    else:
        difference = float(a.mean() - b.mean())
        va, vb = float(a.var(ddof=1)), float(b.var(ddof=1))
        var_sum, var_sq = va + vb, va ** 2 + vb ** 2
    if difference == 0.0:
        return None
    for n in range(max(len(a), len(b)) + 1, MAX_SEEDS + 1):
        df = n - 1 if paired or var_sq == 0.0 else (n - 1) * var_sum ** 2 / var_sq
        if float(stats.t.ppf(0.5 + LEVEL / 2, df)) * math.sqrt(var_sum / n) < abs(difference):
            return n
    return None


def judge(claim: str, treated: Sequence[float], baseline: Sequence[float], *, paired: bool, direction: int = 1,
          threshold: float = 0.0) -> Verdict:
    """Compare ``treated`` with ``baseline`` (per-seed values). ``direction`` +1: the paper reports treated above
    baseline, -1 below. ``threshold``: the margin the claim needs (e.g. 10 k-NN points above the floor); the
    verdict then also says whether the mean difference reaches it."""
    if direction not in (1, -1):
        raise ValueError(f"direction must be +1 or -1, got {direction}")
    a, b = np.asarray(treated, dtype=float), np.asarray(baseline, dtype=float)
    if paired and len(a) != len(b):
        raise ValueError(f"paired comparison needs as many treated as baseline values, got {len(a)} and {len(b)}")
    if len(a) == 0 or len(b) == 0:
        return Verdict(claim, tuple(a), tuple(b), paired, direction, math.nan, None, None, None, "no runs yet",
                       threshold)
    difference = float(a.mean() - b.mean())
    low = high = p_value = settle = None
    if paired and len(a) >= 2:
        d = a - b
        low, high, p_value = _interval(float(d.mean()), float(d.std(ddof=1)) / math.sqrt(len(d)), len(d) - 1)
    elif not paired and len(a) >= 2 and len(b) >= 2:
        va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
        se = math.sqrt(va + vb)
        df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1)) if se > 0 else 1.0
        low, high, p_value = _interval(difference, se, df)
    if low is None:
        verdict = f"no interval with {min(len(a), len(b))} seed(s): needs 2+ (the protocol asks 3)"
    elif direction * low > 0 and direction * high > 0:
        verdict = "paper's direction reproduced"
    elif direction * low < 0 and direction * high < 0:
        verdict = "reversed"
    else:
        verdict = "within noise"
        settle = seeds_to_settle(a, b, paired=paired)
    if threshold:
        reached = direction * difference >= threshold
        verdict += f"; mean {'reaches' if reached else 'misses'} the {threshold:+g} margin"
    return Verdict(claim, tuple(a), tuple(b), paired, direction, difference, low, high, p_value, verdict, threshold,
                   settle)


def verdict_table(verdicts: Sequence[Verdict], treated_label: str = "treated",
                  baseline_label: str = "baseline") -> str:
    """Markdown: one row per claim with both sides, the difference, its interval, the test's p, the verdict and,
    for a result within noise, the seeds per side that would settle it (``seeds_to_settle``)."""
    lines = [f"| claim | {treated_label} | {baseline_label} | difference [95% CI] | p | verdict | seeds to settle |",
             "|---|---|---|---|---|---|---|"]
    for v in verdicts:
        test = "paired t" if v.paired else "Welch t"
        interval = f" [{v.low:+.2f}, {v.high:+.2f}]" if v.low is not None else ""
        difference = "n/a" if math.isnan(v.difference) else f"{v.difference:+.2f}{interval}"
        p = f"{v.p_value:.3f} ({test})" if v.p_value is not None else f"- ({test})"
        settle = "" if "within noise" not in v.verdict else (
            str(v.seeds_to_settle) if v.seeds_to_settle else f"over {MAX_SEEDS}")
        lines.append(f"| {v.claim} | {mean_std(v.treated)} | {mean_std(v.baseline)} | {difference} | {p} | "
                     f"{v.verdict} | {settle} |")
    return "\n".join(lines) + "\n"
