#!/usr/bin/env python
"""A probe's k-NN readings at one epoch, seed by seed, against a baseline's: the cost (or gain) with a 95% interval.

Probes are runs stopped after an intermediate k-NN (e.g. epoch 10), so ``sslkd compare`` and the tables, which read
final results, do not cover them. Each row names the treated runs and the baseline runs (run folders or their
records, one per seed, matched by the seed in their config); the row's difference is treated - baseline per seed,
judged by Welch's t as the tables are (sslkd.report.verdicts). ``--compare-rows`` also judges the first row's
per-seed differences against the second's (e.g. what a loss term costs a deep ViT against a shallow one).

    python tools/probe_readings.py --epoch 10 --member vit \\
        --row "depth 4" "results/probes_v3_mokd/mokd_v3_sm_st,results/probes_v3_mokd/mokd_v3_sm_st_seed?" \\
            "results/proxy_v3_baselines/dino/proxy_v3_cifar10_subset_vit_p4_d4/seed?" \\
        --row "depth 12" "results/probes_v3_mokd/mokd_v3_sm_st_vit_d12*" "results/probes_v3_mokd/dino_v3_vit_d12*" \\
        --compare-rows
"""

from __future__ import annotations

import argparse
import glob
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sslkd.core.rundir import RunDir  # noqa: E402
from sslkd.errors import UserError  # noqa: E402
from sslkd.report.plots import read_metrics  # noqa: E402
from sslkd.report.verdicts import judge, mean_std  # noqa: E402


def reading(run: Path, epoch: int, member: str) -> float:
    """The k-NN top-1 of ``member`` logged at ``epoch`` in the run's metrics.jsonl."""
    key = f"knn/{member}"
    for record in read_metrics(run):
        if record.get("epoch") == epoch and key in record:
            return float(record[key])
    raise UserError(f"{run} has no {key} at epoch {epoch}; pick an epoch it logged")


def readings(pattern: str, epoch: int, member: str) -> dict[int, float]:
    """{seed: reading} of every run folder matching ``pattern``, glob patterns separated by commas (a run folder
    holds metrics.jsonl and config.yaml)."""
    matches = sorted({path for part in pattern.split(",") for path in glob.glob(part.strip())})
    runs = [Path(p) for p in matches if RunDir(p).metrics.is_file() and RunDir(p).config.is_file()]
    if not runs:
        raise UserError(f"no run folder (with metrics.jsonl and config.yaml) matches {pattern!r}")
    by_seed: dict[int, float] = {}
    for run in runs:
        seed = int(yaml.safe_load(RunDir(run).config.read_text())["train"]["seed"])
        if seed in by_seed:
            raise UserError(f"two runs of seed {seed} match {pattern!r}; narrow the pattern")
        by_seed[seed] = reading(run, epoch, member)
    return by_seed


def report(rows: list[tuple[str, str, str]], epoch: int, member: str, compare_rows: bool = False,
           baseline_epoch: int | None = None, paired: bool = False) -> str:
    """The markdown table of the rows (name, treated pattern, baseline pattern) and, with ``compare_rows``, the
    judgement of the first row's per-seed differences against the second's. ``baseline_epoch``: read the baseline
    there instead (e.g. 0: a run's gain over its own floor, with ``paired``: the paired t of the tables)."""
    baseline_epoch = epoch if baseline_epoch is None else baseline_epoch
    test = "paired t" if paired else "Welch t"
    lines = [f"k-NN top-1 (%) of {member}, treated at epoch {epoch}, baseline at epoch {baseline_epoch}; difference = "
             f"treated - baseline, seed by seed ({test})", "",
             "| row | seeds | treated | baseline | difference per seed | difference [95% CI] | verdict |",
             "|---|---|---|---|---|---|---|"]
    differences = []
    for name, treated_pattern, baseline_pattern in rows:
        treated = readings(treated_pattern, epoch, member)
        baseline = readings(baseline_pattern, baseline_epoch, member)
        seeds = sorted(set(treated) & set(baseline))
        if not seeds:
            raise UserError(f"row {name!r}: no seed in both {treated_pattern!r} and {baseline_pattern!r}")
        ours, theirs = [treated[s] for s in seeds], [baseline[s] for s in seeds]
        per_seed = [a - b for a, b in zip(ours, theirs)]
        differences.append(per_seed)
        verdict = judge(name, ours, theirs, paired=paired)
        lines.append(f"| {name} | {', '.join(map(str, seeds))} | {mean_std(ours)} | {mean_std(theirs)} | "
                     f"{', '.join(f'{d:+.2f}' for d in per_seed)} | "
                     f"{_difference(verdict)} | {_plain_verdict(verdict)} |")
    if compare_rows:
        verdict = judge("rows", differences[0], differences[1], paired=False)
        lines += ["", f"{rows[0][0]} - {rows[1][0]} (their per-seed differences, Welch t): {_difference(verdict)}, "
                      f"{_plain_verdict(verdict)}"]
    return "\n".join(lines)


def _plain_verdict(verdict) -> str:
    """The verdict in a probe's words: no paper direction, only which side is ahead beyond noise."""
    if verdict.low is None:
        return verdict.verdict
    if verdict.low > 0:
        return "above, beyond noise"
    if verdict.high < 0:
        return "below, beyond noise"
    return "within noise"


def _difference(verdict) -> str:
    interval = f" [{verdict.low:+.2f}, {verdict.high:+.2f}]" if verdict.low is not None else ""
    return f"{verdict.difference:+.2f}{interval}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epoch", type=int, required=True, help="the epoch whose k-NN reading is compared")
    parser.add_argument("--baseline-epoch", type=int,
                        help="read the baseline at this epoch instead (0 with the same runs: the gain over the floor)")
    parser.add_argument("--paired", action="store_true",
                        help="paired t over seeds (the same runs, or runs that share each seed's weights)")
    parser.add_argument("--member", required=True, help="the member whose k-NN is read (e.g. vit, cnn)")
    parser.add_argument("--row", nargs=3, action="append", required=True, metavar=("NAME", "TREATED", "BASELINE"),
                        help="a row: its name and the run folders of each side (glob patterns, comma-separated; "
                             "quote them)")
    parser.add_argument("--compare-rows", action="store_true",
                        help="judge the first row's per-seed differences against the second row's")
    args = parser.parse_args(argv)
    if args.compare_rows and len(args.row) != 2:
        parser.error("--compare-rows needs exactly two --row")
    try:
        print(report([tuple(row) for row in args.row], args.epoch, args.member, args.compare_rows,
                     args.baseline_epoch, args.paired))
    except UserError as error:
        print(f"probe_readings: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
