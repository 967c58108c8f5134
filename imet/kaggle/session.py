"""Inside a Kaggle session: where things are, `imet doctor`, the GPU probe, the shell steps,
each kernel's session and the trainer's image cache choice.

Today's Kaggle mounts each attached input nested by kind (/kaggle/input/competitions/<slug>/,
datasets/<owner>/<slug>/, notebooks/<owner>/<slug>/, models/…); older sessions mounted each
at /kaggle/input/<slug>/. Folders are found by what they hold, under either layout, never by a
fixed path. `IMET_KAGGLE_ROOT` replaces /kaggle (the local emulator sets it).
"""
from __future__ import annotations

import json
import os
import platform
import shlex
import shutil
import sys
import time
import warnings
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import delegator
import pexpect
import torch
import torch.nn.functional as F

from imet.config import TrainConfig, given_settings, parse_duration, train_parser, without_settings
from imet.data.images import CACHE_ENV, find_cache, read_manifest
from imet.data.labels import competition_of, find_layout, read_labels
from imet.device import fast_bf16
from imet.errors import (HANDED_OVER_EXIT_CODE as HANDED_OVER, HANDOVER_FILE as HANDOVER,
                         DataError, UserError)
from imet.fileio import atomic_write_text, read_json_object
from imet.kaggle import INPUT_LEVELS, SUBMISSION_LIMIT_S
from imet.kaggle.render import EXTRA_AUTO, TPUS, asks_extra_auto, runs_on, wants_gpu
from imet.models.modelfile import MODEL_FILE
from imet.probfile import ENSEMBLE_PROBS
from imet.walk import INPUT_DEPTH, walk_folders

ROOT_ENV = "IMET_KAGGLE_ROOT"
# The kernel's id (owner/slug) for `imet train`'s run_start, from its script's KERNEL line.
KERNEL_ENV = "IMET_KERNEL"
# The inference kernel's pseudo-labels in its working folder (found by find_extra_sets).
PSEUDO_DIR = "pseudo"
RUN_JSON = "run.json"  # imet.observe.files.RUN_JSON, without importing the observers here


def kaggle_root(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get(ROOT_ENV) or "/kaggle")


def input_root(env: Mapping[str, str] | None = None) -> Path:
    return kaggle_root(env) / "input"


def working_dir(env: Mapping[str, str] | None = None) -> Path:
    return kaggle_root(env) / "working"


def _find(root: Path, holds: Callable[[list[str], list[str]], bool]) -> list[Path]:
    """Folders under root (included) that `holds(files, subfolders)` accepts, shallowest
    first, so the attached input itself wins over copies inside it."""
    if not root.is_dir():
        return []
    found = []
    for folder, subfolders, files in walk_folders([root]):
        found += [folder] if holds(files, subfolders) else []
        if len(files) > 1000:  # a folder of images is a leaf: nothing below to search
            subfolders[:] = []
    return sorted(found, key=lambda folder: (len(folder.parts), folder))


def find_folders_with(root: Path, *names: str) -> list[Path]:
    """Folders under root that hold every one of `names` as files, shallowest first."""
    return _find(root, lambda files, _: all(name in files for name in names))


class NotAttached(UserError):
    """An input searched for and not found (a refusal of what was found is a plain UserError)."""


def attached_inputs(root: Path) -> list[Path]:
    """The inputs attached under root, each where it is mounted: nested by kind (INPUT_LEVELS),
    or a folder of root itself (the flat layout, or a root that is not Kaggle's)."""
    if not root.is_dir():
        return []
    found: list[Path] = []
    for child in sorted(root.iterdir()):
        if child.is_dir():
            levels = INPUT_LEVELS.get(child.name)
            found += (sorted(p for p in child.glob("/".join("*" * levels)) if p.is_dir())
                      if levels else [child])
    return found


def input_of(folder: Path, root: Path) -> Path:
    """The attached input under root that holds `folder` (itself when none does)."""
    return next((attached for attached in attached_inputs(root)
                 if attached == folder or attached in folder.parents), folder)


def _named(folder: Path, root: Path) -> str:
    return str(folder.relative_to(root)) if folder.is_relative_to(root) and folder != root \
        else str(folder)


def searched(root: Path) -> str:
    """Which attached inputs a search of root saw and how deep: a missing input's words."""
    inputs = attached_inputs(root)
    names = ", ".join(_named(p, root) for p in inputs) or "nothing attached"
    return f"searched {root}, {INPUT_DEPTH} folders deep: {names}"


def _in_one_input(found: list[Path], root: Path, what: str, fix: str) -> Path:
    """The shallowest of `found` when one attached input holds them all (copies inside it are
    fine); a refusal naming the inputs when two do."""
    holders = list(dict.fromkeys(input_of(folder, root) for folder in found))
    if len(holders) > 1:
        raise UserError(f"{what} is in {len(holders)} inputs, "
                        f"{' and '.join(_named(h, root) for h in holders)} ({searched(root)}); "
                        f"{fix}")
    return found[0]


