"""`imet kaggle render`: push-ready kernel folders from the templates in kernels/, without
importing torch (campaigns and chains render too): accelerator names, the settings file, the
hand-edit manifest, metadata and settings lines, and a run's kernel set.

The run's settings that `render --config FILE` writes into the kernels are a TOML file the user
keeps, so that rendering again never puts the defaults back:

    owner = "you"                          # optional: render's --owner
    accelerator = "NvidiaTeslaT4"          # or a table: {trainer = "NvidiaL4", inference = "none"}
    competition = "imet-2019-fgvc6"        # default: the one whose files render --data DIR holds
    src_dataset = "you/imet-src"           # a bare slug is taken as the owner's
    weights_dataset = "you/imet-weights"
    n_folds = 5                            # the folds each trainer kernel makes
    train_args = ["--batch-size", "32"]    # every member's `imet train` flags
    validate_args = ["--tta", "none,hflip"]
    predict_args = ["--tta", "none,hflip", "--ensemble", "mean"]
    pseudo_label_args = ["--min-prob", "0.9"]   # optional: the inference kernel pseudo-labels too
    telegram = true                        # attach the private <owner>/imet-telegram (the bot's
                                           # token, `imet notify-setup`) to the kernels that send

    [[member]]                             # one trainer kernel each: imet-trainer-<name>
    name = "f0"                            # default f<fold>
    fold = 0
    arch = "timm:seresnext50_32x4d.racm_in1k"   # optional: --arch, --image-size, --epochs
    image_size = 320
    epochs = 20
    args = ["--lr", "3e-4"]                # more `imet train` flags of this member
                                           # ("--extra", "auto": the inference kernel's
                                           # pseudo-labels, its output attached)

Whatever the file leaves out is the template's: its DEFAULT_*_ARGS lines, one member per fold.
"""
from __future__ import annotations

import ast
import hashlib
import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from imet.config import close_match, flag_of, train_parser, without_settings
from imet.errors import UserError
from imet.fileio import atomic_write_text, read_json_object


# Kaggle's accelerator names (kernel-metadata.json `machine_shape`, `kaggle kernels push
# --accelerator`); every kernel asks for the default GPU ("GPU T4 x2") unless told otherwise.
DEFAULT = "NvidiaTeslaT4"
NONE = "none"
GPUS = {"NvidiaTeslaT4": "GPU T4 x2 (fp16 tensor cores, no fast bf16)",
        "NvidiaL4": "GPU L4", "NvidiaTeslaA100": "GPU A100", "NvidiaH100": "GPU H100"}
TPUS = {"TpuV5E8": "TPU v5e-8"}
# Accepted as the kaggle client accepts them (it warns and pushes the name unchanged); the
# server runs these sessions on the replacement.
RETIRED = {"NvidiaTeslaP100": "NvidiaTeslaT4", "TpuV38": "TpuV5E8", "Tpu1VmV38": "TpuV5E8"}


def known() -> list[str]:
    return [NONE, *GPUS, *TPUS, *RETIRED]


def canonical(name: str, where: str = "--accelerator") -> str:
    """The name as Kaggle spells it (matched without regard to case); an unknown name is one
    line naming `where` it was given (a flag, or a settings file and key) and the known ones."""
    names = {spelled.lower(): spelled for spelled in known()}
    if (lower := str(name).strip().lower()) in names:
        return names[lower]
    near = close_match(lower, names)
    hint = f"did you mean {names[near]}? " if near else ""
    raise UserError(f"{where} {name!r} is not a Kaggle accelerator; {hint}use one of "
                    f"{', '.join(known())}")


def retired_warning(name: str) -> str | None:
    """One line for a retired shape: what the server runs instead."""
    instead = RETIRED.get(name)
    return instead and (f"warning: {name} is retired: Kaggle runs the session on {instead} "
                        f"({GPUS.get(instead) or TPUS.get(instead)}) instead")


