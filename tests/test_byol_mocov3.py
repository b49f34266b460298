"""BYOL and MoCo v3 (SDSSL's baselines): their losses against hand-computed values (SDSSL Eq. 1-2, Alg. 1 ``ctr``),
the teacher holds no predictor and never gets gradients, the EMA update moves it, and both run end to end."""

import json
import math

import pytest
import torch

from sslkd.cli import main
from sslkd.config import load_config
from sslkd.data import DatasetInfo
from sslkd.errors import UserError
from sslkd.losses.sdssl import byol_loss, info_nce
from sslkd.registry import STRATEGIES
from sslkd.strategies.base import StepInfo

INFO = DatasetInfo("fake", 10, 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), tuple(str(i) for i in range(10)))
TINY = ["train.epochs=1", "train.batch_size=16", "train.log_every=1", "data.train_subset=64", "data.num_workers=0",
        "eval.knn_k=[5]", "members.vit.backbone_args={img_size: 32, patch_size: 8, depth: 2, embed_dim: 24, num_heads: 2}",
        "strategy.proj_hidden_dim=16", "strategy.pred_hidden_dim=16", "strategy.out_dim=8"]


def test_byol_loss_is_two_minus_two_cosine():
    q = torch.tensor([[1.0, 0.0], [1.0, 1.0], [3.0, 0.0]])
    z = torch.tensor([[0.0, 2.0], [1.0, 0.0], [5.0, 0.0]])
    expected = (2.0 + (2 - 2 / math.sqrt(2)) + 0.0) / 3
    assert byol_loss(q, z).item() == pytest.approx(expected, abs=1e-6)


def test_byol_loss_stops_the_gradient_on_its_target():
    q = torch.randn(4, 3, requires_grad=True)
    z = torch.randn(4, 3, requires_grad=True)
    byol_loss(q, z).backward()
    assert q.grad is not None and z.grad is None


def test_info_nce_matches_the_formula():
    tau = 0.5
    q = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    k = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    c = 1 / math.sqrt(2)
    # normalised: q = (1,0), (0,1); k = (c,c), (0,1); logits q.k / tau, positives on the diagonal
    row0 = -math.log(math.exp(c / tau) / (math.exp(c / tau) + math.exp(0.0)))
    row1 = -math.log(math.exp(1 / tau) / (math.exp(c / tau) + math.exp(1 / tau)))
    expected = 2 * tau * (row0 + row1) / 2
    assert info_nce(q, k, tau).item() == pytest.approx(expected, abs=1e-6)


def test_info_nce_over_stacked_layers_is_the_mean_of_each_layer():
    torch.manual_seed(0)
    k = torch.randn(5, 4)
    layers = [torch.randn(5, 4) for _ in range(3)]
    stacked = info_nce(torch.cat(layers), k, 0.2)
    assert stacked.item() == pytest.approx(torch.stack([info_nce(q, k, 0.2) for q in layers]).mean().item(), abs=1e-5)
    with pytest.raises(ValueError):
        info_nce(torch.randn(7, 4), k)


def test_info_nce_detaches_keys_unless_told():
    q, k = torch.randn(3, 4, requires_grad=True), torch.randn(3, 4, requires_grad=True)
    info_nce(q, k).backward()
    assert k.grad is None
    info_nce(q, k, detach_keys=False).backward()
    assert k.grad is not None


@pytest.mark.parametrize("method", ["byol", "mocov3"])
def test_teacher_has_no_predictor_gets_no_gradient_and_follows_the_student(method):
    torch.manual_seed(0)
    cfg = load_config(method, None, TINY)
    strategy = STRATEGIES.get(method)(cfg, INFO).train()
    member = strategy.members["vit"]
    assert set(member.teacher.module) == {"backbone", "projector"}
    assert set(member.student) == {"backbone", "projector", "predictor"}
    views = [torch.randn(4, 3, 32, 32) for _ in range(2)]
    step = StepInfo(0, 0, 10, 10)
    losses = strategy(views, torch.zeros(4), torch.arange(4), step)
    losses["loss"].backward()
    assert all(p.grad is None for p in member.teacher.parameters())
    assert all(p.grad is not None for p in member.student["predictor"].parameters())
    before = [p.clone() for p in member.teacher.parameters()]
    with torch.no_grad():
        for p in member.student.parameters():
            p.add_(1.0)
    strategy.after_step(step)
    assert all(not torch.equal(a, b) for a, b in zip(before, member.teacher.parameters()))


