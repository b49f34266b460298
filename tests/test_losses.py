"""Loss functions against values computed by hand from the papers' equations."""

import math

import pytest
import torch

from sslkd.losses.contrastive import dogo_kd_loss, nt_xent, simsiam_loss, similarity_kl, similarity_logits
from sslkd.losses.dino import dino_loss, feature_search_loss, multicrop_cross_entropy, teacher_probs, updated_center


def softmax(values, temp):
    exps = [math.exp(v / temp) for v in values]
    return [e / sum(exps) for e in exps]


def cross_entropy(target, student_logits, temp):
    p = softmax(student_logits, temp)
    return -sum(t * math.log(q) for t, q in zip(target, p))


def test_teacher_probs_centers_and_sharpens():
    logits = torch.tensor([[1.0, 2.0, 0.5]])
    center = torch.tensor([[0.5, 0.5, 0.0]])
    expected = softmax([0.5, 1.5, 0.5], 0.04)
    assert teacher_probs(logits, 0.04, center)[0].tolist() == pytest.approx(expected, rel=1e-5)


def test_mokd_eq2_two_views_by_hand():
    """L_sm = -1/2 (m'_b log m_a + m'_a log m_b) for one image, two views, K = 3 (MOKD Eq. 2)."""
    s_a, s_b = [0.2, -0.1, 0.4], [1.0, 0.0, -1.0]
    t_a, t_b = [0.3, 0.1, -0.2], [-0.5, 0.6, 0.0]
    center = [0.1, -0.1, 0.05]
    tau_s, tau_t = 0.1, 0.04
    centered = lambda t: [x - c for x, c in zip(t, center)]  # noqa: E731
    expected = 0.5 * (
        cross_entropy(softmax(centered(t_b), tau_t), s_a, tau_s) + cross_entropy(softmax(centered(t_a), tau_t), s_b, tau_s)
    )
    got = dino_loss(torch.tensor([s_a, s_b]), torch.tensor([t_a, t_b]), torch.tensor([center]), 2, 2, tau_s, tau_t)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_multicrop_pairs_skip_same_view_and_average():
    """DINO multi-crop: 2 teacher views x 3 student views, pairs with v == q skipped -> 4 pairs averaged."""
    torch.manual_seed(0)
    student = torch.randn(3 * 2, 4)  # 3 crops x batch 2
    target = torch.softmax(torch.randn(2 * 2, 4), dim=-1)
    s, t = student.tolist(), target.tolist()
    pairs = [(0, 1), (0, 2), (1, 0), (1, 2)]
    expected = 0.0
    for q, v in pairs:
        rows = [cross_entropy(t[q * 2 + i], s[v * 2 + i], 0.1) for i in range(2)]
        expected += sum(rows) / 2
    expected /= len(pairs)
    assert multicrop_cross_entropy(student, target, 3, 2, 0.1).item() == pytest.approx(expected, rel=1e-5)


def test_feature_search_loss_by_hand_no_centering():
    """MOKD L_ct (Eq. 7): H(softmax(searched / tau_t), softmax(t / tau_s)), averaged over paired rows."""
    student = [[0.3, -0.2], [0.0, 0.5]]
    searched = [[1.0, 0.0], [0.2, 0.4]]
    expected = sum(cross_entropy(softmax(t, 0.07), s, 0.1) for s, t in zip(student, searched)) / 2
    got = feature_search_loss(torch.tensor(student), torch.tensor(searched), 0.1, 0.07)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_teacher_side_receives_no_gradient():
    student = torch.randn(4, 5, requires_grad=True)
    teacher = torch.randn(4, 5, requires_grad=True)
    (dino_loss(student, teacher, torch.zeros(1, 5), 2, 2) + feature_search_loss(student, teacher)).backward()
    assert teacher.grad is None
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_dino_loss_is_symmetric_in_the_two_views():
    torch.manual_seed(1)
    s, t = torch.randn(2, 3, 6), torch.randn(2, 3, 6)
    center = torch.zeros(1, 6)
    forward = dino_loss(torch.cat([s[0], s[1]]), torch.cat([t[0], t[1]]), center, 2, 2)
    swapped = dino_loss(torch.cat([s[1], s[0]]), torch.cat([t[1], t[0]]), center, 2, 2)
    assert forward.item() == pytest.approx(swapped.item(), rel=1e-6)


def test_center_update_is_ema_of_batch_mean():
    center = torch.tensor([[1.0, 0.0]])
    got = updated_center(center, torch.tensor([[3.0, 2.0]]), momentum=0.9)
    assert got[0].tolist() == pytest.approx([0.9 * 1 + 0.1 * 3, 0.1 * 2])


