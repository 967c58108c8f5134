"""The set of push-ready kernels of a run: one trainer kernel per member (fold or model), each
with its own slug and so its own output, and the validation and inference kernels with every
trainer output attached.

    dist/kernels/trainer-f0 … trainer-f4   <owner>/imet-trainer-f0 …, each its own output
                                            (and the inference's, with --extra auto)
    dist/kernels/validation                 kernel_sources: every trainer
    dist/kernels/inference                  kernel_sources: every trainer and the validation
"""
from __future__ import annotations

from pathlib import Path

from imet.errors import UserError
from imet.kaggle.metadata import OWNER, prepare, read_metadata, read_setting
from imet.kaggle.paths import asks_extra_auto
from imet.kaggle.rendered import check_untouched, write_rendered
from imet.kaggle.settings import MEMBER_FLAGS, Member, Settings, without_flags

TRAINER, VALIDATION, INFERENCE = "trainer", "validation", "inference"
# The settings line of each kernel script that holds its command's arguments.
ARGS_SETTING = {TRAINER: ("DEFAULT_TRAIN_ARGS", "train_args"),
                VALIDATION: ("DEFAULT_VALIDATE_ARGS", "validate_args"),
                INFERENCE: ("DEFAULT_PREDICT_ARGS", "predict_args")}
# The datasets' slugs where the settings name none: what packaging/build_dataset.py and
# `imet weights fetch` (models/fetch.py, which imports torch) call them.
SRC_DATASET, WEIGHTS_DATASET = "imet-src", "imet-weights"
# The inference kernel's settings line of its pseudo-label step (issue 19; None: off).
PSEUDO_LABEL_SETTING = "PSEUDO_LABEL_ARGS"


def trainer_folder(member: str) -> str:
    return f"{TRAINER}-{member}"


def trainer_slug(member: str) -> str:
    return f"imet-{TRAINER}-{member}"


def templates_in(kernels: Path) -> dict[str, Path]:
    found = {p.parent.name: p.parent for p in sorted(Path(kernels).glob("*/kernel-metadata.json"))}
    if TRAINER not in found:
        raise UserError(f"{kernels}: no trainer kernel template (trainer/kernel-metadata.json)")
    return found


def _script(template: Path) -> tuple[Path, str]:
    path = template / read_metadata(template)["code_file"]
    return path, path.read_text(encoding="utf-8")


def members_of(settings: Settings, trainer: Path) -> list[Member]:
    """The settings' members, or one per fold the template's trainer makes."""
    if settings.members:
        return settings.members
    path, code = _script(trainer)
    n_folds = settings.n_folds or read_setting(code, "N_FOLDS", path)
    return [Member(f"f{fold}", fold, ["--fold", str(fold)]) for fold in range(n_folds)]


def member_train_args(settings: Settings, member: Member, trainer: Path) -> list[str]:
    """The member's `imet train` flags: its fold, arch, image size and epochs, the shared flags
    (the settings' train_args, else the template's) less those, then the member's own args
    (the last of a flag given twice wins)."""
    path, code = _script(trainer)
    common = settings.train_args
    if common is None:
        common = read_setting(code, ARGS_SETTING[TRAINER][0], path)
    own = {flag for _, flag in MEMBER_FLAGS if flag in member.flags}
    return member.flags + without_flags(list(common), own) + member.args


def _dataset(owner: str, value: str | None, default: str) -> str:
    value = value or default
    return value if "/" in value else f"{owner}/{value}"


def plan_kernels(kernels: Path, owner: str, settings: Settings, accelerators: dict[str, str],
                 attach: list[str] | None = None, first_push: set[str] = frozenset(),
                 handover_datasets: dict[str, str] | None = None) -> dict[str, dict[str, str]]:
    """folder name -> files of every kernel. `attach`: the members whose outputs the other
    kernels get (default all); `first_push`: members whose kernel never ran, whose own output
    cannot be attached yet; `handover_datasets`: member -> the dataset that carries its
    checkpoint instead of its own output (where Kaggle refuses a kernel's own output)."""
    handover_datasets = handover_datasets or {}
    templates = templates_in(kernels)
    trainer = templates[TRAINER]
    trainer_id = read_metadata(trainer)["id"]
    members = members_of(settings, trainer)
    attach = [m.name for m in members] if attach is None else attach
    refs = [f"{OWNER}/{trainer_slug(name)}" for name in attach]
    common = {"dataset_sources": [_dataset(owner, settings.src_dataset, SRC_DATASET),
                                  _dataset(owner, settings.weights_dataset, WEIGHTS_DATASET)]}
    if settings.competition:
        common["competition_sources"] = [settings.competition]
    planned = {}
    for member in members:
        slug = trainer_slug(member.name)
        via = handover_datasets.get(member.name)
        own = [] if member.name in first_push or via else [f"{OWNER}/{slug}"]
        train_args = member_train_args(settings, member, trainer)
        if asks_extra_auto(train_args) and INFERENCE in templates:  # its pseudo-labels
            own = own + [read_metadata(templates[INFERENCE])["id"]]
        fields = {**common, "id": f"{OWNER}/{slug}", "title": slug, "kernel_sources": own}
        if via:
            fields["dataset_sources"] = common["dataset_sources"] + [via]
        settings_lines = {ARGS_SETTING[TRAINER][0]: train_args}
        if settings.n_folds is not None:
            settings_lines["N_FOLDS"] = settings.n_folds
        planned[trainer_folder(member.name)] = prepare(trainer, owner, accelerators.get(TRAINER),
                                                       settings_lines, fields)
    for name, template in templates.items():
        if name == TRAINER:
            continue
        meta = read_metadata(template)
        sources = []
        for ref in meta["kernel_sources"]:
            sources += refs if ref == trainer_id else [ref]
        lines = {}
        setting, key = ARGS_SETTING.get(name, (None, None))
        if setting and getattr(settings, key) is not None:
            lines[setting] = getattr(settings, key)
        if name == INFERENCE and settings.pseudo_label_args is not None:
            lines[PSEUDO_LABEL_SETTING] = settings.pseudo_label_args
        planned[name] = prepare(template, owner, accelerators.get(name), lines,
                                {**common, "kernel_sources": sources})
    return planned


def write_kernels(out: Path, planned: dict[str, dict[str, str]], force: bool = False) -> list[Path]:
    """Write every planned kernel folder under `out`; nothing is written when one of them was
    edited by hand since render wrote it (unless `force`)."""
    for folder, files in planned.items():
        check_untouched(Path(out) / folder, files, force)
    return [write_rendered(Path(out) / folder, files) for folder, files in planned.items()]
