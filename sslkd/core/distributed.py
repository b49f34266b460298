"""torch.distributed helpers; every function is the identity (or a no-op) in a single process.

sslkd runs one process per device under ``torchrun``; ``train.batch_size`` is the batch of one process (DINO's
``batch_size_per_gpu``), so W processes of batch B train on a global batch of W x B. Gradients are averaged over
processes after each backward (``average_gradients``), batch-norm statistics can be taken over the global batch
(``convert_sync_batchnorm``), and contrastive losses gather their negatives with ``all_gather_with_grad``: with
these, W processes of batch B compute what one process of batch W x B computes.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main_process() -> bool:
    return rank() == 0


def init_from_env(device: str = "auto") -> bool:
    """Join the process group that ``torchrun`` describes in the environment (WORLD_SIZE, RANK, MASTER_ADDR, ...);
    nccl when training on GPUs, gloo on CPUs. Returns whether the run is distributed."""
    if is_distributed():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if use_cuda and torch.cuda.is_available():
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend="nccl" if use_cuda and torch.cuda.is_available() else "gloo", init_method="env://")
    return True


def shutdown() -> None:
    if is_distributed():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def broadcast_object(obj):
    """Rank 0's ``obj`` on every process (e.g. the run directory, whose default name holds a time stamp)."""
    if not is_distributed():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def all_gather_object(obj) -> list:
    """Every process's ``obj``, in rank order (e.g. each process's RNG state for a checkpoint)."""
    if not is_distributed():
        return [obj]
    gathered = [None] * world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


@torch.no_grad()
def broadcast_state(module: nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every process, so all replicas start identical."""
    if not is_distributed():
        return
    for tensor in module.state_dict().values():
        dist.broadcast(tensor, src=0)


@torch.no_grad()
def average_gradients(params: list[torch.Tensor]) -> None:
    """Replace every gradient by its mean over processes (one flat all-reduce), as DDP does after backward: with
    per-process losses that are means over the local batch, the result is the gradient of the global batch mean."""
    if not is_distributed():
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world_size()
    offset = 0
    for grad in grads:
        grad.copy_(flat[offset:offset + grad.numel()].view_as(grad))
        offset += grad.numel()


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean of ``tensor`` over processes (no autograd), e.g. for DINO centers."""
    if not is_distributed():
        return tensor
    tensor = tensor.clone()
    dist.all_reduce(tensor)
    return tensor / world_size()


class _AllGather(torch.autograd.Function):
    """Concatenation of every process's tensor; backward sums the gradients every process computed for this
    process's slice (each process's loss uses every slice)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        gathered = [torch.empty_like(tensor) for _ in range(world_size())]
        dist.all_gather(gathered, tensor.contiguous())
        ctx.rows = tensor.shape[0]
        return torch.cat(gathered)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[rank() * ctx.rows:(rank() + 1) * ctx.rows]


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes; backward sums the gradients of every process's copy of the result."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.clone()
        dist.all_reduce(tensor)
        return tensor

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` of every process concatenated along dim 0 (rank order, equal sizes), with gradients flowing
    back to each process's own slice, as contrastive losses need for negatives from the whole global batch."""
    if not is_distributed():
        return tensor
    return _AllGather.apply(tensor)


@torch.no_grad()
def all_gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` of every process concatenated along dim 0 (rank order), e.g. keys before they enter a queue."""
    if not is_distributed():
        return tensor
    gathered = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(gathered, tensor.contiguous())
    return torch.cat(gathered)


def _all_reduce_sum_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    return _AllReduceSum.apply(tensor)


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm whose training statistics are the mean and variance over the global batch of every process,
    differentiable through the all-reduce; for CPUs (gloo), where ``nn.SyncBatchNorm`` refuses to run. Same
    parameters, buffers and state-dict keys as the BatchNorm it replaces; eval mode uses the running statistics."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_distributed()):
            return super().forward(input)
        dims = [d for d in range(input.dim()) if d != 1]
        local_count = torch.tensor([float(input.numel() // input.shape[1])], device=input.device)
        count = _all_reduce_sum_with_grad(local_count).detach()
        mean = _all_reduce_sum_with_grad(input.sum(dim=dims)) / count
        shape = [1, -1] + [1] * (input.dim() - 2)
        centred = input - mean.view(shape)
        var = _all_reduce_sum_with_grad(centred.square().sum(dim=dims)) / count
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
            with torch.no_grad():
                self.running_mean.lerp_(mean.detach(), factor)
                self.running_var.lerp_(var.detach() * count / (count - 1).clamp_min(1), factor)
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm of ``module`` normalised over the global batch: ``nn.SyncBatchNorm`` on GPUs, and
    ``GlobalBatchNorm`` elsewhere. Parameters are kept (the same objects), so optimisers and EMA teachers built
    before or after see the same tensors."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _convert_to_global(module)


def _convert_to_global(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlobalBatchNorm):
        converted = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                    module.track_running_stats)
        if module.affine:
            converted.weight, converted.bias = module.weight, module.bias
        if module.track_running_stats:
            converted.running_mean, converted.running_var = module.running_mean, module.running_var
            converted.num_batches_tracked = module.num_batches_tracked
        converted.train(module.training)
        return converted
    for name, child in module.named_children():
        module.add_module(name, _convert_to_global(child))
    return module
