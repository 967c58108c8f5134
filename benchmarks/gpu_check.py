"""GPU check: the CUDA lines of imet run once, on the first GPU machine, in at most ~5 minutes.

    python benchmarks/gpu_check.py        (make gpu-check)

Without CUDA it refuses with one line and exit 2. On a CUDA machine it runs, in order:
- `imet doctor`'s checks (torch build, each GPU proved by a fp16/bf16 autocast probe);
- se_resnext50_32x4d (random init) at 320 px: training img/s in fp32, in AMP (autocast fp16 +
  GradScaler) and in AMP + channels_last, each with its peak memory; the largest batch that
  fits with AMP + channels_last;
- the GPU-busy share over 200 steps fed by the real loader (JPEG cache, 4 workers, preset seed
  with its per-batch part on the GPU): whether 4 CPUs keep the GPU fed;
- the per-batch augmentation on CUDA against the CPU with the same parameters (max abs diff);
- a short run interrupted (`--session-steps`) and resumed on the GPU: identical in
  deterministic mode, within RESUME_TOLERANCE otherwise;
- predict's automatic batch size;
- with two or more GPUs, a 2-process torchrun run (nccl) handing over and resuming on one.

Every figure is printed as it is measured and, at the end, appended to benchmarks/README.md.
The measurements are in gpu_steps.py, each a function the tests run on the CPU."""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_steps import (ARCH, BUSY_BATCH, BUSY_STEPS, BUSY_WORKERS, CLASSES, REPO,  # noqa: E402
                       RESUME_TOLERANCE, SIZE, augment_difference, busy_share, device_prepare,
                       fits_on_gpu, largest_fitting, make_step, real_loader, resume_difference,
                       small_data, throughput)

BUDGET_S = 300.0
Figure = tuple[str, str, str]  # (name, value, detail)


def refuse_without_cuda() -> None:
    if not torch.cuda.is_available():
        print(f"gpu_check: error: no CUDA GPU visible to torch {torch.__version__} (CUDA build "
              f"{torch.version.cuda or 'none'}); run it on a GPU machine (`make gpu-check`)",
              file=sys.stderr)
        sys.exit(2)


RESUME_ARGS = ["--arch", "resnet18", "--no-pretrained", "--image-size", "128", "--batch-size",
               "32", "--epochs", "2", "--head-epochs", "1", "--patience", "0", "--num-workers",
               "2", "--fold", "0", "--device", "cuda"]
RESUME_AT = 5  # of 8 steps: inside stage 2, mid-epoch
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
            "2", "-m", "imet"]


class Check:
    """Runs the steps in turn within BUDGET_S, prints each figure as it comes and keeps them for
    benchmarks/README.md; a failing step is a figure too ("FAILED: ..."), the others still run."""

    def __init__(self):
        self.figures: list[Figure] = []
        self.deadline = time.monotonic() + BUDGET_S

    def record(self, name: str, value: str, detail: str = "") -> None:
        print(f"{name}: {value}" + (f"  ({detail})" if detail else ""), flush=True)
        self.figures.append((name, value, detail))

    def run(self, name: str, step: Callable[[], None]) -> None:
        if time.monotonic() > self.deadline:
            return self.record(name, "skipped", f"past the {BUDGET_S:.0f} s budget")
        started = time.monotonic()
        try:
            step()
        except Exception as err:  # one step's failure is its figure, not the end of the check
            self.record(name, "FAILED", f"{type(err).__name__}: {str(err)[:300]}")
        finally:
            torch.cuda.empty_cache()
        print(f"  ({name}: {time.monotonic() - started:.0f} s)", flush=True)

    def append_to_readme(self, machine: str, path: Path = REPO / "benchmarks" / "README.md"):
        stamp = time.strftime("%H:%M", time.gmtime())
        rows = [f"| [gpu_check {stamp}] {name}: {detail or '-'} | {value} | `make gpu-check` | "
                f"{machine} | {time.strftime('%Y-%m-%d', time.gmtime())} |"
                for name, value, detail in self.figures]
        with open(path, "a", encoding="utf-8") as readme:
            readme.write("\n".join(rows) + "\n")
        print(f"appended {len(rows)} figures to {path}")


