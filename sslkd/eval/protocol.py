"""The evaluation every run ends with: weighted k-NN (DINO protocol) of every member's evaluated backbone."""

from __future__ import annotations

import typing

import torch
from torch.utils.data import DataLoader

from sslkd.config import Config, EvalConfig
from sslkd.data import build_dataset
from sslkd.data.transforms import EvalTransform
from sslkd.core import distributed as dist
from sslkd.core.rundir import RunDir
from sslkd.errors import UserError
from sslkd.eval.features import extract_features
from sslkd.eval.knn import dogo_knn_mean, knn_topk_accuracy
from sslkd.models.kernels import evaluation_kernel, forward_context

ENCODERS = typing.get_args(typing.get_type_hints(EvalConfig)["encoder"])
FEATURE_SOURCE = ("the backbone of the evaluated encoder (protocol 'encoder': the EMA teacher or the student, "
                  "eval.encoder): ViT CLS after the final norm, CNN global average pool")


def eval_loaders(cfg: Config, image_size: int | None = None) -> tuple[DataLoader, DataLoader]:
    """Un-augmented train (the k-NN memory) and test loaders at the training image size."""
    loaders = []
    for split in ("train", "test"):
        dataset = build_dataset(cfg.data.name, cfg.data.root, split, skip_corrupt=cfg.data.skip_corrupt)
        size = image_size or cfg.data.image_size or dataset.info.image_size
        dataset.transform = EvalTransform(size, dataset.info.mean, dataset.info.std)
        loaders.append(DataLoader(dataset, batch_size=cfg.eval.batch_size, shuffle=False, num_workers=cfg.data.num_workers))
    return loaders[0], loaders[1]


def extraction_context(cfg: Config, device: str | torch.device):
    """What frozen-backbone feature extraction runs under: fp32, the Linear layers' products by oneDNN on a CPU
    unless the run chose torch's (``evaluation_kernel``; never an error on another device)."""
    device = torch.device(device)
    return forward_context(device, None, evaluation_kernel(cfg.train, device))


def knn_results(train_feats, train_labels, test_feats, test_labels, cfg: Config, num_classes: int) -> dict:
    ks = sorted(set(cfg.eval.knn_k) | {20})
    accuracies = knn_topk_accuracy(
        train_feats, train_labels, test_feats, test_labels, ks=ks, temperature=cfg.eval.knn_temperature, num_classes=num_classes
    )
    return {
        "knn_top1": accuracies[20][1],
        "knn_top5": accuracies[20][5],  # DINO's protocol reports top-5 beside top-1
        "knn": {str(k): accuracies[k][1] for k in ks},
        "knn_top5_per_k": {str(k): accuracies[k][5] for k in ks},
        "knn_dogo_mean": dogo_knn_mean(train_feats, train_labels, test_feats, test_labels, num_classes=num_classes),
    }


@torch.no_grad()
def evaluate_members(strategy, cfg: Config, device: torch.device, only: str | None = None) -> dict:
    """k-NN top-1 (k=20, T=0.07, plus the other k of ``eval.knn_k`` and DoGo's mean over k in {1,2,4,8}).

    Features are extracted under ``extraction_context``."""
    if not dist.is_main_process():
        return {}
    train_loader, test_loader = eval_loaders(cfg)
    strategy.eval()
    results = {}
    for name, backbone in strategy.eval_backbones().items():
        if only is not None and name != only:
            continue
        with extraction_context(cfg, device):
            train_feats, train_labels = extract_features(backbone, train_loader, device)
            test_feats, test_labels = extract_features(backbone, test_loader, device)
        results[name] = knn_results(train_feats, train_labels, test_feats, test_labels, cfg, strategy.info.num_classes)
        results[name]["protocol"] = {
            "knn_k": 20,
            "knn_temperature": cfg.eval.knn_temperature,
            "knn_ks": sorted(set(cfg.eval.knn_k) | {20}),
            "dogo_ks": [1, 2, 4, 8],
            "feature_source": FEATURE_SOURCE,
            "encoder": strategy.evaluated_encoder(name),
            "train_split": "train",
            "test_split": "test",
            "n_train": len(train_feats),
            "n_test": len(test_feats),
        }
    strategy.train()
    return results


def checked_encoder(encoder: str) -> str:
    """``encoder`` if it is a value of ``eval.encoder``, else a UserError naming the valid ones."""
    if encoder not in ENCODERS:
        raise UserError(f"unknown encoder {encoder!r}; use one of {', '.join(ENCODERS)}")
    return encoder


def strategy_from_checkpoint(path, data_name: str | None = None, data_root: str | None = None,
                             encoder: str | None = None):
    """Rebuild a run's strategy from its checkpoint (the config travels inside it) and load the weights; ``path`` is
    the checkpoint or the run directory holding it.

    ``encoder`` (``auto``, ``teacher`` or ``student``) replaces the run's ``eval.encoder``: which encoder is
    evaluated."""
    from sslkd.config import Config, from_dict
    from sslkd.core.checkpoint import load_checkpoint
    from sslkd.registry import STRATEGIES, load_run_plugins

    if (checkpoint := RunDir(path).checkpoint).is_file():
        path = checkpoint
    state = load_checkpoint(path)
    cfg = from_dict(Config, state["config"])
    load_run_plugins(cfg.plugins)
    if encoder is not None:
        cfg.eval.encoder = checked_encoder(encoder)
    info = build_dataset(cfg.data.name, cfg.data.root, "train").info
    strategy = STRATEGIES.get(cfg.method)(cfg, info)
    try:
        strategy.load_state_dict(state["strategy"])
    except RuntimeError as exc:
        raise UserError(f"checkpoint '{path}' does not match the {cfg.method} model its config describes") from exc
    if data_name is not None:
        cfg.data.name, cfg.data.root = data_name, data_root
    elif data_root is not None:
        cfg.data.root = data_root
    return strategy, cfg


def knn_of_checkpoint(path, member: str | None = None, data_name: str | None = None, data_root: str | None = None,
                      device: str = "auto", encoder: str | None = None) -> dict:
    """``sslkd eval knn`` and tools/knn_eval.py: the run-end k-NN protocol on any checkpoint (or run directory),
    member and encoder (``encoder`` replaces the run's ``eval.encoder``)."""
    from sslkd.engine.trainer import pick_device
    from sslkd.errors import UserError

    strategy, cfg = strategy_from_checkpoint(path, data_name, data_root, encoder)
    if member is not None and member not in strategy.members:
        raise UserError(f"checkpoint has no member {member!r}; its members are {', '.join(strategy.members)}")
    torch_device = pick_device(device)
    strategy.to(torch_device)
    return evaluate_members(strategy, cfg, torch_device, only=member)
