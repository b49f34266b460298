"""Per-member optimisers: defaults per optimiser, parameter groups, LARS, per-parameter clipping."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from sslkd.config import MemberConfig, OptimConfig
from sslkd.errors import UserError
from sslkd.strategies.base import Declared

# MOKD's settings (METHODS.md): SGD for a CNN, AdamW for a ViT; LARS as DINO trains a ResNet-50; lr linear in the
# global batch (lr x batch / 256, Goyal et al., as DINO and MOKD scale it). Gradient clipping and the last-layer
# freeze are a method's own defaults (``Strategy.optimizer_defaults``: DINO's and MOKD's).
OPTIM_DEFAULTS = {
    "sgd": dict(lr=0.1, min_lr=0.0048, momentum=0.9, weight_decay=1e-4, weight_decay_end=1e-4, warmup_epochs=10.0,
                lr_scaling="linear"),
    "adamw": dict(lr=3e-4, min_lr=1e-5, momentum=0.9, weight_decay=0.04, weight_decay_end=0.4, warmup_epochs=10.0,
                  lr_scaling="linear"),
    "lars": dict(lr=0.3, min_lr=0.0048, momentum=0.9, weight_decay=1e-6, weight_decay_end=1e-6, warmup_epochs=10.0,
                 lr_scaling="linear"),
}


def resolve_optim(cfg: OptimConfig, backbone_kind: str, method_defaults: dict | None = None) -> OptimConfig:
    """Fill ``auto`` and every unset field from the method's defaults, then the optimiser's (the resolved config is
    saved)."""
    name = cfg.name if cfg.name != "auto" else ("adamw" if backbone_kind == "vit" else "sgd")
    defaults = {**OPTIM_DEFAULTS[name], **(method_defaults or {})}
    values = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    values["name"] = name
    for key, default in defaults.items():
        if values[key] is None:
            values[key] = values["weight_decay"] if key == "weight_decay_end" and cfg.weight_decay is not None else default
    return OptimConfig(**values)


def resolve_member_optimizers(cfg: MemberConfig, backbone_kind: str, method_defaults: dict | None = None) -> None:
    """``resolve_optim`` for a member's optimiser and each of its modules' (in place: the run saves the result)."""
    cfg.optimizer = resolve_optim(cfg.optimizer, backbone_kind, method_defaults)
    cfg.module_optimizers = {module: resolve_optim(module_cfg, backbone_kind, method_defaults)
                             for module, module_cfg in cfg.module_optimizers.items()}


def param_groups(named_params: Iterable[tuple[str, nn.Parameter]], declared: Declared = Declared()) -> list[dict]:
    """DINO's split: biases and 1-D parameters (norms) get no weight decay; frozen parameters (no gradient, or in a
    ``declared.frozen`` module) are left out. The parameters of modules declared with a fixed lr or an lr or
    weight-decay multiplier form groups of their own, which carry ``fixed_lr`` (the trainer holds their lr) and
    ``lr_scale`` / ``weight_decay_scale`` (the trainer multiplies the scheduled values); a weight-decay multiplier of
    0 puts its parameters among those without weight decay."""
    groups = {(True, False, 1.0, 1.0): [], (False, False, 1.0, 1.0): []}
    for name, param in named_params:
        if not param.requires_grad or in_modules(name, declared.frozen):
            continue
        weight_decay_scale = module_scale(name, declared.weight_decay_scale)
        regularized = not (name.endswith(".bias") or param.ndim == 1) and weight_decay_scale != 0
        key = (regularized, in_modules(name, declared.fixed_lr), module_scale(name, declared.lr_scale),
               weight_decay_scale if regularized else 1.0)
        groups.setdefault(key, []).append(param)
    return [{"params": params, "regularized": regularized, "fixed_lr": fixed,
             **({} if lr_scale == 1.0 else {"lr_scale": lr_scale}),
             **({} if weight_decay_scale == 1.0 else {"weight_decay_scale": weight_decay_scale}),
             **({} if regularized else {"weight_decay": 0.0})}
            for (regularized, fixed, lr_scale, weight_decay_scale), params in groups.items()]


def in_modules(name: str, modules: Iterable[str]) -> bool:
    """Whether parameter ``name`` (of a student) belongs to one of the named (dotted) modules."""
    return any(name.startswith(f"{module}.") for module in modules)


def module_scale(name: str, scales: dict[str, float]) -> float:
    """The multiplier that ``scales`` gives the innermost named module holding parameter ``name`` (1 for none)."""
    owners = [module for module in scales if in_modules(name, (module,))]
    return scales[max(owners, key=len)] if owners else 1.0


class LARS(torch.optim.Optimizer):
    """LARS (You et al., 2017) as in DINO: trust-ratio scaling and weight decay for weights, not biases/norms."""

    def __init__(self, params, lr: float = 0.0, weight_decay: float = 0.0, momentum: float = 0.9, eta: float = 0.001):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            adapt = [p.ndim > 1 for p in params]
            grads = [g.add(p, alpha=group["weight_decay"]) if a else g for p, g, a in zip(params, grads, adapt)]
            param_norms = torch._foreach_norm(params)
            update_norms = torch._foreach_norm(grads)
            updates = []
            for grad, p_norm, u_norm, a in zip(grads, param_norms, update_norms, adapt):
                ratio = torch.where((p_norm > 0) & (u_norm > 0), group["eta"] * p_norm / u_norm, torch.ones_like(p_norm))
                updates.append(grad.mul(ratio) if a else grad)
            for p, update in zip(params, updates):
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                state["mu"].mul_(group["momentum"]).add_(update)
                p.add_(state["mu"], alpha=-group["lr"])


FUSED_DEVICES = ("cpu", "cuda")


def fused_adamw(groups: list[dict]) -> bool | None:
    """Whether AdamW takes its fused kernel: one pass over each parameter instead of a chain of element-wise ops
    (about 5x faster on a CPU; the same update, rounded in another order). Needs every parameter floating point
    on a CPU or CUDA device. SGD keeps its default: its fused kernel fails on a parameter that gets its first
    gradient late (DINO's last layer after ``freeze_last_layer``), and its update is cheap already."""
    params = [p for group in groups for p in group["params"]]
    return (bool(params) and all(p.is_floating_point() and p.device.type in FUSED_DEVICES for p in params)) or None


def build_optimizer(named_params: Iterable[tuple[str, nn.Parameter]], cfg: OptimConfig,
                    declared: Declared = Declared()) -> torch.optim.Optimizer:
    groups = param_groups(named_params, declared)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=0.0, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=0.0, weight_decay=cfg.weight_decay, fused=fused_adamw(groups))
    return LARS(groups, lr=0.0, weight_decay=cfg.weight_decay, momentum=cfg.momentum)


