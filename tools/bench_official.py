"""Side by side: one training step of sslkd against the authors' own code, on identical work.

Usage (from the repository root; each path is a checkout of the authors' public repository, kept outside this
repository, nothing of it is copied here):

    python tools/bench_official.py --dino /tmp/official/dino --mokd /tmp/official/mokd \
        --sdssl /tmp/official/sdssl --dogo /tmp/official/dogo      # rewrites results/benchmarks_official.md

Repositories: facebookresearch/dino, skyoux/mokd, hagiss/SDSSL, NeurAI-Lab/DoGo (branch ``dogo``: the
distillation code; ``main`` holds only the single-model baseline). Their training loops need ``einops`` (SDSSL)
and ``tensorboard`` (MOKD, DoGo import its writer) installed.

For each method a worker process imports the authors' modules from the checkout (``sys.path``), builds their
networks, losses, optimisers and schedules the way their ``main`` does, at the sizes of ``SETTINGS`` (the paper's
networks and heads, smaller images and batches so a CPU can run them), and runs *their own* training-loop
function over a loader of synthetic batches. The loader interleaves: between two of their steps it runs one step
of sslkd (``Trainer.train_step`` on the paper-scale zoo config with the same sizes), so both sides share every
moment of machine load (A, B, A, B, ...). Medians over the pairs, wall and process CPU time.

Equal work is checked in one more process per side: parameter count (students and teachers), images through
every backbone per step (forward hooks), FLOPs of one whole step (``torch.utils.flop_counter``), and the peak
resident memory of a process that ran only that side. That process also profiles one step (``torch.profiler``)
and sums the self CPU time of the dense kernels (``DENSE_KERNELS``: matrix products and convolutions), which equal
work makes the same on both sides: the official step over sslkd's dense-kernel time is the speed-up sslkd would
reach if it spent nothing else (the *ceiling* column). The .json keeps each side's heaviest operators of that
step (``heaviest_ops``), where the rest of the time goes.

What cannot run as written on a CPU, or with today's packages, is patched at run time only, listed in
``PATCHES`` and printed in the report. Logging sinks (TensorBoard, Lightning's logger) get no-op writers: sslkd's
step writes no log either.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import types
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
OUTPUT = REPO / "results" / "benchmarks_official.md"
TARGET_SPEEDUP = 1.25
NOTES_MARKER = "<!-- notes below this line are written by hand and kept when the page is regenerated -->"
DENSE_KERNELS = frozenset({
    "aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::mkldnn_convolution", "aten::convolution_backward",
    "aten::_slow_conv2d_forward", "aten::_slow_conv2d_backward", "mkldnn::_linear_pointwise",
})


@dataclass(frozen=True)
class Setting:
    """One side-by-side comparison: the sslkd zoo config and the sizes both sides are built with."""

    config: str
    batch: int
    global_size: int
    local_size: int = 0
    n_local: int = 0
    out_dim: int = 0
    overrides: tuple[str, ...] = ()
    describe: str = ""
    views: str = "multicrop"  # multicrop: 2 global + n_local local crops; pairs: two views per peer (DoGo)


SETTINGS = {
    "dino": Setting(
        "zoo_configs/dino/imagenet_vit_s16_100ep.yaml", batch=8, global_size=64, local_size=32, n_local=8,
        out_dim=65536, overrides=("members.vit.backbone_args={img_size: 64}",),
        describe="ViT-S/16, DINO head K=65536, 2x64 px + 8x32 px crops, batch 8, AdamW, clip 3",
    ),
    "sdssl": Setting(
        "zoo_configs/sdssl/imagenet_vit_s16_sd_byol_300ep.yaml", batch=16, global_size=64,
        overrides=("members.vit.backbone_args={img_size: 64, num_heads: 12, freeze_patch_embed: true, pos_embed: sincos}",
                   "members.vit.drop_path_rate=0.0"),
        describe="SD-BYOL, ViT-S/16 (12 heads as the code's), 12 projectors + predictors (hidden 2048/4096, out 256), "
                 "2x64 px views, batch 16",
    ),
    "dogo": Setting(
        "zoo_configs/dogo/tinyimagenet_r18_r18.yaml", batch=16, global_size=32, views="pairs",
        overrides=("data.image_size=32",),
        describe="ResNet-18 x 2 (small-image stem), SimCLR projectors, own 2x32 px views per peer, batch 16, Adam",
    ),
    "mokd": Setting(
        "zoo_configs/mokd/imagenet_r50_vit_s16_100ep.yaml", batch=4, global_size=64, local_size=32, n_local=8,
        out_dim=16384, overrides=("members.vit.backbone_args={img_size: 64}",),
        describe="ResNet-50 + ViT-S/16, DINO heads and 3-block T-Heads K=16384, 2x64 px + 8x32 px crops, batch 4",
    ),
}

PATCHES = {
    "all": [
        "`torch.Tensor.cuda` and `nn.Module.cuda` return the object unchanged (CPU run)",
        "`torch.cuda.synchronize` does nothing; `torch.cuda.device_count` returns 1 (one process, one device)",
        "`torch.distributed` `all_reduce`/`all_gather` act as in a one-process group, `get_world_size` 1, "
        "`get_rank` 0 (no process group; sslkd's helpers skip collectives in one process too)",
        "`DistributedDataParallel` is replaced by a wrapper that only forwards and exposes `.module` (one process: "
        "no gradient all-reduce; sslkd does none either)",
        "logging sinks (TensorBoard `SummaryWriter`, Lightning logger) are no-op writers; `print` goes to a buffer",
    ],
    "mokd": ["`torchvision.models.resnet.model_urls` (removed from torchvision) is set to `{}` before import",
             "`timm.models.layers.helpers` (moved to `timm.layers.helpers` by timm 0.9) is aliased before import"],
    "sdssl": ["`pytorch_lightning` is not installed: a stand-in `LightningModule` (an `nn.Module` with "
              "`manual_backward` = `backward`, a `global_step` counter and a no-op logger) drives `training_step`"],
    "dino": [],
    "dogo": ["while `NTXent.__init__` builds its mask (once), `Tensor.byte` returns a bool tensor: indexing with a "
             "uint8 mask (`mask[torch.eye(N).byte()]`) was removed from torch"],
}


# ------------------------------------------------------------------------------------------- run-time patches
class NullWriter:
    """Accepts every logging call and writes nothing."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


