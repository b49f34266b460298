"""What every ``sslkd eval`` protocol shares: loading a run's members, and recording a result next to the run.

A protocol's result is a dict per member holding its headline number and a ``protocol`` dict of every setting that
made it. ``--output FILE.json`` writes it to a file; ``--record`` also stores it in the run's summary.json under
``evals[KEY]`` (and, for the linear probe, in each member's ``linear_top1``), which is where ``sslkd compare`` and
tools/reproduce.py find it. The key names the protocol and its settings (``semisup_10pct``), so one run can hold
many evaluations and a finished one is never redone.
"""

from __future__ import annotations

import argparse
import json
import time
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


def add_common_args(parser: argparse.ArgumentParser, data_help: str = "data set to evaluate on "
                    "(default: the training data set)") -> None:
    """--checkpoint, --member, --data, --data-root, --seed, --device, --json, --output, --record, --key."""
    parser.add_argument("--checkpoint", required=True,
                        help="a checkpoints/last.pt written by sslkd train, or a run directory")
    parser.add_argument("--member", help="evaluate only this member (default: every member)")
    parser.add_argument("--data", dest="data_name", help=data_help)
    parser.add_argument("--data-root", help="root of that data set")
    parser.add_argument("--seed", type=int, default=0, help="seed of the evaluation (splits, init, shuffling)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    add_output_args(parser)


def add_output_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--output", help="also write the results (with every setting) to this JSON file")
    parser.add_argument("--record", action="store_true",
                        help="also store the results in the run's summary.json under evals.KEY")
    parser.add_argument("--key", help="name under which --record stores the results (default: from the settings)")


def timed(fn, *args, **kwargs) -> tuple[dict, float]:
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def record_in_summary(run_dir: str | Path, key: str, results: dict, wall_time_s: float | None = None) -> None:
    """Store ``results`` (member -> result) in ``run_dir/summary.json`` under ``evals[key]``; a linear-probe key
    (``linear...``) also fills each member's ``linear_top1``, which the paper tables read."""
    path = Path(run_dir) / "summary.json"
    if not path.is_file():
        raise UserError(f"--record needs a finished run, but {path} does not exist: finish the run first")
    summary = json.loads(path.read_text())
    entry = {name: _jsonable(result) for name, result in results.items()}
    if wall_time_s is not None:
        entry["wall_time_s"] = round(wall_time_s, 1)
    summary.setdefault("evals", {})[key] = entry
    if key.startswith("linear"):
        for name, result in results.items():
            if name in summary["members"]:
                summary["members"][name]["linear_top1"] = result["linear_top1"]
                summary["members"][name]["linear_key"] = key
    atomic_write(path, lambda handle: handle.write(json.dumps(summary, indent=2).encode()))


def finish(args: argparse.Namespace, results: dict, default_key: str, wall_time_s: float,
           headline: str, describe) -> int:
    """Write --output, --record, and print one line per member (``describe(result)`` says how it was made)."""
    write_outputs(args, results, default_key, wall_time_s)
    if args.json:
        print(json.dumps(_jsonable(results), indent=2))
        return 0
    for name, result in results.items():
        print(f"{name}: {headline} {result[headline]:.2f} ({describe(result)})"
              if isinstance(result.get(headline), float) else f"{name}: {describe(result)}")
    return 0


def write_outputs(args: argparse.Namespace, results: dict, default_key: str, wall_time_s: float) -> None:
    """--output FILE.json and --record (summary.json evals[KEY]) of one evaluation."""
    if args.output:
        payload = {"checkpoint": str(args.checkpoint), "key": args.key or default_key,
                   "wall_time_s": round(wall_time_s, 1), "results": _jsonable(results)}
        atomic_write(Path(args.output), lambda handle: handle.write(json.dumps(payload, indent=2).encode()))
    if args.record:
        run_dir, _ = resolve_run(args.checkpoint)
        record_in_summary(run_dir, args.key or default_key, results, wall_time_s)


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return value
