"""Wiring of the supervised online-KD strategies (supervised, DML, MCL, L-MCL): one step of a tiny cohort in float64,
every named term and the gradient reaching every head output checked against a computation written here from the
papers' equations (MCL Eq. 2-10, 13, 15-20; DML Eq. 10), not from sslkd's loss functions. Settings make each choice
visible: alpha != beta, tau and T != 0.5 or 1, three members, repeated classes (several positives), different
distillation weights per member, both soft-term column conventions."""

import math

import pytest
import torch

from sslkd.config import load_config
from sslkd.data import DatasetInfo
from sslkd.registry import STRATEGIES
from sslkd.strategies.base import StepInfo

INFO = DatasetInfo("fake", 4, 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), ("a", "b", "c", "d"))
TINY = "{widths: [4, 8, 8]}"
STEP = StepInfo(0, 0, 1, 1)
LABELS = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])  # several positives per anchor, every anchor has one
MCL_SETTINGS = ["strategy.alpha=0.3", "strategy.beta=0.7", "strategy.tau=0.2", "strategy.soft_temperature=2.5",
                "strategy.embed_dim=6", "strategy.embed_hidden_dim=5"]
TOL = dict(rtol=1e-10, atol=1e-12)


def cohort(method, extra=()):
    torch.manual_seed(0)
    overrides = [f"members.small.backbone_args={TINY}", f"members.large.backbone_args={TINY}",
                 "members.third={backbone: cifar_resnet20, backbone_args: " + TINY + "}", *extra]
    cfg = load_config(method, None, overrides)
    return STRATEGIES.get(method)(cfg, INFO).double().train()


def images(n=8):
    torch.manual_seed(1)
    return [torch.randn(n, 3, 32, 32, dtype=torch.float64)]


# ------------------------------------------------------------------------------------------ reference equations
def log_softmax(row):
    return row - torch.logsumexp(row, dim=0)


def cross_entropy(logits, labels):
    """-1/B sum_i log softmax(z_i)[y_i]."""
    return -sum(log_softmax(logits[i])[labels[i]] for i in range(len(labels))) / len(labels)


def kl_at(target_rows, rows, temperature):
    """T^2 1/B sum_i KL(softmax(t_i / T) || softmax(s_i / T)), the targets constants."""
    total = 0.0
    for target, row in zip(target_rows, rows):
        log_q = log_softmax(target.detach() / temperature)
        total = total + (log_q.exp() * (log_q - log_softmax(row / temperature))).sum()
    return temperature**2 * total / len(rows)


def contrastive_rows(similarity, keep_anchor):
    """Row i of the contrastive distribution: v^i against every batch sample, v^i's own column (the anchor, not a
    contrastive sample in Eq. 1) left out unless ``keep_anchor`` (the authors' code for the soft terms)."""
    return [similarity[i] if keep_anchor else torch.cat([similarity[i, :i], similarity[i, i + 1:]])
            for i in range(similarity.shape[0])]


def supervised_contrastive(similarity, labels):
    """MCL Eq. (2)/(5) with in-batch positives: anchor i's loss is -log p over each same-label sample j != i, averaged
    over its positives; the softmax runs over every j != i."""
    total = 0.0
    for i in range(similarity.shape[0]):
        others = [j for j in range(similarity.shape[0]) if j != i]
        log_p = log_softmax(similarity[i, others])
        positives = [k for k, j in enumerate(others) if labels[j] == labels[i]]
        total = total - sum(log_p[k] for k in positives) / len(positives)
    return total / similarity.shape[0]


