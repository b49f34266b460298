"""Multi-exit evaluation: k-NN and linear probe of every layer of a frozen backbone (SDSSL Fig. 3).

A layer's feature is the backbone's pooled output of that block (``Backbone.forward_intermediates``): for a ViT
the CLS token after the block, through the shared final norm; for a CNN the global average pool of the block's
output. The evaluated backbone is the run's usual one (the EMA teacher's where there is one).

- ``sslkd eval knn --layers all`` / ``sslkd eval linear --layers 2,4,final``: one checkpoint, one number per layer.
- ``sslkd eval multiexit --checkpoints RUN... --protocol knn|linear --out DIR``: several runs (e.g. MoCo v3 and
  SD-MoCo v3, over seeds) as a table (mean +- std over runs of the same framework) and a PNG of accuracy against
  layer, one curve per framework.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

from sslkd.errors import UserError
from sslkd.report.core import RANDOM_INIT
from sslkd.report.sdssl import framework_label


def parse_layers(spec: str | None) -> list[str] | None:
    """``--layers`` as given: ``all`` (None), or comma-separated 1-based layer numbers, block names or ``final``."""
    if spec is None or spec.strip() == "all":
        return None
    return [part.strip() for part in spec.split(",") if part.strip()]


def resolve_layers(backbone, spec: list[str] | None) -> list[str]:
    """Block names of ``spec`` in network order (numbers are 1-based; ``final`` is the last block)."""
    names = backbone.intermediate_names()
    if spec is None:
        return names
    chosen = set()
    for item in spec:
        if item == "final":
            chosen.add(names[-1])
        elif item.isdigit():
            if not 1 <= int(item) <= len(names):
                raise UserError(f"--layers has layer {item}, but this backbone has layers 1..{len(names)}; "
                                "use numbers in that range, block names or final")
            chosen.add(names[int(item) - 1])
        elif item in names:
            chosen.add(item)
        else:
            raise UserError(f"--layers names {item!r}, which this backbone does not have; use all, 1-based numbers, "
                            f"final, or block names among {names}")
    return [n for n in names if n in chosen]


def layer_number(backbone, name: str) -> int:
    return backbone.intermediate_names().index(name) + 1


@torch.no_grad()
def extract_layer_features(backbone, loader: Iterable, names: list[str], device: str | torch.device = "cpu",
                           normalize: bool = True) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Every named layer's pooled feature of every image of ``loader`` (one backbone pass per batch), in data set
    order, L2-normalised per layer when ``normalize``; and the labels."""
    n = len(loader.dataset)
    feats: dict[str, torch.Tensor] = {}
    labels = torch.zeros(n, dtype=torch.long)
    for images, batch_labels, indices in loader:
        indices = torch.as_tensor(indices, dtype=torch.long)
        pooled = backbone.forward_intermediates(images.to(device, non_blocking=True), names)
        for name, out in pooled.items():
            if name not in feats:
                feats[name] = torch.zeros(n, out.shape[1], dtype=torch.float32)
            feats[name].index_copy_(0, indices, out.float().cpu())
        labels.index_copy_(0, indices, torch.as_tensor(batch_labels, dtype=torch.long))
    if normalize:
        feats = {name: F.normalize(f, dim=1) for name, f in feats.items()}
    return feats, labels


def knn_per_layer(path, layers: str | None = "all", member: str | None = None, data_name: str | None = None,
                  data_root: str | None = None, device: str = "auto", encoder: str | None = None) -> dict:
    """{member: {"layers": {block: k-NN results (the run-end protocol)}, "protocol": ...}} of a checkpoint
    (``encoder`` replaces the run's ``eval.encoder``)."""
    from sslkd.engine.trainer import pick_device
    from sslkd.eval.checkpoints import load_members
    from sslkd.eval.protocol import eval_loaders, knn_results

    strategy, cfg, backbones = load_members(path, member, data_name, data_root, encoder)
    torch_device = pick_device(device)
    train_loader, test_loader = eval_loaders(cfg)
    num_classes = train_loader.dataset.info.num_classes
    results = {}
    for name, backbone in backbones.items():
        backbone.to(torch_device).eval()
        names = resolve_layers(backbone, parse_layers(layers))
        train_feats, train_labels = extract_layer_features(backbone, train_loader, names, torch_device)
        test_feats, test_labels = extract_layer_features(backbone, test_loader, names, torch_device)
        per_layer = {}
        for block in names:
            per_layer[block] = knn_results(train_feats[block], train_labels, test_feats[block], test_labels, cfg,
                                           num_classes)
            per_layer[block]["layer"] = layer_number(backbone, block)
        results[name] = {"layers": per_layer, "protocol": {
            "knn_k": 20, "knn_temperature": cfg.eval.knn_temperature, "dataset": cfg.data.name,
            "features": "pooled output of each block (ViT: CLS after the block and the final norm; CNN: GAP)",
            "feature_source": "EMA-teacher backbone where the method has one", "checkpoint": str(path)}}
    return results


