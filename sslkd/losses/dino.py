"""DINO's self-distillation losses and MOKD's terms built on them (METHODS.md). Targets are detached inside."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sslkd.losses.precision import loss_precision


def teacher_probs(logits: torch.Tensor, temperature: float, center: torch.Tensor | None = None) -> torch.Tensor:
    """Teacher distribution softmax((t - c) / tau_t), detached (DINO; MOKD Eq. 1 with tau')."""
    logits = loss_precision(logits.detach())
    if center is not None:
        logits = logits - center
    return F.softmax(logits / temperature, dim=-1)


def soft_cross_entropy(target: torch.Tensor, student_logits: torch.Tensor, student_temp: float) -> torch.Tensor:
    """Mean over rows of H(target, softmax(s / tau_s)) = -sum_k target_k log p_k (MOKD Algorithm 1, ``H``)."""
    log_p = F.log_softmax(loss_precision(student_logits) / student_temp, dim=-1)
    return -(target * log_p).sum(dim=-1).mean()


def multicrop_cross_entropy(
    student_logits: torch.Tensor,
    teacher_target: torch.Tensor,
    n_student_crops: int,
    n_teacher_crops: int,
    student_temp: float = 0.1,
) -> torch.Tensor:
    """DINO's multi-crop loss: average of H(teacher view q, student view v) over all pairs with v != q.

    ``student_logits`` stacks ``n_student_crops`` chunks of B rows (globals first, in the teacher's order);
    ``teacher_target`` stacks ``n_teacher_crops`` chunks of target distributions. With two global crops and no
    local crops this is MOKD Eq. (2): -1/2 (m'_b log m_a + m'_a log m_b). The student log-softmax is computed
    once and shared by every pair.
    """
    log_p = F.log_softmax(loss_precision(student_logits) / student_temp, dim=-1).chunk(n_student_crops)
    teacher = teacher_target.chunk(n_teacher_crops)
    terms = [-(target * log_p[v]).sum(dim=-1).mean() for q, target in enumerate(teacher) for v in range(n_student_crops) if v != q]
    return torch.stack(terms).mean()


def dino_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    center: torch.Tensor,
    n_student_crops: int,
    n_teacher_crops: int = 2,
    student_temp: float = 0.1,
    teacher_temp: float = 0.04,
) -> torch.Tensor:
    """DINO loss with centering and sharpening (MOKD L_sm Eq. 2, L_st Eq. 3, L_cm Eq. 5)."""
    target = teacher_probs(teacher_logits, teacher_temp, center)
    return multicrop_cross_entropy(student_logits, target, n_student_crops, n_teacher_crops, student_temp)


@torch.no_grad()
def updated_center(center: torch.Tensor, batch_mean: torch.Tensor, momentum: float = 0.9) -> torch.Tensor:
    """DINO center: EMA of the uncentred teacher mean over all teacher crops (all-reduced by the caller)."""
    return center * momentum + batch_mean * (1 - momentum)


def feature_search_loss(
    student_logits: torch.Tensor,
    searched_logits: torch.Tensor,
    student_temp: float = 0.1,
    teacher_temp: float = 0.04,
    center: torch.Tensor | None = None,
) -> torch.Tensor:
    """MOKD L_ct (Eq. 7): H(softmax(searched / tau_t), softmax(t / tau_s)), row i of each paired; no centering
    (the code), unless a ``center`` is given (``center_search_targets``, a probe).

    Averaged over the paired rows (Algorithm 1 halves the sum over the two views; Eq. 7 prints no 1/2).
    """
    return soft_cross_entropy(teacher_probs(searched_logits, teacher_temp, center), student_logits, student_temp)
