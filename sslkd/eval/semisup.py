"""Semi-supervised fine-tuning on a class-balanced fraction of the labels (MOKD Table 4, DoGo Table 2).

MOKD (Sec. 4.2) follows SimCLR's semi-supervised protocol: the 1% / 10% ImageNet subsets, the whole backbone with a
linear layer on top fine-tuned at batch 1024 for 60 (1%) or 30 (10%) epochs. SimCLR's recipe fills in what MOKD
leaves out: SGD with Nesterov momentum 0.9, lr 0.05 x batch/256, no weight decay, no warm-up, random crop + flip
only, top-1 on the test set after the last epoch. The ImageNet subsets are fixed files; here a fraction is drawn
per class with a seed (same images for the same seed), which is what the subsets are: class-balanced.

DoGo (Sec. 4.4): 1, 5, 10, 20, 50 and 100% of Tiny-ImageNet "in a class balanced manner", the whole encoder with a
linear layer fine-tuned, 15% of the training data held out as a validation set, top-1 on the full test set. The
paper gives no optimiser for this, so the SimCLR recipe above is used with DoGo's batch 64 and 100 epochs, and the
validation split picks the epoch whose weights are tested (it is held out of the train set first, stratified, and
the label fraction is drawn from the rest).

The checkpoint is never modified: fine-tuning runs on a copy of the member's evaluated backbone.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision.transforms import v2

from sslkd.data import build_dataset
from sslkd.data.transforms import EvalTransform
from sslkd.errors import UserError
from sslkd.eval.checkpoints import load_members
from sslkd.eval.linear import CROP_SCALE, _with_transform, per_class_draw, split_train_val


@dataclass(frozen=True)
class FinetuneProtocol:
    """One fine-tuning recipe; ``epochs`` maps a label fraction to epochs (key None: any other fraction)."""

    name: str
    batch_size: int
    base_lr: float
    epochs: dict
    momentum: float
    nesterov: bool
    weight_decay: float
    val_fraction: float
    schedule: str


FINETUNE_PROTOCOLS = {
    "mokd": FinetuneProtocol(name="mokd", batch_size=1024, base_lr=0.05, epochs={0.01: 60, 0.1: 30, None: 30},
                             momentum=0.9, nesterov=True, weight_decay=0.0, val_fraction=0.0, schedule="cosine"),
    "dogo": FinetuneProtocol(name="dogo", batch_size=64, base_lr=0.05, epochs={None: 100}, momentum=0.9,
                             nesterov=True, weight_decay=0.0, val_fraction=0.15, schedule="cosine"),
}


def class_balanced_fraction(labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Sorted indices of ``round(fraction x n_c)`` images of every class c (at least one), drawn with ``seed``."""
    if not 0 < fraction <= 1:
        raise UserError(f"label fraction {fraction} must lie in (0, 1]; e.g. 0.01 for 1% of the labels")
    return per_class_draw(labels, fraction, seed, minimum=1)


def _train_augment(size: int, mean, std) -> v2.Compose:
    return v2.Compose([
        v2.RandomResizedCrop(size, scale=CROP_SCALE, antialias=True),
        v2.RandomHorizontalFlip(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(mean), std=list(std)),
    ])


class _Classifier(nn.Module):
    def __init__(self, backbone: nn.Module, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.num_features, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))


@torch.no_grad()
def _top1(model: nn.Module, dataset: Dataset, device, batch_size: int) -> float:
    model.eval()
    correct = total = 0
    for images, labels, _ in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        preds = model(images.to(device)).argmax(dim=1).cpu()
        correct += int((preds == torch.as_tensor(labels)).sum())
        total += len(preds)
    model.train()
    return 100.0 * correct / total


