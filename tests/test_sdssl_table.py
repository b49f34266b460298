"""SDSSL Table 1 from fake run directories: framework rows from each run's config, mean +- std over seeds, the
change of SD rows over their base, the paper's row beside ours, missing cells as n/a."""

import json

import pytest
import yaml

from sslkd.errors import UserError
from sslkd.report import compare, compare_table

PROXY = {"backbone": "vit_tiny_patch16_224", "paper_name": "ViT-S/16"}
PROXY_ARGS = {"img_size": 32, "patch_size": 4, "depth": 4}
STANDIN = "vit_tiny_patch16_224[patch_size=4, depth=4]"


def write_run(run_dir, method, seed, knn, linear=None, strategy=None, paper_name="ViT-S/16", epochs=8):
    run_dir.mkdir(parents=True)
    member = {**PROXY, "paper_name": paper_name}
    config = {"method": method, "members": {"vit": {**member, "backbone_args": PROXY_ARGS}}, "strategy": strategy}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    # one config file per framework, as tools/reproduce.py runs them: sslkd compare pools runs of one config file
    # only when their settings agree, and frameworks differ in settings (strategy.base, strategy.layers)
    framework = "_".join([method, *(f"{k}={v}" for k, v in sorted((strategy or {}).items()))])
    summary = {"method": method, "dataset": "cifar10_subset", "seed": seed, "epochs": epochs, "tag": None,
               "config_file": f"zoo_configs/{method}/{framework}.yaml",
               "members": {"vit": {**member, "knn_top1": knn, "linear_top1": linear}}}
    (run_dir / "summary.json").write_text(json.dumps(summary))


@pytest.fixture
def sweep(tmp_path):
    """SimCLR and SD-SimCLR (sdssl, base simclr), BYOL (byol method) and SD-BYOL, 2-3 seeds; no MoCo v3 runs."""
    root = tmp_path / "runs"
    for seed, simclr, sd_simclr in zip(range(2), [40.0, 50.0], [42.0, 53.0]):
        write_run(root / f"simclr{seed}", "sdssl", seed, simclr, 60.0 + seed, {"base": "simclr", "layers": []})
        write_run(root / f"sd_simclr{seed}", "sdssl", seed, sd_simclr, 62.0, {"base": "simclr", "layers": "all"})
    write_run(root / "simclr2", "sdssl", 2, 36.0, None, {"base": "simclr", "layers": []})
    write_run(root / "byol0", "byol", 0, 45.0, strategy={})
    write_run(root / "sd_byol0", "sdssl", 0, 47.0, strategy={"base": "byol", "alpha": 0.8})  # layers: all
    return root


def test_sdssl_table1_rows_values_and_paper_numbers(sweep):
    table = compare_table([sweep])  # auto picks it: sdssl runs fit only this table
    assert list(table.columns) == ["Framework", "Source", "ViT-S/16 k-NN", "ViT-S/16 Linear"]
    assert list(table.Framework) == [f for f in ("SimCLR", "SD-SimCLR", "BYOL", "SD-BYOL", "MoCo v3", "SD-MoCo v3")
                                     for _ in range(2)]
    ours, paper = table.iloc[0::2].set_index("Framework"), table.iloc[1::2].set_index("Framework")
    assert set(ours.Source) == {"ours: cifar10_subset, 8 ep"} and set(paper.Source) == {
        "paper: ImageNet, 300 ep (SDSSL Table 1)"}
    # SimCLR: k-NN 40, 50, 36 -> 42.0 +- 7.2; linear 60, 61 (the third run has none) -> 60.5 +- 0.7 (2)
    assert ours.loc["SimCLR", "ViT-S/16 k-NN"] == "42.0 +- 7.2 (3)"
    assert ours.loc["SimCLR", "ViT-S/16 Linear"] == "60.5 +- 0.7 (2)"
    assert ours.loc["SD-SimCLR", "ViT-S/16 k-NN"] == "47.5 +- 7.8 (2) [+5.5]"
    assert ours.loc["SD-SimCLR", "ViT-S/16 Linear"] == "62.0 +- 0.0 (2) [+1.5]"
    assert ours.loc["BYOL", "ViT-S/16 k-NN"] == "45.0 (1)" and ours.loc["BYOL", "ViT-S/16 Linear"] == "n/a"
    assert ours.loc["SD-BYOL", "ViT-S/16 k-NN"] == "47.0 (1) [+2.0]" and ours.loc["SD-BYOL", "ViT-S/16 Linear"] == "n/a"
    assert list(ours.loc["SD-MoCo v3", ["ViT-S/16 k-NN", "ViT-S/16 Linear"]]) == ["n/a", "n/a"]
    assert list(paper.loc["SimCLR", ["ViT-S/16 k-NN", "ViT-S/16 Linear"]]) == ["57.8", "62.1"]
    assert list(paper.loc["SD-MoCo v3", ["ViT-S/16 k-NN", "ViT-S/16 Linear"]]) == ["68.0 [+1.5]", "71.5 [+1.5]"]
    assert f"ours in the ViT-S/16 columns: {STANDIN}" in table.attrs["notes"]
    assert "| SD-BYOL | ours: cifar10_subset, 8 ep | 47.0 (1) [+2.0] | n/a |" in compare([sweep], "sdssl_table1")


def test_sdssl_table1_leaves_out_other_runs_and_columns_by_backbone(tmp_path):
    write_run(tmp_path / "dogo_simclr", "simclr", 0, 30.0)
    write_run(tmp_path / "byol_with_pred", "sdssl", 0, 30.0, strategy={"base": "byol", "layers": []})
    with pytest.raises(UserError, match="no sdssl, byol or mocov3 runs"):
        compare_table([tmp_path], "sdssl_table1")
    write_run(tmp_path / "mocov3", "sdssl", 0, 44.0, strategy={"base": "mocov3", "layers": [], "beta": 0})
    write_run(tmp_path / "sd_mocov3", "sdssl", 0, 46.0, paper_name=None)  # defaults: base mocov3, layers all
    table = compare_table([tmp_path], "sdssl_table1").set_index("Framework")
    assert list(table.columns) == ["Source", "ViT-S/16 k-NN", "ViT-S/16 Linear", f"{STANDIN} k-NN",
                                   f"{STANDIN} Linear"]
    assert table.loc["MoCo v3", "ViT-S/16 k-NN"].tolist() == ["44.0 (1)", "66.5"]
    assert table.loc["SD-MoCo v3", f"{STANDIN} k-NN"].tolist() == ["46.0 (1)", "n/a"]
    notes = " ".join(table.attrs["notes"])
    assert "dogo_simclr: simclr is no SDSSL Table 1 framework" in notes
    assert "byol_with_pred: an sdssl run with layers [] and beta != 0" in notes


def test_sdssl_table1_untrained_runs_are_one_random_init_row_at_the_end(sweep):
    write_run(sweep / "floor", "sdssl", 0, 26.0, 30.0, {"base": "simclr", "layers": []}, epochs=0)
    write_run(sweep / "floor_sd", "sdssl", 1, 28.0, None, {"base": "simclr", "layers": "all"}, epochs=0)
    table = compare_table([sweep], "sdssl_table1")
    floor = table.iloc[-1]
    assert (floor.Framework, floor.Source) == ("random init", "ours: cifar10_subset, 0 ep")
    assert (floor["ViT-S/16 k-NN"], floor["ViT-S/16 Linear"]) == ("27.0 +- 1.4 (2)", "30.0 (1)")
    assert list(table.Framework).count("random init") == 1 and len(table) == 13
