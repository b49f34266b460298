"""DoGo: Distill on the Go (Bhat et al., CVPRW 2021), online distillation between M >= 2 self-supervised peers.

Peer i has its own backbone and heads and its own SSL objective (``objectives``: simclr, DoGo Eq. 1, or simsiam,
Eq. 6; DoGo Table 4 mixes them; beyond the paper, byol or mocov3, whose EMA teachers follow their peer alone),
computed by the very objective of the ``simclr``/``simsiam``/``byol``/``mocov3`` baselines (``OBJECTIVES``). Its loss:

    L_i = L_ssl_i + lambda_i L_kd_i                                                            (Eq. 4-5)
    L_kd_i = D_KL(P_peer || P_i),  P = row softmax of sim(Z', Z'') / tau_kd (B x B, cosine)     (Eq. 2-3)

P_i is built from the peer's projections (SimCLR) or predictions (SimSiam, Sec. 4.7; BYOL and MoCo v3 likewise); the peer's distribution is a
target, detached, so gradients never cross peers and one backward of sum_i L_i equals the code's one per peer.
lambda_i is ``members.<name>.distill_weight`` (paper: 100, Sec. 4.1 and 5).

Options (``strategy:``), defaults from the paper; the paper-reproduction configs set the authors' code choices:
- ``objectives: {member: simclr | simsiam | byol | mocov3}``: each peer's SSL objective (default simclr for every
  peer).
- ``simclr: {temperature, hidden_dim, out_dim}``, ``simsiam: {hidden_dim, out_dim, pred_hidden_dim}``, ``byol`` and
  ``mocov3`` (their baselines' options): the objectives' options, exactly as the baselines take them.
- ``augmentation``: the objective whose view recipe every peer's views follow (one augmentation module, Fig. 2):
  simclr (DoGo's 32-px SimCLR recipe, default) or byol (BYOL's asymmetric pair, what BYOL and MoCo v3 peers see
  alone).
- ``kd_temperature``: tau_kd (0.1, Sec. 5).
- ``views: shared | per_peer``: shared: every peer sees the same two views (one augmentation module, Fig. 2);
  per_peer: the code draws each peer its own pair (the transform makes 2M views, peer i takes views 2i, 2i+1;
  Sec. 1 also speaks of "different augmentation for each model").
- ``kd_reduction: row | all``: the KL summed over each row and averaged over rows (Eq. 2-3 per sample), or
  averaged over all B^2 entries as the code does (``F.kl_div`` default), which is why the code's lambda is 100.
- ``multi_peer: sum | ensemble`` (M > 2, Sec. 3): sum the KL from every peer, or take the KL from the peers'
  mean distribution; identical for M = 2.
- ``simsiam_target: paper | code``: the embedding a SimSiam peer's target distribution is built from. paper: its
  predictions (Sec. 4.7). code: its projections when the student is a SimSiam peer too, its predictions otherwise.
Not offered: the code's WRNs, whose "features" are a 1000-way linear layer over the pooled map (sslkd's WRNs give
the pooled map), and its weaker colour jitter for SimSiam peers. Views are described in ``simclr``: of
``data.augment`` only the crop size is used.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from sslkd.errors import UserError
from sslkd.losses.contrastive import dogo_kd_loss, similarity_logits
from sslkd.registry import OBJECTIVES, STRATEGIES
from sslkd.strategies.base import Declared, Strategy
from sslkd.strategies.byol import BYOLOptions
from sslkd.strategies.mocov3 import MoCoV3Options
from sslkd.strategies.objectives import Objective, PairOutputs, teacher_module, update_teacher
from sslkd.strategies.simclr import SimCLROptions
from sslkd.strategies.simsiam import SimSiamOptions


@dataclass
class DoGoOptions:
    objectives: dict[str, str] = field(default_factory=dict)
    simclr: SimCLROptions = field(default_factory=SimCLROptions)
    simsiam: SimSiamOptions = field(default_factory=SimSiamOptions)
    byol: BYOLOptions = field(default_factory=BYOLOptions)
    mocov3: MoCoV3Options = field(default_factory=MoCoV3Options)
    augmentation: Literal["simclr", "byol"] = "simclr"
    kd_temperature: float = 0.1
    views: Literal["shared", "per_peer"] = "shared"
    kd_reduction: Literal["row", "all"] = "row"
    multi_peer: Literal["sum", "ensemble"] = "sum"
    simsiam_target: Literal["paper", "code"] = "paper"


PEER_OBJECTIVES = ("simclr", "simsiam", "byol", "mocov3")  # the objectives with options under ``strategy:``


@STRATEGIES.register("dogo")
class DoGo(Strategy):
    name = "dogo"
    Options = DoGoOptions

    def __init__(self, cfg, info):
        super().__init__(cfg, info)
        opts = self.options
        self.require_members(2)
        unknown = set(opts.objectives) - set(cfg.members)
        if unknown:
            raise UserError(
                f"strategy.objectives names unknown members {sorted(unknown)}; members are {sorted(cfg.members)}"
            )
        # every peer's objective, written back so the saved config.yaml names them all
        opts.objectives = {name: opts.objectives.get(name, "simclr") for name in cfg.members}
        for name, objective in opts.objectives.items():
            if objective not in PEER_OBJECTIVES:
                raise UserError(f"strategy.objectives.{name}={objective!r} is not a DoGo peer objective; "
                                f"choose from {', '.join(PEER_OBJECTIVES)}")
        self.objectives: dict[str, Objective] = {
            name: OBJECTIVES.get(objective)(getattr(opts, objective)) for name, objective in opts.objectives.items()
        }
        for name, objective in self.objectives.items():
            self.add_member(name, cfg.members[name],
                            lambda _, backbone, rate, objective=objective: objective.heads(backbone.num_features),
                            ema_teacher=objective.teacher_modules)

    def member_eval_encoder(self, member: str) -> str:
        return self.objectives[member].eval_encoder

    def parameter_declarations(self, member: str) -> Declared:
        return self.declare(member, fixed_lr=self.objectives[member].fixed_lr_modules())

    def train_transform(self):
        n_views = 2 * len(self.members) if self.options.views == "per_peer" else 2
        return OBJECTIVES.get(self.options.augmentation)(getattr(self.options, self.options.augmentation)).views(self, n_views)

    def peer_views(self, views: list[torch.Tensor], index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The two views of the ``index``-th peer: views 0, 1 when shared, 2i and 2i+1 when drawn per peer."""
        first = 2 * index if self.options.views == "per_peer" else 0
        return views[first], views[first + 1]

    def network_outputs(self, views) -> dict[str, PairOutputs]:
        """Every peer's projections (and a SimSiam peer's predictions) on its own two views, keyed by peer name."""
        return {
            name: self.objectives[name].embed(member.student, teacher_module(member), *self.peer_views(views, i))
            for i, (name, member) in enumerate(self.members.items())
        }

    def target_embeddings(self, student: str, peer: str,
                          outputs: dict[str, PairOutputs]) -> tuple[torch.Tensor, torch.Tensor]:
        """What ``peer``'s target distribution for ``student`` is built from (see ``simsiam_target``)."""
        objectives = self.options.objectives
        both_simsiam = objectives[student] == objectives[peer] == "simsiam"
        if self.options.simsiam_target == "code" and both_simsiam:
            return outputs[peer].z
        return outputs[peer].own

    def losses(self, outputs: dict[str, PairOutputs], labels, indices, step) -> dict[str, torch.Tensor]:
        """Per peer i: ``i/ssl`` (Eq. 1 or 6), ``i/kd`` (Eq. 2-3 against the detached peers) and ``i/loss`` =
        ssl + lambda_i kd (Eq. 4-5); ``loss``: their sum over peers."""
        opts = self.options
        losses: dict[str, torch.Tensor] = {}
        for name, member in self.members.items():
            ssl = self.objectives[name].loss(outputs[name])
            logits = similarity_logits(*outputs[name].own, opts.kd_temperature)
            with torch.no_grad():
                targets = [
                    similarity_logits(*self.target_embeddings(name, peer, outputs), opts.kd_temperature)
                    for peer in self.members if peer != name
                ]
            kd = dogo_kd_loss(logits, targets, opts.multi_peer, opts.kd_reduction)
            losses.update({f"{name}/ssl": ssl, f"{name}/kd": kd, f"{name}/loss": ssl + member.cfg.distill_weight * kd})
        losses["loss"] = sum(losses[f"{name}/loss"] for name in self.members)
        return losses

    def after_step(self, step):
        for name, objective in self.objectives.items():
            update_teacher(self, name, objective, step)
