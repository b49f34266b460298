#!/usr/bin/env python
"""How hard each loss term pulls each backbone, and in which direction, on a trained run.

    python tools/term_gradients.py RUN_OR_CHECKPOINT [--images 256] [--seed 0]

For every member of the run, on one batch of its own training views (``tools/dino_targets.py``'s), each of the
member's named loss terms (``mokd``: ``cnn/sm``, ``cnn/st``, ...; a strategy that names no terms: the member's whole
loss) is back-propagated alone into the member's *backbone*; printed per term: its value, the weight it has in the
member's loss (read off autograd as d loss / d term, so any weighted sum is covered: MOKD Eq. 9's 1 for the self
terms and lambda for the cross terms, DoGo's and DML's distillation weights, SDSSL's alpha(t); 0 for a logged term
the loss does not use), the norm of its weighted gradient, and the cosine between every two terms' gradients.
Scheduled quantities (teacher temperatures, SDSSL's alpha(t)) take their end-of-training values, as a finished
run has them; on a mid-run checkpoint they can differ from those of the step it was saved at.

A term whose weighted gradient is as large as the method's main term but points away from it (cosine <= 0) is one
that the backbone spends its updates on instead of the main objective: what MOKD's ablations (Table 7) measure in
accuracy, seen in the step itself.
"""

from __future__ import annotations

import sys
from itertools import combinations
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sslkd.errors import UserError  # noqa: E402
from tools.dino_targets import run_batch, run_batch_arguments  # noqa: E402

def member_terms(losses: dict[str, torch.Tensor], member: str) -> dict[str, torch.Tensor]:
    """The member's named terms (``member/term``), or its whole loss when the strategy names none."""
    terms = {key.split("/", 1)[1]: value for key, value in losses.items()
             if key.startswith(f"{member}/") and key != f"{member}/loss" and value.requires_grad}
    return terms or {"loss": losses[f"{member}/loss"]}


def term_gradients(strategy, views: list[torch.Tensor], labels: torch.Tensor, step) -> dict[str, dict]:
    """{member: {"terms": {term: (value, weight, weighted gradient norm)}, "cosines": {(a, b): cosine}}}."""
    indices = torch.arange(labels.shape[0])
    losses = strategy.losses(strategy.network_outputs(views), labels, indices, step)
    strategy.discard_deferred()
    result = {}
    for name, member in strategy.members.items():
        params = [p for p in member.student["backbone"].parameters() if p.requires_grad]
        terms = member_terms(losses, name)
        slopes = torch.autograd.grad(losses[f"{name}/loss"], list(terms.values()), retain_graph=True, allow_unused=True)
        weights = {term: 0.0 if slope is None else slope.item() for term, slope in zip(terms, slopes)}
        grads = {}
        for term, value in terms.items():
            parts = torch.autograd.grad(weights[term] * value, params, retain_graph=True, allow_unused=True)
            grads[term] = torch.cat([(g if g is not None else torch.zeros_like(p)).flatten()
                                     for g, p in zip(parts, params)])
        result[name] = {
            "terms": {term: (terms[term].item(), weights[term], float(g.norm())) for term, g in grads.items()},
            "cosines": {(a, b): float(torch.nn.functional.cosine_similarity(grads[a], grads[b], dim=0))
                        for a, b in combinations(grads, 2)},
        }
    return result


def main(argv: list[str] | None = None) -> int:
    from sslkd.data import build_dataset
    from sslkd.strategies.base import StepInfo

    args = run_batch_arguments(__doc__, argv)
    try:
        strategy, cfg, views, labels = run_batch(args)
        steps_per_epoch = len(build_dataset(cfg.data.name, cfg.data.root, "train")) // cfg.train.batch_size
        total = steps_per_epoch * cfg.train.epochs
        measured = term_gradients(strategy, views, labels, StepInfo(total, cfg.train.epochs, steps_per_epoch, total))
    except UserError as error:
        print(f"term_gradients: error: {error}", file=sys.stderr)
        return 2
    for member, values in measured.items():
        for term, (value, weight, norm) in values["terms"].items():
            print(f"{member:8s} {term:5s} loss {value:.3f}  weight {weight:g}  |weighted grad| {norm:.4f}")
        for (a, b), cosine in values["cosines"].items():
            print(f"{member:8s} cos({a}, {b}) {cosine:+.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
