"""MCL: Mutual Contrastive Learning (Yang et al., AAAI 2022 / TPAMI, paper 002 Sec. 3), M >= 2 members.

A coupling over the objective every member learns alone (issue 15). ``form`` picks that objective, in one place
(``member_objective``): ``supervised`` (``SupervisedObjective``) or ``moco`` (``mocov2.MoCoV2Objective``). An
objective (``MemberObjective``) gives the members' heads, state, views, training order, network passes, its own
loss terms, its contrastive samples and its EMA step; the coupling's terms, VCL, ICL and their soft forms, are
written once over those samples (``contrastive_coupling``, which L-MCL applies per stage).

Supervised form (``form: supervised``, the paper's main setting). Member m is a classifier f_m = g_m(phi_m(x)) plus
a projection zeta_m = Linear(d, 128)-ReLU-Linear(128, 128), v_m = normalise(zeta_m(phi_m(x))) (Sec. 3.1). One
augmented view per image, the same tensor for every member (code). Loss:

    L = sum_m CE(z_m, y) + alpha (L_VCL + L_ICL) + beta (L_SoftVCL + L_SoftICL)      (Eq. 3, 7, 8, 9, 10)

with VCL/ICL the (K+1)-way contrastive cross-entropies of Eq. 2 and 5 (ICL: anchor from f_a, contrast from f_b;
both get gradients), the soft terms KL at ``soft_temperature`` between contrastive distributions, the soft label
detached (Eq. 8-9). ``soft_anchor_column`` says which rows the soft terms compare under batch-based mining: ``drop``
(default; the paper's Eq. 8-9, distributions over the K+1 contrastive samples, the anchor not among them, the same
rows as VCL/ICL) or ``keep`` (the authors' code: the full B x B similarity logits, each anchor's own column
included; every reproduction config sets it). Contrastive sample mining (Sec. 4.5.1):
- ``mining: batch`` (CIFAR, Alg. 1): a class-aware sampler makes batches of B/2 classes x 2 images; every other
  batch sample is a contrastive sample (positives: same label; the anchor's own column is dropped, even across
  networks, as in the code); negatives come from the whole global batch under DDP (autograd-aware all-gather).
- ``mining: memory`` (ImageNet, Alg. 2): one memory bank per member over the training set (random unit vectors at
  first, written at each sample's index with momentum ``memory.momentum`` and renormalised once the trainer accepts
  the step, so a skipped non-finite step leaves the banks as they were), one
  same-class positive and ``memory.negatives`` other-class negatives drawn per anchor, the same indices for every
  member so the distributions compare the same samples.

Self-supervised form (``form: moco``, the AAAI paper's MoCo-based variant that MOKD Table 3 compares against): no
labels and no classifier; each member is a MoCo v2 (``mocov2``: query encoder = backbone + projection, momentum key
encoder, its own FIFO queue of ``moco.queue_size`` keys, enqueued once the trainer accepts the step). With q_m from
view 1 and k_m from view 2: VCL = member m's MoCo loss on [q_m.k_m, q_m.queue_m] (Eq. 2); ICL a->b on [q_a.k_b,
q_a.queue_b] (Eq. 5); the soft terms are the KL between those (1+K)-way distributions (Eq. 8-9); L is Eq. (10)
alone. Keys are all-gathered before they enter a queue. Not offered: MoCo's shuffled BatchNorm across GPUs.

The two-view objectives of ``OBJECTIVES`` are not MCL members. MCL's terms need, per member, a (K+1)-way
contrastive distribution whose samples every member can be compared on (Eq. 1-9): BYOL and SimSiam regress one
view onto the other and have no negatives, so no such distribution exists. SimCLR's NT-Xent and MoCo v3's InfoNCE
do contrast over the batch, but MCL never defines their ICL (which of the 2B views are b's samples for an anchor of
a, with both views anchors) and their ``Objective`` gives only its loss, not the samples; such a coupling would be
a new method, not MCL. DML (``dml``) couples class posteriors, so it holds for the supervised objective only.

Options (``strategy:``): ``form``, ``mining``, ``alpha`` (0.1), ``beta`` (1), ``tau`` (0.1 CIFAR, 0.07 ImageNet and
MoCo), ``soft_temperature`` (3), ``embed_dim`` (128), ``soft_anchor_column`` (drop), ``embed_hidden_dim`` (128;
null = the backbone width, MoCo v2's head), ``terms`` (subset of vcl/icl/soft_vcl/soft_icl, MCL Table 6),
``memory: {momentum, negatives}``, ``moco: {queue_size, momentum}``. Evaluation: supervised form, test top-1 of every member and the ensemble;
MoCo form, k-NN and linear probe of each query encoder's backbone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, Sampler, Subset

from sslkd.data.sampling import ClassAwareSampler, dataset_labels
from sslkd.core.distributed import all_gather_no_grad, all_gather_with_grad, rank
from sslkd.errors import UserError
from sslkd.losses.mcl import (
    TERMS,
    ContrastiveLogits,
    batch_contrastive_logits,
    dictionary_contrastive_logits,
    mcl_loss,
)
from sslkd.losses.precision import loss_precision
from sslkd.models.memory import ClassIndex, MemoryBank
from sslkd.registry import STRATEGIES
from sslkd.strategies.base import Strategy
from sslkd.strategies.mocov2 import MoCoV2Objective, MoCoV2Options, Projection, project
from sslkd.strategies.supervised import SupervisedCohort


@dataclass
class MemoryOptions:
    momentum: float = 0.5
    negatives: int = 8192


@dataclass
class ContrastOptions:
    """The options of MCL's contrastive terms (Eq. 10) and their samples, which MCL and L-MCL share: the ``strategy``
    keys of both (``strategy.alpha``, ``strategy.memory.negatives``, ...)."""

    mining: Literal["batch", "memory"] = "batch"
    alpha: float = 0.1
    beta: float = 1.0
    tau: float = 0.1
    soft_temperature: float = 3.0
    soft_anchor_column: Literal["drop", "keep"] = "drop"
    embed_dim: int = 128
    embed_hidden_dim: int | None = 128
    terms: list[str] = field(default_factory=lambda: list(TERMS))
    memory: MemoryOptions = field(default_factory=MemoryOptions)


@dataclass
class MCLOptions(ContrastOptions):
    form: Literal["supervised", "moco"] = "supervised"
    moco: MoCoV2Options = field(default_factory=MoCoV2Options)


def check_terms(terms: list[str]) -> None:
    unknown = sorted(set(terms) - set(TERMS))
    if unknown:
        raise UserError(f"strategy.terms has unknown MCL terms {unknown}; choose from {', '.join(TERMS)}")


def check_soft_anchor_column(soft_anchor_column: str, mining: str) -> None:
    """Only batch-based mining contrasts an anchor with its own batch, so only there is an anchor column to keep."""
    if soft_anchor_column == "keep" and mining != "batch":
        raise UserError("strategy.soft_anchor_column=keep applies to batch-based mining only (memory banks and MoCo "
                        "queues never hold the anchor's own column): drop the option or set it to drop")


def item_indices(dataset: Dataset) -> tuple[torch.Tensor, int]:
    """The data-set index each training item reports (a Subset reports its parent's) and the parent's size."""
    if isinstance(dataset, Subset):
        parent, total = item_indices(dataset.dataset)
        return parent[torch.as_tensor(dataset.indices, dtype=torch.long)], total
    return torch.arange(len(dataset)), len(dataset)


class CohortContrast(nn.Module):
    """Contrastive logits of one layer of the cohort (batch- or memory-based mining) and, for memory-based mining,
    the members' memory banks (buffers, so checkpoints hold them)."""

    def __init__(self, members: list[str], dim: int, mining: str, tau: float, memory: MemoryOptions,
                 soft_anchor_column: str = "drop"):
        super().__init__()
        self.names = list(members)
        self.mining = mining
        self.tau = tau
        self.memory = memory
        self.soft_anchor_column = soft_anchor_column
        self.banks = nn.ModuleDict({m: MemoryBank(dim) for m in members}) if mining == "memory" else None
        self.class_index: ClassIndex | None = None

    def attach(self, items: torch.Tensor, labels: torch.Tensor, size: int, seed: int) -> None:
        """Memory-based mining: size the banks to the data set and index the training items by class."""
        if self.banks is None:
            return
        for offset, bank in enumerate(self.banks.values()):
            bank.resize(size, seed + offset)
        self.class_index = ClassIndex(items, labels)

    def logits(self, embeddings: dict[str, torch.Tensor], labels: torch.Tensor,
               indices: torch.Tensor) -> ContrastiveLogits:
        if self.mining == "batch":
            all_labels = all_gather_no_grad(labels)
            positions = rank() * labels.shape[0] + torch.arange(labels.shape[0], device=labels.device)
            contrast = {m: all_gather_with_grad(v) for m, v in embeddings.items()}
            return batch_contrastive_logits(embeddings, contrast, labels, all_labels, positions, self.tau,
                                            self.soft_anchor_column)
        if self.class_index is None:
            raise UserError("memory-based mining needs the training set to size its memory banks: train through "
                            "the trainer (sslkd train), or use strategy.mining=batch")
        class_index = self.class_index.to(labels.device)
        positive_items = class_index.positives(indices, labels)
        negative_items = class_index.negatives(labels, self.memory.negatives)
        positives = {m: self.banks[m].gather(positive_items) for m in self.names}
        negatives = {m: self.banks[m].gather(negative_items) for m in self.names}
        return dictionary_contrastive_logits(embeddings, positives, negatives, self.tau)

    def updates(self, embeddings: dict[str, torch.Tensor], indices: torch.Tensor) -> list[Callable[[], None]]:
        """Memory-based mining: this step's embeddings of every process, gathered now, as an update that writes
        them at their items' indices (MCL Alg. 2) once the step is accepted (``Strategy.defer``); none for
        batch-based mining."""
        if self.banks is None:
            return []
        all_indices = all_gather_no_grad(indices)
        gathered = {m: all_gather_no_grad(v.detach()) for m, v in embeddings.items()}

        def write() -> None:
            for m, v in gathered.items():
                self.banks[m].update(all_indices, v, self.memory.momentum)

        return [write]


def mining_sampler(strategy, contrasts: list[CohortContrast], mining: str, dataset: Dataset, batch_size: int,
                   seed: int, rank: int, world_size: int):
    """The training order contrastive mining needs (MCL Sec. 4.5.1): class-aware pairs for batch-based mining;
    for memory-based mining the usual shuffled order, after sizing the banks to ``dataset``."""
    labels = dataset_labels(dataset)
    if mining == "memory":
        items, size = item_indices(dataset)
        for contrast in contrasts:
            contrast.attach(items, labels, size, seed)
        return Strategy.train_sampler(strategy, dataset, batch_size, seed, rank, world_size)
    if batch_size % 2:
        raise UserError(f"class-aware batches are pairs of images: set an even train.batch_size (got {batch_size})")
    return ClassAwareSampler(labels, batch_size, seed, rank=rank, world_size=world_size)


class Contrast(Protocol):
    """Where one layer's contrastive samples come from: the logits of every member pair on them, and the state
    updates the step leaves (bank writes, enqueued keys), applied once the step is accepted."""

    def logits(self, inputs, labels: torch.Tensor, indices: torch.Tensor) -> ContrastiveLogits: ...

    def updates(self, inputs, indices: torch.Tensor) -> list[Callable[[], None]]: ...


def contrastive_coupling(strategy: Strategy, contrast: Contrast, inputs, labels: torch.Tensor,
                         indices: torch.Tensor) -> dict[str, torch.Tensor]:
    """MCL Eq. (10) over one layer's contrastive samples (VCL Eq. 3, ICL Eq. 7, soft VCL Eq. 8, soft ICL Eq. 9, the
    terms and weights of ``strategy.options``); their state updates wait for the accepted step (``Strategy.defer``)."""
    opts = strategy.options
    terms = mcl_loss(contrast.logits(inputs, labels, indices), opts.alpha, opts.beta, opts.soft_temperature,
                     tuple(opts.terms))
    for update in contrast.updates(inputs, indices):
        strategy.defer(update)
    return terms


class MemberObjective(Contrast, Protocol):
    """What MCL's coupling takes of the objective each member learns alone: its heads (``embed``, the projection
    MCL contrasts, among them), the state it keeps per member (``build_state``: modules the strategy holds, and
    checkpoints, under these names), its views and training order, its network passes (``outputs``), its own loss
    terms besides MCL's, where its contrastive samples come from (``mining``; ``logits``, ``updates``) and its step
    after each accepted update (its EMA pairs)."""

    has_classifiers: bool
    mining: str

    def heads(self, strategy: Strategy, name: str, backbone: nn.Module) -> dict[str, nn.Module]: ...

    def build_state(self, members: nn.ModuleDict) -> dict[str, nn.Module]: ...

    def views(self, strategy: Strategy) -> Callable: ...

    def train_sampler(self, strategy: Strategy, dataset: Dataset, batch_size: int, seed: int, rank: int,
                      world_size: int) -> Sampler: ...

    def outputs(self, members: nn.ModuleDict, views: list[torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]: ...

    def loss(self, outputs: dict, labels: torch.Tensor) -> dict[str, torch.Tensor]: ...

    def after_step(self, members: nn.ModuleDict) -> None: ...


class SupervisedObjective:
    """Each member a classifier f_m = g_m(phi_m(x)) with cross-entropy on the one view (MCL Sec. 3.1), its heads,
    views and classifier those of ``supervised``; MCL contrasts v_m = normalise(zeta_m(phi_m(x))) of the same view
    against samples mined by label (``mining``: the class-aware batch, Alg. 1, or memory banks, Alg. 2)."""

    has_classifiers = True

    def __init__(self, options: MCLOptions):
        self.options = options
        self.mining = options.mining
        self.contrast: CohortContrast | None = None

    def heads(self, strategy: SupervisedCohort, name: str, backbone: nn.Module) -> dict[str, nn.Module]:
        opts = self.options
        return {"embed": Projection(backbone.num_features, opts.embed_dim, opts.embed_hidden_dim),
                **SupervisedCohort.member_heads(strategy, name, backbone)}

    def build_state(self, members: nn.ModuleDict) -> dict[str, nn.Module]:
        opts = self.options
        self.contrast = CohortContrast(list(members), opts.embed_dim, opts.mining, opts.tau, opts.memory,
                                       opts.soft_anchor_column)
        return {"contrast": self.contrast}

    def views(self, strategy: SupervisedCohort) -> Callable:
        return SupervisedCohort.train_transform(strategy)

    def train_sampler(self, strategy, dataset, batch_size, seed, rank, world_size) -> Sampler:
        return mining_sampler(strategy, [self.contrast], self.mining, dataset, batch_size, seed, rank, world_size)

    def outputs(self, members: nn.ModuleDict, views: list[torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
        """{"logits": {m: z_m}, "embeddings": {m: v_m}} on the one view."""
        logits, embeddings = {}, {}
        for name, member in members.items():
            feature, embeddings[name] = project(member.student, views[0])
            logits[name] = member.student["classifier"](feature)
        return {"logits": logits, "embeddings": embeddings}

    def loss(self, outputs: dict, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return {f"{name}/ce": F.cross_entropy(loss_precision(z), labels) for name, z in outputs["logits"].items()}

    def logits(self, outputs: dict, labels: torch.Tensor, indices: torch.Tensor) -> ContrastiveLogits:
        return self.contrast.logits(outputs["embeddings"], labels, indices)

    def updates(self, outputs: dict, indices: torch.Tensor) -> list[Callable[[], None]]:
        return self.contrast.updates(outputs["embeddings"], indices)

    def after_step(self, members: nn.ModuleDict) -> None:
        """No EMA pairs."""


def member_objective(opts: MCLOptions) -> MemberObjective:
    """The objective every member learns alone, by ``form``: the one place MCL reads it."""
    if opts.form == "moco":
        return MoCoV2Objective(opts.moco, opts.embed_dim, opts.embed_hidden_dim, opts.tau)
    return SupervisedObjective(opts)


def check_mining(opts: MCLOptions, objective: MemberObjective) -> None:
    """``mining`` picks the samples of an objective that mines them by label; one with a dictionary of its own
    (MoCo's queue) takes batch, the default, only."""
    check_soft_anchor_column(opts.soft_anchor_column, objective.mining)
    if opts.mining not in ("batch", objective.mining):
        raise UserError(f"strategy.form={opts.form} mines its negatives from each member's {objective.mining}: "
                        f"drop strategy.mining={opts.mining} (or set it to batch)")


@STRATEGIES.register("mcl")
class MCL(SupervisedCohort):
    """MCL's coupling over the members' ``MemberObjective`` (module docstring)."""

    name = "mcl"
    Options = MCLOptions

    def __init__(self, cfg, info):
        super().__init__(cfg, info)
        opts = self.options
        self.require_members(2)
        check_terms(opts.terms)
        self.objective = member_objective(opts)
        check_mining(opts, self.objective)
        self.has_classifiers = self.objective.has_classifiers
        self.build_members()
        for attribute, module in self.objective.build_state(self.members).items():
            self.add_module(attribute, module)

    def member_heads(self, name, backbone):
        return self.objective.heads(self, name, backbone)

    def train_transform(self):
        return self.objective.views(self)

    def train_sampler(self, dataset, batch_size, seed, rank, world_size):
        return self.objective.train_sampler(self, dataset, batch_size, seed, rank, world_size)

    def network_outputs(self, views):
        """The objective's outputs, keyed by output then member: supervised, {"logits": {m: z_m}, "embeddings":
        {m: v_m}} on the one view; MoCo, {"queries": {m: q_m}} from view 1 and {"keys": {m: k_m}} from view 2."""
        return self.objective.outputs(self.members, views)

    def losses(self, outputs, labels, indices, step):
        """The objective's own terms (sum_m CE(z_m, y) when supervised) + MCL Eq. (10) over its contrastive samples;
        "mcl" is Eq. (10) alone where the total has other terms."""
        losses = self.objective.loss(outputs, labels)
        own = list(losses.values())
        mcl = contrastive_coupling(self, self.objective, outputs, labels, indices)
        losses.update({term: value for term, value in mcl.items() if term != "loss"})
        if own:
            losses["mcl"] = mcl["loss"]
        losses["loss"] = sum(own) + mcl["loss"]
        return losses

    @torch.no_grad()
    def after_step(self, step):
        self.objective.after_step(self.members)
