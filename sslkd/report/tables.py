"""Finished runs -> the papers' table layouts, rendered as Markdown, CSV, LaTeX or a rich table.

A table is a builder ``(runs DataFrame from load_runs) -> DataFrame of display strings`` registered in ``TABLES``
with a test of whether it fits a set of runs. ``compare(..., table="auto")`` picks the one specific table that fits
and otherwise falls back to the generic ``runs`` table, so a new paper's table is one ``register_table`` call.
Builders put a title in ``attrs["title"]`` and footnotes in ``attrs["notes"]``; ``render`` prints both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import pandas as pd
from rich.table import Table

from sslkd.core.rundir import RunDir
from sslkd.errors import UserError
from sslkd.registry import Registry
from sslkd.report.records import PAPER_NUMBERS_DIR, load_paper_numbers, load_runs, member_objectives

FORMATS = ("md", "csv", "latex")
PROTOCOLS = (("knn", "k-NN", "knn_top1"), ("linear", "Linear", "linear_top1"))
NA = "n/a"
RANDOM_INIT = "random init"  # how tables and plots name untrained runs (train.epochs=0, a proxy table's floor)


@dataclass(frozen=True)
class TableSpec:
    """How to build one table layout and when ``auto`` may choose it."""

    build: Callable[[pd.DataFrame], pd.DataFrame]
    fits: Callable[[pd.DataFrame], bool]
    about: str


TABLES: Registry = Registry("table")


def register_table(name: str, build: Callable[[pd.DataFrame], pd.DataFrame],
                   fits: Callable[[pd.DataFrame], bool], about: str) -> None:
    """Make ``sslkd compare --table NAME`` build ``build(runs)``; ``fits(runs)`` lets ``auto`` pick it."""
    TABLES.register(name)(TableSpec(build, fits, about))


@dataclass(frozen=True)
class Stat:
    """Mean, sample standard deviation (ddof=1) and count of the non-missing values of one cell."""

    mean: float
    std: float
    n: int

    @classmethod
    def of(cls, values: Iterable[float]) -> Stat | None:
        kept = pd.Series([v for v in values if v is not None and not math.isnan(v)], dtype=float)
        if kept.empty:
            return None
        return cls(float(kept.mean()), float(kept.std(ddof=1)) if len(kept) > 1 else math.nan, len(kept))


def format_stat(stat: Stat | None) -> str:
    """'mean +- std (n)' with one decimal as in the papers; a single seed has no std."""
    if stat is None:
        return NA
    if stat.n == 1:
        return f"{stat.mean:.1f} (1)"
    return f"{stat.mean:.1f} +- {stat.std:.1f} ({stat.n})"


def at_or_below_floor(value: float | None, floor: float | None) -> bool:
    """Whether a trained model's k-NN is no better than its random initialisation's (both known)."""
    return None not in (value, floor) and not math.isnan(value) and not math.isnan(floor) and value <= floor


FLOOR_MARK = " [<= floor]"


def format_value(value: float | None) -> str:
    return NA if value is None or math.isnan(value) else f"{value:.1f}"


def format_delta(before: float | None, after: float | None) -> str:
    """Signed change of ``after`` over ``before``, rounded so that -0.0 prints as +0.0."""
    if before is None or after is None or math.isnan(before) or math.isnan(after):
        return NA
    change = round(after - before, 1)
    return f"{change + 0.0:+.1f}"


def _mean(stat: Stat | None) -> float | None:
    return None if stat is None else stat.mean


def backbone_label(backbone: str, paper_name: str) -> str:
    """Our backbone, with the paper backbone it stands in for (proxy runs)."""
    return f"{backbone} (as {paper_name})" if paper_name else backbone


def _setting(dataset: str, epochs: int, tag: str) -> str:
    return f"ours: {dataset}, {epochs} ep" + (f", {tag}" if tag else "")


def _table1_columns() -> list[str]:
    return ["Net1", "Net2", "Source"] + [
        f"{label} {part} {net}"
        for _, label, _ in PROTOCOLS for part in ("Indep.", "MOKD", "Δ") for net in ("Net1", "Net2")
    ]


def _table1_cells(label: str, indep: tuple, mokd: tuple, indep_text: tuple, mokd_text: tuple) -> dict[str, str]:
    """The six cells of one protocol: Independent, MOKD and the change, for Net1 and Net2."""
    cells = {}
    for i, net in enumerate(("Net1", "Net2")):
        cells[f"{label} Indep. {net}"] = indep_text[i]
        cells[f"{label} MOKD {net}"] = mokd_text[i]
        cells[f"{label} Δ {net}"] = format_delta(indep[i], mokd[i])
    return cells


def _mokd_pairs(runs: pd.DataFrame, notes: list[str]) -> pd.DataFrame:
    """One row per two-member mokd run: its setting, both members (Net1 = first) and their accuracies."""
    rows = []
    for run_dir, members in runs.groupby("run_dir", sort=False):
        members = members.sort_values("member_index")
        if len(members) != 2:
            notes.append(f"skipped {run_dir}: a mokd run with {len(members)} members does not fit a pair table")
            continue
        first, second = members.iloc[0], members.iloc[1]
        row = {"dataset": first.dataset, "epochs": int(first.epochs), "tag": first.tag}
        for prefix, member in (("1", first), ("2", second)):
            row |= {f"backbone{prefix}": member.backbone, f"paper{prefix}": member.paper_name,
                    f"knn{prefix}": member.knn_top1, f"linear{prefix}": member.linear_top1}
        rows.append(row)
    pairs = pd.DataFrame(rows)
    if pairs.empty:
        return pairs
    for column in ("tag", "paper1", "paper2"):
        pairs[column] = pairs[column].astype(object).where(pairs[column].notna(), "")
    return pairs


def _alone_runs(alone: pd.DataFrame, method: str, backbone: str, dataset: str, epochs: int, notes: list[str],
                label: str) -> tuple[pd.DataFrame, str]:
    """``method`` runs of ``backbone`` on ``dataset`` (a net trained alone): same epochs if any, else the nearest
    (ties: longer); and the cell suffix saying so. ``label`` names the column in the notes."""
    same = alone[(alone.method == method) & (alone.backbone == backbone) & (alone.dataset == dataset)]
    if same.empty:
        notes.append(f"no {method} run of {backbone} on {dataset}: {label} {backbone} is n/a "
                     f"(train one with sslkd train --method {method})")
        return same, ""
    if (same.epochs == epochs).any():
        return _one_setting(same[same.epochs == epochs], notes, label), ""
    nearest = min(same.epochs.unique(), key=lambda e: (abs(e - epochs), -e))
    notes.append(f"no {epochs}-epoch {method} run of {backbone} on {dataset}: {label} uses its {nearest}-epoch runs")
    return _one_setting(same[same.epochs == nearest], notes, label), f" [{nearest} ep]"


def _one_setting(found: pd.DataFrame, notes: list[str], label: str) -> pd.DataFrame:
    """The runs of one setting (config file and tag) among ``found``, never a pool of different ones: the untagged
    setting if there is one, else the one with most seeds; a note names what was left out."""
    settings = found.assign(tag=found.tag.fillna("")).groupby(["config", "tag"], sort=False).seed.nunique()
    if len(settings) < 2:
        return found
    chosen = max(settings.index, key=lambda key: (key[1] == "", settings[key]))
    others = [f"{config or 'default config'}{f' [{tag}]' if tag else ''}" for config, tag in settings.index
              if (config, tag) != chosen]
    notes.append(f"{label} uses {chosen[0] or 'default config'}{f' [{chosen[1]}]' if chosen[1] else ''} runs, not "
                 f"{', '.join(others)} (different settings are not pooled)")
    return found[(found.config == chosen[0]) & (found.tag.fillna("") == chosen[1])]


def _independent(dino: pd.DataFrame, backbone: str, dataset: str, epochs: int,
                 notes: list[str]) -> tuple[pd.DataFrame, str]:
    """DINO runs of ``backbone`` on ``dataset``: same epochs if any, else the nearest (ties: longer); cell suffix."""
    return _alone_runs(dino, "dino", backbone, dataset, epochs, notes, "Independent")


def _paper_table1(notes: list[str]) -> pd.DataFrame | None:
    if not (PAPER_NUMBERS_DIR / "mokd_table1.csv").is_file():
        notes.append(f"paper numbers not shown: {PAPER_NUMBERS_DIR} is missing (run from a source checkout)")
        return None
    return load_paper_numbers("mokd_table1")


def _paper_value(paper: pd.DataFrame, rows: pd.Series) -> float | None:
    values = paper.loc[rows, "top1"]
    return float(values.iloc[0]) if len(values) else None


def _paper_row(paper: pd.DataFrame, name1: str, name2: str) -> dict[str, str]:
    """MOKD Table 1 numbers for the paper pair (name1, name2): Independent per backbone, MOKD for the pair."""
    row = {"Net1": name1 or "-", "Net2": name2 or "-", "Source": "paper: ImageNet, 100 ep (MOKD Table 1)"}
    order = {(a, b) for a, b in zip(paper.net1, paper.net2)}
    swapped = (name1, name2) not in order and (name2, name1) in order
    pair = (name2, name1) if swapped else (name1, name2)
    for protocol, label, _ in PROTOCOLS:
        rows = paper.protocol == protocol
        indep = tuple(
            _paper_value(paper, rows & (paper.setting == "independent")
                         & (((paper.net1 == name) & (paper.member == "net1"))
                            | ((paper.net2 == name) & (paper.member == "net2"))))
            for name in (name1, name2)
        )
        in_pair = rows & (paper.setting == "mokd") & (paper.net1 == pair[0]) & (paper.net2 == pair[1])
        members = ("net2", "net1") if swapped else ("net1", "net2")
        mokd = tuple(_paper_value(paper, in_pair & (paper.member == member)) for member in members)
        row |= _table1_cells(label, indep, mokd, tuple(map(format_value, indep)), tuple(map(format_value, mokd)))
    return row


def mokd_table1(runs: pd.DataFrame) -> pd.DataFrame:
    """MOKD Table 1: per backbone pair, k-NN and linear top-1 of each net trained alone (DINO) and with MOKD.

    Independent numbers come from ``dino`` runs of the same backbone and data set (same epochs where possible);
    MOKD numbers from ``mokd`` runs, Net1 being the run's first member. Where members carry a ``paper_name``
    (proxies standing in for the paper's backbones), a row with the paper's ImageNet numbers follows ours.
    """
    mokd_runs = runs[runs.method == "mokd"]
    if mokd_runs.empty:
        raise UserError("no mokd runs among the given run directories: pass mokd runs or use --table runs")
    notes = ["cells: mean +- sample std (n seeds) of top-1 %; Δ = MOKD mean - Independent mean",
             "Independent = dino runs of the same backbone and data set; Net1 = the mokd run's first member"]
    dino = runs[runs.method == "dino"]
    paper = None
    pairs = _mokd_pairs(mokd_runs, notes)
    rows = []
    keys = ["dataset", "epochs", "tag", "backbone1", "paper1", "backbone2", "paper2"]
    groups = pairs.groupby(keys, sort=False) if len(pairs) else []
    for (dataset, epochs, tag, backbone1, paper1, backbone2, paper2), group in groups:
        indep_runs = [_independent(dino, b, dataset, epochs, notes) for b in (backbone1, backbone2)]
        row = {"Net1": backbone_label(backbone1, paper1), "Net2": backbone_label(backbone2, paper2),
               "Source": _setting(dataset, epochs, tag)}
        for protocol, label, column in PROTOCOLS:
            indep = tuple(Stat.of(found[column]) for found, _ in indep_runs)
            mokd = (Stat.of(group[f"{protocol}1"]), Stat.of(group[f"{protocol}2"]))
            indep_text = tuple(
                format_stat(stat) + (suffix if stat else "") for stat, (_, suffix) in zip(indep, indep_runs)
            )
            row |= _table1_cells(label, tuple(map(_mean, indep)), tuple(map(_mean, mokd)),
                                 indep_text, tuple(map(format_stat, mokd)))
        rows.append(row)
        if paper1 or paper2:
            paper = _paper_table1(notes) if paper is None else paper
            if paper is not None:
                rows.append(_paper_row(paper, paper1, paper2))
    if paper is not None:
        notes.append("paper rows are ImageNet numbers for the backbones ours stand in for ('as ...'): "
                     "compare the changes (Δ), not the absolute accuracies")
    table = pd.DataFrame(rows, columns=_table1_columns())
    table.attrs = {"title": "MOKD Table 1: k-NN and linear top-1 (%), each net trained alone (DINO) vs with MOKD",
                   "notes": list(dict.fromkeys(notes))}
    return table


MOKD_TABLE3_PAPER_PAIR = "R50-R18"
MOKD_TABLE3_METHODS = (("dino", "Independent (DINO alone)"), ("mcl", "MCL"), ("mokd", "MOKD"))


def _table3_columns() -> list[str]:
    return ["Method", "Net1", "Net2", "Source"] + [f"{label} {net}" for _, label, _ in PROTOCOLS
                                                   for net in ("Net1", "Net2")]


def _paper_table3_rows(notes: list[str]) -> list[dict[str, str]]:
    """Every method of the paper's Table 3 at one pair (linear only: the paper reports no k-NN there)."""
    if not (PAPER_NUMBERS_DIR / "mokd_table3.csv").is_file():
        notes.append(f"paper numbers not shown: {PAPER_NUMBERS_DIR} is missing (run from a source checkout)")
        return []
    paper = load_paper_numbers("mokd_table3")
    paper = paper[paper.pair == MOKD_TABLE3_PAPER_PAIR]
    rows = []
    for method, group in paper.groupby("method", sort=False):
        big, small = group.iloc[0], group.iloc[1]
        rows.append({"Method": method, "Net1": big.backbone, "Net2": small.backbone,
                     "Source": "paper: ImageNet, linear (MOKD Table 3)",
                     "k-NN Net1": NA, "k-NN Net2": NA,
                     "Linear Net1": format_value(None if pd.isna(big.linear) else float(big.linear)),
                     "Linear Net2": format_value(None if pd.isna(small.linear) else float(small.linear))})
    notes.append(f"paper rows: the {MOKD_TABLE3_PAPER_PAIR} pair of MOKD Table 3 (teacher or larger net as Net1); "
                 "the other pairs are in zoo_configs/paper_numbers/mokd_table3.csv")
    return rows


def mokd_table3(runs: pd.DataFrame) -> pd.DataFrame:
    """MOKD Table 3 at one pair: MCL and MOKD pairs (Net1 = the run's first member) and each net trained alone with
    DINO, k-NN and linear top-1; then the paper's rows for every method it compares (SEED, ReKD, DisCo and
    Supervised have no sslkd strategy, so they appear as paper rows only)."""
    pair_runs = runs[runs.method.isin(("mcl", "mokd"))]
    if pair_runs.empty:
        raise UserError("no mcl or mokd runs among the given run directories: pass them or use --table runs")
    notes = ["cells: mean +- sample std (n seeds) of top-1 %; Net1 = the run's first member",
             "Independent = dino runs of the same backbone, data set and epochs"]
    rows = []
    dino = runs[runs.method == "dino"]
    keys = ["dataset", "epochs", "tag", "backbone1", "paper1", "backbone2", "paper2"]
    settings: dict[tuple, dict[str, pd.DataFrame]] = {}
    for method in ("mcl", "mokd"):
        pairs = _mokd_pairs(pair_runs[pair_runs.method == method], notes)
        for key, group in (pairs.groupby(keys, sort=False) if len(pairs) else []):
            settings.setdefault(key, {})[method] = group
    for (dataset, epochs, tag, backbone1, paper1, backbone2, paper2), methods in settings.items():
        nets = {"Net1": backbone_label(backbone1, paper1), "Net2": backbone_label(backbone2, paper2),
                "Source": _setting(dataset, epochs, tag)}
        alone = [_independent(dino, b, dataset, epochs, notes) for b in (backbone1, backbone2)]
        for method, label in MOKD_TABLE3_METHODS:
            row = {"Method": label, **nets}
            for protocol, name, column in PROTOCOLS:
                for i, net in enumerate(("Net1", "Net2"), start=1):
                    if method == "dino":
                        found, suffix = alone[i - 1]
                        stat = Stat.of(found[column])
                        row[f"{name} {net}"] = format_stat(stat) + (suffix if stat else "")
                    else:
                        group = methods.get(method)
                        row[f"{name} {net}"] = NA if group is None else format_stat(Stat.of(group[f"{protocol}{i}"]))
            rows.append(row)
    rows += _paper_table3_rows(notes)
    table = pd.DataFrame(rows, columns=_table3_columns())
    table.attrs = {"title": "MOKD Table 3: MOKD against MCL (and the paper's other SSL-KD methods) at one pair",
                   "notes": list(dict.fromkeys(notes))}
    return table


DOGO_PROTOCOLS = (("k-NN", "knn_top1"), ("k-NN DoGo", "knn_dogo_mean"), ("Linear", "linear_top1"))
DOGO_PAPER_SOURCE = "paper: Tiny-ImageNet, linear (DoGo Table 1)"
PAIR = " \\"  # DoGo Table 1 writes a box as "row \ column"


@dataclass(frozen=True, order=True)
class _Model:
    """A model of a DoGo table: a backbone (and the paper backbone it stands in for) trained with an objective."""

    backbone: str
    paper_name: str
    objective: str

    @property
    def label(self) -> str:
        suffix = "" if self.objective == "simclr" else f" [{self.objective}]"
        return backbone_label(self.backbone, self.paper_name) + suffix


def format_relative_change(before: float | None, after: float | None) -> str:
    """Change of ``after`` over ``before`` in percent of ``before``, as DoGo Table 1 prints it: '+4.5%'."""
    if before is None or after is None or math.isnan(before) or math.isnan(after) or before == 0:
        return NA
    return f"{round(100 * (after - before) / before, 1) + 0.0:+.1f}%"


def _dogo_members(dogo: pd.DataFrame, notes: list[str]) -> pd.DataFrame:
    """The members of two-member dogo runs with their model (objective from the run's config) and pair partner."""
    rows = []
    for run_dir, members in dogo.groupby("run_dir", sort=False):
        members = members.sort_values("member_index")
        if len(members) != 2:
            notes.append(f"skipped {run_dir}: a dogo run with {len(members)} members does not fit a pair table")
            continue
        objectives = member_objectives(run_dir)
        models = [_Model(m.backbone, m.paper_name, objectives.get(m.member, "simclr")) for m in members.itertuples()]
        for index, (member, model) in enumerate(zip(members.itertuples(), models)):
            rows.append({**member._asdict(), "model": model, "partner": models[1 - index], "position": index})
    return pd.DataFrame(rows)


def _dogo_cell(members: pd.DataFrame, row: _Model, column: _Model, column_name: str, baselines: dict) -> str:
    """'row \\ column; change change' of the pairs of ``row`` and ``column`` (same-model pairs: first \\ second)."""
    if row == column:
        pair = members[(members.model == row) & (members.partner == row)]
        row_values, column_values = pair[pair.position == 0][column_name], pair[pair.position == 1][column_name]
    else:
        row_values = members[(members.model == row) & (members.partner == column)][column_name]
        column_values = members[(members.model == column) & (members.partner == row)][column_name]
    stats = Stat.of(row_values), Stat.of(column_values)
    if stats == (None, None):
        return "-"
    changes = [format_relative_change(_mean(baselines[model]), _mean(stat))
               for model, stat in zip((row, column), stats)]
    return f"{format_stat(stats[0])}{PAIR} {format_stat(stats[1])}; {changes[0]} {changes[1]}"


def _dogo_paper(notes: list[str]) -> pd.DataFrame:
    """DoGo Table 1 as transcribed (empty, with a note, outside a source checkout); blank names become ''."""
    if not (PAPER_NUMBERS_DIR / "dogo_table1.csv").is_file():
        notes.append(f"paper numbers not shown: {PAPER_NUMBERS_DIR} is missing (run from a source checkout)")
        return pd.DataFrame()
    return load_paper_numbers("dogo_table1").fillna({"row": "", "column": ""})


def _dogo_paper_row(paper: pd.DataFrame, model: _Model, columns: list[_Model]) -> dict[str, str] | None:
    """DoGo Table 1's row for the paper model ``model`` stands in for, in our columns, numbers as printed."""
    def value(row: str, column: str, member: str, quantity: str) -> float | None:
        hit = paper[(paper.row == row) & (paper.column == column) & (paper.member == member)
                    & (paper.quantity == quantity)]
        return float(hit.value.iloc[0]) if len(hit) else None

    baseline = value(model.paper_name, "", "row", "baseline")
    if model.objective != "simclr" or baseline is None:
        return None
    row = {"Source": DOGO_PAPER_SOURCE, "Protocol": "Linear", "Model": model.paper_name, "Baseline": f"{baseline:.2f}"}
    for column in columns:
        numbers = [value(model.paper_name, column.paper_name, member, quantity)
                   for quantity in ("dogo", "change_pct") for member in ("row", "column")]
        if column.objective == "simclr" and None not in numbers:
            row[column.label] = f"{numbers[0]:.2f}{PAIR} {numbers[1]:.2f}; {numbers[2]:+.1f}% {numbers[3]:+.1f}%"
    return row


def dogo_table1(runs: pd.DataFrame) -> pd.DataFrame:
    """DoGo Table 1: a row model x column model matrix per setting; each cell is the DoGo pair of the two,
    "row \\ column" top-1 with each model's relative change over its baseline (the model trained alone with its own
    objective: ``simclr`` runs, ``simsiam`` runs for SimSiam peers, as in Table 4). One row per protocol that has
    numbers (weighted k-NN k=20, DoGo's k-NN mean over k in {1,2,4,8}, linear probe); where models carry a
    ``paper_name``, the paper's Tiny-ImageNet row follows ours, numbers as printed.
    """
    dogo = runs[runs.method == "dogo"]
    if dogo.empty:
        raise UserError("no dogo runs among the given run directories: pass dogo runs or use --table runs")
    notes = [f"cells: row model{PAIR} column model of a DoGo pair, mean +- sample std (n seeds) of top-1 %; then each "
             "model's change over its Baseline in % of the Baseline (relative, as the paper prints it)",
             "Baseline = runs of the model alone with its objective (simclr, or simsiam for SimSiam peers) on the "
             "same data set; '-' = no pair run",
             "k-NN = weighted k-NN, k=20 (DINO protocol); k-NN DoGo = mean top-1 over k in {1,2,4,8} (DoGo's)"]
    members = _dogo_members(dogo.assign(paper_name=dogo.paper_name.astype(object).where(dogo.paper_name.notna(), ""),
                                        tag=dogo.tag.astype(object).where(dogo.tag.notna(), "")), notes)
    alone = runs[runs.method != "dogo"]
    paper = None
    rows, all_columns = [], {}
    groups = members.groupby(["dataset", "epochs", "tag"], sort=False) if len(members) else []
    for (dataset, epochs, tag), group in groups:
        params = group.groupby("model").params_m.max()
        models = sorted(set(group.model), key=lambda m: (-params[m] if not math.isnan(params[m]) else math.inf, m))
        all_columns.update((m.label, None) for m in models)
        found = {m: _alone_runs(alone, m.objective, m.backbone, dataset, epochs, notes, "Baseline") for m in models}
        protocols = [(label, column) for label, column in DOGO_PROTOCOLS if group[column].notna().any()]
        baselines = {column: {m: Stat.of(found[m][0][column]) for m in models} for _, column in protocols}
        for model in models:
            for label, column in protocols:
                stat = baselines[column][model]
                row = {"Source": _setting(dataset, epochs, tag), "Protocol": label, "Model": model.label,
                       "Baseline": format_stat(stat) + (found[model][1] if stat else "")}
                row |= {m.label: _dogo_cell(group, model, m, column, baselines[column]) for m in models}
                rows.append(row)
            if model.paper_name:
                paper = _dogo_paper(notes) if paper is None else paper
                paper_row = _dogo_paper_row(paper, model, models) if len(paper) else None
                if paper_row is not None:
                    rows.append(paper_row)
    if any(row["Source"] == DOGO_PAPER_SOURCE for row in rows):
        notes.append("paper rows are DoGo's Tiny-ImageNet linear-probe numbers for the models ours stand in for "
                     "('as ...'): compare the changes, not the absolute accuracies")
    table = pd.DataFrame(rows, columns=["Source", "Protocol", "Model", "Baseline", *all_columns]).fillna("")
    table.attrs = {"title": "DoGo Table 1: top-1 (%) of each model alone (Baseline) and in DoGo pairs, "
                            f"cells 'row{PAIR} column'",
                   "notes": list(dict.fromkeys(notes))}
    return table


def runs_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Any runs: one row per (method, config file, setting, member, backbone) with accuracies and wall time over
    seeds; the config file keeps apart runs of one method with different options (SD-BYOL and SD-SimCLR), the tag
    (with the variant of runs whose settings differ) runs of one config file. Where runs recorded their k-NN at step 0,
    a floor column follows the k-NN, and a k-NN mean at or below the floor's is marked."""
    keyed = runs.assign(
        tag=runs.tag.astype(object).where(runs.tag.notna(), ""),
        paper_name=runs.paper_name.astype(object).where(runs.paper_name.notna(), ""),
    )
    floors = bool(runs.knn_floor.notna().any())
    keys = ["method", "config", "tag", "dataset", "epochs", "member", "backbone", "paper_name"]
    keyed = keyed.sort_values(["method", "config", "tag", "dataset", "epochs", "member_index"], kind="stable")
    rows = []
    for (method, config, tag, dataset, epochs, member, backbone, paper_name), group in keyed.groupby(
            keys, sort=False):
        wall = Stat.of(group.wall_time_s)
        knn, floor = Stat.of(group.knn_top1), Stat.of(group.knn_floor)
        below = epochs > 0 and at_or_below_floor(_mean(knn), _mean(floor))
        rows.append({
            "Method": f"{method} [{tag}]" if tag else method,
            "Config": config or NA,
            "Member": member,
            "Backbone": backbone_label(backbone, paper_name),
            "Data set": dataset,
            "Epochs": str(epochs),
            "k-NN top-1": format_stat(knn) + (FLOOR_MARK if below else ""),
            **({"k-NN random init": format_stat(floor)} if floors else {}),
            "Linear top-1": format_stat(Stat.of(group.linear_top1)),
            "Wall time (min)": NA if wall is None else f"{wall.mean / 60:.1f}",
            "Seeds": str(group.seed.nunique()),
        })
    columns = ["Method", "Config", "Member", "Backbone", "Data set", "Epochs", "k-NN top-1",
               *(["k-NN random init"] if floors else []), "Linear top-1", "Wall time (min)", "Seeds"]
    notes = ["cells: mean +- sample std (n seeds) of top-1 %; wall time: mean per run"]
    if floors:
        notes.append(f"k-NN random init: each member's k-NN at step 0 (its floor); '{FLOOR_MARK.strip()}': the "
                     "trained mean is at or below it")
    table = pd.DataFrame(rows, columns=columns)
    table.attrs = {"title": "Runs: top-1 (%) per method, config file and member", "notes": notes}
    return table


register_table("mokd_table1", mokd_table1, lambda runs: bool((runs.method == "mokd").any()),
               "MOKD Table 1: Independent (DINO) vs MOKD per backbone pair, k-NN and linear")
register_table("mokd_table3", mokd_table3, lambda runs: False,
               "MOKD Table 3: MCL and MOKD pairs and each net alone (DINO), with the paper's SSL-KD rows")
register_table("dogo_table1", dogo_table1, lambda runs: bool((runs.method == "dogo").any()),
               "DoGo Table 1: row model x column model, each pair against its models trained alone")
register_table("runs", runs_table, lambda runs: True, "every run: method x member, accuracies over seeds")


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")


def _markdown(table: pd.DataFrame) -> str:
    def line(cells: Iterable[str]) -> str:
        return "| " + " | ".join(str(cell).replace("|", "\\|") for cell in cells) + " |"

    rows = [line(table.columns), "|" + "|".join("---" for _ in table.columns) + "|"]
    rows += [line(values) for values in table.itertuples(index=False)]
    return "\n".join(rows)


LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                 "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    """Escape LaTeX specials, then typeset '+-' and 'Δ' as math."""
    escaped = "".join(LATEX_SPECIAL.get(char, char) for char in str(text))
    return escaped.replace("+-", r"$\pm$").replace("Δ", r"$\Delta$")


def _latex(table: pd.DataFrame) -> str:
    def line(cells: Iterable[str]) -> str:
        return " & ".join(latex_escape(cell) for cell in cells) + r" \\"

    body = [line(values) for values in table.itertuples(index=False)]
    return "\n".join([rf"\begin{{tabular}}{{{'l' * len(table.columns)}}}", r"\toprule", line(table.columns),
                      r"\midrule", *body, r"\bottomrule", r"\end{tabular}"])


def render(table: pd.DataFrame, fmt: str = "md") -> str:
    """The table as Markdown (title and notes around it), CSV (cells only) or a LaTeX booktabs tabular."""
    _check_format(fmt)
    title, notes = table.attrs.get("title", ""), table.attrs.get("notes", [])
    if fmt == "csv":
        return table.to_csv(index=False)
    if fmt == "latex":
        comments = [f"% {text}" for text in ([title] if title else []) + notes]
        return "\n".join([*comments, _latex(table)]) + "\n"
    head = [f"**{title}**", ""] if title else []
    tail = ["", *(f"- {note}" for note in notes)] if notes else []
    return "\n".join([*head, _markdown(table), *tail]) + "\n"


def rich_table(table: pd.DataFrame, title: str | None = None) -> Table:
    """The table for terminal display; notes become the caption."""
    notes = table.attrs.get("notes", [])
    shown = Table(title=title if title is not None else table.attrs.get("title"),
                  caption="\n".join(notes) or None, caption_justify="left")
    for column in table.columns:
        shown.add_column(str(column), overflow="fold")
    for values in table.itertuples(index=False):
        shown.add_row(*map(str, values))
    return shown


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
    _check_format(fmt)
    return render(compare_table(run_dirs, table), fmt)


# ---------------------------------------------------------------------------------------------------- MCL tables
MCL_METHODS = (("supervised", "Baseline"), ("dml", "DML"), ("mcl", "MCL"), ("lmcl", "L-MCL"))
MCL_PAPER_SOURCE = "paper: CIFAR-100, 300 ep"


def _with_test_top1(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs of supervised strategies with each member's test top-1 (summary.json ``test_top1``) and the run's
    backbone cohort, read from the run directories."""
    rows = []
    for row in runs[runs.method.isin([m for m, _ in MCL_METHODS])].itertuples(index=False):
        summary = RunDir(row.run_dir).read_summary()
        top1 = summary["members"].get(row.member, {}).get("test_top1")
        rows.append({**row._asdict(), "test_top1": math.nan if top1 is None else float(top1)})
    frame = pd.DataFrame(rows, columns=[*runs.columns, "test_top1"])
    frame["paper_name"] = frame.paper_name.astype(object).where(frame.paper_name.notna(), "")
    frame["tag"] = frame.tag.astype(object).where(frame.tag.notna(), "")
    frame["cohort"] = frame.run_dir.map(frame.groupby("run_dir").backbone.agg(tuple))
    return frame


def _mcl_paper(name: str, notes: list[str]) -> pd.DataFrame:
    if not (PAPER_NUMBERS_DIR / f"{name}.csv").is_file():
        notes.append(f"paper numbers not shown: {PAPER_NUMBERS_DIR} is missing (run from a source checkout)")
        return pd.DataFrame()
    return load_paper_numbers(name)


def _paper_cell(rows: pd.DataFrame) -> str:
    return "n/a" if rows.empty else f"{rows.top1.iloc[0]:.2f} +- {rows['std'].iloc[0]:.2f}"


def _mcl_setting(frame: pd.DataFrame) -> str:
    first = frame.iloc[0]
    return _setting(first.dataset, int(first.epochs), first.tag)


def mcl_table1(runs: pd.DataFrame) -> pd.DataFrame:
    """MCL Table 1 (and Table 3): per network, test top-1 of the nets of cohorts of identical networks trained with
    each method, methods as columns. Baseline = supervised runs of that network (members trained alone). Cells pool
    every member of every seed (a cohort of identical nets); the paper's CIFAR-100 row follows where the members
    carry a ``paper_name``."""
    frame = _with_test_top1(runs)
    same = frame[frame.cohort.map(lambda c: len(set(c)) == 1)]
    cohorts = same[same.method != "supervised"]
    if cohorts.empty:
        raise UserError("no dml/mcl/lmcl run of identical networks among the run directories: pass such runs "
                        "(or use --table mcl_table2 for pairs of different networks)")
    notes = ["cells: mean +- sample std (n = members x seeds) of test top-1 % at the final epoch",
             "Baseline = supervised runs of the same network (each member trained alone with the cross-entropy)"]
    paper = None
    rows = []
    columns = ["Network", "Nets", "Source", *(label for _, label in MCL_METHODS)]
    for (backbone, paper_name, size, dataset, epochs, tag), group in cohorts.groupby(
            ["backbone", "paper_name", cohorts.cohort.map(len), "dataset", "epochs", "tag"], sort=False):
        row = {"Network": backbone_label(backbone, paper_name), "Nets": str(size), "Source": _mcl_setting(group)}
        for method, label in MCL_METHODS:
            pool = frame if method == "supervised" else same[same.cohort.map(len) == size]
            found = pool[(pool.method == method) & (pool.backbone == backbone) & (pool.dataset == dataset)
                         & (pool.epochs == epochs)]
            row[label] = format_stat(Stat.of(found.test_top1))
        rows.append(row)
        if paper_name:
            paper = _mcl_paper("mcl_table1", notes) if paper is None else paper
            if len(paper):
                hits = paper[paper.network == paper_name]
                rows.append({"Network": paper_name, "Nets": "2", "Source": MCL_PAPER_SOURCE + " (MCL Table 1)",
                             **{label: _paper_cell(hits[hits.method == label]) for _, label in MCL_METHODS}})
    table = pd.DataFrame(rows, columns=columns)
    table.attrs = {"title": "MCL Table 1: test top-1 (%) of networks trained with a partner of the same architecture",
                   "notes": notes}
    return table


def mcl_table2(runs: pd.DataFrame) -> pd.DataFrame:
    """MCL Table 2: per pair of different networks, Net1 and Net2 rows (Net1 = the run's first member), methods as
    columns; Baseline = supervised runs of each network. The paper's CIFAR-100 rows follow where the members carry a
    ``paper_name`` (the paper has no MCL column in Table 2)."""
    frame = _with_test_top1(runs)
    pairs = frame[(frame.method != "supervised") & frame.cohort.map(lambda c: len(c) == 2 and c[0] != c[1])]
    if pairs.empty:
        raise UserError("no two-member dml/mcl/lmcl run of different networks among the run directories: pass such "
                        "runs (or use --table mcl_table1 for identical networks)")
    notes = ["cells: mean +- sample std (n seeds) of test top-1 % at the final epoch; Net1 = the run's first member",
             "Baseline = supervised runs of the same network (trained alone with the cross-entropy)"]
    paper = None
    rows = []
    for (cohort, dataset, epochs, tag), group in pairs.groupby(["cohort", "dataset", "epochs", "tag"], sort=False):
        names = group.sort_values("member_index").drop_duplicates("member_index").paper_name.tolist()
        for index, net in enumerate(("Net1", "Net2")):
            members = group[group.member_index == index]
            backbone = cohort[index]
            row = {"Pair": " + ".join(cohort), "Net": f"{net}: {backbone_label(backbone, names[index])}",
                   "Source": _mcl_setting(group)}
            for method, label in MCL_METHODS:
                if method == "supervised":
                    found = frame[(frame.method == method) & (frame.backbone == backbone) & (frame.dataset == dataset)
                                  & (frame.epochs == epochs)]
                else:
                    found = members[members.method == method]
                row[label] = format_stat(Stat.of(found.test_top1))
            rows.append(row)
        if all(names):
            paper = _mcl_paper("mcl_table2", notes) if paper is None else paper
            if len(paper):
                hits = paper[(paper.net1 == names[0]) & (paper.net2 == names[1])]
                for index, net in enumerate(("net1", "net2")):
                    mine = hits[hits.member == net]
                    rows.append({"Pair": f"{names[0]} + {names[1]}", "Net": f"{net.capitalize()}: {names[index]}",
                                 "Source": MCL_PAPER_SOURCE + " (MCL Table 2)",
                                 **{label: _paper_cell(mine[mine.method == label]) for _, label in MCL_METHODS}})
    table = pd.DataFrame(rows, columns=["Pair", "Net", "Source", *(label for _, label in MCL_METHODS)])
    table.attrs = {"title": "MCL Table 2: test top-1 (%) of two networks of different architectures trained together",
                   "notes": notes}
    return table


def _lmcl_terms(run_dir: str) -> tuple[str, ...]:
    """The MCL loss terms an lmcl run switched on (its config.yaml), in MCL Table 6's column order."""
    config = RunDir(run_dir).read_config()
    terms = (config.get("strategy") or {}).get("terms") or ["vcl", "soft_vcl", "icl", "soft_icl"]
    return tuple(t for t in ("vcl", "soft_vcl", "icl", "soft_icl") if t in terms)


def mcl_table6(runs: pd.DataFrame) -> pd.DataFrame:
    """MCL Table 6: the loss-term ablation of layer-wise MCL. One row per combination of VCL, Soft VCL, ICL and
    Soft ICL (from each lmcl run's ``strategy.terms``; the first row is supervised training), one column per
    network of identical pairs; the paper's rows follow for networks with a ``paper_name``."""
    frame = _with_test_top1(runs)
    frame = frame[frame.cohort.map(lambda c: len(set(c)) == 1)]
    lmcl = frame[frame.method == "lmcl"]
    if lmcl.empty:
        raise UserError("no lmcl run of identical networks among the run directories: pass the Table 6 ablation runs "
                        "(zoo_configs/lmcl/*_ablation_*.yaml)")
    lmcl = lmcl.assign(terms=lmcl.run_dir.map(_lmcl_terms))
    networks = list(dict.fromkeys(zip(lmcl.backbone, lmcl.paper_name)))
    labels = [backbone_label(b, p) for b, p in networks]
    columns = ["VCL", "Soft VCL", "ICL", "Soft ICL", "Source", *labels]
    notes = ["cells: mean +- sample std (n = members x seeds) of test top-1 % at the final epoch",
             ("the first row is supervised training of the network alone; the ablation runs switch off the "
              "logit-level terms (strategy.task_gate / logit_distillation false), as the table isolates the feature "
              "terms")]

    def flags(terms: tuple[str, ...]) -> dict[str, str]:
        return {name: "x" if key in terms else "-" for name, key in
                zip(columns[:4], ("vcl", "soft_vcl", "icl", "soft_icl"))}

    setting = _mcl_setting(lmcl)
    rows = [{**flags(()), "Source": setting, **{
        label: format_stat(Stat.of(frame[(frame.method == "supervised") & (frame.backbone == b)].test_top1))
        for label, (b, _) in zip(labels, networks)}}]
    for terms, group in lmcl.groupby("terms", sort=False):
        rows.append({**flags(terms), "Source": setting, **{
            label: format_stat(Stat.of(group[group.backbone == b].test_top1)) for label, (b, _) in zip(labels, networks)}})
    named = [(label, p) for label, (_, p) in zip(labels, networks) if p]
    if named:
        paper = _mcl_paper("mcl_table6", notes)
        for combo in paper[["vcl", "soft_vcl", "icl", "soft_icl"]].drop_duplicates().itertuples(index=False):
            terms = tuple(k for k, on in zip(("vcl", "soft_vcl", "icl", "soft_icl"), combo) if on)
            hits = paper[(paper[["vcl", "soft_vcl", "icl", "soft_icl"]] == list(combo)).all(axis=1)]
            rows.append({**flags(terms), "Source": MCL_PAPER_SOURCE + " (MCL Table 6)",
                         **{label: _paper_cell(hits[hits.network == p]) for label, p in named}})
    table = pd.DataFrame(rows, columns=columns).fillna("n/a")
    table.attrs = {"title": "MCL Table 6: ablation of the loss terms of layer-wise MCL, test top-1 (%)", "notes": notes}
    return table


def _mcl_cohorts(runs: pd.DataFrame, methods: tuple[str, ...]) -> list[tuple[str, ...]]:
    chosen = runs[runs.method.isin(methods)]
    return [tuple(group.sort_values("member_index").backbone) for _, group in chosen.groupby("run_dir")]


register_table("mcl_table1", mcl_table1,
               lambda runs: any(len(set(c)) == 1 for c in _mcl_cohorts(runs, ("dml", "mcl", "lmcl"))),
               "MCL Table 1/3: networks trained with partners of the same architecture, method columns")
register_table("mcl_table2", mcl_table2,
               lambda runs: any(len(c) == 2 and c[0] != c[1] for c in _mcl_cohorts(runs, ("dml", "mcl", "lmcl"))),
               "MCL Table 2: Net1/Net2 of pairs of different architectures, method columns")
register_table("mcl_table6", mcl_table6, lambda runs: False,
               "MCL Table 6: loss-term ablation of layer-wise MCL (lmcl runs with strategy.terms)")


# -------------------------------------------------------------------------------------------------- SDSSL tables
SDSSL_BASES = {"simclr": "SimCLR", "byol": "BYOL", "mocov3": "MoCo v3"}
SDSSL_FRAMEWORKS = ("SimCLR", "SD-SimCLR", "BYOL", "SD-BYOL", "MoCo v3", "SD-MoCo v3")
SDSSL_BACKBONES = ("ViT-S/32", "ViT-S/16", "ViT-B/16")
SDSSL_PAPER_SOURCE = "paper: ImageNet, 300 ep (SDSSL Table 1)"


def framework_label(method: str, options) -> str:
    """How SDSSL's figures and Table 1 name a run: ``MoCo v3``, ``SD-MoCo v3``, ``BYOL``, ``SD-SimCLR``, ... An
    sdssl run that distils no layer and has no predictor loss is its base. ``options``: the run's strategy options
    (a mapping as saved in config.yaml, or the options dataclass)."""
    if method != "sdssl":
        return SDSSL_BASES.get(method, method)
    from sslkd.strategies.sdssl import SDSSLOptions

    get = (options.get if isinstance(options, dict) else lambda key, default: getattr(options, key, default))
    base = get("base", SDSSLOptions.base)
    layers, beta = get("layers", SDSSLOptions.layers), get("beta", SDSSLOptions.beta)
    if not layers and (base == "simclr" or beta == 0):
        return SDSSL_BASES[base]
    return f"SD-{SDSSL_BASES[base]}"


def sdssl_framework(method: str, run_dir: str) -> str | None:
    """The SDSSL Table 1 row of a run (``framework_label`` of its config.yaml); None for other methods (the
    ``simclr`` strategy is DoGo's SimCLR, not SDSSL's) and for an sdssl run that distils no layer but keeps BYOL's or
    MoCo v3's predictor loss, which is neither the base nor SD."""
    if method in ("byol", "mocov3"):
        return SDSSL_BASES[method]
    if method != "sdssl":
        return None
    import yaml

    try:
        config = RunDir(run_dir).read_config() or {}
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"{run_dir} has no readable config.yaml ({exc}): pass run directories written by sslkd "
                        "train") from exc
    options = config.get("strategy") or {}
    if options.get("layers") == [] and options.get("base") != "simclr" and options.get("beta") != 0:
        return None
    return framework_label(method, options)


