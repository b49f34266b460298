"""The one training loop. It knows nothing about any method: a strategy returns named losses, the trainer
back-propagates their total, steps one optimiser per member, and calls the strategy's after-step hook."""

from __future__ import annotations

import inspect
import itertools
import json
import random
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Column
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from sslkd.config import Config, save_config, to_dict
from sslkd.data import build_dataset
from sslkd.data.batched import BatchedViews
from sslkd.data.sampling import SeededImages, SeededViews
from sslkd.core import distributed as dist
from sslkd.core.checkpoint import (
    atomic_write,
    load_checkpoint,
    remove_partial_writes,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from sslkd.engine.optim import (
    MemberOptimizer,
    check_every_parameter_optimised,
    clip_per_parameter,
    load_optimizer_state,
    member_optimizers,
    resolve_member_optimizers,
)
from sslkd.engine.performance import prepare_members
from sslkd.core.rundir import RunDir
from sslkd.core.schedules import cosine, warmup_cosine
from sslkd.errors import UserError
from sslkd.eval.classify import add_test_accuracy
from sslkd.eval.protocol import evaluate_members
from sslkd.models.kernels import autocast_dtype, forward_context, linear_kernel
from sslkd.registry import STRATEGIES
from sslkd.report.provenance import run_provenance
from sslkd.strategies.base import StepInfo, Strategy

PROGRESS_FIXED_WIDTH = 46  # method name, step/total, time left, bar and the gaps between them


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise UserError(f"config key 'train.device': {name!r} is not a device; use auto, cpu or cuda[:N]") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device=cuda but no GPU is visible; use train.device=cpu (or auto)")
    if device.type == "cuda" and device.index is None and dist.is_distributed():
        return torch.device("cuda", dist.local_rank())
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def fixed_subset(dataset: Dataset, size: int, seed: int) -> Dataset:
    if not 0 < size <= len(dataset):
        raise UserError(f"data.train_subset={size} must be between 1 and the {len(dataset)} training images")
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    return Subset(dataset, order[:size].tolist())


class StartableSampler(Sampler):
    """Gives a sampler whose ``set_epoch(epoch)`` cannot start mid-epoch the ``set_epoch(epoch, start)`` of
    ``EpochSampler``: the first ``start`` items of the epoch are drawn and dropped (indices only, no images)."""

    def __init__(self, sampler: Sampler):
        self.sampler = sampler
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.sampler.set_epoch(epoch)
        self.start = start

    def __iter__(self):
        return itertools.islice(iter(self.sampler), self.start, None)

    def __len__(self) -> int:
        return len(self.sampler)


def startable(sampler: Sampler) -> Sampler:
    """``sampler`` itself if its ``set_epoch`` takes ``start`` (a run resumed mid-epoch), else wrapped."""
    if "start" in inspect.signature(sampler.set_epoch).parameters:
        return sampler
    return StartableSampler(sampler)


class Trainer:
    """Builds the data, the strategy and one optimiser per member from a config, then runs or resumes training."""

    def __init__(self, cfg: Config, run_dir: str | Path, resume: bool = False, console: Console | None = None,
                 train_set: Dataset | None = None):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.files = RunDir(self.run_dir)
        self.console = console or Console(stderr=True)
        self.device = pick_device(cfg.train.device)
        seed_everything(cfg.train.seed + dist.rank())

        if train_set is None:
            train_set = build_dataset(cfg.data.name, cfg.data.root, "train", skip_corrupt=cfg.data.skip_corrupt)
        skipped = getattr(train_set, "skipped_files", [])
        self.skipped_images = len(skipped)
        if skipped and dist.is_main_process():
            self.console.print(f"left out {len(skipped)} image files that cannot be decoded (data.skip_corrupt), "
                               f"e.g. {skipped[0]}", highlight=False)
        self.info = train_set.info
        if cfg.data.train_subset is not None:
            train_set = fixed_subset(train_set, cfg.data.train_subset, cfg.train.seed)
        self.strategy: Strategy = STRATEGIES.get(cfg.method)(cfg, self.info).to(self.device)
        if dist.world_size() > 1 and cfg.train.sync_bn:
            dist.convert_sync_batchnorm(self.strategy, self.device)
        dist.broadcast_state(self.strategy)
        defaults = self.strategy.optimizer_defaults
        for member in self.strategy.members.values():
            resolve_member_optimizers(member.cfg, member.kind, defaults)
        prepare_members(self.strategy, cfg.train)
        self.optimizers: dict[str, MemberOptimizer] = {}
        for name, member in self.strategy.members.items():
            self.optimizers.update(member_optimizers(name, member.student, member.cfg, member.kind,
                                                     self.strategy.parameter_declarations(name)))
        check_every_parameter_optimised(self.strategy, self.optimizers)
        self.autocast_dtype = autocast_dtype(cfg.train, self.device)
        self.use_amp = self.autocast_dtype == torch.float16  # fp16 needs loss scaling; bf16 does not
        self.linear_kernel = linear_kernel(cfg.train, self.device, self.autocast_dtype)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)

        batch = cfg.train.batch_size
        self.sampler = self.strategy.train_sampler(train_set, batch, cfg.train.seed, dist.rank(), dist.world_size())
        if len(self.sampler) < batch:
            raise UserError(
                f"train.batch_size={batch} is larger than the {len(train_set) // dist.world_size()} training images per "
                "process; lower it"
            )
        self.train_set = train_set
        self.loader = self._make_loader()
        self.steps_per_epoch = len(self.loader)
        self.total_steps = cfg.train.epochs * self.steps_per_epoch
        self.epoch = 0
        self.step = 0
        self.wall_time = 0.0
        self.skipped_steps = 0
        self.random_init: dict | None = None  # each member's k-NN at step 0 (the floor), measured once per run
        if resume:
            self._restore(load_checkpoint(self.files.checkpoint, cfg.method))
        elif dist.is_main_process():
            self._create_run_dir()
        if dist.is_main_process():
            self._warn_pointless_settings()

    def _create_run_dir(self) -> None:
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(self.cfg, self.files.config)
            self.files.metrics.write_text("")
        except OSError as exc:
            raise UserError(f"cannot create or write the output directory '{self.run_dir}' ({exc.strerror or exc}); "
                            "choose another --output-dir") from exc

    def _warn(self, text: str) -> None:
        self.console.print(f"warning: {text}", highlight=False, markup=False, soft_wrap=True)

    def _warn_pointless_settings(self) -> None:
        """One line each for settings that run but whose numbers mean nothing: a one-class data set (every k-NN
        vote is right), a warm-up longer than the run (the lr never reaches its base value; at one step it is 0)."""
        if self.info.num_classes == 1:
            self._warn(f"the training data has only one class, so every k-NN top-1 is 100% and means nothing; "
                       f"point data.root at a data set with several class folders")
        for key, part in self.optimizers.items():
            warmup = int(round((part.cfg.warmup_epochs or 0) * self.steps_per_epoch))
            if 0 < self.total_steps <= warmup:
                self._warn(f"{key} warms its learning rate up over {warmup} steps but the run has only "
                           f"{self.total_steps}, so it never reaches its base rate: train more epochs, use a smaller "
                           f"train.batch_size, or lower members.{part.member}.optimizer.warmup_epochs")

    # ----------------------------------------------------------------------------------------------- schedules
    def set_schedules(self, info: StepInfo) -> dict[str, float]:
        """lr (warm-up + cosine; a group the strategy declares ``fixed_lr``: the base lr throughout) and weight
        decay (cosine) of every member at this global step, each times its group's declared ``lr_scale`` and
        ``weight_decay_scale``."""
        lrs = {}
        global_batch = self.cfg.train.batch_size * dist.world_size()
        for key, part in self.optimizers.items():
            opt_cfg = part.cfg
            batch_scale = global_batch / 256.0 if opt_cfg.lr_scaling == "linear" else 1.0
            lr = warmup_cosine(
                info.step, info.total_steps, opt_cfg.lr * batch_scale, opt_cfg.min_lr,
                min(info.epochs_to_steps(opt_cfg.warmup_epochs), info.total_steps),
            )
            wd = cosine(info.step, info.total_steps, opt_cfg.weight_decay, opt_cfg.weight_decay_end)
            for group in part.optimizer.param_groups:
                group["lr"] = (opt_cfg.lr * batch_scale if group.get("fixed_lr") else lr) * group.get("lr_scale", 1.0)
                if group["regularized"]:
                    group["weight_decay"] = wd * group.get("weight_decay_scale", 1.0)
            lrs[key] = lr
        self.schedule_values = self.strategy.schedule_values(info)
        return lrs

    # ----------------------------------------------------------------------------------------------- one step
    def forward_context(self):
        """The run's precision and Linear-layer kernel (``train.precision``, ``train.linear_kernel``)."""
        return forward_context(self.device, self.autocast_dtype, self.linear_kernel)

    def train_step(self, views, labels, indices, info: StepInfo) -> dict[str, torch.Tensor] | None:
        """One optimisation step; returns the losses (detached, averaged over processes), or None when a
        non-finite loss (in any process) made it skip the step."""
        views = [v.to(self.device, non_blocking=True) for v in views]
        labels = labels.to(self.device, non_blocking=True)
        indices = indices.to(self.device, non_blocking=True)
        restore_norm_statistics = self._norm_statistics_snapshot() if self.cfg.train.on_nonfinite == "skip" else None
        with self.forward_context():
            losses = self.strategy(views, labels, indices, info)
        values = dist.all_reduce_mean(torch.stack([value.detach().float() for value in losses.values()]))
        reported = dict(zip(losses, values))
        if not bool(torch.isfinite(values).all()):
            self.strategy.discard_deferred()
            if restore_norm_statistics is not None:
                restore_norm_statistics()
            return self._non_finite(reported, info)
        for part in self.optimizers.values():
            part.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(losses["loss"]).backward()
        for part in self.optimizers.values():
            dist.average_gradients(part.params)
            self.scaler.unscale_(part.optimizer)
            if part.cfg.clip_grad:
                clip_per_parameter(part.params, part.cfg.clip_grad)
            if info.epoch < part.cfg.freeze_last_layer_epochs:
                for param in part.last_layer:
                    param.grad = None
            self.scaler.step(part.optimizer)
        self.scaler.update()
        self.strategy.apply_deferred()
        self.strategy.after_step(info)
        return reported

    def _norm_statistics_snapshot(self):
        """Batch-norm running statistics change in the forward pass, before the trainer knows whether it keeps the
        step; returns what puts them back, so a skipped step leaves no trace (one fused copy each way)."""
        buffers = [buffer for module in self.strategy.modules() if isinstance(module, nn.modules.batchnorm._NormBase)
                   for buffer in module.buffers()]
        saved = torch._foreach_add(buffers, 0) if buffers else []

        @torch.no_grad()
        def restore() -> None:
            if buffers:
                torch._foreach_copy_(buffers, saved)

        return restore

    def _non_finite(self, losses: dict[str, torch.Tensor], info: StepInfo) -> None:
        """Name the step and the loss terms that are NaN/Inf; stop (keeping the last checkpoint) or skip."""
        bad = [name for name, value in losses.items() if name != "loss" and not bool(torch.isfinite(value))]
        if self.cfg.train.on_nonfinite == "skip":
            self.skipped_steps += 1
            self._write_metrics({"step": info.step + 1, "epoch": info.epoch, "skipped_steps": self.skipped_steps,
                                 "nonfinite_terms": bad})
            return None
        where = "; ".join(f"{name} (member {name.split('/')[0]}, term {name.split('/', 1)[1]})" if "/" in name
                          else f"{name} (a term of no single member)" for name in bad or ["loss"])
        raise UserError(
            f"loss is not finite at step {info.step} (epoch {info.epoch}) in {where}; the last good "
            f"checkpoint {self.files.checkpoint} is kept: lower the learning rate, or set train.on_nonfinite=skip, "
            f"then resume with sslkd train --resume {self.run_dir}"
        )

    # ----------------------------------------------------------------------------------------------- loop
    def _make_loader(self) -> DataLoader:
        """The training loader: workers persist across epochs (no start-up stall each epoch)."""
        workers = self.cfg.data.num_workers
        transform = self.strategy.train_transform()
        batched = self.cfg.data.augment.batched
        return DataLoader(
            SeededImages(self.train_set) if batched else SeededViews(self.train_set, transform),
            collate_fn=BatchedViews(transform) if batched else None,
            batch_size=self.cfg.train.batch_size,
            sampler=startable(self.sampler),
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=self.device.type == "cuda",
            drop_last=True,
            prefetch_factor=4 if workers > 0 else None,
            generator=torch.Generator().manual_seed(self.cfg.train.seed),
        )

    def _release_workers(self) -> None:
        """Stop the loader's persistent workers now, by replacing the loader with an unstarted one. Left to the
        garbage collector they can outlive the run by many runs: matplotlib and importlib leave reference cycles
        through the finished run's frames, so a long-lived process (tools/reproduce.py) piled up idle workers
        holding gigabytes until a full collection happened to run."""
        if self.cfg.data.num_workers > 0:
            self.loader = self._make_loader()

    def fit(self, stop_at_epoch: int | None = None) -> dict | None:
        """Train to ``train.epochs`` (or stop after ``stop_at_epoch`` epochs, as an interrupted run would) and
        return the summary written to summary.json (None when stopped early)."""
        try:
            return self._fit(stop_at_epoch)
        finally:
            self._release_workers()

    def _fit(self, stop_at_epoch: int | None) -> dict | None:
        cfg = self.cfg
        last_epoch = cfg.train.epochs if stop_at_epoch is None else min(stop_at_epoch, cfg.train.epochs)
        self.strategy.train()
        if self.step == 0 and self.random_init is None and self.total_steps > 0:
            self._measure_floor()
        self._clock = time.perf_counter()
        self._started = (self._clock, self.step)
        every_steps = cfg.train.checkpoint_every_steps
        with self._progress() as progress:
            task = progress.add_task(f"{cfg.method}", total=self.total_steps, completed=self.step, info="")
            for epoch in range(self.epoch, last_epoch):
                # a run resumed from a mid-epoch checkpoint starts at the batch after the last one it trained on
                done = self.step - epoch * self.steps_per_epoch
                self.loader.sampler.set_epoch(epoch, start=done * cfg.train.batch_size)
                tick, tick_step = time.perf_counter(), self.step
                for views, labels, indices in self.loader:
                    info = StepInfo(self.step, epoch, self.steps_per_epoch, self.total_steps)
                    lrs = self.set_schedules(info)
                    losses = self.train_step(views, labels, indices, info)
                    self.step += 1
                    logging_step = self.step % cfg.train.log_every == 0 or self.step % self.steps_per_epoch == 0
                    if losses is not None and logging_step:
                        now = time.perf_counter()
                        images_per_s = (self.step - tick_step) * cfg.train.batch_size * dist.world_size() / (now - tick)
                        record = self._log_step(epoch, losses, lrs, images_per_s)
                        tick, tick_step = now, self.step
                        progress.update(task, completed=self.step, info=self._short(record))
                    else:
                        progress.update(task, completed=self.step)
                    if every_steps and self.step % every_steps == 0 and self.step % self.steps_per_epoch:
                        self._save()
                self.epoch = epoch + 1
                self._advance_clock()
                if cfg.eval.every_epochs and self.epoch % cfg.eval.every_epochs == 0 and self.epoch < cfg.train.epochs:
                    if dist.is_main_process():
                        self._write_metrics({"epoch": self.epoch, "step": self.step, **self._knn_record()})
                        self.strategy.train()
                    dist.barrier()
                    self._clock = time.perf_counter()
                if self.epoch % cfg.train.checkpoint_every == 0 or self.epoch == last_epoch:
                    self._save()
        if self.epoch < cfg.train.epochs:
            return None
        return self._finish()

    def _measure_floor(self) -> None:
        """Every member's k-NN at step 0, with the evaluation the run ends with: the floor training must rise above.
        Measured once, on the main process, with the RNG states put back so the run trains as it would without
        it; the checkpoint keeps it, so a resumed run does not measure it again."""
        if dist.is_main_process():
            state = rng_state()
            results = evaluate_members(self.strategy, self.cfg, self.device)
            set_rng_state(state)
            self.random_init = {name: {"knn_top1": result["knn_top1"]} for name, result in results.items()}
            self._write_metrics({"epoch": 0, "step": 0, **self._knn_record(results)})
        dist.barrier()

    def _progress(self) -> Progress:
        """Step/total and the time left come first and never shrink; the loss terms take what width is left and are
        cut with an ellipsis, so an 80-column terminal still shows where the run is."""
        return Progress(
            TextColumn("[bold]{task.description}"),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            BarColumn(bar_width=12),
            TextColumn("{task.fields[info]}", table_column=Column(
                no_wrap=True, overflow="ellipsis", max_width=max(self.console.width - PROGRESS_FIXED_WIDTH, 8))),
            console=self.console,
            disable=not dist.is_main_process() or not self.console.is_terminal,  # a log file gets _log_step's lines
        )

    def _eta(self) -> str:
        """Time left at the training speed since this fit started, as H:MM:SS."""
        start, start_step = self._started
        done = self.step - start_step
        if done <= 0:
            return "-:--:--"
        left = round((time.perf_counter() - start) / done * (self.total_steps - self.step))
        return f"{left // 3600}:{left // 60 % 60:02d}:{left % 60:02d}"

    def _log_step(self, epoch: int, losses: dict[str, torch.Tensor], lrs: dict[str, float], images_per_s: float) -> dict:
        names = list(losses)
        values = torch.stack([losses[n].detach().float() for n in names]).tolist()
        record = {"step": self.step, "epoch": epoch, **dict(zip(names, values))}
        record.update({f"lr/{name}": lr for name, lr in lrs.items()})
        record.update(self.schedule_values)
        record["images_per_s"] = images_per_s
        self._write_metrics(record)
        if not self.console.is_terminal and dist.is_main_process():
            self.console.print(f"step {self.step}/{self.total_steps} eta {self._eta()}  {self._short(record)}",
                               highlight=False, markup=False, soft_wrap=True)
        return record

    @staticmethod
    def _short(record: dict) -> str:
        """The loss, each member's loss, the speed and the learning rates, most useful first (the end may be cut)."""
        parts = [f"loss {record['loss']:.3f}"]
        parts += [f"{k[:-5]} {v:.3f}" for k, v in record.items() if k.endswith("/loss")]
        parts.append(f"{record['images_per_s']:.0f} img/s")
        parts += [f"{k} {v:.1e}" for k, v in record.items() if k.startswith("lr/")]
        return "  ".join(parts)

    def _write_metrics(self, record: dict) -> None:
        if dist.is_main_process():
            with self._writing(self.files.metrics), open(self.files.metrics, "a") as handle:
                handle.write(json.dumps(record) + "\n")

    @contextmanager
    def _writing(self, path: Path):
        """Turn a failed write (full disk, lost permission) into one line; checkpoints are written atomically, so
        the previous one is still whole."""
        try:
            yield
        except OSError as exc:
            raise UserError(
                f"cannot write '{path}' ({exc.strerror or exc}); the last complete checkpoint "
                f"{self.files.checkpoint} is intact: free space, then `sslkd train --resume {self.run_dir}`"
            ) from exc

    def _advance_clock(self) -> None:
        """Add the training time since the last call to ``wall_time`` (evaluation time is not counted)."""
        now = time.perf_counter()
        self.wall_time += now - self._clock
        self._clock = now

    # ----------------------------------------------------------------------------------------------- state
    def _save(self) -> None:
        """Everything a resumed run needs to continue exactly: weights, buffers (queues, banks, centers), optimiser
        and scaler states, every process's RNG states, and the step, from which the sampler position follows."""
        self._advance_clock()
        rngs = dist.all_gather_object(rng_state())
        if not dist.is_main_process():
            return
        with self._writing(self.files.checkpoint):
            save_checkpoint(self.files.checkpoint, {
                "method": self.cfg.method,
                "config": to_dict(self.cfg),
                "epoch": self.epoch,
                "step": self.step,
                "wall_time_s": self.wall_time,
                "skipped_steps": self.skipped_steps,
                "random_init": self.random_init,
                "strategy": self.strategy.state_dict(),
                "optimizers": {key: part.optimizer.state_dict() for key, part in self.optimizers.items()},
                "scaler": self.scaler.state_dict(),
                "rng": rngs,
            })

    def _restore(self, state: dict) -> None:
        try:
            self.strategy.load_state_dict(state["strategy"])
            for key, part in self.optimizers.items():
                load_optimizer_state(part.optimizer, state["optimizers"][key])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise UserError(
                f"checkpoint in {self.run_dir} does not match its config.yaml ({type(exc).__name__}); "
                "resume with the config the run was started with"
            ) from exc
        self.scaler.load_state_dict(state["scaler"])
        rngs = state["rng"] if isinstance(state["rng"], list) else [state["rng"]]
        set_rng_state(rngs[dist.rank() % len(rngs)])
        self.epoch, self.step, self.wall_time = state["epoch"], state["step"], state["wall_time_s"]
        self.skipped_steps = state["skipped_steps"]
        self.random_init = state.get("random_init")
        metrics = self.files.metrics
        if metrics.exists() and dist.is_main_process():
            kept = [line for line in metrics.read_text().splitlines() if _record_step(line) <= self.step]
            atomic_write(metrics, lambda handle: handle.write("".join(f"{line}\n" for line in kept).encode()))
        if dist.is_main_process():
            remove_partial_writes(self.files.checkpoint)

    # ----------------------------------------------------------------------------------------------- end
    def _knn_record(self, results: dict | None = None) -> dict:
        results = results if results is not None else evaluate_members(self.strategy, self.cfg, self.device)
        return {f"knn/{name}": r["knn_top1"] for name, r in results.items()}

    def _finish(self) -> dict | None:
        """Evaluate and write summary.json, on the main process only (the others are done)."""
        if not dist.is_main_process():
            return None
        results = evaluate_members(self.strategy, self.cfg, self.device)
        self._write_metrics({"epoch": self.epoch, "step": self.step, **self._knn_record(results)})
        if self.step == 0:  # an untrained run (--random-init) is its own floor
            self.random_init = {name: {"knn_top1": result["knn_top1"]} for name, result in results.items()}
        summary = build_summary(self.cfg, self.strategy, results, self.wall_time, self.random_init,
                                run_provenance(dist.world_size(), self.device, self.autocast_dtype))
        summary["skipped_steps"] = self.skipped_steps
        summary["skipped_images"] = self.skipped_images
        add_test_accuracy(summary, self.strategy, self.cfg, self.device)
        with self._writing(self.files.summary):
            atomic_write(self.files.summary,
                         lambda handle: handle.write(json.dumps(summary, indent=2).encode()))
        from sslkd.report.plots import plot_run

        plot_run(self.run_dir)
        return summary


