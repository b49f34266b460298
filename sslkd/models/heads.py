"""Projection heads: the DINO head (MOKD's MLP-Head) and MOKD's Transformer head (T-Head) with feature search."""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed, trunc_normal_
from timm.models.vision_transformer import Block
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

_layer_norm = partial(nn.LayerNorm, eps=1e-6)

from sslkd.registry import HEADS


def weight_normed_linear(in_dim: int, out_dim: int, fixed_gain: bool) -> nn.Linear:
    """Weight-normalised Linear without bias; with ``fixed_gain`` the gain is 1 and frozen (DINO norm_last_layer)."""
    layer = weight_norm(nn.Linear(in_dim, out_dim, bias=False))
    gain = layer.parametrizations.weight.original0
    gain.data.fill_(1.0)
    gain.requires_grad = not fixed_gain
    return layer


def _init_linear(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


@HEADS.register("dino")
class DINOHead(nn.Module):
    """MLP (d -> hidden -> hidden -> bottleneck, GELU), L2-normalise, weight-normed Linear(bottleneck, K).

    ``use_bn`` puts BatchNorm after each hidden Linear, as the authors' DINOHead allows: a small CNN's pooled
    features start almost parallel, and without it the centred teacher targets are nearly uniform and training
    collapses to loss = ln K. The final layer is named ``last_layer`` so the trainer can freeze it during the
    first epoch (DINO).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        nlayers: int = 3,
        norm_last_layer: bool = True,
        use_bn: bool = False,
    ):
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (nlayers - 1) + [bottleneck_dim]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(a, b))
            if i < nlayers - 1:
                if use_bn:
                    layers.append(nn.BatchNorm1d(b))
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        self.mlp.apply(_init_linear)
        self.last_layer = weight_normed_linear(bottleneck_dim, out_dim, fixed_gain=norm_last_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1, p=2))


@HEADS.register("thead")
class THead(nn.Module):
    """MOKD's T-Head (Sec. 3.3, Fig. 3): transformer blocks over a backbone's local features.

    Tokens are projected to ``dim`` (MOKD's 1x1 conv for a CNN's feature map, written as the equivalent Linear over
    flattened positions; identity for a ViT of the same width), get the head's own learned positional embedding
    (resampled for other grids), pass ``depth`` timm ViT blocks and the final norm, are mean-pooled and mapped by a
    weight-normed Linear(dim, K) whose gain is trainable (no L2 norm before it).

    ``search`` is the cross-attention feature search (MOKD Eq. 6): a query token from the peer model is prepended
    to these tokens, the blocks attend over [query; tokens], the query's output is dropped, the rest pooled.
    """

    def __init__(
        self,
        in_dim: int,
        dim: int = 384,
        depth: int = 3,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        out_dim: int = 65536,
        grid: tuple[int, int] = (14, 14),
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        self.grid = tuple(grid)
        self.proj = nn.Identity() if in_dim == dim else nn.Linear(in_dim, dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid[0] * grid[1], dim))
        rates = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.Sequential(
            *[
                Block(dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=True, drop_path=r, norm_layer=_layer_norm)
                for r in rates
            ]
        )
        self.norm = _layer_norm(dim)
        trunc_normal_(self.pos_embed, std=0.02)
        self.apply(_init_linear)
        self.last_layer = weight_normed_linear(dim, out_dim, fixed_gain=False)

    def embed(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Project backbone tokens [B, N, C] and add the positional embedding for their grid."""
        pos = self.pos_embed
        if tuple(grid) != self.grid:
            pos = resample_abs_pos_embed(pos, new_size=list(grid), old_size=list(self.grid), num_prefix_tokens=0)
        return self.proj(tokens) + pos

    def embed_query(self, pooled: torch.Tensor) -> torch.Tensor:
        """The query token of a model: its pooled feature in the head's width (MOKD: GAP of the 1x1-conv output
        for a CNN, which equals the projection of the GAP; the CLS token for a ViT)."""
        return self.proj(pooled)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Blocks, norm, mean over tokens, last layer."""
        return self.last_layer(self.norm(self.blocks(x)).mean(dim=1))

    def search(self, query: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Feature search (Eq. 6): attend over [query; embedded tokens], pool the tokens' outputs only."""
        out = self.norm(self.blocks(torch.cat([query.unsqueeze(1), x], dim=1)))
        return self.last_layer(out[:, 1:].mean(dim=1))

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        return self.head(self.embed(tokens, grid))

