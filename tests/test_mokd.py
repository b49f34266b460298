"""MOKD and DINO strategies: each term is wired to the right student and teacher, gradients reach exactly the
intended parameters, EMA teachers never receive gradients."""

import numpy as np
import pytest
import torch

from sslkd.data import DatasetInfo
from sslkd.losses.dino import dino_loss, feature_search_loss
from sslkd.registry import STRATEGIES
from sslkd.strategies.base import StepInfo
from sslkd.strategies.dino import teacher_temperature

INFO = DatasetInfo("fake", 10, 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), tuple(str(i) for i in range(10)))
STEP = StepInfo(step=3, epoch=0, steps_per_epoch=10, total_steps=100)


def build(tiny_cfg, method="mokd", extra=()):
    torch.manual_seed(0)
    cfg = tiny_cfg(method, list(extra))
    return STRATEGIES.get(method)(cfg, INFO).train()


def views(batch=3, n_local=2):
    torch.manual_seed(1)
    return [torch.randn(batch, 3, 32, 32) for _ in range(2)] + [torch.randn(batch, 3, 16, 16) for _ in range(n_local)]


def student_grads(member):
    return {n: p.grad for n, p in member.student.named_parameters() if p.requires_grad}


def has_grad(grad):
    return grad is not None and grad.abs().sum() > 0


def test_loss_terms_are_the_paper_terms(tiny_cfg):
    """Recompute each term of member `cnn` from the module outputs and compare with the strategy's value."""
    strategy = build(tiny_cfg)
    v = views()
    centers_before = {k: strategy.centers[k].clone() for k in ("cnn/dino", "vit/dino")}
    thead_centers_before = {k: strategy.thead_centers[k].clone() for k in ("cnn/thead", "vit/thead")}
    losses = strategy(v, None, None, STEP)
    opts = strategy.options
    cnn, vit = strategy.members["cnn"], strategy.members["vit"]
    tau = np.linspace(opts.warmup_teacher_temp, opts.teacher_temp, int(opts.warmup_teacher_temp_epochs))[STEP.epoch]
    with torch.no_grad():
        def heads(module, crops):
            pooled, mlp, thead = [], [], []
            for crop in crops:
                f, t, g = module["backbone"].forward_tokens(crop)
                pooled.append(f)
                mlp.append(module["dino"](f))
                thead.append(module["thead"](t, g))
            return torch.cat(pooled), torch.cat(mlp), torch.cat(thead)

        s_pooled, s_mlp, s_thead = heads(cnn.student, [torch.cat(v[:2]), torch.cat(v[2:])])
        _, t_mlp, t_thead = heads(cnn.teacher.module, [torch.cat(v[:2])])
        _, p_mlp, _ = heads(vit.teacher.module, [torch.cat(v[:2])])
        sm = dino_loss(s_mlp, t_mlp, centers_before["cnn/dino"], 4, 2, 0.1, tau)
        st = dino_loss(s_thead, t_thead, thead_centers_before["cnn/thead"], 4, 2, 0.1, tau)
        cm = dino_loss(s_mlp, p_mlp, centers_before["vit/dino"], 4, 2, 0.1, tau)
        # paper feature search (Eq. 6): query from view a searches the peer teacher's tokens of view b, and back
        peer = vit.teacher.module
        f, tok, grid = peer["backbone"].forward_tokens(torch.cat(v[:2]))
        x = peer["thead"].embed(tok, grid)
        query = cnn.student["thead"].embed_query(s_pooled[:6])
        searched = peer["thead"].search(query, torch.cat([x[3:], x[:3]]))
        ct = feature_search_loss(s_thead[:6], searched, 0.1, tau)
    for name, expected in {"sm": sm, "st": st, "cm": cm, "ct": ct}.items():
        assert losses[f"cnn/{name}"].item() == pytest.approx(expected.item(), rel=1e-4), name
    weight = cnn.cfg.distill_weight
    assert losses["cnn/loss"].item() == pytest.approx((sm + st + weight * (cm + ct)).item(), rel=1e-4)
    assert losses["loss"].item() == pytest.approx(losses["cnn/loss"].item() + losses["vit/loss"].item(), rel=1e-5)


