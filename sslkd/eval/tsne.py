"""t-SNE of a member's features (MOKD Fig. 4, DoGo Fig. 5): a 2-D embedding of test-set features, as a PNG."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from sslkd.eval.checkpoints import load_members
from sslkd.eval.features import extract_features
from sslkd.eval.protocol import eval_loaders, extraction_context


def tsne_embedding(features: np.ndarray, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """scikit-learn's (Barnes-Hut) t-SNE with PCA initialisation; [n, 2]. Perplexity is capped for small n."""
    from sklearn.manifold import TSNE

    perplexity = min(perplexity, max(1.0, (len(features) - 1) / 3))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(features)


def plot_embedding(embedding: np.ndarray, labels: np.ndarray, path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 6))
    scatter = ax.scatter(embedding[:, 0], embedding[:, 1], c=labels, cmap="tab10" if labels.max() < 10 else "tab20",
                         s=6)
    ax.legend(*scatter.legend_elements(num=None), title="class", fontsize=7, loc="best", markerscale=0.8)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def tsne_of_checkpoint(path, out_prefix: str, member: str | None = None, data_name: str | None = None,
                       data_root: str | None = None, num_images: int = 2000, seed: int = 0,
                       device: str = "auto") -> dict:
    """``sslkd eval tsne``: one PNG per member, ``<out_prefix>_<member>.png``, of ``num_images`` test images."""
    from sslkd.engine.trainer import pick_device

    strategy, cfg, backbones = load_members(path, member, data_name, data_root)
    torch_device = pick_device(device)
    _, test_loader = eval_loaders(cfg)
    dataset = test_loader.dataset
    chosen = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:num_images]
    subset = Subset(dataset, chosen.tolist())
    loader = DataLoader(subset, batch_size=cfg.eval.batch_size, shuffle=False)
    results = {}
    for name, backbone in backbones.items():
        with extraction_context(cfg, torch_device):
            feats, _ = extract_features(backbone.to(torch_device), _reindexed(loader), torch_device)
        labels = dataset.labels[chosen].numpy()
        embedding = tsne_embedding(feats.numpy(), seed)
        png = f"{out_prefix}_{name}.png"
        backbone_name = strategy.members[name].cfg.backbone
        plot_embedding(embedding, labels, png, f"{name} ({backbone_name}), {cfg.data.name} test")
        results[name] = {"png": png, "protocol": {"n_images": len(chosen), "dataset": cfg.data.name,
                                                  "split": "test", "seed": seed, "features": "L2-normalised pooled "
                                                  "features of the evaluated backbone", "backbone": backbone_name,
                                                  "checkpoint": str(path)}}
    return results


class _reindexed:
    """A loader over a Subset that yields subset positions as indices (extract_features places rows by index)."""

    def __init__(self, loader: DataLoader):
        self.loader, self.dataset = loader, loader.dataset

    def __iter__(self):
        start = 0
        for images, labels, _ in self.loader:
            yield images, labels, torch.arange(start, start + len(images))
            start += len(images)
