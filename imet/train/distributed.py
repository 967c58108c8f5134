"""Multi-process training with torch.distributed (`torchrun --nproc_per_node N -m imet train`).

The loop talks to a `SingleProcess` (no torchrun: every collective is the identity) or a
`ProcessGroup`. Under torchrun:
- nccl on CUDA (one GPU per process, by LOCAL_RANK), gloo on CPU; `--sync-bn`: torch's
  SyncBatchNorm on CUDA, a gloo equivalent on CPU;
- the model trains in DistributedDataParallel; the TrainState keeps the bare module, so
  checkpoints and model.pt have the single-process keys and resume on any world size;
- every decision that ends a loop (a signal, the budget) is one small all_reduce at a boundary,
  so no rank waits forever in a collective the others left;
- evaluation gathers per-rank contiguous chunks of validation rows back in row order, so every
  rank computes the same F2 and takes the same path;
- only rank 0 writes files (`is_main`).
Each rank takes its slice of every global batch of `EpochBatchSampler`, so a saved position is
global."""
from __future__ import annotations

import dataclasses
import logging
import math
import os
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as tdist
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import Subset

from imet.config import TrainConfig
from imet.device import resolve_device
from imet.errors import UserError
from imet.predict.infer import Evaluation, run_model, score

log = logging.getLogger(__name__)


def env_rank() -> int:
    """This process's rank as torchrun announces it (0 when not launched by torchrun)."""
    return int(os.environ.get("RANK", "0") or 0)