def find_competition_data(root: Path | None = None) -> Path:
    """The folder holding an iMet competition's files: a sample submission and a labels table
    (found by its columns: label_map.csv in 2021), as `imet check-data` finds them."""
    from imet.data.labels import COMPETITIONS, is_submission_name, labels_tables
    root = input_root() if root is None else root
    found = [folder for folder in _find(root, lambda files, _: any(map(is_submission_name, files)))
             if labels_tables(folder)]
    if not found:
        raise NotAttached(f"no competition data under {root}: no folder holds a sample "
                          "submission and a labels table (columns attribute_id,attribute_name) "
                          f"({searched(root)}); attach the competition "
                          f"({', '.join(COMPETITIONS.values())}) in competition_sources of "
                          "kernel-metadata.json")
    return _in_one_input(found, root, "competition data (a sample submission and a labels "
                         "table)", "attach only one iMet competition, or pass --data")


def _dataset_version(folder: Path) -> str:
    """The imet version and source commit a source dataset's MANIFEST.json names."""
    manifest = read_json_object(folder / "MANIFEST.json") or {}
    imet = next((p.get("version") for p in manifest.get("packages", [])
                 if p.get("name") == "imet"), None)
    commit = str((manifest.get("source") or {}).get("git_commit") or "")[:12]
    return f"imet {imet or '?'}" + (f" of {commit}" if commit else "")


def find_source_dataset(root: Path) -> Path:
    """The imet source dataset (the folder holding MANIFEST.json and the bootstrap); refused
    when two attached inputs hold different versions of it (which one the bootstrap installed
    would be chance)."""
    found = find_folders_with(root, "MANIFEST.json", "imet_bootstrap.py")
    if not found:
        raise NotAttached(f"the imet source dataset is not attached: no MANIFEST.json with "
                          f"imet_bootstrap.py under {root} ({searched(root)}); build it with "
                          "`python packaging/build_dataset.py`, upload it and add it to "
                          "dataset_sources")
    versions = {(folder / "MANIFEST.json").read_bytes(): folder for folder in reversed(found)}
    if len(versions) > 1:
        named = [f"{_named(input_of(f, root), root)} ({_dataset_version(f)})"
                 for f in sorted(versions.values(), key=found.index)]
        raise UserError(f"the imet source dataset is attached in {len(named)} versions: "
                        f"{' and '.join(named)} ({searched(root)}); attach one version of "
                        "imet-src in dataset_sources")
    return found[0]


def refuse_two_source_versions() -> None:
    """A session's check of its source datasets: two versions attached are refused before
    anything is written; none attached is the bootstrap's to say (and the in-process sessions
    of the tests run the tree's imet)."""
    with suppress(NotAttached):
        find_source_dataset(input_root())


def _run_of(folder: Path) -> tuple[set[str], str | None]:
    """(the kernels a run output's run.json names, its run's fingerprint)."""
    run = read_json_object(folder / RUN_JSON) or {}
    kernels = {s.get("kernel") for s in run.get("sessions", []) if isinstance(s, dict)}
    return kernels - {None, ""}, run.get("config_hash")


def find_previous_output(root: Path | None = None, kernel: str | None = None,
                         fingerprint: str | None = None) -> list[Path]:
    """Earlier sessions' outputs of a run: folders with a handover note, else with a run.json.
    With `kernel` (this kernel's id), only its own: an output whose run.json names only other
    kernels is another run's (an --init model, say), never resumed nor carried; one handing
    over looks like this run's previous output and is refused, naming both runs' fingerprints
    (`fingerprint`: this run's, where the caller knows it)."""
    root = input_root() if root is None else root
    found = find_folders_with(root, HANDOVER) or find_folders_with(root, RUN_JSON)
    if kernel is None:
        return found
    own = [folder for folder in found if not (kernels := _run_of(folder)[0]) or kernel in kernels]
    foreign = [folder for folder in found if folder not in own and (folder / HANDOVER).is_file()]
    if foreign and not own:
        kernels, theirs = _run_of(foreign[0])
        raise UserError(
            f"{_named(input_of(foreign[0], root), root)} holds the output of another kernel's "
            f"run handing over ({', '.join(sorted(kernels))}: run {theirs or '?'}), not of this "
            f"kernel {kernel} (run {fingerprint or '?'}) ({searched(root)}); attach this "
            "kernel's own output in kernel_sources, not another's")
    return own


def find_extra_sets(root: Path | None = None) -> list[Path]:
    """Extra training sets under root as `imet pseudo-label` writes them: labels.csv, train/
    and train.csv or soft_targets.npz, without the competition's sample_submission.csv."""
    from imet.data.labels import SOFT_TARGETS
    return _find(input_root() if root is None else root,
                 lambda files, subfolders: "labels.csv" in files and "train" in subfolders
                 and "sample_submission.csv" not in files
                 and ("train.csv" in files or SOFT_TARGETS in files))


