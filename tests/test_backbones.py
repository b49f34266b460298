"""Backbone interface: shapes, one-pass consistency, small-image stem, parameter counts and error messages."""

import pytest
import torch

from sslkd.errors import UserError
from sslkd.models.backbones import build_backbone, count_params_m, frozen_modules
from sslkd.registry import BACKBONES

TINY_VIT = dict(img_size=32, patch_size=4, depth=2, embed_dim=48, num_heads=3)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _check_interface(model, x, pooled_dim, token_shape, grid, n_blocks):
    pooled, tokens, got_grid = model.forward_tokens(x)
    assert pooled.shape == (x.shape[0], pooled_dim)
    assert tokens.shape == (x.shape[0], *token_shape)
    assert got_grid == grid
    torch.testing.assert_close(model(x), pooled)
    inter = model.forward_intermediates(x)
    assert list(inter) == model.intermediate_names()
    assert len(inter) == n_blocks
    assert all(v.ndim == 2 and v.shape[0] == x.shape[0] for v in inter.values())
    return inter


def test_cifar_resnet20_interface():
    model = build_backbone("cifar_resnet20").eval()
    assert (model.kind, model.num_features, model.token_dim, model.patch_size) == ("cnn", 64, 64, None)
    x = torch.randn(2, 3, 32, 32)
    inter = _check_interface(model, x, 64, (64, 64), (8, 8), 9)
    assert [v.shape[1] for v in inter.values()] == [16] * 3 + [32] * 3 + [64] * 3
    torch.testing.assert_close(inter["stages.2.2"], model(x))


def test_cifar_resnet_widths_override():
    model = build_backbone("cifar_resnet20", widths=(8, 16, 32))
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 32)


def test_wrn_16_2_interface():
    model = build_backbone("wrn_16_2", dropout=0.1).eval()
    assert (model.kind, model.num_features) == ("cnn", 128)
    inter = _check_interface(model, torch.randn(2, 3, 32, 32), 128, (64, 128), (8, 8), 6)
    assert [v.shape[1] for v in inter.values()] == [32, 32, 64, 64, 128, 128]


@pytest.mark.parametrize("small_stem, grid", [(False, (1, 1)), (True, (4, 4))])
def test_timm_resnet18_small_image_stem(small_stem, grid):
    model = build_backbone("resnet18", small_image_stem=small_stem).eval()
    assert model.kind == "cnn" and model.num_features == 512
    conv1 = model.model.conv1
    assert (conv1.kernel_size, conv1.stride) == (((3, 3), (1, 1)) if small_stem else ((7, 7), (2, 2)))
    x = torch.randn(2, 3, 32, 32)
    inter = _check_interface(model, x, 512, (grid[0] * grid[1], 512), grid, 8)
    assert list(inter)[0] == "layer1.0"
    torch.testing.assert_close(inter["layer4.1"], model(x))


@pytest.mark.parametrize("size, grid", [(32, (8, 8)), (16, (4, 4))])
def test_small_vit_any_crop_size(size, grid):
    model = build_backbone("vit_tiny_patch16_224", **TINY_VIT).eval()
    assert (model.kind, model.num_features, model.token_dim, model.patch_size) == ("vit", 48, 48, 4)
    x = torch.randn(2, 3, size, size)
    inter = _check_interface(model, x, 48, (grid[0] * grid[1], 48), grid, 2)
    assert list(inter) == ["blocks.0", "blocks.1"]
    torch.testing.assert_close(inter["blocks.1"], model(x))
    only_first = model.forward_intermediates(x, names=["blocks.0"])
    torch.testing.assert_close(only_first["blocks.0"], inter["blocks.0"])


def test_vit_without_class_token_pools_patch_tokens():
    model = build_backbone("vit_medium_patch16_gap_256", **TINY_VIT).eval()
    x = torch.randn(2, 3, 32, 32)
    pooled, tokens, _ = model.forward_tokens(x)
    assert tokens.shape == (2, 64, 48)
    torch.testing.assert_close(model.forward_intermediates(x)["blocks.1"], pooled)


def test_unknown_intermediate_name():
    model = build_backbone("cifar_resnet20")
    with pytest.raises(UserError, match="stages.0.0"):
        model.forward_intermediates(torch.randn(1, 3, 32, 32), names=["layer9"])


def test_parameter_counts_match_literature():
    assert count_params_m(build_backbone("cifar_resnet20")) == pytest.approx(0.27, rel=0.03)
    assert count_params_m(build_backbone("wrn_16_2")) == pytest.approx(0.69, rel=0.03)


