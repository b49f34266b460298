"""The layout for any runs (``runs``): one row per method, config file, setting and member. The baseline tables
(v2/v3 baselines, the quickstart) and every reproduced table's runs and random-init floors use it."""

from __future__ import annotations

import pandas as pd

from sslkd.report.core import (FLOOR_MARK, NA, Stat, at_or_below_floor, backbone_label, blank_missing, format_stat,
                               mean_of, register_table)


def runs_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Any runs: one row per (method, config file, setting, member, backbone) with accuracies and wall time over
    seeds; the config file keeps apart runs of one method with different options (SD-BYOL and SD-SimCLR), the tag
    (with the variant of runs whose settings differ) runs of one config file. Where runs recorded their k-NN at step 0,
    a floor column follows the k-NN, and a k-NN mean at or below the floor's is marked."""
    keyed = runs.assign(tag=blank_missing(runs.tag), paper_name=blank_missing(runs.paper_name))
    floors = bool(runs.knn_floor.notna().any())
    keys = ["method", "config", "tag", "dataset", "epochs", "member", "backbone", "paper_name"]
    keyed = keyed.sort_values(["method", "config", "tag", "dataset", "epochs", "member_index"], kind="stable")
    rows = []
    for (method, config, tag, dataset, epochs, member, backbone, paper_name), group in keyed.groupby(
            keys, sort=False):
        wall = Stat.of(group.wall_time_s)
        knn, floor = Stat.of(group.knn_top1), Stat.of(group.knn_floor)
        below = epochs > 0 and at_or_below_floor(mean_of(knn), mean_of(floor))
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


register_table("runs", runs_table, lambda runs: True, "every run: method x member, accuracies over seeds")
