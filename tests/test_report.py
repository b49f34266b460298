"""Result records -> tables: statistics over seeds, MOKD Table 1 layout with paper numbers, renderers, errors."""

import io
import json
import math

import pandas as pd
import pytest
from rich.console import Console

from sslkd.errors import UserError
from sslkd.report import (
    TABLES,
    compare,
    compare_table,
    load_paper_numbers,
    load_runs,
    mokd_table1,
    mokd_table3,
    render,
    rich_table,
    runs_table,
)

CNN = {"backbone": "cifar_resnet20", "paper_name": "R50"}
VIT = {"backbone": "vit_tiny4", "paper_name": "ViT-S"}

DINO_CNN_KNN, DINO_CNN_LINEAR = [40.0, 41.0, 42.0], [50.0, 52.0, 54.0]
DINO_VIT_KNN = [30.0, 32.0, 37.0]
MOKD_CNN_KNN, MOKD_CNN_LINEAR = [42.5, 43.5, 44.5], [51.0, 51.0, 51.0]
MOKD_VIT_KNN = [34.0, 35.0, 39.0]


def write_run(run_dir, method, seed, members, epochs=30, dataset="cifar10_subset", tag=None, wall=600.0,
              config_file=None):
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("method: x\n")
    summary = {"method": method, "dataset": dataset, "seed": seed, "epochs": epochs, "wall_time_s": wall,
               "config_file": config_file, "tag": tag, "members": members,
               "protocol": {"knn_k": 20, "knn_temperature": 0.07}}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    return run_dir


def member(base, knn, linear=None):
    return {**base, "params_m": 0.3, "knn_top1": knn, "knn": {"20": knn}, "linear_top1": linear}


@pytest.fixture
def sweep(tmp_path):
    """dino runs of two backbones x 3 seeds and mokd runs x 3 seeds, as a parent folder of run folders."""
    root = tmp_path / "runs"
    for seed in range(3):
        write_run(root / f"dino_cnn_s{seed}", "dino", seed,
                  {"student": member(CNN, DINO_CNN_KNN[seed], DINO_CNN_LINEAR[seed])})
        write_run(root / f"dino_vit_s{seed}", "dino", seed, {"student": member(VIT, DINO_VIT_KNN[seed])})
        write_run(root / "mokd" / f"s{seed}", "mokd", seed,
                  {"cnn": member(CNN, MOKD_CNN_KNN[seed], MOKD_CNN_LINEAR[seed]),
                   "vit": member(VIT, MOKD_VIT_KNN[seed])}, wall=1200.0)
    return root


def test_load_runs_one_row_per_member_searching_parents(sweep):
    runs = load_runs([sweep, sweep / "mokd" / "s0"])
    assert len(runs) == 3 + 3 + 3 * 2
    assert list(runs.columns[:5]) == ["method", "dataset", "seed", "epochs", "member"]
    mokd = runs[(runs.method == "mokd") & (runs.seed == 0)].sort_values("member_index")
    assert list(mokd.member) == ["cnn", "vit"] and list(mokd.paper_name) == ["R50", "ViT-S"]
    assert math.isnan(mokd.linear_top1.iloc[1])
    assert runs.attrs["unfinished"] == []


def test_missing_or_broken_summary_is_a_user_error(tmp_path):
    unfinished = tmp_path / "run"
    (unfinished / "checkpoints").mkdir(parents=True)
    with pytest.raises(UserError, match="has no summary.json: is the run finished.*--resume .*run"):
        load_runs([unfinished])
    with pytest.raises(UserError, match="does not exist"):
        load_runs([tmp_path / "nowhere"])
    (unfinished / "summary.json").write_text("{not json")
    with pytest.raises(UserError, match="no readable summary.json"):
        load_runs([unfinished])
    (unfinished / "summary.json").write_text(json.dumps({"method": "dino"}))
    with pytest.raises(UserError, match="missing or empty: dataset, seed, epochs, members"):
        load_runs([unfinished])