# `imet doctor`: the torch build, every GPU (proved by a real operation, see probe), free disk
# against the run's checkpoints, the inputs and Telegram; one line per problem that would stop
# the session, so a kernel stops in its first minute instead of after hours.

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
    kernel_id: str | None = None  # owner/slug: only its own outputs are the previous output
    fingerprint: str | None = None  # the run's, named when another run's output is refused


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def add(self, name: str, value: object) -> None:
        self.lines.append(f"{name + ':':<18}{value}")


def doctor_flags(kernel_args: list[str], default_arch: str | None = None) -> list[str]:
    """The doctor flags (arch, keep, weights, device; --notify auto unless set) that `imet
    train`'s parser reads in a kernel's arguments (validate and predict share its --device)."""
    known, _ = train_parser().parse_known_args(kernel_args)
    arch = known.arch or default_arch
    notify = "auto" if known.notify is None else known.notify
    flags = [f"--notify={notify}"] + ([f"--arch={arch}"] if arch else [])
    flags += [f"--keep={known.keep}"] if known.keep is not None else []
    if known.pretrained is not None:
        flags.append("--pretrained" if known.pretrained else "--no-pretrained")
    return flags + ([f"--device={known.device}"] if known.device else [])


def checkpoint_bytes(arch: str, num_classes: int) -> tuple[int, int]:
    """(parameter count, bytes of one training-state file) of `arch`, built without weights
    on the meta device: fp32 weights and buffers plus AdamW's two moments per parameter."""
    from imet.models.net import build_model
    with torch.device("meta"):
        model = build_model(arch, num_classes, pretrained=False)
    params = sum(p.numel() for p in model.parameters())
    buffers = sum(b.numel() for b in model.buffers())
    return params, 4 * (3 * params + buffers)


def disk_need(arch: str, num_classes: int, keep: int | None = None) -> tuple[int, int]:
    """(parameters, bytes the run needs at the peak of a save): `keep` generations (default:
    imet train's) plus the one being written, and the best model file."""
    keep = TrainConfig.keep if keep is None else keep
    params, state = checkpoint_bytes(arch, num_classes)
    return params, (keep + 1) * state + 4 * params + DISK_MARGIN_BYTES


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def _check_gpus(s: Settings, report: Report) -> None:
    report.add("python", platform.python_version())
    report.add("torch", torch.__version__)
    report.add("cuda build", torch.version.cuda or "none (CPU-only build)")
    report.add("arch list", " ".join(torch.cuda.get_arch_list()) or "-")
    available, driver = cuda_available()
    gpus = [inspect(i) for i in range(torch.cuda.device_count())] if available else []
    for g in gpus:
        report.add(f"GPU {g.index}", f"{g.name}, {g.sm}, {g.memory_gib:.1f} GiB, kernels "
                   f"{'yes' if g.kernels else 'NO'}, fp16 autocast {g.fp16}, bf16 {g.bf16}")
    if not gpus:
        report.add("GPU", "no GPU" + (f" ({driver})" if driver else ""))
    asked = s.accelerator
    if asked is not None:
        shape = runs_on(asked)
        report.add("accelerator", asked + (f" (runs on {shape})" if shape != asked else ""))
        if shape in TPUS:
            report.problems.append(f"asked for {asked}, a TPU: imet trains on CUDA GPUs or the "
                                   "CPU; render with --accelerator NvidiaTeslaT4 or none")
    asked_gpu = asked is not None and wants_gpu(asked)
    if s.device.startswith("cuda"):
        report.problems.extend(filter(None, [device_problem(s.device)]))
    elif asked_gpu and not gpus:
        report.problems.append(driver or no_gpu_line(asked))
    elif s.device == "auto":
        # auto trains on every GPU torch sees (torchrun: one per process)
        report.problems.extend(filter(None, (g.problem() for g in gpus)))


def _check_inputs(s: Settings, report: Report) -> int:
    """Reports the folder found for each kind of input, or where it was searched; returns the
    label count (for the checkpoint estimate)."""
    roots, data = s.input_roots, None
    try:
        data = find_competition_data(s.data) if s.data else _first(find_competition_data, roots)
        report.add("competition data", data)
    except UserError as err:
        report.problems.append(str(err))
    try:
        report.add("source dataset", _first(find_source_dataset, roots))
    except NotAttached:
        report.add("source dataset", "not attached (" + _searched_all(roots) + ")")
    except UserError as err:
        report.problems.append(str(err))
    # The run's own folder, not what lies below it: `imet doctor` in a checkout would list
    # every run under it (demo/, runs/) as this run's past.
    own = [s.out] if any((s.out / name).is_file() for name in (HANDOVER, "run.json")) else []
    try:
        earlier = own + [p for root in roots
                         for p in find_previous_output(root, s.kernel_id, s.fingerprint)]
        report.add("previous output", ", ".join(map(str, earlier[:3])) or
                   "none, a new run (" + _searched_all(roots) + ")")
    except UserError as err:
        report.problems.append(str(err))
    if data is None:
        return DEFAULT_CLASSES
    try:
        return read_labels(find_layout(data, train=False, test=False).labels_csv).num_classes \
            or DEFAULT_CLASSES
    except UserError as err:
        report.problems.append(str(err))
        return DEFAULT_CLASSES


