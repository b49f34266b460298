"""SDSSL's losses (Jang et al., WACV 2023) and the objectives of the frameworks it is applied to: BYOL's
normalised regression (Eq. 1), MoCo v3's / SimCLR's InfoNCE (Eq. 2), the intermediate self-distillation loss
L_isd (Eq. 3) and the predictor loss L_pred (Eq. 5), and the SDSSL code's SimCLR intermediate term
(``nt_xent_to_targets``). Targets are detached inside unless a function says otherwise. Every loss works in its
inputs' precision (float64 stays float64); only half precision is promoted (``loss_precision``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sslkd.core.distributed import all_gather_with_grad, rank
from sslkd.losses.precision import loss_precision

PairLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def byol_loss(q: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """2 - 2 <q, z> / (|q| |z|), averaged over rows, with the stop-gradient on z (SDSSL Eq. 1, BYOL)."""
    q = F.normalize(loss_precision(q), dim=-1)
    z = F.normalize(loss_precision(z.detach()), dim=-1)
    return (2 - 2 * (q * z).sum(dim=-1)).mean()


def info_nce(q: torch.Tensor, k: torch.Tensor, temperature: float = 0.2, detach_keys: bool = True) -> torch.Tensor:
    """InfoNCE of SDSSL Eq. (2) as its Algorithm 1 ``ctr`` computes it: 2 tau CE(q k^T / tau) (MoCo v3's scaling).

    q and k are L2-normalised. ``q`` may stack several layers' predictions ([n_layers * N, d], layer-major, as
    Alg. 1's ``ctr(q, z, L)``): row i of every layer has key i as its positive. The keys of every process are
    gathered (autograd-aware), so the negatives are the whole global batch and this process's positives sit at
    offset rank * N. ``detach_keys``: the keys are a target (MoCo v3's teacher, SDSSL's sg(z_L)); SimCLR's own
    final term trains both sides, so it passes False.
    """
    q = F.normalize(loss_precision(q), dim=-1)
    k = F.normalize(loss_precision(k.detach() if detach_keys else k), dim=-1)
    n = k.shape[0]
    if q.shape[0] % n:
        raise ValueError(f"info_nce: {q.shape[0]} query rows are not a whole number of layers of {n} keys")
    keys = all_gather_with_grad(k)
    labels = (torch.arange(n, device=q.device) + rank() * n).repeat(q.shape[0] // n)
    return 2 * temperature * F.cross_entropy(q @ keys.T / temperature, labels)


def nt_xent_to_targets(q: torch.Tensor, k: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """The intermediate term of SD-SimCLR as the SDSSL code computes it (``pl_train_simclr``,
    ``info_nce_loss_intermediate``): NT-Xent of one layer's outputs on both views against the student's own
    detached final outputs (Eq. 2 with SimCLR's negatives).

    ``q`` = [q_l(x1); q_l(x2)] and ``k`` = [z_L(x1); z_L(x2)], both [2N, d], L2-normalised here. Row i's positive is
    the other view of its image (key (i + N) mod 2N); its negatives are the other 2N - 2 keys (its own column, the
    same view's final output, is left out, as NT-Xent leaves out the anchor itself); cross-entropy of the logits
    / tau, averaged over the 2N rows, no 2 tau factor. The keys of every process are gathered, so the negatives
    are the whole global batch and this process's keys sit at offset rank * 2N.
    """
    q = F.normalize(loss_precision(q), dim=-1)
    k = F.normalize(loss_precision(k.detach()), dim=-1)
    rows = k.shape[0]
    if q.shape[0] != rows or rows % 2:
        raise ValueError(f"nt_xent_to_targets: needs [2N, d] queries and keys of both views, got {q.shape[0]} "
                         f"and {rows} rows")
    logits = q @ all_gather_with_grad(k).T / temperature
    own = torch.arange(rows, device=q.device) + rank() * rows
    positives = (torch.arange(rows, device=q.device) + rows // 2) % rows + rank() * rows
    logits[torch.arange(rows, device=q.device), own] = float("-inf")
    return F.cross_entropy(logits, positives)


def isd_loss(layer_predictions: Sequence[torch.Tensor], final_target: torch.Tensor, loss: PairLoss) -> torch.Tensor:
    """L_isd (SDSSL Eq. 3): the base loss of each intermediate layer's prediction q_l against sg(z_L), averaged
    over the L - 1 intermediate layers (the layers given)."""
    target = final_target.detach()
    return torch.stack([loss(q, target) for q in layer_predictions]).mean()


def pred_loss(predictors: Sequence[nn.Module], projections: Sequence[torch.Tensor], final_target: torch.Tensor,
              loss: PairLoss) -> torch.Tensor:
    """L_pred (SDSSL Eq. 5): sum over layers of the base loss of pred_l(sg(h_l)) against sg(z_L).

    Both inputs are detached here, so only the predictors learn from it. Algorithm 1 computes it as L times the
    mean over the L layers' rows, which is this sum.
    """
    target = final_target.detach()
    return torch.stack([loss(predict(h.detach()), target) for predict, h in zip(predictors, projections)]).sum()
