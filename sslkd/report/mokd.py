"""MOKD's table layouts: Table 1 (each net alone with DINO against the MOKD pair) and Table 3 (MOKD against MCL and
the paper's other SSL-KD methods at one pair). Its evaluation tables (4, 5, 7, 9, Fig. 5) are in eval_tables."""

from __future__ import annotations

import pandas as pd

from sslkd.errors import UserError
from sslkd.report.core import (NA, PROTOCOLS, Stat, alone_runs, backbone_label, blank_missing, format_delta,
                               format_stat, format_value, mean_of, paper_numbers, register_table, setting_label,
                               two_member_runs)


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
    for _, members in two_member_runs(runs, "mokd", notes):
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
        pairs[column] = blank_missing(pairs[column])
    return pairs


def _independent(dino: pd.DataFrame, backbone: str, dataset: str, epochs: int,
                 notes: list[str]) -> tuple[pd.DataFrame, str]:
    """DINO runs of ``backbone`` on ``dataset``: same epochs if any, else the nearest (ties: longer); cell suffix."""
    return alone_runs(dino, "dino", backbone, dataset, epochs, notes, "Independent")


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
               "Source": setting_label(dataset, epochs, tag)}
        for protocol, label, column in PROTOCOLS:
            indep = tuple(Stat.of(found[column]) for found, _ in indep_runs)
            mokd = (Stat.of(group[f"{protocol}1"]), Stat.of(group[f"{protocol}2"]))
            indep_text = tuple(
                format_stat(stat) + (suffix if stat else "") for stat, (_, suffix) in zip(indep, indep_runs)
            )
            row |= _table1_cells(label, tuple(map(mean_of, indep)), tuple(map(mean_of, mokd)),
                                 indep_text, tuple(map(format_stat, mokd)))
        rows.append(row)
        if paper1 or paper2:
            paper = paper_numbers("mokd_table1", notes) if paper is None else paper
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
    paper = paper_numbers("mokd_table3", notes)
    if paper is None:
        return []
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
                "Source": setting_label(dataset, epochs, tag)}
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


register_table("mokd_table1", mokd_table1, lambda runs: bool((runs.method == "mokd").any()),
               "MOKD Table 1: Independent (DINO) vs MOKD per backbone pair, k-NN and linear")
register_table("mokd_table3", mokd_table3, lambda runs: False,
               "MOKD Table 3: MCL and MOKD pairs and each net alone (DINO), with the paper's SSL-KD rows")
