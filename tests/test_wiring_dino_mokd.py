"""Wiring of DINO and MOKD (issue 17, item 9): every named term and the gradient reaching every student head output
equal an independent float64 computation written here from the equations (MOKD Eq. 1-9, Algorithm 1; DINO's
multi-crop loss), with settings that make each choice visible: random centers different per member and per head,
non-default temperatures, different self and cross teacher-temperature warm-ups at a mid-warm-up step, lambda != 1
and different per member, both feature-search ways. The expected values use plain torch ops only (no sslkd.losses,
no strategy helper), so a wrong center, temperature, row selection, pairing, weight or a missing detach fails here.
"""

import numpy as np
import pytest
import torch

from sslkd.data import DatasetInfo
from sslkd.registry import STRATEGIES
from sslkd.strategies.base import StepInfo

INFO = DatasetInfo("fake", 10, 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), tuple(str(i) for i in range(10)))
B, N_LOCAL = 3, 2
N_CROPS = 2 + N_LOCAL
# mid-way through every warm-up below (4 epochs cross, 6 epochs for the CNN's self terms)
STEP = StepInfo(step=25, epoch=2, steps_per_epoch=10, total_steps=100)
WT, TT, ST, CM = 0.03, 0.09, 0.2, 0.8  # warmup_teacher_temp, teacher_temp, student_temp, center_momentum
TOL = dict(rtol=0, atol=1e-10)


def temps_options(schedule):
    return [
        f"strategy.warmup_teacher_temp={WT}",
        f"strategy.teacher_temp={TT}",
        f"strategy.student_temp={ST}",
        f"strategy.center_momentum={CM}",
        "strategy.warmup_teacher_temp_epochs=4",
        f"strategy.teacher_temp_schedule={schedule}",
    ]


def expected_tau(schedule, warmup_epochs):
    """The DINO code's np.linspace(wt, tt, W) indexed by the epoch, or a linear ramp over the steps of W epochs."""
    if schedule == "per_epoch":
        return float(np.concatenate([np.linspace(WT, TT, warmup_epochs), np.full(100, TT)])[STEP.epoch])
    ramp = warmup_epochs * STEP.steps_per_epoch
    return WT + (TT - WT) * min(STEP.step / ramp, 1.0)


def build(tiny_cfg, method, extra):
    """float64 strategy whose EMA teachers differ from their students (at init they are equal, which would hide a
    student used in a teacher's place)."""
    torch.manual_seed(0)
    strategy = STRATEGIES.get(method)(tiny_cfg(method, extra), INFO).double().train()
    with torch.no_grad():
        for member in strategy.members.values():
            for param in member.teacher.parameters():
                param.add_(0.05 * torch.randn_like(param))
    return strategy


def fixed_views():
    g = torch.Generator().manual_seed(1)
    return [torch.randn(B, 3, 32, 32, generator=g, dtype=torch.float64) for _ in range(2)] + [
        torch.randn(B, 3, 16, 16, generator=g, dtype=torch.float64) for _ in range(N_LOCAL)
    ]


@torch.no_grad()
def randomize(centers, seed):
    """Random, different centers for every buffer (member and head)."""
    g = torch.Generator().manual_seed(seed)
    for buf in centers.buffers():
        buf.copy_(0.5 * torch.randn(buf.shape, generator=g, dtype=buf.dtype))
    return {name: buf.clone() for name, buf in centers.named_buffers()}


def leaf(t):
    return t.detach().clone().requires_grad_()


# ---------------------------------------------------------------------------------------------- reference losses
def ref_H(target_probs, student_logits, tau_s):
    """Algorithm 1's H(t, s) = -(t * log softmax(s / tau_s)).sum(dim=1).mean()."""
    return -(target_probs * torch.log_softmax(student_logits / tau_s, dim=1)).sum(dim=1).mean()