def mcl_terms(v, labels, alpha, beta, tau, temperature, keep_anchor):
    """MCL Eq. (3), (7), (8), (9) and (10) for embeddings ``v`` {member: [B, d]}."""
    names = list(v)
    own = {m: v[m] @ v[m].T / tau for m in names}
    cross = {(a, b): v[a] @ v[b].T / tau for a in names for b in names if a != b}
    vcl = sum(supervised_contrastive(own[m], labels) for m in names)
    icl = sum(supervised_contrastive(cross[pair], labels) for pair in cross)
    soft_vcl = sum(kl_at(contrastive_rows(own[l], keep_anchor), contrastive_rows(own[m], keep_anchor), temperature)
                   for m in names for l in names if l != m)
    soft_icl = sum(kl_at(contrastive_rows(cross[(b, a)], keep_anchor), contrastive_rows(cross[(a, b)], keep_anchor),
                         temperature) for a, b in cross)
    return {"vcl": vcl, "icl": icl, "soft_vcl": soft_vcl, "soft_icl": soft_icl,
            "loss": alpha * (vcl + icl) + beta * (soft_vcl + soft_icl)}


# ------------------------------------------------------------------------------------------ helpers
def leaves(outputs):
    """A copy of ``outputs`` whose tensors that carry a gradient are fresh leaves (so each gets its own .grad)."""
    if isinstance(outputs, torch.Tensor):
        return outputs.detach().clone().requires_grad_() if outputs.requires_grad else outputs
    if isinstance(outputs, dict):
        return {k: leaves(v) for k, v in outputs.items()}
    return [leaves(v) for v in outputs]


def flat(outputs, prefix=""):
    if isinstance(outputs, torch.Tensor):
        return {prefix: outputs} if outputs.requires_grad else {}
    items = outputs.items() if isinstance(outputs, dict) else enumerate(outputs)
    return {k: t for key, value in items for k, t in flat(value, f"{prefix}/{key}").items()}


def check_against_reference(strategy, outputs, labels, reference):
    """Every named term of ``strategy.losses`` equals ``reference(outputs)`` and so does the gradient of "loss"
    with respect to every head output."""
    ours_in, theirs_in = leaves(outputs), leaves(outputs)
    ours = strategy.losses(ours_in, labels, torch.arange(len(labels)), STEP)
    theirs = reference(theirs_in)
    assert set(ours) == set(theirs)
    for name in theirs:
        torch.testing.assert_close(ours[name], theirs[name].to(ours[name].dtype), **TOL, msg=name)
    ours["loss"].backward()
    theirs["loss"].backward()
    ours_leaves, theirs_leaves = flat(ours_in), flat(theirs_in)
    assert ours_leaves, "no head output carries a gradient"
    for key, leaf in theirs_leaves.items():
        expected = leaf.grad if leaf.grad is not None else torch.zeros_like(leaf)
        got = ours_leaves[key].grad if ours_leaves[key].grad is not None else torch.zeros_like(leaf)
        torch.testing.assert_close(got, expected, **TOL, msg=f"gradient reaching {key}")


def check_forward_is_losses_of_outputs(strategy, views, labels):
    torch.manual_seed(5)
    direct = strategy(views, labels, torch.arange(len(labels)), STEP)
    torch.manual_seed(5)
    split = strategy.losses(strategy.network_outputs(views), labels, torch.arange(len(labels)), STEP)
    for name in direct:
        torch.testing.assert_close(direct[name], split[name], **TOL)


def assert_is_member_classifier(strategy, views, logits):
    for name, member in strategy.members.items():
        student = member.student
        torch.testing.assert_close(logits[name], student["classifier"](student["backbone"](views[0])), **TOL)


# ------------------------------------------------------------------------------------------ strategies
def test_supervised_wiring():
    strategy = cohort("supervised")
    views = images()
    outputs = strategy.network_outputs(views)
    assert_is_member_classifier(strategy, views, outputs["logits"])

    def reference(out):
        terms = {f"{m}/loss": cross_entropy(z, LABELS) for m, z in out["logits"].items()}
        return {**terms, "loss": sum(terms.values())}

    check_against_reference(strategy, outputs, LABELS, reference)
    check_forward_is_losses_of_outputs(strategy, views, LABELS)