def linear_per_layer(path, layers: str | None = "all", member: str | None = None, protocol: str = "dino",
                     data_name: str | None = None, data_root: str | None = None, epochs: int | None = None,
                     augment: bool | None = None, seed: int = 0, device: str = "auto") -> dict:
    """{member: {"layers": {block: linear-probe result}}}: one probe per layer, each on that block's feature alone."""
    from sslkd.data import build_dataset
    from sslkd.engine.trainer import pick_device
    from sslkd.eval.checkpoints import load_members
    from sslkd.eval.linear import linear_probe

    strategy, cfg, backbones = load_members(path, member, data_name, data_root)
    torch_device = pick_device(device)
    train_set = build_dataset(cfg.data.name, cfg.data.root, "train")
    test_set = build_dataset(cfg.data.name, cfg.data.root, "test")
    results = {}
    for name, backbone in backbones.items():
        backbone.to(torch_device)
        per_layer = {}
        for block in resolve_layers(backbone, parse_layers(layers)):
            per_layer[block] = linear_probe(
                backbone, train_set, test_set, protocol, torch_device, seed, epochs=epochs, augment=augment,
                layer=block, image_size=cfg.data.image_size or train_set.info.image_size,
                num_workers=cfg.data.num_workers, feature_batch_size=cfg.eval.batch_size)
            per_layer[block]["layer"] = layer_number(backbone, block)
        results[name] = {"layers": per_layer}
    return results


HEADLINE = {"knn": "knn_top1", "linear": "linear_top1"}


def layer_rows(results: dict, protocol: str) -> list[dict]:
    """Flat rows (member, layer, block, top1) of ``knn_per_layer`` / ``linear_per_layer`` results."""
    return [{"member": member, "layer": r["layer"], "block": block, "top1": r[HEADLINE[protocol]]}
            for member, result in results.items() for block, r in result["layers"].items()]


# ----------------------------------------------------------------------------------------------- several runs
def run_label(cfg) -> str:
    """A run's framework label; an untrained run (``train.epochs=0``, a proxy table's floor) is ``random init``."""
    return RANDOM_INIT if cfg.train.epochs == 0 else framework_label(cfg.method, cfg.strategy)


def multiexit_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Layers as rows, frameworks as columns, ``mean +- std`` over runs (std only with two or more runs)."""
    def cell(values: pd.Series) -> str:
        values = values.dropna()
        if values.empty:
            return ""
        return f"{values.mean():.2f}" + (f" +- {values.std(ddof=1):.2f}" if len(values) > 1 else "")

    table = rows.pivot_table(index="layer", columns="framework", values="top1", aggfunc=cell)
    order = sorted(table.columns, key=lambda c: (c.removeprefix("SD-"), c.startswith("SD-")))
    return table[order].reset_index()


def plot_multiexit(rows: pd.DataFrame, out: Path, protocol: str, title: str = "") -> Path:
    """Accuracy against layer, one line per framework (mean over runs, shaded +- std): SDSSL Fig. 3."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for framework, group in sorted(rows.groupby("framework"), key=lambda g: (g[0].removeprefix("SD-"), g[0])):
        stats = group.groupby("layer")["top1"].agg(["mean", "std"]).fillna(0.0)
        style = "-" if framework.startswith("SD-") else "--"
        color = "gray" if framework == RANDOM_INIT else None
        line, = ax.plot(stats.index, stats["mean"], style, marker="o", label=framework, color=color)
        ax.fill_between(stats.index, stats["mean"] - stats["std"], stats["mean"] + stats["std"], alpha=0.15,
                        color=line.get_color())
    ax.set_xlabel("layer")
    ax.set_ylabel(f"{'k-NN' if protocol == 'knn' else 'linear'} top-1 (%)")
    ax.set_xticks(sorted(rows.layer.unique()))
    ax.set_title(title or "multi-exit evaluation")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def multiexit(checkpoints: list[str], protocol: str, out_dir: str | Path, layers: str | None = "all",
              member: str | None = None, probe: str = "dino", epochs: int | None = None,
              augment: bool | None = None) -> dict[str, Path]:
    """Evaluate every checkpoint per layer (k-NN, or a linear probe with the ``probe`` recipe); write rows.csv,
    table.md, table.csv and multiexit_<protocol>.png."""
    from sslkd.eval.checkpoints import load_strategy
    from sslkd.report.core import render

    out_dir = Path(out_dir)
    frames = []
    for path in checkpoints:
        _, cfg = load_strategy(path)
        if protocol == "knn":
            results = knn_per_layer(path, layers, member)
        else:
            results = linear_per_layer(path, layers, member, probe, epochs=epochs, augment=augment)
        frame = pd.DataFrame(layer_rows(results, protocol))
        frames.append(frame.assign(framework=run_label(cfg), seed=cfg.train.seed, checkpoint=str(path)))
    rows = pd.concat(frames, ignore_index=True)
    table = multiexit_table(rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"rows": out_dir / f"multiexit_{protocol}_rows.csv", "md": out_dir / f"multiexit_{protocol}.md",
             "csv": out_dir / f"multiexit_{protocol}.csv", "png": out_dir / f"multiexit_{protocol}.png"}
    rows.to_csv(paths["rows"], index=False)
    table.to_csv(paths["csv"], index=False)
    paths["md"].write_text(render(table.astype(str), "md"))
    plot_multiexit(rows, paths["png"], protocol)
    return paths
