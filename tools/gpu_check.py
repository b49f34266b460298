"""GPU check: sslkd's CUDA paths on one GPU, in under 8 minutes.

How to run, on a machine with one CUDA GPU (sized for an H100/H200), from the repository root:

    pip install -e ".[dev]"          # once; add faiss-gpu (e.g. `pip install faiss-gpu-cu12`) to check faiss too
    python tools/gpu_check.py        # all three parts; exit status 0 = every check passed

Parts (each can be skipped: --skip-tests, --skip-strategies, --skip-faiss):
1. The CUDA tests of the suite: ``pytest -q tests/test_cuda_paths.py`` (they skip on a machine without a GPU).
2. Every registered strategy at its paper-scale zoo config (``PAPER_CONFIGS``; batch capped by --max-batch, 256
   by default, to stay inside the time limit), on synthetic inputs of the config's crop sizes: one warm-up and
   --steps timed training steps under fp16-AMP (loss scaling) and under bf16 autocast. Checks every loss is
   finite and the students' weights moved; prints images/s (batch / median step time) per strategy and precision.
3. faiss on the GPU, when the installed faiss has GPU support: k-NN of random features through sslkd's faiss
   path equals the brute-force torch reference.

Without a CUDA GPU it prints one line saying so and exits with status 2; ``--plan`` prints what would run
(it needs no GPU). --budget-s (default 420) stops starting new strategies once spent, so the whole check stays
under 8 minutes; strategies left out are listed, and count as a failure.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
CUDA_TESTS = ["tests/test_cuda_paths.py"]
PRECISIONS = ("fp16-amp", "bf16")
# One paper-scale config per registered strategy: the papers' networks, heads and crops.
PAPER_CONFIGS = {
    "byol": "zoo_configs/byol/imagenet_vit_s16_byol_300ep.yaml",
    "dino": "zoo_configs/dino/imagenet_vit_s16_100ep.yaml",
    "dml": "zoo_configs/dml/cifar100_resnet32_resnet56.yaml",
    "dogo": "zoo_configs/dogo/tinyimagenet_r18_r18.yaml",
    "lmcl": "zoo_configs/lmcl/cifar100_resnet110_x2.yaml",
    "mcl": "zoo_configs/mcl/cifar100_resnet110_x2.yaml",
    "mocov2": "zoo_configs/mocov2/imagenet_r50_mocov2_200ep.yaml",
    "mocov3": "zoo_configs/mocov3/imagenet_vit_s16_mocov3_300ep.yaml",
    "mokd": "zoo_configs/mokd/imagenet_r50_vit_s16_100ep.yaml",
    "sdssl": "zoo_configs/sdssl/imagenet_vit_s16_sd_byol_300ep.yaml",
    "simclr": "zoo_configs/simclr/tinyimagenet_r18.yaml",
    "simsiam": "zoo_configs/simsiam/tinyimagenet_r18.yaml",
    "supervised": "zoo_configs/supervised/cifar100_resnet56.yaml",
}


def registered_strategies() -> list[str]:
    import sslkd.strategies  # noqa: F401  (registers the built-in strategies)
    from sslkd.registry import STRATEGIES

    return STRATEGIES.names()


def paper_config(config: str, precision: str, max_batch: int, device: str = "cuda"):
    """A zoo config on the offline data set (only its crop sizes matter here), on ``device``, its per-process
    batch capped at ``max_batch``."""
    from sslkd.config import load_config

    path = str(REPO / config)
    overrides = ["data.name=digits", "data.root=null", "data.num_workers=0", f"train.device={device}",
                 f"train.precision={precision}"]
    batch = min(load_config(None, path, overrides).train.batch_size, max_batch)
    return load_config(None, path, [*overrides, f"train.batch_size={batch}"])


def synthetic_batch(trainer, batch: int):
    """Random views of the shapes the strategy's own transform makes, on the run's device; random labels."""
    device = trainer.device
    views, _, _ = trainer.loader.dataset[(0, 0)]
    views = views if isinstance(views, (list, tuple)) else [views]
    generator = torch.Generator(device=device).manual_seed(0)
    device_views = [torch.randn(batch, *v.shape, device=device, generator=generator) for v in views]
    labels = torch.randint(0, trainer.info.num_classes, (batch,), device=device, generator=generator)
    return device_views, labels, torch.arange(batch, device=device) % len(trainer.train_set)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check_strategy(config: str, precision: str, steps: int, max_batch: int, device: str = "cuda") -> dict:
    """Warm-up plus ``steps`` timed steps of ``config``; raises if a loss is not finite or no student weight moved."""
    from sslkd.engine.trainer import Trainer
    from sslkd.strategies.base import StepInfo

    cfg = paper_config(config, precision, max_batch, device)
    method = cfg.method
    with tempfile.TemporaryDirectory(prefix="sslkd-gpu-") as run_dir, contextlib.redirect_stderr(io.StringIO()):
        trainer = Trainer(cfg, run_dir)
        trainer.strategy.train()
        views, labels, indices = synthetic_batch(trainer, cfg.train.batch_size)
        before = [p.detach().clone() for m in trainer.strategy.members.values() for p in m.student.parameters()
                  if p.requires_grad]
        times = []
        for i in range(steps + 1):
            info = StepInfo(step=1000 + i, epoch=1, steps_per_epoch=1000, total_steps=100_000)
            trainer.set_schedules(info)
            synchronize(trainer.device)
            start = time.perf_counter()
            losses = trainer.train_step(views, labels, indices, info)
            synchronize(trainer.device)
            times.append(time.perf_counter() - start)
            if losses is None or not all(torch.isfinite(v).all() for v in losses.values()):
                raise RuntimeError(f"{method} {precision}: non-finite loss at step {i}")
        after = [p for m in trainer.strategy.members.values() for p in m.student.parameters() if p.requires_grad]
        if not any(not torch.equal(a, b) for a, b in zip(before, after)):
            raise RuntimeError(f"{method} {precision}: no student weight changed")
        peak_gb = torch.cuda.max_memory_allocated() / 2**30 if trainer.device.type == "cuda" else float("nan")
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.empty_cache()
    step_s = statistics.median(times[1:])
    return {"batch": cfg.train.batch_size, "step_s": step_s, "images_per_s": cfg.train.batch_size / step_s,
            "peak_gb": peak_gb, "loss": float(losses["loss"])}


def check_faiss_gpu() -> str:
    """sslkd's faiss k-NN on GPU features against the torch reference; a skip reason when faiss has no GPU."""
    try:
        import faiss
    except ImportError:
        return "skipped: faiss is not installed"
    if not hasattr(faiss, "get_num_gpus") or faiss.get_num_gpus() == 0:
        return "skipped: this faiss has no GPU support (pip install faiss-gpu-cu12)"
    from sslkd.eval.knn import knn_predict, knn_predict_torch

    generator = torch.Generator(device="cuda").manual_seed(0)
    train = torch.nn.functional.normalize(torch.randn(50_000, 384, device="cuda", generator=generator), dim=1)
    test = torch.nn.functional.normalize(torch.randn(10_000, 384, device="cuda", generator=generator), dim=1)
    labels = torch.randint(0, 100, (50_000,), device="cuda", generator=generator)
    start = time.perf_counter()
    got = knn_predict(train, labels, test, ks=(20,), num_classes=100)[20]
    seconds = time.perf_counter() - start
    want = knn_predict_torch(train, labels, test, ks=(20,), num_classes=100)[20]
    agreement = (got.cpu() == want.cpu()).float().mean().item()
    if agreement < 0.999:
        raise RuntimeError(f"faiss GPU k-NN agrees with the torch reference on only {agreement:.2%} of queries")
    return f"ok: {faiss.get_num_gpus()} GPU(s), 10k x 50k k-NN in {seconds:.2f} s, {agreement:.2%} equal to torch"