def test_dml_wiring_temperature_peer_mean_and_member_weights():
    strategy = cohort("dml", ["strategy.temperature=2.0", "members.small.distill_weight=0.4",
                              "members.third.distill_weight=1.7"])
    views = images()
    outputs = strategy.network_outputs(views)
    assert_is_member_classifier(strategy, views, outputs["logits"])

    def reference(out):
        z, terms = out["logits"], {}
        for m in z:
            peers = [l for l in z if l != m]
            # DML Eq. (10): CE + 1/(M-1) sum_l KL(p_l || p_m), at temperature T scaled by T^2
            kl = sum(kl_at(z[l], z[m], 2.0) for l in peers) / len(peers)
            ce = cross_entropy(z[m], LABELS)
            weight = strategy.members[m].cfg.distill_weight
            terms.update({f"{m}/ce": ce, f"{m}/kl": kl, f"{m}/loss": ce + weight * kl})
        return {**terms, "loss": sum(terms[f"{m}/loss"] for m in z)}

    check_against_reference(strategy, outputs, LABELS, reference)
    check_forward_is_losses_of_outputs(strategy, views, LABELS)


@pytest.mark.parametrize("soft_anchor_column", ["drop", "keep"])
def test_mcl_wiring_three_members(soft_anchor_column):
    strategy = cohort("mcl", [*MCL_SETTINGS, f"strategy.soft_anchor_column={soft_anchor_column}"])
    views = images()
    outputs = strategy.network_outputs(views)
    assert_is_member_classifier(strategy, views, outputs["logits"])
    for name, member in strategy.members.items():  # v = normalise(zeta(phi(x))) (MCL Sec. 3.1)
        projected = member.student["embed"](member.student["backbone"](views[0]))
        torch.testing.assert_close(outputs["embeddings"][name], projected / projected.norm(dim=1, keepdim=True), **TOL)

    def reference(out):
        terms = {f"{m}/ce": cross_entropy(z, LABELS) for m, z in out["logits"].items()}
        mcl = mcl_terms(out["embeddings"], LABELS, 0.3, 0.7, 0.2, 2.5, soft_anchor_column == "keep")
        terms.update({k: v for k, v in mcl.items() if k != "loss"})
        return {**terms, "mcl": mcl["loss"], "loss": sum(terms[f"{m}/ce"] for m in out["logits"]) + mcl["loss"]}

    check_against_reference(strategy, outputs, LABELS, reference)
    check_forward_is_losses_of_outputs(strategy, views, LABELS)


def test_mcl_moco_form_wiring():
    strategy = cohort("mcl", ["strategy.form=moco", "strategy.moco={queue_size: 5, momentum: 0.9}", "strategy.alpha=0.3",
                              "strategy.beta=0.7", "strategy.tau=0.2", "strategy.soft_temperature=2.5",
                              "strategy.embed_dim=6", "strategy.embed_hidden_dim=null"])
    torch.manual_seed(2)
    views = [*images(), torch.randn(8, 3, 32, 32, dtype=torch.float64)]
    outputs = strategy.network_outputs(views)
    assert not any(k.requires_grad for k in outputs["keys"].values())  # key encoders: no gradient (MoCo)
    queues = {m: strategy.queues[m].keys.clone() for m in strategy.members}

    def reference(out):
        q, k = out["queries"], out["keys"]
        # Eq. (1)/(4) with MoCo's dictionary: [q_a . k_b, q_a . queue_b] / tau, the positive first
        rows = {(a, b): torch.cat([(q[a] * k[b]).sum(1, keepdim=True), q[a] @ queues[b].T], 1) / 0.2
                for a in q for b in q}
        hard = {pair: -sum(log_softmax(r)[0] for r in rows[pair]) / 8 for pair in rows}
        vcl = sum(hard[(m, m)] for m in q)
        icl = sum(hard[(a, b)] for a in q for b in q if a != b)
        soft_vcl = sum(kl_at(rows[(l, l)], rows[(m, m)], 2.5) for m in q for l in q if l != m)
        soft_icl = sum(kl_at(rows[(b, a)], rows[(a, b)], 2.5) for a in q for b in q if a != b)
        return {"vcl": vcl, "icl": icl, "soft_vcl": soft_vcl, "soft_icl": soft_icl,
                "loss": 0.3 * (vcl + icl) + 0.7 * (soft_vcl + soft_icl)}

    check_against_reference(strategy, outputs, LABELS, reference)
    strategy.discard_deferred()
    for m in strategy.members:
        assert torch.equal(strategy.queues[m].keys, queues[m])


