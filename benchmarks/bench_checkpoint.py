"""Save and load time of a full se_resnext50_32x4d TrainState (1,103 classes, AdamW moments
filled), through imet's checkpoint path: atomic write + fsync + verified read-back +
pruning on save; CRC32 check of every record + weights_only load + restore into the live
objects on load.
Side by side: a bare `torch.save` / `torch.load` of the same payload, for the cost of safety.

Goal: < 2 s each. Last line: the slower of the two medians."""
from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imet.train.checkpoint import (Resume, load_checkpoint, restore_state, save_checkpoint,
                                   state_payload)
from imet.config import TrainConfig
from imet.device import Precision
from imet.train.state import TrainState
from imet.models import build_model

REPEATS = 3
NUM_CLASSES = 1103


def build_state() -> TrainState:
    config = TrainConfig(arch="se_resnext50_32x4d", pretrained=False, head_epochs=0, epochs=2)
    model = build_model(config.arch, NUM_CLASSES)
    state = TrainState(config, model, model.param_groups(), steps_per_epoch=1000,
                       labels={"attribute_ids": list(range(NUM_CLASSES)),
                               "names": [f"tag::{i}" for i in range(NUM_CLASSES)]},
                       labels_fingerprint="bench", precision=Precision("fp32"),
                       device_type="cpu")
    loss = model(torch.randn(2, 3, 64, 64)).sum()  # one step: every AdamW moment exists
    loss.backward()
    state.optimizer.step()
    state.scheduler.step()
    return state


def main() -> None:
    torch.manual_seed(0)
    state = build_state()
    params = sum(p.numel() for p in state.model.parameters())
    save_s, load_s, bare_save_s, bare_load_s = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        for step in range(1, REPEATS + 1):
            started = time.perf_counter()
            path = save_checkpoint(state_payload(state), out, step)
            save_s.append(time.perf_counter() - started)

            started = time.perf_counter()
            payload = load_checkpoint(path, state.config.fingerprint(), "bench")
            restore_state(state, Resume(payload, path, path))
            load_s.append(time.perf_counter() - started)

            bare = out / f"bare-{step}.pt"
            started = time.perf_counter()
            torch.save(state_payload(state), bare)
            bare_save_s.append(time.perf_counter() - started)
            started = time.perf_counter()
            torch.load(bare, weights_only=True)
            bare_load_s.append(time.perf_counter() - started)
            size_mb = path.stat().st_size / 2 ** 20
            bare.unlink()
    save, load = statistics.median(save_s), statistics.median(load_s)
    print(f"se_resnext50_32x4d: {params / 1e6:.1f}M parameters, checkpoint {size_mb:.0f} MiB")
    print(f"imet save (atomic, fsync, verify, prune): median {save:.2f} s  {save_s}")
    print(f"imet load (CRC32 check, weights_only, restore):  median {load:.2f} s  {load_s}")
    print(f"bare torch.save: median {statistics.median(bare_save_s):.2f} s; bare torch.load "
          f"(weights_only): median {statistics.median(bare_load_s):.2f} s")
    print(f"trainstate_save_load_slower_s: {max(save, load):.2f}")


if __name__ == "__main__":
    main()
