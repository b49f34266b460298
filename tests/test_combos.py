"""Combinations from config alone (zoo_configs/combos/): a coupling over objectives its paper did not pair it with.

DoGo with BYOL and with MoCo v3 peers: each peer's own term is exactly its baseline's objective, its KD term reaches
only its own predictions, and its EMA teacher follows it alone at its objective's momentum schedule.
SDSSL's layer-wise distillation over DINO and over MOKD: L_isd is the mean DINO loss of the distilled blocks' heads
against the member's own teacher target, weighted by alpha(t); it reaches only the blocks up to the distilled one
and their heads, never the final head, the peer or a teacher.
"""

from __future__ import annotations

import json
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
    assert sorted(p.stem for p in COMBOS.glob("*.yaml")) == sorted([*DOGO_PEERS, *LAYERED])


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


# SDSSL's layer-wise distillation stacked on DINO and on MOKD (sslkd/strategies/layerwise.py)
LAYERED = {
    "sdssl_dino": ["members.cnn.backbone_args={widths: [4, 8, 8]}", "data.augment.n_local=2", "strategy.out_dim=32",
                   "strategy.hidden_dim=16", "strategy.bottleneck_dim=8"],
    "mokd_sdssl_layers": [*(f"members.{m}.backbone_args={{img_size: 8, patch_size: 2, depth: 3, embed_dim: 16, "
                            "num_heads: 2}" for m in ("vit_s", "vit_t")),
                          "strategy.out_dim=32", "strategy.hidden_dim=16", "strategy.bottleneck_dim=8",
                          "strategy.thead_dim=16", "strategy.thead_depth=1", "strategy.thead_num_heads=2"],
}
MID_TRAINING = StepInfo(step=3, epoch=0, steps_per_epoch=10, total_steps=10)


def build_layered(combo: str, extra: list[str] = ()):
    cfg = load_config(None, str(COMBOS / f"{combo}.yaml"), [*LAYERED[combo], *extra])
    torch.manual_seed(0)
    return STRATEGIES.get(cfg.method)(cfg, INFO)


def layered_views(combo: str, batch: int = 6) -> list[torch.Tensor]:
    """DINO's two 32-px globals and two 16-px locals; the MOKD quickstart's two 8-px views."""
    generator = torch.Generator().manual_seed(1)
    sizes = [32, 32, 16, 16] if combo == "sdssl_dino" else [8, 8]
    return [torch.randn(batch, 3, size, size, generator=generator) for size in sizes]


def by_hand_isd(strategy, member: str, views: list[torch.Tensor], teacher_logits: torch.Tensor, tau_t: float):
    """L_isd (SDSSL Eq. 3 with DINO's loss) from the backbone's own per-block features: each distilled block's head
    over every crop, against the member's teacher target with the teacher's center."""
    from sslkd.losses.dino import dino_loss
    from sslkd.strategies.base import group_by_resolution
    from sslkd.strategies.layerwise import block_key

    student = strategy.members[member].student
    layers = strategy.layerwise.layers[member]
    feats = [student["backbone"].forward_intermediates(batch, layers) for _, _, batch in group_by_resolution(views)]
    losses = [dino_loss(student["layer_heads"][block_key(n)](torch.cat([f[n] for f in feats])), teacher_logits,
                        strategy.centers[f"{member}/dino"], len(views), 2, strategy.options.student_temp, tau_t)
              for n in layers]
    return torch.stack(losses).mean()


def test_layers_distil_the_blocks_the_config_names():
    dino = build_layered("sdssl_dino")
    assert dino.layerwise.layers == {"cnn": ["stages.0.2", "stages.1.2"]}
    mokd = build_layered("mokd_sdssl_layers")
    assert mokd.layerwise.layers == {m: ["blocks.0", "blocks.1"] for m in ("vit_s", "vit_t")}
    assert mokd.parameter_declarations("vit_s").last_layer == (
        "dino.last_layer", "thead.last_layer", "layer_heads.blocks_0.last_layer", "layer_heads.blocks_1.last_layer")