class PassThrough(nn.Module):
    """Stands in for ``DistributedDataParallel`` in one process: forwards, and exposes ``.module``."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


def patch_for_cpu() -> None:
    """The patches of ``PATCHES["all"]``: what the authors' GPU, multi-process code needs to run in one CPU process."""
    import torch.distributed as dist

    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    nn.Module.cuda = lambda self, *args, **kwargs: self
    torch.cuda.synchronize = lambda *args, **kwargs: None
    torch.cuda.device_count = lambda: 1
    dist.all_reduce = lambda tensor, *args, **kwargs: None
    dist.all_gather = lambda outputs, tensor, *args, **kwargs: [o.copy_(tensor) for o in outputs] and None
    dist.get_world_size = lambda *args, **kwargs: 1
    dist.get_rank = lambda *args, **kwargs: 0
    nn.parallel.DistributedDataParallel = lambda module, *args, **kwargs: PassThrough(module)


def stub_lightning() -> None:
    """``PATCHES["sdssl"]``: the part of ``pytorch_lightning`` that SDSSL's ``PLLearner.training_step`` touches."""

    class LightningModule(nn.Module):
        global_step = 0
        logger = SimpleNamespace(experiment=NullWriter())

        def manual_backward(self, loss, *args, **kwargs):
            loss.backward(*args, **kwargs)

    module = types.ModuleType("pytorch_lightning")
    module.LightningModule = LightningModule
    module.callbacks = types.ModuleType("pytorch_lightning.callbacks")
    module.callbacks.LearningRateMonitor = object
    module.loggers = SimpleNamespace(TensorBoardLogger=NullWriter)
    sys.modules["pytorch_lightning"] = module
    sys.modules["pytorch_lightning.callbacks"] = module.callbacks


def import_from(checkout: Path):
    sys.path.insert(0, str(checkout))
    os.chdir(checkout)  # some modules read files relative to their repository root


