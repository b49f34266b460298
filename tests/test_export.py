"""An exported backbone loads into timm with strict key matching and computes the same features."""

import timm
import torch

from sslkd.cli import main
from sslkd.eval.protocol import strategy_from_checkpoint
from conftest import TINY_VIT, tiny_overrides


def test_exported_vit_loads_into_timm_strictly(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--method", "mokd", "--output-dir", str(run), *tiny_overrides("mokd")]) == 0
    out = tmp_path / "vit.safetensors"
    checkpoint = run / "checkpoints" / "last.pt"
    capsys.readouterr()
    assert main(["export", "--checkpoint", str(checkpoint), "--member", "vit", "--out", str(out)]) == 0
    assert "timm.create_model('vit_tiny_patch16_224', pretrained=True" in capsys.readouterr().out
    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=True, pretrained_cfg_overlay=dict(file=str(out), num_classes=0),
        dynamic_img_size=True, **TINY_VIT,
    ).eval()  # strict: timm raises on any missing or unexpected key
    strategy, _ = strategy_from_checkpoint(checkpoint)
    teacher = strategy.members["vit"].eval_backbone().eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(images), teacher(images))


def test_export_needs_member_when_several(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--method", "mokd", "--output-dir", str(run), *tiny_overrides("mokd")]) == 0
    capsys.readouterr()
    code = main(["export", "--checkpoint", str(run / "checkpoints" / "last.pt"), "--out", str(tmp_path / "x.safetensors")])
    assert code == 2 and "choose one with --member" in capsys.readouterr().err
