"""Golden numerics of every preset: a refactor must not change what any method computes.

Every registered method's default config, shrunk to tiny members (4-channel CNNs, a 1-block ViT, narrow heads),
trains two steps on 32 digits with one thread. Its logged losses, and for every weight and buffer of the checkpoint
(students, EMA teachers, centers, queues, banks) a fingerprint (float64 sum, sum of squares, first and middle entry)
of its initial value and of its change over the two steps, must equal tests/golden/presets.json to float rounding.
The change is compared relative to its own size (1e-3 of its norm), not to the weight's: two steps move a weight
by ~1e-5 of itself, so a weight-relative check could not tell a wrong gradient from rounding.

Rounding differs between CPUs (AVX2 and AVX-512 kernels sum in different orders), and some updates are made of
rounding alone: a bias whose gradient is zero by construction (a key bias, which the softmax cancels; a bias in
front of a BatchNorm) gets Adam's normalised noise, and 4-channel BatchNorms amplify rounding over two steps. So the
file also records, per tensor, how far its change moves when every starting weight is nudged by 1e-6 of itself
(``spread``: the largest move over two nudged runs, per fingerprint entry), and each entry may differ by
SPREAD_FACTOR times that on top of 1e-3 of the norm. A change the nudge does not move must still match. A
deliberate change of numerics regenerates the file and says why in its commit:

    python tests/test_golden.py                 # rewrites tests/golden/presets.json
    python tests/test_golden.py --spread-only   # keeps its values, re-measures the spreads (how this file's were made)
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path

import pytest
import torch

GOLDEN = Path(__file__).parent / "golden" / "presets.json"
LOSS_RTOL = 1e-5
INIT_RTOL = 1e-6
CHANGE_RTOL = 1e-3  # of the change's own norm
NUDGE = 1e-6  # relative size of the starting-weight perturbation that measures each change's rounding spread
NUDGED_RUNS = 2
SPREAD_FACTOR = 10.0
METHODS = ("byol", "dino", "dml", "dogo", "lmcl", "mcl", "mocov2", "mocov3", "mokd", "sdssl", "simclr", "simsiam",
           "supervised")
COMMON = ["train.epochs=2", "train.batch_size=16", "data.train_subset=32", "data.num_workers=0", "train.log_every=1",
          "train.device=cpu", "train.seed=0", "eval.knn_k=[5]"]
TINY_VIT = "{img_size: 32, patch_size: 8, depth: 1, embed_dim: 24, num_heads: 2}"
NARROW = {"out_dim": 16, "hidden_dim": 16, "bottleneck_dim": 8, "proj_hidden_dim": 16, "pred_hidden_dim": 16,
          "layer_proj_hidden_dim": 16, "embed_dim": 8, "thead_dim": 24, "thead_depth": 1, "thead_num_heads": 2}


def tiny_overrides(method: str) -> list[str]:
    """The method's default config with every member shrunk (by its backbone) and every head dimension narrowed
    (the strategy's own option names), whatever the members are called."""
    from sslkd.config import load_config
    from sslkd.registry import STRATEGIES

    cfg = load_config(method, None, [])
    overrides = list(COMMON)
    for name, member in cfg.members.items():
        if member.backbone.startswith("vit"):
            overrides += [f"members.{name}.backbone_args={TINY_VIT}", f"members.{name}.drop_path_rate=0",
                          f"members.{name}.backbone=vit_tiny_patch16_224"]
        else:
            overrides += [f"members.{name}.backbone=cifar_resnet20", f"members.{name}.backbone_args={{widths: [4, 8, 8]}}"]
    if cfg.data.image_size:
        overrides += ["data.image_size=32", "data.augment.global_size=32", "data.augment.local_size=16"]
    options = STRATEGIES.get(method).Options
    fields = {f.name for f in dataclasses.fields(options)} if dataclasses.is_dataclass(options) else set()
    overrides += [f"strategy.{key}={value}" for key, value in NARROW.items() if key in fields]
    return overrides


def fingerprint(tensor: torch.Tensor) -> list[float]:
    """float64 sum, sum of squares, first and middle entries of the flattened tensor."""
    flat = tensor.detach().reshape(-1).to(torch.float64)
    if flat.numel() == 0:
        return [0.0, 0.0]
    return [float(flat.sum()), float((flat * flat).sum()), float(flat[0]), float(flat[flat.numel() // 2])]


def run_preset(method: str, run_dir: Path, nudge_seed: int | None = None) -> dict:
    """Two steps of the tiny preset: its losses per step, and per checkpointed tensor the fingerprints of its
    initial value and of its change. ``nudge_seed``: first multiply every starting tensor by 1 + NUDGE * N(0, 1)."""
    from sslkd.config import load_config
    from sslkd.engine.trainer import Trainer

    torch.set_num_threads(1)
    trainer = Trainer(load_config(method, None, tiny_overrides(method)), run_dir)
    start = {k: v for k, v in trainer.strategy.state_dict().items() if torch.is_tensor(v) and v.is_floating_point()}
    if nudge_seed is not None:
        generator = torch.Generator().manual_seed(nudge_seed)
        with torch.no_grad():
            for tensor in start.values():
                tensor.mul_(1 + NUDGE * torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype))
    initial = {k: v.detach().clone() for k, v in start.items()}
    trainer.fit(stop_at_epoch=1)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [{k: v for k, v in r.items() if k != "images_per_s" and isinstance(v, float)}
              for r in records if "loss" in r]
    state = torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)["strategy"]
    tensors = {k: {"initial": fingerprint(initial[k]), "change": fingerprint(v - initial[k]), "numel": v.numel()}
               for k, v in state.items() if k in initial}
    return {"losses": losses, "tensors": tensors}


def close(a: float, b: float, rtol: float) -> bool:
    return math.isclose(a, b, rel_tol=rtol, abs_tol=1e-12)


def change_close(got: list[float], want: list[float], numel: int, spread: list[float]) -> bool:
    """Fingerprints of a change agree to CHANGE_RTOL of its norm (sum: of the largest sum it could have) plus
    SPREAD_FACTOR times its measured rounding spread."""
    if len(got) != len(want):
        return False
    norm = math.sqrt(max(want[1], 0.0))
    scales = [norm * math.sqrt(numel), want[1], norm, norm][:len(want)]
    return all(abs(g - w) <= CHANGE_RTOL * s + SPREAD_FACTOR * d + 1e-12
               for g, w, s, d in zip(got, want, scales, spread))


def tensor_close(got: dict, want: dict) -> bool:
    return (len(got["initial"]) == len(want["initial"])
            and all(close(g, w, INIT_RTOL) for g, w in zip(got["initial"], want["initial"]))
            and change_close(got["change"], want["change"], want["numel"], want["spread"]))


def golden_preset(method: str, folder: Path) -> dict:
    """The preset's record, with each tensor's spread: the largest move of each change fingerprint entry over
    NUDGED_RUNS runs from nudged starting weights."""
    record = run_preset(method, folder / method)
    nudged = [run_preset(method, folder / f"{method}_nudged{seed}", nudge_seed=seed) for seed in range(NUDGED_RUNS)]
    for name, tensor in record["tensors"].items():
        tensor["spread"] = [max(abs(run["tensors"][name]["change"][i] - value) for run in nudged)
                            for i, value in enumerate(tensor["change"])]
    return record


@pytest.mark.parametrize("method", METHODS)
def test_preset_numerics_unchanged(method, tmp_path):
    golden = json.loads(GOLDEN.read_text())[method]
    measured = run_preset(method, tmp_path / method)
    assert len(measured["losses"]) == len(golden["losses"]), "number of logged steps changed"
    for step, (got, want) in enumerate(zip(measured["losses"], golden["losses"])):
        assert got.keys() == want.keys(), f"step {step}: loss terms changed"
        changed = {k: (got[k], want[k]) for k in want if not close(got[k], want[k], LOSS_RTOL)}
        assert not changed, f"step {step}: losses (now, golden) {changed}"
    assert measured["tensors"].keys() == golden["tensors"].keys(), "checkpointed tensors renamed, added or removed"
    changed = [k for k, want in golden["tensors"].items() if not tensor_close(measured["tensors"][k], want)]
    assert not changed, f"{len(changed)} tensors changed, e.g. {changed[:5]}"


def regenerate(spread_only: bool = False) -> None:
    """Rewrite the file on this machine; ``spread_only`` keeps the recorded values and re-measures the spreads."""
    import tempfile

    from sslkd.registry import load_plugins

    load_plugins()
    GOLDEN.parent.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        presets = {m: golden_preset(m, Path(tmp)) for m in METHODS}
    if spread_only:
        recorded = json.loads(GOLDEN.read_text())
        for method, preset in recorded.items():
            for name, tensor in preset["tensors"].items():
                tensor["spread"] = presets[method]["tensors"][name]["spread"]
        presets = recorded
    GOLDEN.write_text("{\n" + ",\n".join(f"{json.dumps(m)}: {json.dumps(p)}" for m, p in presets.items()) + "\n}\n")
    print(f"wrote {GOLDEN}")


if __name__ == "__main__":
    sys.exit(regenerate(spread_only="--spread-only" in sys.argv[1:]))