def ref_dino(student, teacher, center, tau_s, tau_t):
    """DINO / MOKD Eq. 2, 3, 5 with multi-crop: teacher q in the 2 global crops, student v in all crops, v != q;
    teacher centred and sharpened, no gradient; mean over the pairs."""
    s = [student[v * B : (v + 1) * B] for v in range(N_CROPS)]
    t = [teacher[q * B : (q + 1) * B] for q in range(2)]
    terms = []
    for q in range(2):
        target = torch.softmax((t[q].detach() - center) / tau_t, dim=1)
        for v in range(N_CROPS):
            if v != q:
                terms.append(ref_H(target, s[v], tau_s))
    assert len(terms) == 2 * N_CROPS - 2
    return sum(terms) / len(terms)


def ref_ct(student_rows, searched, tau_s, tau_t):
    """MOKD Eq. 7 / Algorithm 1: H(searched crop c, student crop c) averaged over the crops (1/2 for two views);
    the searched target is sharpened, not centred, and carries no gradient."""
    n = student_rows.shape[0] // B
    terms = [
        ref_H(torch.softmax(searched[c * B : (c + 1) * B].detach() / tau_t, dim=1), student_rows[c * B : (c + 1) * B], tau_s)
        for c in range(n)
    ]
    return sum(terms) / n


def assert_grads(total, expected_total, leaves):
    got = torch.autograd.grad(total, leaves, allow_unused=True, retain_graph=True)
    want = torch.autograd.grad(expected_total, leaves, allow_unused=True, retain_graph=True)
    for name, g, w in zip(leaves, got, want):
        if w is None:
            assert g is None or g.abs().max() == 0, "a gradient reached a target (teacher / searched) output"
        else:
            assert g is not None, "no gradient reached a student head output"
            torch.testing.assert_close(g, w, **TOL)


# ---------------------------------------------------------------------------------------------- DINO
@pytest.mark.parametrize("schedule", ["per_epoch", "per_step"])
def test_dino_terms_gradients_centers_schedule(tiny_cfg, schedule):
    extra = temps_options(schedule) + ["members.cnn2={backbone: cifar_resnet20, backbone_args: {widths: [4, 6, 8]}}"]
    strategy = build(tiny_cfg, "dino", extra)
    centers = randomize(strategy.centers, seed=5)
    assert not torch.allclose(centers["cnn__dino"], centers["cnn2__dino"])
    outputs = strategy.network_outputs(fixed_views())
    for out in outputs.values():
        assert out["student"].shape[0] == N_CROPS * B and out["teacher"].shape[0] == 2 * B
        assert not out["teacher"].requires_grad, "teacher pass builds a graph"
        out["student"], out["teacher"] = leaf(out["student"]), leaf(out["teacher"])
    terms = strategy.losses(outputs, None, None, STEP)
    tau_t = expected_tau(schedule, 4)
    assert strategy.schedule_values(STEP) == pytest.approx({"teacher_temp": tau_t}, abs=1e-15)

    expected = {f"{m}/loss": ref_dino(o["student"], o["teacher"], centers[f"{m}__dino"], ST, tau_t) for m, o in outputs.items()}
    expected["loss"] = sum(expected.values())
    assert set(terms) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(terms[key], value, **TOL, msg=key)
    leaves = [o[k] for o in outputs.values() for k in ("student", "teacher")]
    assert_grads(terms["loss"], expected["loss"], leaves)

    # centers: untouched until the step is accepted, then c' = m c + (1 - m) mean over both global crops
    for key, before in centers.items():
        assert torch.equal(getattr(strategy.centers, key), before)
    strategy.apply_deferred()
    for m, o in outputs.items():
        want = CM * centers[f"{m}__dino"] + (1 - CM) * o["teacher"].detach().mean(dim=0, keepdim=True)
        torch.testing.assert_close(strategy.centers[f"{m}/dino"], want, **TOL)


# ---------------------------------------------------------------------------------------------- MOKD
def mokd(tiny_cfg, search, schedule="per_epoch"):
    extra = temps_options(schedule) + [
        "strategy.self_warmup_teacher_temp_epochs={cnn: 6}",
        f"strategy.feature_search={search}",
        "strategy.detach_search_query=true",
        "members.cnn.distill_weight=0.3",
        "members.vit.distill_weight=0.7",
        "members.vit.drop_path_rate=0.0",
    ]
    return build(tiny_cfg, "mokd", extra)


