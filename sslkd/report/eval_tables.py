"""Tables of the evaluations recorded in runs' summary.json (``evals``, written by ``sslkd eval ... --record``):
MOKD Tables 4, 5, 7, 9 and Fig. 5, DoGo Tables 2, 3 and Fig. 3, MCL Table 4.

One layout serves them all: a row per (method, setting, member backbone, partner) with one column per recorded
evaluation (mean +- sample std over seeds), then the paper's rows for the backbones ours stand in for, in the paper's
own columns. Proxy runs evaluate on other data than the paper (e.g. transfer to digits instead of CIFAR-100), so the
paper's numbers sit in their own columns: compare directions and gaps, not values.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import partial

import pandas as pd

from sslkd.core.rundir import RunDir
from sslkd.report.records import PAPER_NUMBERS_DIR, load_paper_numbers
from sslkd.report.core import NA, Stat, backbone_label, format_stat, register_table

HEADLINES = ("top1", "linear_top1", "consistency")


@dataclass(frozen=True)
class EvalTable:
    """Which recorded evaluations a table shows (key prefixes), its title, and its transcribed paper table."""

    name: str
    prefixes: tuple[str, ...]
    title: str
    paper: str | None
    with_knn: bool = False


EVAL_TABLES = (
    EvalTable("mokd_table4", ("semisup_",), "MOKD Table 4: fine-tuning on a class-balanced label fraction, top-1 (%)",
              "mokd_table4"),
    EvalTable("mokd_table5", ("transfer_",), "MOKD Table 5: transfer by fine-tuning, top-1 (%)", "mokd_table5"),
    EvalTable("mokd_table7", ("linear",), "MOKD Table 7: influence of each loss term, linear top-1 (%)",
              "mokd_table7", with_knn=True),
    EvalTable("mokd_table9", ("consistency",), "MOKD Table 9: k-NN top-1 (%) and prediction consistency of two "
              "models", "mokd_table9", with_knn=True),
    EvalTable("mokd_fig5", ("attention_distance",), "MOKD Fig. 5: mean attention distance (px) per layer", None),
    EvalTable("dogo_table2", ("semisup_",), "DoGo Table 2: fine-tuning on a class-balanced label fraction, top-1 (%)",
              "dogo_table2"),
    EvalTable("dogo_table3", ("transfer_",), "DoGo Table 3: linear evaluation on other data sets, top-1 (%)",
              "dogo_table3"),
    EvalTable("dogo_fig3", ("noisy_",), "DoGo Fig. 3: linear top-1 (%) with noisy train labels", None),
    EvalTable("mcl_table4", ("transfer_",), "MCL Table 4: linear probe on other data sets, top-1 (%)", "mcl_table4"),
)


def _summary(run_dir: str) -> dict:
    try:
        return RunDir(run_dir).read_summary()
    except (OSError, json.JSONDecodeError):
        return {}


def _values(result: dict, key: str) -> dict[str, float]:
    """Column -> number of one member's recorded result: its headline, or one column per layer (attention)."""
    if "mean_attention_distance" in result:
        return {f"{key} {layer}": float(v) for layer, v in result["mean_attention_distance"].items()}
    for name in HEADLINES:
        if isinstance(result.get(name), (int, float)):
            return {key: float(result[name])}
    return {}


def _long(runs: pd.DataFrame, spec: EvalTable) -> pd.DataFrame:
    """One row per (run, member, column) of the recorded evaluations the table shows (plus k-NN if asked)."""
    rows = []
    for run_dir, members in runs.groupby("run_dir", sort=False):
        evals = _summary(run_dir).get("evals", {})
        members = members.sort_values("member_index")
        papers = [p if isinstance(p, str) else "" for p in members.paper_name]
        for position, member in enumerate(members.itertuples()):
            partner = papers[1 - position] if len(members) == 2 else ""
            base = {"method": member.method, "tag": member.tag if isinstance(member.tag, str) else "",
                    "dataset": member.dataset, "epochs": int(member.epochs), "member": member.member,
                    "backbone": member.backbone, "paper_name": papers[position], "partner": partner,
                    "position": position, "run_dir": run_dir}
            values = {"k-NN": member.knn_top1} if spec.with_knn else {}
            for key, results in evals.items():
                if key.startswith(spec.prefixes) and isinstance(results.get(member.member), dict):
                    values |= _values(results[member.member], key)
            rows += [{**base, "column": column, "value": value} for column, value in values.items()]
    return pd.DataFrame(rows)


