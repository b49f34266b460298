"""SDSSL: L_isd (Eq. 3) and L_pred (Eq. 5) against hand-computed values, L_pred trains only the predictors, L_isd
never reaches the teacher, the alpha ramp, layer selection, the base recovered exactly with no distilled layer,
each base end to end, and the SDSSL Table 1 layout of `sslkd compare`."""

import json
import math

import pytest
import torch
from torch import nn

from sslkd.cli import main
from sslkd.config import load_config
from sslkd.data import DatasetInfo
from sslkd.errors import UserError
from sslkd.losses.sdssl import byol_loss, info_nce, isd_loss, nt_xent_to_targets, pred_loss
from sslkd.registry import STRATEGIES
from sslkd.strategies.base import StepInfo
from sslkd.strategies.layerwise import alpha_at, select_layers

INFO = DatasetInfo("fake", 10, 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), tuple(str(i) for i in range(10)))
TINY = ["train.epochs=1", "train.batch_size=16", "train.log_every=1", "data.train_subset=64", "data.num_workers=0",
        "eval.knn_k=[5]", "members.vit.backbone_args={img_size: 32, patch_size: 8, depth: 3, embed_dim: 24, num_heads: 2}",
        "strategy.proj_hidden_dim=16", "strategy.layer_proj_hidden_dim=12", "strategy.pred_hidden_dim=16",
        "strategy.out_dim=8"]
STEP = StepInfo(5, 0, 10, 10)


def build(method="sdssl", extra=()):
    torch.manual_seed(0)
    tiny = TINY if method == "sdssl" else [o for o in TINY if "layer_proj" not in o]
    return STRATEGIES.get(method)(load_config(method, None, tiny + list(extra)), INFO).train()


def views(batch=4):
    torch.manual_seed(1)
    return [torch.randn(batch, 3, 32, 32) for _ in range(2)]


def test_isd_loss_is_the_mean_over_intermediate_layers_against_a_detached_target():
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    q1 = torch.tensor([[0.0, 1.0], [0.0, 1.0]], requires_grad=True)  # cos 0 and 1 -> 2 - 2cos: 2, 0
    q2 = torch.tensor([[1.0, 0.0], [1.0, 1.0]], requires_grad=True)  # cos 1 and 1/sqrt2 -> 0, 2 - sqrt2
    expected = ((2 + 0) / 2 + (0 + 2 - math.sqrt(2)) / 2) / 2
    loss = isd_loss([q1, q2], z, byol_loss)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    loss.backward()
    assert z.grad is None and q1.grad is not None and q2.grad is not None


def test_isd_loss_with_infonce_equals_algorithm_1_stacked_ctr():
    torch.manual_seed(0)
    z = torch.randn(6, 5)
    layers = [torch.randn(6, 5) for _ in range(4)]
    ctr = info_nce(torch.cat(layers), z, 0.2)  # Alg. 1: ctr(q_isd, z, L-1)
    assert isd_loss(layers, z, lambda q, k: info_nce(q, k, 0.2)).item() == pytest.approx(ctr.item(), abs=1e-5)


def test_pred_loss_is_the_sum_over_layers_and_trains_only_the_predictors():
    trunk = nn.Linear(2, 2)
    with torch.no_grad():
        trunk.weight.copy_(torch.eye(2))
        trunk.bias.zero_()
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    projections = [trunk(x), trunk(x) * 2]
    predictors = [nn.Linear(2, 2, bias=False), nn.Linear(2, 2, bias=False)]
    with torch.no_grad():
        predictors[0].weight.copy_(torch.eye(2))                      # p = h: cos with z = (1, 1): 1, 1
        predictors[1].weight.copy_(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))  # swaps: cos with z = (1, 0)... see below
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    # layer 1: p = (1,0), (0,1) vs (1,0): 2 - 2cos = 0, 2 -> mean 1; layer 2: p = (0,2), (2,0): 2, 0 -> mean 1
    loss = pred_loss(predictors, projections, z, byol_loss)
    assert loss.item() == pytest.approx(2.0, abs=1e-6)
    loss.backward()
    assert trunk.weight.grad is None and trunk.bias.grad is None
    assert all(p.weight.grad is not None for p in predictors)


def test_alpha_ramp_starts_at_zero_and_ends_at_its_final_value():
    assert alpha_at(0, 100, 0.8) == 0.0
    assert alpha_at(100, 100, 0.8) == pytest.approx(0.8)
    assert alpha_at(50, 100, 0.8) == pytest.approx(0.4)
    values = [alpha_at(s, 100, 1.0) for s in range(101)]
    assert all(a <= b for a, b in zip(values, values[1:]))
    assert alpha_at(0, 100, 0.8, "constant") == 0.8


