"""Mutual Contrastive Learning (Yang et al., TPAMI; AAAI 2022): contrastive distributions shared across a cohort.

Every term works on *contrastive logits*: one row per anchor, one column per contrastive embedding (already divided
by tau), with a boolean ``positive_mask`` of the same shape saying which columns are positives. Batch-based mining
(MCL Alg. 1) gives [B, B-1] rows (the anchor's own column dropped, even across networks), memory-based mining
(Alg. 2) and MoCo give [B, 1+K] rows with the positive in column 0. ``own[m]`` holds member m's VCL logits
(anchor and contrast from f_m, Eq. 1), ``cross[(a, b)]`` the ICL logits from f_a to f_b (anchor from f_a, contrast
from f_b, Eq. 4). Every member's rows are built from the same samples, so distributions can be compared.

The soft terms (Eq. 8-9) compare the distributions over the K+1 contrastive samples, the anchor not among them: with
batch-based mining, the same [B, B-1] rows. The authors' code instead takes the KL over the full [B, B] similarity
logits, each anchor's own column included (v.v / tau = 1 / tau for VCL, the same sample in the other network for
ICL); ``ContrastiveLogits.soft_own`` / ``soft_cross`` carry such rows when they differ from the hard terms' rows.

Inputs keep their precision (float64 stays float64); only half precision is promoted (``loss_precision``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sslkd.losses.classification import soft_kl
from sslkd.losses.precision import loss_precision

TERMS = ("vcl", "icl", "soft_vcl", "soft_icl")


@dataclass
class ContrastiveLogits:
    """One layer's contrastive logits of the whole cohort (see the module docstring). ``anchor_weights`` [B], when
    given, weight every anchor's row in all four terms (the TPAMI code's meta-learned pair weights)."""

    own: dict[str, torch.Tensor]
    cross: dict[tuple[str, str], torch.Tensor]
    positive_mask: torch.Tensor
    soft_own: dict[str, torch.Tensor] | None = None
    soft_cross: dict[tuple[str, str], torch.Tensor] | None = None
    anchor_weights: torch.Tensor | None = None

    def soft_vcl_rows(self) -> dict[str, torch.Tensor]:
        """The rows the soft VCL compares: ``soft_own`` where given (the authors' full rows), else ``own``."""
        return self.own if self.soft_own is None else self.soft_own

    def soft_icl_rows(self) -> dict[tuple[str, str], torch.Tensor]:
        return self.cross if self.soft_cross is None else self.soft_cross


def similarity_logits(anchors: torch.Tensor, contrast: torch.Tensor, temperature: float) -> torch.Tensor:
    """v^i . v^j / tau of every anchor [B, d] against every contrastive embedding [N, d]: [B, N] (MCL Eq. 1, 4)."""
    return loss_precision(anchors) @ loss_precision(contrast).T / temperature


def batch_contrast(anchors: torch.Tensor, contrast: torch.Tensor, anchor_labels: torch.Tensor,
                   contrast_labels: torch.Tensor, anchor_positions: torch.Tensor,
                   temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch-based mining (MCL Alg. 1): logits v^i . v^j / tau of every anchor against every other batch sample
    (column ``anchor_positions[i]``, the anchor itself, is dropped from the softmax) and the positive mask
    (same label). Returns ([B, N-1] logits, [B, N-1] mask)."""
    batch, total = anchors.shape[0], contrast.shape[0]
    logits = similarity_logits(anchors, contrast, temperature)
    keep = torch.ones(batch, total, dtype=torch.bool, device=anchors.device)
    keep[torch.arange(batch, device=anchors.device), anchor_positions] = False
    positives = anchor_labels[:, None] == contrast_labels[None, :]
    return logits[keep].view(batch, total - 1), positives[keep].view(batch, total - 1)


def batch_contrastive_logits(anchors: dict[str, torch.Tensor], contrast: dict[str, torch.Tensor],
                             anchor_labels: torch.Tensor, contrast_labels: torch.Tensor,
                             anchor_positions: torch.Tensor, temperature: float, soft_anchor_column: str = "drop",
                             anchor_weights: torch.Tensor | None = None) -> ContrastiveLogits:
    """Batch-based mining (MCL Alg. 1) over a cohort: VCL rows of every member, ICL rows of every ordered pair.
    ``soft_anchor_column``: ``drop`` gives the soft terms the hard terms' [B, N-1] rows (MCL Eq. 8-9: the K+1
    contrastive samples, the anchor not among them); ``keep`` gives them the full [B, N] similarity rows, each
    anchor's own column included (the authors' code)."""
    if soft_anchor_column not in ("drop", "keep"):
        raise ValueError(f"soft_anchor_column must be 'drop' or 'keep', got {soft_anchor_column!r}")
    names = list(anchors)
    pairs = [(a, b) for a in names for b in names if a != b]

    def build(a: str, b: str) -> tuple[torch.Tensor, torch.Tensor]:
        return batch_contrast(anchors[a], contrast[b], anchor_labels, contrast_labels, anchor_positions, temperature)

    own = {m: build(m, m) for m in names}
    cross = {pair: build(*pair) for pair in pairs}
    logits = ContrastiveLogits({m: v[0] for m, v in own.items()}, {k: v[0] for k, v in cross.items()},
                               own[names[0]][1], anchor_weights=anchor_weights)
    if soft_anchor_column == "keep":
        logits.soft_own = {m: similarity_logits(anchors[m], contrast[m], temperature) for m in names}
        logits.soft_cross = {(a, b): similarity_logits(anchors[a], contrast[b], temperature) for a, b in pairs}
    return logits


def memory_contrast(anchors: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor,
                    temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Memory-based mining (MCL Alg. 2) and MoCo: logits [v^0.v^1, v^0.v^2 ... v^0.v^{K+1}] / tau (Eq. 1, 4) of each
    anchor [B, d] against its positive [B, d] and its negatives ([B, K, d] per anchor, or [K, d] shared)."""
    anchors = loss_precision(anchors)
    positive = (anchors * loss_precision(positives)).sum(dim=-1, keepdim=True)
    if negatives.ndim == 2:
        negative = F.linear(anchors, loss_precision(negatives))  # anchors @ negatives.T, as a Linear layer's product
    else:
        negative = torch.einsum("bd,bkd->bk", anchors, loss_precision(negatives))
    logits = torch.cat([positive, negative], dim=1) / temperature
    mask = torch.zeros_like(logits, dtype=torch.bool)
    mask[:, 0] = True
    return logits, mask


