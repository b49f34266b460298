"""Two processes (gloo, CPU) with half the batch each train exactly what one process with the whole batch trains.

One ``torchrun --nproc-per-node 2`` of this file (``__main__`` below) trains every method in METHODS (and each
combination of zoo_configs/combos/) for a few steps at batch 8 per process; the tests train the same configs in one
process at batch 16 and compare the logged losses (averaged over processes) and every weight and buffer of the
checkpoints (students, EMA teachers, centers, queues, banks), within float tolerance. Adding a method is one entry
in METHODS.

The tolerance: sums taken in another order (convolutions on 8 vs 16 images, batch statistics all-reduced) differ
by ~1e-6, which two steps of Adam and batch norm on 4-channel nets amplify to at most ~4e-4 here (relative, losses;
absolute, weights and running statistics). Per-process batch norm instead of SyncBN moves them by 5e-2 to 0.3.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import TINY_VIT, tiny_overrides

GLOBAL_BATCH = 16
PROCESSES = 2
COMMON = ["train.epochs=2", "data.train_subset=32", "train.device=cpu", "train.log_every=1", "data.num_workers=0"]
TINY_WIDTHS = "{widths: [4, 8, 8]}"
TWO_CNNS = [f"members.small.backbone_args={TINY_WIDTHS}", f"members.large.backbone_args={TINY_WIDTHS}"]
TWO_TINY_VITS = [f"members.{m}.backbone_args={{img_size: 8, patch_size: 2, depth: 2, embed_dim: 16, num_heads: 2}}"
                 for m in ("vit_s", "vit_t")]
TINY_VIT_ONLY = [f"members.vit.backbone_args={TINY_VIT}".replace("'", ""), "members.vit.drop_path_rate=0",
                 "members.vit.optimizer.warmup_epochs=0.5"]

# method -> overrides of its default config (stochastic depth off: its random masks cannot match across layouts)
METHODS = {
    "dino": tiny_overrides("dino"),
    "mokd": tiny_overrides("mokd") + ["members.vit.drop_path_rate=0"],
    "dogo": [*TWO_CNNS, "strategy.simclr={hidden_dim: 16, out_dim: 8}"],
    "simclr": [f"members.cnn.backbone_args={TINY_WIDTHS}", "strategy.hidden_dim=16", "strategy.out_dim=8"],
    # MCL on 4-channel nets is ill-conditioned: the soft terms are KLs between nearly equal distributions, and one
    # process with 1 vs 2 threads already differs by 0.4% in the second step's soft ICL (33% in soft VCL with a
    # ResNet-32 at its own lr); two ResNet-20s at a tenth of the lr keep it to that, so MCL's losses get LOSS_RTOL
    "mcl": [*TWO_CNNS, "strategy.embed_dim=8", "members.large.backbone=cifar_resnet20", "members.small.optimizer.lr=0.02",
            "members.large.optimizer.lr=0.02"],
    "sdssl": [*TINY_VIT_ONLY, "strategy.proj_hidden_dim=16", "strategy.layer_proj_hidden_dim=16",
              "strategy.pred_hidden_dim=16", "strategy.out_dim=8"],
    "combos/dogo_byol_peers": [*TWO_CNNS, "strategy.byol={proj_hidden_dim: 16, pred_hidden_dim: 16, out_dim: 8}"],
    "combos/dogo_mocov3_peers": [*TWO_CNNS, "strategy.mocov3={proj_hidden_dim: 16, pred_hidden_dim: 16, out_dim: 8}"],
    "combos/sdssl_dino": tiny_overrides("dino"),
    "combos/mokd_sdssl_layers": [*TWO_TINY_VITS, "strategy.out_dim=16", "strategy.hidden_dim=16", "strategy.bottleneck_dim=8",
                                 "strategy.thead_dim=16", "strategy.thead_depth=1", "strategy.thead_num_heads=2"],
}
ZOO = Path(__file__).resolve().parents[1] / "zoo_configs"


def overrides(method: str, batch_size: int) -> list[str]:
    return [*METHODS[method], *COMMON, f"train.batch_size={batch_size}"]


def train(method: str, batch_size: int, run_dir: Path) -> None:
    """One epoch of a two-epoch schedule (so no final evaluation), checkpointed at its end."""
    from sslkd.config import load_config
    from sslkd.engine.trainer import Trainer

    config = ZOO / f"{method}.yaml" if method.startswith("combos/") else None
    Trainer(load_config(None if config else method, config and str(config), overrides(method, batch_size)),
            run_dir).fit(stop_at_epoch=1)


@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    launch = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(PROCESSES),
         __file__, str(out), *METHODS],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True,
    )
    try:
        _, stderr = launch.communicate(timeout=300)
    finally:
        if launch.poll() is None:
            os.killpg(launch.pid, signal.SIGKILL)
            launch.wait()
    assert launch.returncode == 0, stderr[-3000:]
    return out


def losses(run_dir: Path) -> list[dict]:
    """The logged training steps (the step-0 k-NN floor record is an evaluation, not a step)."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "images_per_s"} for r in records if "loss" in r]


