"""tools/bench_official.py without the authors' code: the interleaving loader, the page and its kept notes."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import bench_official  # noqa: E402


def test_loader_interleaves_one_sslkd_step_before_each_official_step():
    events = []
    loader = bench_official.InterleavedLoader("batch", 3, lambda i: events.append(f"sslkd {i}"))
    assert len(loader) == 3
    for batch in loader:
        events.append(f"official {batch}")
    assert events == ["sslkd 0", "official batch", "sslkd 1", "official batch", "sslkd 2", "official batch"]
    assert len(loader.official) == 3 and all(wall >= 0 and cpu >= 0 for wall, cpu in loader.official)


def fake_row(method: str, official_s: float, sslkd_s: float) -> dict:
    side = {"params": 2e6, "trainable_params": 1e6, "backbone_images": 64, "gflops": 10.0, "peak_mb": 900.0,
            "overhead_ratio_cpu": 1.05, "dense_kernel_s": 0.8, "profiled_op_s": 1.0}
    return {"method": method, "checkout": f"/x/{method}", "commit": "abc1234", "official_s": official_s,
            "sslkd_s": sslkd_s, "official_cpu_s": official_s, "sslkd_cpu_s": sslkd_s, "pairs": 2,
            "speedup_per_pair": [official_s / sslkd_s] * 2, "work": {"official": side, "sslkd": side},
            "setting": "a setting", "sslkd": "def5678", "measured": "2026-11-29T23:00 UTC", "threads": 2,
            "note": "quiet machine"}


def test_page_shows_speedups_patches_and_what_missed_the_target(tmp_path):
    page = bench_official.format_page([fake_row("dino", 2.0, 1.0), fake_row("dogo", 1.1, 1.0)], "python tools/x", 2)
    assert "| dino |" in page and "**2.00x**" in page and "**1.10x**" in page
    assert "Below the 1.25x target: dogo." in page
    assert "| 0.80 / 0.80 (80% / 80%) | 1.25x |" in page
    assert "`torch.cuda.synchronize` does nothing" in page and "uint8 mask" in page
    output = tmp_path / "page.md"
    bench_official.write_page(page, output)
    output.write_text(output.read_text() + "hand-written note\n")
    bench_official.write_page(page.replace("2.00x", "3.00x"), output)
    assert "**3.00x**" in output.read_text() and output.read_text().endswith("hand-written note\n")


def test_rows_measured_by_other_runs_are_merged_into_one_page(tmp_path):
    import json

    import torch

    other = tmp_path / "other.json"
    other.write_text(json.dumps({"mokd": fake_row("mokd", 3.0, 2.0), "dino": fake_row("dino", 2.0, 1.0)}))
    page = tmp_path / "page.md"
    assert bench_official.main(["--merge", str(other), "--output", str(page), "--threads", str(torch.get_num_threads())]) == 0
    text = page.read_text()
    assert text.index("| dino |") < text.index("| mokd |") and "**1.50x**" in text
    assert "--dino /x/dino --mokd /x/mokd" in text and "| n/a | n/a |" not in text and set(json.loads(page.with_suffix(".json").read_text())) == {"dino", "mokd"}


def test_rows_measured_before_the_dense_kernel_profile_show_no_ceiling():
    side = {"gflops": 1.0}
    assert bench_official.dense_kernel_cells(side, side) == "n/a | n/a |"