# ------------------------------------------------------------------------------------------- synthetic batches
def synthetic_views(setting: Setting) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    if setting.views == "pairs":
        sizes = [setting.global_size] * 4
    else:
        sizes = [setting.global_size] * 2 + [setting.local_size] * setting.n_local
    return [torch.randn(setting.batch, 3, s, s, generator=generator) for s in sizes]


# ------------------------------------------------------------------------------------------- the authors' sides
@dataclass
class OfficialSide:
    """The authors' models and their loop function ``run(loader)``, which trains one pass over ``loader``."""

    run: callable
    models: list[nn.Module]
    backbones: list[nn.Module]
    batch: object  # one item of their data loader, built from the synthetic views
    loop_state: dict = field(default_factory=dict)


def schedule(value: float, steps: int = 10_000):
    import numpy as np

    return np.full(steps, value)


def official_dino(checkout: Path, setting: Setting, views: list[torch.Tensor]) -> OfficialSide:
    import_from(checkout)
    import main_dino
    import utils
    import vision_transformer as vits

    n_crops = 2 + setting.n_local
    args = SimpleNamespace(epochs=100, clip_grad=3.0, freeze_last_layer=1)
    student = vits.vit_small(patch_size=16, drop_path_rate=0.1, img_size=[setting.global_size])
    teacher = vits.vit_small(patch_size=16, img_size=[setting.global_size])
    student = utils.MultiCropWrapper(student, vits.DINOHead(384, setting.out_dim, use_bn=False, norm_last_layer=True))
    teacher = utils.MultiCropWrapper(teacher, vits.DINOHead(384, setting.out_dim, False))
    teacher.load_state_dict(student.state_dict())
    teacher.requires_grad_(False)
    student = nn.parallel.DistributedDataParallel(student)
    loss = main_dino.DINOLoss(setting.out_dim, n_crops, 0.04, 0.07, 30, args.epochs)
    optimizer = torch.optim.AdamW(utils.get_params_groups(student))
    run = partial(main_dino.train_one_epoch, student, teacher, teacher, loss, optimizer=optimizer,
                  lr_schedule=schedule(1e-5), wd_schedule=schedule(0.04), momentum_schedule=schedule(0.996),
                  epoch=1, fp16_scaler=None, args=args)
    return OfficialSide(lambda loader: run(data_loader=loader), [student, teacher],
                        [student.module.backbone, teacher.backbone], (views, None))


def official_mokd(checkout: Path, setting: Setting, views: list[torch.Tensor]) -> OfficialSide:
    import timm.layers.helpers
    import torchvision.models.resnet

    torchvision.models.resnet.model_urls = {}
    sys.modules.setdefault("timm.models.layers.helpers", timm.layers.helpers)
    import_from(checkout)
    import main_mokd
    import backbones.resnet as resnets
    import backbones.vision_transformer as vits
    from models import mokd as models
    from utils import utils

    out_dim, n_local = setting.out_dim, setting.n_local
    args = SimpleNamespace(epochs=100, clip_grad_cnn=3.0, clip_grad_vit=3.0, freeze_last_layer=1, lamda_c=0.1,
                           lamda_t=1.0, rank=0, local_crops_number=n_local)
    norm = partial(nn.LayerNorm, eps=1e-6)
    thead = dict(out_dim=out_dim, embed_dim=384, depth=3, num_heads=6, mlp_ratio=4, qkv_bias=True, norm_layer=norm)
    # main_mokd sizes the CNN T-Head's positions as input_size // 32 and the ViT's as 14 (224 // 16): the same rule
    cnn_grid, vit_grid = setting.global_size // 32, setting.global_size // 16

    def cnn_pair():
        student = models.CNNStudentWrapper(resnets.resnet50(), models.DINOHead(2048, out_dim, use_bn=False, norm_last_layer=True),
                                           vits.THead_CNN(featuremap_size=cnn_grid, in_chans=2048, **thead))
        teacher = models.CNNTeacherWrapper(resnets.resnet50(), models.DINOHead(2048, out_dim, False),
                                           vits.THead_CNN(featuremap_size=cnn_grid, in_chans=2048, **thead), n_local)
        return student, teacher

    def vit_pair():
        student = models.ViTStudentWrapper(vits.vit_small(patch_size=16, drop_path_rate=0.1, img_size=[setting.global_size]),
                                           models.DINOHead(384, out_dim, use_bn=False, norm_last_layer=False),
                                           vits.THead_ViT(featuremap_size=vit_grid, **thead))
        teacher = models.ViTTeacherWrapper(vits.vit_small(patch_size=16, img_size=[setting.global_size]),
                                           models.DINOHead(384, out_dim, False),
                                           vits.THead_ViT(featuremap_size=vit_grid, **thead), n_local)
        return student, teacher

    pairs = []
    for build in (cnn_pair, vit_pair):
        student, teacher = build()
        teacher.load_state_dict(student.state_dict(), strict=False)
        teacher.requires_grad_(False)
        pairs.append((nn.parallel.DistributedDataParallel(student), teacher))
    (student_cnn, teacher_cnn), (student_vit, teacher_vit) = pairs
    losses = [models.DINOLoss(out_dim, n_local + 2, 0.04, 0.07, warmup, args.epochs) for warmup in (50, 30, 30, 30, 50, 30)]
    search_loss = models.CTSearchLoss(0.04, 0.07, 30, args.epochs)
    optimizer_cnn = torch.optim.SGD(utils.get_params_groups2(student_cnn, head_name="transhead"), lr=0, momentum=0.9)
    optimizer_vit = torch.optim.AdamW(utils.get_params_groups(student_vit))

    def run(loader):
        main_mokd.train_one_epoch(
            student_cnn, teacher_cnn, teacher_cnn, student_vit, teacher_vit, teacher_vit, *losses, search_loss,
            loader, optimizer_cnn, schedule(0.01), schedule(1e-4), optimizer_vit, schedule(1e-5), schedule(0.04),
            schedule(0.996), 1, None, None, NullWriter(), args)

    backbones = [student_cnn.module.backbone, teacher_cnn.backbone, student_vit.module.backbone, teacher_vit.backbone]
    return OfficialSide(run, [student_cnn, teacher_cnn, student_vit, teacher_vit], backbones, (views, None))


