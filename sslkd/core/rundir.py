"""The layout of a run directory in one place: what ``sslkd train`` writes there and every reader looks for."""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path

import yaml

from sslkd.errors import UserError

try:
    import fcntl
except ImportError:  # not POSIX: runs are not guarded against a second process
    fcntl = None


class RunBusy(UserError):
    """Another process holds a run directory or a table's evaluations (``hold``)."""


_held: dict[Path, tuple[int, int]] = {}  # lock files this process holds: {path: (file descriptor, depth)}


@contextmanager
def hold(lock_file: Path, wait: bool = False, busy: str = "holds it"):
    """Hold ``lock_file`` (created with its folders) for this process: an advisory ``flock`` that the kernel
    releases when the process dies, so a crash leaves nothing stale. Re-entrant within a process (``sslkd
    reproduce`` holds a run around the ``sslkd train`` it calls). Raises RunBusy("another process (pid N) " +
    ``busy``) when another process holds it, unless ``wait``."""
    key = lock_file.resolve()
    if fcntl is None or key in _held:
        descriptor, depth = _held.get(key, (-1, 0))
        _held[key] = (descriptor, depth + 1)
    else:
        lock_file.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = os.pread(descriptor, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(descriptor)
            raise RunBusy(f"another process (pid {holder}) {busy}") from None
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, str(os.getpid()).encode(), 0)
        _held[key] = (descriptor, 1)
    try:
        yield
    finally:
        descriptor, depth = _held.pop(key)
        if depth > 1:
            _held[key] = (descriptor, depth - 1)
        elif descriptor >= 0:
            os.close(descriptor)  # closing the only descriptor releases the flock


class RunDir:
    """Paths of one run's files (``config.yaml``, ``metrics.jsonl``, ``summary.json``, ``checkpoints/last.pt``)
    and readers of the two records the reports use. A finished run has a summary; a resumable one a checkpoint."""

    CHECKPOINT = Path("checkpoints") / "last.pt"
    LOCK = ".lock"
    FILES = ("config.yaml", "metrics.jsonl", "summary.json", "checkpoints", LOCK)

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def summary(self) -> Path:
        return self.path / "summary.json"

    @property
    def checkpoint(self) -> Path:
        return self.path / self.CHECKPOINT

    def read_summary(self) -> dict:
        return json.loads(self.summary.read_text())

    def read_config(self):
        """The raw config.yaml (None when empty); OSError or yaml.YAMLError when unreadable."""
        return yaml.safe_load(self.config.read_text())

    def has_run_files(self) -> bool:
        return any((self.path / name).exists() for name in self.FILES)

    @contextmanager
    def hold(self, wait: bool = False):
        """Hold the run for this process while it trains it: a second ``sslkd train`` of the same directory would
        interleave checkpoints, and ``--overwrite`` would delete a live run's files. Raises RunBusy when another
        process holds it, unless ``wait``. Folders it made for a run that never started (a config mistake) go."""
        made = [folder for folder in [self.path, *self.path.parents] if not folder.exists()]
        with hold(self.path / self.LOCK, wait,
                  f"is training '{self.path}'; wait for it to finish, or choose another --output-dir"):
            try:
                yield
            finally:
                if made and [entry.name for entry in self.path.iterdir()] == [self.LOCK]:
                    (self.path / self.LOCK).unlink()
                    for folder in made:
                        if any(folder.iterdir()):
                            break
                        folder.rmdir()