def test_without_layer_distillation_dino_has_no_layer_heads_and_a_whole_teacher():
    cfg = load_config(None, str(COMBOS / "sdssl_dino.yaml"), [*LAYERED["sdssl_dino"], "strategy.layer_distillation=null"])
    dino = STRATEGIES.get("dino")(cfg, INFO)
    member = dino.members["cnn"]
    assert list(member.student) == list(member.teacher.module) == ["backbone", "dino"]
    out = dino.network_outputs(layered_views("sdssl_dino"))
    assert out["cnn"]["layers"] == [] and "cnn/isd" not in dino.losses(out, None, None, MID_TRAINING)


def test_sdssl_over_dino_adds_alpha_times_the_mean_layer_dino_loss():
    from sslkd.losses.dino import dino_loss
    from sslkd.strategies.dino import teacher_temperature
    from sslkd.strategies.layerwise import alpha_at

    dino = build_layered("sdssl_dino")
    v = layered_views("sdssl_dino")
    out = dino.network_outputs(v)["cnn"]
    terms = dino.losses({"cnn": out}, None, None, MID_TRAINING)
    tau_t = teacher_temperature(MID_TRAINING, dino.options)
    isd = by_hand_isd(dino, "cnn", v, out["teacher"], tau_t)
    torch.testing.assert_close(terms["cnn/isd"], isd)
    final = dino_loss(out["student"], out["teacher"], dino.centers["cnn/dino"], 4, 2, dino.options.student_temp, tau_t)
    torch.testing.assert_close(terms["cnn/loss"], final + alpha_at(3, 10, 1.0) * isd)
    assert list(dino.members["cnn"].teacher.module) == ["backbone", "dino"]


def test_a_layer_head_learns_only_through_its_block_and_never_reaches_the_final_head_or_the_teacher():
    dino = build_layered("sdssl_dino")
    terms = dino(layered_views("sdssl_dino"), None, None, MID_TRAINING)
    student = dino.members["cnn"].student
    named = {n: p for n, p in student.named_parameters() if p.requires_grad}
    grads = dict(zip(named, torch.autograd.grad(terms["cnn/isd"], list(named.values()), allow_unused=True)))
    reached = {name for name, g in grads.items() if g is not None and bool(g.abs().max() > 0)}
    assert any(n.startswith("layer_heads.stages_0_2.mlp") for n in reached)
    assert any(n.startswith("layer_heads.stages_1_2.mlp") for n in reached)
    assert any(n.startswith("backbone.stages.1.2.") for n in reached)
    assert not any(n.startswith(("dino.", "backbone.stages.2.")) for n in reached)
    assert all(not p.requires_grad for p in dino.members["cnn"].teacher.parameters())


def test_mokd_members_distil_their_layers_towards_their_own_teacher():
    from sslkd.strategies.layerwise import alpha_at

    mokd = build_layered("mokd_sdssl_layers")
    v = layered_views("mokd_sdssl_layers")
    outputs = mokd.network_outputs(v)
    terms = mokd.losses(outputs, None, None, MID_TRAINING)
    for name, member in mokd.members.items():
        teacher = outputs["teachers"][name]["mlp"]
        isd = by_hand_isd(mokd, name, v, teacher, mokd.self_teacher_temperature(MID_TRAINING, name))
        torch.testing.assert_close(terms[f"{name}/isd"], isd)
        method = terms[f"{name}/sm"] + terms[f"{name}/st"] + member.cfg.distill_weight * (terms[f"{name}/cm"] + terms[f"{name}/ct"])
        torch.testing.assert_close(terms[f"{name}/loss"], method + alpha_at(3, 10, 1.0) * isd)
        assert list(member.teacher.module) == ["backbone", "dino", "thead"]
        peer = next(m for m in mokd.members.values() if m is not member)
        grads = torch.autograd.grad(terms[f"{name}/isd"], [p for p in peer.student.parameters() if p.requires_grad],
                                    allow_unused=True,
                                    retain_graph=True)
        assert all(g is None for g in grads)


@pytest.mark.parametrize("combo", LAYERED)
def test_a_layered_combination_trains_and_logs_its_layer_terms(combo, tmp_path):
    cfg = load_config(None, str(COMBOS / f"{combo}.yaml"),
                      [*LAYERED[combo], "train.epochs=1", "train.batch_size=16", "data.train_subset=32",
                       "data.num_workers=0", "train.device=cpu", "eval.knn_k=[5]", "train.log_every=1"])
    Trainer(cfg, tmp_path).fit()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert steps and all(k in steps[0] for k in ("alpha", *(f"{m}/isd" for m in cfg.members)))