def official_sdssl(checkout: Path, setting: Setting, views: list[torch.Tensor]) -> OfficialSide:
    stub_lightning()
    import_from(checkout)
    import pl_train_byol
    import vision_transformer as vits

    args = SimpleNamespace(ratio=0.8, st_inter=True, t_inter=False, optimizer="adamw", accumulate=1, lr=1.5e-4,
                           total_batch=setting.batch, min_lr=0.0, epochs=300, warmup_epochs=40, weight_decay=0.1,
                           weight_decay_end=0.1, momentum_teacher=0.996, mlp_hidden=4096, out_dim=256, up=0,
                           arch="vit_small")
    student = vits.vit_small(img_size=[setting.global_size], patch_size=16, dis_token=False)
    teacher = vits.vit_small(img_size=[setting.global_size], patch_size=16, dis_token=False)
    with contextlib.redirect_stdout(io.StringIO()):
        learner = pl_train_byol.PLLearner(student, teacher, 10_000, None, 384, args)
    learner.global_step = 1000

    def run(loader):
        for index, batch in enumerate(loader):
            learner.training_step(batch, index)
            learner.global_step += 1

    return OfficialSide(run, [learner.student, learner.teacher], [learner.student.net, learner.teacher.net],
                        ((views[0], views[1]), None))


def official_dogo(checkout: Path, setting: Setting, views: list[torch.Tensor]) -> OfficialSide:
    import_from(checkout)
    from criterion import KLLoss, NTXent
    from models import SimCLR
    from util import train_util

    args = SimpleNamespace(device="cpu", start_time=datetime.now(), train=SimpleNamespace(
        batchsize=setting.batch, temperature=0.5, KL_temperature=0.1, criterion_weight=[1, 1, 100, 100]))
    models = [SimCLR(128, setting.global_size, backbone="resnet18") for _ in range(2)]
    optimizers = [torch.optim.Adam(m.parameters(), lr=3e-4, weight_decay=1e-6) for m in models]
    byte = torch.Tensor.byte
    torch.Tensor.byte = torch.Tensor.bool
    try:
        criteria = {"ntxent": [NTXent(args), 1], "kl": [KLLoss(), 100]}
    finally:
        torch.Tensor.byte = byte

    def run(loader):
        train_util.train_one_epoch(args, loader, *models, criteria, optimizers, [None, None], 1)

    batch = ([(views[0], views[1]), (views[2], views[3])], None)
    return OfficialSide(run, models, [m.f for m in models], batch)


