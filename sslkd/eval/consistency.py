"""Prediction consistency between two models (MOKD Sec. 4.6, Table 9).

"The fraction of samples that two model pairs make the same prediction": each model classifies the test split
with the weighted k-NN of the run-end protocol (k=20, T=0.07, train split as memory), and the consistency is the
fraction of test images on which the two predicted classes agree. The two models may be the two members of one
run (MOKD column) or members of two runs (the Independent columns: two runs trained alone, or a MOKD member
swapped for an independently trained one).
"""

from __future__ import annotations

import torch

from sslkd.errors import UserError
from sslkd.eval.checkpoints import load_members
from sslkd.eval.features import extract_features
from sslkd.eval.knn import knn_predict
from sslkd.eval.protocol import eval_loaders, extraction_context

KNN_K = 20


def prediction_consistency(preds_a: torch.Tensor, preds_b: torch.Tensor) -> float:
    """Fraction (0..1) of samples on which the two prediction vectors agree."""
    if preds_a.shape != preds_b.shape or preds_a.ndim != 1 or len(preds_a) == 0:
        raise ValueError(f"need two equally long, non-empty prediction vectors, got {tuple(preds_a.shape)} and "
                         f"{tuple(preds_b.shape)}")
    return float((preds_a == preds_b).float().mean())


def _knn_predictions(path, member: str | None, data_name, data_root, device) -> tuple[str, torch.Tensor, torch.Tensor, dict]:
    strategy, cfg, backbones = load_members(path, member, data_name, data_root)
    if len(backbones) != 1:
        raise UserError(f"'{path}' has members {', '.join(backbones)}: name the one to compare with --member / "
                        "--other-member")
    (name, backbone), = backbones.items()
    train_loader, test_loader = eval_loaders(cfg)
    backbone.to(device)
    with extraction_context(cfg, device):
        train_feats, train_labels = extract_features(backbone, train_loader, device)
        test_feats, test_labels = extract_features(backbone, test_loader, device)
    preds = knn_predict(train_feats, train_labels, test_feats, (KNN_K,), strategy.info.num_classes,
                        cfg.eval.knn_temperature)[KNN_K]
    setting = {"dataset": cfg.data.name, "knn_temperature": cfg.eval.knn_temperature,
               "backbone": strategy.members[name].cfg.backbone}
    return name, preds, test_labels, setting


def consistency_of_checkpoints(path, member: str | None = None, other_path=None, other_member: str | None = None,
                               data_name: str | None = None, data_root: str | None = None,
                               device: str = "auto") -> dict:
    """``sslkd eval consistency``: agreement of two members' k-NN predictions, with both accuracies."""
    from sslkd.engine.trainer import pick_device

    torch_device = pick_device(device)
    if other_path is None:
        _, _, backbones = load_members(path, None, data_name, data_root)
        names = list(backbones)
        if other_member is None and member is None and len(names) == 2:
            member, other_member = names
        if member is None or other_member is None:
            raise UserError(f"'{path}' has members {', '.join(names)}: pass --member and --other-member (or "
                            "--other-checkpoint)")
        other_path = path
    name_a, preds_a, labels, setting_a = _knn_predictions(path, member, data_name, data_root, torch_device)
    name_b, preds_b, labels_b, setting_b = _knn_predictions(other_path, other_member, data_name, data_root,
                                                            torch_device)
    if len(labels) != len(labels_b) or not torch.equal(labels, labels_b):
        raise UserError("the two models were evaluated on different test sets: pass --data so both use the same")
    accuracy = {name: 100.0 * float((p == labels).float().mean()) for name, p in ((name_a, preds_a), (name_b, preds_b))}
    return {name_a: {
        "consistency": prediction_consistency(preds_a, preds_b),
        "knn_top1": accuracy[name_a],
        "other_knn_top1": accuracy[name_b],
        "protocol": {"other_checkpoint": str(other_path), "other_member": name_b, "checkpoint": str(path),
                     "prediction": f"weighted k-NN, k={KNN_K}, T={setting_a['knn_temperature']}, train split as "
                                   "memory", "test_split": "test", "n_test": len(labels),
                     "backbone": setting_a["backbone"], "other_backbone": setting_b["backbone"],
                     "dataset": setting_a["dataset"]},
    }}
