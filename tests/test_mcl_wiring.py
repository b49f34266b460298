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


def kl_at(target_rows, rows, temperature, weights=None):
    """T^2 1/B sum_i w_i KL(softmax(t_i / T) || softmax(s_i / T)), the targets constants, w_i = 1 by default."""
    total = 0.0
    for i, (target, row) in enumerate(zip(target_rows, rows)):
        log_q = log_softmax(target.detach() / temperature)
        kl = (log_q.exp() * (log_q - log_softmax(row / temperature))).sum()
        total = total + (kl if weights is None else weights[i] * kl)
    return temperature**2 * total / len(rows)


def contrastive_rows(similarity, keep_anchor):
    """Row i of the contrastive distribution: v^i against every batch sample, v^i's own column (the anchor, not a
    contrastive sample in Eq. 1) left out unless ``keep_anchor`` (the authors' code for the soft terms)."""
    return [similarity[i] if keep_anchor else torch.cat([similarity[i, :i], similarity[i, i + 1:]])
            for i in range(similarity.shape[0])]


def supervised_contrastive(similarity, labels, weights=None):
    """MCL Eq. (2)/(5) with in-batch positives: anchor i's loss is -log p over each same-label sample j != i, averaged
    over its positives; the softmax runs over every j != i. ``weights`` w_i scale anchor i's loss."""
    total = 0.0
    for i in range(similarity.shape[0]):
        others = [j for j in range(similarity.shape[0]) if j != i]
        log_p = log_softmax(similarity[i, others])
        positives = [k for k, j in enumerate(others) if labels[j] == labels[i]]
        loss = -sum(log_p[k] for k in positives) / len(positives)
        total = total + (loss if weights is None else weights[i] * loss)
    return total / similarity.shape[0]


def mcl_terms(v, labels, alpha, beta, tau, temperature, keep_anchor, weights=None):
    """MCL Eq. (3), (7), (8), (9) and (10) for embeddings ``v`` {member: [B, d]}, every anchor's row weighted by
    ``weights`` when given."""
    names = list(v)
    own = {m: v[m] @ v[m].T / tau for m in names}
    cross = {(a, b): v[a] @ v[b].T / tau for a in names for b in names if a != b}
    vcl = sum(supervised_contrastive(own[m], labels, weights) for m in names)
    icl = sum(supervised_contrastive(cross[pair], labels, weights) for pair in cross)
    soft_vcl = sum(kl_at(contrastive_rows(own[l], keep_anchor), contrastive_rows(own[m], keep_anchor), temperature,
                         weights) for m in names for l in names if l != m)
    soft_icl = sum(kl_at(contrastive_rows(cross[(b, a)], keep_anchor), contrastive_rows(cross[(a, b)], keep_anchor),
                         temperature, weights) for a, b in cross)
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


def check_against_reference(strategy, outputs, labels, reference, step=STEP):
    """Every named term of ``strategy.losses`` equals ``reference(outputs)`` and so does the gradient of "loss"
    with respect to every head output."""
    ours_in, theirs_in = leaves(outputs), leaves(outputs)
    ours = strategy.losses(ours_in, labels, torch.arange(len(labels)), step)
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


# ------------------------------------------------------------------------------------------ L-MCL meta pair weights
META = [*MCL_SETTINGS, "strategy.soft_anchor_column=keep", "strategy.pair_weights=meta", "strategy.logit_temperature=2.0",
        "strategy.meta={every: 2, inner_steps: 2, lr: 0.01, momentum: 0.9, weight_decay: 0.01, proj_dim: 5}"]


def meta_cohort(extra=()):
    torch.manual_seed(0)
    cfg = load_config("lmcl", None, [f"members.small.backbone_args={TINY}", f"members.large.backbone_args={TINY}",
                                     *META, *extra])
    return STRATEGIES.get("lmcl")(cfg, INFO).double().train()