def runs_on(name: str) -> str:
    """The shape a session asking for `name` gets: a retired one's replacement, else itself."""
    return RETIRED.get(name, name)


def wants_gpu(name: str) -> bool:
    return runs_on(name) in GPUS


# `--extra auto` in a trainer's arguments: the session finds the extra set among its inputs.
EXTRA_AUTO = "auto"


def asks_extra_auto(train_args: list[str]) -> bool:
    """Whether `imet train` arguments say `--extra auto`, as its parser reads them."""
    return train_parser().parse_known_args(train_args)[0].extra == EXTRA_AUTO


KEYS = ("owner", "accelerator", "competition", "src_dataset", "weights_dataset", "n_folds",
        "train_args", "validate_args", "predict_args", "pseudo_label_args", "telegram", "member")
# The member keys that are `imet train` settings, in the order their flags are written.
MEMBER_SETTINGS = ("fold", "arch", "image_size", "epochs")
MEMBER_KEYS = ("name", *MEMBER_SETTINGS, "args")
NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,29}")


@dataclass
class Member:
    name: str
    fold: int
    settings: dict  # this member's fold, arch, image size and epochs (field name -> value)
    args: list[str] = field(default_factory=list)  # its other `imet train` flags


@dataclass
class Settings:
    source: str = "defaults"
    owner: str | None = None
    accelerator: dict[str, str] = field(default_factory=dict)  # kernel ("" = all) -> name
    competition: str | None = None
    src_dataset: str | None = None
    weights_dataset: str | None = None
    n_folds: int | None = None
    train_args: list[str] | None = None
    validate_args: list[str] | None = None
    predict_args: list[str] | None = None
    pseudo_label_args: list[str] | None = None  # None: the inference kernel writes none
    members: list[Member] | None = None  # None: one per fold of the template
    telegram: bool = False  # the kernels that send get the owner's imet-telegram dataset
    extra: dict = field(default_factory=dict)  # the keys a caller allowed beyond these


def _strings(value, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, (str, int, float)) for v in value):
        raise UserError(f"{where}: expected a list of strings such as [\"--lr\", \"3e-4\"]")
    return [str(v) for v in value]


def _unknown(table: dict, allowed, where: str) -> None:
    for key in table:
        if key not in allowed:
            raise UserError(f"{where}: unknown key {key!r}; the keys are {', '.join(allowed)}")


def _member(table, index: int, where: str) -> Member:
    where = f"{where}: member {index + 1}"
    if not isinstance(table, dict):
        raise UserError(f"{where}: expected a [[member]] table")
    _unknown(table, MEMBER_KEYS, where)
    fold = table.get("fold")
    if not isinstance(fold, int) or isinstance(fold, bool) or fold < 0:
        raise UserError(f"{where}: fold must be a whole number from 0 (got {fold!r})")
    name = str(table.get("name", f"f{fold}"))
    if not NAME.fullmatch(name):
        raise UserError(f"{where}: name {name!r} must be 1-30 lowercase letters, digits or "
                        "dashes (it becomes the kernel slug imet-trainer-<name>)")
    settings = {key: table[key] for key in MEMBER_SETTINGS if key in table}
    return Member(name, fold, settings, _strings(table.get("args", []), f"{where}: args"))


