"""Reproduce a paper table: train every run it needs, run its evaluations, and print it with ``sslkd compare``.

    sslkd reproduce --list                      every table, with its cost at paper and proxy scale
    sslkd reproduce mokd_table4 --proxy         the CPU-proxy version (3 seeds), resumable
    sslkd reproduce mokd_table1 --proxy --seeds 1
    sslkd reproduce dogo_table1                 paper scale (needs the paper's data and GPUs)
    sslkd reproduce v3_baselines mokd_table1_v3 --proxy --jobs 2    several tables, seed by seed, two processes

(``python tools/reproduce.py ...`` is the same.) Each table is a file, ``tables/<name>.yaml``, of Table's fields
(evaluations and claims as lists of mappings of their fields); ``tables/order.txt`` gives the order of ``--list``.
``--spec FILE.yaml`` runs a table from any such file (tests use it for a tiny table on digits). Several tables in one
call train their runs seed by seed across the tables (every table's seed 0, then every seed 1, ...), so a campaign
cut short has whole seeds; each table is evaluated and written as soon as its runs are finished.

Resumable in parts: a run with summary.json is skipped, one whose records are committed in results/ is restored
from them (a fresh clone continues a table where it stopped), a run with a checkpoint is resumed, an evaluation already
recorded in a run's summary.json (``evals``) is skipped. Tables that evaluate the same trained models share their
runs (MOKD Tables 4, 5, 9 and Fig. 5 reuse MOKD Table 1's). Layout:

    runs/proxy_<runs>/<config folder>/<config stem>/seed<N>    one training run per proxy config and seed
    runs/proxy_<runs>/random_init/<config folder>/<config stem>    the random-initialisation floor
    results/proxy_<runs>/...                         summary.json, config.yaml, metrics.jsonl of every run
    results/<table>_proxy{.md,.csv,_runs.md,_random_init.md,_wall.md}

At paper scale the runs go to runs/<runs>/ and the tables to results/<table>{...}. ``--tables-only`` rebuilds the
table files from the records in results/ alone (a fresh clone has no runs/); ``sslkd compare --table TABLE`` prints
the table from the same records (``compare_target``). tables/, zoo_configs/, runs/ and results/ are those of the
checkout that holds the package (an editable or source install).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import types
import typing
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

from sslkd.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Evaluation:
    """One ``sslkd eval`` per run (or per run and partner), recorded in the run's summary.json under ``key``.

    ``args`` follow ``sslkd eval``; ``proxy_args`` are added at proxy scale only (shorter schedules). ``configs``
    limits it to these runs, named ``folder/stem`` after their configs (empty: every run, floors included unless
    ``floor=False``); ``member`` evaluates one member; ``other`` names a second run of the same seed whose
    ``other_member`` is the partner (prediction consistency between two runs). ``per_table``: one command over
    every run of the table, floors included unless ``floor=False`` (``--checkpoints RUN...``), writing to
    ``--out results/<table>[_proxy]_<key>``; done when that directory holds files."""

    key: str
    args: tuple[str, ...]
    proxy_args: tuple[str, ...] = ()
    configs: tuple[str, ...] = ()
    member: str | None = None
    other: str | None = None
    other_member: str | None = None
    floor: bool = True
    per_table: bool = False


# What a claim can compare (a key of each member's summary record) and how its verdict table names it.
CLAIM_METRICS = {"knn_top1": "k-NN top-1 (weighted, k=20) of the evaluated encoder",
                 "test_top1": "test top-1 of the member's classifier at the final epoch"}


@dataclass(frozen=True)
class Claim:
    """A headline comparison over the table's runs: ``treated`` against ``baseline``, each (config folder/stem,
    member). No ``baseline``: the treated run's own random-init floor (same seed and weights, a paired test).
    ``direction`` +1: the paper reports treated above baseline; ``threshold``: the margin the claim needs."""

    text: str
    treated: tuple[str, str]
    baseline: tuple[str, str] | None = None
    direction: int = 1
    threshold: float = 0.0
    metric: str = "knn_top1"


@dataclass(frozen=True)
class Table:
    """Everything one paper table needs. ``runs`` names the run directory it shares with other tables;
    ``proxy_minutes``: measured or estimated wall time of the whole proxy table at 3 seeds on 2 CPU cores,
    beyond runs it shares that are already done (``runs`` says which)."""

    name: str
    paper: str
    about: str
    configs: tuple[str, ...] = ()
    random_init: tuple[str, ...] = ()
    evaluations: tuple[Evaluation, ...] = ()
    compare: str = "runs"
    runs: str = ""
    paper_configs: tuple[str, ...] = ()
    paper_evaluations: tuple[Evaluation, ...] | None = None
    paper_cost: str = ""
    proxy_minutes: float | None = None
    overrides: tuple[str, ...] = ()
    note: str = ""
    claims: tuple[Claim, ...] = ()

    @property
    def run_group(self) -> str:
        return self.runs or self.name


def _stem(path: str) -> str:
    """A config's run name: its folder and file stem (``mcl/proxy_x``), unique where stems repeat across methods."""
    return f"{Path(path).parent.name}/{Path(path).stem}"


