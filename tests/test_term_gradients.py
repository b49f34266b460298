"""tools/term_gradients.py: each loss term's weighted gradient into its member's backbone, and their cosines."""

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from sslkd.config import load_config
from conftest import AFTER_WARM_UP, FAKE_INFO, multicrop_views
from sslkd.registry import STRATEGIES

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("term_gradients", ROOT / "tools" / "term_gradients.py")
term_gradients = importlib.util.module_from_spec(spec)
spec.loader.exec_module(term_gradients)

INFO = FAKE_INFO
views = multicrop_views


def backbone_gradient(strategy, member: str, loss_key: str) -> torch.Tensor:
    """The gradient of one named loss into ``member``'s backbone, by a plain backward pass."""
    strategy.zero_grad(set_to_none=True)
    losses = strategy.losses(strategy.network_outputs(views()), torch.zeros(4, dtype=torch.long),
                             torch.arange(4), AFTER_WARM_UP)
    strategy.discard_deferred()
    losses[loss_key].backward()
    params = [p for p in strategy.members[member].student["backbone"].parameters() if p.requires_grad]
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params])


def test_mokd_terms_carry_their_eq9_weights_and_norms_of_a_plain_backward(tiny_cfg):
    """MOKD Eq. (9): L_i = L_sm + L_st + lambda_i (L_cm + L_ct); the weights are read off autograd."""
    torch.manual_seed(0)
    strategy = STRATEGIES.get("mokd")(tiny_cfg("mokd"), INFO).train()
    measured = term_gradients.term_gradients(strategy, views(), torch.zeros(4, dtype=torch.long), AFTER_WARM_UP)
    assert set(measured) == set(strategy.members)
    for name, member in strategy.members.items():
        terms = measured[name]["terms"]
        assert set(terms) == {"sm", "st", "cm", "ct"}
        assert {term: weight for term, (_, weight, _) in terms.items()} == pytest.approx({
            "sm": 1.0, "st": 1.0, "cm": member.cfg.distill_weight, "ct": member.cfg.distill_weight})
        assert len(measured[name]["cosines"]) == 6
        for term in ("sm", "cm"):
            expected = backbone_gradient(strategy, name, f"{name}/{term}") * terms[term][1]
            assert terms[term][2] == pytest.approx(float(expected.norm()), rel=1e-4)


def test_two_term_norms_and_cosine_add_up_to_the_member_loss_gradient(tiny_cfg):
    torch.manual_seed(0)
    strategy = STRATEGIES.get("mokd")(tiny_cfg("mokd", ["strategy.loss_terms=[sm,st]"]), INFO).train()
    measured = term_gradients.term_gradients(strategy, views(), torch.zeros(4, dtype=torch.long), AFTER_WARM_UP)
    for name in strategy.members:
        (_, _, a), (_, _, b) = measured[name]["terms"]["sm"], measured[name]["terms"]["st"]
        cosine = measured[name]["cosines"]["sm", "st"]
        total = backbone_gradient(strategy, name, f"{name}/loss").norm()
        assert math.sqrt(a * a + b * b + 2 * a * b * cosine) == pytest.approx(float(total), rel=1e-4)


def test_a_method_without_named_terms_reports_the_member_loss(tiny_cfg):
    torch.manual_seed(0)
    strategy = STRATEGIES.get("dino")(tiny_cfg("dino"), INFO).train()
    measured = term_gradients.term_gradients(strategy, views(), torch.zeros(4, dtype=torch.long), AFTER_WARM_UP)
    (member,) = strategy.members
    assert set(measured[member]["terms"]) == {"loss"} and measured[member]["cosines"] == {}
    expected = backbone_gradient(strategy, member, f"{member}/loss")
    assert measured[member]["terms"]["loss"][2] == pytest.approx(float(expected.norm()), rel=1e-4)


def test_weights_of_another_method_come_from_its_loss():
    """DoGo: L_i = L_ssl + w_i L_kd (Eq. 4); w_i = members.<name>.distill_weight."""
    torch.manual_seed(0)
    tiny = ["train.batch_size=4", "data.train_subset=16", "data.num_workers=0", "eval.knn_k=[5]",
            "strategy.simclr={hidden_dim: 16, out_dim: 8}", "members.small.distill_weight=0.3",
            *(f"members.{m}.backbone_args={{widths: [4, 8, 8]}}" for m in ("small", "large"))]
    strategy = STRATEGIES.get("dogo")(load_config("dogo", None, tiny), INFO).train()
    batch = [torch.randn(4, 3, 32, 32) for _ in range(2 * len(strategy.members))]
    measured = term_gradients.term_gradients(strategy, batch, torch.zeros(4, dtype=torch.long), AFTER_WARM_UP)
    assert measured["small"]["terms"]["ssl"][1] == pytest.approx(1.0)
    assert measured["small"]["terms"]["kd"][1] == pytest.approx(0.3)
    assert measured["large"]["terms"]["kd"][1] == pytest.approx(strategy.members["large"].cfg.distill_weight)
