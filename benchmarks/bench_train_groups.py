"""Activation memory that `--train-groups late,head` saves: the bytes autograd keeps for the
backward pass in one stage-2 training forward of se_resnext50_32x4d at 320 px, batch 32, on
CPU, with every group training against the early group frozen.

Counted, not sampled: `torch.autograd.graph.saved_tensors_hooks` sees every tensor the forward
saves for backward. A storage saved twice (a ReLU's output is also the next convolution's
input) counts once, parameters not at all (they exist with or without training). The pack hook
keeps only a weak reference, so the count needs no memory of its own: a storage still alive at
the same address when it is saved again is the same storage. Last line: the fraction saved."""
from __future__ import annotations

import sys
import time
import weakref
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imet.train.state import set_trainable
from imet.models import build_model

ARCH, SIZE, BATCH, CLASSES = "se_resnext50_32x4d", 320, 32, 1103


class SavedBytes:
    """The bytes of distinct non-parameter storages saved for backward inside the `with`."""

    def __init__(self, model: torch.nn.Module):
        self.params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.seen: dict[int, weakref.ref] = {}
        self.total = 0

    def pack(self, tensor: torch.Tensor):
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key not in self.params:
            alive = self.seen.get(key)
            if alive is None or alive() is None:
                self.total += storage.nbytes()
                self.seen[key] = weakref.ref(tensor)
        return None  # nothing is kept: no backward runs

    def count(self, model: torch.nn.Module, images: torch.Tensor) -> int:
        self.seen, self.total = {}, 0
        with torch.autograd.graph.saved_tensors_hooks(self.pack, lambda _: None):
            model(images).sum()
        return self.total


def main() -> None:
    torch.manual_seed(0)
    model = build_model(ARCH, CLASSES, pretrained=False).train()
    groups = model.param_groups()
    images = torch.randn(BATCH, 3, SIZE, SIZE)
    counter = SavedBytes(model)
    figures = {}
    for label, train_groups in (("all groups (default)", ""), ("late,head", "late,head")):
        set_trainable(groups, 2, train_groups)
        started = time.perf_counter()
        figures[label] = counter.count(model, images)
        print(f"{label:>22}: {figures[label] / 2 ** 30:6.2f} GiB saved for backward "
              f"({time.perf_counter() - started:.0f} s forward)")
    full, late = figures["all groups (default)"], figures["late,head"]
    print(f"{ARCH} {SIZE} px batch {BATCH}: late,head keeps {late / 2 ** 30:.2f} GiB of "
          f"{full / 2 ** 30:.2f} GiB")
    print(f"train_groups late,head activation memory saved: {1 - late / full:.1%}")


if __name__ == "__main__":
    main()
