"""The layout of a run directory in one place: what ``sslkd train`` writes there and every reader looks for."""

from __future__ import annotations

import json
from pathlib import Path

import yaml


class RunDir:
    """Paths of one run's files (``config.yaml``, ``metrics.jsonl``, ``summary.json``, ``checkpoints/last.pt``)
    and readers of the two records the reports use. A finished run has a summary; a resumable one a checkpoint."""

    CHECKPOINT = Path("checkpoints") / "last.pt"
    FILES = ("config.yaml", "metrics.jsonl", "summary.json", "checkpoints")

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