@pytest.mark.parametrize("search", ["paper", "code"])
def test_cross_terms_never_move_the_peer_or_a_teacher(tiny_cfg, search):
    strategy = build(tiny_cfg, extra=[f"strategy.feature_search={search}", "strategy.detach_search_query=false"])
    losses = strategy(views(), None, None, STEP)
    cnn, vit = strategy.members["cnn"], strategy.members["vit"]
    (losses["cnn/cm"] + losses["cnn/ct"]).backward()
    assert not any(has_grad(g) for g in student_grads(vit).values()), "a cross term moved the peer student"
    for member in (cnn, vit):
        assert all(p.grad is None for p in member.teacher.parameters()), "a teacher received gradients"
    grads = student_grads(cnn)
    assert any(has_grad(g) for n, g in grads.items() if n.startswith("backbone."))
    assert any(has_grad(g) for n, g in grads.items() if n.startswith("dino."))
    assert any(has_grad(g) for n, g in grads.items() if n.startswith("thead."))


def test_search_term_moves_only_the_t_head_path(tiny_cfg):
    """L_ct: the student's T-Head (and the backbone under it) learn; the MLP-Head does not; the query is detached."""
    strategy = build(tiny_cfg)
    losses = strategy(views(), None, None, STEP)
    losses["cnn/ct"].backward()
    grads = student_grads(strategy.members["cnn"])
    assert not any(has_grad(g) for n, g in grads.items() if n.startswith("dino."))
    assert any(has_grad(g) for n, g in grads.items() if n.startswith("thead.blocks"))


def test_full_loss_never_reaches_teachers_and_frozen_gain(tiny_cfg):
    strategy = build(tiny_cfg)
    strategy(views(), None, None, STEP)["loss"].backward()
    for member in strategy.members.values():
        assert all(p.grad is None for p in member.teacher.parameters())
        gain = member.student["dino"].last_layer.parametrizations.weight.original0
        assert gain.grad is None and not gain.requires_grad  # norm_last_layer: gain fixed at 1
        assert member.student["thead"].last_layer.parametrizations.weight.original0.requires_grad  # T-Head gain trains


def test_centers_update_after_the_step(tiny_cfg):
    strategy = build(tiny_cfg)
    strategy(views(), None, None, STEP)
    for key in ("cnn/dino", "vit/dino", "cnn/thead", "vit/thead"):
        centers = strategy.centers if key.endswith("dino") else strategy.thead_centers
        assert centers[key].abs().sum() == 0  # deferred until the trainer accepts the step
    strategy.apply_deferred()
    for key in ("cnn/dino", "vit/dino"):
        assert strategy.centers[key].abs().sum() > 0
    for key in ("cnn/thead", "vit/thead"):
        assert strategy.thead_centers[key].abs().sum() > 0


def test_ema_teacher_moves_towards_student(tiny_cfg):
    strategy = build(tiny_cfg)
    member = strategy.members["cnn"]
    with torch.no_grad():
        for p in member.student.parameters():
            p.add_(1.0)
    teacher_before = [p.clone() for p in member.teacher.parameters()]
    student = list(member.student.parameters())
    strategy.after_step(StepInfo(0, 0, 10, 100))  # momentum 0.996 at step 0
    for before, after, s in zip(teacher_before, member.teacher.parameters(), student):
        torch.testing.assert_close(after, 0.996 * before + 0.004 * s)


def test_three_members_and_code_search(tiny_cfg):
    extra = [
        "members.vit2={backbone: vit_tiny_patch16_224, backbone_args: {img_size: 32, patch_size: 8, depth: 1, embed_dim: 24, num_heads: 2}}",
        "strategy.feature_search=code",
    ]
    strategy = build(tiny_cfg, extra=extra)
    losses = strategy(views(), None, None, STEP)
    assert {"cnn/ct", "vit/ct", "vit2/ct"} <= set(losses)
    assert torch.isfinite(losses["loss"])


def test_dino_baseline_members_train_independently(tiny_cfg):
    strategy = build(tiny_cfg, "dino", extra=["members.cnn2={backbone: cifar_resnet20, backbone_args: {widths: [4, 8, 8]}}"])
    losses = strategy(views(), None, None, STEP)
    losses["cnn/loss"].backward()
    assert not any(has_grad(g) for g in student_grads(strategy.members["cnn2"]).values())
    assert all(p.grad is None for p in strategy.members["cnn"].teacher.parameters())


