#!/usr/bin/env python
"""Regenerate results/benchmarks.md: ``sslkd bench`` of every registered strategy at the CPU proxy settings, for
the working tree and for an older revision ("before"), plus exact k-NN of 50,000 x 10,000 features (dim 384)
against a bare matrix product of the same size.

    python tools/benchmarks.py --rev 4fd1f0b   # benchmark that revision (in a temporary git worktree)
    python tools/benchmarks.py                 # benchmark the working tree, then write the page

Each run stores its figures in results/benchmarks.json under its label (the revision, or "working tree") and
rewrites results/benchmarks.md from everything stored, the ``--before`` revision beside the working tree. Run it
from the repository root on a quiet machine: the figures are timings. ``--note`` adds a line on the conditions.

Settings per strategy: its first ``zoo_configs/<method>/proxy_*.yaml`` (the CPU proxy protocol of DESIGN.md);
a strategy without one runs its default config on the CIFAR-10 subset. Both trees get the same config files
(this tree's) and the same data (``../shared/data/cifar10_subset``, passed as an absolute ``data.root``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA_ROOT = (ROOT / ".." / "shared" / "data" / "cifar10_subset").resolve()
TIMED_STEPS = 30  # sslkd bench's default 5 pairs left a 0.13 s step's ratio +-0.1 from run to run
RESULTS = ROOT / "results"
WORKING_TREE = "working tree"
NOTES_MARKER = "<!-- notes below this line are written by hand and kept when the page is regenerated -->"
KNN_SIZE = (50000, 10000, 384)
TARGETS = {"overhead_ratio": 1.10, "data_to_train": 3.0, "knn_to_matmul": 1.5, "bench_wall_s": 60.0}

LIST_STRATEGIES = (
    "import json; from sslkd.registry import STRATEGIES, load_plugins; load_plugins(); "
    "print(json.dumps(sorted(STRATEGIES.names())))"
)
KNN_SCRIPT = (
    "import json, sys; from sslkd.engine.bench import bench_knn; "
    "knn, mm = bench_knn(*map(int, sys.argv[1:4])); print(json.dumps({'knn_s': knn, 'matmul_s': mm}))"
)


def _env(tree: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(tree), "OMP_WAIT_POLICY": "PASSIVE"}


def _python(tree: Path, args: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Run ``python args`` with ``tree``'s sslkd first on the path (cwd = tree, so ``-m sslkd`` is that tree's)."""
    return subprocess.run([sys.executable, *args], cwd=tree, env=_env(tree), capture_output=True, text=True,
                          timeout=timeout, check=False)


def proxy_settings(method: str) -> tuple[str | None, list[str]]:
    """(config file, overrides) of ``method`` at the CPU proxy settings."""
    configs = sorted((ROOT / "zoo_configs" / method).glob("proxy_*.yaml"))
    overrides = [f"data.root={DATA_ROOT}"]
    if configs:
        return str(configs[0]), overrides
    return None, ["data.name=imagefolder", *overrides]


