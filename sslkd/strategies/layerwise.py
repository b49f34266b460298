"""SDSSL's layer-wise self-distillation (Jang et al., WACV 2023) as a coupling of one member's layers, stacked on a
method whose members learn from an EMA teacher's output: every chosen intermediate block of a member's backbone
gets its own head, and that head's output learns the member's final target.

    L = L_method + alpha(t) L_isd,   L_isd = 1/|layers| sum_l L_obj(head_l(phi_l(x)), sg(z_L))     (SDSSL Eq. 3, 4)

``z_L`` is the EMA teacher's final output on the other views and ``L_obj`` the method's own loss against it: for
DINO, and for each MOKD member's self term, the multi-crop DINO cross-entropy with the teacher's center and
temperature (MOKD Eq. 2), so a layer's head is a DINO head and its output is compared as the final head's is.
SDSSL's L_pred (Eq. 5) trains predictors, which these objectives have none of, so it does not apply (as for
SDSSL's SimCLR). The EMA teacher follows the backbone and the method's own heads, never the layer heads (Sec. 4.1).
The intermediate features come from the method's own student passes (``Backbone.capturing``): no extra pass.

Options (``strategy.layer_distillation:``; absent: off, the method unchanged): ``layers`` (``all`` or 1-based
numbers and/or block names, ``sslkd list`` shows a backbone's ``intermediate_names``), ``layer_stride`` (keep
every n-th layer of ``all``), ``alpha`` (final weight of L_isd, 1.0 in the paper), ``alpha_schedule`` (``cosine``
from 0 to ``alpha`` per iteration, Sec. 4.1; or ``constant``), ``hidden_dim`` (the layer heads' hidden width;
default the method head's). ``sslkd.strategies.sdssl`` uses the same layer choice and alpha schedule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch
from torch import nn

from sslkd.core.schedules import cosine
from sslkd.errors import UserError
from sslkd.losses.sdssl import PairLoss, isd_loss
from sslkd.models.backbones import probing


@dataclass
class LayerDistillationOptions:
    layers: Literal["all"] | list[int | str] = "all"
    layer_stride: int = 1
    alpha: float = 1.0
    alpha_schedule: Literal["cosine", "constant"] = "cosine"
    hidden_dim: int | None = None


def alpha_at(step: int, total_steps: int, final: float, schedule: str = "cosine") -> float:
    """The weight of L_isd at ``step``: a half-cosine from 0 to ``final`` over training, or ``final`` throughout."""
    return cosine(step, total_steps, 0.0, final) if schedule == "cosine" else final


def select_layers(names: list[str], layers: str | list, stride: int = 1) -> list[str]:
    """The intermediate blocks to distil, in network order, from a backbone's block ``names`` (the last is final)."""
    intermediate = names[:-1]
    if stride < 1:
        raise UserError(f"strategy.layer_stride={stride} must be >= 1 (1 distils every layer)")
    if layers == "all":
        return [n for i, n in enumerate(intermediate, start=1) if i % stride == 0]
    chosen = set()
    for layer in layers:
        if isinstance(layer, int):
            if not 1 <= layer <= len(intermediate):
                raise UserError(
                    f"strategy.layers has layer {layer}, but this backbone has intermediate layers 1..{len(intermediate)} "
                    f"(layer {len(names)} is the final one, always trained by L_ssl); use numbers in that range"
                )
            chosen.add(intermediate[layer - 1])
        elif layer in intermediate:
            chosen.add(layer)
        else:
            raise UserError(
                f"strategy.layers names {layer!r}, which is not an intermediate block of this backbone; "
                f"use 1-based numbers or names among {intermediate}"
            )
    return [n for n in intermediate if n in chosen]


def block_key(block: str) -> str:
    """A block name as a module key (ModuleDict keys cannot hold dots)."""
    return block.replace(".", "_")


@torch.no_grad()
def layer_dims(backbone: nn.Module, names: list[str], size: int) -> dict[str, int]:
    """Feature width of each named block (ResNet stages differ), from one pass in eval mode (BN stats untouched)."""
    if not names:
        return {}
    with probing(backbone):
        pooled = backbone.forward_intermediates(torch.zeros(1, 3, size, size), names)
    return {name: feat.shape[1] for name, feat in pooled.items()}


class LayerDistillation:
    """The layer heads, captured features and L_isd of a strategy's members; without options it distils no layer,
    adds no module and changes nothing."""

    def __init__(self, options: LayerDistillationOptions | None, crop_size: int):
        self.options = options
        self.crop_size = crop_size
        self.layers: dict[str, list[str]] = {}

    @property
    def active(self) -> bool:
        return self.options is not None

    def heads(self, member: str, backbone: nn.Module, make_head: Callable[[int, int | None], nn.Module]) -> dict[str, nn.Module]:
        """``{"layer_heads": {block: make_head(width, hidden_dim)}}`` for ``member``'s distilled blocks (none: {})."""
        if not self.active:
            return {}
        opts = self.options
        layers = select_layers(backbone.intermediate_names(), opts.layers, opts.layer_stride)
        self.layers[member] = layers
        dims = layer_dims(backbone, layers, self.crop_size)
        return {"layer_heads": nn.ModuleDict({block_key(n): make_head(dims[n], opts.hidden_dim) for n in layers})}

    def teacher_modules(self, modules: list[str]) -> bool | list[str]:
        """What the EMA teacher holds: the method's own ``modules`` once layer heads exist, else the whole student."""
        return modules if self.active else True

    def last_layers(self, member: str) -> tuple[str, ...]:
        """The layer heads' last layers, which DINO's last-layer freeze holds as it holds the final head's."""
        return tuple(f"layer_heads.{block_key(n)}.last_layer" for n in self.layers.get(member, []))

    def capturing(self, member: str, student: nn.ModuleDict):
        """Context in which ``student``'s backbone passes record ``member``'s distilled blocks' pooled features."""
        return student["backbone"].capturing(self.layers.get(member, []))

    def outputs(self, member: str, student: nn.ModuleDict, captured: dict[str, list[torch.Tensor]]) -> list[torch.Tensor]:
        """Each distilled block's head over its features of every pass (in pass order, as the final head's)."""
        return [student["layer_heads"][block_key(n)](torch.cat(captured[n])) for n in self.layers.get(member, [])]

    def weight(self, step) -> float:
        """alpha(t) at ``step`` (Eq. 4)."""
        opts = self.options
        return alpha_at(step.step, step.total_steps, opts.alpha, opts.alpha_schedule)

    def add_to(self, losses: dict[str, torch.Tensor], member: str, layer_outputs: list[torch.Tensor],
               final_target: torch.Tensor, pair_loss: PairLoss, step) -> None:
        """Add ``<member>/isd`` (L_isd, Eq. 3: the mean over distilled layers of ``pair_loss`` against the final
        target) and alpha(t) L_isd to ``<member>/loss`` (Eq. 4), when ``member`` distils layers."""
        if not layer_outputs:
            return
        isd = isd_loss(layer_outputs, final_target, pair_loss)
        losses[f"{member}/isd"] = isd
        losses[f"{member}/loss"] = losses[f"{member}/loss"] + self.weight(step) * isd