def test_unfinished_runs_inside_a_parent_are_left_out_and_noted(sweep):
    (sweep / "mokd" / "s3").mkdir()
    (sweep / "mokd" / "s3" / "config.yaml").write_text("method: mokd\n")
    table = compare_table([sweep])
    assert any("not finished" in note and "s3" in note for note in table.attrs["notes"])


def test_mokd_table1_means_stds_counts_and_changes(sweep):
    table = mokd_table1(load_runs([sweep]))
    ours, paper = table.iloc[0], table.iloc[1]
    assert ours["Net1"] == "cifar_resnet20 (as R50)" and ours["Net2"] == "vit_tiny4 (as ViT-S)"
    assert ours["Source"] == "ours: cifar10_subset, 30 ep"
    # dino cnn 40/41/42; dino vit 30/32/37 -> std sqrt(13) = 3.606; mokd cnn 42.5/43.5/44.5; vit 34/35/39 -> sqrt(7)
    assert ours["k-NN Indep. Net1"] == "41.0 +- 1.0 (3)"
    assert ours["k-NN Indep. Net2"] == "33.0 +- 3.6 (3)"
    assert ours["k-NN MOKD Net1"] == "43.5 +- 1.0 (3)"
    assert ours["k-NN MOKD Net2"] == "36.0 +- 2.6 (3)"
    assert ours["k-NN Δ Net1"] == "+2.5" and ours["k-NN Δ Net2"] == "+3.0"
    assert ours["Linear Indep. Net1"] == "52.0 +- 2.0 (3)" and ours["Linear MOKD Net1"] == "51.0 +- 0.0 (3)"
    assert ours["Linear Δ Net1"] == "-1.0"
    assert ours["Linear Indep. Net2"] == ours["Linear MOKD Net2"] == ours["Linear Δ Net2"] == "n/a"
    # the paper's ImageNet numbers for R50 / ViT-S follow ours
    assert (paper["Net1"], paper["Net2"]) == ("R50", "ViT-S") and "paper: ImageNet" in paper["Source"]
    assert [paper[f"k-NN {c}"] for c in ("Indep. Net1", "Indep. Net2", "MOKD Net1", "MOKD Net2", "Δ Net1",
                                         "Δ Net2")] == ["62.8", "69.9", "67.1", "70.8", "+4.3", "+0.9"]
    assert [paper[f"Linear {c}"] for c in ("Indep. Net1", "Indep. Net2", "MOKD Net1", "MOKD Net2", "Δ Net1",
                                           "Δ Net2")] == ["72.1", "73.8", "74.1", "74.4", "+2.0", "+0.6"]
    assert len(table) == 2


def test_mokd_table1_member_order_epoch_fallback_and_single_seed(tmp_path):
    write_run(tmp_path / "dino_vit", "dino", 0, {"student": member(VIT, 31.0)}, epochs=50)
    write_run(tmp_path / "mokd", "mokd", 0, {"vit": member(VIT, 33.0), "cnn": member(CNN, 40.0)})
    table = mokd_table1(load_runs([tmp_path]))
    ours, paper = table.iloc[0], table.iloc[1]
    assert ours["Net1"].startswith("vit_tiny4") and ours["k-NN MOKD Net1"] == "33.0 (1)"
    assert ours["k-NN Indep. Net1"] == "31.0 (1) [50 ep]" and ours["k-NN Δ Net1"] == "+2.0"
    assert ours["k-NN Indep. Net2"] == "n/a"
    notes = " ".join(table.attrs["notes"])
    assert "no 30-epoch dino run of vit_tiny4" in notes and "no dino run of cifar_resnet20" in notes
    # the paper pair is R50-ViT-S: swapped into our member order
    assert (paper["Net1"], paper["k-NN MOKD Net1"], paper["k-NN MOKD Net2"]) == ("ViT-S", "70.8", "67.1")