def parse(data: dict, source: str, allowed_extra: tuple[str, ...] = ()) -> Settings:
    _unknown(data, KEYS + allowed_extra, source)
    for key in ("owner", "competition", "src_dataset", "weights_dataset"):
        if key in data and not (isinstance(data[key], str) and data[key]):
            raise UserError(f"{source}: {key} must be a name in quotes (got {data[key]!r})")
    accelerator = data.get("accelerator", {})
    if isinstance(accelerator, str):
        accelerator = {"": accelerator}
    if not isinstance(accelerator, dict):
        raise UserError(f"{source}: accelerator must be a name or a table kernel = name")
    settings = Settings(source, data.get("owner"), accelerator, data.get("competition"),
                        data.get("src_dataset"), data.get("weights_dataset"), data.get("n_folds"),
                        *(_strings(data[key], f"{source}: {key}") if key in data else None
                          for key in ("train_args", "validate_args", "predict_args",
                                      "pseudo_label_args")),
                        extra={k: data[k] for k in allowed_extra if k in data})
    settings.telegram = data.get("telegram", False)
    if not isinstance(settings.telegram, bool):
        raise UserError(f"{source}: telegram must be true or false (got {settings.telegram!r})")
    if settings.n_folds is not None and (not isinstance(settings.n_folds, int)
                                         or settings.n_folds < 2):
        raise UserError(f"{source}: n_folds must be a whole number of at least 2")
    if "member" in data:
        if not isinstance(data["member"], list) or not data["member"]:
            raise UserError(f"{source}: member must be one or more [[member]] tables")
        settings.members = [_member(t, i, source) for i, t in enumerate(data["member"])]
        names = [m.name for m in settings.members]
        if twice := sorted({n for n in names if names.count(n) > 1}):
            raise UserError(f"{source}: two members are named {twice[0]!r}; give each its "
                            "own name")
    return settings


def load(path: Path | None, allowed_extra: tuple[str, ...] = ()) -> Settings:
    if path is None:
        return Settings()
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except OSError as err:
        raise UserError(f"{path}: cannot read it ({err.strerror})") from None
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"{path}: not valid TOML ({err})") from None
    return parse(data, str(path), allowed_extra)


# Beside the files render wrote, the sha256 of each as written: a later render never overwrites
# a hand edit.
MANIFEST = ".imet-rendered.json"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_untouched(out_dir: Path, files: dict[str, str], force: bool = False) -> None:
    """Refuse, in one line naming the file, to replace a file that differs from what render
    last wrote there (or, never written by render, from what it would write now)."""
    if force:
        return
    recorded = (read_json_object(Path(out_dir) / MANIFEST) or {}).get("files")
    recorded = recorded if isinstance(recorded, dict) else {}
    for name, text in files.items():
        path = Path(out_dir) / name
        if path.is_file() and (_sha256(path.read_bytes())
                               != recorded.get(name, _sha256(text.encode("utf-8")))):
            raise UserError(f"{path}: edited by hand since `imet kaggle render` wrote it; put "
                            "the change into the settings file (render --config FILE) and "
                            "render again, or pass --force to overwrite it")