# ---------------------------------------------------------------------------------------------- skipped steps (item 10)
def poison_teacher_head(trainer, member, at_step):
    """Member ``member``'s EMA-teacher DINO head outputs NaN at global step ``at_step`` (the loss is NaN through the
    targets, and the center update of that step would be NaN)."""
    head = trainer.strategy.members[member].teacher.module["dino"]
    forward = head.forward

    def poisoned(x):
        out = forward(x)
        return out * float("nan") if trainer.step == at_step else out

    head.forward = poisoned


def skip_step(trainer, at_step):
    """The reference: step ``at_step`` does nothing at all (no forward, no update)."""
    train_step = trainer.train_step

    def skipping(views, labels, indices, info):
        return None if info.step == at_step else train_step(views, labels, indices, info)

    trainer.train_step = skipping


def test_nan_teacher_output_on_a_skipped_step_leaves_centers_untouched(tmp_path, tiny_cfg):
    import json

    from sslkd.engine.trainer import Trainer

    extra = ["train.on_nonfinite=skip"]
    poisoned = Trainer(tiny_cfg("mokd", extra, epochs=2), tmp_path / "poisoned")
    reference = Trainer(tiny_cfg("mokd", extra, epochs=2), tmp_path / "reference")
    assert poisoned.steps_per_epoch >= 4
    poison_teacher_head(poisoned, "cnn", at_step=1)
    skip_step(reference, at_step=1)
    poisoned.fit(stop_at_epoch=1)
    reference.fit(stop_at_epoch=1)
    assert poisoned.skipped_steps == 1
    a, b = poisoned.strategy, reference.strategy
    for centers in ("centers", "thead_centers"):
        for key, value in getattr(a, centers).named_buffers():
            assert torch.isfinite(value).all(), key
            assert torch.equal(value, getattr(getattr(b, centers), key)), key
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), name
    # everything else, batch-norm running statistics included, equals the run that skipped the step
    differ = [k for k, v in a.state_dict().items() if not torch.equal(v, b.state_dict()[k])]
    assert differ == []
    records = [json.loads(line) for line in (tmp_path / "poisoned" / "metrics.jsonl").read_text().splitlines()]
    skipped = [r for r in records if "skipped_steps" in r]
    assert skipped == [{"step": 2, "epoch": 0, "skipped_steps": 1, "nonfinite_terms": ["cnn/sm", "cnn/loss", "vit/cm", "vit/loss"]}]
    later = [r for r in records if "loss" in r and r["step"] > 2]
    assert len(later) == poisoned.steps_per_epoch - 2
    assert all(np.isfinite(v) for r in later for k, v in r.items() if "/" in k or k == "loss")


# ---------------------------------------------------------------------------------------------- optimiser groups (item 11)
THEAD_OPT = dict(lr=0.002, min_lr=1.0e-5, weight_decay=0.04, weight_decay_end=0.4, warmup_epochs=1)
CODE_WAY = [
    "members.cnn.module_optimizers={thead: {name: adamw, lr: 0.002, min_lr: 1.0e-5, weight_decay: 0.04, "
    "weight_decay_end: 0.4, warmup_epochs: 1}}",
    "strategy.norm_last_layer_per_member={vit: false}",
]


def gain(member, head="dino"):
    return member.student[head].last_layer.parametrizations.weight.original0