def test_mokd_table3_rows_for_independent_mcl_and_mokd_then_the_papers_methods(sweep):
    for seed, (cnn, vit) in enumerate(((38.0, 30.0), (40.0, 31.0))):
        write_run(sweep / "mcl" / f"s{seed}", "mcl", seed, {"cnn": member(CNN, cnn, cnn + 5), "vit": member(VIT, vit)})
    table = mokd_table3(load_runs([sweep])).set_index(["Method", "Source"])
    ours = "ours: cifar10_subset, 30 ep"
    assert table.loc[("Independent (DINO alone)", ours), "k-NN Net1"] == "41.0 +- 1.0 (3)"
    assert table.loc[("MCL", ours), "k-NN Net1"] == "39.0 +- 1.4 (2)"
    assert table.loc[("MCL", ours), "Linear Net1"] == "44.0 +- 1.4 (2)"
    assert table.loc[("MCL", ours), "Linear Net2"] == "n/a"
    assert table.loc[("MOKD", ours), "k-NN Net2"] == "36.0 +- 2.6 (3)"
    paper = table.xs("paper: ImageNet, linear (MOKD Table 3)", level="Source")
    assert list(paper.index) == ["Supervised", "SEED", "ReKD", "MCL", "DisCo", "MOKD"]
    assert (paper.loc["MOKD", "Linear Net1"], paper.loc["MOKD", "Linear Net2"]) == ("72.0", "63.4")
    assert (paper.loc["MCL", "Net1"], paper.loc["MCL", "Linear Net2"]) == ("R50", "51.4")
    with pytest.raises(UserError, match="no mcl or mokd runs"):
        mokd_table3(load_runs([sweep / "dino_cnn_s0"]))


def test_runs_table_and_auto_choice(sweep):
    runs = load_runs([sweep])
    table = runs_table(runs)
    cnn = table[(table.Method == "mokd") & (table.Member == "cnn")].iloc[0]
    assert cnn["k-NN top-1"] == "43.5 +- 1.0 (3)" and cnn["Seeds"] == "3" and cnn["Wall time (min)"] == "20.0"
    assert list(compare_table([sweep]).columns) == list(mokd_table1(runs).columns)
    only_dino = [sweep / "dino_cnn_s0", sweep / "dino_cnn_s1"]
    assert list(compare_table(only_dino).columns) == list(table.columns)
    with pytest.raises(UserError, match="no mokd runs"):
        compare(only_dino, table="mokd_table1")


def test_runs_table_keeps_config_files_of_one_method_apart(tmp_path):
    for seed in range(2):
        for name, knn in (("sd_byol", 30.0 + seed), ("sd_simclr", 40.0 + seed)):
            write_run(tmp_path / name / f"seed{seed}", "sdssl", seed, {"vit": member(VIT, knn)},
                      config_file=f"zoo_configs/sdssl/{name}.yaml")
    table = runs_table(load_runs([tmp_path])).set_index("Config")
    assert table.loc["sd_byol", "k-NN top-1"] == "30.5 +- 0.7 (2)"
    assert table.loc["sd_simclr", "k-NN top-1"] == "40.5 +- 0.7 (2)"
    assert set(table.Seeds) == {"2"}


def test_unknown_table_or_format_is_a_user_error(sweep):
    with pytest.raises(UserError, match="unknown table 'mokd_tabel1'.*Known: .*dogo_table1, .*mokd_table1, .*runs, .*or auto"):
        compare([sweep], table="mokd_tabel1")
    with pytest.raises(UserError, match="unknown format 'html'"):
        compare([sweep], fmt="html")
    assert "mokd_table1" in TABLES and "runs" in TABLES