# ------------------------------------------------------------------------------------------------ table files
def check_root() -> None:
    """The tables and configs live in the checkout beside the package; an installed wheel has neither."""
    missing = [f"{name}/" for name in ("tables", "zoo_configs") if not (ROOT / name).is_dir()]
    if missing:
        raise UserError(f"no {' or '.join(missing)} in {ROOT}, the folder above the sslkd package: reproducing a "
                        "table needs a source checkout (git clone, then pip install -e . in it)")


def load_tables() -> dict[str, Table]:
    """Every table of tables/, in the order of tables/order.txt (the order of ``--list``)."""
    folder = ROOT / "tables"
    order_file = folder / "order.txt"
    if not order_file.is_file():
        raise UserError(f"{order_file} does not exist; write it: the name of every table in {folder}, one a line")
    order = [line.strip() for line in order_file.read_text().splitlines() if line.strip()]
    files = {path.stem: path for path in folder.glob("*.yaml")}
    problems = [f"tables/{name}.yaml is not in order.txt" for name in sorted(set(files) - set(order))]
    problems += [f"order.txt names {name}, but there is no tables/{name}.yaml" for name in order if name not in files]
    if problems:
        raise UserError(f"{'; '.join(problems)}: list every table of {folder} in its order.txt, one name a line")
    return {name: load_spec(files[name], name) for name in order}


def load_spec(path: str | Path, name: str | None = None) -> Table:
    """A table from a YAML/JSON file of Table's fields, checked; ``name``: the name its file is called by."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise UserError(f"cannot read table spec '{path}' ({exc.strerror or exc}); pass a YAML file of a table's "
                        "fields") from exc
    except yaml.YAMLError as exc:
        raise UserError(f"table spec '{path}' is not valid YAML ({' '.join(str(exc).split())}); fix its syntax") from exc
    if not isinstance(raw, dict) or "name" not in raw:
        raise UserError(f"{path} is not a table spec: it needs at least name, paper, about and configs")
    if name is not None and raw["name"] != name:
        raise UserError(f"{path} defines table {raw['name']!r}: name the file after its table ({raw['name']}.yaml)")
    table = _build(Table, {"paper": raw["name"], "about": "", **raw}, str(path))
    _check_configs(table, str(path))
    unknown = sorted({claim.metric for claim in table.claims} - set(CLAIM_METRICS))
    if unknown:
        raise UserError(f"{path}: claim metric(s) {', '.join(unknown)} unknown; use one of {', '.join(CLAIM_METRICS)}")
    return table


def _build(cls: type, raw: object, where: str):
    """``cls`` (Table, Evaluation, Claim) from a mapping of its fields; a key it lacks, does not know or of the
    wrong type is one error naming the file and the key."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if not isinstance(raw, dict):
        raise UserError(f"{where}: expected a mapping of {', '.join(fields)}, got {raw!r}")
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise UserError(f"unknown key(s) {', '.join(unknown)} in {where}; known: {', '.join(sorted(fields))}")
    missing = [key for key, f in fields.items() if key not in raw and f.default is dataclasses.MISSING]
    if missing:
        raise UserError(f"{where} lacks {', '.join(missing)}")
    hints = typing.get_type_hints(cls)
    return cls(**{key: _typed(hints[key], value, f"{where}: {key}") for key, value in raw.items()})