def main() -> int:
    from imet.kaggle.session import Settings, diagnose
    from imet.models.net import build_model
    from imet.predict.infer import auto_batch_size
    device = torch.device("cuda", 0)
    machine = f"{torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}, torch " \
              f"{torch.__version__}"
    check = Check()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = small_data(tmp / "mini")
        report = diagnose(Settings(data=data, out=tmp, arch=ARCH, pretrained=False,
                                   device="cuda"))
        print("\n".join(report.lines), flush=True)
        check.record("doctor", "ok" if not report.problems else "BLOCKED",
                     "; ".join(report.problems) or "; ".join(
                         line for line in report.lines if line.startswith("GPU")))
        if report.problems:
            check.append_to_readme(machine)
            return 1

        def speeds():
            for label, amp, channels_last in (("fp32", False, False), ("amp", True, False),
                                              ("amp+channels_last", True, True)):
                try:
                    step = make_step(ARCH, CLASSES, device, amp, channels_last)
                    ips, peak = throughput(step, 16, SIZE, CLASSES, device)
                    check.record(f"train_img_s_{label}", f"{ips:.0f} img/s",
                                 f"{ARCH} random init, {SIZE} px, batch 16, peak {peak:.1f} GiB")
                except torch.cuda.OutOfMemoryError:
                    check.record(f"train_img_s_{label}", "out of memory", "batch 16")
                step = None
                torch.cuda.empty_cache()

        def largest():
            fits = fits_on_gpu(lambda: make_step(ARCH, CLASSES, device, True, True), SIZE,
                               CLASSES, device)
            check.record("largest_train_batch_amp_channels_last", str(largest_fitting(fits, 32)),
                         f"{ARCH}, {SIZE} px, within ~6%")

        def busy():
            loader = real_loader(tmp / "loader", 256, SIZE, BUSY_BATCH, BUSY_WORKERS,
                                 BUSY_STEPS + 1)
            step = make_step(ARCH, CLASSES, device, True, True)
            share, ips = busy_share(loader, step, device_prepare(device), device, BUSY_STEPS)
            check.record("gpu_busy_share_real_loader", f"{share:.2f}",
                         f"{BUSY_STEPS} steps, batch {BUSY_BATCH}, JPEG cache, {BUSY_WORKERS} "
                         f"workers, per-batch part on the GPU, AMP + channels_last; {ips:.0f} img/s")

        def augment():
            check.record("batch_augment_cuda_vs_cpu_max_abs", f"{augment_difference(device):.3g}",
                         f"16 images {SIZE} px, same parameters, 0..255 scale")

        def resume(deterministic: bool):
            flag = "--deterministic" if deterministic else "--no-deterministic"
            # cuBLAS is deterministic only with a fixed workspace
            env = {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"} if deterministic else None
            diff = resume_difference(data, tmp / f"resume-{deterministic}",
                                     [*RESUME_ARGS, flag], RESUME_AT, env=env)
            wanted = 0.0 if deterministic else RESUME_TOLERANCE
            check.record(f"resume_max_abs_diff_{'deterministic' if deterministic else 'default'}",
                         f"{diff:.3g}", f"resnet18 128 px, 8 steps, handed over at {RESUME_AT}, "
                         f"AMP; wanted <= {wanted:g}: {'met' if diff <= wanted else 'NOT met'}")

        def auto_batch():
            model = build_model(ARCH, CLASSES, pretrained=False)
            check.record("predict_auto_batch_size", str(auto_batch_size(model, SIZE, 2, device)),
                         f"{ARCH}, {SIZE} px, TTA 2 views, fp16 + channels_last")

        def torchrun():
            diff = resume_difference(data, tmp / "ddp", [*RESUME_ARGS, "--sync-bn"], RESUME_AT,
                                     launcher=TORCHRUN)
            check.record("torchrun_2gpu_then_1gpu_max_abs_diff", f"{diff:.3g}",
                         "nccl, --sync-bn, handed over at step 5 by 2 processes, resumed by 1; "
                         "vs 1 process throughout (all-reduce order: not bit-identical)")

        check.run("throughput", speeds)
        check.run("largest batch", largest)
        check.run("GPU busy share", busy)
        check.run("batch augment", augment)
        check.run("resume deterministic", lambda: resume(True))
        check.run("resume default", lambda: resume(False))
        check.run("predict auto batch", auto_batch)
        if torch.cuda.device_count() >= 2:
            check.run("torchrun", torchrun)
        else:
            check.record("torchrun_2gpu", "skipped", "one GPU")
    check.append_to_readme(machine)
    return 0


if __name__ == "__main__":
    refuse_without_cuda()
    sys.exit(main())
