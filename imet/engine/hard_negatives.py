"""Hard-negative mining (`--hard-negatives FRACTION`, from the top iMet solutions): every epoch
sees each training sample once plus, once more, the FRACTION of samples whose loss was largest
in the epoch before.

The per-sample losses of the running epoch are recorded as the steps run (the loss of a sample
mixed by mixup is booked to the sample itself); at the first step of the next epoch they pick
that epoch's repeats, the top `count` losses (ties to the lower index), and the sampler mixes
the repeats into its (seed, epoch) permutation. Epoch 0, with no losses yet, repeats `count`
samples drawn from (seed, 0). The epoch being recorded, its losses and the repeats in use are
all in the TrainState, so a resumed session picks the same samples. Every epoch has the same
length, so the LR schedules see a fixed number of steps per epoch."""
from __future__ import annotations

from typing import Any

import torch

from imet.engine.sampler import epoch_permutation

# Mixed into the seed of epoch 0's repeats, so they are not the first samples of its order.
_REPEAT_SALT = 0x4A2D


def repeat_count(num_samples: int, fraction: float) -> int:
    """How many samples an epoch repeats."""
    return int(round(num_samples * fraction))


def per_sample_losses(loss_fn, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """`loss_fn` (a mean over samples and classes, or over samples) of each row alone: one
    batched computation through torch.func.vmap rather than one call per row."""
    with torch.no_grad():
        return torch.func.vmap(lambda row, target: loss_fn(row[None], target[None]))(
            logits.detach().float(), targets.float())


class HardNegatives:
    def __init__(self, num_samples: int, fraction: float, seed: int):
        self.count = repeat_count(num_samples, fraction)
        self.seed = int(seed)
        self.epoch = 0                   # the epoch whose losses are being recorded
        self.losses = torch.full((num_samples,), float("nan"))
        generator_seed = self.seed ^ _REPEAT_SALT
        self.repeats = epoch_permutation(num_samples, generator_seed, 0)[:self.count].clone()

    def for_epoch(self, epoch: int) -> torch.Tensor:
        """The sample indices `epoch` sees twice; entering a new epoch turns the losses
        recorded so far into its repeats."""
        if epoch != self.epoch:
            # A sample not seen (the dropped last partial batch) ranks below every seen one.
            ranked = torch.nan_to_num(self.losses, nan=float("-inf"))
            self.repeats = torch.argsort(ranked, descending=True, stable=True)[:self.count]
            self.losses.fill_(float("nan"))
            self.epoch = int(epoch)
        return self.repeats

    def record(self, indices, losses: torch.Tensor) -> None:
        """Book a batch's per-sample losses (a sample seen twice keeps its later loss)."""
        self.losses[torch.as_tensor(indices, dtype=torch.long)] = losses.to("cpu", torch.float32)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "losses": self.losses.clone(), "repeats": self.repeats.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        self.losses = state["losses"].clone()
        self.repeats = state["repeats"].clone()


def build_hard_negatives(num_samples: int, fraction: float, seed: int) -> HardNegatives | None:
    return HardNegatives(num_samples, fraction, seed) if fraction else None
