"""YAML -> typed, validated config objects; dotted ``key.sub=value`` overrides.

A run's config is a tree of dataclasses. Loading walks the YAML against the dataclass fields, so a misspelt key or
a value of the wrong type fails with the key path and what is allowed. Strategy-specific options live under
``strategy:`` and are validated against the strategy's own ``Options`` dataclass.
"""

from __future__ import annotations

import dataclasses
import re
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from sslkd.errors import UserError

PACKAGE_CONFIGS = Path(__file__).parent / "configs"


@dataclass
class AugmentConfig:
    """Multi-crop sizes (DINO recipe); sizes default to the data set's image size and DINO's 224:96 ratio."""

    n_global: int = 2
    n_local: int = 8
    global_size: int | None = None
    local_size: int | None = None
    global_scale: tuple[float, float] = (0.4, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.4)
    blur: bool = True  # Gaussian blur in the multi-crop views; CIFAR recipes (solo-learn, lightly) leave it out
    batched: bool = False  # make each view for the whole batch at once (sslkd.data.batched): same random draws


@dataclass
class DataConfig:
    """``train_subset``: train on a fixed random subset of this many images (quick runs; k-NN still uses all).
    ``skip_corrupt``: leave out image files that cannot be decoded (counted in summary.json) instead of stopping
    with an error naming the file."""

    name: str = "digits"
    root: str | None = None
    image_size: int | None = None
    num_workers: int = 2
    train_subset: int | None = None
    skip_corrupt: bool = False
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class OptimConfig:
    """Per-member optimiser; ``None`` fields take the method's defaults, then those of the chosen optimiser
    (``auto``: SGD for a CNN, AdamW for a ViT, as MOKD trains them). ``lr`` is the base rate for batch 256, scaled
    linearly with the global batch (``lr_scaling: linear``, the default) or used as given (``none``)."""

    name: Literal["auto", "sgd", "adamw", "lars"] = "auto"
    lr: float | None = None
    min_lr: float | None = None
    momentum: float | None = None
    weight_decay: float | None = None
    weight_decay_end: float | None = None
    warmup_epochs: float | None = None
    clip_grad: float | None = None
    freeze_last_layer_epochs: int | None = None
    lr_scaling: Literal["linear", "none"] | None = None


@dataclass
class MemberConfig:
    """One model of the cohort. ``distill_weight`` is the member's weight on its cross (distillation) terms,
    e.g. MOKD's lambda_i (Eq. 9). ``paper_name`` names the paper backbone a proxy model stands in for.
    ``module_optimizers`` gives named modules of the member their own optimiser and schedules (the MOKD code trains
    the CNN's T-Head with the ViT's AdamW settings); every other parameter uses ``optimizer``."""

    backbone: str = "cifar_resnet20"
    backbone_args: dict[str, Any] = field(default_factory=dict)
    small_image_stem: bool = False
    drop_path_rate: float = 0.0
    distill_weight: float = 1.0
    paper_name: str | None = None
    optimizer: OptimConfig = field(default_factory=OptimConfig)
    module_optimizers: dict[str, OptimConfig] = field(default_factory=dict)


@dataclass
class TrainConfig:
    """``on_nonfinite``: a NaN/Inf loss stops the run (the last checkpoint is kept), or the step is skipped and
    counted in metrics.jsonl (``skipped_steps``). ``batch_size`` is per process (DINO's batch_size_per_gpu): under
    torchrun the global batch, and the lr scaling, use batch_size x processes. ``checkpoint_every`` is in epochs;
    ``checkpoint_every_steps`` (0: off) also checkpoints mid-epoch, and a resumed run continues at that batch.
    ``sync_bn``: under torch.distributed, batch norm uses the statistics of the global batch (SyncBN), so W
    processes compute what one process with the whole batch does (MOKD, DINO, SimCLR, MoCo v3, BYOL train so).

    Speed options (``sslkd bench`` measures them): ``precision`` is the autocast of the forward passes: ``auto``
    is fp16 AMP with loss scaling on a GPU when ``amp`` is true and fp32 otherwise; ``bf16`` autocasts to bfloat16
    on CPU or GPU (no scaling needed); ``fp16-amp`` needs a GPU. ``linear_kernel`` picks who runs the fp32 products
    of the Linear layers (training and the evaluations' feature extraction): ``auto`` is oneDNN on a CPU in
    fp32 without ``compile`` (faster than torch's MKL call on non-Intel CPUs) and torch's own path elsewhere;
    ``torch`` keeps torch's path. ``channels_last`` stores CNN members' weights (and so their activations)
    channels-last, except, on a CPU, in blocks with dense k x k convolutions of 256 or more channels whose output
    has fewer than ``channels_last_min_positions`` positions (``batch_size`` x height x width at the global crop),
    which run faster in NCHW (0: channels-last everywhere). ``compile`` wraps every backbone in ``torch.compile``.
    """

    epochs: int = 100
    batch_size: int = 64
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    precision: Literal["auto", "fp32", "bf16", "fp16-amp"] = "auto"
    linear_kernel: Literal["auto", "onednn", "torch"] = "auto"
    channels_last: bool = True
    channels_last_min_positions: int = 1024
    compile: bool = False
    log_every: int = 10
    checkpoint_every: int = 1
    checkpoint_every_steps: int = 0
    sync_bn: bool = True
    on_nonfinite: Literal["stop", "skip"] = "stop"