# ------------------------------------------------------------------------- contrastive losses in float64 (issue 17)

Z_A = [[0.3, -1.2, 0.7], [1.1, 0.4, -0.5], [-0.8, 0.9, 0.2]]
Z_B = [[0.5, -0.7, 1.0], [0.9, 0.1, -0.9], [-0.2, 1.3, 0.6]]
PEER_A = [[1.0, 0.2, -0.3], [-0.4, 0.8, 0.5], [0.6, -0.9, 1.1]]
PEER_B = [[0.7, 0.5, -0.1], [-0.3, 1.2, 0.2], [0.1, -1.0, 0.8]]


def cosine(a, b):
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def similarity_rows(z_a, z_b, tau):
    """Row softmax of sim(Z', Z'') / tau, by hand (DoGo Eq. 2-3)."""
    return [softmax([cosine(a, b) for b in z_b], tau) for a in z_a]


def float64(rows):
    return torch.tensor(rows, dtype=torch.float64)


def test_nt_xent_keeps_float64_and_matches_eq1_to_1e12():
    """DoGo Eq. (1) by hand in double precision: anchor k of the 2B = 6 against the other 5, mean over anchors."""
    z, tau = Z_A + Z_B, 0.3
    expected = 0.0
    for k in range(6):
        positive = (k + 3) % 6
        denominator = sum(math.exp(cosine(z[k], z[j]) / tau) for j in range(6) if j != k)
        expected -= math.log(math.exp(cosine(z[k], z[positive]) / tau) / denominator) / 6
    got = nt_xent(float64(Z_A), float64(Z_B), tau)
    assert got.dtype == torch.float64 and abs(got.item() - expected) < 1e-12


def test_simsiam_loss_keeps_float64_and_matches_eq6_to_1e12():
    """1/2 D(p', z'') + 1/2 D(p'', z'), D the negative cosine averaged over rows (DoGo Eq. 6), in double."""
    d = lambda p, z: -sum(cosine(a, b) for a, b in zip(p, z)) / len(p)  # noqa: E731
    expected = 0.5 * d(PEER_A, Z_B) + 0.5 * d(PEER_B, Z_A)
    got = simsiam_loss(float64(PEER_A), float64(PEER_B), float64(Z_A), float64(Z_B))
    assert got.dtype == torch.float64 and abs(got.item() - expected) < 1e-12


@pytest.mark.parametrize("reduction", ["row", "all"])
def test_dogo_kl_keeps_float64_and_matches_eq2_to_1e12(reduction):
    """D_KL(Q || P) of the similarity distributions (DoGo Eq. 2) per row or over all B^2 entries, one peer, two
    peers summed and two peers' ensemble, all in double."""
    tau_kd = 0.2
    student = similarity_rows(Z_A, Z_B, tau_kd)
    peer = similarity_rows(PEER_A, PEER_B, tau_kd)
    peer2 = similarity_rows(Z_B, PEER_A, tau_kd)
    ensemble = [[(a + b) / 2 for a, b in zip(q1, q2)] for q1, q2 in zip(peer, peer2)]
    divide = 3 if reduction == "row" else 9

    def kl(target):
        return sum(q * math.log(q / p) for q_row, p_row in zip(target, student) for q, p in zip(q_row, p_row)) / divide

    logits = similarity_logits(float64(Z_A), float64(Z_B), tau_kd)
    peers = [similarity_logits(float64(PEER_A), float64(PEER_B), tau_kd),
             similarity_logits(float64(Z_B), float64(PEER_A), tau_kd)]
    assert logits.dtype == torch.float64
    assert abs(logits[0, 1].item() - cosine(Z_A[0], Z_B[1]) / tau_kd) < 1e-12
    target = torch.softmax(peers[0], dim=-1)
    checks = [(similarity_kl(target, logits, reduction), kl(peer)),
              (dogo_kd_loss(logits, peers, "sum", reduction), kl(peer) + kl(peer2)),
              (dogo_kd_loss(logits, peers, "ensemble", reduction), kl(ensemble))]
    for got, expected in checks:
        assert got.dtype == torch.float64 and abs(got.item() - expected) < 1e-12


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
def test_contrastive_losses_promote_only_half_precision(half):
    z_a, z_b = float64(Z_A).to(half), float64(Z_B).to(half)
    logits = similarity_logits(z_a, z_b, 0.2)
    losses = [nt_xent(z_a, z_b), simsiam_loss(z_a, z_b, z_b, z_a), logits,
              dogo_kd_loss(logits, [similarity_logits(z_b, z_a, 0.2)], "ensemble")]
    assert all(loss.dtype == torch.float32 for loss in losses)