def write_rendered(out_dir: Path, files: dict[str, str]) -> Path:
    out_dir = Path(out_dir)
    for name, text in files.items():
        atomic_write_text(out_dir / name, text)
    manifest = {"format": "imet-rendered", "version": 1,
                "files": {name: _sha256(text.encode("utf-8")) for name, text in files.items()}}
    atomic_write_text(out_dir / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return out_dir


REQUIRED = ("id", "title", "code_file", "language", "kernel_type", "enable_internet",
            "enable_gpu", "dataset_sources", "competition_sources", "kernel_sources")
OWNER = "{owner}"
# Kaggle gives a script no view of its metadata, so render (and the emulator) write its
# machine_shape and id (owner/slug, which run.json and the registry name) into these lines.
ACCELERATOR = "ACCELERATOR"
KERNEL_ID = "KERNEL"


def _setting_line(name: str) -> re.Pattern:
    """`NAME = <a Python literal>` on one line of a kernel script."""
    return re.compile(rf"^{re.escape(name)} = .*$", re.M)


def read_setting(code: str, name: str, where: object):
    """The literal value of the script's `NAME = …` line."""
    found = _setting_line(name).findall(code)
    if len(found) != 1:
        raise UserError(f"{where}: expected one line `{name} = …` in the kernel script, found "
                        f"{len(found)}")
    return ast.literal_eval(found[0].split(" = ", 1)[1])


def with_setting(code: str, name: str, value, where: object, required: bool = True) -> str:
    """The script with its `NAME = …` line holding `value`."""
    if required:
        read_setting(code, name, where)
    return _setting_line(name).sub(lambda _: f"{name} = {value!r}", code)


def read_metadata(kernel_dir: Path) -> dict:
    path = Path(kernel_dir) / "kernel-metadata.json"
    if not path.is_file():
        raise UserError(f"{path}: no kernel-metadata.json in the kernel folder {kernel_dir}")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not valid JSON (line {err.lineno}: {err.msg})") from None
    missing = [key for key in REQUIRED if key not in meta]
    if missing:
        raise UserError(f"{path}: missing field(s) {', '.join(missing)}; write them explicitly "
                        "(the kaggle client defaults enable_internet to true)")
    if not (Path(kernel_dir) / meta["code_file"]).is_file():
        raise UserError(f"{path}: code_file {meta['code_file']!r} does not exist in {kernel_dir}")
    return meta


def slug_of(ref: str) -> str:
    """'owner/name' -> 'name': the folder name an attached source gets under /kaggle/input."""
    return ref.rsplit("/", 1)[-1]


def requested_accelerator(meta: dict) -> str:
    """What a kernel's metadata asks for: its machine_shape; without one, the client's own
    default (enable_gpu: the default GPU), else none (a CPU)."""
    shape = meta.get("machine_shape")
    return canonical(shape) if shape else DEFAULT if meta.get("enable_gpu") else NONE


def with_accelerator(meta: dict, code: str, name: str) -> tuple[dict, str]:
    """The metadata and script asking for accelerator `name` (canonical): machine_shape ("" for
    `none`, the client's own CPU) and enable_gpu / enable_tpu agreeing with it."""
    meta = {**meta, "machine_shape": "" if name == NONE else name,
            "enable_gpu": wants_gpu(name), "enable_tpu": runs_on(name) in TPUS}
    return meta, with_setting(code, ACCELERATOR, name, meta.get("id"), required=False)


def with_kernel_id(meta: dict, code: str, owner: str) -> str:
    """The script with its KERNEL line (where it has one) naming the kernel's id."""
    kernel_id = meta["id"].replace(OWNER, owner)
    return with_setting(code, KERNEL_ID, kernel_id, kernel_id, required=False)


def prepare(kernel_dir: Path, owner: str, accelerator: str | None = None,
            settings: dict | None = None, fields: dict | None = None) -> dict[str, str]:
    """The files of a push-ready copy of a kernel folder (name -> text): `{owner}` replaced by
    a user name, asking for `accelerator` (default: what the template asks for), the script's
    settings lines holding `settings` (NAME -> value) and the metadata updated with `fields`."""
    if not owner or "/" in owner or OWNER in owner:
        raise UserError(f"--owner {owner!r} is not a Kaggle user name")
    meta = read_metadata(kernel_dir)
    name = canonical(accelerator) if accelerator else requested_accelerator(meta)
    script = Path(kernel_dir) / meta["code_file"]
    code = script.read_text(encoding="utf-8")
    meta, code = with_accelerator({**meta, **(fields or {})}, code, name)
    code = with_kernel_id(meta, code, owner)
    for setting, value in (settings or {}).items():
        code = with_setting(code, setting, value, script)
    text = json.dumps(meta, indent=2).replace(OWNER, owner)
    return {meta["code_file"]: code, "kernel-metadata.json": text + "\n"}


def render(kernel_dir: Path, owner: str, out_dir: Path, accelerator: str | None = None,
           force: bool = False) -> Path:
    """Write a push-ready copy of a kernel folder (`prepare`); a hand-edited one only if `force`."""
    files = prepare(kernel_dir, owner, accelerator)
    check_untouched(out_dir, files, force)
    return write_rendered(out_dir, files)


# A run's kernels: one trainer per member (its own slug, so its own output), and the
# validation and inference kernels with every trainer output attached.
#
#     dist/kernels/trainer-f0 … trainer-f4   <owner>/imet-trainer-f0 …, each its own output
#                                             (and the inference's, with --extra auto)
#     dist/kernels/validation                 kernel_sources: every trainer
#     dist/kernels/inference                  kernel_sources: every trainer and the validation

TRAINER, VALIDATION, INFERENCE = "trainer", "validation", "inference"
# The settings line of each kernel script that holds its command's arguments.
ARGS_SETTING = {TRAINER: ("DEFAULT_TRAIN_ARGS", "train_args"),
                VALIDATION: ("DEFAULT_VALIDATE_ARGS", "validate_args"),
                INFERENCE: ("DEFAULT_PREDICT_ARGS", "predict_args")}
# The datasets' slugs where the settings name none: what packaging/build_dataset.py and
# `imet weights fetch` call them.
SRC_DATASET, WEIGHTS_DATASET = "imet-src", "imet-weights"
# The inference kernel's settings line of its pseudo-label step (None: off).
PSEUDO_LABEL_SETTING = "PSEUDO_LABEL_ARGS"


def trainer_folder(member: str) -> str:
    return f"{TRAINER}-{member}"


def trainer_slug(member: str) -> str:
    return f"imet-{TRAINER}-{member}"


def member_of(kernel_id: str | None) -> str | None:
    """The member whose trainer kernel `kernel_id` (owner/imet-trainer-<member>) is; None for
    any other kernel."""
    slug, prefix = slug_of(kernel_id or ""), trainer_slug("")
    return slug[len(prefix):] or None if slug.startswith(prefix) else None


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
    return [Member(f"f{fold}", fold, {"fold": fold}) for fold in range(n_folds)]


def member_train_args(settings: Settings, member: Member, trainer: Path) -> list[str]:
    """The member's `imet train` flags: its fold, arch, image size and epochs, the shared flags
    (the settings' train_args, else the template's) less those, then the member's own args
    (the last of a flag given twice wins). What `imet train`'s parser refuses is refused here,
    in one line."""
    path, code = _script(trainer)
    common = settings.train_args
    if common is None:
        common = read_setting(code, ARGS_SETTING[TRAINER][0], path)
    own = [word for name, value in member.settings.items() for word in (flag_of(name), str(value))]
    args = own + without_settings(common, member.settings) + member.args
    where, parser = f"{settings.source}: member {member.name!r}", train_parser()
    try:
        _, unknown = parser.parse_known_args(args)
    except UserError as err:
        raise UserError(f"{where}: imet train: {err}") from None
    if unknown:
        raise parser.no_flag(where, unknown[0])
    return args


def _dataset(owner: str, value: str | None, default: str) -> str:
    value = value or default
    return value if "/" in value else f"{owner}/{value}"


def telegram_dataset(owner: str) -> str:
    """The owner's private dataset holding the bot's token (`imet notify-setup` writes it): a
    push drops a kernel's Kaggle Secrets, an attached dataset stays."""
    from imet.observe.telegram import DATASET
    return f"{owner}/{DATASET}"


def sends(meta: dict, args: list[str]) -> bool:
    """Whether a kernel reports to Telegram: its internet is on and its arguments, read by `imet
    train`'s parser as its doctor reads them, do not say --notify off. The validation kernel's
    doctor reports what stops it; the inference kernel runs offline."""
    return bool(meta.get("enable_internet")) and \
        train_parser().parse_known_args(args)[0].notify != "off"


def plan_kernels(kernels: Path, owner: str, settings: Settings, accelerators: dict[str, str],
                 attach: list[str] | None = None, first_push: set[str] = frozenset(),
                 handover_datasets: dict[str, str] | None = None) -> dict[str, dict[str, str]]:
    """folder name -> files of every kernel. `attach`: the members whose outputs the other
    kernels get (default all); `first_push`: members whose kernel never ran, whose own output
    cannot be attached yet; `handover_datasets`: member -> the dataset that carries its
    checkpoint instead of its own output (where Kaggle refuses a kernel's own output). With
    `settings.telegram`, every kernel that sends (`sends`) attaches `telegram_dataset`."""
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
    telegram = [telegram_dataset(owner)] if settings.telegram else []
    planned = {}
    for member in members:
        slug = trainer_slug(member.name)
        via = (handover_datasets or {}).get(member.name)
        own = [] if member.name in first_push or via else [f"{OWNER}/{slug}"]
        train_args = member_train_args(settings, member, trainer)
        if asks_extra_auto(train_args) and INFERENCE in templates:  # its pseudo-labels
            own = own + [read_metadata(templates[INFERENCE])["id"]]
        fields = {**common, "id": f"{OWNER}/{slug}", "title": slug, "kernel_sources": own}
        fields["dataset_sources"] = (common["dataset_sources"] + ([via] if via else [])
                                     + (telegram if sends(read_metadata(trainer), train_args)
                                        else []))
        settings_lines = {ARGS_SETTING[TRAINER][0]: train_args,
                          **({"N_FOLDS": settings.n_folds} if settings.n_folds is not None else {})}
        planned[trainer_folder(member.name)] = prepare(trainer, owner, accelerators.get(TRAINER),
                                                       settings_lines, fields)
    for name, template in templates.items():
        if name == TRAINER:
            continue
        sources = [src for ref in read_metadata(template)["kernel_sources"]
                   for src in (refs if ref == trainer_id else [ref])]
        lines = {}
        setting, key = ARGS_SETTING.get(name, (None, None))
        if setting and getattr(settings, key) is not None:
            lines[setting] = getattr(settings, key)
        if name == INFERENCE and settings.pseudo_label_args is not None:
            lines[PSEUDO_LABEL_SETTING] = settings.pseudo_label_args
        datasets = common["dataset_sources"]
        if telegram:
            path, code = _script(template)
            args = (lines[setting] if setting in lines else
                    read_setting(code, setting, path) if setting else [])
            datasets = datasets + (telegram if sends(read_metadata(template), args) else [])
        planned[name] = prepare(template, owner, accelerators.get(name), lines,
                                {**common, "dataset_sources": datasets, "kernel_sources": sources})
    return planned


def _unchanged(folder: Path) -> bool:
    """Whether the folder holds exactly the files render last wrote there, as it wrote them."""
    recorded = (read_json_object(folder / MANIFEST) or {}).get("files")
    if not isinstance(recorded, dict) or not recorded:
        return False
    present = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    return present == {*recorded, MANIFEST} and all(
        _sha256((folder / name).read_bytes()) == digest for name, digest in recorded.items())


def stale_kernels(out: Path, planned: dict[str, dict[str, str]], force: bool = False) -> list[Path]:
    """The kernel folders under `out` (those with a kernel-metadata.json) that `planned` no
    longer holds: left there, one would be pushed by mistake. Render owns `out`, so they are to
    be removed; one edited since render wrote it (or never written by render) is refused, in
    one line naming them all, unless `force`."""
    out = Path(out)
    stale = sorted(p.parent for p in out.glob("*/kernel-metadata.json")
                   if p.parent.name not in planned)
    if kept := [p.name for p in stale if not force and not _unchanged(p)]:
        one = len(kept) == 1
        raise UserError(f"{out}: {', '.join(kept)} {'is' if one else 'are'} no longer rendered "
                        f"by these settings and not as render wrote {'it' if one else 'them'}; "
                        "move away what you want to keep, or pass --force to remove "
                        f"{'it' if one else 'them'}")
    return stale


def write_kernels(out: Path, planned: dict[str, dict[str, str]], force: bool = False) -> list[Path]:
    """Write every planned kernel folder under `out`; none when one was edited by hand."""
    for folder, files in planned.items():
        check_untouched(Path(out) / folder, files, force)
    return [write_rendered(Path(out) / folder, files) for folder, files in planned.items()]
