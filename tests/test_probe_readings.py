"""tools/probe_readings.py: k-NN readings of stopped probes at one epoch, seed by seed, judged as the tables are."""

import importlib.util
import json
from pathlib import Path

import pytest
import yaml

from sslkd.errors import UserError
from sslkd.report.verdicts import judge

TOOL = Path(__file__).resolve().parents[1] / "tools" / "probe_readings.py"
spec = importlib.util.spec_from_file_location("probe_readings", TOOL)
probe_readings = importlib.util.module_from_spec(spec)
spec.loader.exec_module(probe_readings)


def fake_run(folder: Path, seed: int, knn_by_epoch: dict[int, float]) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"train": {"seed": seed}}))
    lines = [{"step": 1, "epoch": 0, "loss": 1.0}] + [{"epoch": e, "step": 10 * e, "knn/vit": v}
                                                       for e, v in knn_by_epoch.items()]
    (folder / "metrics.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return folder


def test_readings_are_taken_at_the_epoch_and_matched_by_seed(tmp_path):
    for seed, (probe, alone) in enumerate([(30.0, 37.0), (28.0, 34.0), (29.0, 36.0)]):
        fake_run(tmp_path / f"probe_seed{seed}", seed, {0: 27.0, 10: probe, 20: probe + 5})
        fake_run(tmp_path / f"alone/seed{2 - seed}", seed, {10: alone, 20: 0.0})  # the config's seed counts, not the name
    assert probe_readings.readings(str(tmp_path / "probe_seed*"), 10, "vit") == {0: 30.0, 1: 28.0, 2: 29.0}
    table = probe_readings.report([("p", str(tmp_path / "probe_seed*"), str(tmp_path / "alone/*"))], 10, "vit")
    expected = judge("p", [30.0, 28.0, 29.0], [37.0, 34.0, 36.0], paired=False)
    assert "| p | 0, 1, 2 | 29.00 +- 1.00 (n=3) | 35.67 +- 1.53 (n=3) | -7.00, -6.00, -7.00 |" in table
    assert f"{expected.difference:+.2f} [{expected.low:+.2f}, {expected.high:+.2f}]" in table
    assert expected.high < 0 and "| below, beyond noise |" in table


def test_two_rows_compare_their_per_seed_differences(tmp_path):
    for seed, (shallow, deep) in enumerate([(30.0, 33.0), (28.0, 30.0)]):
        fake_run(tmp_path / f"shallow{seed}", seed, {10: shallow})
        fake_run(tmp_path / f"deep{seed}", seed, {10: deep})
        fake_run(tmp_path / f"alone{seed}", seed, {10: 36.0 + seed})
    table = probe_readings.report([("shallow", str(tmp_path / "shallow*"), str(tmp_path / "alone*")),
                                   ("deep", str(tmp_path / "deep*"), str(tmp_path / "alone*"))], 10, "vit", True)
    expected = judge("rows", [-6.0, -9.0], [-3.0, -7.0], paired=False)
    assert f"shallow - deep (their per-seed differences, Welch t): {expected.difference:+.2f}" in table


def test_comma_separated_patterns_and_clear_errors(tmp_path):
    fake_run(tmp_path / "a", 0, {10: 30.0})
    fake_run(tmp_path / "b", 1, {10: 31.0})
    fake_run(tmp_path / "c", 0, {10: 32.0})
    assert probe_readings.readings(f"{tmp_path / 'a'},{tmp_path / 'b'}", 10, "vit") == {0: 30.0, 1: 31.0}
    with pytest.raises(UserError, match="two runs of seed 0"):
        probe_readings.readings(str(tmp_path / "*"), 10, "vit")
    with pytest.raises(UserError, match="no knn/vit at epoch 20"):
        probe_readings.readings(str(tmp_path / "a"), 20, "vit")
    with pytest.raises(UserError, match="no run folder"):
        probe_readings.readings(str(tmp_path / "missing*"), 10, "vit")
    assert probe_readings.main(["--epoch", "20", "--member", "vit", "--row", "x", str(tmp_path / "a"),
                                str(tmp_path / "b")]) == 2


def test_a_gain_over_the_floor_reads_the_same_runs_at_epoch_0_paired(tmp_path):
    for seed, (floor, later) in enumerate([(28.0, 37.0), (29.0, 41.0), (27.0, 40.0)]):
        fake_run(tmp_path / f"run{seed}", seed, {0: floor, 70: later})
    runs = str(tmp_path / "run*")
    table = probe_readings.report([("gain", runs, runs)], 70, "vit", baseline_epoch=0, paired=True)
    expected = judge("gain", [37.0, 41.0, 40.0], [28.0, 29.0, 27.0], paired=True)
    assert "| +9.00, +12.00, +13.00 |" in table and "(paired t)" in table
    assert f"{expected.difference:+.2f} [{expected.low:+.2f}, {expected.high:+.2f}]" in table
