"""A local Kaggle: run a kernel folder the way Kaggle runs a script kernel.

Each session (a kernel "version") gets its own root with its inputs mounted read-only under
input/ and an empty working/ (its cwd; `IMET_KAGGLE_ROOT` points at the root), no network when
the metadata turns internet off, and is killed at the time limit. working/ is kept as the
version's output, attached to a chain's next session as the kernel's own output, as
`kernel_sources` does.

The inputs are mounted as today's Kaggle mounts them (`nested`): the competition at
input/competitions/<slug>/, a dataset at input/datasets/<owner>/<slug>/, a kernel's output at
input/notebooks/<owner>/<slug>/; or, as older sessions did (`flat`), each at input/<slug>/.

The script runs in a fresh venv that sees only the packages of Kaggle's image (the platform
view, end of this module), taken from `python`, without imet or the wheels the attached datasets
bundle: the bootstrap installs those, so a rehearsal runs the uploaded artefact, not the tree.

Secrets: a kernel's Telegram settings (IMET_TELEGRAM_TOKEN, IMET_TELEGRAM_CHAT_ID) stand for
its Kaggle Secrets, and a session gets them only from run_session's `env` (a version run with
its secrets bound), never from the calling process. A pushed version has none bound, as on
Kaggle, where a push drops the kernel's secret bindings: every session of a chain or a campaign
(campaign/emulated.py runs each in a process started with its `env`) runs without them, and
reports only through an attached imet-telegram dataset.
"""
from __future__ import annotations

import getpass
import hashlib
import json
import os
import selectors
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from imet.errors import HANDOVER_FILE as HANDOVER, UserError
from imet.fileio import atomic_symlink, move_folder_into_place, read_json_object
from imet.kaggle import COMPETITIONS, DATASETS, LAYOUTS, NOTEBOOKS, platform_env
from imet.kaggle.render import (OWNER, canonical, read_metadata, requested_accelerator,
                                slug_of, with_accelerator, with_kernel_id)
from imet.kaggle.session import ROOT_ENV
from imet.observe.telegram import CHAT_VAR, TOKEN_VAR

TIME_LIMIT_ENV = "IMET_SESSION_LIMIT"
# The calling process's interpreter settings would show it the working tree's imet (PYTHONPATH)
# or another environment: Kaggle's sessions start without them.
NOT_INHERITED = ("PYTHONPATH", "PYTHONHOME", "PYTHONUSERBASE", "PYTHONSTARTUP", "VIRTUAL_ENV")
# A session's Kaggle Secrets: never from the calling process (the module's docstring).
SECRETS = (TOKEN_VAR, CHAT_VAR)

# OUT/output: the latest session's working folder
OUTPUT_LINK = "output"
DEFAULT_LAYOUT = LAYOUTS[0]


@dataclass
class SessionResult:
    version: int
    exit_code: int
    timed_out: bool
    seconds: float
    output: Path
    log: Path

    @property
    def handover(self) -> dict | None:
        path = self.output / HANDOVER
        return json.loads(path.read_text()) if path.is_file() else None

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


def _isolation_prefix(mounts: list[tuple[Path, Path]], internet: bool) -> list[str]:
    """`unshare` mounts the inputs read-only and, with internet off, cuts every network.
    It needs root; without it the inputs are symlinks and offline cannot be enforced."""
    binds = " && ".join(f"mount --bind -o ro {shlex.quote(str(src))} {shlex.quote(str(dst))}"
                        for src, dst in mounts)
    flags = ["-m"] + ([] if internet else ["-n"])
    return ["unshare", *flags, "--", "sh", "-c", (binds + " && " if binds else "") + 'exec "$@"',
            "kernel"]