@dataclass
class EvalConfig:
    """``encoder``: which encoder of a member with an EMA teacher k-NN, linear probe and the other protocols
    evaluate: ``teacher``, ``student`` (the online encoder), or ``auto``, the method's authors' choice (the
    strategy's ``eval_encoder``: teacher for DINO, MOKD and SDSSL, student for BYOL and MoCo v3)."""

    knn_k: list[int] = field(default_factory=lambda: [10, 20, 100, 200])
    knn_temperature: float = 0.07
    batch_size: int = 256
    every_epochs: int = 0
    encoder: Literal["auto", "teacher", "student"] = "auto"


@dataclass
class Config:
    method: str = "dino"
    output_dir: str | None = None
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    members: dict[str, MemberConfig] = field(default_factory=dict)
    strategy: Any = None
    config_file: str | None = None
    tag: str | None = None  # a label that keeps runs of one config apart in tables (e.g. an ablation's overrides)
    plugins: list[str] = field(default_factory=list)  # modules imported first (--plugin), so later commands find them


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp)).replace("NoneType", "null")


_SCIENTIFIC = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _convert(value: Any, tp: Any, path: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and return it converted (lists -> tuples, dicts -> dataclasses)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    bad = UserError(f"config key '{path}': expected {_type_name(tp)}, got {value!r}")
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise bad
        return from_dict(tp, value, path)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, path)
            except UserError:
                continue
        raise bad
    if origin is Literal:
        if value not in args:
            raise bad
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise bad
        return [_convert(v, args[0], f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or (len(args) != 2 or args[1] is not Ellipsis) and len(value) != len(args):
            raise bad
        item_types = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else args
        return tuple(_convert(v, t, f"{path}[{i}]") for i, (v, t) in enumerate(zip(value, item_types)))
    if origin is dict:
        if not isinstance(value, dict):
            raise bad
        return {str(k): _convert(v, args[1], f"{path}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, str) and _SCIENTIFIC.fullmatch(value):
            return float(value)  # YAML 1.1 reads "2e-3" (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp in (bool, str):
        if not isinstance(value, tp):
            raise bad
        return value
    raise TypeError(f"unsupported config annotation {tp!r} at {path}")


def from_dict(cls: type, data: dict, path: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``, rejecting unknown keys and values of the wrong type."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        key_path = f"{path}.{key}" if path else str(key)
        if key not in hints:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise UserError(f"unknown config key '{key_path}'{hint}; allowed here: {', '.join(names)}")
        kwargs[key] = _convert(value, hints[key], key_path)
    return cls(**kwargs)


def to_dict(obj: Any) -> Any:
    """Plain YAML/JSON-safe form of a config tree (tuples become lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj


def read_yaml(path: str | Path) -> dict:
    """Safe-load a YAML mapping, following ``_base_`` (a path or list of paths relative to the file, merged in
    order, then this file on top) by ``deep_merge``."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file '{path}' does not exist; pass an existing YAML file to --config")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"config file '{path}' is not valid YAML ({_yaml_problem(exc)}); fix its syntax") from exc
    if not isinstance(data, dict):
        raise UserError(f"config file '{path}' must hold a mapping of keys, not {type(data).__name__}")
    bases = data.pop("_base_", [])
    merged: dict = {}
    for base in [bases] if isinstance(bases, str) else bases:
        merged = deep_merge(merged, read_yaml(path.parent / base))
    return deep_merge(merged, data)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """What PyYAML found wrong and where, 'line L, column C' counted from 1 as editors do."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark is not None else problem


def deep_merge(base: dict, update: dict) -> dict:
    """``update`` on top of ``base``, mappings merged key by key; ``null`` over a mapping removes it (back to its
    default), e.g. a derived config's ``module_optimizers: null`` drops the ones its ``_base_`` gives."""
    merged = dict(base)
    for key, value in update.items():
        if value is None and isinstance(merged.get(key), dict):
            del merged[key]
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML) to a raw config mapping."""
    data = dict(data)
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override '{item}' must look like key.sub=value (e.g. train.epochs=10)")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError:
            value = raw
        parts = key.strip().split(".")
        node = data
        for part in parts[:-1]:
            child = node.get(part)
            child = dict(child) if isinstance(child, dict) else {}
            node[part] = child
            node = child
        node[parts[-1]] = value
    return data


def default_config_path(method: str) -> Path:
    return PACKAGE_CONFIGS / f"{method}.yaml"


def load_config(method: str | None, config_file: str | None, overrides: list[str]) -> Config:
    """Resolve the raw mapping (package default for the method, or the user's file), apply overrides, validate.

    The strategy section is validated later against the strategy's ``Options`` (see :func:`strategy_options`).
    """
    if config_file is not None:
        raw = read_yaml(config_file)
        file_method = raw.get("method")
        if method and file_method and method != file_method:
            raise UserError(
                f"--method {method} disagrees with method: {file_method} in {config_file}; drop one of them"
            )
        raw["method"] = method or file_method or "dino"
        raw["config_file"] = str(config_file)
    else:
        if method is None:
            raise UserError("no method given: pass --method NAME or --config FILE.yaml (see `sslkd list`)")
        from sslkd.registry import STRATEGIES

        raw = _default_config(STRATEGIES.get(method), method)
        raw["method"] = method
    raw = apply_overrides(raw, overrides)
    cfg = from_dict(Config, raw)
    if cfg.plugins:
        from sslkd.registry import load_plugins

        load_plugins(cfg.plugins)
    if not cfg.members:
        raise UserError("the config defines no members: add a `members:` mapping (name -> backbone, ...)")
    validate(cfg)
    return cfg


def _at_least(path: str, value: float | None, low: float, hint: str) -> None:
    if value is not None and value < low:
        raise UserError(f"config key '{path}': {value} is below {low}; {hint}")


def _scale_range(path: str, scale: tuple[float, float]) -> None:
    """A crop scale range (the fraction of the image area a crop keeps) must be 0 < low <= high <= 1."""
    low, high = scale
    if 0 < low <= high <= 1:
        return
    fix = f"write the smaller number first: {path}=[{high},{low}]" if 0 < high < low <= 1 else f"e.g. {path}=[0.4,1.0]"
    raise UserError(f"config key '{path}': {list(scale)} is not a range 0 < low <= high <= 1 of the image area a "
                    f"crop keeps; {fix}")


def validate(cfg: Config) -> None:
    """Reject values that type-check but cannot train (a negative learning rate, zero epochs or batch, an inverted
    crop scale), before any output directory exists: each would otherwise fail late, or worse, run to nonsense."""
    _at_least("train.epochs", cfg.train.epochs, 0, "train for at least one epoch")
    _at_least("train.batch_size", cfg.train.batch_size, 1, "use a batch of at least 1 image per process")
    _at_least("train.log_every", cfg.train.log_every, 1, "log every 1 or more steps")
    _at_least("train.checkpoint_every", cfg.train.checkpoint_every, 1, "checkpoint every 1 or more epochs")
    _at_least("train.checkpoint_every_steps", cfg.train.checkpoint_every_steps, 0, "use 0 (off) or a step count")
    _at_least("train.channels_last_min_positions", cfg.train.channels_last_min_positions, 0,
              "use 0 (channels-last everywhere) or a number of positions")
    _at_least("data.num_workers", cfg.data.num_workers, 0, "use 0 (load in the main process) or more workers")
    _at_least("eval.batch_size", cfg.eval.batch_size, 1, "use a batch of at least 1 image")
    _at_least("eval.every_epochs", cfg.eval.every_epochs, 0, "use 0 (only at the end) or an epoch count")
    for k in cfg.eval.knn_k:
        _at_least("eval.knn_k", k, 1, "list neighbour counts of 1 or more")
    _scale_range("data.augment.global_scale", cfg.data.augment.global_scale)
    _scale_range("data.augment.local_scale", cfg.data.augment.local_scale)
    for name, member in cfg.members.items():
        _check_optimizer(member.optimizer, f"members.{name}.optimizer")
        for module, opt in member.module_optimizers.items():
            _check_optimizer(opt, f"members.{name}.module_optimizers.{module}")


def _check_optimizer(opt: OptimConfig, path: str) -> None:
    for key in ("lr", "min_lr", "weight_decay", "weight_decay_end", "warmup_epochs", "momentum", "clip_grad"):
        _at_least(f"{path}.{key}", getattr(opt, key), 0, f"set {path}.{key} to 0 or more (or drop it for the "
                  "optimiser's default)")


def _default_config(strategy_cls: type, method: str) -> dict:
    """The strategy's default config; a plugin strategy without one gets a line saying what to pass instead of an
    error about a file inside the installed package."""
    from sslkd.strategies.base import Strategy

    inherited = getattr(strategy_cls.default_config, "__func__", None) is Strategy.default_config.__func__
    if inherited and not default_config_path(strategy_cls.name).is_file():
        raise UserError(f"strategy {method!r} has no default config: pass --config FILE.yaml that names "
                        f"`method: {method}` and its `members:` (see the README, Adding a method), or give the "
                        "strategy a default_config() classmethod")
    return strategy_cls.default_config()


def strategy_options(cfg: Config, options_cls: type) -> Any:
    """Validate ``cfg.strategy`` against the strategy's options dataclass and store the typed result back."""
    raw = cfg.strategy if cfg.strategy is not None else {}
    if dataclasses.is_dataclass(raw):
        return raw
    if not isinstance(raw, dict):
        raise UserError(f"config key 'strategy': expected a mapping, got {raw!r}")
    cfg.strategy = from_dict(options_cls, raw, "strategy")
    return cfg.strategy


def save_config(cfg: Config, path: Path) -> None:
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
