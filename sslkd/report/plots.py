"""Training curves of a run directory as PNGs: loss terms, learning rates and k-NN top-1 over training.

Read from RUN_DIR/metrics.jsonl (one JSON object per logged step; k-NN records carry ``knn/<member>``); written at
the end of every run by the trainer and on demand by ``sslkd plot RUN_DIR``.
"""

from __future__ import annotations

import json
from pathlib import Path

from sslkd.core.rundir import RunDir
from sslkd.errors import UserError

NOT_CURVES = {"step", "epoch", "images_per_s", "skipped_steps", "nonfinite_terms"}


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = RunDir(run_dir).metrics
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


def floors(records: list[dict]) -> dict[str, float]:
    """Each member's k-NN at step 0 (the trainer's first k-NN record), the floor its curve must rise above."""
    first = next((r for r in records if r.get("step") == 0 and any(k.startswith("knn/") for k in r)), {})
    return {key[4:]: value for key, value in first.items() if key.startswith("knn/")}


def below_floor(data: dict, floor: dict[str, float]) -> list[str]:
    """Members whose last k-NN after training is at or below their floor."""
    return [name for name, (xs, ys) in data["knn"].items()
            if name in floor and len(xs) > 1 and xs[-1] > 0 and ys[-1] <= floor[name]]


def plot_run(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Write losses.png, lr.png and knn.png (those with data) to ``out_dir`` (default RUN_DIR/plots)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    data, floor = curves(records), floors(records)
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
            line, = ax.plot(xs, ys, label=name, marker="o" if len(xs) < 20 else None,
                            linewidth=2.0 if name == "loss" else 1.0)
            if group == "knn" and name in floor:
                ax.axhline(floor[name], color=line.get_color(), linestyle="--", linewidth=0.8,
                           label=f"{name} random init {floor[name]:.1f}")
        if log and all(y > 0 for _, ys in data[group].values() for y in ys):
            ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        below = below_floor(data, floor) if group == "knn" else []
        ax.set_title(title + (f"\nWARNING: {', '.join(below)} at or below random init" if below else ""),
                     fontsize=9, color="red" if below else "black")
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out_dir / f"{'losses' if group == 'loss' else group}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def _title(run_dir: Path) -> str:
    files = RunDir(run_dir)
    if files.summary.is_file():
        s = files.read_summary()
        return f"{s['method']} on {s['dataset']}, {s['epochs']} epochs, seed {s['seed']} ({run_dir.name})"
    return str(run_dir)
