"""Logit-level losses of supervised online distillation: the task cross-entropy and the temperature-scaled KL
that DML and L-MCL's ensemble distillation use."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sslkd.losses.precision import loss_precision


def soft_kl(target_logits: torch.Tensor, logits: torch.Tensor, temperature: float = 1.0,
            row_weights: torch.Tensor | None = None) -> torch.Tensor:
    """T^2 KL(softmax(t/T) || softmax(s/T)), summed over classes and averaged over the batch ("batchmean"); the
    target is detached (MCL Eq. 19 with one teacher; DML's KL(p_peer || p_m) at T = 1). ``row_weights`` [B] scale
    each row's KL before the batch mean. Half precision is promoted to float32; float64 stays float64."""
    log_p = F.log_softmax(loss_precision(logits) / temperature, dim=-1)
    log_q = F.log_softmax(loss_precision(target_logits.detach()) / temperature, dim=-1)
    if row_weights is None:
        return F.kl_div(log_p, log_q, reduction="batchmean", log_target=True) * temperature**2
    per_row = F.kl_div(log_p, log_q, reduction="none", log_target=True).sum(dim=-1)
    return (row_weights * per_row).mean() * temperature**2


def dml_loss(logits: torch.Tensor, peer_logits: list[torch.Tensor], temperature: float = 1.0,
             peer_reduction: str = "mean") -> torch.Tensor:
    """Deep mutual learning's mimicry term for one member (Zhang et al. 2018, Eq. 10): KL(p_peer || p_m) from every
    peer, averaged (``mean``, the DML paper's 1/(K-1)) or summed (``sum``); peers are targets (detached)."""
    terms = [soft_kl(peer, logits, temperature) for peer in peer_logits]
    if peer_reduction == "mean":
        return sum(terms) / len(terms)
    if peer_reduction == "sum":
        return sum(terms)
    raise ValueError(f"peer_reduction must be 'mean' or 'sum', got {peer_reduction!r}")


def ensemble_distillation(final_logits: dict[str, torch.Tensor], ensemble_logits: dict[str, torch.Tensor],
                          temperature: float = 3.0, include_own: bool = False) -> torch.Tensor:
    """MCL Eq. (19): T^2 sum_a sum_{b != a} KL(softmax(z_b^ens / T) || softmax(z_a^[L] / T)), every ensemble
    detached (no gradient through the teacher). ``include_own`` also lets each member distil from its own ensemble."""
    total = final_logits[next(iter(final_logits))].new_zeros(())
    for a, logits in final_logits.items():
        for b, ensemble in ensemble_logits.items():
            if b != a or include_own:
                total = total + soft_kl(ensemble, logits, temperature)
    return total
