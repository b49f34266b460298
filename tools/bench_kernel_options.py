"""Do faster kernels for the same products exist on this machine? channels_last and torch.compile, measured.

The side-by-side benchmark (tools/bench_official.py) finds that on equal work both sides spend most of a step in
the same matrix products and convolutions; a larger speed-up needs faster kernels for them. This measures the two
usual candidates on one timm backbone (forward, backward and optimiser step, synthetic input), so the notes in
results/benchmarks_official.md can say whether either is worth adopting:

    python tools/bench_kernel_options.py resnet18 --size 32 --batch 32 --option channels_last
    python tools/bench_kernel_options.py vit_small_patch16_224 --size 64 --batch 16 --option compile

Each variant builds the model from the same seed; the two are timed alternately (baseline, variant, baseline, ...)
and the medians printed. Pause background training first: the numbers are wall-clock.
"""

import argparse
import statistics
import time

import timm
import torch


def build(model_name: str, size: int, option: str):
    torch.manual_seed(0)
    kwargs = {"img_size": size} if "vit" in model_name else {}
    model = timm.create_model(model_name, num_classes=0, **kwargs)
    if option == "channels_last":
        model = model.to(memory_format=torch.channels_last)
    step_fn = torch.compile(model) if option == "compile" else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    return step_fn, optimizer


def step_seconds(step_fn, optimizer, images: torch.Tensor) -> float:
    start = time.perf_counter()
    step_fn(images).pow(2).mean().backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a timm model name")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--option", choices=("channels_last", "compile"), required=True)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per side")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    sides = {}
    for option in ("baseline", args.option):
        step_fn, optimizer = build(args.model, args.size, option)
        images = torch.randn(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(1))
        if option == "channels_last":
            images = images.contiguous(memory_format=torch.channels_last)
        warmup = step_seconds(step_fn, optimizer, images)
        sides[option] = (step_fn, optimizer, images, warmup, [])
    for _ in range(args.steps):
        for step_fn, optimizer, images, _, times in sides.values():
            times.append(step_seconds(step_fn, optimizer, images))

    base = statistics.median(sides["baseline"][4])
    variant = statistics.median(sides[args.option][4])
    print(f"{args.model} {args.size}px batch {args.batch}, {args.threads} thread(s), torch {torch.__version__}")
    print(f"  baseline      {base:.3f} s/step (first step {sides['baseline'][3]:.1f} s)")
    print(f"  {args.option:<13} {variant:.3f} s/step (first step {sides[args.option][3]:.1f} s)")
    print(f"  speed-up {base / variant:.2f}x")


if __name__ == "__main__":
    main()