OFFICIAL = {"dino": official_dino, "mokd": official_mokd, "sdssl": official_sdssl, "dogo": official_dogo}


# ------------------------------------------------------------------------------------------- the sslkd side
@dataclass
class SslkdSide:
    trainer: object
    views: list[torch.Tensor]
    step_index: int = 0

    def step(self) -> None:
        from sslkd.strategies.base import StepInfo

        spe = 10_000
        info = StepInfo(step=spe + self.step_index, epoch=1, steps_per_epoch=spe, total_steps=100 * spe)
        self.step_index += 1
        batch = self.views[0].shape[0]
        self.trainer.set_schedules(info)
        self.trainer.train_step(self.views, torch.zeros(batch, dtype=torch.long), torch.arange(batch), info)

    @property
    def models(self) -> list[nn.Module]:
        return [self.trainer.strategy]

    @property
    def backbones(self) -> list[nn.Module]:
        members = self.trainer.strategy.members.values()
        return [m.student["backbone"] for m in members] + [m.teacher.module["backbone"] for m in members if m.teacher is not None]


def sslkd_config(method: str, setting: Setting):
    from sslkd.config import load_config

    overrides = [
        "data.name=digits", "data.root=null", "data.num_workers=0", "train.device=cpu", "train.precision=fp32",
        f"train.batch_size={setting.batch}", f"data.augment.global_size={setting.global_size}", *setting.overrides,
    ]
    if setting.n_local:
        overrides += [f"data.augment.local_size={setting.local_size}", f"data.augment.n_local={setting.n_local}"]
    if setting.out_dim:
        overrides.append(f"strategy.out_dim={setting.out_dim}")
    return load_config(None, str(REPO / setting.config), overrides)


def build_sslkd(method: str, setting: Setting, views: list[torch.Tensor], run_dir: str) -> SslkdSide:
    from sslkd.engine.trainer import Trainer

    with contextlib.redirect_stderr(io.StringIO()):
        trainer = Trainer(sslkd_config(method, setting), run_dir)
    trainer.strategy.train()
    return SslkdSide(trainer, views)


# ------------------------------------------------------------------------------------------- the loop
class InterleavedLoader:
    """The authors' data loader: yields the same batch ``steps`` times and, before each batch after the first,
    runs ``between(i)``; records when each of their steps starts and ends (wall and process CPU time)."""

    def __init__(self, batch, steps: int, between=lambda i: None):
        self.batch, self.steps, self.between = batch, steps, between
        self.official: list[tuple[float, float]] = []

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        start = None
        for i in range(self.steps):
            if start is not None:
                self.official.append((time.perf_counter() - start[0], time.process_time() - start[1]))
            self.between(i)
            start = (time.perf_counter(), time.process_time())
            yield self.batch
        self.official.append((time.perf_counter() - start[0], time.process_time() - start[1]))


def timed(fn) -> tuple[float, float]:
    start, start_cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - start, time.process_time() - start_cpu


def worker_time(method: str, checkout: Path, pairs: int, warmup: int) -> dict:
    """Both sides in one process, their steps interleaved; medians after ``warmup`` pairs."""
    setting = SETTINGS[method]
    views = synthetic_views(setting)
    with tempfile.TemporaryDirectory(prefix="sslkd-official-") as run_dir:
        ours = build_sslkd(method, setting, views, run_dir)
        official = OFFICIAL[method](checkout, setting, views)
        sslkd_times: list[tuple[float, float]] = []
        loader = InterleavedLoader(official.batch, warmup + pairs, lambda i: sslkd_times.append(timed(ours.step)))
        with contextlib.redirect_stdout(io.StringIO()):
            official.run(loader)
        sslkd_times.append(timed(ours.step))
    sslkd_times, official_times = sslkd_times[warmup + 1:], loader.official[warmup:]
    return {
        "official_s": statistics.median(t[0] for t in official_times),
        "sslkd_s": statistics.median(t[0] for t in sslkd_times),
        "official_cpu_s": statistics.median(t[1] for t in official_times),
        "sslkd_cpu_s": statistics.median(t[1] for t in sslkd_times),
        "speedup_per_pair": [o[0] / s[0] for o, s in zip(official_times, sslkd_times)],
        "pairs": len(official_times),
    }


