"""Representation analyses of SDSSL Sec. 4.4, per layer of a frozen backbone.

- alignment L_ali = E_pos ||f(x) - f(y)||^gamma over positive pairs (two augmented views of one image) (Eq. 7);
- uniformity L_uni = log E_data exp(-t ||f(x) - f(y)||^2) over pairs of different images (Eq. 8);
- negative alignment L^n_ali = E_data ||f(x) - f(y)||^gamma (Eq. 9), and the ratios the paper plots:
  R = L^n_ali / L_ali (Fig. 8) and -L_uni / L_ali (Fig. 7);
- linear CKA (Kornblith et al., 2019) between every pair of layers (Fig. 6).

Features are each layer's pooled output (``Backbone.forward_intermediates``), L2-normalised for the alignment and
uniformity metrics (Wang & Isola define them on the hypersphere) and raw for CKA. Positive pairs are the run's own
two training views of each test image (its p_pos); the data pairs are all pairs of distinct images within a view
(averaged over the two views); CKA uses the un-augmented test images.
``sslkd eval analyze --checkpoints RUN [RUN...] --out DIR`` writes the numbers (JSON, CSV per run; mean +- std over seeds per framework), the metric curves against layer and the
CKA heat-maps (one line or map per framework, over its seeds).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

from sslkd.errors import UserError


def alignment(x: torch.Tensor, y: torch.Tensor, gamma: float = 2.0) -> float:
    """L_ali (SDSSL Eq. 7): mean of ||x_i - y_i||^gamma over the paired rows (positive pairs)."""
    return (x.float() - y.float()).norm(dim=1).pow(gamma).mean().item()


def _pairwise_distances(x: torch.Tensor) -> torch.Tensor:
    """||x_i - x_j|| for every pair i < j of distinct rows."""
    return torch.pdist(x.float())


def uniformity(x: torch.Tensor, t: float = 2.0) -> float:
    """L_uni (SDSSL Eq. 8): log of the mean Gaussian potential exp(-t ||x_i - x_j||^2) over pairs i < j."""
    return torch.logsumexp(-t * _pairwise_distances(x).pow(2), dim=0).sub(
        torch.log(torch.tensor(x.shape[0] * (x.shape[0] - 1) / 2.0))).item()


def negative_alignment(x: torch.Tensor, gamma: float = 2.0) -> float:
    """L^n_ali (SDSSL Eq. 9): mean of ||x_i - x_j||^gamma over pairs i < j of different images."""
    return _pairwise_distances(x).pow(gamma).mean().item()


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA of two feature matrices over the same n examples (columns centred):
    ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F); 1 for X with itself, invariant to orthogonal maps and isotropic
    scaling of either side. Computed in float64."""
    x = x.double() - x.double().mean(dim=0, keepdim=True)
    y = y.double() - y.double().mean(dim=0, keepdim=True)
    cross = (y.T @ x).norm() ** 2
    return (cross / ((x.T @ x).norm() * (y.T @ y).norm())).item()


def cka_matrix(features: dict[str, torch.Tensor]) -> pd.DataFrame:
    """Linear CKA between every pair of the given layers (symmetric, ones on the diagonal)."""
    names = list(features)
    matrix = pd.DataFrame(1.0, index=names, columns=names)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            matrix.loc[a, b] = matrix.loc[b, a] = linear_cka(features[a], features[b])
    return matrix


def layer_metrics(view_a: torch.Tensor, view_b: torch.Tensor, gamma: float = 2.0, t: float = 2.0) -> dict[str, float]:
    """Every Sec. 4.4 number of one layer from L2-normalised features of two views of the same images (rows
    paired): alignment over the pairs; uniformity and negative alignment over distinct images within each view,
    averaged over the two views (as Wang & Isola average uniformity)."""
    ali = alignment(view_a, view_b, gamma)
    uni = (uniformity(view_a, t) + uniformity(view_b, t)) / 2
    neg = (negative_alignment(view_a, gamma) + negative_alignment(view_b, gamma)) / 2
    return {"alignment": ali, "uniformity": uni, "negative_alignment": neg,
            "alignment_ratio": neg / ali if ali > 0 else float("inf"),
            "uniformity_alignment_ratio": -uni / ali if ali > 0 else float("inf")}


