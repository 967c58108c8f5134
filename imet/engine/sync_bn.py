"""Batch statistics over all ranks (`--sync-bn` under torchrun): torch's SyncBatchNorm on
CUDA, a gloo equivalent on CPU."""
from __future__ import annotations

import torch
import torch.distributed as tdist
from torch.nn.modules.batchnorm import _BatchNorm


def convert_sync_batchnorm(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Every BatchNorm of `model` synchronized over the ranks. Same Parameter objects and
    state_dict keys: the optimizer groups and checkpoints stay as they are, and a single process
    loads them into plain BatchNorm."""
    if device.type == "cuda":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for module in model.modules():
        if isinstance(module, _BatchNorm):
            # In place: parameters, buffers and state_dict keys stay as they are.
            module.__class__ = GlooSyncBatchNorm
    return model


class _SumOverRanks(torch.autograd.Function):
    """all_reduce(SUM) with its gradient: every rank's output depends on every rank's input, so
    the gradient of an input is the sum of the output gradients of all ranks. (torch's
    torch.distributed.nn.functional.all_reduce does this but is deprecated since 2.x.)"""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone()
        tdist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        total = grad.clone()
        tdist.all_reduce(total)
        return total


class GlooSyncBatchNorm(_BatchNorm):
    """SyncBatchNorm for CPU processes (gloo). torch's SyncBatchNorm runs on GPUs only (its
    kernels batch_norm_stats & co. are CUDA-only), so on CPU the batch statistics are computed
    here: one differentiable all_reduce of the per-channel sums, sums of squares and counts
    (its backward sums the gradients over the ranks, as torch's own does). Used by CPU clusters
    and by the tests that compare a 2-process run with a 1-process one. Not a SyncBatchNorm
    subclass: DDP refuses those on CPU."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and input.device.type == "cpu" and tdist.is_initialized()):
            return super().forward(input)
        dims = [d for d in range(input.dim()) if d != 1]
        count = torch.full((1,), input.numel() / input.shape[1], dtype=input.dtype)
        totals = _SumOverRanks.apply(torch.cat([input.sum(dims), (input * input).sum(dims), count]))
        channels = input.shape[1]
        n = totals[-1]
        mean = totals[:channels] / n
        var = totals[channels:2 * channels] / n - mean * mean
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                momentum = (self.momentum if self.momentum is not None
                            else 1.0 / float(self.num_batches_tracked))
                unbiased = var * (n / (n - 1).clamp(min=1))
                self.running_mean.lerp_(mean.detach(), momentum)
                self.running_var.lerp_(unbiased.detach(), momentum)
        shape = [1, channels] + [1] * (input.dim() - 2)
        out = (input - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out
