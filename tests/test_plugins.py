"""Third-party strategies: the README's example, loaded with --plugin, trains end to end."""

import json
import re
import sys
from pathlib import Path

import pytest

from sslkd.cli import main
from sslkd.errors import UserError
from sslkd.registry import STRATEGIES, Registry

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_plugin_example_trains(tmp_path, monkeypatch):
    code = re.search(r"```python\n# my_pkg/byol_like.py\n(.*?)```", README.read_text(), re.S).group(1)
    package = tmp_path / "my_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "byol_like.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    config = tmp_path / "my.yaml"
    config.write_text(
        "method: cosine_distill\n"
        "data: {name: digits, num_workers: 0, train_subset: 32, augment: {n_local: 0}}\n"
        "train: {epochs: 1, batch_size: 16}\n"
        "eval: {knn_k: [5]}\n"
        "members: {a: {backbone: cifar_resnet20, backbone_args: {widths: [4, 8, 8]}}}\n"
    )
    run = tmp_path / "run"
    assert main(["--plugin", "my_pkg.byol_like", "train", "--config", str(config), "--output-dir", str(run)]) == 0
    assert json.loads((run / "summary.json").read_text())["members"]["a"]["knn_top1"] >= 0
    del STRATEGIES._items["cosine_distill"]
    sys.modules.pop("my_pkg.byol_like", None)


def test_missing_plugin_module_is_a_clear_error(capsys):
    assert main(["--plugin", "no_such_module_xyz", "list"]) == 2
    assert "cannot import plugin module 'no_such_module_xyz'" in capsys.readouterr().err


def test_registry_suggests_closest_name():
    registry = Registry("thing")
    registry.register("alpha")(object)
    with pytest.raises(UserError, match=r"unknown thing 'alpah'. Did you mean 'alpha'\? Known: alpha."):
        registry.get("alpah")