def test_layer_selection():
    names = [f"blocks.{i}" for i in range(6)]
    assert select_layers(names, "all") == names[:-1]
    assert select_layers(names, "all", stride=2) == ["blocks.1", "blocks.3"]
    assert select_layers(names, [3, "blocks.0"]) == ["blocks.0", "blocks.2"]
    assert select_layers(names, []) == []
    for bad in ([6], ["blocks.5"], ["head"]):
        with pytest.raises(UserError):
            select_layers(names, bad)


@pytest.mark.parametrize("base", ["simclr", "byol", "mocov3"])
def test_heads_per_layer_and_teacher_with_final_projector_only(base):
    strategy = build(extra=[f"strategy.base={base}"])
    member = strategy.members["vit"]
    assert strategy.layer_names["vit"] == ["blocks.0", "blocks.1"]
    assert set(member.student["layer_projectors"]) == {"blocks_0", "blocks_1"}
    if base == "simclr":
        assert member.teacher is None and "predictor" not in member.student
    else:
        assert set(member.teacher.module) == {"backbone", "projector"}
        assert set(member.student["layer_predictors"]) == {"blocks_0", "blocks_1"}
    # BN on every output layer except BYOL's (Sec. 4.1)
    assert isinstance(member.student["layer_projectors"]["blocks_0"][-1], nn.BatchNorm1d) == (base != "byol")


@pytest.mark.parametrize("base", ["byol", "mocov3"])
def test_pred_loss_moves_only_predictors_and_isd_never_the_teacher(base):
    strategy = build(extra=[f"strategy.base={base}"])
    member = strategy.members["vit"]
    losses = strategy(views(), torch.zeros(4), torch.arange(4), STEP)
    losses["vit/pred"].backward(retain_graph=True)
    for name, p in member.student.named_parameters():
        assert (p.grad is not None) == ("predictor" in name), name
    member.student.zero_grad(set_to_none=True)
    losses["vit/isd"].backward()
    assert all(p.grad is None for p in member.teacher.parameters())
    assert all(p.grad is None for p in member.student["projector"].parameters())  # only L_ssl trains it
    assert all(p.grad is not None for p in member.student["layer_projectors"].parameters())


def test_total_is_ssl_plus_ramped_alpha_isd_plus_beta_pred():
    strategy = build(extra=["strategy.alpha=0.8", "strategy.beta=0.5"])
    losses = strategy(views(), torch.zeros(4), torch.arange(4), STEP)
    alpha = alpha_at(STEP.step, STEP.total_steps, 0.8)
    expected = losses["vit/ssl"] + alpha * losses["vit/isd"] + 0.5 * losses["vit/pred"]
    assert losses["loss"].item() == pytest.approx(expected.item(), rel=1e-6)


def test_simclr_final_term_trains_both_views_and_isd_targets_detached_final_outputs():
    strategy = build(extra=["strategy.base=simclr"])
    outputs = [strategy.embed("vit", v) for v in views()]
    z = strategy.targets("vit", views(), outputs)
    assert z[0] is outputs[0].h_final  # SimCLR: the student is its own teacher
    losses = strategy(views(), torch.zeros(4), torch.arange(4), STEP)
    assert "vit/pred" not in losses
    losses["vit/isd"].backward()
    assert all(p.grad is None for p in strategy.members["vit"].student["projector"].parameters())


@pytest.mark.parametrize("base", ["byol", "mocov3"])
def test_no_layers_and_no_pred_loss_is_exactly_the_base(base):
    sd = build(extra=[f"strategy.base={base}", "strategy.layers=[]", "strategy.beta=0.0"])
    plain = build(base)
    sd.load_state_dict(plain.state_dict(), strict=True)
    a = sd(views(), torch.zeros(4), torch.arange(4), STEP)["loss"]
    b = plain(views(), torch.zeros(4), torch.arange(4), STEP)["loss"]
    assert a.item() == pytest.approx(b.item(), rel=1e-6)


def test_resnet_layers_have_their_own_widths():
    torch.manual_seed(0)
    cfg = load_config("sdssl", None, TINY + ["members.vit.backbone=cifar_resnet20",
                                             "members.vit.backbone_args={widths: [4, 8, 16]}", "members.vit.drop_path_rate=0.0",
                                             "strategy.layers=[stages.0.2, stages.1.2]"])
    strategy = STRATEGIES.get("sdssl")(cfg, INFO).train()
    heads = strategy.members["vit"].student["layer_projectors"]
    assert [heads[k][0].in_features for k in ("stages_0_2", "stages_1_2")] == [4, 8]
    losses = strategy(views(), torch.zeros(4), torch.arange(4), STEP)
    assert torch.isfinite(losses["loss"])


