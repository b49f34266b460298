"""The working precision of every loss: half precision (float16, bfloat16) is promoted to float32 for a stable
softmax and log, anything else (float32, float64) is kept, so a float64 check of a loss stays float64 end to end."""

from __future__ import annotations

import torch

HALF_PRECISION = (torch.float16, torch.bfloat16)


def loss_precision(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` in float32 if it is half precision, else unchanged (float32 and float64 stay as they are)."""
    return tensor.float() if tensor.dtype in HALF_PRECISION else tensor
