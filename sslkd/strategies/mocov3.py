"""MoCo v3 (Chen, Xie & He, 2021) as SDSSL trains it: the MoCo v3 baseline of SDSSL Table 1 and Algorithm 1.

Each member trains alone: backbone + projector (3-layer MLP) + predictor (2-layer MLP) and an EMA teacher of the
backbone and projector (momentum cosine 0.996 -> 1 per iteration, as SDSSL's code). With views x1, x2, student
predictions q and teacher projections k (keys, no gradient):

    L = ctr(q1, k2) + ctr(q2, k1),  ctr(q, k) = 2 tau CE(q k^T / tau, i -> i)          (SDSSL Eq. 2, Alg. 1)

q and k are L2-normalised; the keys of every process are gathered, so the negatives are the whole global batch.
Heads as ``byol`` (MLP with a BatchNorm on every output layer here, ``last_bn`` True), views BYOL's asymmetric
pair (see ``byol``).

Options (``strategy:``): ``temperature`` (tau, 0.2), ``proj_hidden_dim``, ``pred_hidden_dim``, ``out_dim``,
``last_bn``, ``momentum_teacher``, ``concat_views`` (False: one pass per view, as MoCo v3's and the SDSSL code; True:
one pass over both views concatenated, batch-norm statistics over 2N).

ViT details of MoCo v3 (and the SDSSL code) are backbone options (``members.<m>.backbone_args``):
``freeze_patch_embed: true`` and ``pos_embed: sincos`` (see ``sslkd.models.backbones.build_backbone``).

Evaluation: the online (student) encoder by default (``eval.encoder: auto``), as MoCo v3's protocol does.
"""

from __future__ import annotations

from dataclasses import dataclass

from sslkd.losses.sdssl import info_nce
from sslkd.registry import OBJECTIVES, STRATEGIES
from sslkd.strategies.byol import MomentumObjective
from sslkd.strategies.objectives import Independent


@dataclass
class MoCoV3Options:
    temperature: float = 0.2
    proj_hidden_dim: int = 4096
    pred_hidden_dim: int = 4096
    out_dim: int = 256
    last_bn: bool = True
    momentum_teacher: float = 0.996
    concat_views: bool = False


@OBJECTIVES.register("mocov3")
class MoCoV3Objective(MomentumObjective):
    name = "mocov3"
    Options = MoCoV3Options

    def pair_loss(self, q, k):
        return info_nce(q, k, self.options.temperature)


@STRATEGIES.register("mocov3")
class MoCoV3(Independent):
    name = "mocov3"
    Options = MoCoV3Options
    Objective = MoCoV3Objective
