"""Where a result came from: the code (sslkd version, git revision and whether the tree had uncommitted changes), the
libraries, and how it ran (processes, device, precision), recorded in summary.json as ``provenance``."""

from __future__ import annotations

import subprocess
from importlib import metadata
from pathlib import Path

import torch

PACKAGE_ROOT = Path(__file__).resolve().parents[2]


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(PACKAGE_ROOT), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_revision() -> dict | None:
    """{"commit", "dirty"} of the checkout sslkd is imported from; None for an installed copy outside git."""
    if _git("rev-parse", "--show-toplevel") != str(PACKAGE_ROOT):
        return None
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return None
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status)}


def precision_name(dtype: torch.dtype | None) -> str:
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16-amp"}[dtype]


def run_provenance(world_size: int, device: torch.device, autocast_dtype: torch.dtype | None) -> dict:
    """The provenance record of a run made by this process."""
    return {
        "sslkd_version": package_version("sslkd"),
        "git_revision": git_revision(),
        "torch_version": torch.__version__,
        "timm_version": package_version("timm"),
        "faiss_version": _faiss_version(),
        "world_size": world_size,
        "device_type": device.type,
        "precision": precision_name(autocast_dtype),
    }


def _faiss_version() -> str | None:
    try:
        import faiss
    except ImportError:
        return None
    return getattr(faiss, "__version__", None)


def describe(provenance: dict | None) -> str:
    """One short line for tables: 'sslkd 0.1.0 @ 1a2b3c4+dirty, torch 2.4.0, cpu fp32, 2 processes'."""
    if not provenance:
        return "not recorded"
    revision = provenance.get("git_revision")
    code = f"sslkd {provenance.get('sslkd_version') or '?'}"
    if revision:
        code += f" @ {revision['commit'][:7]}{'+dirty' if revision.get('dirty') else ''}"
    processes = provenance.get("world_size")
    return (f"{code}, torch {provenance.get('torch_version')}, {provenance.get('device_type')} "
            f"{provenance.get('precision')}, {processes} process{'es' if processes != 1 else ''}")