def _searched_all(roots: list[Path]) -> str:
    return "; ".join(searched(root) for root in roots) or "no --input-root searched"


def _first(find, roots: list[Path]):
    """The first root's answer of `find`; the last root's error when none has it (a refusal of
    what a root holds is not passed over)."""
    error = NotAttached("no --data and no --input-root to search for the competition data; pass "
                        "--data DIR (on Kaggle: attach the competition, e.g. imet-2019-fgvc6)")
    for root in roots:
        try:
            return find(root)
        except NotAttached as err:
            error = err
    raise error


def _check_run(s: Settings, num_classes: int, report: Report) -> None:
    if not s.arch:
        return
    try:
        params, need = disk_need(s.arch, num_classes, s.keep)
    except UserError as err:  # names --arch itself
        report.problems.append(str(err))
        return
    except ValueError as err:
        report.problems.append(f"--arch {s.arch}: {err}")
        return
    folder = s.out.resolve()
    while not folder.exists():
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    report.add("disk", f"{_gib(free)} free in {folder}; {s.arch} ({params / 1e6:.1f}M "
               f"parameters) needs {_gib(need)} for its checkpoints")
    if free < need:
        report.problems.append(f"{folder}: {_gib(free)} free, but {s.arch}'s "
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
            report.add("weights", f"not found ({_searched_all(s.input_roots)}); downloaded "
                       f"from {urls[0]} at the start")
        else:
            report.problems.append(f"{err} ({_searched_all(s.input_roots)})")


def _check_telegram(s: Settings, report: Report) -> None:
    """What `imet train` would say in its first lines (--notify auto)."""
    from imet.observe.telegram import telegram_status
    report.add("telegram", telegram_status("auto", input_roots=s.input_roots).line())


def diagnose(s: Settings) -> Report:
    report = Report()
    _check_gpus(s, report)
    num_classes = _check_inputs(s, report)
    _check_run(s, num_classes, report)
    _check_telegram(s, report)
    return report


def send_crash(problems: list[str], mode: str, kernel: str | None,
               input_roots: list[Path] | None = None) -> bool:
    """The problems as a Telegram crash message (when configured and not off)."""
    from imet.observe.telegram import build_notifier
    from imet.train.events import Failure
    if (notifier := build_notifier(mode, input_roots=input_roots or ())) is None:
        return False
    try:
        notifier(Failure(error="imet doctor stopped the session: " + " | ".join(problems),
                         run_name=f"imet {kernel or 'doctor'}"))
    finally:
        notifier.close()
    return True


# Can this torch use this session's GPUs? Asked of the devices: `is_available()` says yes on a
# GPU the build has no kernels for (the first real operation fails), and no, with a warning,
# when the driver is older than the build needs. The probe: a small fp16 (and bf16) conv plus
# matmul under autocast against fp32, the operations a training step starts with.

# Allowed error as a fraction of the fp32 result's largest value: fp16 keeps ~3 decimal digits,
# bf16 ~2; a wrong kernel is off by far more.
PROBE_TOLERANCE = {torch.float16: 0.01, torch.bfloat16: 0.05}


def has_kernels(capability: tuple[int, int], arch_list: list[str]) -> bool:
    """Whether a build for `arch_list` runs on a device of `capability`: machine code (sm_XY)
    of the same major and a minor not above it, or PTX (compute_XY, compiled by the driver) of
    a version not above it."""
    for arch in arch_list:
        kind, _, version = arch.partition("_")
        built = (int(version[:-1]), int(version[-1])) if version.isdigit() else None
        if built and (kind == "sm" and built[0] == capability[0] and built[1] <= capability[1]
                      or kind == "compute" and built <= capability):
            return True
    return False


def probe(device: torch.device, dtype: torch.dtype) -> None:
    """A small conv + matmul under autocast in `dtype`; RuntimeError when the device cannot
    run them or computes nonsense."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(2, 8, 16, 16, generator=generator).to(device)
    kernel = torch.randn(16, 8, 3, 3, generator=generator).to(device)
    matrix = torch.randn(4096, 32, generator=generator).to(device)
    with torch.autocast(device.type, dtype=dtype):
        features = F.conv2d(images, kernel, padding=1)
        out = features.flatten(1) @ matrix
    if features.dtype != dtype or out.dtype != dtype:
        raise RuntimeError(f"autocast computed {out.dtype}, not {dtype}")
    reference = F.conv2d(images, kernel, padding=1).flatten(1) @ matrix
    # .item() waits for the device: a missing kernel or a launch failure surfaces here.
    error = (out.float() - reference).abs().max().item()
    scale = reference.abs().max().item()
    if not error <= PROBE_TOLERANCE[dtype] * scale:
        raise RuntimeError(f"{dtype} result off by {error:.3g} (fp32 values up to {scale:.3g})")


def try_probe(device: torch.device, dtype: torch.dtype) -> str:
    """'ok', or 'failed: <the error's first line>'."""
    try:
        probe(device, dtype)
    except Exception as err:  # any failure of the device is the answer, not a crash of doctor
        return f"failed: {type(err).__name__}: {(str(err).strip().splitlines() or [''])[0]}"
    return "ok"


@dataclass
class Gpu:
    index: int
    name: str
    capability: tuple[int, int]
    memory_gib: float
    kernels: bool
    fp16: str
    bf16: str  # "ok", "failed: …" or "not supported"

    @property
    def sm(self) -> str:
        return f"sm_{self.capability[0]}{self.capability[1]}"

    def problem(self) -> str | None:
        """One line when this torch cannot train on the GPU, else None."""
        if not self.kernels:
            return (f"GPU {self.index} {self.name} ({self.sm}): torch {torch.__version__} has no "
                    f"kernels for it (built for {' '.join(torch.cuda.get_arch_list())}): ask "
                    "for a GPU it supports (machine_shape NvidiaTeslaT4) or bundle a torch "
                    f"built for {self.sm}")
        if self.fp16 != "ok":
            return (f"GPU {self.index} {self.name} ({self.sm}): a fp16 conv+matmul under "
                    f"autocast {self.fp16}: this torch cannot train on it")
        return None


def inspect(index: int) -> Gpu:
    device = torch.device("cuda", index)
    props = torch.cuda.get_device_properties(device)
    capability = (props.major, props.minor)
    kernels = has_kernels(capability, torch.cuda.get_arch_list())
    fp16 = try_probe(device, torch.float16)
    # older devices would only emulate bf16
    bf16 = try_probe(device, torch.bfloat16) if fast_bf16(capability) else "not supported"
    return Gpu(index, props.name, capability, props.total_memory / 2**30, kernels, fp16, bf16)


def nvidia_device_nodes() -> bool:
    """Whether the machine has an NVIDIA GPU, usable or not; asks no driver (costs nothing)."""
    return any(Path("/dev").glob("nvidia[0-9]*"))


def cuda_available() -> tuple[bool, str | None]:
    """(torch sees a GPU, why not when the machine has one torch cannot use); torch reports a
    driver older than the build as a warning, then is_available() is False."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        available = torch.cuda.is_available()
    if available or not (nvidia_device_nodes() and torch.version.cuda):
        return available, None
    said = (" ".join(" ".join(str(w.message) for w in caught).split()) if caught
            else "torch.cuda.is_available() is False")
    return False, (f"this session has an NVIDIA GPU that torch {torch.__version__} (built for "
                   f"CUDA {torch.version.cuda}) cannot use: {said[:300]}; use the image's "
                   "torch (build the dataset without --include-torch) or a torch built for "
                   "this driver")


def no_gpu_line(asked: str) -> str:
    return (f"asked for a GPU ({asked}) but this session has none (no CUDA device is visible; "
            "is the weekly GPU quota used up?): stopping rather than train on the CPU; render "
            "with --accelerator none to train on the CPU on purpose")


def device_problem(name: str) -> str | None:
    """One line when `imet train --device NAME` cannot train on that device, else None. Under
    torchrun `cuda` means the process's own GPU (LOCAL_RANK), as in the engine."""
    if name == "cpu":
        return None
    available, driver = cuda_available()
    if name == "auto" and not available:
        return driver
    try:
        device = torch.device("cuda" if name == "auto" else name)
    except RuntimeError:
        return None  # not a device name at all: the engine's resolver says so
    if device.type != "cuda":
        return None
    if not available:
        return driver or f"--device {name}: no CUDA GPU is visible; use --device cpu or auto"
    count = torch.cuda.device_count()
    index = device.index if device.index is not None else int(os.environ.get("LOCAL_RANK", 0))
    if index >= count:
        return (f"--device {name}: this machine has {count} GPU{'s' if count != 1 else ''} "
                f"(cuda:0{f' to cuda:{count - 1}' if count > 1 else ''}); pick one of them "
                "or --device auto")
    return inspect(index).problem()


# A kernel's shell steps run through delegator.py: its blocking mode returns output only when a
# command ends (a 12-hour training silent in the log, and all lost if the session is killed),
# so steps run in its pexpect mode with every byte echoed as it arrives.

def run_step(argv: list[str], env: dict[str, str] | None = None, cwd: str | None = None) -> int:
    """Run argv, echo its output (stderr merged) live, return its exit status."""
    print(f"$ {shlex.join(argv)}", flush=True)
    command = delegator.run(argv, block=False, env=env, cwd=cwd)
    command.subprocess.logfile_read = sys.stdout  # pexpect writes and flushes each chunk
    command.subprocess.expect(pexpect.EOF, timeout=None)
    command.block()
    status = command.return_code
    return status if status is not None else 128 + (command.subprocess.signalstatus or 0)


# What each kernel does in one session (so the scripts stay short): find its inputs, run the
# imet commands as shell steps, leave its outputs in the working folder; a missing input is one
# line naming it and exit code 2.

# Never carried from a previous session's output: the engine copies the checkpoint it resumes
# from and the best model itself (imet/train/checkpoint.py); the handover note belongs to the
# session that wrote it; image caches (at any depth, see is_cache) would be gigabytes a session.
NOT_CARRIED = ("checkpoints", MODEL_FILE, HANDOVER)


def _imet(*args: object) -> list[str]:
    return [sys.executable, "-m", "imet", *map(str, args)]


def train_launcher(gpus: int) -> list[str]:
    """`python -m imet` on one GPU or none; torchrun with one process per GPU (Kaggle's T4 x2)."""
    if gpus <= 1:
        return _imet()
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc_per_node", str(gpus), "-m", "imet"]


def _seconds_left(started: float, session_limit: str) -> float:
    return parse_duration(session_limit, "session limit") - (time.time() - started)


def _carry_previous_output(previous: Path, work: Path) -> None:
    """Bring the previous session's files (metrics, plots, registry) forward: this session's
    output is the whole run."""
    def caches(folder, names):
        return [name for name in names if is_cache(Path(folder) / name)]
    for item in previous.iterdir():
        if item.name in NOT_CARRIED or (work / item.name).exists() or is_cache(item):
            continue
        if item.is_dir():
            shutil.copytree(item, work / item.name, ignore=caches)
        else:
            shutil.copy2(item, work / item.name)


def doctor(kernel: str, data: Path, accelerator: str | None, kernel_args: list[str],
           arch: str | None = None, kernel_id: str | None = None) -> int:
    """`imet doctor` as a session's first step, in its own process (CUDA stays out of the
    kernel's): non-zero when the session cannot do its job. `arch`: when the args name none.
    `kernel_id`: a trainer's, whose previous output must be its own run's."""
    asked = ["--accelerator", accelerator] if accelerator is not None else []
    run = ["--kernel-id", kernel_id, "--train-args", shlex.join(kernel_args)] if kernel_id else []
    return run_step(_imet("doctor", "--data", data, "--input-root", input_root(), "--out",
                          working_dir(), "--kernel", kernel, *asked, *run,
                          *doctor_flags(kernel_args, arch)))


def with_extra_found(train_args: list[str]) -> list[str]:
    """`train_args` with `--extra auto` replaced by the one extra training set attached;
    UserError when there is none, or several."""
    if not asks_extra_auto(train_args):
        return train_args
    found = find_extra_sets(input_root())
    if len(found) != 1:
        what = (f"{len(found)} of them ({found[0]}, {found[1]})" if found else "none")
        raise UserError(f"--extra {EXTRA_AUTO}: needs one extra training set under "
                        f"{input_root()} (a folder with labels.csv, train/ and train.csv or "
                        f"soft_targets.npz, as `imet pseudo-label` writes it), found {what}; "
                        "attach the inference kernel whose pseudo_label_args made it "
                        "(kernel_sources), or pass --extra with the folder")
    print(f"extra training set (--extra {EXTRA_AUTO}): {found[0]}", flush=True)
    return [*without_settings(train_args, ["extra"]), "--extra", str(found[0])]


def trainer(started: float, session_limit: str, train_args: list[str], n_folds: int = 5,
            accelerator: str | None = None, kernel: str | None = None) -> int:
    if kernel:  # this process is the kernel's: the training it starts inherits it
        os.environ[KERNEL_ENV] = kernel
    data = find_competition_data()
    refuse_two_source_versions()
    if code := doctor("trainer", data, accelerator, train_args, TrainConfig.arch, kernel):
        return code
    train_args = with_extra_found(train_args)
    work = working_dir()
    previous = find_previous_output(input_root(), kernel)
    if previous:
        print(f"resuming from the attached output {previous[0]}", flush=True)
        _carry_previous_output(previous[0], work)
    folds = work / "folds.csv"
    if not folds.exists() and (code := run_step(_imet("folds", "--data", data, "--n-folds",
                                                      n_folds, "--out", folds))):
        return code
    cache = prepare(data, train_args, _seconds_left(started, session_limit), work,
                    kaggle_root() / "temp", input_root(), _imet(), resumed=bool(previous))
    if cache is not None:  # this process is the kernel's: the training it starts inherits it
        os.environ[CACHE_ENV] = str(cache)
    # before the budget: it may ask the driver; not at all without an NVIDIA device node
    launcher = train_launcher(torch.cuda.device_count() if nvidia_device_nodes() else 0)
    left = _seconds_left(started, session_limit)
    code = run_step([*launcher, *map(str, ("train", "--data", data, "--folds", folds,
                                           "--out", work, "--time-budget", f"{left:.0f}",
                                           "--resume", "auto", "--input-root", input_root(),
                                           *train_args))])
    # torchrun reports any worker's non-zero exit (75 included) as its own failure (1): the
    # handover note, removed at the start of every training session, tells a handover apart.
    if code and launcher != _imet() and (work / HANDOVER).is_file():
        code = HANDED_OVER
    if code == HANDED_OVER:
        print(f"session ended with a handover ({work / HANDOVER}): push this kernel again; "
              "its own output is attached through kernel_sources", flush=True)
        return 0
    return code


def validation(started: float, session_limit: str, validate_args: list[str],
               accelerator: str | None = None) -> int:
    data = find_competition_data()
    refuse_two_source_versions()
    if code := doctor("validation", data, accelerator, validate_args):
        return code
    runs = _runs()
    folds = find_folders_with(input_root(), "folds.csv")
    if not folds:
        raise NotAttached(f"no folds.csv under {input_root()} ({searched(input_root())}): "
                          "attach the trainer kernel's output (kernel_sources)")
    left = _seconds_left(started, session_limit)
    return run_step(_imet("validate", "--data", data, "--folds", folds[0] / "folds.csv",
                          "--run", *runs, "--out", working_dir(), "--time-limit", f"{left:.0f}",
                          *validate_args))


def inference(started: float, session_limit: str, predict_args: list[str],
              accelerator: str | None = None, pseudo_label_args: list[str] | None = None) -> int:
    """submission.csv; with `pseudo_label_args` (a list, empty included) also the confident
    test images as an extra training set in working/pseudo/ (for `--extra auto`), from the
    probabilities the prediction saved (no second inference)."""
    data = find_competition_data()
    refuse_two_source_versions()
    if code := doctor("inference", data, accelerator, predict_args):
        return code
    runs = _runs()
    work = working_dir()
    thresholds = find_folders_with(input_root(), "thresholds.json")
    extra = ["--thresholds", thresholds[0] / "thresholds.json"] if thresholds else []
    code = run_step(_imet("predict", "--data", data, "--runs", *runs,
                          "--out", work / "submission.csv", "--probs-dir", work / "probs",
                          "--time-budget", f"{inference_budget(data, started, session_limit):.0f}",
                          *extra, *predict_args))
    if code or pseudo_label_args is None:
        return code
    # One file per run (named by the run); ENSEMBLE_PROBS is predict's own combination, which
    # pseudo-label makes again with its --ensemble (default mean: probabilities, not ranks).
    members = [path for path in sorted((work / "probs").glob("*.npz"))
               if path.name != ENSEMBLE_PROBS]
    return run_step(_imet("pseudo-label", "--data", data, "--runs", *members,
                          "--out", work / PSEUDO_DIR, *pseudo_label_args))


def inference_budget(data: Path, started: float, session_limit: str) -> float:
    """Seconds the prediction may take: what is left of the session, or of the competition's
    limit for a submission kernel (SUBMISSION_LIMIT_S), whichever ends first."""
    layout = find_layout(data, train=False)
    slug = competition_of(layout, read_labels(layout.labels_csv))[0]
    session_left = _seconds_left(started, session_limit)
    limit_left = SUBMISSION_LIMIT_S.get(slug, float("inf")) - (time.time() - started)
    bound = "the session's" if session_left <= limit_left else f"{slug}'s submission"
    print(f"inference: predicting within {min(session_left, limit_left):.0f}s, what is left of "
          f"{bound} limit", flush=True)
    return max(1.0, min(session_left, limit_left))


def _runs() -> list[Path]:
    runs = find_folders_with(input_root(), MODEL_FILE)
    if not runs:
        raise NotAttached(f"no trained model (model.pt) under {input_root()} "
                          f"({searched(input_root())}): attach the trainer kernel's output "
                          "(kernel_sources) or a dataset of runs")
    return runs


def main(kernel: str, session: Callable[..., int], *args) -> int:
    """Run one kernel session; user errors are one line, not a traceback."""
    try:
        return session(*args)
    except UserError as err:
        print(f"imet {kernel} kernel: error: {err}", file=sys.stderr, flush=True)
        return err.exit_code


# The decode-once image cache (`imet cache`) in a Kaggle training run: an attached one is used as
# it is; else the trainer builds one in /kaggle/temp, which no session carries forward (under
# working/ it would be 4.8 GB copied into every next session), so the build is paid once per
# session and pays back only when the session runs enough epochs.
#
# Figures per 1,000 images on one core (benchmarks/README.md, bench_cache_payback.py): building
# costs BUILD_S; the loader needs PNG_EPOCH_S per epoch from the PNGs and SAVED_S less from the
# cache. Both divide by the same cores, so the build pays back after BUILD_S / SAVED_S (~1.8)
# epochs of a session at any data size, while the loader sets the pace (where the GPU does, the
# cache saves less, and the build costs minutes of a 12-hour session).
#
# The choice is made in the run's first session and written to CHOICE (carried with the run): a
# JPEG cache changes the pixels, and a resumed run must read the images it started with.

BUILD_S = 5.1        # cache build, seconds per 1,000 images (JPEG q95, short side 320)
PNG_EPOCH_S = 4.1    # loader, seconds per epoch per 1,000 images, from the PNGs
SAVED_S = 2.8        # ... and that much less from the cache
PAYBACK_EPOCHS = BUILD_S / SAVED_S
CHOICE = "image-cache.json"
FOLDER = "imet-cache"


def is_cache(folder: Path) -> bool:
    """A cache folder (its manifest): what the sessions never carry forward."""
    try:
        return folder.is_dir() and read_manifest(folder) is not None
    except DataError:  # a damaged manifest is still a cache, and still not carried
        return True


def run_settings(train_args: list[str]) -> tuple[int, int, int]:
    """(image size, epochs, loader workers) of the run the kernel's arguments describe."""
    known, _ = train_parser().parse_known_args(train_args)
    values = {k.replace("-", "_"): v for k, v in given_settings(known).items()}
    picked = {name: values.get(name, getattr(TrainConfig, name))
              for name in ("image_size", "epochs", "num_workers")}
    # "auto" workers: the machine's CPUs, which the session's processes share between them
    workers = TrainConfig(num_workers=picked["num_workers"]).worker_count(os.cpu_count() or 1, 1)
    return int(picked["image_size"]), int(picked["epochs"]), workers


def should_build(epochs: int, images: int, workers: int, seconds_left: float) -> tuple[bool, str]:
    """(whether a cache built now pays back in this session, why): it runs the fewer of the
    epochs left and those that fit, at PNG_EPOCH_S per 1,000 images per loader process."""
    per_epoch = max(images, 1) / 1000 * PNG_EPOCH_S / max(workers, 1)
    fit = max(seconds_left, 0) / per_epoch
    session = min(epochs, fit)
    why = (f"{epochs} epochs to run; the {seconds_left / 60:.0f} min left hold ~{fit:.{1 if fit < 10 else 0}f} epochs "
           f"of {images} images read from the PNGs by {workers} loader worker"
           f"{'s' if workers != 1 else ''}, so ~{session:.1f} run this session, and "
           f"{PAYBACK_EPOCHS:.1f} pay back the build (benchmarks/README.md)")
    return session >= PAYBACK_EPOCHS, why


def prepare(data: Path, train_args: list[str], seconds_left: float, work: Path, temp: Path,
            input_root: Path, python_m_imet: list[str], resumed: bool = False) -> Path | None:
    """The cache folder built in `temp` (for $IMET_CACHE_DIR) when the run chose one, else None
    (an attached cache the training finds itself). `resumed` without a saved choice: an older
    imet's session read the PNGs, and so does the rest."""
    size, epochs, workers = run_settings(train_args)
    attached = find_cache(size, [input_root])
    if attached is not None:
        print(f"image cache: using the attached {attached.cache_dir}", flush=True)
        return None
    choice_file = work / CHOICE
    if choice_file.is_file():
        choice = json.loads(choice_file.read_text())
        print(f"image cache: the run chose in its first session to "
              f"{'build' if choice['build'] else 'not build'} one ({choice['why']})", flush=True)
    elif resumed:
        choice = {"build": False, "size": size, "why": "the run's earlier sessions read the PNGs"}
        print(f"image cache: not building one: {choice['why']}", flush=True)
    else:
        with open(find_layout(data, test=False).train_csv, "rb") as f:
            images = max(sum(1 for _ in f) - 1, 0)
        build, why = should_build(epochs, images, workers, seconds_left)
        choice = {"build": build, "size": size, "why": why}
        atomic_write_text(choice_file, json.dumps(choice, indent=1) + "\n")
        print(f"image cache: {'building' if build else 'not building'} one: {why}", flush=True)
    if not choice["build"]:
        return None
    cache = temp / f"{FOLDER}-{size}"
    temp.mkdir(parents=True, exist_ok=True)
    code = run_step([*python_m_imet, "cache", "--data", str(data), "--size", str(size),
                     "--out", str(cache), "--split", "train", "--workers",
                     str(os.cpu_count() or 1), "--no-progress"])
    if code:
        print(f"image cache: the build ended with exit code {code}; the images it could not "
              "cache are read from the PNGs", flush=True)
    return cache
