"""Finished runs' summary.json files and the papers' reported numbers, as pandas tables.

A run directory ends its life by writing ``summary.json``; every report is built from those records, so tables can
be made long after training and from runs done on different machines.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import yaml

from sslkd.errors import UserError

RUN_COLUMNS = [
    "method", "dataset", "seed", "epochs", "member", "member_index", "backbone", "paper_name",
    "knn_top1", "linear_top1", "wall_time_s", "tag", "run_dir", "params_m", "knn_dogo_mean", "config",
]
REQUIRED_KEYS = ("method", "dataset", "seed", "epochs", "members")
PAPER_NUMBERS_DIR = Path(__file__).resolve().parents[2] / "zoo_configs" / "paper_numbers"


def _not_finished(run_dir: Path) -> UserError:
    return UserError(
        f"{run_dir} has no summary.json: is the run finished? resume it with sslkd train --resume {run_dir}"
    )


def find_summaries(run_dirs: list[str | Path]) -> tuple[list[Path], list[Path]]:
    """Summary files under the given paths, and the unfinished run directories met while searching parents.

    A path is a run directory (holding summary.json), the summary.json itself, or a parent searched recursively.
    A run directory named directly must be finished; unfinished runs inside a parent are only reported, so a sweep
    can be tabled while its last runs still train.
    """
    if not run_dirs:
        raise UserError("no run directories given: pass one or more run directories (or folders holding them)")
    found: dict[Path, None] = {}
    unfinished: dict[Path, None] = {}
    for given in map(Path, run_dirs):
        if not given.exists():
            raise UserError(f"run directory {given} does not exist: check the path")
        if given.is_file():
            if given.name != "summary.json":
                raise UserError(f"{given} is not a run directory or a summary.json: pass the run directory")
            found[given.resolve()] = None
            continue
        if (given / "summary.json").is_file():
            found[(given / "summary.json").resolve()] = None
            continue
        nested = sorted(given.rglob("summary.json"))
        if not nested:
            raise _not_finished(given)
        found.update((path.resolve(), None) for path in nested)
        finished = {path.parent for path in nested}
        unfinished.update(
            (config.parent.resolve(), None)
            for config in sorted(given.rglob("config.yaml"))
            if not finished.intersection([config.parent, *config.parents])
        )
    return list(found), list(unfinished)


def _read_summary(path: Path) -> dict:
    try:
        summary = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(
            f"{path.parent} has no readable summary.json ({exc}): is the run finished? "
            f"resume it with sslkd train --resume {path.parent}"
        ) from exc
    missing = [key for key in REQUIRED_KEYS if key not in summary] if isinstance(summary, dict) else ["members"]
    if missing or not isinstance(summary["members"], dict) or not summary["members"]:
        what = ", ".join(missing) or "members"
        raise UserError(
            f"{path} is not a complete sslkd summary (missing or empty: {what}): pass only run directories "
            f"written by sslkd train"
        )
    return summary


def _accuracy(value) -> float:
    return math.nan if value is None else float(value)


def summary_rows(path: Path) -> list[dict]:
    """One row per member of the run whose summary.json is ``path``, in the run's member order."""
    summary = _read_summary(path)
    try:
        return _member_rows(summary, path)
    except (TypeError, ValueError, AttributeError) as exc:
        raise UserError(
            f"{path} has a malformed field ({exc}): pass only run directories written by sslkd train"
        ) from exc


def _member_configs(run_dir: Path) -> dict:
    """The run's resolved member configs from its config.yaml (empty when absent)."""
    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return {}
    members = config.get("members") if isinstance(config, dict) else None
    return members if isinstance(members, dict) else {}


def backbone_identity(name: str, member_config: dict) -> str:
    """The backbone name with the overrides that make it a different network (``vit_tiny_patch16_224[patch_size=4,
    depth=4, ...]``), so runs compare only like with like and tables say what was trained."""
    args = dict(member_config.get("backbone_args") or {})
    if member_config.get("small_image_stem"):
        args["small_image_stem"] = True
    args.pop("img_size", None)
    if not args:
        return name
    return f"{name}[{', '.join(f'{k}={v}' for k, v in args.items())}]"


def _member_rows(summary: dict, path: Path) -> list[dict]:
    wall = summary.get("wall_time_s")
    configs = _member_configs(path.parent)
    return [
        {
            "method": summary["method"],
            "dataset": summary["dataset"],
            "seed": int(summary["seed"]),
            "epochs": int(summary["epochs"]),
            "member": name,
            "member_index": index,
            "backbone": backbone_identity(member.get("backbone"), configs.get(name) or {}),
            "paper_name": member.get("paper_name"),
            "knn_top1": _accuracy(member.get("knn_top1")),
            "linear_top1": _accuracy(member.get("linear_top1")),
            "wall_time_s": _accuracy(wall),
            "tag": summary.get("tag"),
            "run_dir": str(path.parent),
            "params_m": _accuracy(member.get("params_m")),
            "knn_dogo_mean": _accuracy(member.get("knn_dogo_mean")),
            "config": Path(summary["config_file"]).stem if summary.get("config_file") else "",
        }
        for index, (name, member) in enumerate(summary["members"].items())
    ]


def load_runs(run_dirs: list[str | Path]) -> pd.DataFrame:
    """One row per (run, member) with the columns of ``RUN_COLUMNS``; missing accuracies are NaN.

    ``df.attrs["unfinished"]`` lists run directories found inside parent folders that have no summary yet.
    """
    summaries, unfinished = find_summaries(run_dirs)
    rows = [row for path in summaries for row in summary_rows(path)]
    df = pd.DataFrame(rows, columns=RUN_COLUMNS)
    df.attrs["unfinished"] = [str(run) for run in unfinished]
    return df


def member_objectives(run_dir: str | Path) -> dict[str, str]:
    """Each member's SSL objective as the run's config.yaml records it (``strategy.objectives``, DoGo); empty when
    the config names none (every other method trains each member with the method itself)."""
    try:
        config = yaml.safe_load((Path(run_dir) / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return {}
    strategy = config.get("strategy") if isinstance(config, dict) else None
    objectives = strategy.get("objectives") if isinstance(strategy, dict) else None
    return {str(k): str(v) for k, v in objectives.items()} if isinstance(objectives, dict) else {}


def paper_tables(root: Path = PAPER_NUMBERS_DIR) -> list[str]:
    """Names of the transcribed paper tables available under ``root``."""
    return sorted(path.stem for path in root.glob("*.csv")) if root.is_dir() else []


def load_paper_numbers(table: str, root: Path = PAPER_NUMBERS_DIR) -> pd.DataFrame:
    """A transcribed paper table (see zoo_configs/paper_numbers/README.md); '-' cells of the paper are NaN."""
    path = Path(root) / f"{table}.csv"
    if not path.is_file():
        known = ", ".join(paper_tables(Path(root))) or f"none (no CSV files in {root})"
        raise UserError(f"unknown paper table {table!r}. Known: {known}.")
    return pd.read_csv(path)
