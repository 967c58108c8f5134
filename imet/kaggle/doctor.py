"""`imet doctor`: can this session do the job it was configured for?

It reports the interpreter and torch build, every GPU (proved by a real operation, see
imet.kaggle.gpu), free disk in the working folder against the run's checkpoints, the inputs
it finds and whether Telegram is configured; and returns one line per problem that would stop
the session, so a kernel can stop in its first minute instead of after hours."""
from __future__ import annotations

import argparse
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from imet.errors import UserError
from imet.kaggle import accelerators
from imet.kaggle.paths import (find_competition_data, find_previous_output, find_source_dataset)

DEFAULT_CLASSES = 1103  # iMet 2019's label count, when no labels.csv is at hand
# Room kept beyond the checkpoints: model.pt, metrics, plots, the registry and the OS.
DISK_MARGIN_BYTES = 512 * 2**20


@dataclass
class Settings:
    data: Path | None = None
    input_roots: list[Path] = field(default_factory=list)
    out: Path = Path(".")
    arch: str | None = None
    pretrained: bool | None = None  # None: as imet train, on for an arch that has weights
    device: str = "auto"
    accelerator: str | None = None  # what the kernel asked for; None: not in a kernel
    keep: int | None = None  # checkpoint generations kept (None: imet train's default)


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def add(self, name: str, value: object) -> None:
        self.lines.append(f"{name + ':':<18}{value}")


def doctor_flags(kernel_args: list[str], default_arch: str | None = None) -> list[str]:
    """The flags doctor judges (arch, weights, device; Telegram: auto unless turned off),
    picked from a kernel's arguments for its imet command, as doctor flags."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--arch", default=default_arch)
    parser.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--device")
    parser.add_argument("--notify", default="auto")
    parser.add_argument("--keep")
    known, _ = parser.parse_known_args(kernel_args)
    flags = [f"--notify={known.notify}"] + ([f"--arch={known.arch}"] if known.arch else [])
    flags += [f"--keep={known.keep}"] if known.keep else []
    if known.pretrained is not None:
        flags.append("--pretrained" if known.pretrained else "--no-pretrained")
    return flags + ([f"--device={known.device}"] if known.device else [])


def checkpoint_bytes(arch: str, num_classes: int) -> tuple[int, int]:
    """(parameter count, bytes of one training-state file) of `arch`, built without weights
    on the meta device: fp32 weights and buffers plus AdamW's two moments per parameter."""
    import torch

    from imet.models.net import build_model
    with torch.device("meta"):
        model = build_model(arch, num_classes, pretrained=False)
    params = sum(p.numel() for p in model.parameters())
    buffers = sum(b.numel() for b in model.buffers())
    return params, 4 * (3 * params + buffers)


def disk_need(arch: str, num_classes: int, keep: int | None = None) -> tuple[int, int]:
    """(parameters, bytes the run needs in its folder at the peak of a save): the `keep`
    generations (default: imet train's --keep) plus the one being written, and the best model
    file."""
    from imet.engine.config import TrainConfig
    keep = TrainConfig.keep if keep is None else keep
    params, state = checkpoint_bytes(arch, num_classes)
    return params, (keep + 1) * state + 4 * params + DISK_MARGIN_BYTES


def _existing(path: Path) -> Path:
    path = path.resolve()
    while not path.exists():
        path = path.parent
    return path


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def _check_gpus(s: Settings, report: Report) -> None:
    import torch

    from imet.kaggle import gpu
    for name, value in gpu.build_info().items():
        report.add(name, value)
    available, driver = gpu.cuda_available()
    gpus = [gpu.inspect(i) for i in range(torch.cuda.device_count())] if available else []
    for g in gpus:
        report.add(f"GPU {g.index}", f"{g.name}, {g.sm}, {g.memory_gib:.1f} GiB, kernels "
                   f"{'yes' if g.kernels else 'NO'}, fp16 autocast {g.fp16}, bf16 {g.bf16}")
    if not gpus:
        report.add("GPU", "no GPU" + (f" ({driver})" if driver else ""))
    asked = s.accelerator
    if asked is not None:
        runs_on = accelerators.runs_on(asked)
        report.add("accelerator", asked + (f" (runs on {runs_on})" if runs_on != asked else ""))
        if runs_on in accelerators.TPUS:
            report.problems.append(f"asked for {asked}, a TPU: imet trains on CUDA GPUs or the "
                                   "CPU; render with --accelerator NvidiaTeslaT4 or none")
    asked_gpu = asked is not None and accelerators.wants_gpu(asked)
    if s.device.startswith("cuda"):
        line = gpu.device_problem(s.device)
        report.problems.extend([line] if line else [])
    elif asked_gpu and not gpus:
        report.problems.append(driver or gpu.no_gpu_line(asked))
    elif s.device == "auto":
        # auto trains on every GPU torch sees (torchrun: one per process)
        report.problems.extend(p for p in (g.problem() for g in gpus) if p)