# relative tolerance of the logged losses: what reordered sums amount to after two steps (see the module docstring)
LOSS_RTOL = {"mcl": 1e-2}


@pytest.mark.parametrize("method", METHODS)
def test_two_processes_with_half_batches_equal_one_process(method, two_process_runs, tmp_path):
    torch.set_num_threads(1)
    train(method, GLOBAL_BATCH, tmp_path / method)
    single, double = losses(tmp_path / method), losses(two_process_runs / method)
    assert len(single) == len(double) == 2
    for a, b in zip(single, double):
        assert a.keys() == b.keys() and (a["step"], a["epoch"]) == (b["step"], b["epoch"])
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=LOSS_RTOL.get(method, 2e-3), abs=1e-6), (a["step"], key)
    one = torch.load(tmp_path / method / "checkpoints" / "last.pt", weights_only=True)
    two = torch.load(two_process_runs / method / "checkpoints" / "last.pt", weights_only=True)
    assert one["step"] == two["step"] == 2
    assert one["strategy"].keys() == two["strategy"].keys()
    for key, value in one["strategy"].items():
        if value.is_floating_point():
            torch.testing.assert_close(two["strategy"][key], value, rtol=1e-3, atol=1e-3, msg=key)
        else:
            assert torch.equal(two["strategy"][key], value), key
    assert len(two["rng"]) == PROCESSES


def test_cli_under_torchrun_writes_one_run_from_rank_zero(two_process_runs):
    summary = json.loads((two_process_runs / "cli" / "summary.json").read_text())
    assert summary["epochs"] == 1 and 0 <= summary["members"]["cnn"]["knn_top1"] <= 100
    assert [r["step"] for r in losses(two_process_runs / "cli") if "loss" in r] == [1, 2, 3, 4]


