"""``sslkd export``: one member's evaluated backbone (the EMA teacher's, where there is one) as safetensors,
in timm's own key layout so ``timm.create_model(..., pretrained=True, pretrained_cfg_overlay=...)`` loads it."""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import save

from sslkd.core.checkpoint import atomic_write
from sslkd.errors import UserError


def export_backbone(checkpoint: str | Path, member: str | None, out: str | Path) -> str:
    """Write the backbone weights to ``out``; return the Python line that loads them."""
    from sslkd.eval.protocol import strategy_from_checkpoint

    strategy, _ = strategy_from_checkpoint(checkpoint)
    names = list(strategy.members)
    if member is None:
        if len(names) > 1:
            raise UserError(f"the checkpoint has several members ({', '.join(names)}); choose one with --member")
        member = names[0]
    if member not in strategy.members:
        raise UserError(f"checkpoint has no member {member!r}; its members are {', '.join(names)}")
    member_cfg = strategy.members[member].cfg
    backbone = strategy.eval_backbones()[member]
    model = getattr(backbone, "model", backbone)
    tensors = {key: value.detach().contiguous().cpu() for key, value in model.state_dict().items()}
    out = Path(out)
    atomic_write(out, lambda handle: handle.write(save(tensors, metadata={"sslkd_backbone": member_cfg.backbone})))
    kwargs = "".join(f", {k}={v!r}" for k, v in member_cfg.backbone_args.items())
    if model is backbone or member_cfg.small_image_stem:
        return (
            f"wrote {out} ({len(tensors)} tensors; {member_cfg.backbone}"
            f"{' with the small-image stem' if member_cfg.small_image_stem else ''} is not a stock timm model): "
            f"load with sslkd.models.backbones.build_backbone({member_cfg.backbone!r}"
            f"{', small_image_stem=True' if member_cfg.small_image_stem else ''}{kwargs})"
            f".{'model.' if model is not backbone else ''}load_state_dict(safetensors.torch.load_file({str(out)!r}))"
        )
    return (
        f"wrote {out} ({len(tensors)} tensors): timm.create_model({member_cfg.backbone!r}, pretrained=True, "
        f"pretrained_cfg_overlay=dict(file={str(out)!r}, num_classes=0){kwargs})"
    )