def _check_inputs(s: Settings, report: Report) -> int:
    """Reports the inputs found; returns the label count (for the checkpoint estimate)."""
    roots = s.input_roots
    data = None
    try:
        data = find_competition_data(s.data) if s.data else _first(find_competition_data, roots)
        report.add("competition data", data)
    except UserError as err:
        report.problems.append(str(err))
    try:
        report.add("imet-src", _first(find_source_dataset, roots))
    except UserError:
        report.add("imet-src", f"not attached (searched {', '.join(map(str, roots)) or '-'})")
    earlier = [p for root in [s.out, *roots] for p in find_previous_output(root)]
    report.add("earlier outputs", ", ".join(map(str, earlier[:3])) or "none (a new run)")
    if data is None:
        return DEFAULT_CLASSES
    from imet.data.labels import read_labels
    from imet.data.layout import CompetitionLayout
    try:
        return read_labels(CompetitionLayout(data).labels_csv).num_classes or DEFAULT_CLASSES
    except UserError as err:
        report.problems.append(str(err))
        return DEFAULT_CLASSES


def _first(find, roots: list[Path]):
    """The first root's answer of `find`; the last root's error when none has it."""
    error = UserError("no --data and no --input-root to search for the competition data; pass "
                      "--data DIR (on Kaggle: attach imet-2019-fgvc6)")
    for root in roots:
        try:
            return find(root)
        except UserError as err:
            error = err
    raise error


def _check_run(s: Settings, num_classes: int, report: Report) -> None:
    if not s.arch:
        return
    try:
        params, need = disk_need(s.arch, num_classes, s.keep)
    except (UserError, ValueError) as err:
        report.problems.append(f"--arch {s.arch}: {err}")
        return
    free = shutil.disk_usage(_existing(s.out)).free
    report.add("disk", f"{_gib(free)} free in {_existing(s.out)}; {s.arch} ({params / 1e6:.1f}M "
               f"parameters) needs {_gib(need)} for its checkpoints")
    if free < need:
        report.problems.append(f"{_existing(s.out)}: {_gib(free)} free, but {s.arch}'s "
                               f"checkpoints need {_gib(need)}; free space in the working folder")
    from imet.models.weights import has_pretrained_weights
    if s.pretrained or (s.pretrained is None and has_pretrained_weights(s.arch)):
        _check_weights(s, report)


def _check_weights(s: Settings, report: Report) -> None:
    from imet.models.weights import get_spec, network_up, resolve_weights
    try:
        report.add("weights", resolve_weights(s.arch, search_roots=s.input_roots,
                                              allow_download=False))
    except UserError as err:
        urls = get_spec(s.arch).urls()
        if urls and network_up(urls[0]):
            report.add("weights", f"not found; downloaded from {urls[0]} at the start")
        else:
            report.problems.append(str(err))


def _check_telegram(report: Report) -> None:
    from imet.notify.config import ConfigProblem, load_config
    try:
        config = load_config()
        report.add("telegram", f"configured (chat {config.chat_id}, from {config.source})")
    except ConfigProblem as problem:
        report.add("telegram", f"not configured ({problem})")


def diagnose(s: Settings) -> Report:
    report = Report()
    _check_gpus(s, report)
    num_classes = _check_inputs(s, report)
    _check_run(s, num_classes, report)
    _check_telegram(report)
    return report


def send_crash(problems: list[str], mode: str, kernel: str | None) -> bool:
    """The problems as a Telegram crash message (when configured and not off)."""
    from imet.engine.events import Event
    from imet.notify import build_notifier
    notifier = build_notifier(mode, kernel=kernel)
    if notifier is None:
        return False
    try:
        notifier(Event("failure", {"error": "imet doctor stopped the session: "
                                            + " | ".join(problems), "kernel": kernel,
                                   "run_name": f"imet {kernel or 'doctor'}"}))
    finally:
        notifier.close()
    return True
