"""MCL's table layouts: Table 1/3 (cohorts of identical networks), Table 2 (pairs of different networks) and
Table 6 (the loss-term ablation of layer-wise MCL), test top-1 with methods as columns. Table 4 is in eval_tables."""

from __future__ import annotations

import math

import pandas as pd

from sslkd.core.rundir import RunDir
from sslkd.errors import UserError
from sslkd.report.core import (Stat, backbone_label, blank_missing, format_stat, paper_numbers, register_table,
                               setting_label)
from sslkd.report.records import strategy_options


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
    frame["paper_name"] = blank_missing(frame.paper_name)
    frame["tag"] = blank_missing(frame.tag)
    frame["cohort"] = frame.run_dir.map(frame.groupby("run_dir").backbone.agg(tuple))
    return frame


def _mcl_paper(name: str, notes: list[str]) -> pd.DataFrame:
    """An MCL paper table; empty outside a source checkout, which the callers' ``len(paper)`` skips."""
    paper = paper_numbers(name, notes)
    return pd.DataFrame() if paper is None else paper


def _paper_cell(rows: pd.DataFrame) -> str:
    return "n/a" if rows.empty else f"{rows.top1.iloc[0]:.2f} +- {rows['std'].iloc[0]:.2f}"


def _mcl_setting(frame: pd.DataFrame) -> str:
    first = frame.iloc[0]
    return setting_label(first.dataset, int(first.epochs), first.tag)


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
    """The MCL loss terms an lmcl run switched on (its ``strategy.terms``), in MCL Table 6's column order."""
    terms = strategy_options(run_dir).get("terms") or ["vcl", "soft_vcl", "icl", "soft_icl"]
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
