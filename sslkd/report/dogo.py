"""DoGo's Table 1 layout: a row model x column model matrix of DoGo pairs, each against its models trained alone.
Its evaluation tables (2, 3, Fig. 3) are in eval_tables."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from sslkd.errors import UserError
from sslkd.report.core import (NA, Stat, alone_runs, backbone_label, blank_missing, format_stat, mean_of,
                               paper_numbers, register_table, setting_label, two_member_runs)
from sslkd.report.records import member_objectives


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
    """The members of two-member dogo runs with their model (objective from the run's record) and pair partner."""
    rows = []
    for run_dir, members in two_member_runs(dogo, "dogo", notes):
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
    changes = [format_relative_change(mean_of(baselines[model]), mean_of(stat))
               for model, stat in zip((row, column), stats)]
    return f"{format_stat(stats[0])}{PAIR} {format_stat(stats[1])}; {changes[0]} {changes[1]}"


def _dogo_paper(notes: list[str]) -> pd.DataFrame:
    """DoGo Table 1 as transcribed (empty, with a note, outside a source checkout); blank names become ''."""
    paper = paper_numbers("dogo_table1", notes)
    return pd.DataFrame() if paper is None else paper.fillna({"row": "", "column": ""})


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
    members = _dogo_members(dogo.assign(paper_name=blank_missing(dogo.paper_name), tag=blank_missing(dogo.tag)),
                            notes)
    alone = runs[runs.method != "dogo"]
    paper = None
    rows, all_columns = [], {}
    groups = members.groupby(["dataset", "epochs", "tag"], sort=False) if len(members) else []
    for (dataset, epochs, tag), group in groups:
        params = group.groupby("model").params_m.max()
        models = sorted(set(group.model), key=lambda m: (-params[m] if not math.isnan(params[m]) else math.inf, m))
        all_columns.update((m.label, None) for m in models)
        found = {m: alone_runs(alone, m.objective, m.backbone, dataset, epochs, notes, "Baseline") for m in models}
        protocols = [(label, column) for label, column in DOGO_PROTOCOLS if group[column].notna().any()]
        baselines = {column: {m: Stat.of(found[m][0][column]) for m in models} for _, column in protocols}
        for model in models:
            for label, column in protocols:
                stat = baselines[column][model]
                row = {"Source": setting_label(dataset, epochs, tag), "Protocol": label, "Model": model.label,
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


register_table("dogo_table1", dogo_table1, lambda runs: bool((runs.method == "dogo").any()),
               "DoGo Table 1: row model x column model, each pair against its models trained alone")
