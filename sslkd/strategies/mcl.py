"""MCL: Mutual Contrastive Learning (Yang et al., AAAI 2022 / TPAMI, paper 002 Sec. 3), M >= 2 members.

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
labels and no classifier; each member is a MoCo v2 (query encoder = backbone + projection, momentum key encoder,
its own FIFO queue of ``moco.queue_size`` keys, enqueued once the trainer accepts the step). With q_m from view 1 and k_m from view 2:
VCL = member m's MoCo loss on [q_m.k_m, q_m.queue_m] (Eq. 2); ICL a->b on [q_a.k_b, q_a.queue_b] (Eq. 5); the soft
terms are the KL between those (1+K)-way distributions (Eq. 8-9). Keys are all-gathered before they enter a queue.
Not offered: MoCo's shuffled BatchNorm across GPUs (each process's key encoder normalises its own batch).

Options (``strategy:``): ``form``, ``mining``, ``alpha`` (0.1), ``beta`` (1), ``tau`` (0.1 CIFAR, 0.07 ImageNet and
MoCo), ``soft_temperature`` (3), ``embed_dim`` (128), ``soft_anchor_column`` (drop), ``embed_hidden_dim`` (128; null = the backbone width,
MoCo v2's head), ``terms`` (subset of vcl/icl/soft_vcl/soft_icl, MCL Table 6), ``memory: {momentum, negatives}``,
``moco: {queue_size, momentum}``. Evaluation: supervised form, test top-1 of every member and the ensemble;
MoCo form, k-NN and linear probe of each query encoder's backbone.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, Subset

from sslkd.data.sampling import ClassAwareSampler, dataset_labels
from sslkd.data.transforms import SimCLRTransform
from sslkd.core.distributed import all_gather_no_grad, all_gather_with_grad, rank
from sslkd.errors import UserError
from sslkd.losses.mcl import (
    TERMS,
    ContrastiveLogits,
    batch_contrastive_logits,
    mcl_loss,
    memory_contrast,
)
from sslkd.losses.precision import loss_precision
from sslkd.models.memory import ClassIndex, FeatureQueue, MemoryBank
from sslkd.models.teacher import EMATeacher
from sslkd.registry import STRATEGIES
from sslkd.strategies.base import Strategy
from sslkd.strategies.supervised import SupervisedCohort


@dataclass
class MemoryOptions:
    momentum: float = 0.5
    negatives: int = 8192


@dataclass
class MoCoOptions:
    queue_size: int = 65536
    momentum: float = 0.999


@dataclass
class MCLOptions:
    form: Literal["supervised", "moco"] = "supervised"
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
    moco: MoCoOptions = field(default_factory=MoCoOptions)


def check_terms(terms: list[str]) -> None:
    unknown = sorted(set(terms) - set(TERMS))
    if unknown:
        raise UserError(f"strategy.terms has unknown MCL terms {unknown}; choose from {', '.join(TERMS)}")


def check_soft_anchor_column(soft_anchor_column: str, mining: str, form: str = "supervised") -> None:
    """Only batch-based mining contrasts an anchor with its own batch, so only there is an anchor column to keep."""
    if soft_anchor_column == "keep" and (mining != "batch" or form != "supervised"):
        raise UserError("strategy.soft_anchor_column=keep applies to batch-based mining only (memory banks and MoCo "
                        "queues never hold the anchor's own column): drop the option or set it to drop")


class Projection(nn.Sequential):
    """zeta: Linear(d, hidden)-ReLU-Linear(hidden, dim) (MCL Sec. 3.1); the caller L2-normalises its output."""

    def __init__(self, in_dim: int, dim: int = 128, hidden_dim: int | None = 128):
        hidden = hidden_dim or in_dim
        super().__init__(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dim))


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

        def build(a: str, b: str) -> tuple[torch.Tensor, torch.Tensor]:
            return memory_contrast(embeddings[a], positives[b], negatives[b], self.tau)

        pairs = [(a, b) for a in self.names for b in self.names if a != b]
        own = {m: build(m, m) for m in self.names}
        cross = {(a, b): build(a, b)[0] for a, b in pairs}
        return ContrastiveLogits({m: v[0] for m, v in own.items()}, cross, own[self.names[0]][1])

    def bank_write(self, embeddings: dict[str, torch.Tensor], indices: torch.Tensor) -> Callable[[], None] | None:
        """Memory-based mining: this step's embeddings of every process, gathered now, as an update that writes
        them at their items' indices (MCL Alg. 2) once the step is accepted (``Strategy.defer``)."""
        if self.banks is None:
            return None
        all_indices = all_gather_no_grad(indices)
        gathered = {m: all_gather_no_grad(v.detach()) for m, v in embeddings.items()}

        def write() -> None:
            for m, v in gathered.items():
                self.banks[m].update(all_indices, v, self.memory.momentum)

        return write


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


