"""Mean attention distance per layer (MOKD Sec. 4.6, Fig. 5; the measure of Dosovitskiy et al., ViT Fig. 7).

For one query token i the attention distance is sum_j a_ij * d(i, j): the pixel distance between the centres of
patches i and j, weighted by how much i attends to j. The mean attention distance (MAD) of a head averages it over
every query token of every image; a layer's MAD is the mean over its heads.

- ViT: the softmax(q k^T / sqrt(d)) of each block, recomputed from the block's own qkv projection on its input
  (timm's fused kernel never forms the matrix); prefix (CLS) tokens are dropped and each query's weights over the
  patch tokens renormalised to sum to 1. Patch centres are ``patch_size`` pixels apart.
- CNN, the paper's analogue ("a similar average distance ... on the feature map based on its self-attention
  weights"): at the output of every residual block, each position attends to every position with weights
  softmax(f_i . f_j / sqrt(C)) of its C-channel features; positions are (input size / map size) pixels apart.
  MOKD does not spell the CNN weights out further; this is our reading, recorded with the result.
"""

from __future__ import annotations

import math

import torch
from torch.utils.data import DataLoader, Subset

from sslkd.eval.checkpoints import load_members
from sslkd.eval.protocol import eval_loaders


def grid_distances(grid: tuple[int, int], spacing: float) -> torch.Tensor:
    """[N, N] Euclidean pixel distances between the centres of an h x w grid (row-major) ``spacing`` px apart."""
    h, w = grid
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    centres = torch.stack([ys.flatten(), xs.flatten()], dim=1) * spacing
    return torch.cdist(centres, centres)


def mean_attention_distance(attention: torch.Tensor, grid: tuple[int, int], spacing: float) -> torch.Tensor:
    """Per-head MAD in pixels of attention maps [B, H, N, N] over an h x w token grid (rows sum to 1)."""
    if attention.ndim != 4 or attention.shape[-1] != attention.shape[-2] or attention.shape[-1] != grid[0] * grid[1]:
        raise ValueError(f"attention must be [B, H, N, N] with N = {grid[0]} x {grid[1]}, got {tuple(attention.shape)}")
    distances = grid_distances(grid, spacing).to(attention)
    per_query = (attention * distances).sum(-1)  # [B, H, N]
    return per_query.mean(dim=(0, 2))


def _vit_attentions(backbone, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each block's attention over patch tokens [B, H, N, N] (prefix tokens dropped, rows renormalised)."""
    model = backbone.model
    prefix = model.num_prefix_tokens
    maps: dict[str, torch.Tensor] = {}

    def capture(name, module, args):
        x = args[0]
        b, n, _ = x.shape
        qkv = module.qkv(x).reshape(b, n, 3, module.num_heads, module.head_dim).permute(2, 0, 3, 1, 4)
        q, k = module.q_norm(qkv[0]), module.k_norm(qkv[1])
        attn = ((q * module.scale) @ k.transpose(-2, -1)).softmax(dim=-1)[:, :, prefix:, prefix:]
        maps[name] = attn / attn.sum(-1, keepdim=True)

    handles = [block.attn.register_forward_pre_hook(lambda m, a, name=f"blocks.{i}": capture(name, m, a))
               for i, block in enumerate(model.blocks)]
    try:
        model.forward_features(images)
    finally:
        for handle in handles:
            handle.remove()
    return maps


def _cnn_feature_maps(backbone, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """The output map [B, C, h, w] of each block ``backbone.intermediate_names()`` names, from one pass."""
    maps: dict[str, torch.Tensor] = {}
    root = getattr(backbone, "model", backbone)  # timm models are wrapped in .model, sslkd's CIFAR nets are not
    handles = [root.get_submodule(name).register_forward_hook(
        lambda m, a, out, name=name: maps.__setitem__(name, out)) for name in backbone.intermediate_names()]
    try:
        backbone.forward_tokens(images)
    finally:
        for handle in handles:
            handle.remove()
    channels_last = getattr(backbone, "_nhwc", False)
    return {name: (m.permute(0, 3, 1, 2) if channels_last else m) for name, m in maps.items()}


def feature_self_attention(feature_map: torch.Tensor) -> torch.Tensor:
    """[B, 1, N, N] weights softmax(f_i . f_j / sqrt(C)) between the N positions of a [B, C, h, w] map."""
    tokens = feature_map.flatten(2).transpose(1, 2)
    return (tokens @ tokens.transpose(1, 2) / math.sqrt(tokens.shape[-1])).softmax(dim=-1)[:, None]


@torch.no_grad()
def layer_distances(backbone, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-head MAD (pixels) of every layer for one batch of images."""
    size = images.shape[-1]
    if backbone.kind == "vit" and hasattr(backbone.model, "blocks"):
        patch = backbone.patch_size if isinstance(backbone.patch_size, int) else backbone.patch_size[0]
        out = {}
        for name, attn in _vit_attentions(backbone, images).items():
            side = round(math.sqrt(attn.shape[-1]))
            out[name] = mean_attention_distance(attn, (side, attn.shape[-1] // side), patch)
        return out
    return {name: mean_attention_distance(feature_self_attention(fmap), tuple(fmap.shape[-2:]),
                                          size / fmap.shape[-1])
            for name, fmap in _cnn_feature_maps(backbone, images).items()}


def attention_of_checkpoint(path, member: str | None = None, data_name: str | None = None,
                            data_root: str | None = None, num_images: int = 256, batch_size: int = 16,
                            seed: int = 0, device: str = "auto") -> dict:
    """``sslkd eval attention``: per-layer MAD of each member on ``num_images`` test images chosen by ``seed``."""
    from sslkd.engine.trainer import pick_device

    strategy, cfg, backbones = load_members(path, member, data_name, data_root)
    torch_device = pick_device(device)
    _, test_loader = eval_loaders(cfg)
    dataset = test_loader.dataset
    chosen = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:num_images]
    loader = DataLoader(Subset(dataset, chosen.tolist()), batch_size=batch_size, shuffle=False)
    results = {}
    for name, backbone in backbones.items():
        backbone.to(torch_device).eval()
        sums: dict[str, torch.Tensor] = {}
        count = 0
        for images, _, _ in loader:
            for layer, heads in layer_distances(backbone, images.to(torch_device)).items():
                sums[layer] = sums.get(layer, 0) + heads.cpu() * len(images)
            count += len(images)
        per_head = {layer: (total / count).tolist() for layer, total in sums.items()}
        results[name] = {
            "mean_attention_distance": {layer: float(sum(v) / len(v)) for layer, v in per_head.items()},
            "per_head": per_head,
            "protocol": {"kind": backbone.kind, "backbone": strategy.members[name].cfg.backbone,
                         "n_images": count, "dataset": cfg.data.name, "split": "test", "seed": seed,
                         "unit": "pixels of the input image",
                         "weights": ("ViT softmax attention over patch tokens, CLS dropped, rows renormalised"
                                     if backbone.kind == "vit" else
                                     "softmax(f_i . f_j / sqrt(C)) over positions of each residual block's output"),
                         "checkpoint": str(path)},
        }
    return results


def plot_distances(results: dict, path) -> None:
    """One line per member: MAD against layer index (MOKD Fig. 5 style)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, result in results.items():
        values = list(result["mean_attention_distance"].values())
        ax.plot(range(1, len(values) + 1), values, marker="o", label=f"{name} ({result['protocol']['backbone']})")
    ax.set_xlabel("layer")
    ax.set_ylabel("mean attention distance (px)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