def _typed(hint, value: object, where: str):
    """``value`` as type ``hint`` (lists as tuples, mappings as dataclasses), or an error naming ``where``."""
    if isinstance(hint, types.UnionType):
        if value is None:
            return None
        hint = next(option for option in typing.get_args(hint) if option is not type(None))
    if typing.get_origin(hint) is tuple:
        items = typing.get_args(hint)
        variadic = items[-1] is Ellipsis
        if not isinstance(value, list) or not variadic and len(value) != len(items):
            raise UserError(f"{where} must be a list of {items[0].__name__ if variadic else f'{len(items)} values'}, "
                            f"got {value!r}")
        return tuple(_typed(items[0 if variadic else i], v, f"{where}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    allowed = (int, float) if hint is float else hint
    if not isinstance(value, allowed) or isinstance(value, bool) and hint is not bool:
        raise UserError(f"{where} must be {hint.__name__}, got {value!r}")
    return value


def _check_configs(table: Table, where: str) -> None:
    """Every config file the table trains exists, and its evaluations and claims name configs of the table."""
    missing = [c for c in dict.fromkeys((*table.configs, *table.random_init, *table.paper_configs))
               if not Path(_resolve(c)).is_file()]
    if missing:
        raise UserError(f"{where}: config file(s) {', '.join(missing)} do not exist (relative to {ROOT}); fix the "
                        "path or write the config")
    stems = {_stem(c) for c in (*table.configs, *table.paper_configs)}
    named = [(f"evaluation {e.key}", stem) for e in (*table.evaluations, *(table.paper_evaluations or ()))
             for stem in (*e.configs, *([e.other] if e.other else []))]
    named += [(f"claim {c.text!r}", side[0]) for c in table.claims for side in (c.treated, c.baseline) if side]
    unknown = [f"{what} names {stem}" for what, stem in named if stem not in stems]
    if unknown:
        raise UserError(f"{where}: {'; '.join(unknown)}, not one of the table's configs (<config folder>/<stem>: "
                        f"{', '.join(sorted(stems))})")


# ------------------------------------------------------------------------------------------------ running
class Interrupted(Exception):
    """A training or evaluation was interrupted (Ctrl-C): what finished is kept, run the same command again."""


def sslkd(argv: list[str]) -> None:
    """One sslkd command in this process; an error or an interrupt stops the table."""
    from sslkd.cli import main

    status = main(argv)
    if status == 130:
        raise Interrupted(" ".join(argv))
    if status != 0:
        raise UserError(f"`sslkd {' '.join(argv)}` failed (exit {status}); fix it and run the same command again")


RECORD_FILES = ("summary.json", "config.yaml", "metrics.jsonl")


def train(config: str, run_dir: Path, overrides: list[str], log, records: Path | None = None,
          wait: bool = False) -> str:
    """Skip a finished run, restore one finished elsewhere from its committed ``records`` (a fresh clone has no
    runs/), resume an interrupted one, else start it; returns what it did. A run that another process is training
    (e.g. a second ``sslkd reproduce`` of the same table, taking the runs this one has not) is left to it ("busy"),
    or waited for when ``wait``."""
    from sslkd.core.rundir import RunBusy, RunDir

    try:
        with RunDir(run_dir).hold(wait):
            return _train_held(config, run_dir, overrides, log, records)
    except RunBusy as exc:
        log(f"busy    {run_dir} ({exc})")
        return "busy"


def _train_held(config: str, run_dir: Path, overrides: list[str], log, records: Path | None) -> str:
    if (run_dir / "summary.json").is_file():
        log(f"skip    {run_dir} (finished)")
        return "skip"
    if records is not None and (records / "summary.json").is_file() and not (run_dir / "checkpoints").is_dir():
        run_dir.mkdir(parents=True, exist_ok=True)
        for name in RECORD_FILES:
            if (records / name).is_file():
                shutil.copy2(records / name, run_dir / name)
        log(f"restore {run_dir} (finished; records from {records})")
        return "restore"
    if (run_dir / "checkpoints" / "last.pt").is_file():
        log(f"resume  {run_dir}")
        sslkd(["train", "--resume", str(run_dir)])
        return "resume"
    log(f"train   {run_dir}")
    sslkd(["train", "--config", config, "--output-dir", str(run_dir), "--overwrite", *overrides])
    return "train"


def evaluate(evaluation: Evaluation, run_dir: Path, partner: Path | None, proxy: bool, log) -> str:
    summary = json.loads((run_dir / "summary.json").read_text())
    if evaluation.key in summary.get("evals", {}):
        log(f"skip    {evaluation.key} of {run_dir} (recorded)")
        return "skip"
    argv = ["eval", *evaluation.args, *(evaluation.proxy_args if proxy else ()), "--checkpoint", str(run_dir),
            "--record", "--key", evaluation.key]
    if evaluation.member:
        argv += ["--member", evaluation.member]
    if partner is not None:
        argv += ["--other-checkpoint", str(partner)] + (["--other-member", evaluation.other_member]
                                                          if evaluation.other_member else [])
    log(f"eval    {evaluation.key} of {run_dir}")
    sslkd(argv)
    return "eval"


TABLE_EVAL_RECORD = "reproduce.json"  # the runs a per-table evaluation covered and its wall time


def evaluate_table(evaluation: Evaluation, plan: Plan, log) -> str:
    """One command over every run of the table; redone when the table has gained runs (e.g. more seeds)."""
    out = plan.table_eval_dir(evaluation.key)
    runs = [run for run, _ in _eval_targets(plan, evaluation)]
    names = [run.relative_to(plan.out).as_posix() for run in runs]
    record = out / TABLE_EVAL_RECORD
    if out.is_dir() and any(out.iterdir()) and (not record.is_file()
                                                or json.loads(record.read_text()).get("runs") == names):
        log(f"skip    {evaluation.key} of {plan.table.name} ({out} exists)")
        return "skip"
    log(f"eval    {evaluation.key} of {len(runs)} runs -> {out}")
    # written beside and renamed when complete: an interrupted command leaves no directory that looks done
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    start = time.perf_counter()
    sslkd(["eval", *evaluation.args, *(evaluation.proxy_args if plan.proxy else ()),
           "--checkpoints", *map(str, runs), "--out", str(partial)])
    (partial / TABLE_EVAL_RECORD).write_text(json.dumps({"runs": names,
                                                         "wall_time_s": round(time.perf_counter() - start, 1)}))
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    return "eval"


@dataclass
class Plan:
    table: Table
    proxy: bool
    seeds: list[int]
    out: Path
    results: Path

    @property
    def suffix(self) -> str:
        return "_proxy" if self.proxy else ""

    def configs(self) -> tuple[str, ...]:
        return self.table.configs if self.proxy else self.table.paper_configs

    def evaluations(self) -> tuple[Evaluation, ...]:
        if self.proxy or self.table.paper_evaluations is None:
            return self.table.evaluations
        return self.table.paper_evaluations

    def floors(self) -> tuple[str, ...]:
        return self.table.random_init if self.proxy else ()

    def records(self, run_dir: Path) -> Path:
        """Where a run's records are committed: results/[proxy_]<runs>/<run path below out>."""
        return self.results / run_folder(self.table, self.proxy) / run_dir.relative_to(self.out)

    def tabled(self) -> list[Path]:
        """The config folders of out that hold a finished run: what the table is built from."""
        return [self.out / _stem(c) for c in self.configs() if any((self.out / _stem(c)).glob("*/summary.json"))]

    def table_eval_dir(self, key: str) -> Path:
        """Where a per-table evaluation writes: results/<table>[_proxy]_<key>."""
        return self.results / f"{self.table.name}{self.suffix}_{key}"


def run_folder(table: Table, proxy: bool) -> str:
    """The folder of a table's runs under runs/ and of their records under results/."""
    return f"proxy_{table.run_group}" if proxy else table.run_group


def _resolve(config: str) -> str:
    path = Path(config)
    return str(path if path.is_absolute() else ROOT / path)


def check(plan: Plan) -> None:
    """The table has configs at the chosen scale (the loader checked that they exist)."""
    if not plan.configs():
        raise UserError(f"{plan.table.name} has no {'proxy' if plan.proxy else 'paper-scale'} configs "
                        f"({plan.table.note or 'see --list'}); choose another table or scale")


def trainings(plans: list[Plan]) -> dict[Path, tuple[Plan, str, list[str]]]:
    """Run directory -> (the first plan that names it, config, overrides) of every run of ``plans``: the floors
    first, then seed by seed across the tables; a run two tables share is trained once."""
    runs: dict[Path, tuple[Plan, str, list[str]]] = {}
    for plan in plans:
        for config in plan.floors():
            runs.setdefault(plan.out / "random_init" / _stem(config), (plan, config, [*plan.table.overrides, "--random-init"]))
    for seed in plans[0].seeds:
        for plan in plans:
            for config in plan.configs():
                runs.setdefault(plan.out / _stem(config) / f"seed{seed}",
                                (plan, config, [*plan.table.overrides, f"train.seed={seed}"]))
    return runs


def run_plans(plans: list[Plan], log=print) -> None:
    """Train, evaluate, copy the run records and write the tables (each step is logged: train, resume, restore, skip,
    busy, wait, eval). A table is evaluated and written once its runs are finished; a finished run's records are copied
    to results/ at once. Several processes may run the same tables at once: each trains the runs the others are
    not training, then waits for the rest, and they take turns at the evaluations."""
    for plan in plans:
        check(plan)
    runs = trainings(plans)
    pending = list(plans)
    busy = []
    for run_dir, (plan, config, overrides) in runs.items():
        action = train(_resolve(config), run_dir, overrides, log, plan.records(run_dir))
        if action == "busy":
            busy.append((run_dir, plan, config, overrides))
        elif action != "skip":
            copy_records(run_dir, plan.records(run_dir))
            _write_finished(pending, log)
    for run_dir, plan, config, overrides in busy:
        log(f"wait    {run_dir} (another process is training it)")
        train(_resolve(config), run_dir, overrides, log, plan.records(run_dir), wait=True)
        copy_records(run_dir, plan.records(run_dir))
        _write_finished(pending, log)
    _write_finished(pending, log, every=True)


def _write_finished(pending: list[Plan], log, every: bool = False) -> None:
    """Evaluate and write each pending table whose runs are all finished (``every``: each pending table)."""
    from sslkd.core.rundir import hold

    for plan in list(pending):
        if every or all((run / "summary.json").is_file() for run, _ in _eval_targets(plan)):
            with hold(plan.out / ".evaluations.lock", wait=True):
                run_evaluations(plan, log)
                write_results(plan, log)
            pending.remove(plan)


def run_evaluations(plan: Plan, log) -> None:
    for evaluation in plan.evaluations():
        if evaluation.per_table:
            evaluate_table(evaluation, plan, log)
            continue
        for run_dir, seed in _eval_targets(plan, evaluation):
            partner = None
            if evaluation.other:
                partner = (plan.out / "random_init" / evaluation.other if seed is None
                           else plan.out / evaluation.other / f"seed{seed}")
                if not (partner / "summary.json").is_file():
                    log(f"skip    {evaluation.key} of {run_dir} (partner {partner} is not part of this table)")
                    continue
            evaluate(evaluation, run_dir, partner, plan.proxy, log)


def _eval_targets(plan: Plan, evaluation: Evaluation | None = None) -> list[tuple[Path, int | None]]:
    """(run directory, seed; None for a floor) of every run the evaluation covers; no evaluation: every run."""
    stems = [_stem(c) for c in plan.configs()]
    wanted = set(evaluation.configs) if evaluation is not None and evaluation.configs else set(stems)
    targets = [(plan.out / stem / f"seed{seed}", seed) for seed in plan.seeds for stem in stems if stem in wanted]
    if evaluation is None or evaluation.floor:
        targets += [(plan.out / "random_init" / _stem(c), None) for c in plan.floors() if _stem(c) in wanted]
    return targets


def write_results(plan: Plan, log) -> None:
    """Copy every run's records to results/, write the tables and the wall-time account; print the table."""
    for run_dir in sorted(p.parent for p in plan.out.rglob("summary.json")):
        copy_records(run_dir, plan.records(run_dir))
    write_tables(plan, log)


def copy_records(run_dir: Path, target: Path) -> None:
    """A finished run's records (``RECORD_FILES``) into ``target``, its folder under results/."""
    if not (run_dir / "summary.json").is_file():
        return
    target.mkdir(parents=True, exist_ok=True)
    for name in RECORD_FILES:
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, target / name)


def check_records(plan: Plan) -> None:
    """Every run and per-table evaluation of the plan is in plan.out (the records in results/) before tabling."""
    missing = [str(run) for run, _ in _eval_targets(plan) if not (run / "summary.json").is_file()]
    missing += [plan.table_eval_dir(e.key).name for e in plan.evaluations()
                if e.per_table and not plan.table_eval_dir(e.key).is_dir()]
    if missing:
        raise UserError(f"--tables-only: {', '.join(missing)} not in {plan.results}; run the table without "
                        "--tables-only to make them")


def write_tables(plan: Plan, log) -> None:
    """The table, its runs, its random-init floors and its wall-time account from the run records in plan.out."""
    from sslkd.report import compare

    table = plan.table
    run_dirs = sorted(p.parent for p in plan.out.rglob("summary.json"))
    ours = plan.tabled()
    floors = plan.out / "random_init"
    stem = plan.results / f"{table.name}{plan.suffix}"
    outputs = {f"{stem}.md": (ours, table.compare, "md"), f"{stem}.csv": (ours, table.compare, "csv"),
               f"{stem}_runs.md": (ours, "runs", "md")}
    if floors.is_dir() and any(floors.rglob("summary.json")):
        outputs[f"{stem}_random_init.md"] = ([floors], "runs", "md")
    for path, (dirs, name, fmt) in outputs.items():
        Path(path).write_text(compare(dirs, table=name, fmt=fmt))
    if table.claims:
        Path(f"{stem}_verdicts.md").write_text(verdicts(plan))
    wall = wall_times(plan, run_dirs)
    Path(f"{stem}_wall.md").write_text(wall)
    log(Path(f"{stem}.md").read_text())
    log(wall)


def claim_values(plan: Plan, claim: Claim) -> tuple[list[float], list[float]]:
    """Per recorded seed: the treated member's metric and the baseline's (or the treated run's floor)."""
    def value(summary: dict, member: str, metric: str) -> float | None:
        record = summary["members"].get(member, {})
        for key in metric.split("."):
            record = record.get(key) if isinstance(record, dict) else None
        return record

    def seeds(stem: str) -> list[dict]:
        runs = sorted((plan.out / stem).glob("seed*/summary.json"), key=lambda p: int(p.parent.name[4:]))
        return [json.loads(p.read_text()) for p in runs]

    treated_runs = seeds(claim.treated[0])
    if claim.baseline is None:
        floor_run = plan.out / "random_init" / claim.treated[0] / "summary.json"
        floor_run = json.loads(floor_run.read_text()) if floor_run.is_file() else {}

        def floor(summary: dict) -> float | None:
            """The run's own step-0 floor; runs older than per-run floors take the random-init run of their seed."""
            own = value(summary, claim.treated[1], f"random_init.{claim.metric}")
            if own is None and floor_run.get("seed") == summary.get("seed"):
                return value(floor_run, claim.treated[1], claim.metric)
            return own

        pairs = [(value(s, claim.treated[1], claim.metric), floor(s)) for s in treated_runs]
        pairs = [(t, b) for t, b in pairs if t is not None and b is not None]
        return [t for t, _ in pairs], [b for _, b in pairs]
    treated = [value(s, claim.treated[1], claim.metric) for s in treated_runs]
    baseline = [value(s, claim.baseline[1], claim.metric) for s in seeds(claim.baseline[0])]
    return [v for v in treated if v is not None], [v for v in baseline if v is not None]


def verdicts(plan: Plan) -> str:
    """Each claim of the table with both sides (mean +- std over the recorded seeds), the difference, its 95%
    confidence interval and the verdict (sslkd.report.verdicts)."""
    from sslkd.report.verdicts import judge, verdict_table

    results = [judge(c.text, *claim_values(plan, c), paired=c.baseline is None, direction=c.direction,
                     threshold=c.threshold) for c in plan.table.claims]
    measured = " and ".join(dict.fromkeys(CLAIM_METRICS[c.metric] for c in plan.table.claims))
    return (f"**{plan.table.paper}{' (CPU proxy)' if plan.proxy else ''}: claims and verdicts**\n\n"
            + verdict_table(results, "measured", "compared with") + f"\n- {measured}; 'compared with' is the run's "
            "own random-init floor (paired t over seeds) or another run (Welch t). The verdict reads the 95% interval "
            "of the difference: it excludes 0 on the paper's side (reproduced), on the other (reversed), or contains "
            "it (within noise). *Seeds to settle*, for a result within noise: the seeds per side at which the interval "
            "would exclude 0 if the measured means and stds held (a planning figure; new seeds move both).\n")


def wall_times(plan: Plan, run_dirs: list[Path]) -> str:
    """Per run: training wall time (summary.json) and the evaluations recorded for this table; the total."""
    keys = {e.key for e in plan.evaluations()}
    configs = {_stem(c) for c in (*plan.configs(), *plan.floors())}
    lines = ["| run | training (min) | evaluations (min) |", "|---|---|---|"]
    total = 0.0
    for run_dir in run_dirs:
        relative = run_dir.relative_to(plan.out)
        run_name = relative.parent if relative.parts[0] != "random_init" else relative.relative_to("random_init")
        if run_name.as_posix() not in configs:
            continue
        summary = json.loads((run_dir / "summary.json").read_text())
        training = float(summary.get("wall_time_s") or 0.0)
        evals = sum(float(v.get("wall_time_s", 0.0)) for k, v in summary.get("evals", {}).items() if k in keys)
        total += training + evals
        lines.append(f"| {relative} | {training / 60:.1f} | {evals / 60:.1f} |")
    for evaluation in plan.evaluations():
        if not evaluation.per_table:
            continue
        record = plan.table_eval_dir(evaluation.key) / TABLE_EVAL_RECORD
        if not record.is_file():
            lines.append(f"| {evaluation.key} over all runs | | not recorded |")
            continue
        seconds = float(json.loads(record.read_text())["wall_time_s"])
        total += seconds
        lines.append(f"| {evaluation.key} over all runs | | {seconds / 60:.1f} |")
    lines.append(f"| **total** | | **{total / 60:.1f} min** |")
    return (f"**{plan.table.paper}{' (CPU proxy)' if plan.proxy else ''}: wall time per run**\n\n"
            + "\n".join(lines) + "\n\n- training: summary.json wall_time_s (the loop only, without the run-end "
            "k-NN); evaluations: the sslkd eval commands of this table\n")


# ------------------------------------------------------------------------------------------------ sslkd compare
def compare_target(name: str, run_dirs: list[str], scale: str | None = None,
                   results: str | None = None) -> tuple[list[str | Path], str]:
    """The run folders and layout ``sslkd compare [RUN_DIR...] --table NAME`` tables. With run folders NAME is a
    layout or auto, as it always was, or a table of tables/ standing for its layout; without, a table of tables/: its
    layout over the records reproduce wrote for it (results/[proxy_]<runs>/), so no one needs to know that folder.
    ``scale``: proxy (the default) or paper; ``results``: the results folder (default results/ of the checkout)."""
    from sslkd.report import TABLES

    layouts = TABLES.names()
    if run_dirs:
        if scale or results:
            raise UserError("--scale and --results find a table's records in results/; with run directories given they "
                            "mean nothing: drop them, or drop the run directories")
        if name == "auto" or name in TABLES or not (ROOT / "tables").is_dir():
            return run_dirs, name  # compare_table names the layouts if NAME is none
        return run_dirs, _table_named(name, layouts, with_runs=True).compare
    if name == "auto":
        raise UserError("no run directories given: pass run directories (or folders holding them), or name a table of "
                        "tables/ with --table TABLE to table its records in results/ (sslkd reproduce --list)")
    check_root()
    table = _table_named(name, layouts, with_runs=False)
    folder, proxy = Path(results).resolve() if results else ROOT / "results", scale != "paper"
    plan = Plan(table, proxy, [], folder / run_folder(table, proxy), folder)
    check(plan)
    runs = plan.tabled()
    if not runs:
        raise UserError(f"no records of {name} in {plan.out}: make them with sslkd reproduce {name}"
                        f"{' --proxy' if plan.proxy else ''}" + ("" if results else " (or pass --results DIR)"))
    return runs, table.compare


def _table_named(name: str, layouts: list[str], with_runs: bool) -> Table:
    """The table of tables/ called ``name``; a wrong name is one line with the names close to it."""
    tables = load_tables()
    if name in tables:
        return tables[name]
    if not with_runs and name in layouts:
        raise UserError(f"{name} is a layout, not a table of tables/: pass the run directories to table with it "
                        f"(sslkd compare RUN_DIR... --table {name}), or name a table (sslkd reproduce --list)")
    close = difflib.get_close_matches(name, list(dict.fromkeys([*tables, *(layouts if with_runs else ())])), n=3)
    near = f"close: {', '.join(close)}"
    if with_runs:
        raise UserError(f"unknown table {name!r}{f' ({near})' if close else ''}; --table takes a layout "
                        f"({', '.join(layouts)}), auto, or a table of tables/ (sslkd reproduce --list), which stands for "
                        "its layout")
    known = near if close else f"tables: {', '.join(tables)}"
    raise UserError(f"unknown table {name!r} ({known}); name a table of tables/ (sslkd reproduce --list), or pass run "
                    "directories and a layout (sslkd compare RUN_DIR... --table LAYOUT)")


# ------------------------------------------------------------------------------------------------ listing
def measured_minutes(table: Table) -> float | None:
    """The total of the table's last proxy wall-time account in results/, if it was run."""
    wall = ROOT / "results" / f"{table.name}_proxy_wall.md"
    if not wall.is_file():
        return None
    total = re.search(r"\*\*total\*\* \| \| \*\*([0-9.]+) min\*\*", wall.read_text())
    return float(total.group(1)) if total else None


def listing(tables: dict[str, Table]) -> str:
    lines, width = [], max(map(len, tables))
    for table in tables.values():
        proxy_state = "no proxy configs"
        if table.configs:
            measured = measured_minutes(table)
            proxy_state = (f"{measured:g} min measured (results/{table.name}_proxy_wall.md, shared runs included)"
                           if measured is not None else
                           f"~{table.proxy_minutes:g} min on 2 CPU cores (3 seeds, estimate)" if table.proxy_minutes else
                           "cost not measured")
        shared = f" [runs shared with {table.runs}]" if table.runs else ""
        lines.append(f"{table.name:{width}s} {table.paper}: {table.about}{shared}")
        lines.append(f"{'':{width}s}   paper scale: {table.paper_cost or 'n/a'} "
                     f"({len(table.paper_configs)} paper configs)")
        lines.append(f"{'':{width}s}   proxy scale: {proxy_state}")
        if table.note:
            lines.append(f"{'':{width}s}   note: {table.note}")
    return "\n".join(lines)


def with_data_root(table: Table, data_root: str) -> Table:
    """The table training on ``data_root`` (made absolute here, since the runs start from the repository root); a run's
    data root is a path, not a setting, so its runs group with runs made on another copy of the same data."""
    root = Path(data_root).expanduser().resolve()
    if not root.is_dir():
        raise UserError(f"--data-root '{data_root}' does not exist (resolved: {root}); build the CIFAR-10 subset with "
                        f"`sslkd data cifar10-subset --cifar10 DIR --out {data_root}`")
    return dataclasses.replace(table, overrides=(*table.overrides, f"data.root={root}"))


def child_argv(args: argparse.Namespace, plan: Plan) -> list[str]:
    """This command for a helper process: the same tables, seeds and folders, one process."""
    argv = ["--spec", str(Path(args.spec).resolve())] if args.spec else list(args.table)
    argv += ["--proxy"] * args.proxy + ["--seeds", str(args.seeds), "--results", str(plan.results)]
    if args.out:
        argv += ["--out", str(plan.out)]
    if args.data_root:
        argv += ["--data-root", str(Path(args.data_root).resolve())]
    return argv


@contextmanager
def helper_jobs(count: int, argv: list[str], out: Path, log):
    """``count - 1`` more processes of this command (``argv``), started beside this one; each process takes an
    equal share of the cores as threads. They share the tables through the runs' holds (``train``, ``run_plans``):
    on a small machine one process per core trains more images per second than one process on all of them."""
    if count == 1:
        yield
        return
    import torch

    threads = max(1, (os.cpu_count() or 1) // count)
    torch.set_num_threads(threads)
    (out / ".jobs").mkdir(parents=True, exist_ok=True)
    jobs = []
    for number in range(1, count):
        path = out / ".jobs" / f"job{number}.log"
        with open(path, "w") as handle:
            jobs.append((subprocess.Popen([sys.executable, "-m", "sslkd", "reproduce", *argv], cwd=ROOT,
                                          env={**os.environ, "OMP_NUM_THREADS": str(threads)},
                                          stdout=handle, stderr=subprocess.STDOUT), path))
        log(f"job     {number}: pid {jobs[-1][0].pid}, {threads} thread(s), log {path}")
    try:
        yield
        for process, path in jobs:
            if process.wait() != 0:
                raise UserError(f"a helper process of this table failed (exit {process.returncode}); its log is {path}")
    finally:
        for process, _ in jobs:
            if process.poll() is None:
                process.terminate()  # an interrupted table: its runs resume from their checkpoints next call
                process.wait()


# ------------------------------------------------------------------------------------------------ command line
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``sslkd reproduce`` and ``python tools/reproduce.py``."""
    parser.add_argument("table", nargs="*", help="table name(s) (see --list); several: their runs are trained seed by "
                        "seed across the tables, each table written once its runs are finished")
    parser.add_argument("--list", action="store_true", help="list every table with its cost")
    parser.add_argument("--proxy", action="store_true", help="the CPU-proxy version (default: paper scale)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    parser.add_argument("--spec", help="read the table from this YAML/JSON file instead of tables/")
    parser.add_argument("--out", help="run directory root (default runs/proxy_<runs> or runs/<runs>)")
    parser.add_argument("--results", default=str(ROOT / "results"), help="results directory (default results/)")
    parser.add_argument("--data-root", help="train on the data here instead of the configs' data.root (e.g. the "
                        "CIFAR-10 subset built by `sslkd data cifar10-subset`); relative to the current folder")
    parser.add_argument("--jobs", type=int, default=1,
                        help="processes that share the table's runs, each with an equal share of the cores as threads "
                             "(on 2 cores --jobs 2 trains about 15%% more images per second than one process); the "
                             "others log to OUT/.jobs/")
    parser.add_argument("--tables-only", action="store_true",
                        help="rebuild the table files from the run records in results/ (no training, no evaluation;"
                             " works on a fresh clone)")


def main(argv: list[str] | None = None, log=print) -> int:
    """``python tools/reproduce.py``: exit 0, 2 (a user's mistake, one line) or 130 (interrupted)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return execute(parser.parse_args(argv), log)


def execute(args: argparse.Namespace, log=print, prog: str = "reproduce") -> int:
    """Run parsed arguments; errors and interrupts end with one line on stderr starting with ``prog``."""
    try:
        check_root()
        if args.list:
            log(listing(load_tables()))
            return 0
        if args.spec:
            if args.table:
                raise UserError(f"--spec {args.spec} is the table: drop the table name(s) {' '.join(args.table)}")
            chosen = [load_spec(args.spec)]
        else:
            tables = load_tables()
            if not args.table:
                raise UserError("name a table (see --list) or pass --spec FILE")
            unknown = [name for name in args.table if name not in tables]
            if unknown:
                raise UserError(f"unknown table(s) {', '.join(map(repr, unknown))}; known: {', '.join(tables)} "
                                "(or pass --spec FILE)")
            chosen = [tables[name] for name in dict.fromkeys(args.table)]
        if args.seeds < 1:
            raise UserError(f"--seeds {args.seeds}: need at least one seed")
        if args.jobs < 1:
            raise UserError(f"--jobs {args.jobs}: need at least one process")
        if args.data_root:
            chosen = [with_data_root(table, args.data_root) for table in chosen]
        results = Path(args.results).resolve()
        plans = []
        for table in chosen:
            group = run_folder(table, args.proxy)
            out = results / group if args.tables_only else Path(args.out).resolve() if args.out else ROOT / "runs" / group
            plans.append(Plan(table, args.proxy, list(range(args.seeds)), out, results))
        results.mkdir(parents=True, exist_ok=True)
        start, cwd = time.perf_counter(), os.getcwd()
        os.chdir(ROOT)  # the configs' data roots (../shared/data/...) are relative to the repository root
        try:
            if args.tables_only:
                for plan in plans:
                    check(plan)
                    check_records(plan)
                    write_tables(plan, log)
            else:
                try:
                    with helper_jobs(args.jobs, child_argv(args, plans[0]), plans[0].out, log):
                        run_plans(plans, log)
                except Interrupted:
                    for plan in plans:  # what finished is recorded and tabled; the rest continues next call
                        write_results(plan, log)
                    raise
        finally:
            os.chdir(cwd)
        log(f"done in {(time.perf_counter() - start) / 60:.1f} min this session")
    except UserError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except Interrupted as exc:
        print(f"{prog}: interrupted during `sslkd {exc}`; run the same command again to continue", file=sys.stderr)
        return 130
    return 0
