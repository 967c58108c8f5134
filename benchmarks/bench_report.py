"""Cost of the report subscribers (console lines, metrics.csv, run.json + plots, run registry)
over a full-length run, side by side with the bare event bus, against the time of one training
step of a tiny CPU model measured in the same process.

    python benchmarks/bench_report.py            # 68,000 steps: 20 epochs of iMet at batch 32
    python benchmarks/bench_report.py --steps 5000

Prints the per-step overhead, the end-of-run cost (plots and run.json from a 68k-row
metrics.csv), a 3,000-record registry merge, and last the figure:
`report_overhead_per_step_vs_tiny_cpu_step: <ratio>`.
"""
from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import torch

from imet.train.events import Evaluation, EventBus, Finish, Progress, RunStart
from imet.observe.registry import make_record, merge_records, record_train_subscriber
from imet.observe.files import report_subscribers


def emit_run(bus: EventBus, steps: int, eval_every: int) -> float:
    started = time.perf_counter()
    bus.emit(RunStart(run_name="bench", arch="resnet18", fold=0, image_size=320, session=1,
                      resumed_from=None, device="cpu", total_steps=steps, stage1_end_step=steps // 20,
                      config_fingerprint="bench", config={"epochs": 20, "head_epochs": 1}, kernel=None,
                      rank=0))
    history = []
    for step in range(1, steps + 1):
        bus.emit(Progress(stage=1 if step < steps // 20 else 2, epoch=step * 20 // steps,
                          step=step, total_steps=steps, epoch_step=step % (steps // 20),
                          steps_per_epoch=steps // 20, stage1_end_step=steps // 20,
                          config_fingerprint="bench", loss=1.0 / step, lr=1e-4, img_per_s=100.0,
                          eta_run_s=float(steps - step), session_left_s=3600.0))
        if step % eval_every == 0:
            history.append({"step": step, "f2": 0.5, "val_loss": 0.1})
            bus.emit(Evaluation(step=step, epoch=0, f2=0.5 + step / steps / 10,
                                threshold=0.2, best_f2=0.5 + step / steps / 10, best_step=step,
                                val_loss=0.1, is_best=True, history=list(history)))
    bus.emit(Finish(best_f2=0.6, best_step=steps, duration_s=1.0, sessions=1,
                    artifacts=[], history=history))
    bus.close()
    return time.perf_counter() - started


def tiny_step_seconds(repeats: int = 20) -> float:
    from torchvision.models import resnet18
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = resnet18(num_classes=1103)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    images, targets = torch.randn(8, 3, 64, 64), torch.rand(8, 1103).round()
    loss_fn = torch.nn.BCEWithLogitsLoss()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        optimizer.zero_grad()
        loss_fn(model(images), targets).backward()
        optimizer.step()
        times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=68_000)
    parser.add_argument("--eval-every", type=int, default=340)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bare = emit_run(EventBus(), args.steps, args.eval_every)
        run_dir = Path(tmp) / "run"
        subscribers = report_subscribers(run_dir, every_s=60.0, stream=io.StringIO())
        subscribers.append(record_train_subscriber(run_dir))
        # the end-of-run artifact work, timed on its own below, is included here
        full = emit_run(EventBus(subscribers), args.steps, args.eval_every)
        lines = sum(1 for _ in open(run_dir / "metrics.csv"))
        from imet.observe.files import ArtifactWriter
        started = time.perf_counter()
        ArtifactWriter(run_dir)._write_plots()
        plots = time.perf_counter() - started
    records = [make_record("train", f"run{i}", s, best_f2=0.5, status="finished")
               for i in range(1000) for s in (1, 2, 3)]
    started = time.perf_counter()
    merged = merge_records(records, records[::-1], records)
    merge = time.perf_counter() - started
    step = tiny_step_seconds()
    per_step = (full - bare - plots) / args.steps
    print(f"events: {args.steps} progress + {args.steps // args.eval_every} evaluations; "
          f"metrics.csv {lines} lines")
    print(f"bare bus: {bare:.2f} s; with report + registry subscribers: {full:.2f} s "
          f"(of which plots/run.json at the end ~{plots:.2f} s)")
    print(f"per-step overhead: {per_step * 1e6:.1f} us; tiny CPU step (resnet18, 8x64px): "
          f"{step * 1e3:.1f} ms")
    print(f"registry merge of 3 x {len(records)} records -> {len(merged)}: {merge:.3f} s")
    print(f"report_overhead_per_step_vs_tiny_cpu_step: {per_step / step:.5f}")


if __name__ == "__main__":
    main()
