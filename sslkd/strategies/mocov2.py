"""MoCo v2 (Chen, Fan, Girshick & He, 2020) as each member of self-supervised MCL learns it (MCL, AAAI 2022; the MCL
row of MOKD Table 3): the objective ``mcl``'s ``form: moco`` gives every member.

A member is a query encoder (backbone phi + projection zeta, q = normalise(zeta(phi(x)))), a momentum key encoder (an
EMA copy of the whole query encoder, constant momentum ``moco.momentum``, no gradient) and its own FIFO queue of
``moco.queue_size`` keys. q comes from the first view, k from the second (MoCo's asymmetric passes). The member's
contrastive samples are its dictionary: its own key as the positive and its queue as the negatives, so its InfoNCE
-log softmax([q.k, q.queue] / tau)[0] (MoCo Eq. 1) is MCL's VCL of that member (Eq. 2), and ICL a->b contrasts q_a
with member b's dictionary (Eq. 5). The keys of every process are gathered and enter the queue only once the trainer
accepts the step (``Strategy.defer``). Views: MoCo v2's recipe, crop (0.2, 1), jitter (0.4, 0.4, 0.4, 0.1) p=0.8,
grayscale 0.2, blur p=0.5, flip. Not offered: MoCo's shuffled BatchNorm across GPUs (each process's key encoder
normalises its own batch).

Not in ``OBJECTIVES``: those are two-view objectives whose loss is a function of their outputs alone
(``objectives.Objective``), which DoGo and the independent coupling take; MoCo v2's loss reads its queue, whose
update waits for the accepted step. The key encoders and queues are kept under ``key_encoders.<member>`` and
``queues.<member>`` of the strategy (their checkpoint keys).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from sslkd.core.distributed import all_gather_no_grad
from sslkd.data.transforms import SimCLRTransform
from sslkd.losses.mcl import ContrastiveLogits, dictionary_contrastive_logits
from sslkd.losses.precision import loss_precision
from sslkd.models.memory import FeatureQueue
from sslkd.models.teacher import EMATeacher
from sslkd.strategies.base import Strategy


@dataclass
class MoCoV2Options:
    queue_size: int = 65536
    momentum: float = 0.999


class Projection(nn.Sequential):
    """zeta: Linear(d, hidden)-ReLU-Linear(hidden, dim), MCL's projection of every member (Sec. 3.1) and, with
    hidden = d, MoCo v2's MLP head; the caller L2-normalises its output."""

    def __init__(self, in_dim: int, dim: int = 128, hidden_dim: int | None = 128):
        hidden = hidden_dim or in_dim
        super().__init__(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dim))


def project(encoder: nn.ModuleDict, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(pooled feature phi(x), v = normalise(zeta(phi(x)))): MCL's embedding (Sec. 3.1), MoCo's query or key."""
    feature = encoder["backbone"](images)
    return feature, F.normalize(loss_precision(encoder["embed"](feature)), dim=1)


class MoCoV2Objective:
    """Each member a MoCo v2 (module docstring), in the interface of ``mcl.MemberObjective``."""

    has_classifiers = False
    mining = "MoCo queue"

    def __init__(self, options: MoCoV2Options, dim: int, hidden_dim: int | None, temperature: float):
        self.options = options
        self.dim = dim
        self.hidden_dim = hidden_dim
        self.temperature = temperature
        self.key_encoders = nn.ModuleDict()
        self.queues = nn.ModuleDict()

    def heads(self, strategy: Strategy, name: str, backbone: nn.Module) -> dict[str, nn.Module]:
        return {"embed": Projection(backbone.num_features, self.dim, self.hidden_dim)}

    def build_state(self, members: nn.ModuleDict) -> dict[str, nn.Module]:
        """Every member's key encoder (a copy of its query encoder) and queue (random unit keys, MoCo)."""
        for name, member in members.items():
            self.key_encoders[name] = EMATeacher(member.student, copy.deepcopy(member.student))
        for name in members:
            self.queues[name] = FeatureQueue(self.options.queue_size, self.dim)
        return {"key_encoders": self.key_encoders, "queues": self.queues}

    def views(self, strategy: Strategy) -> SimCLRTransform:
        size, _ = strategy.crop_sizes()
        return SimCLRTransform(size, scale=(0.2, 1.0), jitter=(0.4, 0.4, 0.4, 0.1), blur_p=0.5,
                               mean=strategy.info.mean, std=strategy.info.std)

    def train_sampler(self, strategy: Strategy, dataset, batch_size: int, seed: int, rank: int, world_size: int):
        return Strategy.train_sampler(strategy, dataset, batch_size, seed, rank, world_size)

    def outputs(self, members: nn.ModuleDict, views: list[torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
        """{"queries": {m: q_m}} from the first view, {"keys": {m: k_m}} from the second (key encoders, no
        gradient)."""
        queries, keys = {}, {}
        for name, member in members.items():
            queries[name] = project(member.student, views[0])[1]
            with torch.no_grad():
                keys[name] = project(self.key_encoders[name].module, views[1])[1]
        return {"queries": queries, "keys": keys}

    def loss(self, outputs: dict, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Nothing beyond the contrastive terms: a member's InfoNCE on its own dictionary is its VCL (MCL Eq. 2)."""
        return {}

    def logits(self, outputs: dict, labels: torch.Tensor, indices: torch.Tensor) -> ContrastiveLogits:
        """[q_a.k_b, q_a.queue_b] / tau for every member pair (MCL Eq. 1, 4), each queue as it was before this step."""
        queues = {name: queue.snapshot() for name, queue in self.queues.items()}
        return dictionary_contrastive_logits(outputs["queries"], outputs["keys"], queues, self.temperature)

    def updates(self, outputs: dict, indices: torch.Tensor) -> list[Callable[[], None]]:
        """Every member's keys of every process, gathered now, to enqueue once the step is accepted."""
        return [partial(self.queues[name].enqueue, all_gather_no_grad(keys)) for name, keys in outputs["keys"].items()]

    @torch.no_grad()
    def after_step(self, members: nn.ModuleDict) -> None:
        """key encoder = m * key encoder + (1 - m) * query encoder, constant m (MoCo v2)."""
        for name, member in members.items():
            self.key_encoders[name].update(member.student, self.options.momentum)
