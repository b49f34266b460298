"""Wiring of SDSSL (each base), BYOL and MoCo v3: one step of a tiny float64 model, then every named term and the
gradient each term sends to each head output, against an independent computation written here from the papers'
equations (SDSSL Eq. 1-6, Algorithm 1; the SDSSL code's ``pl_train_simclr`` for ``simclr_loss: nt_xent``), never
from sslkd's losses or the strategies' helpers. Settings make each choice visible: alpha != beta, tau != 0.5,
both views, the alpha ramp at a middle step, distinct outputs per view and layer."""

import math

import pytest
import torch
import torch.nn.functional as F

from sslkd.config import load_config
from sslkd.data import DatasetInfo
from sslkd.registry import STRATEGIES
from sslkd.strategies.base import StepInfo
from sslkd.strategies.objectives import PairOutputs
from sslkd.strategies.sdssl import LayerOutputs, SDSSLOutputs

INFO = DatasetInfo("fake", 10, 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), tuple(str(i) for i in range(10)))
TINY = ["train.epochs=1", "train.batch_size=16", "data.num_workers=0",
        "members.vit.backbone_args={img_size: 32, patch_size: 8, depth: 3, embed_dim: 24, num_heads: 2}",
        "members.vit.drop_path_rate=0.0", "strategy.proj_hidden_dim=16", "strategy.pred_hidden_dim=16",
        "strategy.out_dim=8"]
STEP = StepInfo(step=3, epoch=0, steps_per_epoch=10, total_steps=10)
TAU, ALPHA, BETA = 0.3, 0.7, 0.4
ALPHA_AT_STEP = ALPHA * (1 - math.cos(math.pi * STEP.step / STEP.total_steps)) / 2  # cosine ramp 0 -> alpha
TOL = dict(rtol=1e-10, atol=1e-12)


def build(method, extra=()):
    torch.manual_seed(0)
    layer_heads = ["strategy.layer_proj_hidden_dim=12"] if method == "sdssl" else []
    cfg = load_config(method, None, TINY + layer_heads + list(extra))
    return STRATEGIES.get(method)(cfg, INFO).double().train()


def two_views(batch=6):
    torch.manual_seed(1)
    return [torch.randn(batch, 3, 32, 32, dtype=torch.float64) for _ in range(2)]


def leaf(t):
    return t.detach().clone().requires_grad_(True)


# --- the papers' losses, written out -------------------------------------------------------------------------

def regression(q, z):
    """SDSSL Eq. (1): 2 - 2 cos(q, sg(z)), mean over rows."""
    cos = (q * z.detach()).sum(-1) / (q.norm(dim=-1) * z.detach().norm(dim=-1))
    return (2 - 2 * cos).mean()


def ctr(q, k, detach=True):
    """SDSSL Eq. (2) as Algorithm 1's ctr: 2 tau x cross-entropy of q_i against keys k_j, positive j = i."""
    k = k.detach() if detach else k
    q, k = q / q.norm(dim=-1, keepdim=True), k / k.norm(dim=-1, keepdim=True)
    logits = q @ k.T / TAU
    return 2 * TAU * (torch.logsumexp(logits, dim=1) - logits.diagonal()).mean()


