"""``sslkd bench``: what a strategy costs beyond the network passes it needs.

On one fixed batch it times (interleaved, medians) full training steps and the strategy's ``network_passes``
(students forward and backward, teachers forward) under the run's own precision, Linear-layer kernel, memory format
and compilation (``train.precision``, ``train.linear_kernel``, ``train.channels_last``, ``train.compile``); their
ratio is the runner's overhead: losses, EMA updates, centers, clipping, optimiser steps, bookkeeping. Both wall
time and process CPU time are taken: on a machine shared with other jobs the wall clock counts time spent waiting
for a core, the CPU time much less so.
It also times the data pipeline alone and exact k-NN against a bare matrix product of the same size.
"""

from __future__ import annotations

import resource
import statistics
import tempfile
import time

import torch

from sslkd.config import Config
from sslkd.engine.trainer import Trainer
from sslkd.eval.knn import knn_predict
from sslkd.strategies.base import StepInfo


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device) -> float:
    return _timed_both(fn, device)[0]


def _timed_both(fn, device: torch.device) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of ``fn()``."""
    _sync(device)
    start, start_cpu = time.perf_counter(), time.process_time()
    fn()
    _sync(device)
    return time.perf_counter() - start, time.process_time() - start_cpu


def bench_steps(trainer: Trainer, steps: int, warmup: int, max_seconds: float = float("inf")) -> dict[str, float]:
    """Median seconds (wall and CPU) of a full training step and of the network passes alone, on the same batch.

    Stops early, after at least two timed pairs, once ``max_seconds`` have been spent timing.
    """
    views, labels, indices = next(iter(trainer.loader))
    device_views = [v.to(trainer.device) for v in views]
    strategy = trainer.strategy
    spe = trainer.steps_per_epoch

    def full_step(i: int) -> None:
        info = StepInfo(step=spe + i, epoch=1, steps_per_epoch=spe, total_steps=trainer.total_steps + spe + steps + warmup)
        trainer.set_schedules(info)
        trainer.train_step(views, labels, indices, info)

    def passes() -> None:
        for part in trainer.optimizers.values():
            part.optimizer.zero_grad(set_to_none=True)
        with trainer.forward_context():
            output = strategy.network_passes(device_views)
        output.backward()

    full, network = [], []
    start = time.perf_counter()
    for i in range(warmup + steps):
        f = _timed_both(lambda i=i: full_step(i), trainer.device)
        n = _timed_both(passes, trainer.device)
        if i >= warmup:
            full.append(f)
            network.append(n)
            if len(full) >= 2 and time.perf_counter() - start > max_seconds:
                break
    return {
        "step_s": statistics.median(f[0] for f in full),
        "network_s": statistics.median(n[0] for n in network),
        "step_cpu_s": statistics.median(f[1] for f in full),
        "network_cpu_s": statistics.median(n[1] for n in network),
        "timed_steps": len(full),
    }


def bench_data(trainer: Trainer, batches: int, max_seconds: float = float("inf")) -> float:
    """Images per second the data loader delivers alone, in steady state: the first batch of each worker (which
    pay start-up and arrive together) are not timed. Stops early, after at least three batches, past
    ``max_seconds``."""
    iterator = iter(trainer.loader)
    for _ in range(max(1, trainer.loader.num_workers)):
        next(iterator)
    start = time.perf_counter()
    count = 0
    for i in range(batches):
        try:
            count += next(iterator)[1].shape[0]
        except StopIteration:
            break
        if i >= 2 and time.perf_counter() - start > max_seconds:
            break
    return count / (time.perf_counter() - start)


def bench_knn(n_train: int, n_test: int, dim: int, k: int = 20) -> tuple[float, float]:
    """Seconds of exact k-NN (search + weighted vote) and of a bare ``test @ train.T`` of the same size."""
    generator = torch.Generator().manual_seed(0)
    train = torch.nn.functional.normalize(torch.randn(n_train, dim, generator=generator), dim=1)
    test = torch.nn.functional.normalize(torch.randn(n_test, dim, generator=generator), dim=1)
    labels = torch.randint(0, 10, (n_train,), generator=generator)
    knn_time = min(_timed(lambda: knn_predict(train, labels, test, ks=(k,), num_classes=10), train.device) for _ in range(2))
    mm_time = min(_timed(lambda: torch.mm(test, train.T), train.device) for _ in range(2))
    return knn_time, mm_time


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_bench(cfg: Config, steps: int = 5, warmup: int = 1, data_batches: int = 20,
              knn_size: tuple[int, int, int] = (10000, 2000, 384), max_seconds: float = float("inf")) -> dict:
    """Every figure of ``sslkd bench``; ``max_seconds`` bounds the time spent timing steps (at least two)."""
    with tempfile.TemporaryDirectory(prefix="sslkd-bench-") as run_dir:
        trainer = Trainer(cfg, run_dir)
        times = bench_steps(trainer, steps, warmup, max_seconds)
        data_images_per_s = bench_data(trainer, data_batches, max_seconds / 2)
        device = trainer.device
        precision = str(trainer.autocast_dtype or torch.float32).removeprefix("torch.")
        kernel = trainer.linear_kernel
    knn_time, mm_time = bench_knn(*knn_size)
    batch = cfg.train.batch_size
    train_images_per_s = batch / times["step_s"]
    return {
        "method": cfg.method,
        "batch_size": batch,
        "device": str(device),
        "precision": precision,
        "linear_kernel": kernel,
        "channels_last": cfg.train.channels_last,
        "channels_last_min_positions": cfg.train.channels_last_min_positions,
        "compile": cfg.train.compile,
        **times,
        "train_images_per_s": train_images_per_s,
        "data_images_per_s": data_images_per_s,
        "data_workers": cfg.data.num_workers,
        "data_to_train": data_images_per_s / train_images_per_s,
        "peak_memory_mb": peak_memory_mb(device),
        "knn_size": list(knn_size),
        "knn_s": knn_time,
        "matmul_s": mm_time,
        "knn_to_matmul": knn_time / mm_time,
        "overhead_ratio_cpu": times["step_cpu_s"] / times["network_cpu_s"],
        "overhead_ratio": times["step_s"] / times["network_s"],
    }