class ImageCounter:
    """Images through each backbone during one step, summed: a hook on each backbone's first convolution (the
    patch projection of a ViT, the stem of a CNN), which every pass goes through whatever method it enters by."""

    def __init__(self, backbones: list[nn.Module]):
        self.images = 0
        stems = [next(m for m in b.modules() if isinstance(m, nn.Conv2d)) for b in backbones]
        self.handles = [stem.register_forward_pre_hook(self.count) for stem in stems]

    def count(self, module, inputs) -> None:
        self.images += inputs[0].shape[0]

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def parameter_count(models: list[nn.Module]) -> tuple[int, int]:
    """(every parameter, trainable parameters) of ``models``, each counted once."""
    params = {id(p): p for m in models for p in m.parameters()}.values()
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def worker_work(method: str, checkout: Path, side: str) -> dict:
    """One side alone: parameters, backbone images and FLOPs of one step, peak resident memory of this process."""
    setting = SETTINGS[method]
    views = synthetic_views(setting)
    with tempfile.TemporaryDirectory(prefix="sslkd-official-") as run_dir:
        built = build_sslkd(method, setting, views, run_dir) if side == "sslkd" else OFFICIAL[method](checkout, setting, views)
        counter = ImageCounter(built.backbones)
        flops = FlopCounterMode(display=False)
        measured = {}

        profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])

        def around(i: int) -> None:  # step 0 warms up, step 1 is counted, step 2 is profiled
            if i == 1:
                counter.images = 0
                flops.__enter__()
            if i == 2:
                flops.__exit__(None, None, None)
                measured["images"] = counter.images
                profiler.__enter__()

        if side == "sslkd":
            for i in range(3):
                around(i)
                built.step()
        else:
            with contextlib.redirect_stdout(io.StringIO()):
                built.run(InterleavedLoader(built.batch, 3, around))
        profiler.__exit__(None, None, None)
        counter.remove()
        overhead = None
        if side == "sslkd":
            from sslkd.engine.bench import bench_steps

            built.trainer.loader = [(views, torch.zeros(setting.batch, dtype=torch.long), torch.arange(setting.batch))]
            times = bench_steps(built.trainer, steps=3, warmup=1)
            overhead = times["step_cpu_s"] / times["network_cpu_s"]
        total, trainable = parameter_count(built.models)
    return {
        "params": total,
        "trainable_params": trainable,
        "backbone_images": measured["images"],
        "gflops": flops.get_total_flops() / 1e9,
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "overhead_ratio_cpu": overhead,
        **dense_kernel_share(profiler),
    }


def dense_kernel_share(profiler, heaviest: int = 15) -> dict:
    """Self CPU seconds of one profiled step in ``DENSE_KERNELS``, and of all its operators; and the ``heaviest``
    operators by self CPU time ([name, seconds, calls]), where the rest of the step goes."""
    ops = sorted(profiler.key_averages(), key=lambda op: op.self_cpu_time_total, reverse=True)
    return {"dense_kernel_s": sum(op.self_cpu_time_total for op in ops if op.key in DENSE_KERNELS) / 1e6,
            "profiled_op_s": sum(op.self_cpu_time_total for op in ops) / 1e6,
            "heaviest_ops": [[op.key, op.self_cpu_time_total / 1e6, op.count] for op in ops[:heaviest]]}


# ------------------------------------------------------------------------------------------- orchestration
def run_worker(args: list[str]) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as result:
        subprocess.run([sys.executable, __file__, "--worker", *args, "--result", result.name], check=True, cwd=REPO)
        return json.loads(Path(result.name).read_text())


def checkout_commit(path: Path) -> str:
    found = subprocess.run(["git", "-C", str(path), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return found.stdout.strip() if found.returncode == 0 else "unknown (not a git work tree)"


def dirty() -> bool:
    """Whether the sslkd package differs from its last commit."""
    found = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "sslkd"],
                           capture_output=True, text=True)
    return bool(found.stdout.strip())