def authors_nt_xent(features, keys):
    """``pl_train_simclr``'s info_nce_loss / info_nce_loss_intermediate (one process): drop each row's own column,
    the positive is the other view of the same image, CE at tau over the remaining 2N - 1 columns, mean over rows."""
    features = features / features.norm(dim=-1, keepdim=True)
    keys = keys / keys.norm(dim=-1, keepdim=True)
    rows = features.shape[0]
    ids = torch.arange(rows // 2).repeat(2)
    same_image = ids[:, None] == ids[None, :]
    own = torch.eye(rows, dtype=torch.bool)
    similarity = (features @ keys.T)[~own].view(rows, -1)
    positive_mask = same_image[~own].view(rows, -1)
    logits = torch.cat([similarity[positive_mask].view(rows, -1), similarity[~positive_mask].view(rows, -1)], 1) / TAU
    return F.cross_entropy(logits, torch.zeros(rows, dtype=torch.long))


# --- SDSSL ---------------------------------------------------------------------------------------------------

def sdssl_leaves(outputs: SDSSLOutputs, has_teacher: bool) -> SDSSLOutputs:
    """The head outputs as float64 leaves (SimCLR's targets stay its own final projections)."""
    student = []
    for view in outputs.student:
        h_final, h_layers = leaf(view.h_final), [leaf(h) for h in view.h_layers]
        same = view.q_final is view.h_final
        q_final = h_final if same else leaf(view.q_final)
        q_layers = h_layers if same else [leaf(q) for q in view.q_layers]
        student.append(LayerOutputs(h_final, q_final, h_layers, q_layers))
    targets = [leaf(z) for z in outputs.targets] if has_teacher else [v.h_final for v in student]
    return SDSSLOutputs(student, targets)


def sdssl_reference(strategy, out: SDSSLOutputs, base: str, simclr_loss: str) -> dict[str, torch.Tensor]:
    """SDSSL Eq. (3)-(6) for one member: both directions (x1 -> x2, x2 -> x1), alpha ramped, beta on L_pred."""
    s, z = out.student, out.targets
    directions = ((0, 1), (1, 0))
    terms = {}
    if base == "simclr" and simclr_loss == "nt_xent":
        final = torch.cat([s[0].h_final, s[1].h_final])
        terms["ssl"] = authors_nt_xent(final, final)
        layers = len(s[0].q_layers)
        terms["isd"] = sum(authors_nt_xent(torch.cat([s[0].q_layers[l], s[1].q_layers[l]]), final.detach())
                           for l in range(layers)) / layers
    else:
        loss = regression if base == "byol" else ctr
        if base == "simclr":
            terms["ssl"] = sum(ctr(s[a].q_final, z[b], detach=False) for a, b in directions)
        else:
            terms["ssl"] = sum(loss(s[a].q_final, z[b]) for a, b in directions)
        terms["isd"] = sum(sum(loss(q, z[b]) for q in s[a].q_layers) / len(s[a].q_layers) for a, b in directions)
    total = terms["ssl"] + ALPHA_AT_STEP * terms["isd"]
    if base != "simclr":
        student = strategy.members["vit"].student
        predictors = [student["layer_predictors"][k] for k in ("blocks_0", "blocks_1")] + [student["predictor"]]
        terms["pred"] = sum(loss(p(h.detach()), z[b])
                            for a, b in directions for p, h in zip(predictors, s[a].h_layers + [s[a].h_final]))
        total = total + BETA * terms["pred"]
    terms["loss"] = total
    return terms


def sdssl_head_outputs(out: SDSSLOutputs) -> list[torch.Tensor]:
    tensors = []
    for view in out.student:
        for t in (view.h_final, view.q_final, *view.h_layers, *view.q_layers):
            if not any(t is u for u in tensors):
                tensors.append(t)
    return tensors + [t for t in out.targets if not any(t is u for u in tensors)]


def gradients(value, tensors):
    grads = torch.autograd.grad(value, tensors, retain_graph=True, allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for t, g in zip(tensors, grads)]


@pytest.mark.parametrize("base, simclr_loss", [("byol", "info_nce"), ("mocov3", "info_nce"),
                                               ("simclr", "info_nce"), ("simclr", "nt_xent")])
def test_sdssl_terms_and_gradients_match_the_equations(base, simclr_loss):
    extra = [f"strategy.base={base}", f"strategy.temperature={TAU}", f"strategy.alpha={ALPHA}",
             f"strategy.beta={BETA}"] + ([f"strategy.simclr_loss={simclr_loss}"] if base == "simclr" else [])
    strategy = build("sdssl", extra)
    views = two_views()
    step_terms = strategy(views, None, None, STEP)  # one step, end to end
    step_terms["loss"].backward()
    assert set(step_terms) == {"vit/ssl", "vit/isd", "loss", "vit/loss"} | ({"vit/pred"} if base != "simclr" else set())

    outputs = sdssl_leaves(strategy.network_outputs(views)["vit"], has_teacher=base != "simclr")
    got = strategy.losses({"vit": outputs}, None, None, STEP)
    ours = sdssl_leaves(outputs, has_teacher=base != "simclr")
    expected = sdssl_reference(strategy, ours, base, simclr_loss)
    assert got["loss"] is got["vit/loss"] or torch.equal(got["loss"], got["vit/loss"])
    for term, value in expected.items():
        torch.testing.assert_close(got[f"vit/{term}"], value, **TOL)
        torch.testing.assert_close(step_terms[f"vit/{term}"].detach(), value.detach(), rtol=1e-9, atol=1e-12)
        for g, e in zip(gradients(got[f"vit/{term}"], sdssl_head_outputs(outputs)),
                        gradients(value, sdssl_head_outputs(ours))):
            torch.testing.assert_close(g, e, **TOL)
    if base != "simclr":  # the teacher's outputs are targets: stop-gradient everywhere
        assert all(g.abs().max() == 0 for g in gradients(got["loss"], outputs.targets))
        # L_pred reaches no projection (its inputs are detached)
        assert all(g.abs().max() == 0 for g in gradients(got["vit/pred"], outputs.student[0].h_layers))


# --- BYOL and MoCo v3 -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["byol", "mocov3"])
def test_byol_mocov3_terms_and_gradients_match_the_equations(method):
    strategy = build(method, [f"strategy.temperature={TAU}"] if method == "mocov3" else [])
    views = two_views()
    step_terms = strategy(views, None, None, STEP)
    step_terms["loss"].backward()
    assert set(step_terms) == {"vit/loss", "loss"}
    raw = strategy.network_outputs(views)["vit"]
    outputs = PairOutputs(z=raw.z, p=tuple(leaf(q) for q in raw.p), k=tuple(leaf(k) for k in raw.k))
    got = strategy.losses({"vit": outputs}, None, None, STEP)
    q, z = [leaf(t) for t in raw.p], [leaf(t) for t in raw.k]
    loss = regression if method == "byol" else ctr
    expected = loss(q[0], z[1]) + loss(q[1], z[0])  # SDSSL Eq. (1) / (2), symmetrised
    torch.testing.assert_close(got["vit/loss"], expected, **TOL)
    torch.testing.assert_close(got["loss"], expected, **TOL)
    torch.testing.assert_close(step_terms["loss"].detach(), expected.detach(), rtol=1e-9, atol=1e-12)
    for g, e in zip(gradients(got["loss"], outputs.p), gradients(expected, q)):
        torch.testing.assert_close(g, e, **TOL)
    assert all(g.abs().max() == 0 for g in gradients(got["loss"], outputs.k))