def test_byol_outputs_have_no_batchnorm_and_mocov3_outputs_do():
    byol = STRATEGIES.get("byol")(load_config("byol", None, TINY), INFO)
    mocov3 = STRATEGIES.get("mocov3")(load_config("mocov3", None, TINY), INFO)
    assert isinstance(byol.members["vit"].student["projector"][-1], torch.nn.Linear)
    last = mocov3.members["vit"].student["projector"][-1]
    assert isinstance(last, torch.nn.BatchNorm1d) and not last.affine


@pytest.mark.parametrize("method", ["byol", "mocov3"])
def test_runs_end_to_end(method, tmp_path):
    out = tmp_path / method
    assert main(["train", "--method", method, "--output-dir", str(out), *TINY]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == method and 0 <= summary["members"]["vit"]["knn_top1"] <= 100
    assert summary["protocol"]["encoder"] == "student"  # eval.encoder auto: the online encoder, as BYOL / MoCo v3


@pytest.mark.parametrize("method, encoder, evaluated", [
    ("byol", "auto", "student"), ("mocov3", "auto", "student"), ("sdssl", "auto", "teacher"),
    ("mocov3", "teacher", "teacher"), ("sdssl", "student", "student")])
def test_eval_encoder_picks_the_backbone_evaluated(method, encoder, evaluated):
    tiny = TINY + (["strategy.layer_proj_hidden_dim=12"] if method == "sdssl" else [])
    strategy = STRATEGIES.get(method)(load_config(method, None, tiny + [f"eval.encoder={encoder}"]), INFO)
    member = strategy.members["vit"]
    expected = member.teacher.module["backbone"] if evaluated == "teacher" else member.student["backbone"]
    assert strategy.evaluated_encoder("vit") == evaluated and strategy.eval_backbones()["vit"] is expected


def test_a_member_without_teacher_is_evaluated_on_its_student():
    tiny = TINY + ["strategy.layer_proj_hidden_dim=12", "strategy.base=simclr", "eval.encoder=teacher"]
    strategy = STRATEGIES.get("sdssl")(load_config("sdssl", None, tiny), INFO)
    assert strategy.evaluated_encoder("vit") == "student"
    assert strategy.eval_backbones()["vit"] is strategy.members["vit"].backbone


def test_checkpoint_loaders_evaluate_the_chosen_encoder_and_frozen_vit_parts_stay_fixed(tmp_path):
    from sslkd.engine.trainer import seed_everything
    from sslkd.eval.checkpoints import load_members

    out = tmp_path / "run"
    frozen_vit = ("members.vit.backbone_args={img_size: 32, patch_size: 8, depth: 2, embed_dim: 24, num_heads: 2, "
                  "freeze_patch_embed: true, pos_embed: sincos}")
    assert main(["train", "--method", "mocov3", "--output-dir", str(out), *TINY, frozen_vit]) == 0
    strategy, _, backbones = load_members(out)
    assert backbones["vit"] is strategy.members["vit"].student["backbone"]
    strategy, _, backbones = load_members(out, encoder="teacher")
    assert backbones["vit"] is strategy.members["vit"].teacher.module["backbone"]
    # the trainer seeds, then builds the strategy first: the initial random patch projection, never trained
    seed_everything(0)
    initial = STRATEGIES.get("mocov3")(load_config("mocov3", None, TINY + [frozen_vit]), INFO)
    for name in ("model.patch_embed.proj.weight", "model.patch_embed.proj.bias", "model.pos_embed"):
        trained = strategy.members["vit"].student["backbone"].get_parameter(name)
        assert torch.equal(trained, initial.members["vit"].student["backbone"].get_parameter(name)), name
    with pytest.raises(UserError, match="unknown encoder"):
        load_members(out, encoder="online")
