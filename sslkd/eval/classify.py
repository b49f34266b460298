"""Test top-1 of supervised strategies' classifiers: every member's kept network (backbone + final classifier,
auxiliary parts dropped) and the cohort ensemble (mean of the members' softmax probabilities).

Written into summary.json at the end of training (``test_top1`` per member, ``ensemble_test_top1``) and printed by
``sslkd eval classify --checkpoint ...``. Strategies opt in with ``has_classifiers`` and ``classifier_logits``.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from sslkd.config import Config
from sslkd.data import build_dataset
from sslkd.data.transforms import EvalTransform
from sslkd.core import distributed as dist


def has_classifiers(strategy) -> bool:
    return bool(getattr(strategy, "has_classifiers", False))


@torch.no_grad()
def classify_members(strategy, cfg: Config, device: torch.device) -> dict:
    """{"members": {name: top-1 %}, "ensemble_top1": %, "n_test": N} on the data set's test split."""
    dataset = build_dataset(cfg.data.name, cfg.data.root, "test")
    size = cfg.data.image_size or dataset.info.image_size
    dataset.transform = EvalTransform(size, dataset.info.mean, dataset.info.std)
    loader = DataLoader(dataset, batch_size=cfg.eval.batch_size, shuffle=False, num_workers=cfg.data.num_workers)
    was_training = strategy.training
    strategy.eval()
    correct: dict[str, int] = {}
    ensemble_correct, total = 0, 0
    for images, labels, _ in loader:
        images, labels = images.to(device), labels.to(device)
        logits = strategy.classifier_logits(images)
        for name, z in logits.items():
            correct[name] = correct.get(name, 0) + int((z.argmax(dim=1) == labels).sum())
        probabilities = torch.stack([z.float().softmax(dim=1) for z in logits.values()]).mean(dim=0)
        ensemble_correct += int((probabilities.argmax(dim=1) == labels).sum())
        total += len(labels)
    strategy.train(was_training)
    return {"members": {name: 100.0 * c / total for name, c in correct.items()},
            "ensemble_top1": 100.0 * ensemble_correct / total, "n_test": total}


def add_test_accuracy(summary: dict, strategy, cfg: Config, device: torch.device) -> None:
    """Put each member's ``test_top1`` and the ``ensemble_test_top1`` into a run summary (supervised strategies)."""
    if not has_classifiers(strategy) or not dist.is_main_process():
        return
    results = classify_members(strategy, cfg, device)
    for name, top1 in results["members"].items():
        summary["members"][name]["test_top1"] = top1
    summary["ensemble_test_top1"] = results["ensemble_top1"]
    summary["protocol"]["classify"] = {"split": "test", "n_test": results["n_test"], "epoch": "final",
                                       "ensemble": "mean of the members' softmax probabilities"}


def classify_checkpoint(path, data_name: str | None = None, data_root: str | None = None,
                        device: str = "auto") -> dict:
    from sslkd.engine.trainer import pick_device
    from sslkd.errors import UserError
    from sslkd.eval.protocol import strategy_from_checkpoint

    strategy, cfg = strategy_from_checkpoint(path, data_name, data_root)
    if not has_classifiers(strategy):
        raise UserError(f"the {cfg.method} run in '{path}' trained no classifiers (a self-supervised form): "
                        "evaluate it with sslkd eval knn or sslkd eval linear")
    torch_device = pick_device(device)
    return classify_members(strategy.to(torch_device), cfg, torch_device)