def sdssl_table1(runs: pd.DataFrame) -> pd.DataFrame:
    """SDSSL Table 1: final-layer k-NN and linear top-1 of SimCLR, BYOL and MoCo v3 with and without SDSSL, one
    column pair per backbone (the paper backbone a proxy stands in for, else its identity). Each SD row's cells add
    the change over its base row; the paper's row follows each of ours where the runs carry a ``paper_name``."""
    runs = runs.assign(tag=runs.tag.astype(object).where(runs.tag.notna(), ""),
                       paper_name=runs.paper_name.astype(object).where(runs.paper_name.notna(), ""))
    runs["framework"] = runs.run_dir.map({d: sdssl_framework(m, d) for d, m in zip(runs.run_dir, runs.method)})
    notes = [("cells: mean +- sample std (n seeds) of final-layer top-1 %; [+x.x] after an SD cell = its mean - the "
              "mean of its base row (same source)"),
             "rows: sdssl runs by strategy.base (SD- when strategy.layers is not []), byol and mocov3 runs"]
    for run_dir, method in runs[runs.framework.isna()].drop_duplicates("run_dir")[["run_dir", "method"]].values:
        notes.append(f"left out {run_dir}: " + ("an sdssl run with layers [] and beta != 0 is no Table 1 framework "
                                                "(set strategy.beta: 0)" if method == "sdssl" else
                                                f"{method} is no SDSSL Table 1 framework (SimCLR = sdssl, layers [])"))
    runs = runs[runs.framework.notna()]
    if runs.empty:
        raise UserError("no sdssl, byol or mocov3 runs among the run directories: pass them or use --table runs")
    identities = runs.groupby("paper_name").backbone.nunique()
    runs["column"] = [p if p and identities[p] == 1 else backbone_label(b, p) for b, p in zip(runs.backbone,
                                                                                                 runs.paper_name)]
    columns = sorted(dict.fromkeys(runs.column), key=lambda c: SDSSL_BACKBONES.index(c) if c in SDSSL_BACKBONES
                     else len(SDSSL_BACKBONES))
    paper_of = dict(zip(runs.column, runs.paper_name))
    notes += [f"ours in the {c} columns: {b}" for c, b in dict(zip(runs.column, runs.backbone)).items() if c != b]
    paper = None
    if any(paper_of.values()) and (PAPER_NUMBERS_DIR / "sdssl_table1.csv").is_file():
        paper = load_paper_numbers("sdssl_table1")
        notes.append("paper rows are ImageNet numbers for the backbones ours stand in for: compare the changes")
    elif any(paper_of.values()):
        notes.append(f"paper numbers not shown: {PAPER_NUMBERS_DIR} is missing (run from a source checkout)")

    def row(framework: str, source: str, cell: Callable) -> dict[str, str]:
        cells = {"Framework": framework, "Source": source}
        for column in columns:
            for protocol, label, _ in PROTOCOLS:
                mean, text = cell(framework, column, protocol)
                base = cell(framework[3:], column, protocol)[0] if framework.startswith("SD-") else None
                cells[f"{column} {label}"] = text + (f" [{format_delta(base, mean)}]" if None not in (mean, base)
                                                     else "")
        return cells

    def printed(framework: str, column: str, protocol: str) -> tuple[float | None, str]:
        hits = paper[(paper.framework == framework) & (paper.backbone == paper_of[column])
                     & (paper.protocol == protocol)].top1.dropna()
        value = float(hits.iloc[0]) if len(hits) else None
        return value, format_value(value)

    rows, floors = [], []
    for (dataset, epochs, tag), setting in runs.groupby(["dataset", "epochs", "tag"], sort=False):
        def ours(framework: str, column: str, protocol: str, runs: pd.DataFrame = setting) -> tuple[float | None, str]:
            found = runs if framework == RANDOM_INIT else runs[runs.framework == framework]
            stat = Stat.of(found[found.column == column][f"{protocol}_top1"])
            return _mean(stat), format_stat(stat)

        if epochs == 0:  # untrained runs (a proxy table's floor) are one row, whatever framework they were built as
            floors.append(row(RANDOM_INIT, _setting(dataset, 0, tag), ours))
            continue
        for framework in SDSSL_FRAMEWORKS:
            rows.append(row(framework, _setting(dataset, int(epochs), tag), ours))
            if paper is not None:
                rows.append(row(framework, SDSSL_PAPER_SOURCE, printed))
    table = pd.DataFrame(rows + floors, columns=["Framework", "Source", *(f"{c} {label}" for c in columns
                                                                          for _, label, _ in PROTOCOLS)])
    table.attrs = {"title": "SDSSL Table 1: final-layer k-NN and linear top-1 (%), with and without self-distillation",
                   "notes": list(dict.fromkeys(notes))}
    return table


register_table("sdssl_table1", sdssl_table1, lambda runs: bool((runs.method == "sdssl").any()),
               "SDSSL Table 1: SimCLR/BYOL/MoCo v3 with and without SDSSL, k-NN and linear per backbone")