def plan(methods: list[str], args) -> list[str]:
    lines = []
    if not args.skip_tests:
        lines.append(f"pytest -q -p no:cacheprovider {' '.join(CUDA_TESTS)}")
    if not args.skip_strategies:
        lines += [f"{m}: {PAPER_CONFIGS[m]} x {', '.join(PRECISIONS)}, {args.steps} timed steps, batch <= {args.max_batch}"
                  for m in methods]
    if not args.skip_faiss:
        lines.append("faiss GPU k-NN against the torch reference (if faiss has GPU support)")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per strategy and precision (after 1 warm-up)")
    parser.add_argument("--max-batch", type=int, default=256, help="cap on each config's per-process batch")
    parser.add_argument("--budget-s", type=float, default=420.0, help="no new strategy starts after this many seconds")
    parser.add_argument("--methods", nargs="*", help="only these strategies (default: every registered one)")
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--skip-strategies", action="store_true")
    parser.add_argument("--skip-faiss", action="store_true")
    parser.add_argument("--plan", action="store_true", help="print what would run and exit (needs no GPU)")
    args = parser.parse_args(argv)
    methods = args.methods or registered_strategies()
    unknown = sorted(set(methods) - set(PAPER_CONFIGS))
    if unknown:
        print(f"gpu_check: no paper-scale config listed for {unknown}; add them to PAPER_CONFIGS", file=sys.stderr)
        return 2
    if args.plan:
        print("\n".join(plan(methods, args)))
        return 0
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU is visible (torch.cuda.is_available() is False); run it on a GPU machine, "
              "or use --plan to see what it runs", file=sys.stderr)
        return 2

    started = time.perf_counter()
    failures: list[str] = []
    print(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}", flush=True)
    if not args.skip_tests:
        tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *CUDA_TESTS], cwd=REPO)
        if tests.returncode != 0:
            failures.append("CUDA tests")
    rows = []
    if not args.skip_strategies:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        for method in methods:
            if time.perf_counter() - started > args.budget_s:
                failures.append(f"{method}: not run (past --budget-s {args.budget_s:.0f})")
                continue
            for precision in PRECISIONS:
                try:
                    result = check_strategy(PAPER_CONFIGS[method], precision, args.steps, args.max_batch)
                except Exception as exc:  # every failure is reported, the others still run
                    failures.append(f"{method} {precision}: {type(exc).__name__}: {exc}")
                    continue
                rows.append((method, precision, result))
                print(f"{method:10s} {precision:8s} batch {result['batch']:4d}  {result['images_per_s']:9.1f} img/s  "
                      f"step {result['step_s'] * 1000:7.1f} ms  peak {result['peak_gb']:5.1f} GB  loss {result['loss']:.3f}",
                      flush=True)
    if not args.skip_faiss:
        try:
            print(f"faiss GPU: {check_faiss_gpu()}", flush=True)
        except Exception as exc:
            failures.append(f"faiss GPU: {type(exc).__name__}: {exc}")
    print_table(rows)
    print(f"gpu_check: {time.perf_counter() - started:.0f} s, "
          f"{'all checks passed' if not failures else str(len(failures)) + ' failed:'}")
    for failure in failures:
        print(f"  - {failure}")
    return 1 if failures else 0


def print_table(rows: list[tuple[str, str, dict]]) -> None:
    """Images/s per strategy, one column per precision."""
    if not rows:
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="images/s per strategy (paper-scale configs, synthetic inputs)")
    table.add_column("strategy")
    table.add_column("batch", justify="right")
    for precision in PRECISIONS:
        table.add_column(precision, justify="right")
    by_method: dict[str, dict[str, dict]] = {}
    for method, precision, result in rows:
        by_method.setdefault(method, {})[precision] = result
    for method, results in by_method.items():
        batch = next(iter(results.values()))["batch"]
        table.add_row(method, str(batch), *(f"{results[p]['images_per_s']:.0f}" if p in results else "-" for p in PRECISIONS))
    Console().print(table)


if __name__ == "__main__":
    sys.exit(main())
