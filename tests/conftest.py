"""Shared fixtures: tiny configs so end-to-end tests take seconds on 2 CPU cores."""

from __future__ import annotations

import pytest
import torch

from sslkd.data import DatasetInfo
from sslkd.registry import load_plugins
from sslkd.strategies.base import StepInfo

load_plugins()
torch.set_num_threads(1)

TINY_VIT = {"img_size": 32, "patch_size": 8, "depth": 1, "embed_dim": 24, "num_heads": 2}
# The tests' MOKD set-up, whatever the quickstart's defaults are: a CNN and a ViT (MOKD Table 1's pairing) on 32-px
# multi-crop views, DINO's head and temperature defaults with a 3-epoch teacher warm-up
MOKD_CNN_VIT = [
    "members={cnn: {backbone: cifar_resnet20, optimizer: {name: sgd}}, vit: {backbone: vit_tiny_patch16_224, "
    "optimizer: {name: adamw}}}",
    "data.augment={n_global: 2, n_local: 4, global_size: 32, local_size: 16, global_scale: [0.25, 1.0], "
    "local_scale: [0.05, 0.25]}",
    "data.image_size=null",
    "strategy={warmup_teacher_temp_epochs: 3}",
]


def tiny_overrides(method: str = "mokd", epochs: int = 1) -> list[str]:
    """Overrides that shrink a method's default config to a few steps of tiny models on 64 digits."""
    overrides = [
        f"train.epochs={epochs}",
        "train.batch_size=16",
        "train.log_every=1",
        "data.train_subset=64",
        "data.num_workers=0",
        "data.augment.n_local=2",
        "eval.knn_k=[5]",
        "strategy.out_dim=32",
        "strategy.hidden_dim=16",
        "strategy.bottleneck_dim=8",
        "members.cnn.backbone_args={widths: [4, 8, 8]}",
        "members.cnn.optimizer.warmup_epochs=0.5",
    ]
    if method == "mokd":
        overrides = [
            *MOKD_CNN_VIT,
            *overrides,
            f"members.vit.backbone_args={TINY_VIT}".replace("'", ""),
            "members.vit.optimizer.warmup_epochs=0.5",
            "strategy.thead_dim=24",
            "strategy.thead_depth=1",
            "strategy.thead_num_heads=2",
        ]
    return overrides


def step_past_warmup(trainer) -> dict:
    """One training step of ``trainer``'s first batch past the lr warm-up (so the weights move); its losses."""
    from sslkd.strategies.base import StepInfo

    views, labels, indices = next(iter(trainer.loader))
    info = StepInfo(trainer.total_steps // 2 + 1, 0, trainer.steps_per_epoch, trainer.total_steps)
    trainer.set_schedules(info)
    return trainer.train_step(views, labels, indices, info)


class Stopped(Exception):
    """Stands for the process dying inside a step."""


def fit_until_stopped_inside(trainer, step: int) -> None:
    """Train until the process dies inside global step ``step`` (before its forward pass ends), as a killed run."""
    forward = trainer.strategy.forward

    def dies_at_step(views, labels, indices, info):
        if info.step == step:
            raise Stopped
        return forward(views, labels, indices, info)

    trainer.strategy.forward = dies_at_step
    with pytest.raises(Stopped):
        trainer.fit()


@pytest.fixture
def tiny_cfg():
    from sslkd.config import load_config

    def make(method: str = "mokd", extra: list[str] | None = None, epochs: int = 1):
        return load_config(method, None, tiny_overrides(method, epochs) + (extra or []))

    return make


# A fake 10-class data set and a step past every warm-up: what the strategy-level tool tests build and step with.
FAKE_INFO = DatasetInfo("fake", 10, 32, (0.5,) * 3, (0.25,) * 3, tuple(str(i) for i in range(10)))
AFTER_WARM_UP = StepInfo(step=10**6, epoch=10**4, steps_per_epoch=100, total_steps=2 * 10**6)


def multicrop_views(batch=4):
    """Two 32-px global and two 16-px local random crops, the same on every call."""
    torch.manual_seed(1)
    return [torch.randn(batch, 3, 32, 32) for _ in range(2)] + [torch.randn(batch, 3, 16, 16) for _ in range(2)]
