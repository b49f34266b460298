"""Training curves of a run directory as PNGs: loss terms, learning rates and k-NN top-1 over training.

Read from RUN_DIR/metrics.jsonl (one JSON object per logged step; k-NN records carry ``knn/<member>``); written at
the end of every run by the trainer and on demand by ``sslkd plot RUN_DIR``.
"""

from __future__ import annotations

import json
from pathlib import Path

from sslkd.errors import UserError

NOT_CURVES = {"step", "epoch", "images_per_s", "skipped_steps", "nonfinite_terms"}


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise UserError(f"'{run_dir}' has no metrics.jsonl: pass a run directory written by sslkd train")
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise UserError(f"{path} line {number} is not JSON ({exc}); the file is damaged") from exc
    return records


def curves(records: list[dict]) -> dict[str, dict[str, tuple[list[float], list[float]]]]:
    """{"loss": {term: (steps, values)}, "lr": {member: ...}, "knn": {member: (epochs, top1)}}."""
    out: dict[str, dict[str, tuple[list[float], list[float]]]] = {"loss": {}, "lr": {}, "knn": {}}
    for record in records:
        for key, value in record.items():
            if key in NOT_CURVES or not isinstance(value, (int, float)):
                continue
            group, name, x = (("lr", key[3:], record["step"]) if key.startswith("lr/")
                              else ("knn", key[4:], record["epoch"]) if key.startswith("knn/")
                              else ("loss", key, record["step"]))
            xs, ys = out[group].setdefault(name, ([], []))
            xs.append(x)
            ys.append(value)
    return out


def plot_run(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Write losses.png, lr.png and knn.png (those with data) to ``out_dir`` (default RUN_DIR/plots)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    data = curves(read_metrics(run_dir))
    out_dir = Path(out_dir) if out_dir is not None else run_dir / "plots"
    out_dir.mkdir(parents=True, exist_ok=True)
    title = _title(run_dir)
    written = []
    for group, ylabel, xlabel, log in (("loss", "loss", "step", False), ("lr", "learning rate", "step", True),
                                       ("knn", "k-NN top-1 (%)", "epoch", False)):
        if not data[group]:
            continue
        fig, ax = plt.subplots(figsize=(7, 4))
        for name, (xs, ys) in sorted(data[group].items(), key=lambda item: (item[0] != "loss", item[0])):
            ax.plot(xs, ys, label=name, marker="o" if len(xs) < 20 else None,
                    linewidth=2.0 if name == "loss" else 1.0)
        if log and all(y > 0 for _, ys in data[group].values() for y in ys):
            ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out_dir / f"{'losses' if group == 'loss' else group}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def _title(run_dir: Path) -> str:
    summary = run_dir / "summary.json"
    if summary.is_file():
        s = json.loads(summary.read_text())
        return f"{s['method']} on {s['dataset']}, {s['epochs']} epochs, seed {s['seed']} ({run_dir.name})"
    return str(run_dir)
