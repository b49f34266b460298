"""Combinations from config alone (zoo_configs/combos/): a coupling over objectives its paper did not pair it with.

DoGo with BYOL and with MoCo v3 peers: each peer's own term is exactly its baseline's objective, its KD term reaches
only its own predictions, and its EMA teacher follows it alone at its objective's momentum schedule.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sslkd.config import load_config
from sslkd.core.schedules import ema_momentum
from sslkd.data import DatasetInfo
from sslkd.engine.trainer import Trainer
from sslkd.registry import STRATEGIES
from sslkd.strategies.base import StepInfo

COMBOS = Path(__file__).resolve().parents[1] / "zoo_configs" / "combos"
INFO = DatasetInfo("digits", 10, 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), tuple(map(str, range(10))))
TINY = ["members.small.backbone_args={widths: [4, 8, 8]}", "members.large.backbone_args={widths: [4, 8, 8]}"]
DOGO_PEERS = {"dogo_byol_peers": "byol", "dogo_mocov3_peers": "mocov3"}


def tiny(objective: str) -> list[str]:
    return [*TINY, f"strategy.{objective}={{proj_hidden_dim: 16, pred_hidden_dim: 16, out_dim: 8}}"]


def build(combo: str, extra: list[str] = ()):
    cfg = load_config(None, str(COMBOS / f"{combo}.yaml"), [*tiny(DOGO_PEERS[combo]), *extra])
    torch.manual_seed(0)
    return STRATEGIES.get(cfg.method)(cfg, INFO), cfg


def views(batch: int = 6) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randn(batch, 3, 32, 32, generator=generator) for _ in range(2)]


def test_every_combination_is_a_config_that_validates():
    assert sorted(p.stem for p in COMBOS.glob("*.yaml")) == sorted(DOGO_PEERS)


@pytest.mark.parametrize("combo, objective", DOGO_PEERS.items())
def test_a_dogo_peer_learns_its_baselines_objective(combo, objective):
    """With the same weights and views, a peer's ``ssl`` term equals the loss of the objective's own baseline."""
    dogo, cfg = build(combo)
    baseline_cfg = load_config(objective, None, ["members={cnn: {backbone: cifar_resnet20, backbone_args: "
                                                 "{widths: [4, 8, 8]}}}",
                                                 f"strategy={{proj_hidden_dim: 16, pred_hidden_dim: 16, out_dim: 8}}"])
    baseline = STRATEGIES.get(objective)(baseline_cfg, INFO)
    baseline.members["cnn"].load_state_dict(dogo.members["small"].state_dict())
    v = views()
    peer = dogo.members["small"]
    assert peer.teacher is not None and list(peer.teacher.module) == ["backbone", "projector"]
    assert dogo.evaluated_encoder("small") == "student"
    terms = dogo(v, None, None, None)
    alone = baseline(v, None, None, None)
    torch.testing.assert_close(terms["small/ssl"], alone["cnn/loss"])
    assert set(terms) == {f"{m}/{t}" for m in ("small", "large") for t in ("ssl", "kd", "loss")} | {"loss"}


@pytest.mark.parametrize("combo", DOGO_PEERS)
def test_kd_reaches_only_the_peers_own_predictions(combo):
    dogo, _ = build(combo)
    outputs = dogo.network_outputs(views())
    leaves = {}
    for name, out in outputs.items():
        out.z = tuple(t.detach().requires_grad_() for t in out.z)
        out.p = tuple(t.detach().requires_grad_() for t in out.p)
        leaves[name] = out
    terms = dogo.losses(leaves, None, None, None)
    for name in leaves:
        other = next(n for n in leaves if n != name)
        inputs = [*leaves[name].p, *leaves[name].z, *leaves[other].p, *leaves[other].z]
        grads = torch.autograd.grad(terms[f"{name}/kd"], inputs, allow_unused=True)
        reached = [g is not None and bool(g.abs().max() > 0) for g in grads]
        assert reached == [True, True, False, False, False, False, False, False]
        assert all(not k.requires_grad for k in leaves[name].k)


@pytest.mark.parametrize("combo", DOGO_PEERS)
def test_each_peers_teacher_follows_it_alone_at_its_momentum(combo, tmp_path):
    cfg = load_config(None, str(COMBOS / f"{combo}.yaml"),
                      [*tiny(DOGO_PEERS[combo]), "train.epochs=1", "train.batch_size=16", "data.train_subset=32",
                       "data.num_workers=0", "train.device=cpu", "eval.knn_k=[5]"])
    trainer = Trainer(cfg, tmp_path)
    strategy = trainer.strategy
    step = StepInfo(step=0, epoch=0, steps_per_epoch=2, total_steps=2)
    before = {name: [p.clone() for p in m.teacher.module.parameters()] for name, m in strategy.members.items()}
    views_, labels, indices = next(iter(trainer.loader))
    trainer.set_schedules(step)
    trainer.train_step(views_, labels, indices, step)
    momentum = ema_momentum(0, 2, getattr(strategy.options, DOGO_PEERS[combo]).momentum_teacher)
    for name, member in strategy.members.items():
        assert all(not p.requires_grad and p.grad is None for p in member.teacher.module.parameters())
        source = [p for key in ("backbone", "projector") for p in member.student[key].parameters()]
        for old, new, student in zip(before[name], member.teacher.module.parameters(), source):
            torch.testing.assert_close(new, old * momentum + student * (1 - momentum))
