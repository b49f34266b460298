"""Mutual Contrastive Learning (Yang et al., TPAMI; AAAI 2022): contrastive distributions shared across a cohort.

Every term works on *contrastive logits*: one row per anchor, one column per contrastive embedding (already divided
by tau), with a boolean ``positive_mask`` of the same shape saying which columns are positives. Batch-based mining
(MCL Alg. 1) gives [B, B-1] rows (the anchor's own column dropped, even across networks), memory-based mining
(Alg. 2) and MoCo give [B, 1+K] rows with the positive in column 0. ``own[m]`` holds member m's VCL logits
(anchor and contrast from f_m, Eq. 1), ``cross[(a, b)]`` the ICL logits from f_a to f_b (anchor from f_a, contrast
from f_b, Eq. 4). Every member's rows are built from the same samples, so distributions can be compared.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sslkd.losses.classification import soft_kl

TERMS = ("vcl", "icl", "soft_vcl", "soft_icl")


@dataclass
class ContrastiveLogits:
    """One layer's contrastive logits of the whole cohort (see the module docstring)."""

    own: dict[str, torch.Tensor]
    cross: dict[tuple[str, str], torch.Tensor]
    positive_mask: torch.Tensor


def batch_contrast(anchors: torch.Tensor, contrast: torch.Tensor, anchor_labels: torch.Tensor,
                   contrast_labels: torch.Tensor, anchor_positions: torch.Tensor,
                   temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch-based mining (MCL Alg. 1): logits v^i . v^j / tau of every anchor against every other batch sample
    (column ``anchor_positions[i]``, the anchor itself, is dropped from the softmax) and the positive mask
    (same label). Returns ([B, N-1] logits, [B, N-1] mask)."""
    batch, total = anchors.shape[0], contrast.shape[0]
    logits = anchors.float() @ contrast.float().T / temperature
    keep = torch.ones(batch, total, dtype=torch.bool, device=anchors.device)
    keep[torch.arange(batch, device=anchors.device), anchor_positions] = False
    positives = anchor_labels[:, None] == contrast_labels[None, :]
    return logits[keep].view(batch, total - 1), positives[keep].view(batch, total - 1)


def memory_contrast(anchors: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor,
                    temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Memory-based mining (MCL Alg. 2) and MoCo: logits [v^0.v^1, v^0.v^2 ... v^0.v^{K+1}] / tau (Eq. 1, 4) of each
    anchor [B, d] against its positive [B, d] and its negatives ([B, K, d] per anchor, or [K, d] shared)."""
    anchors = anchors.float()
    positive = (anchors * positives.float()).sum(dim=-1, keepdim=True)
    if negatives.ndim == 2:
        negative = anchors @ negatives.float().T
    else:
        negative = torch.einsum("bd,bkd->bk", anchors, negatives.float())
    logits = torch.cat([positive, negative], dim=1) / temperature
    mask = torch.zeros_like(logits, dtype=torch.bool)
    mask[:, 0] = True
    return logits, mask


def contrastive_ce(logits: torch.Tensor, positive_mask: torch.Tensor) -> torch.Tensor:
    """-log p^1 (MCL Eq. 2 / Eq. 5), averaged over anchors. With several positives (a class-aware batch whose
    classes repeat) an anchor's loss is the mean over its positives, as supervised contrastive learning does.

    An anchor without any positive has no defined loss and is left out of the mean; when no anchor has one the
    term is an exact zero (still attached to the graph), never NaN.
    """
    log_prob = F.log_softmax(logits.float(), dim=-1)
    counts = positive_mask.sum(dim=-1)
    has_positive = counts > 0
    if not bool(has_positive.any()):
        return logits.float().sum() * 0.0
    per_anchor = -(log_prob * positive_mask).sum(dim=-1)[has_positive] / counts[has_positive]
    return per_anchor.mean()


def vcl_loss(logits: ContrastiveLogits) -> torch.Tensor:
    """MCL Eq. (3): sum over members of each one's own contrastive loss (Eq. 2)."""
    return sum(contrastive_ce(own, logits.positive_mask) for own in logits.own.values())


def icl_loss(logits: ContrastiveLogits) -> torch.Tensor:
    """MCL Eq. (7): sum over ordered pairs a != b of the interactive contrastive loss L_{a->b} (Eq. 5)."""
    return sum(contrastive_ce(cross, logits.positive_mask) for cross in logits.cross.values())


def contrastive_kl(target_logits: torch.Tensor, logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(softmax(target/T) || softmax(logits/T)) x T^2, batchmean, target detached: one soft term of MCL Eq. (8-9).
    The logits are already divided by tau (the authors' code), so T = 3 softens them further."""
    return soft_kl(target_logits, logits, temperature)


def soft_vcl_loss(logits: ContrastiveLogits, temperature: float) -> torch.Tensor:
    """MCL Eq. (8): sum_m sum_{l != m} KL(p_l || p_m), each p_l a detached soft label."""
    return sum(
        contrastive_kl(logits.own[label], logits.own[member], temperature)
        for member in logits.own for label in logits.own if label != member
    )


def soft_icl_loss(logits: ContrastiveLogits, temperature: float) -> torch.Tensor:
    """MCL Eq. (9): sum_a sum_{b != a} KL(q_{b->a} || q_{a->b}), q_{b->a} a detached soft label."""
    return sum(contrastive_kl(logits.cross[(b, a)], logits.cross[(a, b)], temperature) for a, b in logits.cross)


def mcl_loss(logits: ContrastiveLogits, alpha: float = 0.1, beta: float = 1.0, temperature: float = 3.0,
             terms: tuple[str, ...] = TERMS) -> dict[str, torch.Tensor]:
    """MCL Eq. (10): alpha (L_VCL + L_ICL) + beta (L_SoftVCL + L_SoftICL), with only the named ``terms`` switched
    on (the loss ablation of MCL Table 6). Returns every computed term and the weighted total under "loss"."""
    unknown = set(terms) - set(TERMS)
    if unknown:
        raise ValueError(f"unknown MCL terms {sorted(unknown)}; choose from {TERMS}")
    anchor = next(iter(logits.own.values()))
    out: dict[str, torch.Tensor] = {}
    if "vcl" in terms:
        out["vcl"] = vcl_loss(logits)
    if "icl" in terms:
        out["icl"] = icl_loss(logits)
    if "soft_vcl" in terms:
        out["soft_vcl"] = soft_vcl_loss(logits, temperature)
    if "soft_icl" in terms:
        out["soft_icl"] = soft_icl_loss(logits, temperature)
    hard = sum((out[t] for t in ("vcl", "icl") if t in out), anchor.new_zeros(()))
    soft = sum((out[t] for t in ("soft_vcl", "soft_icl") if t in out), anchor.new_zeros(()))
    out["loss"] = alpha * hard + beta * soft
    return out
