"""Runs are labelled from their summary.json: the trainer records each member's backbone options and the strategy's
options there, and the report reads them without config.yaml; older summaries, which lack them, still take them
from config.yaml."""

import json

import pytest
import yaml

from sslkd.cli import main
from sslkd.errors import UserError
from sslkd.report import compare_table, render
from sslkd.report.mcl import _lmcl_terms
from sslkd.report.records import load_runs, member_objectives, strategy_options
from sslkd.report.sdssl import sdssl_framework

TINY_DOGO = ["train.epochs=1", "train.batch_size=16", "train.log_every=1", "data.train_subset=64",
             "data.num_workers=0", "eval.knn_k=[5]", "strategy.simclr={hidden_dim: 16, out_dim: 8}",
             "strategy.simsiam={hidden_dim: 16, out_dim: 16, pred_hidden_dim: 8}",
             "members.small.backbone_args={widths: [4, 8, 8]}", "members.large.backbone_args={widths: [4, 8, 8]}",
             "strategy.objectives={large: simsiam}"]
NARROW = "[widths=[4, 8, 8]]"


def test_a_fresh_run_records_its_labels_and_is_labelled_without_config_yaml(tmp_path):
    run = tmp_path / "dogo"
    assert main(["train", "--method", "dogo", "--output-dir", str(run), *TINY_DOGO]) == 0
    summary = json.loads((run / "summary.json").read_text())
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert summary["strategy"] == config["strategy"]
    assert summary["strategy"]["objectives"] == {"small": "simclr", "large": "simsiam"}
    for name, member in summary["members"].items():
        assert member["backbone_args"] == config["members"][name]["backbone_args"] == {"widths": [4, 8, 8]}
        assert member["small_image_stem"] is False

    (run / "config.yaml").unlink()
    assert list(load_runs([run]).backbone) == ["cifar_resnet20" + NARROW, "cifar_resnet32" + NARROW]
    assert member_objectives(run) == {"small": "simclr", "large": "simsiam"}
    assert f"cifar_resnet32{NARROW} [simsiam]" in render(compare_table([run], "dogo_table1"))


def write_summary(run_dir, method, strategy=None, config=None, backbone_args=None):
    """A finished run's summary.json; ``strategy`` given: recorded as the trainer records it now; ``config``: a
    config.yaml beside it."""
    run_dir.mkdir(parents=True)
    member = {"backbone": "vit_tiny_patch16_224", "paper_name": None, "knn_top1": 50.0, "linear_top1": None}
    if strategy is not None:
        member.update(backbone_args=backbone_args or {}, small_image_stem=False)
    summary = {"method": method, "dataset": "digits", "seed": 0, "epochs": 1, "tag": None, "config_file": None,
               "members": {"vit": member}, **({"strategy": strategy} if strategy is not None else {})}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    if config is not None:
        (run_dir / "config.yaml").write_text(yaml.safe_dump(config))


def test_sdssl_and_lmcl_labels_come_from_the_summary(tmp_path):
    write_summary(tmp_path / "sd_byol", "sdssl", {"base": "byol", "layers": "all", "beta": 1.0},
                  backbone_args={"img_size": 32, "depth": 2})
    write_summary(tmp_path / "byol", "sdssl", {"base": "byol", "layers": [], "beta": 0.0})
    write_summary(tmp_path / "lmcl", "lmcl", {"terms": ["icl", "vcl"]})
    assert sdssl_framework("sdssl", str(tmp_path / "sd_byol")) == "SD-BYOL"
    assert sdssl_framework("sdssl", str(tmp_path / "byol")) == "BYOL"
    assert _lmcl_terms(str(tmp_path / "lmcl")) == ("vcl", "icl")
    assert load_runs([tmp_path / "sd_byol"]).backbone.tolist() == ["vit_tiny_patch16_224[depth=2]"]


def test_older_summaries_take_their_labels_from_config_yaml(tmp_path):
    config = {"members": {"vit": {"backbone_args": {"depth": 2}}}, "strategy": {"base": "mocov3", "layers": "all"}}
    write_summary(tmp_path / "old", "sdssl", config=config)
    assert sdssl_framework("sdssl", str(tmp_path / "old")) == "SD-MoCo v3"
    assert load_runs([tmp_path / "old"]).backbone.tolist() == ["vit_tiny_patch16_224[depth=2]"]
    write_summary(tmp_path / "new", "sdssl", {"base": "simclr", "layers": []}, config=config)  # the record wins
    assert sdssl_framework("sdssl", str(tmp_path / "new")) == "SimCLR"
    assert load_runs([tmp_path / "new"]).backbone.tolist() == ["vit_tiny_patch16_224"]

    write_summary(tmp_path / "bare", "sdssl")
    with pytest.raises(UserError, match="records no strategy options in summary.json and has no readable config.yaml"):
        strategy_options(tmp_path / "bare")