def equal_nested(a, b):
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(equal_nested(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(equal_nested(x, y) for x, y in zip(a, b))
    return a == b


def test_zoo_configs_train_the_cnn_thead_with_the_vits_optimiser():
    """The MOKD code: the CNN's T-Head in its own AdamW group with the ViT's settings; ViT head gain trainable."""
    import glob
    from pathlib import Path

    from sslkd.config import load_config, strategy_options
    from sslkd.engine.optim import resolve_optim
    from sslkd.strategies.mokd import MOKDOptions

    files = sorted(glob.glob(str(Path(__file__).resolve().parents[1] / "zoo_configs" / "mokd" / "*.yaml")))
    assert len(files) >= 3
    for path in files:
        cfg = load_config(None, path, [])
        cnn, vit = cfg.members["cnn"], cfg.members["vit"]
        options = strategy_options(cfg, MOKDOptions)
        assert resolve_optim(cnn.optimizer, "cnn").name == "sgd" and resolve_optim(vit.optimizer, "vit").name == "adamw"
        if not {"st", "ct"} & set(options.loss_terms):  # MOKD Table 7's L_sm + L_cm: no T-Head, no T-Head optimiser
            assert not cnn.module_optimizers, path
            continue
        assert set(cnn.module_optimizers) == {"thead"}, path
        assert resolve_optim(cnn.module_optimizers["thead"], "cnn") == resolve_optim(vit.optimizer, "vit"), path
        assert options.norm_last_layer_per_member.get("vit", options.norm_last_layer) is False, path
        if not any(v in path for v in ("proxy_v2", "proxy_v3")):  # v2/v3 train every head's gain
            # (proxy_v2_dino.yaml); the code: the CNN's is fixed
            assert options.norm_last_layer and options.norm_last_layer_per_member == {"vit": False}, path


def test_cnn_thead_has_its_own_optimiser_schedule_and_resumes(tmp_path, tiny_cfg):
    import json
    import math

    from sslkd.engine.trainer import Trainer

    straight = Trainer(tiny_cfg("mokd", CODE_WAY, epochs=2), tmp_path / "straight")
    optimizers = straight.optimizers
    assert list(optimizers) == ["cnn", "cnn/thead", "vit"]
    assert type(optimizers["cnn"].optimizer) is torch.optim.SGD
    assert type(optimizers["cnn/thead"].optimizer) is torch.optim.AdamW
    assert type(optimizers["vit"].optimizer) is torch.optim.AdamW
    # every trainable student parameter in exactly one optimiser; the thead's in the thead's, the rest in the member's
    owner = {}
    for key, part in optimizers.items():
        for group in part.optimizer.param_groups:
            for p in group["params"]:
                assert id(p) not in owner, f"a parameter is in {owner.get(id(p))} and {key}"
                owner[id(p)] = key
    for name, member in straight.strategy.members.items():
        for pname, p in member.student.named_parameters():
            if not p.requires_grad:
                assert id(p) not in owner, pname
                continue
            want = "cnn/thead" if name == "cnn" and pname.startswith("thead.") else name
            assert owner.get(id(p)) == want, f"{name}.{pname}"
        assert all(id(p) not in owner for p in member.teacher.parameters())
    # the thead's lr and weight decay follow its own schedule (DINO's linspace warm-up, then cosine), by hand
    spe, total = straight.steps_per_epoch, straight.total_steps
    base, warmup = THEAD_OPT["lr"] * 16 / 256, round(THEAD_OPT["warmup_epochs"] * spe)
    for step in (1, warmup - 1, warmup + 1, total - 1):
        lrs = straight.set_schedules(StepInfo(step, step // spe, spe, total))
        if step < warmup:
            lr = base * step / (warmup - 1)
        else:
            lr = THEAD_OPT["min_lr"] + 0.5 * (base - THEAD_OPT["min_lr"]) * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))
        wd = 0.4 + 0.5 * (0.04 - 0.4) * (1 + math.cos(math.pi * step / total))
        assert lrs["cnn/thead"] == pytest.approx(lr, rel=1e-12, abs=1e-15)
        groups = optimizers["cnn/thead"].optimizer.param_groups
        assert all(g["lr"] == lrs["cnn/thead"] for g in groups)
        assert [g["weight_decay"] for g in groups] == pytest.approx([wd, 0.0], rel=1e-12)
        assert lrs["cnn/thead"] != lrs["cnn"]
        assert optimizers["cnn"].optimizer.param_groups[0]["weight_decay"] == pytest.approx(1e-4)

    cnn_gain, vit_gain = gain(straight.strategy.members["cnn"]), gain(straight.strategy.members["vit"])
    assert not cnn_gain.requires_grad and vit_gain.requires_grad
    assert owner[id(vit_gain)] == "vit"
    vit_gain_start = vit_gain.detach().clone()
    straight.fit()
    assert torch.equal(cnn_gain, torch.ones_like(cnn_gain))  # norm_last_layer: the CNN's gain fixed at 1
    assert not torch.equal(vit_gain, vit_gain_start)  # the ViT's trains (after the frozen first epoch)

    interrupted = Trainer(tiny_cfg("mokd", CODE_WAY, epochs=2), tmp_path / "resumed")
    interrupted.fit(stop_at_epoch=1)
    kept = torch.load(tmp_path / "resumed" / "checkpoints" / "last.pt", weights_only=False)
    assert set(kept["optimizers"]) == {"cnn", "cnn/thead", "vit"}
    assert kept["optimizers"]["cnn/thead"]["state"], "the thead's AdamW moments are checkpointed"
    resumed = Trainer(tiny_cfg("mokd", CODE_WAY, epochs=2), tmp_path / "resumed", resume=True)
    for key in ("cnn", "cnn/thead", "vit"):
        assert equal_nested(resumed.optimizers[key].optimizer.state_dict(), kept["optimizers"][key]), key
    resumed.fit()
    a, b = straight.strategy.state_dict(), resumed.strategy.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    for key in straight.optimizers:
        assert equal_nested(straight.optimizers[key].optimizer.state_dict(), resumed.optimizers[key].optimizer.state_dict()), key

    def records(run):
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if k != "images_per_s"} for line in lines]

    assert records("straight") == records("resumed")
    assert all("lr/cnn/thead" in r for r in records("straight") if "loss" in r)


