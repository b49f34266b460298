"""Do faster ways to run the same products exist on this machine? Six candidates, measured.

The side-by-side benchmark (tools/bench_official.py) finds that on equal work both sides spend most of a step in
the same matrix products and convolutions; a larger speed-up needs a faster way to run them. This measures the
usual candidates on timm backbones (forward, backward and optimiser step, synthetic input), so the notes in
results/benchmarks_official.md can say whether any is worth adopting:

    python tools/bench_kernel_options.py resnet18 --size 32 --batch 32 --option channels_last
    python tools/bench_kernel_options.py vit_small_patch16_224 --size 64 --batch 16 --option compile
    python tools/bench_kernel_options.py vit_small_patch16_224 --size 64 --batch 16 --option onednn_linear
    python tools/bench_kernel_options.py resnet18 --small-image-stem --size 32 --batch 16 --option members_in_threads
    python tools/bench_kernel_options.py resnet18 --small-image-stem --size 32 --batch 16 --option views_in_one_pass
    python tools/bench_kernel_options.py resnet18 --small-image-stem --size 32 --batch 16 --option small_blocks_nchw

- ``channels_last``: the model and its input in channels-last memory layout.
- ``compile``: ``torch.compile`` (inductor) of the model.
- ``onednn_linear``: the Linear layers' products (forward and backward) through oneDNN instead of torch's CPU path
  (MKL), as ``train.linear_kernel=auto`` runs them on a CPU (``sslkd.models.kernels.OneDNNLinears``).
- ``members_in_threads``: two models (the two members of DoGo or MOKD), each fed two views of ``--batch`` images;
  the baseline steps them one after the other with ``--threads`` threads, the variant steps each in its own Python
  thread with ``--threads / 2`` threads (the members' graphs are disjoint, so the work is the same).
- ``views_in_one_pass``: one model fed two views of ``--batch`` images, one pass per view (the baseline, what the
  authors' SimCLR and DoGo do) against one pass over both views stacked (the same products, twice as tall; for a
  network with batch norm this pools the statistics over both views, so it measures only what the kernels gain).
- ``small_blocks_nchw``: the baseline is the model and its input channels-last; the variant runs the blocks that
  ``sslkd.engine.performance.small_wide_blocks`` picks at this batch and size (wide k x k convolutions on few
  positions) in NCHW, as ``train.channels_last`` does by default.

Each side builds its models from the same seed; the two sides are timed alternately (baseline, variant, baseline,
...) and the medians printed. Pause background training first: the numbers are wall-clock.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import sys
from pathlib import Path

import timm
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sslkd.config import TrainConfig  # noqa: E402
from sslkd.engine.performance import run_blocks_nchw, small_wide_blocks  # noqa: E402
from sslkd.models.backbones import build_backbone  # noqa: E402
from sslkd.models.kernels import OneDNNLinears  # noqa: E402

OPTIONS = ("channels_last", "compile", "onednn_linear", "members_in_threads", "views_in_one_pass", "small_blocks_nchw")


class Side:
    """One side of the comparison: its models, optimisers and input views, and how one step runs them."""

    def __init__(self, args: argparse.Namespace, option: str):
        self.option = option
        self.threads = args.threads
        self.channels_last = option == "channels_last" or args.option == "small_blocks_nchw"
        n_models = 2 if args.option == "members_in_threads" else 1
        n_views = 2 if args.option in ("members_in_threads", "views_in_one_pass") else 1
        self.models, self.optimizers = [], []
        for index in range(n_models):
            torch.manual_seed(index)
            if args.small_image_stem or args.option == "small_blocks_nchw":
                model = build_backbone(args.model, small_image_stem=args.small_image_stem)
            else:
                kwargs = {"img_size": args.size} if "vit" in args.model else {}
                model = timm.create_model(args.model, num_classes=0, **kwargs)
            if self.channels_last:
                model = model.to(memory_format=torch.channels_last)
            if option == "small_blocks_nchw":
                run_blocks_nchw(model, small_wide_blocks(model, args.batch, args.size,
                                                         TrainConfig().channels_last_min_positions))
            self.optimizers.append(torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True))
            self.models.append(torch.compile(model) if option == "compile" else model)
        generator = torch.Generator().manual_seed(1)
        self.views = [torch.randn(args.batch, 3, args.size, args.size, generator=generator) for _ in range(n_views)]
        if self.channels_last:
            self.views = [view.contiguous(memory_format=torch.channels_last) for view in self.views]
        if option == "views_in_one_pass":
            self.views = [torch.cat(self.views)]
        self.pool = ThreadPoolExecutor(len(self.models)) if option == "members_in_threads" else None

    def step_model(self, index: int, threads: int) -> None:
        torch.set_num_threads(threads)
        model, optimizer = self.models[index], self.optimizers[index]
        with OneDNNLinears() if self.option == "onednn_linear" else contextlib.nullcontext():
            loss = sum(model(view).pow(2).mean() for view in self.views)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def step_seconds(self) -> float:
        start = time.perf_counter()
        if self.pool is None:
            for index in range(len(self.models)):
                self.step_model(index, self.threads)
        else:
            per_member = max(1, self.threads // len(self.models))
            list(self.pool.map(self.step_model, range(len(self.models)), [per_member] * len(self.models)))
        torch.set_num_threads(self.threads)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a timm model name")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels")
    parser.add_argument("--small-image-stem", action="store_true",
                        help="a ResNet with the CIFAR stem (3x3 convolution, no max-pool), as sslkd builds it")
    parser.add_argument("--batch", type=int, default=32, help="images per view")
    parser.add_argument("--option", choices=OPTIONS, required=True)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per side")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    sides = {option: Side(args, option) for option in ("baseline", args.option)}
    first = {option: side.step_seconds() for option, side in sides.items()}
    times = {option: [] for option in sides}
    for _ in range(args.steps):
        for option, side in sides.items():
            times[option].append(side.step_seconds())

    base = statistics.median(times["baseline"])
    variant = statistics.median(times[args.option])
    stem = " (small-image stem)" if args.small_image_stem else ""
    print(f"{args.model}{stem} {args.size}px batch {args.batch}, {args.threads} thread(s), torch {torch.__version__}")
    print(f"  baseline           {base:.3f} s/step (first step {first['baseline']:.1f} s)")
    print(f"  {args.option:<18} {variant:.3f} s/step (first step {first[args.option]:.1f} s)")
    print(f"  speed-up {base / variant:.2f}x")


if __name__ == "__main__":
    main()