def test_render_md_csv_latex_and_rich(sweep):
    table = compare_table([sweep])
    md = compare([sweep], fmt="md")
    assert "| Net1 | Net2 | Source | k-NN Indep. Net1 |" in md
    assert "| cifar_resnet20 (as R50) | vit_tiny4 (as ViT-S) | ours: cifar10_subset, 30 ep | 41.0 +- 1.0 (3) |" in md
    assert "- paper rows are ImageNet numbers" in md
    back = pd.read_csv(io.StringIO(render(table, "csv")), dtype=str, keep_default_na=False)
    assert back.equals(table.astype(str))
    latex = render(table, "latex")
    assert r"\begin{tabular}" in latex and r"\bottomrule" in latex
    assert r"cifar\_resnet20 (as R50)" in latex and r"41.0 $\pm$ 1.0 (3)" in latex and r"$\Delta$" in latex
    assert latex.count(r" \\") == len(table) + 1
    shown = rich_table(table, "MOKD")
    assert shown.row_count == 2 and len(shown.columns) == len(table.columns)
    console = Console(file=io.StringIO(), width=400)
    console.print(shown)
    assert "62.8" in console.file.getvalue()


def test_paper_numbers_transcribed():
    t1 = load_paper_numbers("mokd_table1")
    assert list(t1.columns) == ["net1", "net2", "protocol", "setting", "member", "top1"] and len(t1) == 12 * 8

    def value(net1, net2, protocol, setting, member):
        hit = t1[(t1.net1 == net1) & (t1.net2 == net2) & (t1.protocol == protocol) & (t1.setting == setting)
                 & (t1.member == member)]
        return hit.top1.item()

    assert [value("R50", "ViT-S", "knn", s, m) for s in ("independent", "mokd") for m in ("net1", "net2")] == [
        62.8, 69.9, 67.1, 70.8]
    assert value("R50", "ViT-B", "linear", "mokd", "net1") == 75.6
    # an Independent number belongs to a backbone: the same wherever the backbone appears
    indep = t1[t1.setting == "independent"].assign(backbone=lambda d: d.net1.where(d.member == "net1", d.net2))
    assert indep.groupby(["protocol", "backbone"]).top1.nunique().eq(1).all()

    t2 = load_paper_numbers("mokd_table2")
    assert list(t2.columns) == ["method", "backbone", "batch_size", "epochs", "knn", "linear"] and len(t2) == 29
    simclr = t2[(t2.method == "SimCLR") & (t2.backbone == "R50")].iloc[0]
    assert math.isnan(simclr.knn) and simclr.linear == 69.3
    mokd_t2 = t2[t2.method.str.startswith("MOKD") & (t2.epochs == 100)]
    for row in mokd_t2.itertuples():
        pair = row.method.split("(")[1].rstrip(")").split("-", 1)
        net = "net1" if row.backbone == pair[0] else "net2"
        assert (row.knn, row.linear) == (value(*pair, "knn", "mokd", net), value(*pair, "linear", "mokd", net))

    t3 = load_paper_numbers("mokd_table3")
    assert list(t3.columns) == ["method", "pair", "member", "backbone", "linear"] and len(t3) == 6 * 8
    mokd_t3 = t3[(t3.method == "MOKD") & (t3.pair == "R50-R34")]
    assert list(mokd_t3.linear) == [72.3, 67.0] and list(mokd_t3.member) == ["net1", "net2"]
    for row in t3[t3.method == "MOKD"].itertuples():
        assert row.linear == value(*row.pair.split("-"), "linear", "mokd", row.member)
    assert t3[(t3.method == "ReKD") & (t3.pair == "R50-R34")].linear.isna().all()
    with pytest.raises(UserError, match="unknown paper table 'mokd_table99'. Known: .*dogo_table1, .*mokd_table1"):
        load_paper_numbers("mokd_table99")