def _pooled(backbone, batches, names: list[str], device) -> dict[str, torch.Tensor]:
    """Each named layer's pooled features (raw, CPU float32) of the images of ``batches``, in order."""
    pooled: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    for images, _, _ in batches:
        for n, feats in backbone.forward_intermediates(images.to(device), names).items():
            pooled[n].append(feats.float().cpu())
    return {n: torch.cat(chunks) for n, chunks in pooled.items()}


class _Views:
    """Applies a strategy's training transform and keeps its first two views (the run's positive pairs)."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, img):
        views = self.transform(img)
        if len(views) < 2:
            raise UserError("this method's training transform makes one view; the alignment needs two")
        return views[:2]


@torch.no_grad()
def analyze_checkpoint(path, member: str | None = None, max_images: int = 2000, seed: int = 0,
                       gamma: float = 2.0, t: float = 2.0, device: str = "auto") -> dict:
    """{member: {"layers": [per-layer metrics], "cka": CKA DataFrame, "settings": ...}} of one checkpoint, on up to
    ``max_images`` test images chosen by ``seed``."""
    from sslkd.data import build_dataset
    from sslkd.data.transforms import EvalTransform
    from sslkd.engine.trainer import pick_device
    from sslkd.eval.checkpoints import load_members

    strategy, cfg, backbones = load_members(path, member)
    torch_device = pick_device(device)
    test = build_dataset(cfg.data.name, cfg.data.root, "test")
    if max_images < 2:
        raise UserError(f"--max-images={max_images}: the metrics need at least 2 images")
    order = torch.randperm(len(test), generator=torch.Generator().manual_seed(seed))[:max_images].sort().values
    size = cfg.data.image_size or test.info.image_size
    plain = build_dataset(cfg.data.name, cfg.data.root, "test")
    plain.transform = EvalTransform(size, test.info.mean, test.info.std)
    test.transform = _Views(strategy.train_transform())
    plain_loader = DataLoader(Subset(plain, order.tolist()), batch_size=cfg.eval.batch_size)
    results = {}
    for name, backbone in backbones.items():
        backbone.to(torch_device).eval()
        names = backbone.intermediate_names()
        raw = _pooled(backbone, plain_loader, names, torch_device)
        torch.manual_seed(seed)
        pairs = DataLoader(Subset(test, order.tolist()), batch_size=cfg.eval.batch_size)
        batches = [(views, labels, indices) for views, labels, indices in pairs]
        views = [_pooled(backbone, ((v[i], None, None) for v, _, _ in batches), names, torch_device) for i in (0, 1)]
        per_layer = []
        for number, block in enumerate(names, start=1):
            a, b = (F.normalize(v[block], dim=1) for v in views)
            metrics = layer_metrics(a, b, gamma, t)
            per_layer.append({"layer": number, "block": block, **metrics})
        cka = cka_matrix(raw)
        cka.index = cka.columns = list(range(1, len(names) + 1))
        results[name] = {"layers": per_layer, "cka": cka, "settings": {
            "checkpoint": str(path), "n_images": len(order), "seed": seed, "gamma": gamma, "t": t,
            "positive_pairs": f"two training views of each test image ({strategy.train_transform()!r})",
            "data_pairs": "all pairs of distinct test images within each view, averaged over the two views",
            "features": "pooled output of each block; L2-normalised for alignment/uniformity; CKA on raw features "
                        "of the un-augmented test images"}}
    return results


METRICS = (("alignment", "alignment L_ali (lower: positives closer)"),
           ("uniformity", "-L_uni (higher: more uniform)"),
           ("negative_alignment", "negative alignment L^n_ali"),
           ("alignment_ratio", "R = L^n_ali / L_ali"),
           ("uniformity_alignment_ratio", "-L_uni / L_ali"))


def summarize(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds of every metric, per framework and layer (std 0 for one seed)."""
    stats = rows.groupby(["framework", "layer"], sort=False)[[m for m, _ in METRICS]].agg(["mean", "std"])
    stats.columns = [f"{metric}_{stat}" for metric, stat in stats.columns]
    counts = rows.groupby(["framework", "layer"], sort=False)["seed"].nunique().rename("seeds")
    return stats.fillna(0.0).join(counts).reset_index()