def env_local_world_size() -> int:
    """How many processes torchrun started on this machine (1 when not launched by torchrun)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)


class SingleProcess:
    """A run without torchrun: every collective is the identity and this process the main one;
    `ProcessGroup` overrides each for a rank of a torchrun launch."""

    rank = 0
    world_size = 1
    enabled = False

    def __init__(self, device: torch.device):
        self.device = device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    def any_of(self, *flags: bool) -> tuple[bool, ...]:
        return tuple(bool(f) for f in flags)

    def mean(self, value: float) -> float:
        return value

    def val_data(self, data):
        return data

    def evaluate(self, runner, loader, targets: np.ndarray,
                 should_stop: Callable[[], bool]) -> Evaluation | None:
        """None when `should_stop` dropped the evaluation."""
        out = predict_rows(runner, loader, should_stop)
        return None if out is None else score(targets, *out, metric=runner.config.metric)

    def share_resume(self, find: Callable[[], Any], load: Callable[[Any], Any]):
        return find()

    def finish(self) -> None:
        """The session ended normally on this rank (see ProcessGroup.finish)."""

    def close(self) -> None:
        """Leave the process group (ProcessGroup.close)."""


class ProcessGroup(SingleProcess):
    """A rank of a torchrun launch."""

    enabled = True

    def __init__(self, device: torch.device, rank: int, world_size: int, sync_bn: bool):
        super().__init__(device)
        self.rank, self.world_size, self.sync_bn = rank, world_size, sync_bn
        # nccl moves only CUDA tensors; gloo only CPU ones.
        self.comm_device = device if device.type == "cuda" else torch.device("cpu")

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return convert_sync_batchnorm(model, self.device) if self.sync_bn else model

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """DDP over the parameters that train now, rebuilt at a stage switch (DDP hooks those
        requiring grad when built). It broadcasts rank 0's weights when built, so every stage
        starts equal, and by default rank 0's buffers (BatchNorm statistics) before each forward."""
        ids = [self.device.index] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def any_of(self, *flags: bool) -> tuple[bool, ...]:
        values = torch.tensor([int(bool(f)) for f in flags], dtype=torch.int32,
                              device=self.comm_device)
        tdist.all_reduce(values, op=tdist.ReduceOp.MAX)
        return tuple(bool(v) for v in values.tolist())

    def mean(self, value: float) -> float:
        tensor = torch.tensor([value], dtype=torch.float64, device=self.comm_device)
        tdist.all_reduce(tensor)
        return float(tensor.item()) / self.world_size

    def rows(self, n: int, rank: int | None = None) -> range:
        """A rank's contiguous share of n rows; shares differ by one row at most."""
        rank = self.rank if rank is None else rank
        return range(rank * n // self.world_size, (rank + 1) * n // self.world_size)

    def val_data(self, data):
        """RunData whose validation set is this rank's contiguous chunk of rows."""
        if len(data.val_set) < self.world_size:
            raise UserError(f"fold has {len(data.val_set)} validation images, fewer than the "
                            f"{self.world_size} processes; use fewer processes or another fold")
        rows = self.rows(len(data.val_set))
        return dataclasses.replace(data, val_set=Subset(data.val_set, list(rows)))

    def evaluate(self, runner, loader, targets: np.ndarray,
                 should_stop: Callable[[], bool]) -> Evaluation | None:
        self.sync_buffers(runner.state.eval_model)
        batches = Lockstep(loader, self, should_stop)
        out = predict_rows(runner, batches, lambda: batches.stopped)
        if out is None:
            return None
        probs, local_loss = out
        count = len(probs)
        probs = self.gather_rows(probs, len(targets))
        loss_and_count = torch.tensor([local_loss * count, count], dtype=torch.float64,
                                      device=self.comm_device)
        tdist.all_reduce(loss_and_count)
        val_loss = float(loss_and_count[0] / max(1.0, float(loss_and_count[1])))
        return score(targets, probs, val_loss, metric=runner.config.metric)

    def sync_buffers(self, model: torch.nn.Module) -> None:
        """BatchNorm running statistics: rank 0's everywhere (what DDP's broadcast_buffers does
        before each training forward), so every rank evaluates, and rank 0 saves, one model."""
        for buffer in model.buffers():
            moved = buffer.to(self.comm_device)
            tdist.broadcast(moved, src=0)
            if moved is not buffer:
                buffer.copy_(moved)

    def gather_rows(self, local: np.ndarray, total: int) -> np.ndarray:
        """Every rank's chunk of rows, concatenated in rank order (= validation row order)."""
        chunk = math.ceil(total / self.world_size)
        padded = torch.zeros((chunk, *local.shape[1:]), dtype=torch.float32,
                             device=self.comm_device)
        padded[:len(local)] = torch.from_numpy(np.ascontiguousarray(local, dtype=np.float32))
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        tdist.all_gather(parts, padded)  # all_gather wants one shape: shares padded to `chunk`
        return torch.cat([part[:len(self.rows(total, rank))]
                          for rank, part in enumerate(parts)]).cpu().numpy()

    def share_resume(self, find: Callable[[], Any], load: Callable[[Any], Any]):
        """Rank 0 looks for the checkpoint (it may copy one in from an input folder); the
        others load the file it chose, so all ranks start from the same state."""
        found = find() if self.is_main else None
        box = [str(found.path) if found is not None else None]
        tdist.broadcast_object_list(box, src=0)
        return found if self.is_main or box[0] is None else load(box[0])

    def finish(self) -> None:
        """Wait until every rank is past its last collective (one tearing its group down while
        another still talked to it aborted in gloo: SIGABRT, 'terminate called without an active
        exception'). Only on a normal end: after a failure torchrun ends the others."""
        tdist.barrier()

    def close(self) -> None:
        if tdist.is_initialized():
            tdist.destroy_process_group()


def predict_rows(runner, batches, should_stop: Callable[[], bool]):
    """(probabilities, mean loss) of the evaluated model (the EMA's while EMA is on) over
    `batches`, without TTA, through the forward path of validate and predict."""
    return run_model(runner.state.eval_model, batches, runner.device, runner.precision,
                     runner.norm, channels_last=runner.channels_last, loss_fn=runner.loss_fn,
                     should_stop=should_stop)


class Lockstep:
    """This rank's evaluation batches, one collective per round: all go on while some rank has
    a batch, all stop when one was asked to; a rank out of batches keeps taking part."""

    def __init__(self, loader, group: ProcessGroup, should_stop: Callable[[], bool]):
        self.loader, self.group, self.should_stop = loader, group, should_stop
        self.stopped = False

    def __iter__(self):
        self.stopped = False
        batches = iter(self.loader)
        while True:
            batch = next(batches, None)
            stop, more = self.group.any_of(self.should_stop(), batch is not None)
            if stop:
                self.stopped = True
                yield batch if batch is not None else (None, None, None)
                return
            if not more:
                return
            if batch is not None:
                yield batch


def start(config: TrainConfig) -> SingleProcess:
    """The process group torchrun's environment describes, or a single process."""
    device = resolve_device(config.device)
    world_size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world_size <= 1:
        if config.sync_bn:
            log.info("--sync-bn has no effect in a single process")
        return SingleProcess(device)
    rank = env_rank()
    if config.batch_size % world_size:
        raise UserError(f"--batch-size {config.batch_size} is not divisible by the "
                        f"{world_size} processes; give a multiple of {world_size}")
    if device.type == "cuda":
        local_rank = int(os.environ.get("LOCAL_RANK", "0") or 0)
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"LOCAL_RANK {local_rank}: only {torch.cuda.device_count()} GPUs "
                            "are visible; use --nproc_per_node <= the GPU count")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    tdist.init_process_group(backend=backend)
    log.info("rank %d of %d on %s (%s)", rank, world_size, device, backend)
    return ProcessGroup(device, rank, world_size, config.sync_bn)


def convert_sync_batchnorm(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Every BatchNorm of `model` synchronized over the ranks, with the same Parameters and
    state_dict keys: optimizer groups and checkpoints stay, and plain BatchNorm loads them."""
    if device.type == "cuda":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for module in model.modules():
        if isinstance(module, _BatchNorm):
            module.__class__ = GlooSyncBatchNorm
    return model


class _SumOverRanks(torch.autograd.Function):
    """all_reduce(SUM) with its gradient, the sum of all ranks' output gradients (torch's
    torch.distributed.nn.functional.all_reduce does this but is deprecated since 2.x)."""

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
    """SyncBatchNorm for CPU processes (gloo): torch's kernels (batch_norm_stats & co.) are
    CUDA-only, so the batch statistics come from one differentiable all_reduce of per-channel
    sums, sums of squares and counts. Used by CPU clusters and the tests comparing 2 processes
    with 1. Not a SyncBatchNorm subclass: DDP refuses those on CPU."""

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