# ------------------------------------------------------------------------------ grouping, floors, provenance
def write_configured_run(run_dir, seed, changes=None, knn=50.0, floor=None, world_size=None):
    """A dino run whose resolved config is the default changed by ``changes`` (a nested mapping); its seed and
    output_dir differ from run to run, as they do in real sweeps."""
    import yaml

    from sslkd.config import deep_merge

    write_run(run_dir, "dino", seed, {"student": {**member(CNN, knn), "random_init": floor and {"knn_top1": floor}}})
    config = deep_merge({"method": "dino", "members": {"cnn": {"backbone": "cifar_resnet20",
                                                               "optimizer": {"name": "sgd"}}},
                         "train": {"seed": seed}, "output_dir": str(run_dir)}, changes or {})
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    if world_size is not None:
        summary = json.loads((run_dir / "summary.json").read_text())
        summary["provenance"] = {"sslkd_version": "0.1.0", "git_revision": {"commit": "a" * 40, "dirty": True},
                                 "torch_version": "2.4.0", "world_size": world_size, "device_type": "cpu",
                                 "precision": "fp32"}
        (run_dir / "summary.json").write_text(json.dumps(summary))


def test_compare_keeps_runs_of_different_settings_apart_and_says_what_differs(tmp_path):
    root = tmp_path / "runs"
    write_configured_run(root / "default_s0", 0, None, knn=70.0)
    write_configured_run(root / "default_s1", 1, None, knn=72.0)
    write_configured_run(root / "neg_lr", 0, {"members": {"cnn": {"optimizer": {"lr": 0.5}}}}, knn=60.0)
    write_configured_run(root / "big_batch", 0, {"train": {"batch_size": 1024}}, knn=80.0)
    table = runs_table(load_runs([root]))
    assert len(table) == 3, table.Method.tolist()
    labels = " | ".join(table.Method)
    assert "train.batch_size=1024" in labels and "members.cnn.optimizer.lr=0.5" in labels
    pooled = table[table["k-NN top-1"] == "71.0 +- 1.4 (2)"]
    assert len(pooled) == 1 and pooled.Seeds.iloc[0] == "2"


def test_a_run_saved_before_lr_scaling_existed_pools_with_one_that_saved_its_linear_default(tmp_path):
    write_configured_run(tmp_path / "old", 0, None, knn=70.0)
    write_configured_run(tmp_path / "new", 1, {"members": {"cnn": {"optimizer": {"lr_scaling": "linear"}}}}, knn=72.0)
    write_configured_run(tmp_path / "unscaled", 2, {"members": {"cnn": {"optimizer": {"lr_scaling": "none"}}}},
                         knn=60.0)
    table = runs_table(load_runs([tmp_path]))
    assert sorted(table["k-NN top-1"]) == ["60.0 (1)", "71.0 +- 1.4 (2)"]
    assert any("lr_scaling=none" in label for label in table.Method)


def test_a_run_saved_before_a_strategy_option_existed_pools_with_one_that_saved_its_default(tmp_path):
    write_configured_run(tmp_path / "old", 0, {"strategy": {"teacher_temp": 0.04}}, knn=70.0)
    write_configured_run(tmp_path / "new", 1, {"strategy": {"teacher_temp": 0.04, "layer_distillation": None}},
                         knn=72.0)
    write_configured_run(tmp_path / "hot", 2, {"strategy": {"teacher_temp": 0.07}}, knn=60.0)
    table = runs_table(load_runs([tmp_path]))
    assert sorted(table["k-NN top-1"]) == ["60.0 (1)", "71.0 +- 1.4 (2)"]
    assert any("teacher_temp=0.07" in label for label in table.Method)


def test_runs_that_differ_only_in_loader_workers_are_one_setting(tmp_path):
    write_configured_run(tmp_path / "one", 0, {"data": {"num_workers": 1}}, knn=70.0)
    write_configured_run(tmp_path / "two", 1, {"data": {"num_workers": 2}}, knn=72.0)
    assert runs_table(load_runs([tmp_path]))["k-NN top-1"].tolist() == ["71.0 +- 1.4 (2)"]


def test_compare_tells_one_process_from_two(tmp_path):
    write_configured_run(tmp_path / "one", 0, None, knn=70.0, world_size=1)
    write_configured_run(tmp_path / "two", 1, None, knn=60.0, world_size=2)
    table = runs_table(load_runs([tmp_path]))
    assert sorted(table.Method) == ["dino [processes=1]", "dino [processes=2]"]
    assert set(table["k-NN top-1"]) == {"70.0 (1)", "60.0 (1)"}


