"""SimCLR and SimSiam: their losses against hand-computed values (DoGo Eq. 1 and 6), the DoGo augmentation recipe,
members trained independently, and a tiny run end to end."""

import json
import math

import pytest
import torch

from sslkd.cli import main
from sslkd.config import load_config
from sslkd.data import DatasetInfo
from sslkd.losses.contrastive import negative_cosine, nt_xent, simsiam_loss
from sslkd.registry import STRATEGIES
from sslkd.strategies.objectives import PairOutputs
from two_view_equations import assert_same_gradients, nt_xent_eq1, simsiam_eq6

INFO = DatasetInfo("fake", 10, 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), tuple(str(i) for i in range(10)))
HEADS = {"simclr": ["strategy.hidden_dim=16", "strategy.out_dim=8"],
         "simsiam": ["strategy.hidden_dim=16", "strategy.out_dim=16", "strategy.pred_hidden_dim=8"]}


def tiny(method: str, members=("cnn",), epochs: int = 1) -> list[str]:
    """A few steps of tiny CIFAR ResNets on 64 digits, with tiny heads."""
    overrides = [f"train.epochs={epochs}", "train.batch_size=16", "train.log_every=1", "data.train_subset=64",
                 "data.num_workers=0", "eval.knn_k=[5]", *HEADS[method]]
    return overrides + [f"members.{m}.backbone_args={{widths: [4, 8, 8]}}" for m in members]


def build(method: str, extra=()):
    torch.manual_seed(0)
    return STRATEGIES.get(method)(load_config(method, None, tiny(method) + list(extra)), INFO).train()


def views(batch=4, n=2):
    torch.manual_seed(1)
    return [torch.randn(batch, 3, 32, 32) for _ in range(n)]


def cosine(a, b):
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def test_nt_xent_by_hand():
    """DoGo Eq. (1) over 2B = 4 embeddings: anchor k's positive is its other view, the other two are negatives."""
    z_a, z_b = [[1.0, 0.0], [0.6, 0.8]], [[0.8, 0.6], [0.0, 1.0]]
    z, tau = z_a + z_b, 0.5
    positive = {0: 2, 1: 3, 2: 0, 3: 1}
    expected = 0.0
    for k in range(4):
        others = [math.exp(cosine(z[k], z[j]) / tau) for j in range(4) if j != k]
        expected -= math.log(math.exp(cosine(z[k], z[positive[k]]) / tau) / sum(others))
    got = nt_xent(torch.tensor(z_a) * 3.0, torch.tensor(z_b), tau)  # cosine similarity: the scale does not matter
    assert got.item() == pytest.approx(expected / 4, rel=1e-5)


def test_simsiam_loss_by_hand_and_stop_gradient():
    """1/2 D(p_a, z_b) + 1/2 D(p_b, z_a), D = -cosine averaged over the batch (DoGo Eq. 6)."""
    p_a, p_b = [[1.0, 2.0], [0.5, -1.0]], [[-1.0, 1.0], [2.0, 0.0]]
    z_a, z_b = [[0.0, 1.0], [1.0, 1.0]], [[3.0, 4.0], [-1.0, 0.5]]
    d = lambda p, z: -sum(cosine(pi, zi) for pi, zi in zip(p, z)) / 2  # noqa: E731
    tensors = [torch.tensor(t, requires_grad=True) for t in (p_a, p_b, z_a, z_b)]
    got = simsiam_loss(*tensors)
    assert got.item() == pytest.approx(0.5 * d(p_a, z_b) + 0.5 * d(p_b, z_a), rel=1e-6)
    got.backward()
    assert tensors[0].grad.abs().sum() > 0 and tensors[1].grad.abs().sum() > 0
    assert tensors[2].grad is None and tensors[3].grad is None  # the stop-gradient side
    assert negative_cosine(torch.tensor([[1.0, 0.0]]), torch.tensor([[2.0, 0.0]])).item() == pytest.approx(-1.0)


def test_views_follow_dogo_recipe_at_the_crop_size():
    strategy = build("simclr", ["data.augment.global_size=24"])
    transform = strategy.train_transform()
    out = transform(torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8))
    assert len(out) == 2 and all(v.shape == (3, 24, 24) and v.dtype == torch.float32 for v in out)
    view = transform.views[0]
    assert view.crop.scale == (0.08, 1.0)
    assert view.jitter_p == 0.8 and view.jitter.hue == pytest.approx((-0.2, 0.2))
    assert view.jitter.brightness == view.jitter.contrast == view.jitter.saturation == pytest.approx((0.2, 1.8))
    assert view.gray_p == 0.2 and view.blur_p == 0 and view.solarize_p == 0


