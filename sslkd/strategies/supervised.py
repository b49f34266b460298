"""Supervised training, the "Baseline" of MCL Tables 1-3: every member learns alone with the cross-entropy.

Each member is a classification network f = g(phi(x)): the backbone phi and a linear classifier g (MCL Sec. 3.1).
Views: one augmented view per image, the same tensor for every member (MCL code), with the CIFAR recipe (pad-4
random crop + flip) for small images and RandomResizedCrop + flip for ImageNet-size ones (``SupervisedTransform``).
At the end of training every member's test top-1 (and the cohort ensemble's) goes into summary.json.

``SupervisedCohort`` is the skeleton the supervised online-KD strategies share (``dml``, ``mcl``, ``lmcl``):
classifier heads, the view transform and the classifier outputs ``sslkd eval classify`` reads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sslkd.data.transforms import SupervisedTransform
from sslkd.losses.precision import loss_precision
from sslkd.registry import STRATEGIES
from sslkd.strategies.base import Strategy


class SupervisedCohort(Strategy):
    """Members with a linear classifier on the pooled feature; subclasses add their heads and losses."""

    has_classifiers = True

    def member_heads(self, name: str, backbone: nn.Module) -> dict[str, nn.Module]:
        return {"classifier": nn.Linear(backbone.num_features, self.info.num_classes)}

    def build_members(self) -> None:
        self.add_members(lambda name, backbone, rate: self.member_heads(name, backbone), ema_teacher=False)

    def train_transform(self) -> SupervisedTransform:
        size, _ = self.crop_sizes()
        return SupervisedTransform(size, mean=self.info.mean, std=self.info.std)

    def logits(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each member's class logits z = g(phi(x)) on one batch (the training graph)."""
        return {name: m.student["classifier"](m.backbone(images)) for name, m in self.members.items()}

    @torch.no_grad()
    def classifier_logits(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The kept network's logits per member (inference graph: backbone + final classifier, no auxiliary parts)."""
        return self.logits(images)

    def network_outputs(self, views):
        """{"logits": {m: z_m}}: every member's class logits on the one view (the same tensor for every member)."""
        return {"logits": self.logits(views[0])}


@STRATEGIES.register("supervised")
class Supervised(SupervisedCohort):
    """L = sum_m CE(f_m(x), y): independent training of one or more members."""

    name = "supervised"

    def __init__(self, cfg, info):
        super().__init__(cfg, info)
        self.build_members()

    def losses(self, outputs, labels, indices, step):
        losses = {f"{name}/loss": F.cross_entropy(loss_precision(z), labels) for name, z in outputs["logits"].items()}
        losses["loss"] = sum(losses.values())
        return losses