@pytest.mark.parametrize("base", ["simclr", "byol", "mocov3"])
def test_runs_end_to_end_with_each_base(base, tmp_path):
    out = tmp_path / base
    assert main(["train", "--method", "sdssl", "--output-dir", str(out), f"strategy.base={base}", *TINY]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "sdssl" and 0 <= summary["members"]["vit"]["knn_top1"] <= 100
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("vit/isd" in m for m in metrics)


def test_losses_keep_float64_and_promote_half_precision():
    torch.manual_seed(0)
    q, z = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64)
    for loss in (byol_loss(q, z), info_nce(q, z, 0.3), nt_xent_to_targets(q, z, 0.3)):
        assert loss.dtype == torch.float64
    assert byol_loss(q.bfloat16(), z.bfloat16()).dtype == torch.float32
    assert nt_xent_to_targets(q.half(), z.half()).dtype == torch.float32


def test_nt_xent_to_targets_leaves_out_the_own_column_and_detaches_the_targets():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    k = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], requires_grad=True)
    # row i: its own column i is dropped; its positive is key (i + 2) mod 4, the other view of its image
    def row(cosines_left, positive_cosine):
        return torch.logsumexp(torch.tensor(cosines_left) / 0.2, 0) - positive_cosine / 0.2

    rows = [row([1.0, 0.0, 0.0], 0.0),  # q0 = (1, 0) against keys 1, 2, 3; positive key 2
            row([0.0, 1.0, 1.0], 1.0),  # q1 = (0, 1) against keys 0, 2, 3; positive key 3
            row([1.0, 1.0, 0.0], 1.0),  # q2 = (1, 0) against keys 0, 1, 3; positive key 0
            row([0.0, 0.0, 1.0], 0.0)]  # q3 = (0, 1) against keys 0, 1, 2; positive key 1
    loss = nt_xent_to_targets(q, k, 0.2)
    assert loss.item() == pytest.approx(torch.stack(rows).mean().item(), abs=1e-5)
    loss.backward()
    assert k.grad is None and q.grad is not None


def test_concat_views_is_one_pass_with_batch_statistics_over_both_views():
    strategy = build(extra=["strategy.base=simclr", "strategy.concat_views=true", "members.vit.drop_path_rate=0.0"])
    x1, x2 = views()
    per_view = strategy.network_outputs([x1, x2])["vit"].student
    joint = strategy.embed("vit", torch.cat([x1, x2]))
    torch.testing.assert_close(per_view[0].h_final, joint.h_final[:4])
    torch.testing.assert_close(per_view[1].q_layers[1], joint.q_layers[1][4:])
    strategy.options.concat_views = False  # one pass per view: projector BN statistics over N rows differ
    assert not torch.allclose(strategy.network_outputs([x1, x2])["vit"].student[0].h_final, per_view[0].h_final)


def test_simclr_loss_needs_the_simclr_base():
    with pytest.raises(UserError, match="simclr_loss"):
        build(extra=["strategy.base=mocov3", "strategy.simclr_loss=nt_xent"])


def test_heads_on_stacked_views_compute_what_one_pass_per_view_does():
    import copy

    from sslkd.strategies.byol import MLPHead

    torch.manual_seed(0)
    head = MLPHead(3, 8, 4, 16, last_bn=True)
    stacked_head = copy.deepcopy(head)
    views = [torch.randn(6, 8), torch.randn(6, 8)]
    per_view = torch.cat([head(view) for view in views])
    stacked = stacked_head.forward_views(torch.cat(views), [6, 6])
    assert torch.allclose(stacked, per_view, atol=1e-6)
    for a, b in zip(head.buffers(), stacked_head.buffers()):  # running statistics: each view's, in view order
        assert torch.allclose(a.float(), b.float(), atol=1e-7)


def test_only_a_backbone_without_batch_statistics_or_random_draws_takes_views_in_one_pass():
    from sslkd.models.backbones import build_backbone, computes_each_image_alone

    vit = {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 24, "num_heads": 2}  # depth 2: block 2 drops paths
    assert computes_each_image_alone(build_backbone("vit_tiny_patch16_224", **vit))
    assert not computes_each_image_alone(build_backbone("vit_tiny_patch16_224", **vit, drop_path_rate=0.1))
    assert not computes_each_image_alone(build_backbone("cifar_resnet20"))
