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

from sslkd.core.rundir import RunDir
from sslkd.errors import UserError
from sslkd.report.provenance import describe

RUN_COLUMNS = [
    "method", "dataset", "seed", "epochs", "member", "member_index", "backbone", "paper_name",
    "knn_top1", "linear_top1", "wall_time_s", "tag", "run_dir", "params_m", "knn_dogo_mean", "config",
    "knn_floor", "world_size", "provenance", "variant",
]
# Runs differing only here are one setting: the seed, paths, and the loader's worker count (each item's views come
# from its own seed, so the batches do not depend on which process made them).
NOT_SETTINGS = ("train.seed", "output_dir", "data.root", "config_file", "data.num_workers")
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


def recorded_options(summary: dict, run_dir: Path) -> tuple[dict[str, dict], dict | None]:
    """(member -> its backbone options, the strategy's options) of a run: what labels it beyond names (a backbone's
    overrides, DoGo's objectives, L-MCL's terms, SDSSL's framework), as its summary.json records them."""
    if "strategy" in summary:
        return summary["members"], summary["strategy"] or {}
    return options_from_config_yaml(run_dir)


def options_from_config_yaml(run_dir: Path) -> tuple[dict[str, dict], dict | None]:
    """The same options from the run's config.yaml, for summaries written before summary.json recorded them; no
    member options and no strategy options (None) when it is unreadable."""
    try:
        config = RunDir(run_dir).read_config()
    except (OSError, yaml.YAMLError):
        return {}, None
    config = config if isinstance(config, dict) else {}
    members, strategy = config.get("members"), config.get("strategy")
    return members if isinstance(members, dict) else {}, strategy if isinstance(strategy, dict) else {}


def strategy_options(run_dir: str | Path) -> dict:
    """The strategy options a finished run trained with (its summary.json, or config.yaml for older records)."""
    path = RunDir(run_dir).summary
    _, options = recorded_options(_read_summary(path), path.parent)
    if options is None:
        raise UserError(f"{run_dir} records no strategy options in summary.json and has no readable config.yaml: "
                        "pass run directories written by sslkd train")
    return options


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


def _floor(member: dict) -> float:
    """The member's k-NN at step 0 (summary.json ``random_init``; NaN for runs made before it was recorded)."""
    return _accuracy((member.get("random_init") or {}).get("knn_top1"))


