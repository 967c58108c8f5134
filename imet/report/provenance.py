"""Where a run's code came from and which config decided it: recorded in run.json and the
run registry so results from different kernels (each running its own copy of the code) stay
comparable."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

import imet
from imet.report.find import InputFiles, input_files

MANIFEST_NAME = "MANIFEST.json"
# What the imet wheel is built from (packaging/wheelbuild.py: the package, setup.py, README.md):
# a change elsewhere in the checkout does not change the code, so it does not make it dirty.
CODE_PATHS = ("imet", "setup.py", "README.md")


def find_manifest(input_roots: InputFiles | Iterable[str | os.PathLike] = ()) -> Path | None:
    """The packaging dataset's MANIFEST.json describing the imet code that runs: first beside the
    imported package (the dataset imet was imported from), then under the input roots."""
    package_dir = Path(imet.__file__).resolve().parent
    for parent in list(package_dir.parents)[:3]:
        candidate = parent / MANIFEST_NAME
        if candidate.is_file():
            return candidate
    return next(iter(input_files(input_roots, MANIFEST_NAME).named(MANIFEST_NAME)), None)


@lru_cache(maxsize=1)  # the code does not change under a running process: ask git once
def git_commit() -> str | None:
    """The commit of the source checkout imet runs from, with '+dirty' for local changes."""
    repo = Path(imet.__file__).resolve().parent.parent
    if not (repo / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain",
                                "--untracked-files=no", "--", *CODE_PATHS],
                               capture_output=True, text=True, timeout=5,
                               check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "") if head else None


def code_version(input_roots: InputFiles | Iterable[str | os.PathLike] = ()) -> dict[str, Any]:
    """{"imet": version, "manifest_sha256": … or None, "git_commit": … or None}. With a dataset
    manifest, the commit is the one it was built from (its "source"); without one, the
    checkout's. Either way the same code gets the same commit."""
    manifest = find_manifest(input_roots)
    version: dict[str, Any] = {"imet": imet.__version__, "manifest_sha256": None,
                               "git_commit": None}
    if manifest is not None:
        try:
            raw = manifest.read_bytes()
        except OSError:
            manifest = None
        else:
            version["manifest_sha256"] = hashlib.sha256(raw).hexdigest()
            version["git_commit"] = _manifest_commit(raw)
    if manifest is None:
        version["git_commit"] = git_commit() or installed_commit()
    return version


def installed_commit() -> str | None:
    """The commit an installed imet wheel was built from: its version's local part
    (packaging/wheelbuild.py `0.1.0+g<commit>[.dirty.<digest>]`). What a kernel's validate and
    predict know of their code: they run the dataset's wheel, with run folders as their inputs
    and neither a checkout nor the dataset's manifest in sight."""
    from importlib import metadata
    try:
        local = metadata.version("imet").partition("+")[2]
    except metadata.PackageNotFoundError:
        return None
    commit, _, rest = local.partition(".")
    if not commit.startswith("g") or commit == "gnogit":
        return None
    return commit[1:] + ("+dirty" if rest.startswith("dirty") else "")


def _manifest_commit(raw: bytes) -> str | None:
    """The source commit a dataset manifest records, '+dirty' when built from local changes."""
    try:
        source = json.loads(raw).get("source") or {}
    except (ValueError, AttributeError):
        return None
    commit = source.get("git_commit") if isinstance(source, dict) else None
    return f"{commit}{'+dirty' if source.get('dirty') else ''}" if commit else None


def short_code_version(version: dict[str, Any] | None) -> str:
    """'0.1.0@g:1a2b3c4d' (a '+' for local changes) wherever the commit is known, whether from
    the checkout or from the dataset's manifest; '0.1.0@m:1a2b3c4d' (the manifest's hash) for
    code built outside git; '0.1.0' when neither is known."""
    if not version:
        return ""
    text = str(version.get("imet") or "")
    if version.get("git_commit"):
        commit = str(version["git_commit"])
        text += "@g:" + commit[:8] + ("+" if commit.endswith("+dirty") else "")
    elif version.get("manifest_sha256"):
        text += "@m:" + str(version["manifest_sha256"])[:8]
    return text


def config_hash(config: dict[str, Any] | None) -> str | None:
    """A hash of the config's canonical JSON (validate/predict records; a train run's is the
    engine's fingerprint, carried by its run_start event)."""
    if not config:
        return None
    canonical = json.dumps(config, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]