def test_a_repeated_seed_is_flagged_and_not_averaged(tmp_path):
    write_configured_run(tmp_path / "a", 0, None, knn=70.0)
    write_configured_run(tmp_path / "b", 0, None, knn=50.0)
    write_configured_run(tmp_path / "c", 1, None, knn=72.0)
    table = compare_table([tmp_path], "runs")
    assert table["k-NN top-1"].tolist() == ["71.0 +- 1.4 (2)"] and table.Seeds.tolist() == ["2"]
    assert any(note.startswith("repeated seed 0:") and str(tmp_path / "b") in note for note in table.attrs["notes"])


def test_floors_are_shown_and_a_member_at_or_below_its_floor_is_warned_about(tmp_path):
    write_configured_run(tmp_path / "s0", 0, None, knn=65.8, floor=90.6)
    write_configured_run(tmp_path / "s1", 1, None, knn=66.2, floor=90.2)
    table = compare_table([tmp_path], "runs")
    assert table["k-NN random init"].tolist() == ["90.4 +- 0.3 (2)"]
    assert table["k-NN top-1"].iloc[0].endswith("[<= floor]")
    warnings = [note for note in table.attrs["notes"] if note.startswith("WARNING")]
    assert warnings == ["WARNING: student of dino ends at or below its random initialisation in 2 of 2 seeds (k-NN "
                        "66.0, floor 90.4): it learned nothing the k-NN can see"]


def test_runs_without_floors_keep_the_old_columns(sweep):
    assert "k-NN random init" not in runs_table(load_runs([sweep])).columns


def test_paper_tables_note_the_floors(sweep):
    summary_path = sweep / "mokd" / "s0" / "summary.json"
    summary = json.loads(summary_path.read_text())
    summary["members"]["cnn"]["random_init"] = {"knn_top1": 30.0}
    summary_path.write_text(json.dumps(summary))
    notes = compare_table([sweep], "mokd_table1").attrs["notes"]
    assert any(note.startswith("random-init floors") and "mokd cnn (cifar_resnet20) 30.0 (1)" in note
               for note in notes)


def test_compare_shows_provenance_when_asked(tmp_path):
    write_configured_run(tmp_path / "one", 0, None, world_size=2)
    notes = compare_table([tmp_path], "runs", provenance=True).attrs["notes"]
    assert "provenance: sslkd 0.1.0 @ aaaaaaa+dirty, torch 2.4.0, cpu fp32, 2 processes (1 run)" in notes


def test_plots_draw_the_floor_and_warn_when_a_member_ends_below_it(tmp_path):
    from sslkd.report.plots import below_floor, curves, floors, plot_run, read_metrics

    run = tmp_path / "run"
    run.mkdir()
    records = [{"epoch": 0, "step": 0, "knn/cnn": 90.6, "knn/vit": 40.0},
               {"step": 5, "epoch": 0, "loss": 2.0, "lr/cnn": 0.1, "images_per_s": 10.0},
               {"epoch": 1, "step": 10, "knn/cnn": 65.8, "knn/vit": 55.0}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    data = curves(read_metrics(run))
    assert floors(read_metrics(run)) == {"cnn": 90.6, "vit": 40.0}
    assert data["knn"]["cnn"] == ([0, 1], [90.6, 65.8])  # the floor is the curve's first point
    assert below_floor(data, floors(read_metrics(run))) == ["cnn"]
    assert {p.name for p in plot_run(run)} == {"losses.png", "lr.png", "knn.png"}


def test_a_run_without_a_recorded_process_count_goes_with_the_others(tmp_path):
    write_configured_run(tmp_path / "old", 0, knn=70.0)
    write_configured_run(tmp_path / "new", 1, knn=72.0, world_size=1)
    assert runs_table(load_runs([tmp_path]))["k-NN top-1"].tolist() == ["71.0 +- 1.4 (2)"]
