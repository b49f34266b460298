#!/usr/bin/env python
"""DINO's collapse monitors on a trained run: how image-specific each teacher's targets are, and what the student pays.

    python tools/dino_targets.py RUN_OR_CHECKPOINT [--images 256] [--seed 0]

DINO (Sec. 5.3, Fig. 7) watches two numbers to tell its two collapses apart: the entropy of the teacher's centred,
sharpened targets (ln K when the targets are uniform, whatever the image) and the KL from them to the student's
predictions (0 when the two agree, e.g. on a constant). For each member of a ``dino`` or ``mokd`` run this prints,
per head whose output a teacher targets, on the training views of ``--images`` images (the run's own augmentation,
batch-norm batch statistics, as the loss sees them):

- ``CE``: the loss term itself (the student's cross-entropy to the targets over the crop pairs the loss uses),
- ``H(target)``: the targets' mean entropy, ``KL`` = CE - H(target),
- ``H(mean target)``: the entropy of the batch-mean target (how many of the K outputs the targets use at all).

Heads: ``dino`` (L_sm; DINO's loss), ``thead`` (MOKD's L_st) and ``search`` (MOKD's L_ct, the peer teacher's
searched output, not centred unless the run set ``strategy.center_search_targets``; ``search/PEER`` per peer when a
run has more than two members). The teacher temperature is the one after its warm-up (``strategy.teacher_temp``).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sslkd.errors import UserError  # noqa: E402
from sslkd.losses.dino import dino_loss, feature_search_loss, teacher_probs  # noqa: E402


def entropy(probs: torch.Tensor) -> torch.Tensor:
    return -(probs * probs.clamp_min(1e-12).log()).sum(-1)


def monitors(strategy, views: list[torch.Tensor]) -> dict[tuple[str, str], dict[str, float]]:
    """{(member, head): CE, H(target), KL, H(mean target), K} of one batch of training views."""
    if strategy.name not in ("dino", "mokd"):
        raise UserError(f"dino_targets reads dino and mokd runs, and this one is '{strategy.name}'; "
                        "pass a run trained with --method dino or --method mokd")
    opts = strategy.options
    tau_t, tau_s = opts.teacher_temp, opts.student_temp
    with torch.no_grad():
        outputs = strategy.network_outputs(views)
    pairs = {}  # (member, head) -> (loss, target probabilities)
    if strategy.name == "dino":
        for name, out in outputs.items():
            center = strategy.centers[f"{name}/dino"]
            loss = dino_loss(out["student"], out["teacher"], center, out["n_crops"], 2, tau_s, tau_t)
            pairs[name, "dino"] = loss, teacher_probs(out["teacher"], tau_t, center)
    else:
        students, teachers, n_crops = outputs["students"], outputs["teachers"], outputs["n_crops"]
        for name in strategy.members:
            s, t = students[name], teachers[name]
            center = strategy.centers[f"{name}/dino"]
            pairs[name, "dino"] = (dino_loss(s["mlp"], t["mlp"], center, n_crops, 2, tau_s, tau_t),
                                   teacher_probs(t["mlp"], tau_t, center))
            if "thead" in t:
                center = strategy.thead_centers[f"{name}/thead"]
                pairs[name, "thead"] = (dino_loss(s["thead"], t["thead"], center, n_crops, 2, tau_s, tau_t),
                                        teacher_probs(t["thead"], tau_t, center))
        for (name, peer), (student_rows, searched) in outputs["searched"].items():
            center = strategy.search_center(name)
            head = "search" if len(strategy.members) == 2 else f"search/{peer}"
            pairs[name, head] = (feature_search_loss(student_rows, searched, tau_s, tau_t, center),
                                 teacher_probs(searched, tau_t, center))
    result = {}
    for key, (loss, target) in pairs.items():
        h_target = float(entropy(target).mean())
        result[key] = {"CE": float(loss), "H(target)": h_target, "KL": float(loss) - h_target,
                       "H(mean target)": float(entropy(target.mean(0))), "ln K": math.log(target.shape[1])}
    return result


def training_views(strategy, cfg, n_images: int, seed: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The run's own training views of ``n_images`` images spread over the training set, seeded by ``seed``, and
    the images' labels."""
    from sslkd.data import build_dataset
    from sslkd.data.batched import BatchedViews
    from sslkd.data.sampling import SeededImages, SeededViews

    data = build_dataset(cfg.data.name, cfg.data.root, "train")
    transform = strategy.train_transform()
    batched = cfg.data.augment.batched
    step = max(1, len(data) // n_images)
    keys = [(index, seed * 1_000_003 + index) for index in range(0, step * n_images, step)][:n_images]
    loader = DataLoader(SeededImages(data) if batched else SeededViews(data, transform), batch_size=len(keys),
                        sampler=keys, collate_fn=BatchedViews(transform) if batched else None)
    views, labels, _ = next(iter(loader))
    return views, labels


def run_batch_arguments(doc: str, argv: list[str] | None) -> argparse.Namespace:
    """The command line of a tool that measures one batch of a run's training views (this one, term_gradients)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("run", help="a run directory or its checkpoint")
    parser.add_argument("--images", type=int, default=256, help="images in the one batch measured")
    parser.add_argument("--seed", type=int, default=0, help="seed of the views")
    return parser.parse_args(argv)


def run_batch(args: argparse.Namespace):
    """(strategy in training mode, config, views, labels): the run's trained networks and one batch of its views."""
    from sslkd.eval.checkpoints import load_strategy

    strategy, cfg = load_strategy(args.run)
    strategy.train()
    return (strategy, cfg, *training_views(strategy, cfg, args.images, args.seed))


def main(argv: list[str] | None = None) -> int:
    args = run_batch_arguments(__doc__, argv)
    try:
        strategy, _, views, _ = run_batch(args)
        measured = monitors(strategy, views)
    except UserError as error:
        print(f"dino_targets: error: {error}", file=sys.stderr)
        return 2
    for (member, head), values in measured.items():
        print(f"{member:8s} {head:7s} " + "  ".join(f"{k} {v:.3f}" for k, v in values.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
