"""Transfer to another data set: a linear probe or full fine-tuning of a member pre-trained elsewhere.

- MOKD Table 5 (Sec. 4.3): fine-tune on CIFAR-10 / CIFAR-100, batch 1024, 100 epochs (``--mode finetune
  --protocol mokd``; the rest of the recipe is SimCLR's, see sslkd/eval/semisup.py).
- DoGo Table 3 (Sec. 4.2, 4.5): linear evaluation on out-of-distribution data sets with DoGo's probe for 50 epochs
  (``--mode linear --protocol dogo --epochs 50``).
- MCL Table 4 (Sec. 5.2): linear probe on STL-10 / Tiny-ImageNet resized to the pre-training size, SGD lr 0.1
  with step decay, batch 64, 100 epochs (``--mode linear --protocol mcl``).

Images of the target data set are resized to the member's pre-training image size (as MCL downsamples
Tiny-ImageNet to 32 px), unless ``--image-size`` says otherwise; a ViT only accepts its own size.
"""

from __future__ import annotations

from sslkd.data import build_dataset
from sslkd.errors import UserError
from sslkd.eval.checkpoints import load_members
from sslkd.eval.linear import PROTOCOLS, linear_probe, split_train_val
from sslkd.eval.semisup import FINETUNE_PROTOCOLS, _settings, finetune

MODES = ("linear", "finetune")


def transfer_of_checkpoint(path, data_name: str, data_root: str | None = None, member: str | None = None,
                           mode: str = "linear", protocol: str = "dogo", epochs: int | None = None,
                           image_size: int | None = None, seed: int = 0, device: str = "auto") -> dict:
    """Each member's top-1 on ``data_name``'s test split after a probe or fine-tuning on its train split."""
    from sslkd.engine.trainer import pick_device

    if mode not in MODES:
        raise UserError(f"unknown transfer mode {mode!r}; use linear or finetune")
    known = PROTOCOLS if mode == "linear" else FINETUNE_PROTOCOLS
    if protocol not in known:
        raise UserError(f"--protocol {protocol} is not a {mode} protocol; use one of {', '.join(sorted(known))}")
    strategy, cfg, backbones = load_members(path, member)
    source = cfg.data.name
    size = image_size or cfg.data.image_size or build_dataset(cfg.data.name, cfg.data.root, "train").info.image_size
    train_set = build_dataset(data_name, data_root, "train")
    test_set = build_dataset(data_name, data_root, "test")
    torch_device = pick_device(device)
    results = {}
    for name, backbone in backbones.items():
        if mode == "linear":
            out = linear_probe(backbone.to(torch_device), train_set, test_set, protocol, torch_device, seed,
                               epochs=epochs, image_size=size, feature_batch_size=cfg.eval.batch_size)
            result = {"top1": out["linear_top1"], "protocol": out["protocol"]}
        else:
            settings = _settings(protocol)
            train_idx, val_idx = split_train_val(train_set.labels, settings.val_fraction, seed)
            n_epochs = epochs if epochs is not None else 100
            result = finetune(backbone, train_set, test_set, train_idx, val_idx, settings, n_epochs, torch_device,
                              seed, size, cfg.eval.batch_size)
        result["protocol"].update(mode=mode, source_dataset=source, target_dataset=data_name,
                                  checkpoint=str(path), backbone=strategy.members[name].cfg.backbone)
        results[name] = result
    return results


def transfer_key(data_name: str, mode: str, protocol: str) -> str:
    return f"transfer_{data_name}_{mode}_{protocol}"
