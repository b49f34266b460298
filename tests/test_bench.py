"""`sslkd bench` runs for the strategies and ends with the overhead ratio line; tools/benchmarks.py picks the CPU
proxy settings and writes the before/after page."""

import importlib.util
import json
import re
from pathlib import Path

import pytest
from conftest import tiny_overrides

from sslkd.cli import main

ROOT = Path(__file__).resolve().parents[1]


def load_benchmarks_tool():
    spec = importlib.util.spec_from_file_location("benchmarks_tool", ROOT / "tools" / "benchmarks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("method", ["dino", "mokd"])
def test_bench_prints_overhead_ratio(capsys, method):
    assert main(["bench", "--method", method, "--steps", "1", "--knn-size", "500,50,16", *tiny_overrides(method)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.fullmatch(r"overhead ratio: \d+\.\d\d", last)


def test_bench_json_has_every_figure_and_respects_the_time_limit(capsys):
    args = ["bench", "--method", "dino", "--steps", "4", "--max-seconds", "0", "--knn-size", "500,50,16", "--json"]
    assert main(args + tiny_overrides("dino")) == 0
    out = capsys.readouterr().out
    result = json.loads(out[: out.rindex("}") + 1])
    assert result["timed_steps"] == 2  # the time limit stops after the minimum of two timed pairs
    assert result["overhead_ratio"] == pytest.approx(result["step_s"] / result["network_s"])
    assert result["overhead_ratio_cpu"] == pytest.approx(result["step_cpu_s"] / result["network_cpu_s"])
    assert result["data_to_train"] == pytest.approx(result["data_images_per_s"] / result["train_images_per_s"])
    assert result["precision"] == "float32" and result["data_images_per_s"] > 0
    assert out.strip().splitlines()[-1] == f"overhead ratio: {result['overhead_ratio']:.2f}"


def test_benchmarks_tool_uses_proxy_configs_and_falls_back_to_the_subset():
    tool = load_benchmarks_tool()
    config, overrides = tool.proxy_settings("dino")
    assert Path(config).parent.name == "dino" and Path(config).name.startswith("proxy_")
    assert overrides == [f"data.root={tool.DATA_ROOT}"]
    config, overrides = tool.proxy_settings("no_such_method")
    assert config is None and overrides[0] == "data.name=imagefolder"


def test_benchmarks_page_puts_before_beside_after():
    tool = load_benchmarks_tool()
    figures = {"overhead_ratio": 1.3, "overhead_ratio_cpu": 1.2, "train_images_per_s": 100.0,
               "data_images_per_s": 250.0, "data_workers": 2, "data_to_train": 2.5, "peak_memory_mb": 900.0,
               "bench_wall_s": 40.0, "config": "zoo_configs/dino/proxy.yaml"}
    store = {
        "abc1234": {"strategies": {"dino": figures}, "knn": {"size": [50000, 10000, 384], "knn_s": 2.0, "matmul_s": 2.5},
                    "measured": "then", "host": "2 CPU cores", "note": None},
        tool.WORKING_TREE: {"strategies": {"dino": {**figures, "overhead_ratio": 1.05},
                                           "mcl": {"config": "x", "bench_wall_s": 1.0, "error": "boom"}},
                            "knn": {"size": [50000, 10000, 384], "knn_s": 1.8, "matmul_s": 2.4},
                            "measured": "now", "host": "2 CPU cores", "note": "under contention"},
    }
    page = tool.write_page(store, "abc1234")
    assert "| dino | zoo_configs/dino/proxy.yaml | 1.30 -> 1.05 | 1.20 -> 1.20 |" in page
    assert "| mcl | x | error: boom |" in page
    assert "| working tree | 1.80 | 2.40 | 0.75 |" in page
    assert "under contention" in page and "python tools/benchmarks.py --rev abc1234" in page


def test_benchmarks_page_names_missed_targets_and_keeps_notes(tmp_path):
    tool = load_benchmarks_tool()
    run = {"strategies": {"dino": {"overhead_ratio": 1.25, "overhead_ratio_cpu": 1.02, "data_to_train": 2.3,
                                   "bench_wall_s": 30.0},
                          "simclr": {"overhead_ratio": 1.05, "data_to_train": 9.0, "bench_wall_s": 75.0}},
           "knn": {"knn_s": 1.8, "matmul_s": 2.4}}
    assert tool.missed_targets(run) == [
        "dino: overhead ratio 1.25 > 1.10 (by CPU time 1.02)",
        "dino: data pipeline 2.3x training < 3.0x",
        "simclr: `sslkd bench` took 75 s > 60 s",
    ]
    page = tmp_path / "benchmarks.md"
    page.write_text(f"old table\n{tool.NOTES_MARKER}\n\nWhere the time goes: losses.\n")
    assert tool.kept_notes(page) == "Where the time goes: losses.\n"