def authors_pair_weights(strategy, members):
    """The authors' loss-weight network: w = sigmoid(cos(P_a^[k] F_a^[k], P_b^[z] F_b^[z])) per anchor, for every
    ordered member pair a != b and every stage pair (k, z)."""
    projected = {m: [p(f) for p, f in zip(strategy.members[m].student["pair_weight_proj"], o["features"])]
                 for m, o in members.items()}
    return {(a, k, b, z): torch.sigmoid(torch.cosine_similarity(pa, pb, dim=1))
            for a in members for b in members if a != b
            for k, pa in enumerate(projected[a]) for z, pb in enumerate(projected[b])}


def authors_weighted_layer_mcl(members, weights):
    """The authors' Sup_MCL_Loss_Meta: the two-network MCL terms between v_a^[k] and v_b^[z], rows weighted."""
    sums = {}
    for (a, k, b, z), w in weights.items():
        pair = {"a": members[a]["embeddings"][k], "b": members[b]["embeddings"][z]}
        for term, value in mcl_terms(pair, LABELS, 0.3, 0.7, 0.2, 2.5, True, w).items():
            sums[term] = sums.get(term, 0.0) + value
    return sums


def test_lmcl_meta_pair_weights_terms_and_gradients():
    strategy = meta_cohort()
    views = images()
    outputs = strategy.network_outputs(views)
    assert len(strategy.pair_weights(outputs["members"])) == 2 * 3 * 3
    for key, w in authors_pair_weights(strategy, outputs["members"]).items():
        torch.testing.assert_close(strategy.pair_weights(outputs["members"])[key], w, **TOL)

    def reference(out):
        members, terms = out["members"], {}
        for m, o in members.items():
            terms[f"{m}/task"] = sum(cross_entropy(z, LABELS) for z in o["logits"])
            terms[f"{m}/task_gate"] = cross_entropy(o["ensemble"], LABELS)
        terms["logit"] = sum(kl_at(members[b]["ensemble"], members[a]["logits"][-1], 2.0)
                             for a in members for b in members if b != a)
        with torch.no_grad():  # the weights are constants of the training loss
            weights = authors_pair_weights(strategy, members)
        layer = authors_weighted_layer_mcl(members, weights)
        terms.update({f"layer_mcl/{t}": v for t, v in layer.items() if t != "loss"})
        terms["layer_mcl"] = layer["loss"]
        return {**terms, "loss": sum(v for k, v in terms.items() if not k.startswith("layer_mcl/"))}

    check_against_reference(strategy, outputs, LABELS, reference, step=StepInfo(1, 0, 4, 4))  # no meta step


def lookahead_outer_loss(strategy, views, inner_steps, soft_terms):
    """The outer objective (task CE of every stage) after the authors' look-ahead, computed step by step without
    differentiating through it: ``inner_steps`` SGD steps (momentum 0.9, wd 0.01, lr 0.01) on the weighted
    layer-wise MCL loss (weights with their gradient path through the features), then one on the outer objective."""
    def outer(members):
        return sum(cross_entropy(z, LABELS) for o in members.values() for z in o["logits"])

    def inner(members):
        terms = authors_weighted_layer_mcl(members, authors_pair_weights(strategy, members))
        return terms["loss"] if soft_terms else 0.3 * (terms["vcl"] + terms["icl"])

    params = [p for n, p in strategy.named_parameters()
              if ".student." in n and "pair_weight_proj" not in n and ".gate." not in n]
    velocity = None
    for objective in [inner] * inner_steps + [outer]:
        grads = torch.autograd.grad(objective(strategy.network_outputs(views)["members"]), params, allow_unused=True)
        grads = [(g if g is not None else torch.zeros_like(p)) + 0.01 * p for g, p in zip(grads, params)]
        velocity = grads if velocity is None else [0.9 * v + g for v, g in zip(velocity, grads)]
        with torch.no_grad():
            for p, v in zip(params, velocity):
                p.sub_(0.01 * v)
    with torch.no_grad():
        return outer(strategy.network_outputs(views)["members"])


