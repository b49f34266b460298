"""SDSSL: Self-Distilled Self-Supervised Representation Learning (Jang et al., WACV 2023), on top of SimCLR,
BYOL or MoCo v3 (``base``). Every intermediate layer of one network learns to predict the final representation.

Per member (a cohort of one in the paper): the backbone's pooled output of every chosen block (ViT: the CLS token
after each block passed through the shared final norm; ResNet: the global average pool of each residual block's
output, Sec. 4.6), one projector per layer and, where the base has predictors (BYOL, MoCo v3), one predictor per
layer. The EMA teacher holds the backbone and the final projector only (Sec. 4.1). With views x1, x2, layer-l
projections h_l, predictions q_l (= h_l without predictors) and the teacher's final projections z_L (SimCLR: the
student's own), summed over the two directions (x1 -> x2 and x2 -> x1):

    L_isd  = 1/(L-1) sum_{l<L} L_ssl(q_l, sg(z_L))                                               (Eq. 3)
    L_pred = sum_{l<=L} L_ssl(pred_l(sg(h_l)), sg(z_L))      (only the predictors learn from it)  (Eq. 5)
    L      = L_ssl(q_L, z_L) + alpha(t) L_isd + beta L_pred                                       (Eq. 4, 6)

L_ssl is the base's: 2 - 2 cos (BYOL, Eq. 1) or the InfoNCE ``2 tau CE`` of Algorithm 1 (MoCo v3 and SimCLR,
Eq. 2; keys gathered over processes). SimCLR has no teacher: its final term contrasts the student's two views with
gradients on both, and the intermediate layers contrast against the student's own detached final projections.
With ``simclr_loss: nt_xent`` SimCLR's terms are the SDSSL code's (``pl_train_simclr``): the final term is NT-Xent
over the 2N rows of both views (each row against the other 2N - 1, tau 0.2, mean over the 2N rows, no 2 tau factor,
no sum over directions), and L_isd is the mean over layers of the same NT-Xent of [q_l(x1); q_l(x2)] against the
detached [z_L(x1); z_L(x2)] (``nt_xent_to_targets``).
alpha(t) rises from 0 to ``alpha`` on a cosine over training, per iteration (Sec. 4.1, Table 5 "ratio anneal").
Algorithm 1 weights L_pred by L after averaging it over the L layers' rows, which is Eq. 5's sum (no option needed).

Heads (Sec. 4.1, ``byol.MLPHead``): 3-layer projectors, hidden 4096 for the final one and 2048 for the
intermediate ones; 2-layer predictors, hidden 4096; outputs 256, with an affine-free BatchNorm on every output layer
except BYOL's. Views: BYOL's asymmetric pair (``byol.byol_views``).

With ``layers: []`` and ``beta: 0`` this is exactly the base (``byol``, ``mocov3``, or SDSSL's SimCLR, for which
beta does not apply); SDSSL Table 1's SimCLR row is that run, since the ``simclr`` strategy is DoGo's SimCLR
(2-layer projector, NT-Xent at tau 0.5).

Options (``strategy:``), defaults from the paper; the paper-reproduction configs set the authors' code choices:
- ``base: simclr | byol | mocov3`` (default mocov3, Algorithm 1).
- ``layers``: the intermediate layers distilled: ``all`` (every block before the last) or a list of 1-based layer
  numbers and/or block names (``sslkd list`` backbones expose ``intermediate_names``; e.g. the last block of each
  ResNet stage, Sec. 4.6). ``layer_stride`` n keeps every n-th layer of ``all`` (Table 6's MLP/n).
- ``alpha`` (final weight of L_isd; paper 1.0, code 0.8 for SimCLR and BYOL), ``alpha_schedule: cosine | constant``
  (Table 5 "-ratio anneal"), ``beta`` (weight of L_pred, 1; 0 is Table 5's "-pred loss").
- ``temperature`` (tau of InfoNCE, 0.2), ``out_dim``, ``proj_hidden_dim``, ``layer_proj_hidden_dim``,
  ``layer_proj_layers`` (3; Table 6's 2L-MLP is 2), ``pred_hidden_dim``, ``last_bn`` (default: the base's),
  ``momentum_teacher`` (0.996).
- ``simclr_loss: info_nce | nt_xent`` (SimCLR base only; default info_nce, Algorithm 1's form; nt_xent is the code's).
- ``concat_views`` (False): one backbone pass over both views concatenated, batch-norm statistics over 2N (the
  code's SimCLR), instead of one pass per view (the code's MoCo v3 and BYOL). Without it, a backbone that
  computes each image alone (a ViT without drop-path) still takes both views in one pass, and the heads take them
  stacked with batch-norm statistics per view: what one pass per view computes, in fewer, larger operations.
ViT details of the code are backbone options (``members.<m>.backbone_args``): ``freeze_patch_embed: true`` (a fixed
random patch projection) and ``pos_embed: sincos`` (fixed 2-D sine-cosine position embeddings), Sec. 4.1.

Evaluation: the EMA teacher (``eval.encoder: auto``), as the code's k-NN does; SimCLR has only the student.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch
from torch import nn

from sslkd.errors import UserError
from sslkd.losses.contrastive import nt_xent
from sslkd.losses.sdssl import byol_loss, info_nce, isd_loss, nt_xent_to_targets, pred_loss
from sslkd.models.backbones import computes_each_image_alone
from sslkd.registry import STRATEGIES
from sslkd.strategies.base import Strategy
from sslkd.strategies.byol import BYOLOptions, MLPHead, byol_views, view_passes
from sslkd.strategies.layerwise import alpha_at, block_key, layer_dims, select_layers
from sslkd.strategies.mocov3 import MoCoV3Options


@dataclass
class SDSSLOptions:
    base: Literal["simclr", "byol", "mocov3"] = "mocov3"
    layers: Literal["all"] | list[int | str] = "all"
    layer_stride: int = 1
    alpha: float = 1.0
    alpha_schedule: Literal["cosine", "constant"] = "cosine"
    beta: float = 1.0
    temperature: float = 0.2
    out_dim: int = 256
    proj_hidden_dim: int = 4096
    layer_proj_hidden_dim: int = 2048
    layer_proj_layers: int = 3
    pred_hidden_dim: int = 4096
    last_bn: bool | None = None
    momentum_teacher: float = 0.996
    simclr_loss: Literal["info_nce", "nt_xent"] = "info_nce"
    concat_views: bool = False


@dataclass
class LayerOutputs:
    """One member's outputs on one view: final projection h_L and prediction q_L, the intermediate layers' h_l and
    q_l (in ``SDSSL.layer_names`` order); q is h where the base has no predictor."""

    h_final: torch.Tensor
    q_final: torch.Tensor
    h_layers: list[torch.Tensor]
    q_layers: list[torch.Tensor]

    def split(self, sizes: list[int]) -> list[LayerOutputs]:
        """The outputs of a pass over concatenated views, as one ``LayerOutputs`` per view of ``sizes`` rows."""
        h_final, q_final = self.h_final.split(sizes), self.q_final.split(sizes)
        h_layers, q_layers = [h.split(sizes) for h in self.h_layers], [q.split(sizes) for q in self.q_layers]
        return [LayerOutputs(h_final[v], q_final[v], [h[v] for h in h_layers], [q[v] for q in q_layers])
                for v in range(len(sizes))]


@dataclass
class SDSSLOutputs:
    """One member's head outputs on the two views: ``student`` per view, and the targets z_L per view (the EMA
    teacher's final projections, without gradient; SimCLR: the student's own h_L, with gradient)."""

    student: list[LayerOutputs]
    targets: list[torch.Tensor]


@STRATEGIES.register("sdssl")
class SDSSL(Strategy):
    """One cohort of SDSSL members; the EMA teacher follows the backbone and the final projector (Sec. 4.1)."""

    name = "sdssl"
    Options = SDSSLOptions

    def __init__(self, cfg, info):
        super().__init__(cfg, info)
        self.build_members()

    def train_transform(self):
        return byol_views(self)

    def after_step(self, step):
        self.update_teachers(step, self.options.momentum_teacher)

    def build_members(self) -> None:
        opts = self.options
        self.has_predictor = self.has_teacher = opts.base != "simclr"
        if opts.simclr_loss != "info_nce" and opts.base != "simclr":
            raise UserError(f"strategy.simclr_loss={opts.simclr_loss} applies to base: simclr, and base is "
                            f"{opts.base}; remove simclr_loss or set strategy.base=simclr")
        if opts.last_bn is None:
            opts.last_bn = BYOLOptions.last_bn if opts.base == "byol" else MoCoV3Options.last_bn
        size, _ = self.crop_sizes()

        def heads(name: str, backbone: nn.Module, drop_path_rate: float) -> dict[str, nn.Module]:
            layers = select_layers(backbone.intermediate_names(), opts.layers, opts.layer_stride)
            dims = layer_dims(backbone, layers, size)
            modules: dict[str, nn.Module] = {
                "projector": MLPHead(3, backbone.num_features, opts.out_dim, opts.proj_hidden_dim, opts.last_bn),
                "layer_projectors": nn.ModuleDict({
                    block_key(n): MLPHead(opts.layer_proj_layers, dims[n], opts.out_dim, opts.layer_proj_hidden_dim,
                                     opts.last_bn) for n in layers}),
            }
            if self.has_predictor:
                modules["predictor"] = MLPHead(2, opts.out_dim, opts.out_dim, opts.pred_hidden_dim, opts.last_bn)
                modules["layer_predictors"] = nn.ModuleDict({
                    block_key(n): MLPHead(2, opts.out_dim, opts.out_dim, opts.pred_hidden_dim, opts.last_bn)
                    for n in layers})
            return modules

        self.add_members(heads, ema_teacher=["backbone", "projector"] if self.has_teacher else False)
        self.layer_names: dict[str, list[str]] = {}
        self.final_names: dict[str, str] = {}
        self.views_in_one_pass: dict[str, tuple[bool, bool]] = {}
        for name, member in self.members.items():
            names = member.backbone.intermediate_names()
            self.layer_names[name] = select_layers(names, opts.layers, opts.layer_stride)
            self.final_names[name] = names[-1]
            teacher = member.teacher.module["backbone"] if member.teacher is not None else None
            self.views_in_one_pass[name] = (computes_each_image_alone(member.student["backbone"]),
                                            teacher is not None and computes_each_image_alone(teacher))

    def base_loss(self, q: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """L_ssl(q, sg(z)) of the base, one direction: BYOL's Eq. 1, else the InfoNCE of Eq. 2."""
        if self.options.base == "byol":
            return byol_loss(q, z)
        return info_nce(q, z, self.options.temperature)

    def embed(self, name: str, view: torch.Tensor) -> LayerOutputs:
        """The student's projections and predictions of every distilled layer and the final one, in one pass."""
        student = self.members[name].student
        layers, final = self.layer_names[name], self.final_names[name]
        return self.heads(name, student["backbone"].forward_intermediates(view, layers + [final]), [view.shape[0]])

    def heads(self, name: str, pooled: dict[str, torch.Tensor], sizes: list[int]) -> LayerOutputs:
        """The student's projections and predictions from its blocks' pooled features of views stacked in ``sizes``
        rows each, every batch norm over one view's rows (``MLPHead.forward_views``)."""
        student = self.members[name].student
        layers, final = self.layer_names[name], self.final_names[name]
        h_final = student["projector"].forward_views(pooled[final], sizes)
        h_layers = [student["layer_projectors"][block_key(n)].forward_views(pooled[n], sizes) for n in layers]
        if not self.has_predictor:
            return LayerOutputs(h_final, h_final, h_layers, h_layers)
        q_layers = [student["layer_predictors"][block_key(n)].forward_views(h, sizes) for n, h in zip(layers, h_layers)]
        return LayerOutputs(h_final, student["predictor"].forward_views(h_final, sizes), h_layers, q_layers)

    def embed_views(self, name: str, views: list[torch.Tensor]) -> list[LayerOutputs]:
        """``embed`` of each view: one pass per view, or one over the views concatenated (``concat_views``, the
        SDSSL code's SimCLR: batch-norm statistics over 2N), split back per view. Without ``concat_views`` the
        heads still take the views stacked, each batch norm over one view's N rows (``MLPHead.forward_views``),
        and so does a backbone that computes each image alone (a ViT): the same outputs in fewer, larger
        operations."""
        if self.options.concat_views:
            return self.embed(name, torch.cat(views)).split([view.shape[0] for view in views])
        backbone = self.members[name].student["backbone"]
        names = self.layer_names[name] + [self.final_names[name]]
        sizes = [view.shape[0] for view in views]
        if self.views_in_one_pass[name][0]:
            pooled = backbone.forward_intermediates(torch.cat(views), names)
        else:
            per_view = [backbone.forward_intermediates(view, names) for view in views]
            pooled = {n: torch.cat([features[n] for features in per_view]) for n in names}
        return self.heads(name, pooled, sizes).split(sizes)

    def targets(self, name: str, views: list[torch.Tensor], outputs: list[LayerOutputs]) -> list[torch.Tensor]:
        """z_L of each view: the EMA teacher's final projection (no gradient), or SimCLR's own h_L; the views go
        through the teacher as through the student (``embed_views``)."""
        if not self.has_teacher:
            return [out.h_final for out in outputs]
        teacher = self.members[name].teacher.module
        with torch.no_grad():
            if self.options.concat_views:
                return view_passes(lambda x: teacher["projector"](teacher["backbone"](x)), views, concat=True)
            sizes = [view.shape[0] for view in views]
            features = view_passes(teacher["backbone"], views, concat=self.views_in_one_pass[name][1])
            return list(teacher["projector"].forward_views(torch.cat(features), sizes).split(sizes))

    def predictors(self, name: str) -> list[nn.Module]:
        """pred_l of every distilled layer, then the final predictor (Eq. 5 sums over l = 1..L)."""
        student = self.members[name].student
        return [student["layer_predictors"][block_key(n)] for n in self.layer_names[name]] + [student["predictor"]]

    def network_outputs(self, views) -> dict[str, SDSSLOutputs]:
        """Per member: the student's layer outputs on both views and the targets z_L of both views."""
        outputs = {}
        for name in self.members:
            student = self.embed_views(name, views[:2])
            outputs[name] = SDSSLOutputs(student, self.targets(name, views[:2], student))
        return outputs

    def losses(self, outputs: dict[str, SDSSLOutputs], labels, indices, step) -> dict[str, torch.Tensor]:
        """Per member ``<m>/ssl``, ``<m>/isd`` (with distilled layers), ``<m>/pred`` (with predictors) and
        ``<m>/loss`` = ssl + alpha(step) isd + beta pred (Eq. 4, 6); ``loss``: the sum over members."""
        losses: dict[str, torch.Tensor] = {}
        for name, out in outputs.items():
            losses.update(self.member_losses(name, out, step))
        losses["loss"] = sum(losses[f"{name}/loss"] for name in outputs)
        return losses

    def schedule_values(self, step) -> dict[str, float]:
        """alpha(t), the weight of L_isd at ``step`` (Eq. 4, the cosine ramp), logged with the lr."""
        return {"alpha": alpha_at(step.step, step.total_steps, self.options.alpha, self.options.alpha_schedule)}

    def member_losses(self, name: str, out: SDSSLOutputs, step) -> dict[str, torch.Tensor]:
        """One member's terms (Eq. 3-6): L_ssl and L_isd summed over both directions (or, with ``simclr_loss:
        nt_xent``, NT-Xent over both views' 2N rows), L_pred summed over layers and directions."""
        opts = self.options
        student, z = out.student, out.targets
        directions = ((0, 1), (1, 0))
        if opts.base == "simclr" and opts.simclr_loss == "nt_xent":
            ssl = nt_xent(student[0].h_final, student[1].h_final, opts.temperature)
        elif opts.base == "simclr":
            ssl = sum(info_nce(student[a].q_final, z[b], opts.temperature, detach_keys=False) for a, b in directions)
        else:
            ssl = sum(self.base_loss(student[a].q_final, z[b]) for a, b in directions)
        losses = {f"{name}/ssl": ssl}
        total = ssl
        if self.layer_names[name]:
            if opts.base == "simclr" and opts.simclr_loss == "nt_xent":
                both_views = [torch.cat([q1, q2]) for q1, q2 in zip(student[0].q_layers, student[1].q_layers)]
                isd = isd_loss(both_views, torch.cat(z), partial(nt_xent_to_targets, temperature=opts.temperature))
            else:
                isd = sum(isd_loss(student[a].q_layers, z[b], self.base_loss) for a, b in directions)
            losses[f"{name}/isd"] = isd
            total = total + self.schedule_values(step)["alpha"] * isd
        if self.has_predictor:
            pred = sum(pred_loss(self.predictors(name), student[a].h_layers + [student[a].h_final], z[b],
                                 self.base_loss) for a, b in directions)
            losses[f"{name}/pred"] = pred
            total = total + opts.beta * pred
        losses[f"{name}/loss"] = total
        return losses