def bench_method(tree: Path, method: str, timeout: float) -> dict:
    config, overrides = proxy_settings(method)
    args = ["-m", "sslkd", "bench", "--method", method, "--json", "--knn-size", "1000,100,16",
            "--steps", str(TIMED_STEPS)]
    args += (["--config", config] if config else []) + overrides
    start = time.perf_counter()
    try:
        done = _python(tree, args, timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    wall = time.perf_counter() - start
    record = {"config": str(Path(config).relative_to(ROOT)) if config else f"default config, {overrides[0]}",
              "bench_wall_s": wall}
    if done.returncode != 0:
        lines = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()
        return {**record, "error": lines[-1][:300]}
    text = done.stdout
    result = json.loads(text[text.index("{") : text.rindex("}") + 1])
    for key in ("knn_size", "knn_s", "matmul_s", "knn_to_matmul"):
        result.pop(key, None)
    return {**record, **result}


def bench_tree(tree: Path, methods: list[str] | None, timeout: float) -> dict:
    listed = _python(tree, ["-c", LIST_STRATEGIES], 300)
    if listed.returncode != 0:
        raise SystemExit(f"cannot list the strategies of {tree}: {listed.stderr.strip().splitlines()[-1]}")
    registered = json.loads(listed.stdout.strip().splitlines()[-1])
    results = {}
    for method in methods or registered:
        if method not in registered:
            results[method] = {"error": "not registered in this revision"}
            continue
        print(f"[{tree.name}] sslkd bench --method {method} ...", file=sys.stderr, flush=True)
        results[method] = bench_method(tree, method, timeout)
        print(f"    {json.dumps({k: results[method].get(k) for k in ('overhead_ratio', 'error')})}",
              file=sys.stderr, flush=True)
    knn = _python(tree, ["-c", KNN_SCRIPT, *map(str, KNN_SIZE)], 900)
    knn_result = json.loads(knn.stdout.strip().splitlines()[-1]) if knn.returncode == 0 else {"error": knn.stderr[-300:]}
    return {"strategies": results, "knn": {"size": list(KNN_SIZE), **knn_result}}


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()


def bench_revision(rev: str, methods: list[str] | None, timeout: float) -> dict:
    """Benchmark ``rev`` checked out in a temporary worktree (removed afterwards; the checkout is untouched)."""
    commit = _git("rev-parse", "--short", rev)
    parent = Path(tempfile.mkdtemp(prefix="sslkd-bench-"))
    tree = parent / commit
    _git("worktree", "add", "--detach", str(tree), commit)
    try:
        return {"commit": commit, **bench_tree(tree, methods, timeout)}
    finally:
        _git("worktree", "remove", "--force", str(tree))
        shutil.rmtree(parent, ignore_errors=True)


# ----------------------------------------------------------------------------------------------------- page
def _fmt(value, spec: str = ".2f") -> str:
    return "n/a" if value is None else format(value, spec)


def _pair(before: dict, after: dict, key: str, spec: str = ".2f") -> str:
    return f"{_fmt(before.get(key), spec)} -> {_fmt(after.get(key), spec)}"


def _with_data_ratio(result: dict) -> dict:
    """Older revisions' `sslkd bench` gave the data and training rates but not their ratio."""
    if "data_to_train" not in result and result.get("train_images_per_s"):
        return {**result, "data_to_train": result["data_images_per_s"] / result["train_images_per_s"]}
    return result


def write_page(store: dict, before_label: str) -> str:
    after_run = store.get(WORKING_TREE, {})
    before_run = store.get(before_label, {})
    after, before = after_run.get("strategies", {}), before_run.get("strategies", {})
    lines = [
        "# Benchmarks: overhead of each strategy over its network passes (CPU proxy settings)",
        "",
        "Generated by `tools/benchmarks.py` (do not edit by hand). Regenerate from the repository root, on a quiet",
        "machine:",
        "",
        "```bash",
        f"python tools/benchmarks.py --rev {before_label}   # 'before' in a temporary git worktree",
        "python tools/benchmarks.py                # 'after': the working tree; rewrites this page",
        "```",
        "",
        "One row per registered strategy: `sslkd bench --method M --config zoo_configs/M/proxy_*.yaml` (or the",
        "default config on the CIFAR-10 subset where there is no proxy config), fp32 on the CPU, `train.batch_size`",
        "and workers as the config says. *Overhead ratio* = full training step / the strategy's network passes alone",
        "(students forward + backward, teachers forward) on the same batch, median wall time (the line",
        f"`sslkd bench --steps {TIMED_STEPS}` ends with: {TIMED_STEPS} alternated pairs, or as many as 20 s of timing "
        "holds); *by CPU time* is the same ratio of process CPU time, which waiting for a busy",
        "core does not inflate. *Data x* = images/s the data loader delivers alone / images/s training consumes.",
        (f"Targets: overhead ratio <= {TARGETS['overhead_ratio']:.2f}, data x >= {TARGETS['data_to_train']}, k-NN <= "
         f"{TARGETS['knn_to_matmul']}x the matrix product, each bench < {TARGETS['bench_wall_s']:.0f} s."),
        "",
    ]
    for label, run in ((before_label, before_run), (WORKING_TREE, after_run)):
        if run:
            lines.append(f"- {label}: measured {run.get('measured', '?')} on {run.get('host', '?')}"
                         + (f"; {run['note']}" if run.get("note") else ""))
    lines += [
        "",
        f"Before = {before_label}, after = the working tree.",
        "",
        ("| strategy | settings | overhead ratio | by CPU time | training img/s | data img/s (workers) | data x | "
         "peak memory MB | bench s |"),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for method in sorted(set(after) | set(before)):
        a, b = (_with_data_ratio(r.get(method, {})) for r in (after, before))
        if "error" in a and len(a) <= 3:
            lines.append(f"| {method} | {a.get('config', '')} | error: {a['error']} | | | | | | |")
            continue
        data = f"{_pair(b, a, 'data_images_per_s', '.0f')} ({a.get('data_workers', '?')})"
        lines.append(
            f"| {method} | {a.get('config', b.get('config', ''))} | {_pair(b, a, 'overhead_ratio')} | "
            f"{_pair(b, a, 'overhead_ratio_cpu')} | {_pair(b, a, 'train_images_per_s', '.1f')} | {data} | "
            f"{_pair(b, a, 'data_to_train', '.1f')} | {_pair(b, a, 'peak_memory_mb', '.0f')} | "
            f"{_pair(b, a, 'bench_wall_s', '.0f')} |"
        )
    knn_a, knn_b = after_run.get("knn", {}), before_run.get("knn", {})
    size = knn_a.get("size", list(KNN_SIZE))
    lines += [
        "",
        (f"Exact k-NN (k=20, weighted vote) of {size[1]:,} queries against {size[0]:,} features of dim {size[2]}, "
         "against a bare `torch.mm` of the same size:"),
        "",
        "| | k-NN s | matrix product s | ratio |",
        "|---|---|---|---|",
    ]
    for label, knn in ((before_label, knn_b), (WORKING_TREE, knn_a)):
        if knn.get("knn_s"):
            lines.append(f"| {label} | {knn['knn_s']:.2f} | {knn['matmul_s']:.2f} | {knn['knn_s'] / knn['matmul_s']:.2f} |")
    lines += ["", "Targets missed by the working tree (from the figures above):", ""]
    lines += [f"- {miss}" for miss in missed_targets(after_run)] or ["- none"]
    return "\n".join(lines) + "\n"


def missed_targets(run: dict) -> list[str]:
    """One line per target the run misses, saying by how much."""
    misses = []
    for method, r in sorted(run.get("strategies", {}).items()):
        if "error" in r:
            misses.append(f"{method}: `sslkd bench` failed ({r['error']})")
            continue
        if r.get("overhead_ratio", 0) > TARGETS["overhead_ratio"]:
            misses.append(f"{method}: overhead ratio {r['overhead_ratio']:.2f} > {TARGETS['overhead_ratio']:.2f} "
                          f"(by CPU time {r.get('overhead_ratio_cpu', float('nan')):.2f})")
        if r.get("data_to_train", float("inf")) < TARGETS["data_to_train"]:
            misses.append(f"{method}: data pipeline {r['data_to_train']:.1f}x training < {TARGETS['data_to_train']}x")
        if r.get("bench_wall_s", 0) > TARGETS["bench_wall_s"]:
            misses.append(f"{method}: `sslkd bench` took {r['bench_wall_s']:.0f} s > {TARGETS['bench_wall_s']:.0f} s")
    knn = run.get("knn", {})
    if knn.get("knn_s") and knn["knn_s"] / knn["matmul_s"] > TARGETS["knn_to_matmul"]:
        misses.append(f"k-NN {knn['knn_s'] / knn['matmul_s']:.2f}x the matrix product > {TARGETS['knn_to_matmul']}x")
    return misses


def kept_notes(page: Path) -> str:
    """The hand-written notes of an existing page (everything after ``NOTES_MARKER``)."""
    text = page.read_text() if page.exists() else ""
    return text[text.index(NOTES_MARKER) + len(NOTES_MARKER):].lstrip("\n") if NOTES_MARKER in text else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rev", help="benchmark this git revision (temporary worktree) instead of the working tree")
    parser.add_argument("--before", default="4fd1f0b", help="stored revision shown as 'before' (default 4fd1f0b)")
    parser.add_argument("--methods", help="comma-separated strategies (default: every registered one)")
    parser.add_argument("--note", help="conditions of this measurement, shown on the page")
    parser.add_argument("--timeout", type=float, default=600, help="seconds allowed per `sslkd bench` run")
    parser.add_argument("--only-page", action="store_true", help="rewrite the page from stored figures only")
    args = parser.parse_args(argv)
    store_path = RESULTS / "benchmarks.json"
    store = json.loads(store_path.read_text()) if store_path.exists() else {}
    if not args.only_page:
        methods = args.methods.split(",") if args.methods else None
        if args.rev:
            run = bench_revision(args.rev, methods, args.timeout)
            label = args.rev
        else:
            run, label = bench_tree(ROOT, methods, args.timeout), WORKING_TREE
        run.update(measured=dt.datetime.now().isoformat(timespec="minutes"), host=f"{os.cpu_count()} CPU cores",
                   note=args.note)
        if methods and label in store:  # a partial rerun keeps the other strategies' figures
            store[label]["strategies"].update(run.pop("strategies"))
            store[label].update(run)
        else:
            store[label] = run
        RESULTS.mkdir(exist_ok=True)
        store_path.write_text(json.dumps(store, indent=2) + "\n")
    page = RESULTS / "benchmarks.md"
    notes = kept_notes(page)
    page.write_text(write_page(store, args.before) + f"\n{NOTES_MARKER}\n\n" + notes)
    print(f"wrote {RESULTS / 'benchmarks.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