@torch.no_grad()
def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """``optimizer.load_state_dict(state)``, then every per-parameter state tensor (moments, momentum buffers) in its
    parameter's memory layout: ``torch.save`` keeps a tensor's strides, and a checkpoint made where the parameter had
    another layout (channels-last or not: another version, device or ``train.channels_last`` setting) would leave
    fused AdamW, which reads parameter and state as flat memory, updating the wrong elements."""
    optimizer.load_state_dict(state)
    for param, param_state in optimizer.state.items():
        for key, value in param_state.items():
            if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                param_state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def clip_per_parameter(params: list[torch.Tensor], max_norm: float) -> None:
    """DINO's clipping: each parameter's gradient norm is clipped to ``max_norm`` on its own (fused ops).

    On a GPU every gradient is multiplied by its scale (most scales are 1), which needs no host sync; on a CPU,
    where reading the scales costs nothing, only the gradients that are actually clipped are touched."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    norms = torch.stack(torch._foreach_norm(grads))
    scales = (max_norm / (norms + 1e-6)).clamp_(max=1.0)
    if scales.device.type == "cpu":
        clipped = scales.lt(1.0).nonzero().flatten().tolist()
        grads, scales = [grads[i] for i in clipped], scales[clipped]
        if not grads:
            return
    torch._foreach_mul_(grads, list(scales.unbind()))


@dataclass
class MemberOptimizer:
    """One optimiser of a member: the parameters it steps (in a fixed order), its resolved settings, and the
    last-layer parameters that DINO's ``freeze_last_layer`` holds still in the first epochs."""

    member: str
    cfg: OptimConfig
    params: list[nn.Parameter]
    last_layer: list[nn.Parameter]
    optimizer: torch.optim.Optimizer


def member_optimizers(name: str, student: nn.ModuleDict, cfg: MemberConfig, backbone_kind: str,
                      declared: Declared = Declared()) -> dict[str, MemberOptimizer]:
    """The optimisers of member ``name``, keyed ``name`` (every parameter not claimed by a module optimiser) and
    ``name/module`` for each of ``cfg.module_optimizers``. Every trainable parameter belongs to exactly one; the
    parameters of ``declared.frozen`` modules stop being trainable here (no gradient reaches them)."""
    named = list(student.named_parameters())
    for param_name, param in named:
        if in_modules(param_name, declared.frozen):
            param.requires_grad_(False)
    parts: dict[str, tuple[OptimConfig, list[tuple[str, nn.Parameter]]]] = {}
    for module, module_cfg in cfg.module_optimizers.items():
        if module not in student:
            raise UserError(
                f"members.{name}.module_optimizers.{module}: member {name!r} has no module {module!r}; "
                f"its modules are {sorted(student.keys())}"
            )
        parts[f"{name}/{module}"] = (resolve_optim(module_cfg, backbone_kind), [(n, p) for n, p in named if n.startswith(f"{module}.")])
    claimed = {id(p) for _, owned in parts.values() for _, p in owned}
    parts[name] = (resolve_optim(cfg.optimizer, backbone_kind), [(n, p) for n, p in named if id(p) not in claimed])
    order = [name] + [key for key in parts if key != name]
    return {
        key: MemberOptimizer(
            member=name,
            cfg=opt_cfg,
            params=[p for _, p in owned],
            last_layer=[p for n, p in owned if in_modules(n, declared.last_layer)],
            optimizer=build_optimizer(owned, opt_cfg, declared),
        )
        for key, (opt_cfg, owned) in ((key, parts[key]) for key in order)
    }


def check_every_parameter_optimised(strategy: nn.Module, optimizers: dict[str, MemberOptimizer]) -> None:
    """Every trainable parameter of ``strategy`` belongs to exactly one optimiser: the trainer updates members'
    students only, so a trainable module a strategy keeps elsewhere would silently never learn."""
    owners: dict[int, list[str]] = {}
    for key, part in optimizers.items():
        for param in part.params:
            owners.setdefault(id(param), []).append(key)
    trainable = [(n, p) for n, p in strategy.named_parameters() if p.requires_grad]
    orphans = [n for n, p in trainable if id(p) not in owners]
    shared = [f"{n} ({', '.join(owners[id(p)])})" for n, p in trainable if len(owners.get(id(p), ())) > 1]
    if orphans or shared:
        raise RuntimeError(
            f"{type(strategy).__name__}: trainable parameters "
            + (f"outside every member's student, never updated: {orphans[:5]}" if orphans else "")
            + ("; " if orphans and shared else "")
            + (f"in more than one optimiser: {shared[:5]}" if shared else "")
            + "; keep trainable modules in a member's student (or set requires_grad=False)")
