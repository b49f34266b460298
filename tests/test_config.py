"""Config: typed validation with key paths, dotted overrides, _base_ merging."""

import pytest

from sslkd.config import Config, apply_overrides, from_dict, load_config, read_yaml
from sslkd.errors import UserError


def test_misspelt_key_names_path_and_suggestion():
    with pytest.raises(UserError, match=r"unknown config key 'train.epohcs' \(did you mean 'epochs'\?\)"):
        from_dict(Config, {"train": {"epohcs": 3}})


def test_wrong_type_names_path_and_expected_type():
    with pytest.raises(UserError, match=r"'train.batch_size': expected int, got 'big'"):
        from_dict(Config, {"train": {"batch_size": "big"}})


def test_literal_lists_allowed_values():
    with pytest.raises(UserError, match="'members.a.optimizer.name'.*'sgd'"):
        from_dict(Config, {"members": {"a": {"optimizer": {"name": "adam"}}}})


def test_overrides_parse_yaml_values_and_nest():
    data = apply_overrides({"train": {"epochs": 1}}, ["train.epochs=5", "data.augment.global_scale=[0.3, 1]", "data.root=/x"])
    cfg = from_dict(Config, data)
    assert cfg.train.epochs == 5 and cfg.data.augment.global_scale == (0.3, 1.0) and cfg.data.root == "/x"


def test_scientific_floats_without_a_dot_are_floats():
    """YAML 1.1 reads `2e-3` as a string; a float key takes it as the number a user meant, other strings stay errors."""
    data = apply_overrides({}, ["members.a.optimizer.lr=2e-3", "members.a.optimizer.min_lr=1E5"])
    opt = from_dict(Config, data).members["a"].optimizer
    assert opt.lr == 0.002 and opt.min_lr == 1e5
    with pytest.raises(UserError, match=r"'members.a.optimizer.lr': expected float or null, got '2e-3x'"):
        from_dict(Config, apply_overrides({}, ["members.a.optimizer.lr=2e-3x"]))


def test_strategy_options_validated_against_strategy(tiny_cfg):
    from sslkd.data import DatasetInfo
    from sslkd.registry import STRATEGIES

    cfg = tiny_cfg("mokd", ["strategy.feature_serch=code"])
    info = DatasetInfo("fake", 10, 32, (0.5,) * 3, (0.25,) * 3, tuple("0123456789"))
    with pytest.raises(UserError, match=r"'strategy.feature_serch' \(did you mean 'feature_search'\?\)"):
        STRATEGIES.get("mokd")(cfg, info)


def test_base_files_merge_in_order(tmp_path):
    (tmp_path / "a.yaml").write_text("train: {epochs: 3, batch_size: 8}\nmembers: {x: {backbone: cifar_resnet20}}\n")
    (tmp_path / "b.yaml").write_text("train: {epochs: 4}\n")
    (tmp_path / "c.yaml").write_text("_base_: [a.yaml, b.yaml]\nmethod: dino\ntrain: {seed: 7}\n")
    data = read_yaml(tmp_path / "c.yaml")
    assert data["train"] == {"epochs": 4, "batch_size": 8, "seed": 7}


def test_null_over_a_base_mapping_removes_it(tmp_path):
    (tmp_path / "a.yaml").write_text("members: {x: {backbone: cifar_resnet20, module_optimizers: {head: {lr: 0.1}}}}\n")
    (tmp_path / "b.yaml").write_text("_base_: a.yaml\nmethod: dino\nmembers: {x: {module_optimizers: null}}\n")
    assert read_yaml(tmp_path / "b.yaml")["members"]["x"] == {"backbone": "cifar_resnet20"}
    assert load_config(None, str(tmp_path / "b.yaml"), []).members["x"].module_optimizers == {}


def test_method_and_config_file_must_agree(tmp_path):
    (tmp_path / "c.yaml").write_text("method: dino\nmembers: {x: {backbone: cifar_resnet20}}\n")
    with pytest.raises(UserError, match="disagrees"):
        load_config("mokd", str(tmp_path / "c.yaml"), [])
