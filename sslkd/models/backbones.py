"""Backbones behind one interface: any timm model, plus the CIFAR ResNets/WRNs registered in ``BACKBONES``.

Strategies never look inside a network: they ask a ``Backbone`` for its pooled feature, its last-stage tokens
(MOKD's T-Head) or its per-block features (SDSSL), so a CNN and a ViT are interchangeable members of a cohort.
"""

from __future__ import annotations

import abc
import contextlib
import difflib
import re
from functools import partial
from typing import Iterator

import math

import timm
import torch
from timm.layers import build_sincos2d_pos_embed
from torch import nn

from sslkd.errors import UserError
from sslkd.registry import BACKBONES

# Keyword arguments sslkd sets itself: weights are never downloaded and the classifier is always removed.
_RESERVED_OVERRIDES = ("pretrained", "num_classes")


class Backbone(nn.Module, abc.ABC):
    """The interface every backbone offers; ``forward`` is the pooled feature used by heads and k-NN.

    Attributes: ``kind`` ("cnn" or "vit"), ``num_features`` (pooled dim), ``token_dim`` (channels of the
    last-stage tokens) and ``patch_size`` (ViTs, else None).
    """

    kind: str
    num_features: int
    token_dim: int
    patch_size: int | tuple[int, int] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_tokens(x)[0]

    @abc.abstractmethod
    def forward_tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        """One pass returning (pooled [B,D], last-stage tokens [B,N,C], token grid (h, w))."""

    @abc.abstractmethod
    def intermediate_names(self) -> list[str]:
        """Names of the blocks whose pooled outputs ``forward_intermediates`` can return, input to output."""

    @abc.abstractmethod
    def forward_intermediates(self, x: torch.Tensor, names: list[str] | None = None) -> dict[str, torch.Tensor]:
        """One pass returning the pooled feature [B, D_name] of each named block (all blocks when None)."""

    @abc.abstractmethod
    def blocks(self) -> list[tuple[str, nn.Module]]:
        """(name, module) of every block ``intermediate_names`` lists, input to output."""

    @abc.abstractmethod
    def pool_block(self, output: torch.Tensor) -> torch.Tensor:
        """A block's output pooled to [B, D] as ``forward_intermediates`` pools it."""

    @contextlib.contextmanager
    def capturing(self, names: list[str]) -> Iterator[dict[str, list[torch.Tensor]]]:
        """Within the block, every pass of this backbone also appends each named block's pooled feature to the
        yielded ``{name: [one per pass]}`` (forward hooks): a method's own passes give the intermediate features of
        layer-wise distillation (SDSSL) without another pass. No names: no hooks, nothing changes."""
        captured: dict[str, list[torch.Tensor]] = {name: [] for name in self._wanted(names)}

        def store(name: str, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            captured[name].append(self.pool_block(output))

        handles = [module.register_forward_hook(partial(store, name)) for name, module in self.blocks() if name in captured]
        try:
            yield captured
        finally:
            for handle in handles:
                handle.remove()

    def _wanted(self, names: list[str] | None) -> list[str]:
        """The requested block names in network order, rejecting names this backbone does not have."""
        known = self.intermediate_names()
        if names is None:
            return known
        unknown = [n for n in names if n not in known]
        if unknown:
            raise UserError(
                f"unknown intermediate block(s) {unknown} for this {self.kind} backbone; valid names: {known}"
            )
        requested = set(names)
        return [n for n in known if n in requested]


def computes_each_image_alone(network: nn.Module) -> bool:
    """Whether ``network`` in training mode gives each image the output it would give in any other batch and draws
    no random numbers: no batch norm (statistics over the batch), no active dropout, drop-path or patch dropout
    (random draws per image). Then one pass over views concatenated computes the same as one pass per view, in
    fewer and larger operations, with no per-view gradient sums."""
    for module in network.modules():
        stochastic = (isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0
                      or getattr(module, "drop_prob", 0) > 0
                      or isinstance(module, timm.layers.PatchDropout) and module.prob > 0)
        if isinstance(module, nn.modules.batchnorm._NormBase) or stochastic:
            return False
    return True


@contextlib.contextmanager
def probing(backbone: nn.Module) -> Iterator[None]:
    """The mode of a probe pass that reads shapes off a backbone: evaluation (batch norm uses its running
    statistics and leaves them unchanged) and no gradients; the training mode is restored after."""
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        backbone.train(was_training)


def _spatial_mean(feat: torch.Tensor, channels_last_layout: bool) -> torch.Tensor:
    return feat.mean((1, 2)) if channels_last_layout else feat.mean((-2, -1))


class TimmViT(Backbone):
    """A timm ViT-family model (token sequence with prefix tokens); pooled = timm's own pre-logits pooling.

    For a standard ViT that pooling is the CLS token after the final norm; for ViTs without a class token
    (``global_pool="avg"``) it is the mean of the patch tokens (through ``fc_norm`` where the model has one).
    """

    kind = "vit"

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.num_features = model.num_features
        self.token_dim = model.embed_dim
        self.patch_size = _square(model.patch_embed.patch_size)
        self._names = [f"blocks.{i}" for i in range(len(model.blocks))]

    def _grid(self, x: torch.Tensor) -> tuple[int, int]:
        patch_embed = self.model.patch_embed
        if getattr(patch_embed, "dynamic_img_size", False) or getattr(self.model, "dynamic_img_size", False):
            return tuple(patch_embed.dynamic_feat_size(tuple(x.shape[-2:])))
        return tuple(patch_embed.grid_size)

    def forward_tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        seq = self.model.forward_features(x)
        pooled = self.model.forward_head(seq, pre_logits=True)
        return pooled, seq[:, self.model.num_prefix_tokens :], self._grid(x)

    def intermediate_names(self) -> list[str]:
        return list(self._names)

    def blocks(self) -> list[tuple[str, nn.Module]]:
        return list(zip(self._names, self.model.blocks))

    def pool_block(self, output: torch.Tensor) -> torch.Tensor:
        """The final norm, then timm's pre-logits pooling (``forward_intermediates(norm=True)``'s pooled form)."""
        return self.model.forward_head(self.model.norm(output), pre_logits=True)

    def forward_intermediates(self, x: torch.Tensor, names: list[str] | None = None) -> dict[str, torch.Tensor]:
        wanted = self._wanted(names)
        outputs = self.model.forward_intermediates(
            x,
            indices=[self._names.index(n) for n in wanted],
            norm=True,
            output_fmt="NLC",
            return_prefix_tokens=True,
            intermediates_only=True,
            stop_early=True,
        )
        pooled = {}
        for name, out in zip(wanted, outputs):
            seq = torch.cat([out[1], out[0]], dim=1) if isinstance(out, tuple) else out
            pooled[name] = self.model.forward_head(seq, pre_logits=True)
        return pooled


class TimmSpatial(Backbone):
    """A timm model whose features are a spatial map (CNNs; also hierarchical ViTs such as Swin).

    pooled = global average of the last feature map (exactly the mean of the returned tokens). Intermediates are
    the residual blocks of its stages (see ``_block_modules``), read with forward hooks during one pass.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.kind = "vit" if hasattr(model, "patch_embed") else "cnn"
        self.patch_size = _square(model.patch_embed.patch_size) if self.kind == "vit" else None
        self.num_features = model.num_features
        self.token_dim = model.num_features
        self._nhwc = getattr(model, "output_fmt", "NCHW") == "NHWC"
        self._blocks = _block_modules(model)

    def forward_tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        feat = self.model.forward_features(x)
        if self._nhwc:
            feat = feat.permute(0, 3, 1, 2)
        h, w = feat.shape[-2:]
        return feat.mean((-2, -1)), feat.flatten(2).transpose(1, 2), (h, w)

    def intermediate_names(self) -> list[str]:
        return [name for name, _ in self._blocks]

    def blocks(self) -> list[tuple[str, nn.Module]]:
        return list(self._blocks)

    def pool_block(self, output: torch.Tensor) -> torch.Tensor:
        return _spatial_mean(output, self._nhwc)

    def forward_intermediates(self, x: torch.Tensor, names: list[str] | None = None) -> dict[str, torch.Tensor]:
        wanted = self._wanted(names)
        with self.capturing(wanted) as pooled:
            self.model.forward_features(x)
        return {name: pooled[name][-1] for name in wanted}


def _square(size: int | tuple[int, int]) -> int | tuple[int, int]:
    if isinstance(size, int):
        return size
    return size[0] if size[0] == size[1] else tuple(size)


def _block_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The residual blocks of a timm feature-map model, found from timm's ``feature_info`` stage points.

    Each stage point is widened to every sibling in its parent ``nn.Sequential`` (timm's feature_info skips some
    EfficientNet stages) and expanded into its blocks (the stage itself when a ``nn.Sequential``, else its
    ``.blocks``). Stems, which are not residual blocks, are dropped; a family whose stages hold no block
    sequence (e.g. RegNet) keeps timm's stage points as they are.
    """
    stages: list[str] = []
    for info in model.feature_info:
        parent, _, _ = info["module"].rpartition(".")
        siblings = model.get_submodule(parent) if parent else None
        if isinstance(siblings, nn.Sequential):
            candidates = [f"{parent}.{child}" for child, _ in siblings.named_children()]
        else:
            candidates = [info["module"]]
        stages += [s for s in candidates if s not in stages]

    blocks: list[tuple[str, nn.Module]] = []
    for stage_name in stages:
        stage = model.get_submodule(stage_name)
        if isinstance(stage, nn.Sequential):
            blocks += [(f"{stage_name}.{n}", m) for n, m in stage.named_children()]
        elif isinstance(getattr(stage, "blocks", None), nn.Sequential):
            blocks += [(f"{stage_name}.blocks.{n}", m) for n, m in stage.blocks.named_children()]
    return blocks or [(s, model.get_submodule(s)) for s in stages]


def _is_token_vit(model: nn.Module) -> bool:
    return all(hasattr(model, a) for a in ("patch_embed", "blocks", "num_prefix_tokens", "forward_intermediates"))


def _apply_small_image_stem(model: nn.Module, name: str) -> None:
    """DoGo/CIFAR recipe: the stem's first conv becomes 3x3 stride 1 padding 1 and the max-pool is removed."""
    if not (hasattr(model, "conv1") and hasattr(model, "maxpool")):
        raise UserError(
            f"small_image_stem applies to ResNet-style models (conv1 + maxpool) and {name!r} is not one; "
            "drop small_image_stem (for a ViT set a small patch_size instead)"
        )
    stem = model.conv1
    first = stem if isinstance(stem, nn.Conv2d) else stem[0]
    conv = nn.Conv2d(first.in_channels, first.out_channels, 3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if isinstance(stem, nn.Conv2d):
        model.conv1 = conv
    else:
        stem[0] = conv
    model.maxpool = nn.Identity()


def _override_error(name: str, overrides: dict, exc: Exception) -> UserError:
    bad = re.search(r"unexpected keyword argument '(\w+)'", str(exc))
    if bad:
        return UserError(
            f"backbone {name!r} does not accept the override {bad.group(1)!r}; remove it or use an argument "
            f"its constructor takes"
        )
    return UserError(f"backbone {name!r} cannot be built with overrides {overrides} ({exc}); fix those values")


def _unknown_backbone_message(name: str) -> str:
    registered = BACKBONES.names()
    close = difflib.get_close_matches(name, registered + timm.list_models(), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return (
        f"unknown backbone {name!r}.{hint} sslkd backbones: {', '.join(registered)}; "
        "any timm model name (timm.list_models()) is also accepted."
    )


def _vit_options_message(name: str) -> str:
    return (f"backbone_args pos_embed: sincos and freeze_patch_embed apply to timm ViTs (a patch embedding and a "
            f"position table) and {name!r} is not one; remove them")


def _create_timm(name: str, overrides: dict) -> nn.Module:
    """timm.create_model without weights or classifier; ViTs get dynamic_img_size=True unless overridden."""
    kwargs = dict(pretrained=False, num_classes=0, **overrides)
    try:
        if "dynamic_img_size" not in overrides:
            try:
                return timm.create_model(name, dynamic_img_size=True, **kwargs)
            except TypeError as exc:
                if "dynamic_img_size" not in str(exc):
                    raise
        return timm.create_model(name, **kwargs)
    except (TypeError, AssertionError, ValueError) as exc:
        if not overrides:
            raise
        raise _override_error(name, overrides, exc) from exc


def use_sincos_pos_embed(model: nn.Module) -> None:
    """Fixed 2-D sine-cosine position embeddings (MoCo v3; SDSSL Sec. 4.1 "ViT Architecture"), not trained.

    Patch (y, x) gets [sin(y w), cos(y w), sin(x w), cos(x w)] with w_d = 1 / 10000^(d / (D/4)), d < D/4, the
    layout of MoCo v3's and the SDSSL code's ``build_2d_sincos_position_embedding``; prefix tokens ([CLS]) get
    zeros. Built by timm's ``build_sincos2d_pos_embed`` (its ``interleave_sin_cos`` stacks sin, cos per axis).
    At another input size timm resamples the table, as it does a learned one.
    """
    grid = list(model.patch_embed.grid_size)
    table = build_sincos2d_pos_embed(grid, model.embed_dim, interleave_sin_cos=True)
    prefix = 0 if getattr(model, "no_embed_class", False) else model.num_prefix_tokens
    with torch.no_grad():
        model.pos_embed.copy_(torch.cat([torch.zeros(prefix, model.embed_dim), table]).unsqueeze(0))
    model.pos_embed.requires_grad_(False)


def freeze_random_patch_projection(model: nn.Module) -> None:
    """A fixed random patch projection (MoCo v3's stability trick; SDSSL Sec. 4.1): initialised as MoCo v3's and
    the SDSSL code's ViT (uniform in +-sqrt(6 / (fan_in + D)) over the flattened p x p x C -> D map, bias 0). What
    keeps it fixed is the strategy's declaration of the patch embedding as frozen (``frozen_modules``)."""
    proj = model.patch_embed.proj
    fan_in = proj.weight[0].numel()
    bound = math.sqrt(6.0 / (fan_in + proj.weight.shape[0]))
    with torch.no_grad():
        nn.init.uniform_(proj.weight, -bound, bound)
        if proj.bias is not None:
            proj.bias.zero_()


def frozen_modules(backbone_args: dict) -> tuple[str, ...]:
    """The modules of a backbone built with ``backbone_args`` that stay out of training: with
    ``freeze_patch_embed`` its patch embedding (``freeze_random_patch_projection``)."""
    return ("model.patch_embed",) if backbone_args.get("freeze_patch_embed") else ()


def build_backbone(name: str, small_image_stem: bool = False, freeze_patch_embed: bool = False,
                   **overrides) -> Backbone:
    """Build a registered sslkd backbone, else any timm model, behind the ``Backbone`` interface.

    ``small_image_stem`` swaps a timm ResNet's stem for the CIFAR one; the registered CIFAR networks already have
    it. ``overrides`` go to the constructor (e.g. img_size, patch_size, depth, embed_dim, drop_path_rate, widths).
    ViT options of MoCo v3 and the SDSSL code (``members.<m>.backbone_args``): ``freeze_patch_embed: true`` (a
    fixed random patch projection, ``freeze_random_patch_projection``, kept out of training by the strategy's
    declaration, ``frozen_modules``) and ``pos_embed: sincos`` (fixed 2-D
    sine-cosine position embeddings, ``use_sincos_pos_embed``); timm's own ``pos_embed`` values (``learn``, the
    default, and ``none``) pass through.
    """
    reserved = [k for k in _RESERVED_OVERRIDES if k in overrides]
    if reserved:
        raise UserError(
            f"backbone override(s) {reserved} are set by sslkd (no weight downloads, no classifier); remove them"
        )
    sincos = overrides.get("pos_embed") == "sincos"
    if sincos:
        overrides = {k: v for k, v in overrides.items() if k != "pos_embed"}
    vit_options = sincos or freeze_patch_embed
    if name in BACKBONES:
        if vit_options:
            raise UserError(_vit_options_message(name))
        try:
            return BACKBONES.get(name)(**overrides)
        except TypeError as exc:
            if "keyword argument" not in str(exc):
                raise
            raise _override_error(name, overrides, exc) from exc
    if not timm.is_model(name):
        raise UserError(_unknown_backbone_message(name))
    model = _create_timm(name, overrides)
    if small_image_stem:
        _apply_small_image_stem(model, name)
    if vit_options and not _is_token_vit(model):
        raise UserError(_vit_options_message(name))
    if sincos:
        use_sincos_pos_embed(model)
    if freeze_patch_embed:
        freeze_random_patch_projection(model)
    return TimmViT(model) if _is_token_vit(model) else TimmSpatial(model)


def count_params_m(module: nn.Module) -> float:
    """All parameters of ``module``, in millions (the unit the papers' tables use)."""
    return sum(p.numel() for p in module.parameters()) / 1e6
