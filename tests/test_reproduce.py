"""sslkd reproduce (sslkd.reproduce; tools/reproduce.py calls it): the table files in tables/, the table list, and
a tiny table on digits run from scratch, interrupted, and run again without redoing what finished (an interrupted
training is resumed, recorded evaluations are skipped)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import tiny_overrides

from sslkd import reproduce
from sslkd.cli import main as cli

ROOT = Path(__file__).resolve().parents[1]


def test_list_names_every_table_with_its_costs(capsys):
    lines = []
    assert reproduce.main(["--list"], log=lines.append) == 0
    text = "\n".join(lines)
    for name in ("mokd_table1", "mokd_table4", "mokd_table5", "mokd_table9", "mokd_fig5", "dogo_table1",
                 "dogo_table2", "dogo_table3", "dogo_fig3", "mcl_table2", "mcl_table4", "sdssl_table1"):
        assert f"\n{name} " in f"\n{text}"
    assert text.count("paper scale:") == text.count("proxy scale:") == len(reproduce.load_tables())
    assert cli(["reproduce", "--list"]) == 0 and capsys.readouterr().out == text + "\n"
    script = subprocess.run([sys.executable, str(ROOT / "tools" / "reproduce.py"), "--list"], capture_output=True,
                            text=True, check=True)
    assert script.stdout == text + "\n"  # the script is the same command


def test_every_table_file_loads_and_validates():
    from sslkd.report import TABLES

    tables = reproduce.load_tables()  # each file checked: its keys and types, its configs exist, its names resolve
    assert sorted(tables) == sorted(p.stem for p in (ROOT / "tables").glob("*.yaml"))
    assert all(table.compare in TABLES for table in tables.values())


@pytest.mark.parametrize("change, expected", [
    ({"shared": "x"}, "unknown key(s) shared in"),
    ({"evaluations": [{"key": "knn", "args": ["knn"], "proxy_arg": ["--epochs", "1"]}]},
     "unknown key(s) proxy_arg in {spec}: evaluations[0]; known: args, configs,"),
    ({"evaluations": [{"args": ["knn"]}]}, "{spec}: evaluations[0] lacks key"),
    ({"configs": ["zoo_configs/dino/no_such.yaml"]}, "config file(s) zoo_configs/dino/no_such.yaml do not exist"),
    ({"configs": "zoo_configs/dino/proxy_v3_cifar10_subset_resnet20.yaml"}, "{spec}: configs must be a list of str"),
    ({"evaluations": [{"key": "knn", "args": ["knn"], "configs": ["dino/proxy_v3_cifar10_subset_vit"]}]},
     "evaluation knn names dino/proxy_v3_cifar10_subset_vit, not one of the table's configs"),
    ({"claims": [{"text": "a", "treated": ["dino/proxy_v3_cifar10_subset_resnet20"]}]},
     "{spec}: claims[0]: treated must be a list of 2 values"),
    ({"proxy_minutes": "ten"}, "{spec}: proxy_minutes must be float, got 'ten'"),
    ({"claims": [{"text": "a", "treated": ["dino/proxy_v3_cifar10_subset_resnet20", "cnn"], "metric": "knn_top5"}]},
     "{spec}: claim metric(s) knn_top5 unknown; use one of knn_top1, test_top1"),
])
def test_table_file_mistakes_are_one_line(capsys, tmp_path, change, expected):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"name": "t", "configs": ["zoo_configs/dino/proxy_v3_cifar10_subset_resnet20.yaml"],
                                    **change}))
    assert cli(["reproduce", "--spec", str(spec), "--proxy"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sslkd: error: "), err
    assert expected.format(spec=spec) in err[0]


def test_tables_need_a_checkout_and_an_order(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(reproduce, "ROOT", tmp_path)  # an installed wheel: no tables/ or zoo_configs/ beside it
    assert reproduce.main(["--list"]) == 2
    assert "reproduce: error: no tables/ or zoo_configs/ in" in capsys.readouterr().err
    (tmp_path / "zoo_configs").mkdir()
    shutil.copytree(ROOT / "tables", tmp_path / "tables")
    (tmp_path / "tables" / "quickstart.yaml").rename(tmp_path / "tables" / "quickstart2.yaml")
    assert cli(["reproduce", "mokd_table1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and ("tables/quickstart2.yaml is not in order.txt; order.txt names quickstart, but there is "
                              "no tables/quickstart.yaml") in err[0]


def _actions(lines):
    return [line.split()[0] for line in lines
            if line.split() and line.split()[0] in ("skip", "restore", "train", "resume", "eval")]


def test_tiny_table_resumes_and_skips_what_finished(tmp_path, monkeypatch):
    (tmp_path / "dino").mkdir()
    config = tmp_path / "dino" / "tiny_dino.yaml"
    config.write_text("method: dino\n")
    other = tmp_path / "dino" / "tiny_dino_b.yaml"
    other.write_text("method: dino\n")
    overrides = tiny_overrides("dino", epochs=2) + ["eval.knn_k=[5, 20]"]
    spec = {
        "name": "tiny_table", "about": "a tiny DINO table on digits",
        "configs": [str(config), str(other)], "random_init": [str(config)], "overrides": overrides,
        "compare": "runs",
        "evaluations": [
            {"key": "linear_dogo", "args": ["linear", "--protocol", "dogo"], "proxy_args": ["--epochs", "1"]},
            {"key": "consistency", "args": ["consistency"], "configs": ["dino/tiny_dino"], "member": "cnn",
             "other": "dino/tiny_dino_b", "other_member": "cnn"},
            {"key": "multiexit_knn", "args": ["multiexit", "--protocol", "knn", "--layers", "1,final"],
             "per_table": True},
        ],
        "claims": [{"text": "a above its floor", "treated": ["dino/tiny_dino", "cnn"], "threshold": 10},
                   {"text": "a beats b", "treated": ["dino/tiny_dino", "cnn"], "baseline": ["dino/tiny_dino_b", "cnn"]}],
    }
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    out, results = tmp_path / "runs", tmp_path / "results"

    # an interrupted run: its first epoch is checkpointed, it has no summary.json
    from sslkd.config import load_config
    from sslkd.engine.trainer import Trainer

    cfg = load_config(None, str(other), overrides + ["train.seed=0"])
    assert Trainer(cfg, out / "dino" / "tiny_dino_b" / "seed0").fit(stop_at_epoch=1) is None

    # the first session is interrupted during its first evaluation
    real = reproduce.sslkd

    def interrupt_evaluations(argv):
        if argv[0] == "eval":
            raise reproduce.Interrupted(" ".join(argv))
        real(argv)

    monkeypatch.setattr(reproduce, "sslkd", interrupt_evaluations)
    argv = ["--spec", str(spec_file), "--proxy", "--seeds", "1", "--out", str(out), "--results", str(results)]
    interrupted = []
    assert reproduce.main(argv, log=interrupted.append) == 130
    assert _actions(interrupted) == ["train", "train", "resume", "eval"]  # floor, a, the interrupted b; stop
    # what finished is recorded and tabled already (a long table commits its records as they come)
    assert (results / "proxy_tiny_table" / "dino" / "tiny_dino" / "seed0" / "summary.json").is_file()
    assert "no interval" in (results / "tiny_table_proxy_verdicts.md").read_text()
    monkeypatch.setattr(reproduce, "sslkd", real)

    first = []
    assert reproduce.main(argv, log=first.append) == 0
    # trainings were done before; linear probe of a, b and the floor; consistency of a with b (the floor of a has
    # no partner floor in this table, so it is skipped with a note)
    assert _actions(first) == ["skip"] * 3 + ["eval"] * 4 + ["skip"] + ["eval"]
    summaries = {p: p.read_text() for p in out.rglob("summary.json")}
    assert len(summaries) == 3
    assert json.loads((out / "dino" / "tiny_dino_b" / "seed0" / "summary.json").read_text())["epochs"] == 2
    recorded = json.loads((out / "dino" / "tiny_dino" / "seed0" / "summary.json").read_text())
    assert set(recorded["evals"]) == {"linear_dogo", "consistency"}
    assert recorded["members"]["cnn"]["linear_top1"] == recorded["evals"]["linear_dogo"]["cnn"]["linear_top1"]
    assert set(json.loads((out / "random_init" / "dino" / "tiny_dino" / "summary.json").read_text())["evals"]) == {
        "linear_dogo"}  # the floor has no partner of its own: no consistency

    # one multi-exit command over both runs and the floor, which is labelled as such
    assert not list(results.glob("*.partial"))
    rows = pd.read_csv(results / "tiny_table_proxy_multiexit_knn" / "multiexit_knn_rows.csv")
    assert sorted(rows.framework.unique()) == ["dino", "random init"] and len(rows) == 3 * 2

    second = []
    assert reproduce.main(argv, log=second.append) == 0
    assert not [line for line in second if line.startswith(("train", "resume", "eval"))]
    assert {p: p.read_text() for p in out.rglob("summary.json")} == summaries

    # a per-table evaluation made over other runs (e.g. fewer seeds) is redone, and only it
    record = results / "tiny_table_proxy_multiexit_knn" / "reproduce.json"
    record.write_text(json.dumps({**json.loads(record.read_text()), "runs": ["dino/tiny_dino/seed0"]}))
    third = []
    assert reproduce.main(argv, log=third.append) == 0
    assert [line.split()[1] for line in third if line.startswith(("train", "resume", "eval"))] == ["multiexit_knn"]

    # the claims: a against its own step-0 floor (paired) and against b (Welch), one seed so no interval yet
    a = json.loads((out / "dino" / "tiny_dino" / "seed0" / "summary.json").read_text())["members"]["cnn"]
    b = json.loads((out / "dino" / "tiny_dino_b" / "seed0" / "summary.json").read_text())["members"]["cnn"]
    verdicts = (results / "tiny_table_proxy_verdicts.md").read_text()
    assert (f"| a above its floor | {a['knn_top1']:.2f} (n=1) | {a['random_init']['knn_top1']:.2f} (n=1) | "
            f"{a['knn_top1'] - a['random_init']['knn_top1']:+.2f} | - (paired t) | no interval") in verdicts
    assert f"| a beats b | {a['knn_top1']:.2f} (n=1) | {b['knn_top1']:.2f} (n=1) |" in verdicts
    assert "\n- k-NN top-1 (weighted, k=20) of the evaluated encoder; 'compared with'" in verdicts

    for name in ("tiny_table_proxy.md", "tiny_table_proxy.csv", "tiny_table_proxy_runs.md",
                 "tiny_table_proxy_random_init.md", "tiny_table_proxy_wall.md", "tiny_table_proxy_verdicts.md"):
        assert (results / name).is_file(), name
    for run in ("dino/tiny_dino/seed0", "dino/tiny_dino_b/seed0", "random_init/dino/tiny_dino"):
        for name in ("summary.json", "config.yaml", "metrics.jsonl"):
            assert (results / "proxy_tiny_table" / run / name).is_file()
    wall = (results / "tiny_table_proxy_wall.md").read_text()
    assert "| dino/tiny_dino/seed0 |" in wall and "**total**" in wall
    record = json.loads((results / "tiny_table_proxy_multiexit_knn" / "reproduce.json").read_text())
    assert record["runs"] == ["dino/tiny_dino/seed0", "dino/tiny_dino_b/seed0", "random_init/dino/tiny_dino"]
    seconds = record["wall_time_s"]
    assert f"| multiexit_knn over all runs | | {seconds / 60:.1f} |" in wall

    # a fresh clone has the records in results/ but no runs/: the tables are rebuilt from the records alone
    tables = {p.name: p.read_text() for p in results.glob("tiny_table_proxy*.*")}
    for path in results.glob("tiny_table_proxy*.*"):
        path.unlink()
    shutil.rmtree(out)
    records_only = ["--spec", str(spec_file), "--proxy", "--seeds", "1", "--results", str(results), "--tables-only"]
    assert reproduce.main(records_only, log=lambda _: None) == 0
    assert {p.name: p.read_text() for p in results.glob("tiny_table_proxy*.*")} == tables
    assert reproduce.main([*records_only[:4], "2", *records_only[5:]], log=lambda _: None) == 2  # no seed 1 records

    # ... and continued: every finished run is restored from its records, nothing is trained or evaluated again
    restored = []
    assert reproduce.main([*argv[:-2], "--results", str(results)], log=restored.append) == 0
    assert [line.split()[0] for line in restored if line.startswith(("restore", "train", "resume", "eval"))] == [
        "restore"] * 3
    assert {p.name: p.read_text() for p in results.glob("tiny_table_proxy*.*")} == tables


def test_compare_tables_a_table_file_from_its_records(tmp_path, capsys):
    """`sslkd compare --table NAME` prints what `sslkd reproduce NAME --tables-only` writes (same records, same
    layout); with run directories a table's name stands for its layout."""
    results = tmp_path / "results"
    shutil.copytree(ROOT / "results" / "proxy_quickstart", results / "proxy_quickstart")
    assert reproduce.main(["quickstart", "--proxy", "--tables-only", "--results", str(results)],
                          log=lambda _: None) == 0
    for fmt in ("md", "csv"):
        out = tmp_path / f"table.{fmt}"
        assert cli(["compare", "--table", "quickstart", "--results", str(results), "--format", fmt,
                    "--output", str(out)]) == 0
        assert out.read_text() == (results / f"quickstart_proxy.{fmt}").read_text()
    capsys.readouterr()
    runs = str(results / "proxy_quickstart")
    assert cli(["compare", runs, "--table", "v3_baselines"]) == 0  # its layout: runs
    by_name = capsys.readouterr().out
    assert cli(["compare", runs, "--table", "runs"]) == 0
    assert capsys.readouterr().out == by_name

    # a table whose records lack the runs its layout needs says which table's records they are
    shutil.copytree(ROOT / "results" / "proxy_v3_baselines" / "dino", results / "proxy_v3_baselines" / "dino")
    assert cli(["compare", "--table", "mokd_table1_v3", "--results", str(results)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sslkd: error: no mokd runs among"), err
    assert err[0].endswith("(the records of mokd_table1_v3 lack these runs so far: sslkd reproduce mokd_table1_v3 "
                           "--proxy makes them)")


@pytest.mark.parametrize("argv, expected", [
    (["--table", "runs"], "runs is a layout, not a table of tables/"),
    ([], "no run directories given"),
    (["--table", "v3_baselines", "--scale", "paper"], "v3_baselines has no paper-scale configs"),
    (["--table", "quickstart", "--results", "{tmp}"], "no records of quickstart in {tmp}/proxy_quickstart"),
    (["{tmp}", "--table", "mokd_tabel1"], "unknown table 'mokd_tabel1' (close: mokd_table1, "),
    (["{tmp}", "--table", "runs", "--scale", "paper"], "--scale and --results find a table's records in results/"),
])
def test_compare_table_mistakes_are_one_line(capsys, tmp_path, argv, expected):
    assert cli(["compare", *(arg.format(tmp=tmp_path) for arg in argv)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected.format(tmp=tmp_path) in err[0], err


def test_several_tables_train_seed_by_seed_share_runs_and_write_each_when_done(tmp_path, monkeypatch):
    root = tmp_path / "checkout"
    (root / "zoo_configs" / "dino").mkdir(parents=True)
    (root / "tables").mkdir()
    for stem in ("a", "b"):
        (root / "zoo_configs" / "dino" / f"tiny_{stem}.yaml").write_text("method: dino\n")
    for name, stems in (("first", ["a"]), ("second", ["a", "b"])):
        spec = {"name": name, "about": "tiny", "configs": [f"zoo_configs/dino/tiny_{s}.yaml" for s in stems],
                "overrides": tiny_overrides("dino"), "compare": "runs", "runs": "shared"}
        (root / "tables" / f"{name}.yaml").write_text(yaml.safe_dump(spec))
    (root / "tables" / "order.txt").write_text("first\nsecond\n")
    monkeypatch.setattr(reproduce, "ROOT", root)
    results, log = tmp_path / "results", []
    argv = ["first", "second", "--proxy", "--seeds", "2", "--results", str(results)]
    assert reproduce.main(argv, log=log.append) == 0

    out = root / "runs" / "proxy_shared"
    trained = [line.split()[1] for line in log if line.startswith("train ")]
    assert trained == [str(out / "dino" / f"tiny_{stem}" / f"seed{seed}") for seed in (0, 1) for stem in ("a", "b")]
    last_run = out / "dino" / "tiny_b" / "seed1" / "summary.json"
    assert (results / "first_proxy_runs.md").stat().st_mtime <= last_run.stat().st_mtime  # written when its runs were
    assert (results / "second_proxy_runs.md").is_file()
    assert (results / "proxy_shared" / "dino" / "tiny_b" / "seed1" / "summary.json").is_file()
    assert reproduce.main(["first", "--spec", "x.yaml"]) == 2
