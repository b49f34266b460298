"""Every paper-scale config builds, and one training step runs on two random images on the CPU."""

from pathlib import Path

import pytest
import torch

from sslkd.config import load_config
from sslkd.data import DatasetInfo
from sslkd.data.datasets import TensorImageDataset
from sslkd.engine.trainer import Trainer
from sslkd.strategies.base import StepInfo

ZOO = Path(__file__).resolve().parents[1] / "zoo_configs"
IMAGENET = DatasetInfo("imagenet", 1000, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), tuple(map(str, range(1000))))


def paper_scale_trainer(tmp_path, name: str) -> Trainer:
    cfg = load_config(None, str(ZOO / name), ["train.batch_size=2", "data.num_workers=0"])
    assert cfg.strategy["out_dim"] == 65536 and cfg.data.augment.n_local == 8
    torch.manual_seed(0)
    images = torch.randint(0, 256, (2, 3, 256, 256), dtype=torch.uint8)
    trainer = Trainer(cfg, tmp_path, train_set=TensorImageDataset(images, torch.tensor([0, 1]), IMAGENET))
    opts = trainer.strategy.options
    assert (opts.thead_depth, opts.thead_dim, opts.feature_search) == (3, 384, "code")
    return trainer


@pytest.mark.parametrize("name, vit_width", [("mokd/imagenet_r50_vit_s16_100ep.yaml", 384),
                                             ("mokd/imagenet_r50_vit_b16_100ep.yaml", 768)])
def test_paper_scale_mokd_configs_build_their_members_and_views(tmp_path, name, vit_width):
    trainer = paper_scale_trainer(tmp_path, name)
    assert trainer.strategy.members["vit"].backbone.num_features == vit_width
    assert trainer.strategy.members["cnn"].backbone.num_features == 2048
    views, _, _ = next(iter(trainer.loader))
    assert [tuple(v.shape[-2:]) for v in views] == [(224, 224)] * 2 + [(96, 96)] * 8


@pytest.mark.slow
def test_paper_scale_mokd_config_trains_one_step(tmp_path):
    """One step of the R50 + ViT-S/16 pairing (the ViT-B/16 one differs only in the ViT's width, built above)."""
    trainer = paper_scale_trainer(tmp_path, "mokd/imagenet_r50_vit_s16_100ep.yaml")
    views, labels, indices = next(iter(trainer.loader))
    before = {n: p.clone() for n, p in trainer.strategy.members["vit"].student.named_parameters() if "blocks.0.attn" in n}
    info = StepInfo(step=50, epoch=50, steps_per_epoch=1, total_steps=100)
    trainer.set_schedules(info)
    losses = trainer.train_step(views, labels, indices, info)
    assert torch.isfinite(losses["loss"])
    after = dict(trainer.strategy.members["vit"].student.named_parameters())
    assert any(not torch.equal(before[n], after[n]) for n in before)


@pytest.mark.parametrize("path", sorted(p.relative_to(ZOO).as_posix() for p in ZOO.glob("*/*.yaml") if p.parent.name != "_base_"))
def test_every_zoo_config_validates(path):
    cfg = load_config(None, str(ZOO / path), [])
    assert cfg.members