def _member_rows(summary: dict, path: Path) -> list[dict]:
    wall = summary.get("wall_time_s")
    member_options, _ = recorded_options(summary, path.parent)
    provenance = summary.get("provenance") or {}
    return [
        {
            "method": summary["method"],
            "dataset": summary["dataset"],
            "seed": int(summary["seed"]),
            "epochs": int(summary["epochs"]),
            "member": name,
            "member_index": index,
            "backbone": backbone_identity(member.get("backbone"), member_options.get(name) or {}),
            "paper_name": member.get("paper_name"),
            "knn_top1": _accuracy(member.get("knn_top1")),
            "linear_top1": _accuracy(member.get("linear_top1")),
            "wall_time_s": _accuracy(wall),
            "tag": summary.get("tag"),
            "run_dir": str(path.parent),
            "params_m": _accuracy(member.get("params_m")),
            "knn_dogo_mean": _accuracy(member.get("knn_dogo_mean")),
            "config": Path(summary["config_file"]).stem if summary.get("config_file") else "",
            "knn_floor": _floor(member),
            "world_size": provenance.get("world_size"),
            "provenance": describe(provenance or None),
            "variant": "",
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
    df, notes = one_row_per_seed(label_variants(df)) if len(df) else (df, [])
    df.attrs["unfinished"] = [str(run) for run in unfinished]
    df.attrs["notes"] = notes
    return df


def flatten(value, prefix: str = "") -> dict[str, str]:
    """Dotted keys -> compact JSON values of a config tree (lists stay one value)."""
    if isinstance(value, dict) and value:
        return {key: text for k, v in value.items() for key, text in flatten(v, f"{prefix}{k}.").items()}
    return {prefix[:-1]: json.dumps(value, separators=(",", ":"), sort_keys=True)}


def run_setting(run_dir: str | Path) -> dict[str, str]:
    """What made a run what it is, as far as its config.yaml says: the config resolved as ``sslkd train`` resolves it
    today (``resolved_as_trained``), without the seed, paths and worker count (``NOT_SETTINGS``)."""
    try:
        raw = RunDir(run_dir).read_config()
    except (OSError, yaml.YAMLError):
        raw = None
    if not isinstance(raw, dict):
        raw = {}
    try:
        raw = resolved_as_trained(raw)
    except UserError:
        pass  # a config written by another version, or for a strategy not loaded here: compared as it is
    return {key: value for key, value in flatten(raw).items() if key not in NOT_SETTINGS}


def resolved_as_trained(raw: dict) -> dict:
    """A saved config with what ``sslkd train`` fills in and saves today: the defaults of config keys, of the
    strategy's options and of each optimiser's fields added since it was written. So a run saved before a key existed
    pools with one that saved the key's default (the trainer resolves the same way: ``Trainer.__init__``)."""
    from sslkd.config import Config, from_dict, strategy_options, to_dict
    from sslkd.engine.optim import resolve_member_optimizers
    from sslkd.registry import STRATEGIES, load_builtins

    cfg = from_dict(Config, raw)
    load_builtins()
    strategy = STRATEGIES.get(cfg.method)
    strategy_options(cfg, strategy.Options)
    for member in cfg.members.values():
        optimizers = [member.optimizer, *member.module_optimizers.values()]
        if any(optimizer.name == "auto" for optimizer in optimizers):
            continue  # only a config never trained leaves the optimiser to the backbone: nothing saved to resolve
        resolve_member_optimizers(member, "", strategy.optimizer_defaults)
    return to_dict(cfg)


def _with_processes(settings: dict[str, dict[str, str]], processes: dict[str, int | None]) -> None:
    """Add the process count to the settings when the runs recorded different ones; a run made before counts were
    recorded (None) then shows as 'unknown', and otherwise goes with the others."""
    if len({count for count in processes.values() if count is not None}) > 1:
        for run, setting in settings.items():
            setting["processes"] = json.dumps(processes[run] if processes[run] is not None else "unknown")


FAMILY = ["method", "config", "tag", "dataset", "epochs", "cohort"]


def _shown(value_json: str) -> str:
    value = json.loads(value_json)
    return value if isinstance(value, str) else value_json


def label_variants(runs: pd.DataFrame) -> pd.DataFrame:
    """Tell apart runs that tables would pool (same method, config file, tag, data, epochs and members) but whose
    settings differ: each such group gets a ``variant`` naming its values of the keys that differ (``train.batch_size=
    1024``, ``processes=2``), appended to ``tag``, which every table keeps apart and shows. Adds ``cohort`` (the run's
    (member, backbone) pairs) for ``one_row_per_seed``."""
    runs = runs.copy()
    cohorts = {run: tuple(zip(group.member, group.backbone)) for run, group in runs.groupby("run_dir", sort=False)}
    runs["cohort"] = runs.run_dir.map(cohorts)
    per_run = runs.assign(tag=runs.tag.fillna("")).drop_duplicates("run_dir")
    for _, family in per_run.groupby(FAMILY, sort=False, dropna=False):
        settings = {run: run_setting(run) for run in family.run_dir}
        _with_processes(settings, {row.run_dir: _int_or_none(row.world_size) for row in family.itertuples()})
        keys = sorted({key for setting in settings.values() for key in setting})
        differing = [key for key in keys if len({setting.get(key) for setting in settings.values()}) > 1]
        for run, setting in settings.items():
            runs.loc[runs.run_dir == run, "variant"] = ", ".join(
                f"{key}={_shown(setting[key]) if key in setting else 'unset'}" for key in differing)
    runs["tag"] = [("; ".join(filter(None, [tag, variant]))) if variant else tag
                   for tag, variant in zip(runs.tag.fillna(""), runs.variant)]
    return runs


def _int_or_none(value) -> int | None:
    return None if value is None or pd.isna(value) else int(value)


SETTING = ["method", "config", "tag_key", "dataset", "epochs", "cohort", "seed"]


def one_row_per_seed(runs: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Keep one run per setting and seed: a second run of the same setting with the same seed is no independent
    sample, so it is left out (the first run directory in sorted order stays) and named in a note."""
    keyed = runs.assign(tag_key=runs.tag.fillna(""))
    per_run = keyed.drop_duplicates("run_dir").sort_values("run_dir", kind="stable")
    first = per_run.groupby(SETTING, sort=False, dropna=False).run_dir.transform("first")
    dropped = per_run[per_run.run_dir != first]
    notes = [f"repeated seed {seed}: {run} has the same setting and seed as {kept}, so it is left out (n counts "
             "distinct seeds); give it another train.seed"
             for run, kept, seed in zip(dropped.run_dir, first[dropped.index], dropped.seed)]
    kept = keyed[~keyed.run_dir.isin(set(dropped.run_dir))]
    return kept.drop(columns=["tag_key", "cohort"]), notes


def member_objectives(run_dir: str | Path) -> dict[str, str]:
    """Each member's SSL objective as the run recorded it (``strategy.objectives``, DoGo); empty when its options
    name none (every other method trains each member with the method itself)."""
    objectives = strategy_options(run_dir).get("objectives")
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