def mount_points(meta: dict, names, layout: str, user: str) -> dict[str, str]:
    """input name -> where it is mounted below input/. A name is a slug or `owner/slug`; its kind
    and owner come from the metadata's source that has its slug (competition_sources,
    dataset_sources, kernel_sources), an owner given in the name winning; a name the metadata
    does not attach is a dataset of the kernel's owner (`user` stands for the template's)."""
    if layout not in LAYOUTS:
        raise UserError(f"--input-layout {layout!r}: use one of {', '.join(LAYOUTS)}")
    def owner_of(ref: str) -> str:
        return ref.rpartition("/")[0].replace(OWNER, user) or user
    sources = {slug_of(ref): (COMPETITIONS, "") for ref in meta["competition_sources"]}
    sources.update({slug_of(ref): (DATASETS, owner_of(ref)) for ref in meta["dataset_sources"]})
    sources.update({slug_of(ref): (NOTEBOOKS, owner_of(ref)) for ref in meta["kernel_sources"]})
    points: dict[str, str] = {}
    for name in names:
        given_owner, _, slug = name.rpartition("/")
        if not slug or slug in (".", "..") or "/" in given_owner or given_owner in (".", ".."):
            raise UserError(f"--input {name}=...: expected SLUG=PATH or OWNER/SLUG=PATH")
        kind, owner = sources.get(slug, (DATASETS, owner_of(meta["id"])))
        if layout == "flat":
            point = slug
        elif kind == COMPETITIONS:
            point = f"{COMPETITIONS}/{slug}"
        else:
            point = f"{kind}/{given_owner or owner}/{slug}"
        if point in points.values():
            other = next(k for k, v in points.items() if v == point)
            raise UserError(f"--input {name}: mounted at input/{point}, as --input {other} is; "
                            "attach each input once")
        points[name] = point
    return points


def _prepare_root(session_dir: Path, inputs: dict[str, Path], points: dict[str, str],
                  isolate: bool):
    root = session_dir / "kaggle"
    (root / "working").mkdir(parents=True)
    (root / "input").mkdir()
    (root / "temp").mkdir()  # Kaggle's scratch folder: written in the session, never kept
    mounts = []
    for name, src in inputs.items():
        src = Path(src).resolve()
        if not src.exists():
            raise UserError(f"--input {name}={src}: no such file or folder")
        dst = root / "input" / points[name]
        if isolate:
            dst.mkdir(parents=True)
            mounts.append((src, dst))
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.symlink_to(src, target_is_directory=src.is_dir())
    return root, mounts


def run_session(kernel_dir: Path, inputs: dict[str, Path], out: Path, version: int,
                time_limit: float, env: dict[str, str] | None = None,
                python: str = sys.executable, accelerator: str | None = None,
                echo: bool = True, layout: str = DEFAULT_LAYOUT) -> SessionResult:
    """`inputs`: name (slug or owner/slug) -> path, mounted as `layout` says (mount_points).
    `accelerator` overrides the metadata's machine_shape, as `kaggle kernels push
    --accelerator` does (the session gets this machine's, whatever it asked for). `python`
    stands in for Kaggle's image. `echo`: the session's lines go to stdout too, not only to its
    log (a campaign's parallel sessions keep to their logs). `env`: set for the session on top
    of this process's environment, which gives it no Telegram settings (its Kaggle Secrets:
    only `env` binds them)."""
    meta = read_metadata(kernel_dir)
    asked = canonical(accelerator) if accelerator else requested_accelerator(meta)
    code = (Path(kernel_dir) / meta["code_file"]).read_text(encoding="utf-8")
    meta, code = with_accelerator(meta, code, asked)
    code = with_kernel_id(meta, code, getpass.getuser())
    points = mount_points(meta, inputs, layout, getpass.getuser())
    # Absolute from here on: the mounts and the kernel run with other working folders.
    session_dir = Path(out).resolve() / f"v{version}"
    if session_dir.exists():
        shutil.rmtree(session_dir)
    want_isolation = os.geteuid() == 0 and shutil.which("unshare") is not None
    if not meta["enable_internet"] and not want_isolation:
        raise UserError(f"{kernel_dir}: this kernel runs with internet off, which the emulator "
                        "enforces with `unshare -n`: run it as root on Linux")
    root, mounts = _prepare_root(session_dir, inputs, points, want_isolation)
    script = root / "src" / meta["code_file"]
    script.parent.mkdir()
    script.write_text(code, encoding="utf-8")
    prefix = _isolation_prefix(mounts, meta["enable_internet"]) if want_isolation else []
    kernel_python = fresh_env(python, bundled_by(inputs.values()), session_dir / "env")
    inherited = {k: v for k, v in os.environ.items() if k not in NOT_INHERITED + SECRETS}
    run_env = {**inherited, **(env or {}), ROOT_ENV: str(root), "PYTHONUNBUFFERED": "1",
               "KAGGLE_KERNEL_RUN_TYPE": "Batch", TIME_LIMIT_ENV: str(time_limit),
               "PATH": f"{kernel_python.parent}{os.pathsep}{inherited.get('PATH', '')}"}
    log_path, start, timed_out = session_dir / "log.txt", time.monotonic(), False
    header = (f"emulator: {meta['id'].replace(OWNER, getpass.getuser())} v{version}: internet "
              f"{'on' if meta['enable_internet'] else 'off (unshare -n)'}, inputs "
              f"{'read-only' if prefix else 'linked'} in the {layout} layout "
              f"({', '.join(points.values()) or 'none'}), "
              f"limit {time_limit:.0f}s, accelerator {asked}; python: a fresh environment "
              f"with the image's packages of {python}\n").encode()
    with open(log_path, "wb") as log:
        log.write(header)
        if echo:
            sys.stdout.buffer.write(header)
        proc = subprocess.Popen(prefix + [str(kernel_python), str(script)], cwd=root / "working",
                                env=run_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)
        deadline = start + time_limit
        for line in _lines_until(proc, deadline):
            log.write(line)
            log.flush()  # a session's log can be followed while it runs
            if echo:
                sys.stdout.buffer.write(line)
                sys.stdout.flush()
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    # OUT/output: the latest version's output at one path a README command can attach; a link
    # swapped in by rename, so it always points somewhere.
    atomic_symlink(session_dir.parent / OUTPUT_LINK,
                   (root / "working").relative_to(session_dir.parent), target_is_directory=True)
    return SessionResult(version, proc.returncode, timed_out, time.monotonic() - start,
                         root / "working", log_path)


