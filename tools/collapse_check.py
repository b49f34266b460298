#!/usr/bin/env python
"""Collapse diagnostics of a run's members: how spread their outputs are, stage by stage.

    python tools/collapse_check.py RUN_OR_CHECKPOINT [--images 500] [--train-mode]

For each member: the backbone's pooled features and, where the student has them, its projector and predictor
outputs and its DINO head's and T-Head's outputs (the logits before the temperature) on ``--images`` training
images (evaluation view; ``--train-mode``: batch-norm batch statistics, what the loss sees). Per stage: the mean
over dimensions of the std over images of the l2-normalised outputs (SimSiam Fig. 2: 1/sqrt(d) when spread, 0 when
collapsed), the effective rank (exp of the entropy of the normalised singular values of the centred outputs) and the
mean pairwise cosine (1: every image maps to one direction).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def spread(outputs: torch.Tensor) -> dict[str, float]:
    normed = F.normalize(outputs.float(), dim=1)
    singular = torch.linalg.svdvals(normed - normed.mean(0))
    p = singular / singular.sum()
    return {"dim": outputs.shape[1], "std": float(normed.std(0).mean()), "1/sqrt(d)": outputs.shape[1] ** -0.5,
            "effective_rank": float(torch.exp(-(p * torch.log(p + 1e-12)).sum())),
            "mean_cos": float((normed @ normed.T).mean())}


@torch.no_grad()
def stages(student, images: torch.Tensor) -> dict[str, dict[str, float]]:
    features = student["backbone"](images)
    result = {"backbone": spread(features)}
    if "dino" in student:
        result["dino_head"] = spread(student["dino"](features))
    if "thead" in student:
        _, tokens, grid = student["backbone"].forward_tokens(images)
        result["thead"] = spread(student["thead"](tokens, grid))
    if "projector" in student:
        projections = student["projector"](features)
        result["projector"] = spread(projections)
        if "predictor" in student:
            result["predictor"] = spread(student["predictor"](projections))
    return result


def main(argv: list[str] | None = None) -> int:
    from sslkd.data import build_dataset
    from sslkd.data.transforms import EvalTransform
    from sslkd.eval.checkpoints import load_strategy

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a run directory or its checkpoint")
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--train-mode", action="store_true", help="batch-norm batch statistics (as in training)")
    args = parser.parse_args(argv)
    strategy, cfg = load_strategy(args.run)
    strategy.train(args.train_mode)
    data = build_dataset(cfg.data.name, cfg.data.root, "train")
    transform = EvalTransform(cfg.data.image_size or data.info.image_size, mean=data.info.mean, std=data.info.std)
    step = max(1, len(data) // args.images)
    images = torch.stack([transform(data[i][0]) for i in range(0, step * args.images, step)][: args.images])
    for name, member in strategy.members.items():
        for stage, values in stages(member.student, images).items():
            print(f"{name:8s} {stage:10s} " + "  ".join(
                f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