def summary_markdown(summary: pd.DataFrame) -> str:
    """The summary as a Markdown table, each metric as mean +- std."""
    header = ["framework", "layer", *(m for m, _ in METRICS), "seeds"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in summary.iterrows():
        cells = [f"{row[f'{m}_mean']:.4f} +- {row[f'{m}_std']:.4f}" for m, _ in METRICS]
        lines.append(f"| {row['framework']} | {row['layer']} | " + " | ".join(cells) + f" | {row['seeds']} |")
    return "\n".join(lines) + "\n"


def plot_metrics(rows: pd.DataFrame, out: Path) -> Path:
    """The Sec. 4.4 numbers against layer, one line per framework (mean over seeds, band +- std) (Figs. 7-8);
    uniformity drawn as -L_uni as the paper."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(METRICS), figsize=(4 * len(METRICS), 3.5))
    for ax, (metric, title) in zip(axes, METRICS):
        for framework, group in rows.groupby("framework", sort=False):
            values = (-group[metric] if metric == "uniformity" else group[metric]).groupby(group["layer"])
            mean, std = values.mean(), values.std().fillna(0.0)
            ax.plot(mean.index, mean.values, marker="o", label=framework)
            ax.fill_between(mean.index, mean - std, mean + std, alpha=0.2)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("layer")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def plot_cka(matrices: dict[str, pd.DataFrame], out: Path) -> Path:
    """One CKA heat-map (layer x layer, 0..1) per framework, side by side (Fig. 6)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(matrices), figsize=(4.2 * len(matrices), 3.8), squeeze=False)
    for ax, (label, matrix) in zip(axes[0], matrices.items()):
        image = ax.imshow(matrix.values, vmin=0.0, vmax=1.0, cmap="magma", origin="lower")
        ticks = range(len(matrix))
        ax.set_xticks(list(ticks), list(matrix.columns))
        ax.set_yticks(list(ticks), list(matrix.index))
        ax.set_xlabel("layer")
        ax.set_ylabel("layer")
        ax.set_title(f"linear CKA: {label}", fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def analyze(checkpoints: list[str], out_dir: str | Path, member: str | None = None, max_images: int = 2000,
            seed: int = 0) -> dict[str, Path]:
    """Analyse every checkpoint; write analysis.json and analysis.csv (per run), analysis_summary.{csv,md} (mean
    +- std over seeds per framework), cka_<i>.csv (per run), metrics.png and cka.png (CKA averaged over seeds)."""
    from sslkd.eval.checkpoints import load_strategy
    from sslkd.eval.layers import run_label

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    frames, matrices, payload, frameworks = [], {}, {}, {}
    for path in checkpoints:
        _, cfg = load_strategy(path)
        framework = run_label(cfg)
        members = analyze_checkpoint(path, member, max_images, seed)
        for name, result in members.items():
            group = framework if len(members) == 1 else f"{framework} {name}"
            label = f"{group} seed {cfg.train.seed}"
            label = label if label not in matrices else f"{label} ({path})"
            frames.append(pd.DataFrame(result["layers"]).assign(
                run=label, framework=group, seed=cfg.train.seed, member=name, checkpoint=str(path)))
            matrices[label] = result["cka"]
            frameworks.setdefault(group, []).append(result["cka"])
            payload[label] = {"member": name, "layers": result["layers"], "cka": result["cka"].values.tolist(),
                              "settings": result["settings"]}
    rows = pd.concat(frames, ignore_index=True)
    summary = summarize(rows)
    paths = {"json": out_dir / "analysis.json", "csv": out_dir / "analysis.csv",
             "summary_csv": out_dir / "analysis_summary.csv", "summary_md": out_dir / "analysis_summary.md",
             "metrics_png": out_dir / "metrics.png", "cka_png": out_dir / "cka.png"}
    paths["json"].write_text(json.dumps(payload, indent=2))
    rows.to_csv(paths["csv"], index=False)
    summary.to_csv(paths["summary_csv"], index=False)
    paths["summary_md"].write_text(summary_markdown(summary))
    for i, (label, matrix) in enumerate(matrices.items()):
        paths[f"cka_csv_{i}"] = out_dir / f"cka_{i}.csv"
        matrix.to_csv(paths[f"cka_csv_{i}"], index_label=label)
    plot_metrics(rows, paths["metrics_png"])
    mean_cka = {(group if len(ms) == 1 else f"{group} (mean of {len(ms)} seeds)"): sum(ms) / len(ms)
                for group, ms in frameworks.items()}
    plot_cka(mean_cka, paths["cka_png"])
    return paths