@pytest.mark.parametrize("search,schedule", [("code", "per_epoch"), ("paper", "per_epoch"), ("code", "per_step")])
def test_mokd_terms_gradients_centers_schedule(tiny_cfg, search, schedule):
    strategy = mokd(tiny_cfg, search, schedule)
    dino_c = randomize(strategy.centers, seed=5)
    thead_c = randomize(strategy.thead_centers, seed=6)
    outputs = strategy.network_outputs(fixed_views())
    students, teachers, searched = outputs["students"], outputs["teachers"], outputs["searched"]
    rows = slice(2 * B, None) if search == "code" else slice(0, 2 * B)  # code: local crops; paper: global views
    for s in students.values():
        s["mlp"], s["thead"] = leaf(s["mlp"]), leaf(s["thead"])
    for t in teachers.values():
        assert not t["mlp"].requires_grad and not t["thead"].requires_grad
        t["mlp"], t["thead"] = leaf(t["mlp"]), leaf(t["thead"])
    for (m, p), (student_rows, target) in list(searched.items()):
        assert not target.requires_grad, "detach_search_query=true: the searched output depends on the student"
        searched[m, p] = (students[m]["thead"][rows], leaf(target))
    terms = strategy.losses(outputs, None, None, STEP)

    tau_cross = expected_tau(schedule, 4)
    tau_self = {"cnn": expected_tau(schedule, 6), "vit": tau_cross}
    assert tau_self["cnn"] != tau_cross
    values = strategy.schedule_values(STEP)
    assert values == pytest.approx(
        {"teacher_temp/cnn/self": tau_self["cnn"], "teacher_temp/vit/self": tau_self["vit"], "teacher_temp/cross": tau_cross}, abs=1e-15
    )
    lam = {"cnn": 0.3, "vit": 0.7}
    expected = {}
    for m, p in (("cnn", "vit"), ("vit", "cnn")):
        s, t, tp = students[m], teachers[m], teachers[p]
        expected[f"{m}/sm"] = ref_dino(s["mlp"], t["mlp"], dino_c[f"{m}__dino"], ST, tau_self[m])
        expected[f"{m}/st"] = ref_dino(s["thead"], t["thead"], thead_c[f"{m}__thead"], ST, tau_self[m])
        expected[f"{m}/cm"] = ref_dino(s["mlp"], tp["mlp"], dino_c[f"{p}__dino"], ST, tau_cross)
        expected[f"{m}/ct"] = ref_ct(s["thead"][rows], searched[m, p][1], ST, tau_cross)
        expected[f"{m}/loss"] = expected[f"{m}/sm"] + expected[f"{m}/st"] + lam[m] * (expected[f"{m}/cm"] + expected[f"{m}/ct"])
    expected["loss"] = expected["cnn/loss"] + expected["vit/loss"]
    assert set(terms) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(terms[key], value, **TOL, msg=key)
    leaves = [students[m][k] for m in students for k in ("mlp", "thead")]
    leaves += [teachers[m][k] for m in teachers for k in ("mlp", "thead")] + [pair[1] for pair in searched.values()]
    assert_grads(terms["loss"], expected["loss"], leaves)
    # each member's total reaches only its own student's outputs
    got = torch.autograd.grad(terms["cnn/loss"], [students["vit"]["mlp"], students["vit"]["thead"]], allow_unused=True)
    assert all(g is None or g.abs().max() == 0 for g in got)

    # one center per teacher head, updated only once the step is accepted, from the uncentred teacher mean
    for key, before in {**dino_c, **thead_c}.items():
        owner = strategy.centers if key.endswith("dino") else strategy.thead_centers
        assert torch.equal(getattr(owner, key), before)
    strategy.apply_deferred()
    for m in ("cnn", "vit"):
        for head, owner, old in (("mlp", strategy.centers, dino_c), ("thead", strategy.thead_centers, thead_c)):
            key = f"{m}/{'dino' if head == 'mlp' else 'thead'}"
            want = CM * old[key.replace("/", "__")] + (1 - CM) * teachers[m][head].detach().mean(dim=0, keepdim=True)
            torch.testing.assert_close(owner[key], want, **TOL, msg=key)


