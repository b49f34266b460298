"""Command line: ``sslkd train | eval | compare | reproduce | bench | export | list`` (also ``python -m sslkd``).

Every mistake a user can make ends with one line on stderr naming the problem and the fix, and exit status 2. The
``sslkd eval`` protocols' options and commands are in ``sslkd.cli.eval``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

from sslkd.cli.eval import add_eval_commands, cmd_eval
from sslkd.errors import UserError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sslkd", description="Self-supervised knowledge distillation, side by side.")
    parser.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                        help="import MODULE first (it registers extra strategies, backbones or data sets)")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a method (default config: the embedded digits data, offline)")
    train.add_argument("--method", help="strategy name (see `sslkd list`)")
    train.add_argument("--config", help="YAML config file (e.g. zoo_configs/mokd/...yaml)")
    train.add_argument("--output-dir", help="run directory (default runs/<method>-<data>-seed<seed>-<time>)")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    train.add_argument("--overwrite", action="store_true", help="replace a finished run in --output-dir")
    train.add_argument("--random-init", action="store_true",
                       help="write an untrained run (train.epochs=0): its members' random initialisation, evaluable "
                            "like any run (a table's floor)")
    train.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides, e.g. train.epochs=10")

    add_eval_commands(commands)

    compare = commands.add_parser("compare", help="turn finished runs into a paper-style table")
    compare.add_argument("run_dirs", nargs="*", metavar="RUN_DIR",
                         help="run directories (or folders holding them); none: the records of --table TABLE")
    compare.add_argument("--table", default="auto",
                         help="table layout (auto, mokd_table1, runs, ...) or a table of tables/ (mokd_table1_v3, ...: "
                              "its layout, and with no RUN_DIR its records in results/)")
    compare.add_argument("--scale", choices=["proxy", "paper"],
                         help="with no RUN_DIR: the table's CPU-proxy records (the default) or its paper-scale ones")
    compare.add_argument("--results", help="with no RUN_DIR: the results folder `sslkd reproduce` wrote the records to "
                                           "(default: results/ of the checkout)")
    compare.add_argument("--format", default="md", choices=["md", "csv", "latex"], help="output format")
    compare.add_argument("--output", help="also write the table to this file (its folder is created)")
    compare.add_argument("--provenance", action="store_true",
                         help="add where each run came from: sslkd version and git revision, torch, device, "
                              "precision, processes")

    reproduce = commands.add_parser("reproduce", help="train, evaluate and table one paper table (tables/*.yaml), "
                                    "resumably; --list shows them all")
    from sslkd.reproduce import add_arguments

    add_arguments(reproduce)

    bench = commands.add_parser("bench", help="time a method's full steps against its network passes alone")
    bench.add_argument("--method", help="strategy name (see `sslkd list`)")
    bench.add_argument("--config", help="YAML config file (e.g. a CPU-proxy config)")
    bench.add_argument("--steps", type=int, default=5, help="timed steps (after one warm-up step)")
    bench.add_argument("--max-seconds", type=float, default=20.0,
                       help="stop timing steps after this long (at least two are timed) and the data pipeline after "
                            "half of it, so big configs stay quick")
    bench.add_argument("--knn-size", default="10000,2000,384", help="k-NN benchmark: train,test,dim")
    bench.add_argument("--json", action="store_true", help="print the figures as JSON")
    bench.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")

    export = commands.add_parser("export", help="write one member's backbone as safetensors, loadable by timm")
    export.add_argument("--checkpoint", required=True,
                        help="a run directory, or its checkpoints/last.pt, written by sslkd train")
    export.add_argument("--member", help="the member to export (required when there are several)")
    export.add_argument("--out", required=True, help="output file, e.g. vit.safetensors")

    commands.add_parser("list", help="list registered strategies, backbones, heads and data sets")

    data = commands.add_parser("data", help="build a data set the configs use")
    builders = data.add_subparsers(dest="builder", required=True)
    subset = builders.add_parser("cifar10-subset", help="the CIFAR-10 subset of the CPU-proxy configs (10,000 train, "
                                 "2,000 test PNGs) from the standard CIFAR-10 python version")
    subset.add_argument("--cifar10", required=True, metavar="DIR",
                        help="the extracted cifar-10-python.tar.gz (cifar-10-batches-py, or the folder holding it)")
    subset.add_argument("--out", required=True, help="new folder to write, e.g. ../shared/data/cifar10_subset")
    subset.add_argument("--train-per-class", type=int, default=1000, help="images per class from the train split")
    subset.add_argument("--test-per-class", type=int, default=200, help="images per class from the test split")
    subset.add_argument("--verify", metavar="MANIFEST", help="a manifest.csv of another copy: fail unless every "
                        "image has the same pixels")

    plot = commands.add_parser("plot", help="draw a run's loss terms, lr and k-NN over training (PNG)")
    plot.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (holding metrics.jsonl)")
    plot.add_argument("--out-dir", help="where to write the PNGs (default: RUN_DIR/plots)")
    return parser


def cmd_train(args: argparse.Namespace) -> int:
    """Train in this process, or in every process ``torchrun`` started (one process group, rank 0 writes)."""
    from sslkd.core import distributed as dist

    try:
        return _train(args)
    finally:
        dist.shutdown()


def _train(args: argparse.Namespace) -> int:
    from sslkd.config import from_dict, load_config, read_yaml, Config
    from sslkd.core import distributed as dist
    from sslkd.core.rundir import RunDir
    from sslkd.engine.trainer import Trainer
    from sslkd.registry import load_run_plugins

    if args.resume:
        if args.method or args.config or args.overrides or args.random_init:
            raise UserError("--resume continues a run with its saved config.yaml: drop --method, --config, "
                            "--random-init and overrides")
        run_dir = Path(args.resume)
        files = RunDir(run_dir)
        if not files.config.is_file() or not files.checkpoint.is_file():
            raise UserError(f"'{run_dir}' holds no resumable run (config.yaml and {RunDir.CHECKPOINT}); pass a run "
                            "directory")
        cfg = from_dict(Config, read_yaml(files.config))
        load_run_plugins(cfg.plugins)
        dist.init_from_env(cfg.train.device)
        with _held(files):
            return _fit(Trainer(cfg, run_dir, resume=True), run_dir)
    cfg = load_config(args.method, args.config, args.overrides)
    cfg.plugins = list(dict.fromkeys([*cfg.plugins, *args.plugin]))
    _check_epochs(cfg, args.random_init)
    dist.init_from_env(cfg.train.device)
    if args.output_dir:
        cfg.output_dir = args.output_dir
    if cfg.output_dir is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        cfg.output_dir = f"runs/{cfg.method}-{cfg.data.name}-seed{cfg.train.seed}-{stamp}"
    cfg.output_dir = dist.broadcast_object(cfg.output_dir)
    run_dir = Path(cfg.output_dir)
    files = RunDir(run_dir)
    check_output_dir(run_dir)
    with _held(files):
        if files.summary.exists() and not args.overwrite:
            raise UserError(f"'{run_dir}' already holds a finished run; choose another --output-dir or pass --overwrite")
        if files.checkpoint.exists() and not args.overwrite:
            raise UserError(f"'{run_dir}' holds an unfinished run; continue it with `sslkd train --resume {run_dir}` or pass --overwrite")
        trainer = Trainer(cfg, run_dir)
        if args.overwrite and dist.is_main_process():
            # only now: a config that fails to build a trainer leaves the old run untouched
            for path in (files.summary, files.checkpoint):
                path.unlink(missing_ok=True)
        return _fit(trainer, run_dir)


@contextmanager
def _held(files):
    """The run directory held while this command trains it; rank 0 holds it for a torchrun group and tells the
    other ranks when it is busy, so that all of them stop with the same line."""
    from sslkd.core import distributed as dist
    from sslkd.core.rundir import RunBusy

    with ExitStack() as stack:
        busy = None
        if dist.is_main_process():
            try:
                stack.enter_context(files.hold())
            except RunBusy as exc:
                busy = str(exc)
        busy = dist.broadcast_object(busy)
        if busy:
            raise RunBusy(busy)
        yield


def _fit(trainer, run_dir: Path) -> int:
    summary = trainer.fit()
    if summary is not None:
        _print_summary(summary, run_dir)
    return 0


def _check_epochs(cfg, random_init: bool) -> None:
    """``train.epochs=0`` would make a "finished" run with no checkpoint; an untrained run is asked for by name."""
    if random_init:
        cfg.train.epochs = 0
    elif cfg.train.epochs == 0:
        raise UserError("train.epochs=0 trains nothing and leaves no checkpoint to evaluate, export or resume: set "
                        "train.epochs=1 or more (every run records its members' k-NN at step 0 in summary.json, "
                        "members.<name>.random_init), or pass --random-init for an untrained run")


def check_output_dir(run_dir: Path) -> None:
    """Refuse an output directory that cannot be made or written, or that holds something other than a run (the
    data folder, a home directory): a run writes and --overwrite deletes files there."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--output-dir '{run_dir}' is a file; choose a directory (new or empty)")
    from sslkd.core.rundir import RunDir

    if run_dir.is_dir() and any(run_dir.iterdir()) and not RunDir(run_dir).has_run_files():
        raise UserError(f"--output-dir '{run_dir}' is not empty and holds no sslkd run (config.yaml, "
                        f"metrics.jsonl); choose a new or empty directory, e.g. runs/{run_dir.name}")
    existing = next(parent for parent in [run_dir, *run_dir.absolute().parents] if parent.exists())
    if not existing.is_dir():
        raise UserError(f"cannot create --output-dir '{run_dir}': '{existing}' is a file, not a folder; choose "
                        "another --output-dir")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"cannot create or write --output-dir '{run_dir}' (no write permission on '{existing}'); "
                        "choose a directory you can write, e.g. under your home")