def test_unknown_name_suggests_closest():
    with pytest.raises(UserError, match="Did you mean 'resnet18'.*cifar_resnet20.*any timm model") as info:
        build_backbone("resnet18x")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "name, overrides, pattern",
    [
        ("vit_tiny_patch16_224", {"not_an_arg": 1}, "'not_an_arg'"),
        ("cifar_resnet20", {"dropout": 0.1}, "'dropout'"),
        ("resnet18", {"pretrained": True}, "pretrained"),
        ("vit_tiny_patch16_224", {**TINY_VIT, "embed_dim": 50}, "embed_dim"),
    ],
)
def test_bad_override_is_user_error(name, overrides, pattern):
    with pytest.raises(UserError, match=pattern):
        build_backbone(name, **overrides)


def test_small_image_stem_rejected_for_vit():
    with pytest.raises(UserError, match="small_image_stem"):
        build_backbone("vit_tiny_patch16_224", small_image_stem=True, **TINY_VIT)


CIFAR_NAMES = ["cifar_resnet20", "cifar_resnet32", "cifar_resnet56", "cifar_resnet110"] + [
    "wrn_10_2", "wrn_16_2", "wrn_28_2", "wrn_40_2", "wrn_28_4"
]


def test_cifar_backbones_registered():
    assert set(CIFAR_NAMES) <= set(BACKBONES.names())


@pytest.mark.parametrize("name", CIFAR_NAMES)
def test_every_registered_cifar_backbone_runs(name):
    model = build_backbone(name)
    pooled, tokens, grid = model.forward_tokens(torch.randn(2, 3, 32, 32))
    assert pooled.shape == (2, model.num_features) and tokens.shape == (2, 64, model.token_dim) and grid == (8, 8)
    assert pooled.isfinite().all()


def test_sincos_pos_embed_is_moco_v3s_fixed_table_with_a_zero_cls_row():
    model = build_backbone("vit_tiny_patch16_224", pos_embed="sincos", **TINY_VIT).model
    # MoCo v3 / the SDSSL code's build_2d_sincos_position_embedding, written out: patch (y, x) of the 8 x 8 grid
    # gets [sin(y w), cos(y w), sin(x w), cos(x w)], w_d = 10000^(-d / (D/4))
    quarter = TINY_VIT["embed_dim"] // 4
    omega = 1.0 / 10000.0 ** (torch.arange(quarter, dtype=torch.float32) / quarter)
    grid_w, grid_h = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    out_w, out_h = grid_w.flatten()[:, None] * omega, grid_h.flatten()[:, None] * omega
    table = torch.cat([out_w.sin(), out_w.cos(), out_h.sin(), out_h.cos()], dim=1)
    expected = torch.cat([torch.zeros(1, TINY_VIT["embed_dim"]), table])[None]
    torch.testing.assert_close(model.pos_embed, expected, rtol=0, atol=1e-6)
    assert not model.pos_embed.requires_grad


def test_freeze_patch_embed_is_a_fixed_xavier_uniform_projection_that_the_strategy_declares_frozen():
    """The backbone option initialises the projection; the strategy's declaration (``frozen_modules``) keeps it out
    of training (tests/test_parameter_declarations.py checks that through the trainer)."""
    backbone = build_backbone("vit_tiny_patch16_224", freeze_patch_embed=True, pos_embed="sincos", **TINY_VIT)
    proj = backbone.model.patch_embed.proj
    bound = (6.0 / (3 * 4 * 4 + TINY_VIT["embed_dim"])) ** 0.5  # MoCo v3's init of the random projection
    assert proj.weight.abs().max() <= bound and proj.weight.abs().max() > 0.9 * bound and not proj.bias.any()
    assert frozen_modules({"freeze_patch_embed": True}) == ("model.patch_embed",) and frozen_modules({}) == ()
    assert {n for n, _ in backbone.named_parameters() if n.startswith("model.patch_embed.")} == {
        "model.patch_embed.proj.weight", "model.patch_embed.proj.bias"}
    assert not backbone.model.pos_embed.requires_grad


@pytest.mark.parametrize("name, overrides", [("cifar_resnet20", {"freeze_patch_embed": True}),
                                             ("resnet18", {"pos_embed": "sincos"})])
def test_vit_options_rejected_for_cnns(name, overrides):
    with pytest.raises(UserError, match="apply to timm ViTs"):
        build_backbone(name, **overrides)
