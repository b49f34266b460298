"""Contrastive and similarity-based losses: SimCLR, SimSiam and DoGo's similarity distillation. Every loss works
in its inputs' precision (float64 stays float64); only half precision is promoted (``loss_precision``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sslkd.core.distributed import all_gather_with_grad, rank
from sslkd.losses.precision import loss_precision


def nt_xent(z_a: torch.Tensor, z_b: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """NT-Xent (DoGo Eq. 1, SimCLR): each of the 2B embeddings picks its other view among the other 2B - 1 by
    softmax of cosine similarity / tau_c; the cross-entropy is averaged over all 2B anchors.

    Under torch.distributed the B is the global batch: this process's 2b anchors contrast against the 2B
    embeddings of every process (gathered with gradients, as SimCLR's global negatives), so W processes of b
    items give the loss and gradients of one process of B = W x b."""
    anchors = F.normalize(loss_precision(torch.cat([z_a, z_b])), dim=-1)
    local = z_a.shape[0]
    all_a = F.normalize(loss_precision(all_gather_with_grad(z_a)), dim=-1)
    all_b = F.normalize(loss_precision(all_gather_with_grad(z_b)), dim=-1)
    total = all_a.shape[0]
    logits = anchors @ torch.cat([all_a, all_b]).T / temperature
    own = torch.arange(local, device=anchors.device) + rank() * local
    self_column = torch.cat([own, own + total])
    positives = torch.cat([own + total, own])
    logits[torch.arange(2 * local, device=anchors.device), self_column] = float("-inf")
    return F.cross_entropy(logits, positives)


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """D(p, z) = -<p/|p|, z/|z|> averaged over rows, with SimSiam's stop-gradient on z (DoGo Eq. 6)."""
    target = F.normalize(loss_precision(z.detach()), dim=-1)
    return -(F.normalize(loss_precision(p), dim=-1) * target).sum(dim=-1).mean()


def simsiam_loss(p_a: torch.Tensor, p_b: torch.Tensor, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
    """SimSiam's symmetrised loss 1/2 D(p_a, z_b) + 1/2 D(p_b, z_a), each term DoGo Eq. (6) (Chen & He, 2021)."""
    return 0.5 * (negative_cosine(p_a, z_b) + negative_cosine(p_b, z_a))


def similarity_logits(z_a: torch.Tensor, z_b: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """The B x B matrix sim(Z', Z'') / tau_kd of cosine similarities between the two views' embeddings; its row
    softmax is DoGo's P (Eq. 2-3).

    Under torch.distributed B is the global batch: this process holds the rows of its own items, over columns
    gathered (with gradients) from every process, so the row distributions, the KL and its gradients equal those
    of one process with the whole batch."""
    columns = all_gather_with_grad(z_b)
    return F.normalize(loss_precision(z_a), dim=-1) @ F.normalize(loss_precision(columns), dim=-1).T / temperature


def similarity_kl(target: torch.Tensor, logits: torch.Tensor, reduction: str = "row") -> torch.Tensor:
    """D_KL(Q || P) between row distributions, Q = ``target`` (detached) and P = softmax(``logits``) (DoGo Eq. 2-3).

    ``row``: each row's KL summed over its B entries, averaged over rows (the paper's per-sample distributions).
    ``all``: the pointwise terms averaged over all B^2 entries, as the authors' code (``F.kl_div`` default), i.e.
    ``row`` / B.
    """
    log_probs = F.log_softmax(loss_precision(logits), dim=-1)
    pointwise = F.kl_div(log_probs, loss_precision(target.detach()), reduction="none")
    if reduction == "row":
        return pointwise.sum(dim=-1).mean()
    if reduction == "all":
        return pointwise.mean()
    raise ValueError(f"reduction must be 'row' or 'all', got {reduction!r}")


def peer_ensemble(peer_logits: list[torch.Tensor]) -> torch.Tensor:
    """The peers' mean row distribution, detached: DoGo's ensemble teacher for more than two peers (Sec. 3)."""
    return torch.stack([F.softmax(loss_precision(logits.detach()), dim=-1) for logits in peer_logits]).mean(dim=0)


def dogo_kd_loss(logits: torch.Tensor, peer_logits: list[torch.Tensor], multi_peer: str = "sum",
                 reduction: str = "row") -> torch.Tensor:
    """L_kd of one peer (DoGo Eq. 2-3): KL from each peer's distribution to its own, summed over peers (``sum``,
    "computing distillation loss with all the peers"), or KL from the peers' ensemble (``ensemble``). With one
    peer both are Eq. 2. Peer distributions are targets: no gradient reaches a peer."""
    if multi_peer == "ensemble":
        return similarity_kl(peer_ensemble(peer_logits), logits, reduction)
    if multi_peer == "sum":
        return sum(
            similarity_kl(F.softmax(loss_precision(peer.detach()), dim=-1), logits, reduction) for peer in peer_logits
        )
    raise ValueError(f"multi_peer must be 'sum' or 'ensemble', got {multi_peer!r}")
