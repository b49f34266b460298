"""``sslkd bench``: what a strategy costs beyond the network passes it needs.

On one fixed batch it times (interleaved, medians) full training steps and the strategy's ``network_passes``
(students forward and backward, teachers forward); their ratio is the runner's overhead: losses, EMA updates,
centers, clipping, optimiser steps, bookkeeping. It also times the data pipeline alone and exact k-NN against a
bare matrix product of the same size.
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
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def bench_steps(trainer: Trainer, steps: int, warmup: int) -> tuple[float, float]:
    """Median seconds of a full training step and of the network passes alone, on the same batch."""
    views, labels, indices = next(iter(trainer.loader))
    device_views = [v.to(trainer.device) for v in views]
    strategy = trainer.strategy
    spe = trainer.steps_per_epoch

    def full_step(i: int) -> None:
        info = StepInfo(step=spe + i, epoch=1, steps_per_epoch=spe, total_steps=trainer.total_steps + spe + steps + warmup)
        trainer.set_schedules(info)
        trainer.train_step(views, labels, indices, info)

    def passes() -> None:
        for optimizer in trainer.optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        with torch.autocast(trainer.device.type, dtype=torch.float16, enabled=trainer.use_amp):
            output = strategy.network_passes(device_views)
        output.backward()

    full, network = [], []
    for i in range(warmup + steps):
        f = _timed(lambda: full_step(i), trainer.device)
        n = _timed(passes, trainer.device)
        if i >= warmup:
            full.append(f)
            network.append(n)
    return statistics.median(full), statistics.median(network)


def bench_data(trainer: Trainer, batches: int) -> float:
    """Images per second the data loader delivers alone (after its first batch, which pays worker start-up)."""
    iterator = iter(trainer.loader)
    next(iterator)
    start = time.perf_counter()
    count = 0
    for _ in range(batches):
        try:
            count += next(iterator)[1].shape[0]
        except StopIteration:
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


def run_bench(cfg: Config, steps: int = 5, warmup: int = 1, data_batches: int = 10,
              knn_size: tuple[int, int, int] = (10000, 2000, 384)) -> dict:
    with tempfile.TemporaryDirectory(prefix="sslkd-bench-") as run_dir:
        trainer = Trainer(cfg, run_dir)
        full, network = bench_steps(trainer, steps, warmup)
        data_images_per_s = bench_data(trainer, data_batches)
        device = trainer.device
    knn_time, mm_time = bench_knn(*knn_size)
    batch = cfg.train.batch_size
    return {
        "method": cfg.method,
        "batch_size": batch,
        "step_s": full,
        "network_s": network,
        "train_images_per_s": batch / full,
        "data_images_per_s": data_images_per_s,
        "data_workers": cfg.data.num_workers,
        "peak_memory_mb": peak_memory_mb(device),
        "knn_size": list(knn_size),
        "knn_s": knn_time,
        "matmul_s": mm_time,
        "overhead_ratio": full / network,
    }
