"""SDSSL's Table 1 layout (SimCLR, BYOL and MoCo v3 with and without self-distillation, per backbone) and the
framework labels its figures share (``sslkd eval multiexit``)."""

from __future__ import annotations

from typing import Callable

import pandas as pd

from sslkd.errors import UserError
from sslkd.report.core import (PROTOCOLS, RANDOM_INIT, Stat, backbone_label, blank_missing, format_delta, format_stat,
                               format_value, mean_of, paper_numbers, register_table, setting_label)
from sslkd.report.records import strategy_options


SDSSL_BASES = {"simclr": "SimCLR", "byol": "BYOL", "mocov3": "MoCo v3"}
SDSSL_FRAMEWORKS = ("SimCLR", "SD-SimCLR", "BYOL", "SD-BYOL", "MoCo v3", "SD-MoCo v3")
SDSSL_BACKBONES = ("ViT-S/32", "ViT-S/16", "ViT-B/16")
SDSSL_PAPER_SOURCE = "paper: ImageNet, 300 ep (SDSSL Table 1)"


def framework_label(method: str, options) -> str:
    """How SDSSL's figures and Table 1 name a run: ``MoCo v3``, ``SD-MoCo v3``, ``BYOL``, ``SD-SimCLR``, ... An
    sdssl run that distils no layer and has no predictor loss is its base. ``options``: the run's strategy options
    (a mapping as recorded in summary.json or config.yaml, or the options dataclass)."""
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
    """The SDSSL Table 1 row of a run (``framework_label`` of its strategy options); None for other methods (the
    ``simclr`` strategy is DoGo's SimCLR, not SDSSL's) and for an sdssl run that distils no layer but keeps BYOL's or
    MoCo v3's predictor loss, which is neither the base nor SD."""
    if method in ("byol", "mocov3"):
        return SDSSL_BASES[method]
    if method != "sdssl":
        return None
    options = strategy_options(run_dir)
    if options.get("layers") == [] and options.get("base") != "simclr" and options.get("beta") != 0:
        return None
    return framework_label(method, options)


def sdssl_table1(runs: pd.DataFrame) -> pd.DataFrame:
    """SDSSL Table 1: final-layer k-NN and linear top-1 of SimCLR, BYOL and MoCo v3 with and without SDSSL, one
    column pair per backbone (the paper backbone a proxy stands in for, else its identity). Each SD row's cells add
    the change over its base row; the paper's row follows each of ours where the runs carry a ``paper_name``."""
    runs = runs.assign(tag=blank_missing(runs.tag), paper_name=blank_missing(runs.paper_name))
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
    paper = paper_numbers("sdssl_table1", notes) if any(paper_of.values()) else None
    if paper is not None:
        notes.append("paper rows are ImageNet numbers for the backbones ours stand in for: compare the changes")

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
            return mean_of(stat), format_stat(stat)

        if epochs == 0:  # untrained runs (a proxy table's floor) are one row, whatever framework they were built as
            floors.append(row(RANDOM_INIT, setting_label(dataset, 0, tag), ours))
            continue
        for framework in SDSSL_FRAMEWORKS:
            rows.append(row(framework, setting_label(dataset, int(epochs), tag), ours))
            if paper is not None:
                rows.append(row(framework, SDSSL_PAPER_SOURCE, printed))
    table = pd.DataFrame(rows + floors, columns=["Framework", "Source", *(f"{c} {label}" for c in columns
                                                                          for _, label, _ in PROTOCOLS)])
    table.attrs = {"title": "SDSSL Table 1: final-layer k-NN and linear top-1 (%), with and without self-distillation",
                   "notes": list(dict.fromkeys(notes))}
    return table


register_table("sdssl_table1", sdssl_table1, lambda runs: bool((runs.method == "sdssl").any()),
               "SDSSL Table 1: SimCLR/BYOL/MoCo v3 with and without SDSSL, k-NN and linear per backbone")