@pytest.mark.parametrize("method", ["simclr", "simsiam"])
def test_members_train_alone_without_teacher(method):
    strategy = build(method, ["members.cnn2={backbone: cifar_resnet20, backbone_args: {widths: [4, 8, 8]}}"])
    v = views()
    losses = strategy(v, None, None, None)
    assert set(losses) == {"cnn/loss", "cnn2/loss", "loss"}
    cnn = strategy.members["cnn"]
    assert cnn.teacher is None and cnn.eval_backbone() is cnn.backbone
    objective = strategy.objective
    expected = objective.loss(objective.embed(cnn.student, None, v[0], v[1]))
    assert losses["cnn/loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    losses["cnn/loss"].backward()
    assert all(p.grad is None for p in strategy.members["cnn2"].student.parameters())
    assert all(p.grad is not None for p in cnn.student.parameters())


TAU_C = 0.3  # tau_c of DoGo Eq. (1), not the default 0.5
SECOND_MEMBER = "members.cnn2={backbone: cifar_resnet20, backbone_args: {widths: [4, 8, 8]}}"


@pytest.mark.parametrize("method", ["simclr", "simsiam"])
def test_one_step_matches_the_paper_term_by_term_and_gradient_by_gradient(method):
    """Two members in float64, one step: each member's loss and the gradient it sends to every head output equal
    DoGo Eq. (1) (SimCLR, tau_c = 0.3) or Eq. (6) (SimSiam) written out in the test, to 1e-12; a member's loss
    reaches only its own outputs, and SimSiam's projections z only as stop-gradient targets (no gradient)."""
    extra = [SECOND_MEMBER] + ([f"strategy.temperature={TAU_C}"] if method == "simclr" else [])
    strategy = build(method, extra).double()
    v = [view.double() for view in views(batch=6)]
    one_step = strategy(v, None, None, None)
    by_hand = {}
    for name, member in strategy.members.items():
        student = member.student
        z = [student["projector"](student["backbone"](view)) for view in v]
        p = [student["predictor"](projection) for projection in z] if method == "simsiam" else None
        by_hand[name] = (z, p)
    for name, out in strategy.network_outputs(v).items():
        z, p = by_hand[name]
        for got, expected in zip((*out.z, *(out.p or ())), (*z, *(p or ()))):
            torch.testing.assert_close(got, expected, rtol=0, atol=0)

    def leaves_of():
        copy = lambda tensors: tuple(t.detach().clone().requires_grad_() for t in tensors)  # noqa: E731
        return {name: PairOutputs(z=copy(z), p=copy(p) if p is not None else None) for name, (z, p) in by_hand.items()}

    leaves, reference_leaves = leaves_of(), leaves_of()
    terms = strategy.losses(leaves, None, None, None)
    reference = {f"{name}/loss": nt_xent_eq1(*out.z, TAU_C) if method == "simclr" else simsiam_eq6(*out.p, *out.z)
                 for name, out in reference_leaves.items()}
    reference["loss"] = reference["cnn/loss"] + reference["cnn2/loss"]
    assert set(terms) == set(one_step) == set(reference) == {"cnn/loss", "cnn2/loss", "loss"}
    flat = lambda outputs: [t for out in outputs.values() for t in (*out.z, *(out.p or ()))]  # noqa: E731
    for name, term in terms.items():
        assert term.dtype == torch.float64
        torch.testing.assert_close(one_step[name], term, rtol=1e-12, atol=1e-12)
        assert_same_gradients(term, flat(leaves), reference[name], flat(reference_leaves))
    grads = torch.autograd.grad(terms["cnn/loss"], flat(leaves), allow_unused=True)
    reached = {id(leaf) for leaf, grad in zip(flat(leaves), grads) if grad is not None and grad.any()}
    trained = leaves["cnn"].p if method == "simsiam" else leaves["cnn"].z
    assert reached == {id(leaf) for leaf in trained}


def test_simclr_projector_is_dogos():
    projector = build("simclr").members["cnn"].student["projector"]
    first, norm, _, last = projector
    assert first.bias is None and isinstance(norm, torch.nn.BatchNorm1d) and last.bias is not None
    assert (first.in_features, first.out_features, last.out_features) == (8, 16, 8)


@pytest.mark.parametrize("method", ["simclr", "simsiam"])
def test_train_end_to_end(tmp_path, method):
    run = tmp_path / method
    assert main(["train", "--method", method, "--output-dir", str(run), *tiny(method)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["method"] == method and 0 <= summary["members"]["cnn"]["knn_top1"] <= 100
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    first_step = next(record for record in records if "loss" in record)  # evaluation records carry no loss
    assert "cnn/loss" in first_step and math.isfinite(first_step["loss"])
