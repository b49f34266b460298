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


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mokd/imagenet_r50_vit_s16_100ep.yaml", "mokd/imagenet_r50_vit_b16_100ep.yaml"])
def test_paper_scale_mokd_config_trains_one_step(tmp_path, name):
    cfg = load_config(None, str(ZOO / name), ["train.batch_size=2", "data.num_workers=0"])
    assert cfg.strategy["out_dim"] == 65536 and cfg.data.augment.n_local == 8
    torch.manual_seed(0)
    images = torch.randint(0, 256, (2, 3, 256, 256), dtype=torch.uint8)
    trainer = Trainer(cfg, tmp_path, train_set=TensorImageDataset(images, torch.tensor([0, 1]), IMAGENET))
    opts = trainer.strategy.options
    assert (opts.thead_depth, opts.thead_dim, opts.feature_search) == (3, 384, "code")
    views, labels, indices = next(iter(trainer.loader))
    assert [tuple(v.shape[-2:]) for v in views] == [(224, 224)] * 2 + [(96, 96)] * 8
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