@STRATEGIES.register("mcl")
class MCL(SupervisedCohort):
    name = "mcl"
    Options = MCLOptions

    def __init__(self, cfg, info):
        super().__init__(cfg, info)
        opts = self.options
        self.require_members(2)
        check_terms(opts.terms)
        check_soft_anchor_column(opts.soft_anchor_column, opts.mining, opts.form)
        if opts.form == "moco" and opts.mining == "memory":
            raise UserError("strategy.form=moco mines its negatives from each member's MoCo queue: "
                            "drop strategy.mining=memory (or set it to batch)")
        self.has_classifiers = opts.form == "supervised"
        self.build_members()
        names = list(self.members)
        if opts.form == "moco":
            self.key_encoders = nn.ModuleDict({
                name: EMATeacher(member.student, copy.deepcopy(member.student)) for name, member in self.members.items()
            })
            self.queues = nn.ModuleDict({name: FeatureQueue(opts.moco.queue_size, opts.embed_dim) for name in names})
        else:
            self.contrast = CohortContrast(names, opts.embed_dim, opts.mining, opts.tau, opts.memory,
                                           opts.soft_anchor_column)

    def member_heads(self, name, backbone):
        opts = self.options
        heads = {"embed": Projection(backbone.num_features, opts.embed_dim, opts.embed_hidden_dim)}
        if opts.form == "supervised":
            heads.update(super().member_heads(name, backbone))
        return heads

    def train_transform(self):
        if self.options.form == "supervised":
            return super().train_transform()
        size, _ = self.crop_sizes()
        # MoCo v2's views: crop (0.2, 1), jitter (0.4, 0.4, 0.4, 0.1) p=0.8, grayscale 0.2, blur p=0.5, flip
        return SimCLRTransform(size, scale=(0.2, 1.0), jitter=(0.4, 0.4, 0.4, 0.1), blur_p=0.5,
                               mean=self.info.mean, std=self.info.std)

    def train_sampler(self, dataset, batch_size, seed, rank, world_size):
        if self.options.form == "moco":
            return super().train_sampler(dataset, batch_size, seed, rank, world_size)
        return mining_sampler(self, [self.contrast], self.options.mining, dataset, batch_size, seed, rank, world_size)

    def embed(self, student: nn.ModuleDict, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pooled feature phi(x), v = normalise(zeta(phi(x)))) (MCL Sec. 3.1)."""
        feature = student["backbone"](images)
        return feature, F.normalize(loss_precision(student["embed"](feature)), dim=1)

    def network_outputs(self, views):
        """Supervised form: {"logits": {m: z_m}, "embeddings": {m: v_m}} on the one view. MoCo form:
        {"queries": {m: q_m}} from view 1 and {"keys": {m: k_m}} from view 2 (key encoders, no gradient)."""
        if self.options.form == "supervised":
            logits, embeddings = {}, {}
            for name, member in self.members.items():
                feature, embeddings[name] = self.embed(member.student, views[0])
                logits[name] = member.student["classifier"](feature)
            return {"logits": logits, "embeddings": embeddings}
        queries, keys = {}, {}
        for name, member in self.members.items():
            queries[name] = self.embed(member.student, views[0])[1]
            with torch.no_grad():
                keys[name] = self.embed(self.key_encoders[name].module, views[1])[1]
        return {"queries": queries, "keys": keys}

    def losses(self, outputs, labels, indices, step):
        return self._moco_losses(outputs) if self.options.form == "moco" else self._supervised_losses(outputs, labels, indices)

    def _supervised_losses(self, outputs, labels, indices):
        """sum_m CE(z_m, y) + MCL Eq. (10); the bank write (memory-based mining) waits for the accepted step."""
        opts = self.options
        embeddings = outputs["embeddings"]
        losses = {f"{name}/ce": F.cross_entropy(loss_precision(z), labels) for name, z in outputs["logits"].items()}
        mcl = mcl_loss(self.contrast.logits(embeddings, labels, indices), opts.alpha, opts.beta,
                       opts.soft_temperature, tuple(opts.terms))
        write = self.contrast.bank_write(embeddings, indices)
        if write is not None:
            self.defer(write)
        losses.update({term: value for term, value in mcl.items() if term != "loss"})
        losses["mcl"] = mcl["loss"]
        losses["loss"] = sum(losses[f"{name}/ce"] for name in self.members) + mcl["loss"]
        return losses

    def _moco_losses(self, outputs):
        """MCL Eq. (10) over each member's MoCo distributions; the keys enter the queues once the step is accepted."""
        opts = self.options
        queries, keys = outputs["queries"], outputs["keys"]
        queues = {name: self.queues[name].snapshot() for name in self.members}

        def build(a: str, b: str) -> tuple[torch.Tensor, torch.Tensor]:
            return memory_contrast(queries[a], keys[b], queues[b], opts.tau)

        names = list(self.members)
        own = {m: build(m, m) for m in names}
        cross = {(a, b): build(a, b)[0] for a in names for b in names if a != b}
        mcl = mcl_loss(ContrastiveLogits({m: v[0] for m, v in own.items()}, cross, own[names[0]][1]),
                       opts.alpha, opts.beta, opts.soft_temperature, tuple(opts.terms))
        for name in names:
            self.defer(partial(self.queues[name].enqueue, all_gather_no_grad(keys[name])))
        losses = {term: value for term, value in mcl.items() if term != "loss"}
        losses["loss"] = mcl["loss"]
        return losses

    @torch.no_grad()
    def after_step(self, step):
        """MoCo: key encoder = m * key encoder + (1 - m) * query encoder, constant m (MoCo v2)."""
        if self.options.form == "moco":
            for name, member in self.members.items():
                self.key_encoders[name].update(member.student, self.options.moco.momentum)