def _record_step(line: str) -> float:
    """The step of a metrics.jsonl line; a line cut short by a kill mid-write counts as after every step."""
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return float("inf")


def build_summary(cfg: Config, strategy: Strategy, results: dict, wall_time: float, random_init: dict | None = None,
                  provenance: dict | None = None) -> dict:
    """The run's record; ``random_init``: each member's k-NN at step 0 ({name: {"knn_top1"}}, None when a run resumed
    from an older checkpoint never measured it); ``provenance``: see sslkd.report.provenance. Each member's backbone
    options and the strategy's options are recorded too, so reports label the run from this record alone (which
    network a backbone name stands for, DoGo's objectives, L-MCL's terms, SDSSL's framework)."""
    from sslkd.models.backbones import count_params_m

    members = {}
    for name, member in strategy.members.items():
        knn = results[name]
        members[name] = {
            "backbone": member.cfg.backbone,
            "paper_name": member.cfg.paper_name,
            "backbone_args": to_dict(member.cfg.backbone_args),
            "small_image_stem": member.cfg.small_image_stem,
            "params_m": round(count_params_m(member.backbone), 3),
            **{k: v for k, v in knn.items() if k != "protocol"},
            "linear_top1": None,
            "random_init": (random_init or {}).get(name),
        }
    protocol = next(iter(results.values()))["protocol"]
    return {
        "method": cfg.method,
        "dataset": cfg.data.name if cfg.data.name != "imagefolder" else Path(cfg.data.root or "").name or "imagefolder",
        "seed": cfg.train.seed,
        "epochs": cfg.train.epochs,
        "wall_time_s": round(wall_time, 1),
        "config_file": cfg.config_file,
        "tag": cfg.tag,
        "strategy": to_dict(cfg.strategy),
        "members": members,
        "protocol": protocol,
        "provenance": provenance,
    }

