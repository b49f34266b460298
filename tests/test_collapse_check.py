"""tools/collapse_check.py tells a collapsed output from a spread one (SimSiam Fig. 2's measure)."""

import importlib.util
from pathlib import Path

import pytest
import torch

spec = importlib.util.spec_from_file_location("collapse_check", Path(__file__).resolve().parents[1] / "tools" / "collapse_check.py")
collapse_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(collapse_check)


def test_collapsed_outputs_have_no_spread_and_one_direction():
    collapsed = collapse_check.spread(torch.ones(64, 16) + 1e-9 * torch.randn(64, 16))
    assert collapsed["std"] < 1e-6 and collapsed["mean_cos"] == pytest.approx(1.0)


def test_isotropic_outputs_spread_as_one_over_root_d():
    generator = torch.Generator().manual_seed(0)
    isotropic = collapse_check.spread(torch.randn(4096, 16, generator=generator))
    assert isotropic["std"] == pytest.approx(16 ** -0.5, rel=0.05)
    assert abs(isotropic["mean_cos"]) < 0.01 and isotropic["effective_rank"] > 14


def test_every_head_of_a_mokd_member_is_measured(tiny_cfg):
    from sslkd.data import DatasetInfo
    from sslkd.registry import STRATEGIES

    torch.manual_seed(0)
    strategy = STRATEGIES.get("mokd")(tiny_cfg("mokd"), DatasetInfo("fake", 10, 32, (0.5,) * 3, (0.25,) * 3, tuple(str(i) for i in range(10)))).eval()
    images = torch.randn(8, 3, 32, 32)
    for name, member in strategy.members.items():
        measured = collapse_check.stages(member.student, images)
        assert set(measured) == {"backbone", "dino_head", "thead"}, name
        assert measured["dino_head"]["dim"] == measured["thead"]["dim"] == 32
