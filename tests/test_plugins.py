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


# ---------------------------------------------------------------------------------------- plugins in the current folder
PLUGIN_CONFIG = ("method: cosine_distill\n"
                 "data: {name: digits, num_workers: 0, train_subset: 32, augment: {n_local: 0}}\n"
                 "train: {epochs: 1, batch_size: 16}\n"
                 "eval: {knn_k: [5]}\n"
                 "members: {a: {backbone: cifar_resnet20, backbone_args: {widths: [4, 8, 8]}}}\n")


@pytest.fixture
def plugin_in_cwd(tmp_path, monkeypatch):
    """The README's plugin as cosine_plugin.py in the current folder, with that folder not on sys.path (as for the
    installed console script); unregistered again afterwards."""
    import os

    code = re.search(r"```python\n# my_pkg/byol_like.py\n(.*?)```", README.read_text(), re.S).group(1)
    (tmp_path / "cosine_plugin.py").write_text(code)
    (tmp_path / "my.yaml").write_text(PLUGIN_CONFIG)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", os.getcwd(), str(tmp_path))])
    yield tmp_path
    forget_plugin()


def forget_plugin():
    STRATEGIES._items.pop("cosine_distill", None)
    sys.modules.pop("cosine_plugin", None)


def test_plugin_module_in_the_current_folder_is_imported(plugin_in_cwd, capsys):
    assert main(["--plugin", "cosine_plugin", "list"]) == 0
    assert "cosine_distill" in capsys.readouterr().out


def test_plugin_without_a_default_config_says_what_to_pass(plugin_in_cwd, capsys):
    assert main(["--plugin", "cosine_plugin", "train", "--method", "cosine_distill"]) == 2
    err = capsys.readouterr().err
    assert "has no default config: pass --config FILE.yaml" in err and "site-packages" not in err
    assert "sslkd/configs" not in err


def test_a_plugin_run_records_its_plugin_for_later_commands(plugin_in_cwd, capsys, tmp_path_factory):
    run = plugin_in_cwd / "run"
    assert main(["--plugin", "cosine_plugin", "train", "--config", "my.yaml", "--output-dir", str(run)]) == 0
    assert "plugins:\n- cosine_plugin" in (run / "config.yaml").read_text()
    forget_plugin()  # a new process: later commands find the plugin through the run's record
    capsys.readouterr()
    assert main(["eval", "knn", "--checkpoint", str(run)]) == 0
    assert "a: k-NN top-1" in capsys.readouterr().out
    forget_plugin()
    assert main(["export", "--checkpoint", str(run), "--out", str(plugin_in_cwd / "a.safetensors")]) == 0
    forget_plugin()
    assert main(["train", "--resume", str(run)]) == 0
    forget_plugin()
    import os

    os.chdir(tmp_path_factory.mktemp("elsewhere"))  # a new process started elsewhere: the plugin file is not here
    sys.path.remove(str(plugin_in_cwd))
    assert main(["eval", "knn", "--checkpoint", str(run)]) == 2
    err = capsys.readouterr().err
    assert "cannot import plugin module 'cosine_plugin'" in err and "trained with --plugin cosine_plugin" in err


def test_unknown_strategy_hints_at_plugins(capsys):
    assert main(["train", "--method", "cosine_distill"]) == 2
    assert "If it comes from a plugin, import it first: sslkd --plugin MODULE" in capsys.readouterr().err
