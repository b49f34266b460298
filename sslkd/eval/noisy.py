"""Linear evaluation under noisy labels (DoGo Sec. 4.6, Fig. 3).

"With a given probability (noise rate), we corrupt every true label by randomly sampling from a uniform
distribution over number of classes." Here exactly ``round(rate x n)`` train labels, chosen with the seed, are
redrawn uniformly over all classes, so the rate is exactly what was asked (a redrawn label equals the true one
with probability 1/C, which DoGo's wording keeps); ``--exclude-true`` redraws over the other classes only, so the
fraction of wrong labels is the rate. Test labels stay clean; the probe is DoGo's (or another linear protocol), and
its validation split, cut from the train set, carries the noisy labels too (nothing clean is used to select).
"""

from __future__ import annotations

import copy

import torch

from sslkd.data import build_dataset
from sslkd.errors import UserError
from sslkd.eval.checkpoints import load_members
from sslkd.eval.linear import linear_probe


def noisy_labels(labels: torch.Tensor, rate: float, num_classes: int, seed: int,
                 exclude_true: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(noisy labels, indices redrawn): ``round(rate x n)`` labels redrawn uniformly, chosen by ``seed``."""
    if not 0 <= rate <= 1:
        raise UserError(f"noise rate {rate} must lie in [0, 1]; e.g. 0.2")
    if exclude_true and num_classes < 2:
        raise UserError("--exclude-true needs at least two classes")
    labels = torch.as_tensor(labels).long()
    generator = torch.Generator().manual_seed(seed)
    redrawn = torch.randperm(len(labels), generator=generator)[: round(rate * len(labels))]
    noisy = labels.clone()
    if exclude_true:
        shift = torch.randint(1, num_classes, (len(redrawn),), generator=generator)
        noisy[redrawn] = (labels[redrawn] + shift) % num_classes
    else:
        noisy[redrawn] = torch.randint(0, num_classes, (len(redrawn),), generator=generator)
    return noisy, torch.sort(redrawn).values


def noisy_of_checkpoint(path, rate: float, member: str | None = None, protocol: str = "dogo",
                        data_name: str | None = None, data_root: str | None = None, epochs: int | None = None,
                        exclude_true: bool = False, seed: int = 0, device: str = "auto") -> dict:
    """``sslkd eval noisy``: each member's linear-probe test top-1 when a ``rate`` of the train labels is noise."""
    from sslkd.engine.trainer import pick_device

    strategy, cfg, backbones = load_members(path, member, data_name, data_root)
    train_set = build_dataset(cfg.data.name, cfg.data.root, "train")
    test_set = build_dataset(cfg.data.name, cfg.data.root, "test")
    noisy, redrawn = noisy_labels(train_set.labels, rate, train_set.info.num_classes, seed, exclude_true)
    noisy_set = copy.copy(train_set)
    noisy_set.labels = noisy
    torch_device = pick_device(device)
    size = cfg.data.image_size or train_set.info.image_size
    results = {}
    for name, backbone in backbones.items():
        out = linear_probe(backbone.to(torch_device), noisy_set, test_set, protocol, torch_device, seed,
                           epochs=epochs, image_size=size, feature_batch_size=cfg.eval.batch_size)
        out["protocol"].update(
            noise_rate=rate, noise="uniform over the other classes" if exclude_true else "uniform over all classes",
            n_redrawn=len(redrawn), wrong_label_fraction=float((noisy != train_set.labels).float().mean()),
            test_labels="clean", dataset=cfg.data.name, checkpoint=str(path),
            backbone=strategy.members[name].cfg.backbone)
        results[name] = {"top1": out["linear_top1"], "protocol": out["protocol"]}
    return results


def noisy_key(rate: float, protocol: str, exclude_true: bool = False) -> str:
    """``noisy_0.2_dogo``; ``noisy_0.2_dogo_exclude_true`` when only the other classes are drawn."""
    return f"noisy_{rate:g}_{protocol}" + ("_exclude_true" if exclude_true else "")
