"""What every ``sslkd eval`` protocol shares: loading a run's members, and recording a result next to the run.

A protocol's result is a dict per member holding its headline number and a ``protocol`` dict of every setting that
made it. ``--output FILE.json`` writes it to a file; ``--record`` also stores it in the run's summary.json under
``evals[KEY]`` (and, for the linear probe, in each member's ``linear_top1``), which is where ``sslkd compare`` and
tools/reproduce.py find it. The key names the protocol and its settings (``semisup_10pct``), so one run can hold
many evaluations and a finished one is never redone.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from sslkd.core.checkpoint import atomic_write
from sslkd.core.rundir import RunDir
from sslkd.errors import UserError


def resolve_run(path: str | Path) -> tuple[Path, Path | None]:
    """(run directory, checkpoint file or None) of a checkpoint path or a run directory.

    A run trained for 0 epochs (a random-initialisation floor) has a config.yaml and no checkpoint: None."""
    path = Path(path)
    if path.is_dir():
        files = RunDir(path)
        if files.checkpoint.is_file():
            return path, files.checkpoint
        if files.config.is_file():
            return path, None
        raise UserError(f"'{path}' holds neither {RunDir.CHECKPOINT} nor config.yaml; pass a run directory or a checkpoint")
    run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    return run_dir, path


def load_strategy(path: str | Path, data_name: str | None = None, data_root: str | None = None,
                  encoder: str | None = None):
    """The run's strategy with its trained weights, and its config (data set replaced when ``data_name`` is given;
    ``eval.encoder``, which encoder of each member is evaluated, replaced when ``encoder`` is given).

    A 0-epoch run is rebuilt from its config.yaml with its seed: the trainer seeds everything and builds the
    strategy before any other random draw, so this is the initialisation that run evaluated."""
    from sslkd.config import Config, from_dict, read_yaml
    from sslkd.data import build_dataset
    from sslkd.engine.trainer import seed_everything
    from sslkd.eval.protocol import checked_encoder, strategy_from_checkpoint
    from sslkd.registry import STRATEGIES, load_run_plugins

    run_dir, checkpoint = resolve_run(path)
    if checkpoint is not None:
        return strategy_from_checkpoint(checkpoint, data_name, data_root, encoder)
    cfg = from_dict(Config, read_yaml(RunDir(run_dir).config))
    load_run_plugins(cfg.plugins)
    if cfg.train.epochs != 0:
        raise UserError(f"'{run_dir}' has no {RunDir.CHECKPOINT}: finish it with `sslkd train --resume {run_dir}` first")
    if encoder is not None:
        cfg.eval.encoder = checked_encoder(encoder)
    seed_everything(cfg.train.seed)
    info = build_dataset(cfg.data.name, cfg.data.root, "train").info
    strategy = STRATEGIES.get(cfg.method)(cfg, info)
    if data_name is not None:
        cfg.data.name, cfg.data.root = data_name, data_root
    elif data_root is not None:
        cfg.data.root = data_root
    return strategy, cfg


def load_members(path, member: str | None = None, data_name: str | None = None, data_root: str | None = None,
                 encoder: str | None = None):
    """(strategy, config, {member: evaluated backbone}) of a checkpoint, restricted to ``member`` when given; the
    evaluated backbone is the encoder ``eval.encoder`` names (replaced by ``encoder`` when given)."""
    strategy, cfg = load_strategy(path, data_name, data_root, encoder)
    if member is not None and member not in strategy.members:
        raise UserError(f"checkpoint has no member {member!r}; its members are {', '.join(strategy.members)}")
    strategy.eval()
    backbones = {name: b for name, b in strategy.eval_backbones().items() if member is None or name == member}
    return strategy, cfg, backbones


def record_in_summary(run_dir: str | Path, key: str, results: dict, wall_time_s: float | None = None) -> None:
    """Store ``results`` (member -> result) in ``run_dir/summary.json`` under ``evals[key]``; a linear-probe key
    (``linear...``) also fills each member's ``linear_top1``, which the paper tables read."""
    path = Path(run_dir) / "summary.json"
    if not path.is_file():
        raise UserError(f"--record needs a finished run, but {path} does not exist: finish the run first")
    summary = json.loads(path.read_text())
    entry = {name: jsonable(result) for name, result in results.items()}
    if wall_time_s is not None:
        entry["wall_time_s"] = round(wall_time_s, 1)
    summary.setdefault("evals", {})[key] = entry
    if key.startswith("linear"):
        for name, result in results.items():
            if name in summary["members"]:
                summary["members"][name]["linear_top1"] = result["linear_top1"]
                summary["members"][name]["linear_key"] = key
    atomic_write(path, lambda handle: handle.write(json.dumps(summary, indent=2).encode()))


def save_results(checkpoint: str | Path, results: dict, key: str, wall_time_s: float, output: str | Path | None = None,
                 record: bool = False) -> None:
    """Write one evaluation's results (with its checkpoint, key and wall time) to the JSON file ``output``, and with
    ``record`` store them in the run's summary.json under ``evals[key]``."""
    if output:
        payload = {"checkpoint": str(checkpoint), "key": key, "wall_time_s": round(wall_time_s, 1),
                   "results": jsonable(results)}
        atomic_write(Path(output), lambda handle: handle.write(json.dumps(payload, indent=2).encode()))
    if record:
        run_dir, _ = resolve_run(checkpoint)
        record_in_summary(run_dir, key, results, wall_time_s)


def jsonable(value):
    """``value`` with tensors as lists, paths as strings and keys as strings: ready for json.dumps."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return value