def finetune(backbone: nn.Module, train_set: Dataset, test_set: Dataset, train_idx: torch.Tensor,
             val_idx: torch.Tensor, settings: FinetuneProtocol, epochs: int, device, seed: int,
             image_size: int, eval_batch_size: int = 256) -> dict:
    """Fine-tune a copy of ``backbone`` with a new linear layer on ``train_idx``; test top-1 of the weights of the
    best validation epoch (or of the last epoch without validation images), with every setting."""
    device = torch.device(device)
    batch_size = min(settings.batch_size, len(train_idx))
    lr = settings.base_lr * batch_size / 256
    info = train_set.info
    eval_transform = EvalTransform(image_size, info.mean, info.std)
    train_images = Subset(_with_transform(train_set, _train_augment(image_size, info.mean, info.std)),
                          train_idx.tolist())
    val_images = Subset(_with_transform(train_set, eval_transform), val_idx.tolist()) if len(val_idx) else None
    test_images = _with_transform(test_set, EvalTransform(image_size, test_set.info.mean, test_set.info.std))
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        model = _Classifier(copy.deepcopy(backbone), info.num_classes).to(device).train()
        for param in model.parameters():
            param.requires_grad_(True)
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=settings.momentum,
                                    nesterov=settings.nesterov, weight_decay=settings.weight_decay)
        loader = DataLoader(train_images, batch_size=batch_size, shuffle=True, drop_last=False,
                            generator=torch.Generator().manual_seed(seed))
        total_steps = max(1, epochs * len(loader))
        best_val, best_epoch, best_state, loss, step = -math.inf, epochs, None, math.nan, 0
        for epoch in range(1, epochs + 1):
            for images, labels, _ in loader:
                for group in optimizer.param_groups:
                    group["lr"] = 0.5 * lr * (1 + math.cos(math.pi * step / total_steps))
                batch_loss = F.cross_entropy(model(images.to(device)), torch.as_tensor(labels).to(device))
                optimizer.zero_grad(set_to_none=True)
                batch_loss.backward()
                optimizer.step()
                loss, step = batch_loss.item(), step + 1
            if val_images is not None:
                val = _top1(model, val_images, device, eval_batch_size)
                if val > best_val:
                    best_val, best_epoch = val, epoch
                    best_state = copy.deepcopy(model.state_dict())
        if best_state is not None:
            model.load_state_dict(best_state)
        test_top1 = _top1(model, test_images, device, eval_batch_size)
    return {
        "top1": test_top1,
        "protocol": {
            "name": settings.name, "epochs": epochs, "batch_size": batch_size, "optimizer": "sgd",
            "nesterov": settings.nesterov, "momentum": settings.momentum, "base_lr": settings.base_lr, "lr": lr,
            "lr_rule": "base_lr x batch/256", "schedule": "cosine to 0, per step", "weight_decay": settings.weight_decay,
            "augmentation": f"RandomResizedCrop({image_size}, scale={CROP_SCALE}) + horizontal flip",
            "trained": "whole backbone + new linear layer", "image_size": image_size,
            "n_train": len(train_idx), "n_val": len(val_idx), "n_test": len(test_set),
            "selection": "best validation top-1" if len(val_idx) else "final epoch",
            "best_epoch": best_epoch, "val_top1": best_val if len(val_idx) else None,
            "final_train_loss": loss, "seed": seed,
        },
    }


def _settings(protocol: str, **overrides) -> FinetuneProtocol:
    if protocol not in FINETUNE_PROTOCOLS:
        raise UserError(f"unknown fine-tuning protocol {protocol!r}; use one of {', '.join(FINETUNE_PROTOCOLS)}")
    settings = dataclasses.replace(FINETUNE_PROTOCOLS[protocol],
                                   **{k: v for k, v in overrides.items() if v is not None})
    if settings.batch_size < 1 or not 0 <= settings.val_fraction < 1:
        raise UserError(f"fine-tuning needs batch size >= 1 and val fraction in [0, 1), got {settings.batch_size} "
                        f"and {settings.val_fraction}")
    return settings


def protocol_epochs(settings: FinetuneProtocol, fraction: float, epochs: int | None) -> int:
    value = epochs if epochs is not None else settings.epochs.get(fraction, settings.epochs[None])
    if value < 1:
        raise UserError(f"fine-tuning needs epochs >= 1, got {value}; pass --epochs 1 or more")
    return value


def semisup_of_checkpoint(path, fraction: float, member: str | None = None, protocol: str = "mokd",
                          data_name: str | None = None, data_root: str | None = None, epochs: int | None = None,
                          batch_size: int | None = None, seed: int = 0, device: str = "auto") -> dict:
    """``sslkd eval semisup``: fine-tune each member on a class-balanced ``fraction`` of the train labels."""
    from sslkd.engine.trainer import pick_device

    settings = _settings(protocol, batch_size=batch_size)
    strategy, cfg, backbones = load_members(path, member, data_name, data_root)
    torch_device = pick_device(device)
    train_set = build_dataset(cfg.data.name, cfg.data.root, "train")
    test_set = build_dataset(cfg.data.name, cfg.data.root, "test")
    pool, val_idx = split_train_val(train_set.labels, settings.val_fraction, seed)
    train_idx = pool[class_balanced_fraction(train_set.labels[pool], fraction, seed)]
    n_epochs = protocol_epochs(settings, fraction, epochs)
    size = cfg.data.image_size or train_set.info.image_size
    results = {}
    for name, backbone in backbones.items():
        result = finetune(backbone, train_set, test_set, train_idx, val_idx, settings, n_epochs, torch_device,
                          seed, size, cfg.eval.batch_size)
        result["protocol"].update(label_fraction=fraction, class_balanced=True, dataset=cfg.data.name,
                                  checkpoint=str(path), backbone=strategy.members[name].cfg.backbone)
        results[name] = result
    return results


def fraction_key(fraction: float, protocol: str = "mokd") -> str:
    """``semisup_1pct`` for 0.01, ``semisup_0.5pct`` for 0.005; ``semisup_10pct_dogo`` for DoGo's protocol."""
    return f"semisup_{100 * fraction:g}pct" + ("" if protocol == "mokd" else f"_{protocol}")