def t_head_search(thead, query, tokens):
    """Eq. 6 as the code runs it, written from the T-Head's submodules: blocks over [query; tokens] with full
    self-attention, final norm, drop the query's output, mean over the other tokens, last layer."""
    x = torch.cat([query.unsqueeze(1), tokens], dim=1)
    for block in thead.blocks:
        x = block(x)
    return thead.last_layer(thead.norm(x)[:, 1:].mean(dim=1))


def t_head_tokens(thead, backbone_tokens, grid):
    assert tuple(grid) == tuple(thead.grid)  # global crops: the head's own positional grid, no resampling
    return thead.proj(backbone_tokens) + thead.pos_embed


@pytest.mark.parametrize("search", ["code", "paper"])
def test_mokd_feature_search_from_the_network_side(tiny_cfg, search):
    """searched[m, p] = peer p's TEACHER T-Head over [m's student query (detached); p's teacher tokens]: code way
    from each local crop against the first global crop, paper way from global view a against global view b."""
    strategy = mokd(tiny_cfg, search)
    views = fixed_views()
    with torch.no_grad():
        outputs = strategy.network_outputs(views)
        globals_, locals_ = torch.cat(views[:2]), torch.cat(views[2:])
        for m, p in (("cnn", "vit"), ("vit", "cnn")):
            student = strategy.members[m].student
            peer_teacher = strategy.members[p].teacher.module
            assert peer_teacher is not strategy.members[p].student
            if search == "code":
                pooled, _, _ = student["backbone"].forward_tokens(locals_)
            else:
                pooled, _, _ = student["backbone"].forward_tokens(globals_)
            query = student["thead"].proj(pooled)
            _, tok, grid = peer_teacher["backbone"].forward_tokens(globals_)  # both globals in one pass (batch norm)
            tokens = t_head_tokens(peer_teacher["thead"], tok, grid)
            first, second = tokens[:B], tokens[B : 2 * B]
            if search == "code":
                target_tokens = torch.cat([first] * N_LOCAL)  # first global crop, repeated for each local crop
            else:
                target_tokens = torch.cat([second, first])  # query from view a searches view b, and back
            want = t_head_search(peer_teacher["thead"], query, target_tokens)
            student_rows, got = outputs["searched"][m, p]
            torch.testing.assert_close(got, want, **TOL, msg=f"{m}->{p}")
            rows = slice(2 * B, None) if search == "code" else slice(0, 2 * B)
            assert torch.equal(student_rows, outputs["students"][m]["thead"][rows])
            # the search runs on the peer's teacher, not its student
            wrong = t_head_search(strategy.members[p].student["thead"], query, target_tokens)
            assert not torch.allclose(got, wrong)
            # the teacher outputs the losses target: the peer teacher's heads on the global crops
            feats, _, _ = peer_teacher["backbone"].forward_tokens(globals_)
            torch.testing.assert_close(outputs["teachers"][p]["mlp"], peer_teacher["dino"](feats), **TOL)
            x = tokens
            for block in peer_teacher["thead"].blocks:
                x = block(x)
            want_thead = peer_teacher["thead"].last_layer(peer_teacher["thead"].norm(x).mean(dim=1))
            torch.testing.assert_close(outputs["teachers"][p]["thead"], want_thead, **TOL)


def test_mokd_no_teacher_parameter_receives_a_gradient(tiny_cfg):
    strategy = mokd(tiny_cfg, "code")
    strategy(fixed_views(), None, None, STEP)["loss"].backward()
    for member in strategy.members.values():
        assert all(p.grad is None for p in member.teacher.parameters())
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in member.student["thead"].parameters())
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in member.student["dino"].parameters())