def dictionary_contrastive_logits(anchors: dict[str, torch.Tensor], positives: dict[str, torch.Tensor],
                                  negatives: dict[str, torch.Tensor], temperature: float) -> ContrastiveLogits:
    """Memory-based mining (MCL Alg. 2) and MoCo over a cohort, member m's contrastive samples its ``positives[m]``
    [B, d] and ``negatives[m]`` ([B, K, d] or [K, d]): VCL rows of every member against its own samples, ICL rows of
    every ordered pair (a, b), anchor from a, samples from b (Eq. 1, 4)."""
    names = list(anchors)

    def build(a: str, b: str) -> tuple[torch.Tensor, torch.Tensor]:
        return memory_contrast(anchors[a], positives[b], negatives[b], temperature)

    own = {m: build(m, m) for m in names}
    cross = {(a, b): build(a, b)[0] for a in names for b in names if a != b}
    return ContrastiveLogits({m: v[0] for m, v in own.items()}, cross, own[names[0]][1])


def contrastive_ce(logits: torch.Tensor, positive_mask: torch.Tensor,
                   anchor_weights: torch.Tensor | None = None) -> torch.Tensor:
    """-log p^1 (MCL Eq. 2 / Eq. 5), averaged over anchors. With several positives (a class-aware batch whose
    classes repeat) an anchor's loss is the mean over its positives, as supervised contrastive learning does.
    ``anchor_weights`` [B] scale each anchor's loss before the mean (L-MCL's meta-learned pair weights).

    An anchor without any positive has no defined loss and is left out of the mean; when no anchor has one the
    term is an exact zero (still attached to the graph), never NaN.
    """
    logits = loss_precision(logits)
    log_prob = F.log_softmax(logits, dim=-1)
    counts = positive_mask.sum(dim=-1)
    has_positive = counts > 0
    if not bool(has_positive.any()):
        return logits.sum() * 0.0
    per_anchor = -(log_prob * positive_mask).sum(dim=-1)
    if anchor_weights is not None:
        per_anchor = per_anchor * anchor_weights
    return (per_anchor[has_positive] / counts[has_positive]).mean()


def vcl_loss(logits: ContrastiveLogits) -> torch.Tensor:
    """MCL Eq. (3): sum over members of each one's own contrastive loss (Eq. 2)."""
    return sum(contrastive_ce(own, logits.positive_mask, logits.anchor_weights) for own in logits.own.values())


def icl_loss(logits: ContrastiveLogits) -> torch.Tensor:
    """MCL Eq. (7): sum over ordered pairs a != b of the interactive contrastive loss L_{a->b} (Eq. 5)."""
    return sum(contrastive_ce(cross, logits.positive_mask, logits.anchor_weights) for cross in logits.cross.values())


def contrastive_kl(target_logits: torch.Tensor, logits: torch.Tensor, temperature: float,
                   anchor_weights: torch.Tensor | None = None) -> torch.Tensor:
    """KL(softmax(target/T) || softmax(logits/T)) x T^2, batchmean, target detached: one soft term of MCL Eq. (8-9).
    The logits are already divided by tau (the authors' code), so T = 3 softens them further. ``anchor_weights``
    [B] scale each anchor's KL before the batch mean."""
    return soft_kl(target_logits, logits, temperature, anchor_weights)


def soft_vcl_loss(logits: ContrastiveLogits, temperature: float) -> torch.Tensor:
    """MCL Eq. (8): sum_m sum_{l != m} KL(p_l || p_m), each p_l a detached soft label."""
    rows = logits.soft_vcl_rows()
    return sum(contrastive_kl(rows[label], rows[member], temperature, logits.anchor_weights)
               for member in rows for label in rows if label != member)


def soft_icl_loss(logits: ContrastiveLogits, temperature: float) -> torch.Tensor:
    """MCL Eq. (9): sum_a sum_{b != a} KL(q_{b->a} || q_{a->b}), q_{b->a} a detached soft label."""
    rows = logits.soft_icl_rows()
    return sum(contrastive_kl(rows[(b, a)], rows[(a, b)], temperature, logits.anchor_weights) for a, b in rows)


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