def _lines_until(proc: subprocess.Popen, deadline: float):
    """Lines of the child's output until it ends or the deadline passes."""
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    pending = b""
    while (left := deadline - time.monotonic()) > 0:
        if not sel.select(timeout=min(left, 1.0)):
            if proc.poll() is not None:
                break
            continue
        chunk = os.read(proc.stdout.fileno(), 65536)
        if not chunk:
            break
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            yield line + b"\n"
    if pending:
        yield pending
    sel.close()


# The platform view of the interpreter that stands in for Kaggle's image (platform_env.py).
CACHE_ENV = "IMET_PLATFORM_ENV_CACHE"
MANIFEST = "MANIFEST.json"  # an imet-src dataset's (packaging/bootstrap.py MANIFEST_NAME)
VIEW_PTH = "kaggle_platform.pth"


def bundled_by(inputs) -> set[str]:
    """imet and the packages that the attached imet-src datasets bring (their MANIFEST.json);
    not their fallbacks, which stand in only for what the image lacks."""
    names = {"imet"}
    for folder in inputs:
        manifest = read_json_object(Path(folder) / MANIFEST) or {}
        if manifest.get("format") == "imet-dataset":
            names |= {platform_env.canonical(p["name"]) for p in manifest.get("packages", [])
                      if not p.get("fallback")}
    return names


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(os.environ.get(CACHE_ENV) or Path(base) / "imet" / "platform-env")


def template(python: str, exclude: set[str], cache: Path) -> tuple[Path, dict]:
    """(the cached template folder, its description) for `python`'s platform minus `exclude`,
    built unless one of the same interpreter and platform versions exists."""
    proc = subprocess.run([python, "-I", platform_env.__file__, *sorted(exclude)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeError(f"{python}: cannot list its platform packages: {last}")
    info = json.loads(proc.stdout)
    key = hashlib.sha256(json.dumps([info["executable"], info["version"], info["dists"],
                                     sorted(info["entries"].items())]).encode()).hexdigest()
    folder = cache / key[:16]
    if (folder / "ready").is_file():
        return folder, info
    cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{key[:16]}-", dir=cache))
    subprocess.run([python, "-m", "venv", "--without-pip", str(work / "venv")], check=True)
    view = folder / "view"  # where it will live: the .pth names the final path
    (work / "view").mkdir()
    for top, src in info["entries"].items():
        (work / "view" / top).symlink_to(src)
    purelib = subprocess.run([str(work / "venv" / "bin" / "python"), "-c",
                              "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    (Path(purelib) / VIEW_PTH).write_text(f"{view}\n")
    (work / "platform.json").write_text(json.dumps(info, indent=1))
    (work / "ready").write_text(key)
    move_folder_into_place(work, folder, replace=False)  # or another rehearsal's, as good
    return folder, info


def fresh_env(python: str, exclude: set[str], dest: Path, cache: Path | None = None) -> Path:
    """A new venv at `dest` that sees only the platform; returns its interpreter."""
    folder, _ = template(python, exclude, cache or default_cache())
    shutil.copytree(folder / "venv", dest, symlinks=True)
    return dest / "bin" / "python"