@pytest.mark.parametrize("terms", [["sm"], ["sm", "cm"], ["sm", "cm", "st"], ["sm", "ct"]])
def test_loss_terms_drop_exactly_the_left_out_terms(tiny_cfg, terms):
    """MOKD Table 7's ablations: with the same weights, every kept term equals the full method's, the left-out ones
    are not computed, and the member loss is L_sm + L_st + lambda (L_cm + L_ct) over the kept terms only."""
    full = build(tiny_cfg)
    ablated = build(tiny_cfg, extra=["strategy.loss_terms=[" + ",".join(terms) + "]"])
    for name, member in ablated.members.items():
        source = full.members[name]
        member.student.load_state_dict(source.student.state_dict(), strict=False)
        member.teacher.load_state_dict(source.teacher.state_dict(), strict=False)
        assert ("thead" in member.student) == bool({"st", "ct"} & set(terms))
    full_losses = full(views(), None, None, STEP)
    losses = ablated(views(), None, None, STEP)
    for name, member in ablated.members.items():
        for term in ("sm", "st", "cm", "ct"):
            if term in terms:
                torch.testing.assert_close(losses[f"{name}/{term}"], full_losses[f"{name}/{term}"])
            else:
                assert f"{name}/{term}" not in losses
        kept = {t: losses.get(f"{name}/{t}", 0.0) for t in ("sm", "st", "cm", "ct")}
        expected = kept["sm"] + kept["st"] + member.cfg.distill_weight * (kept["cm"] + kept["ct"])
        torch.testing.assert_close(losses[f"{name}/loss"], torch.as_tensor(expected))


def test_loss_terms_reject_unknown_terms(tiny_cfg):
    from sslkd.errors import UserError

    with pytest.raises(UserError, match="strategy.loss_terms"):
        build(tiny_cfg, extra=["strategy.loss_terms=[sm,kd]"])


def test_centred_search_targets_are_a_probe_off_by_default(tiny_cfg):
    assert not [key for key in build(tiny_cfg).state_dict() if "search" in key]  # the code's L_ct: no center
    strategy = build(tiny_cfg, extra=["strategy.center_search_targets=true"])
    center = strategy.search_centers["cnn/search"]
    center.normal_(generator=torch.Generator().manual_seed(2))
    before = center.clone()
    outputs = strategy.network_outputs(views())
    losses = strategy.losses(outputs, None, None, STEP)
    student_rows, searched = outputs["searched"]["cnn", "vit"]
    tau = teacher_temperature(STEP, strategy.options)
    assert torch.allclose(losses["cnn/ct"], feature_search_loss(student_rows, searched, 0.1, tau, before))
    assert not torch.allclose(losses["cnn/ct"], feature_search_loss(student_rows, searched, 0.1, tau))
    strategy.apply_deferred()
    momentum = strategy.options.center_momentum
    assert torch.allclose(center, momentum * before + (1 - momentum) * searched.detach().mean(0, keepdim=True))
