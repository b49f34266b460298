"""Run records -> the chosen table layout (``auto``: the one that fits), with the notes every table shares: the
random-init floors, members at or below theirs, repeated seeds, unfinished runs and, if asked, provenance."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from sslkd.errors import UserError
from sslkd.report.core import TABLES, Stat, at_or_below_floor, check_format, format_stat, render
from sslkd.report.records import load_runs


def pick_table(runs: pd.DataFrame) -> tuple[str, list[str]]:
    """The one specific table that fits the runs, else ``runs`` (with a note when several fit)."""
    fitting = [name for name in TABLES if name != "runs" and TABLES.get(name).fits(runs)]
    if len(fitting) == 1:
        return fitting[0], []
    notes = [f"several tables fit these runs ({', '.join(fitting)}): choose one with --table"] if fitting else []
    return "runs", notes


def compare_table(run_dirs: list[str | Path], table: str = "auto", provenance: bool = False) -> pd.DataFrame:
    """Load the runs under ``run_dirs`` and build the named table (``auto``: see ``pick_table``). Notes add what
    every table needs: the floors (k-NN at step 0) and the members that end at or below theirs, runs left out as
    repeated seeds or unfinished, and with ``provenance`` where the runs came from."""
    if table != "auto" and table not in TABLES:
        raise UserError(f"{TABLES.unknown_message(table)[:-1]}, or auto (picks one from the runs).")
    runs = load_runs(run_dirs)
    name, notes = pick_table(runs) if table == "auto" else (table, [])
    built = TABLES.get(name).build(runs)
    notes += [*(floor_notes(runs) if name != "runs" else []), *floor_warnings(runs), *runs.attrs.get("notes", [])]
    unfinished = runs.attrs.get("unfinished", [])
    if unfinished:
        notes.append(f"not finished, left out: {', '.join(unfinished)}")
    if provenance:
        notes += provenance_notes(runs)
    built.attrs = {**built.attrs, "notes": [*built.attrs.get("notes", []), *notes]}
    return built


def floor_notes(runs: pd.DataFrame) -> list[str]:
    """One note with the mean k-NN at step 0 of every (method, setting, member) that recorded one."""
    floors = runs[runs.knn_floor.notna()].assign(tag=runs.tag.fillna(""))
    cells = [f"{method}{f' [{tag}]' if tag else ''} {member} ({backbone}) {format_stat(Stat.of(group.knn_floor))}"
             for (method, tag, member, backbone), group in floors.groupby(["method", "tag", "member", "backbone"],
                                                                          sort=False)]
    return [f"random-init floors (k-NN at step 0, mean +- std (n)): {'; '.join(cells)}"] if cells else []


def floor_warnings(runs: pd.DataFrame) -> list[str]:
    """A warning per trained (method, config file, setting, member) with a seed whose k-NN is at or below that run's
    own random initialisation; it names the setting, not the run folder, so tables rebuilt elsewhere are the same."""
    below = runs.assign(below=[epochs > 0 and at_or_below_floor(knn, floor)
                               for epochs, knn, floor in zip(runs.epochs, runs.knn_top1, runs.knn_floor)],
                        tag=runs.tag.fillna(""))
    warnings = []
    for (method, config, tag, member), group in below.groupby(["method", "config", "tag", "member"], sort=False):
        if group.below.any():
            setting = f"{method}{f' [{tag}]' if tag else ''}{f' ({config})' if config else ''}"
            warnings.append(f"WARNING: {member} of {setting} ends at or below its random initialisation in "
                            f"{int(group.below.sum())} of {len(group)} seeds (k-NN {group.knn_top1.mean():.1f}, "
                            f"floor {group.knn_floor.mean():.1f}): it learned nothing the k-NN can see")
    return warnings


def provenance_notes(runs: pd.DataFrame) -> list[str]:
    """Where the runs came from, one note per distinct provenance with its number of runs."""
    per_run = runs.drop_duplicates("run_dir")
    counts = per_run.provenance.value_counts(sort=False)
    return [f"provenance: {text} ({count} run{'s' if count != 1 else ''})" for text, count in counts.items()]


def compare(run_dirs: list[str | Path], table: str = "auto", fmt: str = "md") -> str:
    """What ``sslkd compare RUN_DIR... [--table NAME] [--format md|csv|latex]`` prints."""
    check_format(fmt)
    return render(compare_table(run_dirs, table), fmt)
