"""Models: backbones (timm + CIFAR networks), heads and EMA teachers; importing this fills the registries."""

from sslkd.models import backbones, cifar_resnet, heads, memory, shufflenet, teacher

__all__ = ["backbones", "cifar_resnet", "heads", "memory", "shufflenet", "teacher"]