@pytest.mark.parametrize("soft_anchor_column", ["drop", "keep"])
def test_lmcl_wiring_three_members(soft_anchor_column):
    strategy = cohort("lmcl", [*MCL_SETTINGS, f"strategy.soft_anchor_column={soft_anchor_column}",
                               "strategy.logit_temperature=2.0", "strategy.contrast_stages=[1, 3]"])
    views = images()
    outputs = strategy.network_outputs(views)
    for name, out in outputs["members"].items():  # Eq. (11), (12), (16), (17)
        student = strategy.members[name].student
        features = out["features"]
        torch.testing.assert_close(features[-1], student["backbone"](views[0]), **TOL)
        classifiers = [*student["aux_classifiers"], student["classifier"]]
        for f, z, g in zip(features, out["logits"], classifiers):
            torch.testing.assert_close(z, g(f), **TOL)
        gate = torch.softmax(student["gate"](torch.cat(features, 1)), dim=1)
        torch.testing.assert_close(out["weights"], gate, **TOL)
        torch.testing.assert_close(out["ensemble"], sum(gate[:, [l]] * z for l, z in enumerate(out["logits"])), **TOL)

    def reference(out):
        members, terms = out["members"], {}
        for m, o in members.items():
            terms[f"{m}/task"] = sum(cross_entropy(z, LABELS) for z in o["logits"])  # Eq. (15)
            terms[f"{m}/task_gate"] = cross_entropy(o["ensemble"], LABELS)  # Eq. (18)
        # Eq. (19): every member's final logits distil from every peer's (detached) ensemble
        terms["logit"] = sum(kl_at(members[b]["ensemble"], members[a]["logits"][-1], 2.0)
                             for a in members for b in members if b != a)
        for stage in (1, 3):  # Eq. (13) over the chosen stages
            v = {m: o["embeddings"][stage - 1] for m, o in members.items()}
            terms[f"mcl/stage{stage}"] = mcl_terms(v, LABELS, 0.3, 0.7, 0.2, 2.5, soft_anchor_column == "keep")["loss"]
        terms["layer_mcl"] = terms["mcl/stage1"] + terms["mcl/stage3"]
        return {**terms, "loss": sum(v for k, v in terms.items() if "/stage" not in k)}

    check_against_reference(strategy, outputs, LABELS, reference)
    check_forward_is_losses_of_outputs(strategy, views, LABELS)


def test_soft_anchor_column_changes_the_soft_terms_only():
    """Both conventions on the same embeddings: the hard terms agree, the soft ones differ (the anchor's own column,
    v.v / tau = 1 / tau, dominates each VCL row when kept)."""
    terms = {}
    for column in ("drop", "keep"):
        strategy = cohort("mcl", [*MCL_SETTINGS, f"strategy.soft_anchor_column={column}"])
        terms[column] = {k: v.detach() for k, v in strategy(images(), LABELS, torch.arange(8), STEP).items()}
    for name in ("vcl", "icl", "small/ce"):
        torch.testing.assert_close(terms["drop"][name], terms["keep"][name], **TOL)
    for name in ("soft_vcl", "soft_icl"):
        assert not math.isclose(float(terms["drop"][name]), float(terms["keep"][name]), rel_tol=1e-3)