def _print_summary(summary: dict, run_dir: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    from sslkd.report.core import at_or_below_floor

    table = Table(title=f"{summary['method']} on {summary['dataset']} ({summary['epochs']} epochs, seed {summary['seed']})")
    for column in ("member", "backbone", "params (M)", "k-NN top-1 (k=20)", "random init k-NN", "DoGo k-NN mean"):
        table.add_column(column)
    console = Console()
    warnings = []
    for name, member in summary["members"].items():
        floor = (member.get("random_init") or {}).get("knn_top1")
        below = summary["epochs"] > 0 and at_or_below_floor(member["knn_top1"], floor)
        table.add_row(name, member["backbone"], f"{member['params_m']:.2f}",
                      f"{member['knn_top1']:.2f}" + (" [bold red](at or below floor)[/]" if below else ""),
                      "n/a" if floor is None else f"{floor:.2f}", f"{member['knn_dogo_mean']:.2f}")
        if below:
            warnings.append(f"warning: {name} ends at k-NN {member['knn_top1']:.2f}, at or below its random "
                            f"initialisation ({floor:.2f}): it learned nothing the k-NN can see")
    console.print(table)
    for line in warnings:
        console.print(line, style="bold red", highlight=False, markup=False)
    if "ensemble_test_top1" in summary:
        tops = ", ".join(f"{name} {m['test_top1']:.2f}" for name, m in summary["members"].items())
        console.print(f"test top-1: {tops}; ensemble {summary['ensemble_test_top1']:.2f}")
    console.print(f"run directory: {run_dir}")


def cmd_compare(args: argparse.Namespace) -> int:
    from rich.console import Console

    from sslkd.report import compare_table, render, rich_table
    from sslkd.reproduce import compare_target

    run_dirs, layout = compare_target(args.table, args.run_dirs, args.scale, args.results)
    try:
        table = compare_table(run_dirs, table=layout, provenance=args.provenance)
    except UserError as exc:
        if args.run_dirs:
            raise
        proxy = " --proxy" if args.scale != "paper" else ""
        raise UserError(f"{exc} (the records of {args.table} lack these runs so far: sslkd reproduce {args.table}"
                        f"{proxy} makes them)") from exc
    text = render(table, args.format)
    if args.output:
        _write_text(Path(args.output), text)
    console = Console()
    if console.is_terminal and args.format == "md":
        console.print(rich_table(table))
    else:
        print(text)
    return 0


def _write_text(path: Path, text: str) -> None:
    """Write a table file, making its folder; a path that cannot be written is one line."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError as exc:
        raise UserError(f"cannot write --output '{path}' ({exc.strerror or exc}); choose a path you can write") from exc


def cmd_reproduce(args: argparse.Namespace) -> int:
    from sslkd.reproduce import execute

    return execute(args, prog="sslkd")


def cmd_bench(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from sslkd.config import load_config
    from sslkd.engine.bench import run_bench

    try:
        knn_size = tuple(int(v) for v in args.knn_size.split(","))
        assert len(knn_size) == 3
    except (ValueError, AssertionError) as exc:
        raise UserError(f"--knn-size {args.knn_size!r} must be three integers train,test,dim (e.g. 50000,10000,384)") from exc
    cfg = load_config(args.method, args.config, args.overrides)
    result = run_bench(cfg, steps=args.steps, knn_size=knn_size, max_seconds=args.max_seconds)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        table = Table(title=f"sslkd bench: {result['method']} (batch {result['batch_size']}, {result['device']}, "
                            f"{result['precision']}, {result['linear_kernel']} Linear layers, {result['timed_steps']} "
                            "timed steps)")
        table.add_column("measure")
        table.add_column("value", justify="right")
        rows = [
            ("full training step", f"{result['step_s'] * 1000:.1f} ms"),
            ("network passes only", f"{result['network_s'] * 1000:.1f} ms"),
            ("overhead ratio (wall clock; the line below)", f"{result['overhead_ratio']:.2f}"),
            ("overhead ratio by CPU time (all threads)", f"{result['overhead_ratio_cpu']:.2f}"),
            ("training images/s", f"{result['train_images_per_s']:.1f}"),
            (f"data pipeline images/s ({result['data_workers']} workers)",
             f"{result['data_images_per_s']:.1f} ({result['data_to_train']:.1f}x training)"),
            ("peak memory", f"{result['peak_memory_mb']:.0f} MB"),
            ("k-NN k=20 of {}x{} (dim {})".format(*result["knn_size"][:2][::-1], result["knn_size"][2]), f"{result['knn_s']:.2f} s"),
            ("bare matrix product, same size", f"{result['matmul_s']:.2f} s ({result['knn_to_matmul']:.2f}x)"),
        ]
        for row in rows:
            table.add_row(*row)
        Console().print(table)
    print(f"overhead ratio: {result['overhead_ratio']:.2f}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from sslkd.engine.export import export_backbone

    print(export_backbone(args.checkpoint, args.member, args.out))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from sslkd.registry import BACKBONES, DATASETS, HEADS, STRATEGIES

    print("strategies: " + ", ".join(STRATEGIES.names()))
    print("backbones:  " + ", ".join(BACKBONES.names()) + " (and any timm model name)")
    print("heads:      " + ", ".join(HEADS.names()))
    print("data sets:  " + ", ".join(DATASETS.names()))
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from sslkd.data.subset import build_cifar10_subset

    meta = build_cifar10_subset(args.cifar10, args.out, args.train_per_class, args.test_per_class, args.verify)
    print(f"wrote {args.out}: {meta['totals']['train']} train and {meta['totals']['test']} test images of "
          f"{meta['num_classes']} classes" + (f", identical to {args.verify}" if args.verify else ""))
    print(f"train on it with data.root={args.out} (e.g. sslkd train --config zoo_configs/... data.root={args.out})")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from sslkd.report.plots import plot_run

    for path in plot_run(args.run_dir, args.out_dir):
        print(path)
    return 0


def one_line(exc: UserError) -> str:
    """The message of a UserError; one raised in a DataLoader worker arrives wrapped with the worker's traceback,
    whose last line is the original message."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    if len(lines) <= 1:
        return str(exc)
    return lines[-1].split("UserError: ", 1)[-1]


COMMANDS = {"data": cmd_data, "plot": cmd_plot, "train": cmd_train, "eval": cmd_eval, "compare": cmd_compare,
            "reproduce": cmd_reproduce, "export": cmd_export, "bench": cmd_bench, "list": cmd_list}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        from sslkd.registry import load_plugins

        load_plugins(args.plugin)
        return COMMANDS[args.command](args)
    except UserError as exc:
        print(f"sslkd: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sslkd: interrupted; resume a training run with `sslkd train --resume RUN_DIR`", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return _broken_pipe()


def _broken_pipe() -> int:
    """The reader of our output went away (``sslkd compare ... | head``): say so once, and send what is still
    buffered nowhere, so that Python's exit does not print a traceback about it."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    print("sslkd: error: the output was cut off because the program reading it stopped (a broken pipe, e.g. "
          "`| head`); to keep all of it, write it to a file (compare: --output FILE)", file=sys.stderr)
    return 2
