"""What a strategy declares about its parameters reaches the optimiser groups and the schedules (``Declared``):
per-module lr and weight-decay multipliers, and frozen modules (MoCo v3's and SDSSL's fixed patch projection,
driven by ``backbone_args.freeze_patch_embed``)."""

import pytest
import torch
from test_golden import tiny_overrides

from sslkd.config import load_config
from sslkd.engine.trainer import Trainer
from sslkd.strategies.base import StepInfo
from sslkd.strategies.simclr import SimCLR

STEP = StepInfo(step=3, epoch=1, steps_per_epoch=2, total_steps=4)


def simclr_trainer(tmp_path, monkeypatch, **declarations) -> Trainer:
    """A tiny SimCLR run whose strategy declares ``declarations`` for its member."""
    monkeypatch.setattr(SimCLR, "parameter_declarations", lambda self, member: self.declare(member, **declarations))
    return Trainer(load_config("simclr", None, tiny_overrides("simclr")), tmp_path / "run")


def groups_of(trainer: Trainer, module: str) -> tuple[list[dict], list[dict]]:
    """The member's optimiser groups holding parameters of student ``module``, and the other groups."""
    owned = {id(p) for p in trainer.strategy.members["cnn"].student[module].parameters()}
    groups = [g for g in trainer.optimizers["cnn"].optimizer.param_groups if g["params"]]
    inside = [g for g in groups if any(id(p) in owned for p in g["params"])]
    return inside, [g for g in groups if g not in inside]


def test_an_lr_scale_gives_its_modules_exactly_that_fraction_of_the_scheduled_lr(tmp_path, monkeypatch):
    trainer = simclr_trainer(tmp_path, monkeypatch, lr_scale={"projector": 0.1}, weight_decay_scale={"projector": 2.0})
    lr = trainer.set_schedules(STEP)["cnn"]
    scaled, others = groups_of(trainer, "projector")
    projector = {id(p) for p in trainer.strategy.members["cnn"].student["projector"].parameters()}
    assert all(id(p) in projector for g in scaled for p in g["params"])  # groups of their own
    wd = next(g["weight_decay"] for g in others if g["regularized"])
    assert lr > 0 and wd > 0 and scaled and others
    assert all(g["lr"] == lr * 0.1 for g in scaled) and all(g["lr"] == lr for g in others)
    assert [g["weight_decay"] for g in scaled if g["regularized"]] == [wd * 2.0]


def test_a_weight_decay_scale_of_zero_gives_a_group_without_weight_decay(tmp_path, monkeypatch):
    trainer = simclr_trainer(tmp_path, monkeypatch, weight_decay_scale={"projector": 0.0})
    trainer.set_schedules(STEP)
    with_projector, others = groups_of(trainer, "projector")  # among the biases and norms, without weight decay
    assert with_projector and all(not g["regularized"] and g["weight_decay"] == 0.0 for g in with_projector)
    assert any(g["regularized"] and g["weight_decay"] > 0 for g in others)


def frozen_patch_embed_trainer(tmp_path, method: str) -> Trainer:
    frozen_vit = ("members.vit.backbone_args={img_size: 32, patch_size: 8, depth: 1, embed_dim: 24, num_heads: 2, "
                  "freeze_patch_embed: true}")
    return Trainer(load_config(method, None, [*tiny_overrides(method), frozen_vit]), tmp_path / method)


@pytest.mark.parametrize("method", ["mocov3", "sdssl"])
def test_a_frozen_patch_embedding_gets_no_gradient_and_is_in_no_group(tmp_path, method):
    trainer = frozen_patch_embed_trainer(tmp_path, method)  # also checks every trainable parameter is optimised
    assert trainer.strategy.parameter_declarations("vit").frozen == ("backbone.model.patch_embed",)
    frozen = list(trainer.strategy.members["vit"].student["backbone"].model.patch_embed.parameters())
    in_groups = {id(p) for part in trainer.optimizers.values() for g in part.optimizer.param_groups for p in g["params"]}
    assert frozen and not any(p.requires_grad or id(p) in in_groups for p in frozen)
    before = [p.clone() for p in frozen]
    views, labels, indices = next(iter(trainer.loader))
    trainer.set_schedules(STEP)
    assert trainer.train_step(views, labels, indices, STEP) is not None
    assert all(p.grad is None for p in frozen) and all(torch.equal(a, p) for a, p in zip(before, frozen))