def test_global_batches_do_not_depend_on_the_number_of_processes():
    from sslkd.data.sampling import EpochSampler

    def batches(world: int, batch: int, start: int = 0) -> list[set[int]]:
        shards = []
        for rank in range(world):
            sampler = EpochSampler(50, seed=3, rank=rank, world_size=world)
            sampler.set_epoch(2, start=start)
            shards.append([index for index, _ in sampler])
        return [set().union(*(shard[k * batch:(k + 1) * batch] for shard in shards)) for k in range(len(shards[0]) // batch)]

    assert batches(1, 12) == batches(2, 6) == batches(4, 3)
    assert batches(2, 6, start=12) == batches(2, 6)[2:]


def exact_collectives(out: Path) -> None:
    """Global batch norm, NT-Xent and DoGo's KL on two halves, in float64, against the whole batch in one process:
    outputs and gradients (averaged over processes, as the trainer does) must agree to rounding."""
    from torch import nn

    from sslkd.core import distributed
    from sslkd.losses.contrastive import dogo_kd_loss, nt_xent, similarity_logits

    rank, half = distributed.rank(), slice(8 * distributed.rank(), 8 * distributed.rank() + 8)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(16, 3, 6, 6, generator=generator, dtype=torch.float64) * 3 + 1
    weights = torch.randn(16, 4, 4, 4, generator=generator, dtype=torch.float64)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).double()
    distributed.convert_sync_batchnorm(net, torch.device("cpu"))
    loss = (net(x[half]) * weights[half]).sum() / 8
    loss.backward()
    distributed.average_gradients(list(net.parameters()))
    z = [torch.randn(16, 8, generator=generator, dtype=torch.float64) for _ in range(4)]
    local = [t[half].clone().requires_grad_() for t in z]
    kd = dogo_kd_loss(similarity_logits(local[0], local[1]), [similarity_logits(local[2], local[3])])
    contrastive = nt_xent(local[0], local[1])
    (kd + contrastive).backward()
    grads = [torch.zeros(16, 8, dtype=torch.float64) for _ in range(2)]
    for grad, t in zip(grads, local):
        grad[half] = t.grad / distributed.world_size()
    values = distributed.all_reduce_mean(torch.stack([loss.detach(), kd.detach(), contrastive.detach()]))
    result = {"values": values, "grads": [distributed.all_reduce_mean(g) * distributed.world_size() for g in grads],
              "params": {n: p.grad for n, p in net.named_parameters()},
              "running": {n: b for n, b in net.named_buffers()}}
    if rank == 0:
        torch.save(result, out / "collectives.pt")


def test_collectives_equal_the_whole_batch_in_float64(two_process_runs):
    from torch import nn

    from sslkd.losses.contrastive import dogo_kd_loss, nt_xent, similarity_logits

    two = torch.load(two_process_runs / "collectives.pt", weights_only=True)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(16, 3, 6, 6, generator=generator, dtype=torch.float64) * 3 + 1
    weights = torch.randn(16, 4, 4, 4, generator=generator, dtype=torch.float64)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).double()
    loss = (net(x) * weights).sum() / 16
    loss.backward()
    z = [torch.randn(16, 8, generator=generator, dtype=torch.float64).requires_grad_() for _ in range(4)]
    kd = dogo_kd_loss(similarity_logits(z[0], z[1]), [similarity_logits(z[2], z[3])])
    contrastive = nt_xent(z[0], z[1])
    (kd + contrastive).backward()
    # nt_xent and similarity_logits compute in float32 (as in training), hence the float32 tolerance for them
    torch.testing.assert_close(two["values"][0], loss.detach())
    torch.testing.assert_close(two["values"][1:], torch.stack([kd, contrastive]).detach().double(), rtol=1e-5, atol=1e-6)
    for grad, t in zip(two["grads"], z):
        torch.testing.assert_close(grad, t.grad, rtol=1e-5, atol=1e-7)
    for name, param in net.named_parameters():
        torch.testing.assert_close(two["params"][name], param.grad)
    for name, buffer in net.named_buffers():
        torch.testing.assert_close(two["running"][name], buffer)


def main(out: str, methods: list[str]) -> None:
    import torch.distributed as dist

    from sslkd.core import distributed

    torch.set_num_threads(1)
    distributed.init_from_env("cpu")
    assert dist.get_world_size() == PROCESSES
    exact_collectives(Path(out))
    for method in methods:
        train(method, GLOBAL_BATCH // PROCESSES, Path(out) / method)
    from sslkd.cli import main as sslkd

    # the `torchrun -m sslkd train` path: the CLI joins the existing group, rank 0 evaluates and writes the summary
    assert sslkd(["train", "--method", "dino", *tiny_overrides("dino"), "train.batch_size=8", "train.device=cpu",
                  "--output-dir", str(Path(out) / "cli")]) == 0


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
