"""Deep Mutual Learning (Zhang et al., CVPR 2018), the DML baseline of MCL Tables 1-3 and 5.

Every member learns the labels and mimics its peers' class posteriors:

    L_m = CE(z_m, y) + 1/(M-1) sum_{l != m} KL(p_l || p_m)                                (DML Eq. 10)

p_l is a detached target, so no gradient reaches a peer through its soft labels, and one backward of sum_m L_m
equals DML's alternating per-member updates computed on the same batch.

A coupling (issue 15) over the supervised objective of ``supervised`` (``SupervisedCohort``: classifier, one view,
cross-entropy): its KL compares class posteriors, so it holds for objectives with a classifier only, not for the
self-supervised ones of ``OBJECTIVES`` or MCL's MoCo v2 form.

Options (``strategy:``): ``temperature`` of the posteriors (1 in DML; the KL is scaled by T^2), ``peer_reduction``
mean (DML's 1/(M-1)) or sum over peers. Views, heads and evaluation as in ``supervised``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch.nn.functional as F

from sslkd.losses.classification import dml_loss
from sslkd.losses.precision import loss_precision
from sslkd.registry import STRATEGIES
from sslkd.strategies.supervised import SupervisedCohort


@dataclass
class DMLOptions:
    temperature: float = 1.0
    peer_reduction: Literal["mean", "sum"] = "mean"


@STRATEGIES.register("dml")
class DML(SupervisedCohort):
    name = "dml"
    Options = DMLOptions

    def __init__(self, cfg, info):
        super().__init__(cfg, info)
        self.require_members(2)
        self.build_members()

    def losses(self, outputs, labels, indices, step):
        """DML Eq. (10) per member on ``network_outputs``' logits; the total sums the members' losses."""
        opts = self.options
        logits = outputs["logits"]
        losses = {}
        for name, z in logits.items():
            ce = F.cross_entropy(loss_precision(z), labels)
            kl = dml_loss(z, [logits[peer] for peer in logits if peer != name], opts.temperature, opts.peer_reduction)
            weight = self.members[name].cfg.distill_weight
            losses.update({f"{name}/ce": ce, f"{name}/kl": kl, f"{name}/loss": ce + weight * kl})
        losses["loss"] = sum(losses[f"{name}/loss"] for name in logits)
        return losses