def _paper_rows(spec: EvalTable, ours: pd.DataFrame, notes: list[str]) -> list[dict]:
    """The paper's rows for the (method, paper backbone, partner) of our rows, numbers as printed."""
    if spec.paper is None or not (PAPER_NUMBERS_DIR / f"{spec.paper}.csv").is_file():
        return []
    paper = load_paper_numbers(spec.paper).fillna("")
    rows = []
    keys = ours[["method", "paper_name", "partner", "position"]].drop_duplicates()
    for method, paper_name, partner, _position in keys.itertuples(index=False):
        if not paper_name:
            continue
        hit = paper[(paper.method == method) & (paper.backbone == paper_name)]
        if partner and "net2" in paper and (hit.net2 != "").any():  # a pair: the row of this net beside partner
            hit = hit[((hit.member == "net1") & (hit.net1 == paper_name) & (hit.net2 == partner))
                      | ((hit.member == "net2") & (hit.net2 == paper_name) & (hit.net1 == partner))]
        if hit.empty:
            continue
        first = hit.drop_duplicates("quantity")
        row = {"Method": f"paper: {first.paper_method.iloc[0]}", "Member": "", "Backbone": paper_name,
               "Partner": partner or "-", "Setting": f"paper ({spec.paper.replace('_', ' ')})"}
        row |= {f"paper {q}": f"{float(v):g}" for q, v in zip(first.quantity, first.value)}
        rows.append(row)
    if rows:
        notes.append("paper rows: the numbers the paper reports for the backbones ours stand in for, in the paper's "
                     "columns (its data sets); compare directions and gaps, not values")
    return rows


def evals_table(runs: pd.DataFrame, spec: EvalTable) -> pd.DataFrame:
    long = _long(runs, spec)
    notes = ["cells: mean +- sample std (n seeds); evaluations recorded by `sslkd eval ... --record` (keys as columns)"]
    if long.empty:
        notes.append(f"no recorded {'/'.join(spec.prefixes)} evaluations in these runs: run them with "
                     f"tools/reproduce.py {spec.name} --proxy (or sslkd eval ... --record)")
        table = pd.DataFrame(columns=["Method", "Member", "Backbone", "Partner", "Setting"])
        table.attrs = {"title": spec.title, "notes": notes}
        return table
    columns = list(dict.fromkeys(long.column))
    rows = []
    keys = ["method", "tag", "dataset", "epochs", "position", "member", "backbone", "paper_name", "partner"]
    for (method, tag, dataset, epochs, _, member, backbone, paper_name, partner), group in long.groupby(keys,
                                                                                                         sort=False):
        row = {"Method": f"{method} [{tag}]" if tag else method, "Member": member,
               "Backbone": backbone_label(backbone, paper_name), "Partner": partner or "-",
               "Setting": f"ours: {dataset}, {epochs} ep"}
        for column in columns:
            values = group[group.column == column].value
            stat = Stat.of(values)
            row[column] = NA if stat is None else (format_stat(stat) if column != "consistency" or stat.n < 1
                                                   else _format_fraction(stat))
        rows.append(row)
    rows += _paper_rows(spec, long, notes)
    table = pd.DataFrame(rows).fillna("")
    table.attrs = {"title": spec.title, "notes": notes}
    return table


def _format_fraction(stat: Stat) -> str:
    if stat.n == 1 or math.isnan(stat.std):
        return f"{stat.mean:.3f} ({stat.n})"
    return f"{stat.mean:.3f} +- {stat.std:.3f} ({stat.n})"


for _spec in EVAL_TABLES:
    register_table(_spec.name, partial(evals_table, spec=_spec), lambda runs: False,
                   f"{_spec.title} (from recorded evaluations)")