@pytest.mark.parametrize("inner_steps, terms", [(1, "[vcl, icl, soft_vcl, soft_icl]"), (2, "[vcl, icl]")])
def test_lmcl_meta_hypergradient_matches_finite_differences_and_leaves_the_loss_unchanged(inner_steps, terms):
    """The hypergradient differentiates through the unrolled steps with the soft labels' stop-gradient kept (as
    the authors' reverse pass does): it is the derivative of the look-ahead itself when no soft label is computed
    from a parameter that the look-ahead has already moved, so with one inner step, or without the soft terms."""
    import copy

    strategy = meta_cohort([f"strategy.meta.inner_steps={inner_steps}", f"strategy.terms={terms}"])
    views = images()
    meta_step, plain_step = StepInfo(0, 0, 4, 4), StepInfo(1, 0, 4, 4)
    with_meta = strategy.losses(strategy.network_outputs(views), LABELS, torch.arange(8), meta_step)
    without = strategy.losses(strategy.network_outputs(views), LABELS, torch.arange(8), plain_step)
    torch.testing.assert_close(with_meta["loss"], without["loss"], rtol=0, atol=0)  # the meta term is exactly 0
    without["loss"].backward()
    plain_grads = {n: p.grad.clone() for n, p in strategy.named_parameters() if p.grad is not None}
    assert not any("pair_weight_proj" in n for n in plain_grads)  # the training loss treats the weights as constants
    strategy.zero_grad(set_to_none=True)
    with_meta["loss"].backward()
    for name, p in strategy.named_parameters():  # the meta term reaches the weight network only
        if "pair_weight_proj" not in name:
            torch.testing.assert_close(p.grad, plain_grads.get(name), rtol=0, atol=0, msg=name)
    projection = strategy.members["large"].student["pair_weight_proj"][1]
    for index in [(0, 0), (3, 7)]:
        shifted = []
        for sign in (1.0, -1.0):
            probe = copy.deepcopy(strategy)
            with torch.no_grad():
                probe.members["large"].student["pair_weight_proj"][1].weight[index] += sign * 1e-7
            shifted.append(lookahead_outer_loss(probe, views, inner_steps, soft_terms=inner_steps == 1))
        finite_difference = (shifted[0] - shifted[1]) / 2e-7  # small: ReLU kinks are near
        torch.testing.assert_close(projection.weight.grad[index], finite_difference, rtol=1e-5, atol=1e-9)
    assert projection.weight.grad.abs().sum() > 0


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")
def test_lmcl_meta_hypergradient_reaches_the_weight_network_under_the_onednn_linear_kernel():
    """The trainer runs a CPU fp32 step under ``OneDNNLinears`` (``train.linear_kernel=auto``); the meta-gradient
    differentiates through the Linear layers' gradients, so the oneDNN function must keep them differentiable
    (tests/test_onednn_linear.py checks its second derivatives' values; this look-ahead amplifies fp32 rounding
    too much to compare its values across kernels: a 1e-6 nudge of the weights moves them as much)."""
    from sslkd.models.kernels import OneDNNLinears

    strategy = meta_cohort().float()
    with OneDNNLinears():
        with_meta = strategy.losses(strategy.network_outputs([v.float() for v in images()]), LABELS, torch.arange(8),
                                    StepInfo(0, 0, 4, 4))
    assert with_meta["loss"].grad_fn is not None
    with_meta["loss"].backward()
    weight_network = [p.grad for n, p in strategy.named_parameters() if "pair_weight_proj" in n]
    assert weight_network and all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
                                  for g in weight_network)


def test_lmcl_meta_needs_batch_mining():
    from sslkd.errors import UserError

    with pytest.raises(UserError, match="pair_weights=meta"):
        cohort("lmcl", ["strategy.pair_weights=meta", "strategy.mining=memory"])
