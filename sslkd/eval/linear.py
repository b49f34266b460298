"""Linear probes of a frozen backbone: DINO's protocol and DoGo's.

DINO (``eval_linear.py``, METHODS.md "Linear probe"): features are the concatenated CLS tokens (after the final
norm) of a ViT's last 4 blocks, or a CNN's pooled feature; a linear layer initialised N(0, 0.01) with zero bias;
SGD momentum 0.9, no weight decay, lr = base x batch/256 (base 1e-3 for a ViT, 0.01 for a ResNet as MOKD uses),
cosine to 0 stepped per epoch, 100 epochs, RandomResizedCrop(scale 0.08-1) + flip, top-1 on un-augmented test
images after the last epoch.

DoGo (Sec. 4, "Linear Evaluation"): Adam lr 3e-4, weight decay 1e-6, batch 64, 100 epochs, no augmentation.
A validation split held out of the train set (10%, stratified, fixed by the seed) picks the epoch whose test
top-1 is reported, so the test set never selects anything.

Un-augmented images (test, validation, and the train set when augmentation is off) go through the backbone once
and their features are cached in memory: the probe then trains on tensors, which makes DoGo's 100 epochs cheap.
With augmentation the frozen backbone runs on every augmented batch under ``torch.inference_mode``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision.transforms import v2

from sslkd.data import build_dataset
from sslkd.data.transforms import EvalTransform
from sslkd.errors import UserError
from sslkd.eval.checkpoints import load_strategy


@dataclass(frozen=True)
class ProbeProtocol:
    """The settings of one probe recipe; ``base_lr`` is per backbone kind and scaled by batch/256 when
    ``lr_scaling`` (DINO's rule)."""

    name: str
    optimizer: str
    base_lr: dict[str, float]
    lr_scaling: bool
    batch_size: int
    epochs: int
    momentum: float
    weight_decay: float
    schedule: str
    init: str
    augment: bool
    val_fraction: float


PROTOCOLS = {
    "dino": ProbeProtocol(
        name="dino", optimizer="sgd", base_lr={"vit": 1e-3, "cnn": 1e-2}, lr_scaling=True, batch_size=256,
        epochs=100, momentum=0.9, weight_decay=0.0, schedule="cosine", init="normal(0, 0.01), bias 0",
        augment=True, val_fraction=0.0,
    ),
    "dogo": ProbeProtocol(
        name="dogo", optimizer="adam", base_lr={"vit": 3e-4, "cnn": 3e-4}, lr_scaling=False, batch_size=64,
        epochs=100, momentum=0.0, weight_decay=1e-6, schedule="constant", init="torch default (nn.Linear)",
        augment=False, val_fraction=0.1,
    ),
    # MCL Sec. 5.2 (transfer, Table 4): SGD momentum 0.9, batch 64, no weight decay, lr 0.1 divided by 10 at
    # epochs 30, 60 and 90 of 100 (scaled with --epochs). MCL augments like its CIFAR-100 training (crop + flip);
    # here the train features are cached un-augmented unless --augment is given (RandomResizedCrop + flip).
    "mcl": ProbeProtocol(
        name="mcl", optimizer="sgd", base_lr={"vit": 0.1, "cnn": 0.1}, lr_scaling=False, batch_size=64,
        epochs=100, momentum=0.9, weight_decay=0.0, schedule="step", init="torch default (nn.Linear)",
        augment=False, val_fraction=0.0,
    ),
}
CROP_SCALE = (0.08, 1.0)
STEP_MILESTONES = (0.3, 0.6, 0.9)  # fractions of the probe's epochs where the "step" schedule divides lr by 10


def probe_feature_fn(backbone: nn.Module, n_last_blocks: int = 4,
                     layer: str | None = None) -> tuple[Callable[[torch.Tensor], torch.Tensor], str]:
    """The probe's feature function and its description: a ViT's last ``n_last_blocks`` pooled block outputs
    concatenated (the CLS token after the final norm for a class-token ViT), a CNN's pooled feature (DINO); with
    ``layer``, that one block's pooled output (multi-exit, sslkd.eval.layers)."""
    if layer is not None:
        return (lambda images: backbone.forward_intermediates(images, [layer])[layer],
                f"pooled output of block {layer} alone (ViT: CLS through the final norm; CNN: global average pool)")
    if backbone.kind != "vit":
        return backbone, "CNN global-average-pooled last feature map"
    names = backbone.intermediate_names()
    if not 1 <= n_last_blocks <= len(names):
        raise UserError(
            f"n_last_blocks={n_last_blocks} but this ViT has {len(names)} blocks; set n_last_blocks "
            f"(--n-last-blocks) between 1 and {len(names)}"
        )
    names = names[-n_last_blocks:]

    def last_blocks(images: torch.Tensor) -> torch.Tensor:
        pooled = backbone.forward_intermediates(images, names)
        return torch.cat([pooled[n] for n in names], dim=1)

    return last_blocks, (f"ViT: concatenated pooled outputs of the last {n_last_blocks} blocks "
                         f"({', '.join(names)}); for a class-token ViT the CLS token after the final norm")


def per_class_draw(labels: torch.Tensor, fraction: float, seed: int, minimum: int = 0) -> torch.Tensor:
    """Sorted indices of ``max(minimum, round(fraction x n_c))`` images of every class c, drawn with ``seed``."""
    labels = torch.as_tensor(labels).long()
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for cls in torch.unique(labels):
        members = torch.nonzero(labels == cls).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        chosen.append(members[: max(minimum, round(fraction * len(members)))])
    return torch.sort(torch.cat(chosen)).values


def split_train_val(labels: torch.Tensor, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Hold out ``round(val_fraction x n)`` images of every class, chosen by ``seed``; sorted (train, val) indices.

    Per class, so a small or unbalanced train set still validates on every class.
    """
    labels = torch.as_tensor(labels).long()
    val_idx = per_class_draw(labels, val_fraction, seed)
    is_val = torch.zeros(len(labels), dtype=torch.bool)
    is_val[val_idx] = True
    train_idx = torch.nonzero(~is_val).flatten()
    if len(train_idx) == 0 or (val_fraction > 0 and len(val_idx) == 0):
        raise UserError(
            f"val_fraction={val_fraction} leaves {len(train_idx)} train and {len(val_idx)} validation images out "
            f"of {len(labels)}; use a larger train set or another val_fraction"
        )
    return train_idx, val_idx


def linear_probe(
    backbone: nn.Module,
    train_set: Dataset,
    test_set: Dataset,
    protocol: str = "dino",
    device: str | torch.device = "cpu",
    seed: int = 0,
    *,
    epochs: int | None = None,
    batch_size: int | None = None,
    base_lr: float | None = None,
    augment: bool | None = None,
    val_fraction: float | None = None,
    n_last_blocks: int = 4,
    image_size: int | None = None,
    num_workers: int = 0,
    feature_batch_size: int = 256,
    layer: str | None = None,
) -> dict:
    """Train a linear classifier on the frozen ``backbone`` and return its test top-1 (percent) with every setting.

    ``train_set`` / ``test_set`` are sslkd image data sets (``info``, ``labels``, ``transform``; items
    (image, label, index)); the probe uses copies carrying its own transforms. Arguments left None take the
    protocol's value (``PROTOCOLS``); ``augment=False`` under DINO's protocol caches the train features too and is
    recorded. The result is the same for the same seed; the backbone's weights, buffers and mode are untouched.
    ``protocol["test_top1_max_over_epochs"]`` is the figure DINO's eval_linear.py prints (chosen on the test set):
    recorded for comparison with published numbers, never the headline.
    """
    settings = _settings(protocol, epochs, batch_size, augment, val_fraction)
    device = torch.device(device)
    feature_fn, feature_desc = probe_feature_fn(backbone, n_last_blocks, layer)
    lr_base = base_lr if base_lr is not None else settings.base_lr[backbone.kind]
    lr = lr_base * settings.batch_size / 256 if settings.lr_scaling else lr_base
    size = image_size or train_set.info.image_size
    train_idx, val_idx = split_train_val(train_set.labels, settings.val_fraction, seed)

    was_training = backbone.training
    backbone.eval()
    fork_devices = []
    if device.type == "cuda":
        fork_devices = [device.index if device.index is not None else torch.cuda.current_device()]
    try:
        with torch.random.fork_rng(devices=fork_devices):
            torch.manual_seed(seed)
            run = _Run(settings, feature_fn, train_set, test_set, train_idx, val_idx, size, device, seed, lr,
                       num_workers, feature_batch_size)
            outcome = run.fit()
    finally:
        backbone.train(was_training)

    selection = "best validation top-1" if len(val_idx) else "final epoch"
    return {
        "linear_top1": outcome["test_top1"],
        "protocol": {
            "name": settings.name,
            "epochs": settings.epochs,
            "batch_size": settings.batch_size,
            "optimizer": settings.optimizer,
            "base_lr": lr_base,
            "lr": lr,
            "lr_rule": "base_lr x batch/256" if settings.lr_scaling else "fixed",
            "momentum": settings.momentum,
            "weight_decay": settings.weight_decay,
            "schedule": {"cosine": "cosine to 0, per epoch", "constant": "constant",
                         "step": f"divided by 10 at {STEP_MILESTONES} of the epochs"}[settings.schedule],
            "init": settings.init,
            "augmentation": (f"RandomResizedCrop({size}, scale={CROP_SCALE}) + horizontal flip"
                             if settings.augment else "none"),
            "cached_train_features": not settings.augment,
            "test_transform": repr(EvalTransform(size)),
            "features": feature_desc,
            "feature_dim": outcome["feature_dim"],
            "n_last_blocks": n_last_blocks if backbone.kind == "vit" else None,
            "layer": layer,
            "image_size": size,
            "val_fraction": settings.val_fraction,
            "n_train": len(train_idx),
            "n_val": len(val_idx),
            "n_test": len(test_set),
            "selection": selection,
            "best_epoch": outcome["best_epoch"],
            "val_top1": outcome["val_top1"],
            "final_train_loss": outcome["final_train_loss"],
            "test_top1_max_over_epochs": outcome["test_max"],
            "test_max_epoch": outcome["test_max_epoch"],
            "seed": seed,
        },
    }


def _settings(protocol: str, epochs, batch_size, augment, val_fraction) -> ProbeProtocol:
    """The named protocol with the caller's overrides, each checked."""
    if protocol not in PROTOCOLS:
        raise UserError(f"unknown linear-probe protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}")
    overrides = {k: v for k, v in dict(epochs=epochs, batch_size=batch_size, augment=augment,
                                      val_fraction=val_fraction).items() if v is not None}
    settings = dataclasses.replace(PROTOCOLS[protocol], **overrides)
    if settings.epochs < 1 or settings.batch_size < 1:
        raise UserError(f"the linear probe needs epochs >= 1 and batch size >= 1, got {settings.epochs} and "
                        f"{settings.batch_size}; pass positive values")
    if not 0 <= settings.val_fraction < 1:
        raise UserError(f"val_fraction must lie in [0, 1), got {settings.val_fraction}; e.g. 0.1")
    return settings


def _with_transform(dataset: Dataset, transform: Callable) -> Dataset:
    """A shallow copy (the images are shared) that applies ``transform``, leaving the caller's data set as it was."""
    view = copy.copy(dataset)
    view.transform = transform
    return view


class _Run:
    """One probe training: cached features where images are un-augmented, the linear layer, its optimiser."""

    def __init__(self, settings, feature_fn, train_set, test_set, train_idx, val_idx, size, device, seed, lr,
                 num_workers, feature_batch_size):
        self.settings, self.feature_fn, self.device = settings, feature_fn, device
        self.num_workers, self.feature_batch_size = num_workers, feature_batch_size
        self.generator = torch.Generator().manual_seed(seed)
        train_eval = _with_transform(train_set, EvalTransform(size, train_set.info.mean, train_set.info.std))
        test_eval = _with_transform(test_set, EvalTransform(size, test_set.info.mean, test_set.info.std))
        self.test = self._extract(test_eval)
        if settings.augment:
            augment = v2.Compose([
                v2.RandomResizedCrop(size, scale=CROP_SCALE, antialias=True),
                v2.RandomHorizontalFlip(),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(mean=list(train_set.info.mean), std=list(train_set.info.std)),
            ])
            self.train_images = Subset(_with_transform(train_set, augment), train_idx.tolist())
            self.val = self._extract(Subset(train_eval, val_idx.tolist())) if len(val_idx) else None
        else:
            feats, labels = self._extract(train_eval)
            self.train = (feats[train_idx], labels[train_idx])
            self.val = (feats[val_idx], labels[val_idx]) if len(val_idx) else None
        self.feature_dim = self.test[0].shape[1]
        self.linear = self._linear(self.feature_dim, train_set.info.num_classes).to(device)
        if settings.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(self.linear.parameters(), lr=lr, momentum=settings.momentum,
                                             weight_decay=settings.weight_decay)
        else:
            self.optimizer = torch.optim.Adam(self.linear.parameters(), lr=lr, weight_decay=settings.weight_decay)
        self.scheduler = None
        if settings.schedule == "cosine":
            self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, settings.epochs, eta_min=0.0)
        elif settings.schedule == "step":
            milestones = [round(f * settings.epochs) for f in STEP_MILESTONES]
            self.scheduler = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, milestones, gamma=0.1)

    def _linear(self, dim: int, num_classes: int) -> nn.Linear:
        linear = nn.Linear(dim, num_classes)
        if self.settings.init.startswith("normal"):
            nn.init.normal_(linear.weight, mean=0.0, std=0.01)
            nn.init.zeros_(linear.bias)
        return linear

    def _extract(self, dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
        """Features (float32, CPU, data set order) and labels of un-augmented images: one backbone pass."""
        loader = DataLoader(dataset, batch_size=self.feature_batch_size, shuffle=False, num_workers=self.num_workers)
        feats, labels = [], []
        for images, batch_labels, _ in loader:
            with torch.inference_mode():
                feats.append(self.feature_fn(images.to(self.device)).float().cpu())
            labels.append(torch.as_tensor(batch_labels).long())
        return torch.cat(feats), torch.cat(labels)

    def _batches(self):
        """This epoch's (features, labels) mini-batches: slices of the cache, or the backbone on augmented images."""
        if not self.settings.augment:
            feats, labels = self.train
            order = torch.randperm(len(labels), generator=self.generator)
            for start in range(0, len(order), self.settings.batch_size):
                idx = order[start:start + self.settings.batch_size]
                yield feats[idx].to(self.device), labels[idx].to(self.device)
            return
        loader = DataLoader(self.train_images, batch_size=self.settings.batch_size, shuffle=True,
                            generator=self.generator, num_workers=self.num_workers)
        for images, labels, _ in loader:
            with torch.inference_mode():
                feats = self.feature_fn(images.to(self.device)).float()
            yield feats.clone(), torch.as_tensor(labels).long().to(self.device)

    def _top1(self, split: tuple[torch.Tensor, torch.Tensor]) -> float:
        feats, labels = split
        correct = 0
        with torch.no_grad():
            for start in range(0, len(labels), 4096):
                logits = self.linear(feats[start:start + 4096].to(self.device))
                correct += int((logits.argmax(dim=1).cpu() == labels[start:start + 4096]).sum())
        return 100.0 * correct / len(labels)

    def fit(self) -> dict:
        """Train every epoch; keep the weights of the best validation epoch (or the last one) for the test."""
        best_val, best_epoch, best_state = -math.inf, self.settings.epochs, None
        test_max, test_max_epoch, loss = -math.inf, 0, math.nan
        for epoch in range(1, self.settings.epochs + 1):
            total, count = 0.0, 0
            for feats, labels in self._batches():
                batch_loss = F.cross_entropy(self.linear(feats), labels)
                self.optimizer.zero_grad(set_to_none=True)
                batch_loss.backward()
                self.optimizer.step()
                total, count = total + batch_loss.item() * len(labels), count + len(labels)
            loss = total / count
            if self.scheduler is not None:
                self.scheduler.step()
            if self.val is not None:
                val = self._top1(self.val)
                if val > best_val:
                    best_val, best_epoch = val, epoch
                    best_state = {k: v.detach().clone() for k, v in self.linear.state_dict().items()}
            test = self._top1(self.test)
            if test > test_max:
                test_max, test_max_epoch = test, epoch
        if best_state is not None:
            self.linear.load_state_dict(best_state)
        return {
            "test_top1": self._top1(self.test),
            "val_top1": best_val if self.val is not None else None,
            "best_epoch": best_epoch,
            "final_train_loss": loss,
            "test_max": test_max,
            "test_max_epoch": test_max_epoch,
            "feature_dim": self.feature_dim,
        }


def linear_of_checkpoint(path, member: str | None = None, protocol: str = "dino", data_name: str | None = None,
                         data_root: str | None = None, epochs: int | None = None, device: str = "auto", *,
                         augment: bool | None = None, n_last_blocks: int = 4, seed: int = 0) -> dict:
    """``sslkd eval linear``: the probe on each member's evaluated backbone (the EMA teacher's where there is one),
    trained on the run's train split (or ``data_name``'s) at the training image size."""
    from sslkd.engine.trainer import pick_device

    strategy, cfg = load_strategy(path, data_name, data_root)
    if member is not None and member not in strategy.members:
        raise UserError(f"checkpoint has no member {member!r}; its members are {', '.join(strategy.members)}")
    torch_device = pick_device(device)
    train_set = build_dataset(cfg.data.name, cfg.data.root, "train")
    test_set = build_dataset(cfg.data.name, cfg.data.root, "test")
    results = {}
    for name, backbone in strategy.eval_backbones().items():
        if member is not None and name != member:
            continue
        result = linear_probe(
            backbone.to(torch_device), train_set, test_set, protocol, torch_device, seed, epochs=epochs,
            augment=augment, n_last_blocks=n_last_blocks, image_size=cfg.data.image_size or train_set.info.image_size,
            num_workers=cfg.data.num_workers, feature_batch_size=cfg.eval.batch_size,
        )
        result["protocol"].update(checkpoint=str(path), dataset=cfg.data.name,
                                  backbone=strategy.members[name].cfg.backbone,
                                  feature_source="EMA-teacher backbone where the method has one")
        results[name] = result
    return results


def linear_key(probe: str, data_name: str | None, epochs: int | None, augment: bool | None) -> str:
    """``linear_dogo``; a probe on another data set, for other epochs or augmentation says so in its key."""
    parts = ["linear", probe] + ([data_name] if data_name else []) + ([f"{epochs}ep"] if epochs else [])
    parts += [] if augment is None else ["aug" if augment else "noaug"]
    return "_".join(parts)
