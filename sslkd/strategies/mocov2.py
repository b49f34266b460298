"""MoCo v2 (Chen, Fan, Girshick & He, 2020; MoCo, He et al. 2020): the ``mocov2`` baseline, and the objective each
member of self-supervised MCL learns (MCL, AAAI 2022; the MCL row of MOKD Table 3, ``mcl``'s ``form: moco``).

A member is a query encoder (backbone phi + projection zeta, q = normalise(zeta(phi(x)))), a momentum key encoder (an
EMA copy of the whole query encoder, no gradient) and a FIFO queue of keys. Its InfoNCE on a query q with key k
(MoCo Eq. 1), the queue's keys the negatives:

    L(q, k, queue) = -log exp(q.k / tau) / (exp(q.k / tau) + sum_{n in queue} exp(q.n / tau))

Views: MoCo v2's recipe, crop (0.2, 1), jitter (0.4, 0.4, 0.4, 0.1) p=0.8, grayscale 0.2, blur p=0.5, flip. The keys
of every process are gathered and enter a queue only once the trainer accepts the step (``Strategy.defer``). Not
offered: MoCo's shuffled BatchNorm across GPUs (each process's key encoder normalises its own batch).

``mocov2`` (``SymmetricMoCoV2Objective`` under the independent coupling): solo-learn's ``mocov2plus``, the
symmetric two-view loss (L(q1, k2, queue_2) + L(q2, k1, queue_1)) / 2 with one queue per view (``queue_size`` keys
each, ``queues.<member>.<view>``); the key encoder is the member's EMA teacher (momentum cosine from
``momentum_teacher`` to ``momentum_teacher_end``: MoCo v2 holds 0.999, solo-learn's CIFAR recipe goes 0.99 -> 0.999).
Options (``strategy:``): ``temperature`` (tau, 0.2), ``proj_hidden_dim``, ``out_dim`` (MoCo v2's MLP head 2048-128),
``queue_size``, ``momentum_teacher``, ``momentum_teacher_end``. Of ``data.augment`` only ``global_size`` and ``blur``
(false: no blur, the CIFAR recipes) are read. Evaluation: the query encoder (``eval.encoder: auto``), as MoCo's.

MCL's member objective (``MoCoV2Objective``): MoCo v2's asymmetric passes, q from the first view and k from the
second, a constant momentum ``moco.momentum`` and one queue of ``moco.queue_size`` keys per member. The member's
contrastive samples are its dictionary: its own key as the positive and its queue as the negatives, so its InfoNCE
is MCL's VCL of that member (Eq. 2), and ICL a->b contrasts q_a with member b's dictionary (Eq. 5). Not in
``OBJECTIVES``, nor is the symmetric one: those are two-view objectives whose loss is a function of their outputs
alone, which DoGo takes; MoCo v2's loss reads its queue, whose update waits for the accepted step. MCL keeps the key
encoders and queues under ``key_encoders.<member>`` and ``queues.<member>`` of the strategy (their checkpoint keys).
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
from sslkd.registry import STRATEGIES
from sslkd.strategies.base import Strategy
from sslkd.strategies.objectives import Independent, Objective, PairOutputs


@dataclass
class MoCoV2Options:
    queue_size: int = 65536
    momentum: float = 0.999


@dataclass
class SymmetricMoCoV2Options:
    temperature: float = 0.2
    proj_hidden_dim: int = 2048
    out_dim: int = 128
    queue_size: int = 65536
    momentum_teacher: float = 0.999
    momentum_teacher_end: float = 0.999


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


def moco_v2_views(strategy: Strategy, n_views: int = 2, blur: bool = True) -> SimCLRTransform:
    """``n_views`` views in MoCo v2's recipe (module docstring) at the training crop size; ``blur`` False drops the
    blur."""
    size, _ = strategy.crop_sizes()
    return SimCLRTransform(size, scale=(0.2, 1.0), jitter=(0.4, 0.4, 0.4, 0.1), blur_p=0.5 if blur else 0.0,
                           mean=strategy.info.mean, std=strategy.info.std, n_views=n_views)


def queue_info_nce(query: torch.Tensor, key: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """MoCo Eq. (1) averaged over the batch: each query's positive is its key, its negatives the queue's keys; as the
    MoCo code computes it, a cross-entropy over the logits [q.k, q.queue] / tau with the positive at index 0. The
    queries are divided by tau before the products (the [B, 1 + K] logits are never divided or masked) and the queue
    product is a Linear layer's (``F.linear``, so a CPU run computes it with the run's Linear kernel)."""
    query = loss_precision(query) / temperature
    positive = (query * loss_precision(key)).sum(dim=-1, keepdim=True)
    logits = torch.cat([positive, F.linear(query, loss_precision(queue))], dim=1)
    return F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device))


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
        return moco_v2_views(strategy)

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


class SymmetricMoCoV2Objective(Objective):
    """MoCo v2 with solo-learn's symmetric loss (``mocov2plus``), as one member's own objective (module docstring)."""

    name = "mocov2"
    Options = SymmetricMoCoV2Options
    teacher_modules = ("backbone", "embed")
    eval_encoder = "student"

    def heads(self, in_dim: int) -> dict[str, nn.Module]:
        return {"embed": Projection(in_dim, self.options.out_dim, self.options.proj_hidden_dim)}

    def views(self, strategy: Strategy, n_views: int) -> SimCLRTransform:
        return moco_v2_views(strategy, n_views, blur=strategy.cfg.data.augment.blur)

    def build_state(self, members: nn.ModuleDict) -> dict[str, nn.Module]:
        """Per member one queue of each view's keys (random unit keys at first, MoCo)."""
        opts = self.options
        self.queues = nn.ModuleDict({
            name: nn.ModuleList([FeatureQueue(opts.queue_size, opts.out_dim) for _ in range(2)]) for name in members})
        return {"queues": self.queues}

    def embed(self, student, teacher, view_a, view_b) -> PairOutputs:
        """Queries z = (q1, q2) of the query encoder and keys k = (k1, k2) of the key encoder (no gradient)."""
        queries = tuple(project(student, view)[1] for view in (view_a, view_b))
        with torch.no_grad():
            keys = tuple(project(teacher, view)[1] for view in (view_a, view_b))
        return PairOutputs(z=queries, k=keys)

    def member_loss(self, strategy: Strategy, member: str, outputs: PairOutputs) -> torch.Tensor:
        """(L(q1, k2, queue_2) + L(q2, k1, queue_1)) / 2 over the queues as they were before this step; each view's
        keys of every process, gathered now, enter its queue once the step is accepted."""
        (q1, q2), (k1, k2) = outputs.z, outputs.k
        queue_1, queue_2 = self.queues[member]
        tau = self.options.temperature
        loss = (queue_info_nce(q1, k2, queue_2.snapshot(), tau) + queue_info_nce(q2, k1, queue_1.snapshot(), tau)) / 2
        for queue, keys in ((queue_1, k1), (queue_2, k2)):
            strategy.defer(partial(queue.enqueue, all_gather_no_grad(keys)))
        return loss

    def teacher_momentum_end(self) -> float:
        return self.options.momentum_teacher_end


@STRATEGIES.register("mocov2")
class MoCoV2(Independent):
    name = "mocov2"
    Options = SymmetricMoCoV2Options
    Objective = SymmetricMoCoV2Objective
