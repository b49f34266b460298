"""Atomic checkpoints that hold everything needed to continue a run, loaded with ``weights_only=True``."""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sslkd.errors import UserError

FORMAT = "sslkd-checkpoint-v1"


def atomic_write(path: Path, write) -> None:
    """Write through ``write(file_object)`` into a temporary file in the same directory, fsync, then rename, so
    a crash or a full disk never leaves a half-written file where a good one was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes it 0600; results are shared like any file written
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def current_umask() -> int:
    """The process umask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def remove_partial_writes(path: Path) -> None:
    """Delete the temporary files a process killed in the middle of ``atomic_write(path)`` left behind (a
    checkpoint's worth of disk each); ``path`` itself is untouched."""
    path = Path(path)
    for partial in path.parent.glob(f".{path.name}.*.tmp"):
        partial.unlink(missing_ok=True)


def save_checkpoint(path: Path, state: dict) -> None:
    atomic_write(path, lambda handle: torch.save({"format": FORMAT, **state}, handle))


def load_checkpoint(path: str | Path, method: str | None = None) -> dict:
    """Load and check a checkpoint; any problem is a UserError naming the file."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"'{path}' is a folder that holds no checkpoints/last.pt; pass a run directory or its "
                        "checkpoints/last.pt")
    if not path.is_file():
        raise UserError(f"checkpoint '{path}' does not exist; pass the path of a .pt file written by sslkd train")
    if not _looks_like_torch_save(path):
        raise UserError(f"'{path}' is not a checkpoint (a .pt file written by sslkd train); pass "
                        "RUN_DIR/checkpoints/last.pt or the run directory")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(
            f"checkpoint '{path}' is unreadable or truncated ({type(exc).__name__}); use an intact checkpoint "
            "(sslkd writes them atomically, so the previous last.pt of a run is intact)"
        ) from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"'{path}' is not an sslkd checkpoint; pass a checkpoints/last.pt written by sslkd train")
    if method is not None and state.get("method") != method:
        raise UserError(
            f"checkpoint '{path}' was written by method {state.get('method')!r}, not {method!r}; pass a {method} checkpoint"
        )
    return state


def _looks_like_torch_save(path: Path) -> bool:
    """torch.save writes a zip archive (or, in its legacy format, a pickle): a truncated one still starts so, while a
    config.yaml or an image passed by mistake does not."""
    with open(path, "rb") as handle:
        head = handle.read(4)
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"


def rng_state() -> dict[str, Any]:
    """Every RNG the run draws from, in a form ``weights_only`` loading accepts."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