def measure(method: str, checkout: Path, pairs: int, warmup: int, note: str | None) -> dict:
    print(f"[{method}] timing {pairs} interleaved pairs ...", flush=True)
    timing = run_worker([method, str(checkout), "time", "--pairs", str(pairs), "--warmup", str(warmup)])
    print(f"[{method}] work and memory, each side alone ...", flush=True)
    work = {side: run_worker([method, str(checkout), side]) for side in ("official", "sslkd")}
    speedup = timing["official_s"] / timing["sslkd_s"]
    print(f"[{method}] sslkd {speedup:.2f}x faster (wall), {timing['official_cpu_s'] / timing['sslkd_cpu_s']:.2f}x (CPU)", flush=True)
    return {"method": method, "checkout": str(checkout), "commit": checkout_commit(checkout), **timing, "work": work,
            "setting": SETTINGS[method].describe, "sslkd": checkout_commit(REPO) + (" + uncommitted changes" if dirty() else ""),
            "measured": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M UTC"), "threads": torch.get_num_threads(),
            "note": note}


def format_page(rows: list[dict], command: str, pairs: int) -> str:
    lines = [
        "# sslkd against the authors' code: one training step, side by side",
        "",
        "Generated by `tools/bench_official.py` (do not edit by hand). Regenerate from the repository root:",
        "",
        "```bash",
        command,
        "```",
        "",
        f"On {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), torch "
        f"{torch.__version__}, {', '.join(sorted({str(r['threads']) for r in rows}))} threads, fp32, synthetic "
        "inputs. Each method: both sides "
        f"built in one process, their steps interleaved (official, sslkd, official, ...), {pairs} timed pairs after "
        "a warm-up pair, medians. *Speed-up* = official median step time / sslkd's (wall clock); *CPU ratio* = the "
        f"same for process CPU time, which waiting for a busy core does not inflate. Target: >= {TARGET_SPEEDUP}x.",
        "",
        "| method | setting | official s/step | sslkd s/step | speed-up | CPU ratio | pairs sslkd faster |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        faster = sum(s > 1 for s in row["speedup_per_pair"])
        lines.append(
            f"| {row['method']} | {row['setting']} | {row['official_s']:.3f} | {row['sslkd_s']:.3f} | "
            f"**{row['official_s'] / row['sslkd_s']:.2f}x** | {row['official_cpu_s'] / row['sslkd_cpu_s']:.2f}x | "
            f"{faster}/{row['pairs']} |"
        )
    lines += [
        "",
        "Equal work, each side measured alone in a fresh process: parameters of students and teachers (trainable in "
        "brackets), images through all backbones in one step, FLOPs of one whole step (forward, backward, optimiser; "
        "`torch.utils.flop_counter`), and the peak resident memory of that process. *sslkd overhead* is `sslkd bench`'s "
        "CPU-time ratio (full step / network passes) at this setting. *Dense kernels* = self CPU time of one profiled "
        "step in matrix products and convolutions (`DENSE_KERNELS`), official / sslkd, with their share of all "
        "profiled operator time; *ceiling* = the official step's profiled operator time / sslkd's dense-kernel "
        "time: the speed-up sslkd would reach if it spent nothing outside those kernels.",
        "",
        "| method | params official | params sslkd | backbone images official / sslkd | GFLOP official | GFLOP sslkd | "
        "peak MB official | peak MB sslkd | sslkd overhead | dense kernels s official / sslkd (share) | ceiling |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        o, s = row["work"]["official"], row["work"]["sslkd"]
        lines.append(
            f"| {row['method']} | {o['params'] / 1e6:.2f}M ({o['trainable_params'] / 1e6:.2f}M) | "
            f"{s['params'] / 1e6:.2f}M ({s['trainable_params'] / 1e6:.2f}M) | {o['backbone_images']} / {s['backbone_images']} | "
            f"{o['gflops']:.1f} | {s['gflops']:.1f} | {o['peak_mb']:.0f} | {s['peak_mb']:.0f} | {s['overhead_ratio_cpu']:.2f} | "
            f"{dense_kernel_cells(o, s)}"
        )
    lines += ["", "When, with which sslkd, against which checkout:", ""]
    for row in rows:
        conditions = f"; {row['note']}" if row.get("note") else ""
        lines.append(f"- **{row['method']}**: measured {row['measured']}, sslkd {row['sslkd']}, {row['pairs']} pairs, "
                     f"{row['threads']} threads; authors' code `{row['checkout']}` at {row['commit']}{conditions}")
    lines += ["", "Run-time patches applied to the authors' code (nothing else is changed):", ""]
    lines += [f"- all: {patch}" for patch in PATCHES["all"]]
    for row in rows:
        lines += [f"- {row['method']}: {patch}" for patch in PATCHES[row["method"]]]
    missed = [r["method"] for r in rows if r["official_s"] / r["sslkd_s"] < TARGET_SPEEDUP]
    lines += ["", f"Below the {TARGET_SPEEDUP}x target: {', '.join(missed) if missed else 'none'}.", ""]
    return "\n".join(lines)


def dense_kernel_cells(official: dict, ours: dict) -> str:
    """The dense-kernel and ceiling cells; rows measured before the tool profiled have neither."""
    if "dense_kernel_s" not in ours:
        return "n/a | n/a |"
    share = f"{official['dense_kernel_s'] / official['profiled_op_s']:.0%} / {ours['dense_kernel_s'] / ours['profiled_op_s']:.0%}"
    return (f"{official['dense_kernel_s']:.2f} / {ours['dense_kernel_s']:.2f} ({share}) | "
            f"{official['profiled_op_s'] / ours['dense_kernel_s']:.2f}x |")


def write_page(page: str, output: Path) -> None:
    """Write ``page``, keeping the hand-written notes below ``NOTES_MARKER`` of the previous version."""
    notes = ""
    if output.exists() and NOTES_MARKER in output.read_text():
        notes = output.read_text().split(NOTES_MARKER, 1)[1]
    output.write_text(f"{page}\n{NOTES_MARKER}{notes or chr(10)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for method in SETTINGS:
        parser.add_argument(f"--{method}", type=Path, metavar="CHECKOUT", help=f"the authors' {method} repository")
    parser.add_argument("--pairs", type=int, default=10, help="timed pairs of steps per method")
    parser.add_argument("--warmup", type=int, default=1, help="untimed pairs first")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (both sides)")
    parser.add_argument("--output", type=Path, default=OUTPUT,
                        help="the page; its .json beside it keeps every method's figures, so a run of some methods "
                             "updates their rows and keeps the others'")
    parser.add_argument("--merge", type=Path, nargs="+", metavar="JSON",
                        help="take these methods' rows from the .json of another run (e.g. methods measured in "
                             "parallel into other --output files), then measure the methods given, if any")
    parser.add_argument("--note", help="the conditions of this run, shown beside each method it measures "
                                         "(e.g. 'quiet machine: background training paused')")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.worker:
        method, checkout, task = args.worker[0], Path(args.worker[1]).resolve(), args.worker[2]
        sys.path.insert(0, str(REPO))
        patch_for_cpu()
        result = worker_time(method, checkout, args.pairs, args.warmup) if task == "time" else worker_work(method, checkout, task)
        Path(args.result).write_text(json.dumps(result))
        return 0
    chosen = {m: getattr(args, m).resolve() for m in SETTINGS if getattr(args, m) is not None}
    if not chosen and not args.merge:
        parser.error("give at least one checkout, e.g. --dino /path/to/dino")
    missing = [f"--{m} {p}" for m, p in chosen.items() if not p.is_dir()]
    if missing:
        parser.error(f"not a directory: {', '.join(missing)}")
    store = args.output.with_suffix(".json")
    rows = json.loads(store.read_text()) if store.exists() else {}
    for other in args.merge or []:
        rows.update(json.loads(other.read_text()))
    store.write_text(json.dumps(rows, indent=1))
    for method, path in chosen.items():
        rows[method] = measure(method, path, args.pairs, args.warmup, args.note)
        store.write_text(json.dumps(rows, indent=1))
    rows = [rows[m] for m in SETTINGS if m in rows]
    command = "python tools/bench_official.py " + " ".join(f"--{r['method']} {r['checkout']}" for r in rows)
    if args.pairs != 10:
        command += f" --pairs {args.pairs}"
    notes = {r.get("note") for r in rows}
    if len(notes) == 1 and None not in notes:
        command += f" --note '{notes.pop()}'"
    write_page(format_page(rows, command, args.pairs), args.output)
    print(f"wrote {args.output} and {store}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
