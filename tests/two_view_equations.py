"""The two-view objectives and DoGo's distillation written directly from the papers' equations, in plain torch,
for the wiring tests of simclr, simsiam and dogo, and the comparison of a term and its gradients with them.
Independent of sslkd: nothing here imports it."""

from __future__ import annotations

import torch


def unit_rows(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True)


def cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sim(a_k, b_j) = a_k . b_j / (|a_k| |b_j|) for every pair of rows (DoGo Sec. 3, "cosine similarity")."""
    return unit_rows(a) @ unit_rows(b).T


def nt_xent_eq1(z_first: torch.Tensor, z_second: torch.Tensor, tau_c: float) -> torch.Tensor:
    """DoGo Eq. (1) over the 2B embeddings of both views: anchor k's positive is the other view of its image, every
    other of the 2B - 1 embeddings is in the denominator; the mean over the 2B anchors."""
    embeddings = torch.cat([z_first, z_second])
    batch = z_first.shape[0]
    similarities = cosine_matrix(embeddings, embeddings) / tau_c
    total = 0.0
    for anchor in range(2 * batch):
        positive = (anchor + batch) % (2 * batch)
        others = torch.cat([similarities[anchor, :anchor], similarities[anchor, anchor + 1:]])
        total = total - (similarities[anchor, positive] - torch.logsumexp(others, dim=0))
    return total / (2 * batch)


def negative_cosine_eq6(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """DoGo Eq. (6), D(p, z) = -p/|p| . z/|z|, averaged over the batch, with SimSiam's stop-gradient on z."""
    return -(unit_rows(p) * unit_rows(z.detach())).sum(dim=1).mean()


def simsiam_eq6(p_first, p_second, z_first, z_second) -> torch.Tensor:
    """SimSiam's symmetrised loss 1/2 D(p', z'') + 1/2 D(p'', z') (DoGo Eq. 6)."""
    return 0.5 * negative_cosine_eq6(p_first, z_second) + 0.5 * negative_cosine_eq6(p_second, z_first)


def similarity_distribution(z_first: torch.Tensor, z_second: torch.Tensor, tau_kd: float) -> torch.Tensor:
    """DoGo's P = sigma(sim(Z', Z'') / tau_kd): row-wise softmax of the B x B cosine matrix (Eq. 2-3)."""
    return torch.softmax(cosine_matrix(z_first, z_second) / tau_kd, dim=1)


def kl_eq2(target: torch.Tensor, student: torch.Tensor, per_row: bool) -> torch.Tensor:
    """D_KL(Q || P) = sum Q log(Q / P) with Q a constant target (DoGo Eq. 2-3). ``per_row``: each row's KL,
    averaged over the B rows (the paper's per-sample distributions); else the mean over all B^2 entries (the
    authors' code)."""
    target = target.detach()
    pointwise = target * (target.log() - student.log())
    return pointwise.sum(dim=1).mean() if per_row else pointwise.mean()


def assert_same_gradients(term: torch.Tensor, leaves: list[torch.Tensor], reference: torch.Tensor,
                          reference_leaves: list[torch.Tensor], tolerance: float = 1e-12) -> None:
    """``term`` and its ``reference`` agree, and so does the gradient each reaches every leaf: a leaf the reference
    does not reach (a detached target, a stop-gradient) must get no gradient from ``term`` either."""
    torch.testing.assert_close(term, reference, rtol=tolerance, atol=tolerance)
    got = torch.autograd.grad(term, leaves, retain_graph=True, allow_unused=True)
    expected = torch.autograd.grad(reference, reference_leaves, retain_graph=True, allow_unused=True)
    for index, (grad, expected_grad) in enumerate(zip(got, expected)):
        reached, should_reach = grad is not None, expected_grad is not None
        assert reached == should_reach, f"leaf {index}: gradient reaches it: {reached}, by the paper: {should_reach}"
        if grad is not None:
            torch.testing.assert_close(grad, expected_grad, rtol=tolerance, atol=tolerance)
