"""Building the two wheels that PyPI does not have for us: imet itself and pretrainedmodels.

Both are pure Python. They are built with the running interpreter's setuptools (no build
isolation: nothing is fetched, and the same setuptools gives the same bytes) with
SOURCE_DATE_EPOCH fixing every timestamp inside the zip, from a copy of whitelisted files whose
modes are normalised, so the same sources give the same sha256.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

# What of the repository goes into the imet wheel: the package's code and what setup.py reads.
SOURCE_FILES = ("setup.py", "README.md")
PACKAGE_SUFFIXES = (".py", ".json", ".csv", ".txt", ".typed")


class BuildError(Exception):
    """One line naming what failed and what to do."""


def git(repo: Path, *args: str) -> str | None:
    try:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def source_state(repo: Path) -> dict:
    """The commit the imet wheel comes from, and whether the package differs from it."""
    commit = git(repo, "rev-parse", "HEAD")
    # Outside git, the content digest is all that tells two builds apart.
    dirty = commit is None or bool(git(repo, "status", "--porcelain", "--", "imet", *SOURCE_FILES))
    epoch = os.environ.get("SOURCE_DATE_EPOCH") or git(repo, "log", "-1", "--format=%ct") or "315532800"
    return {"git_commit": commit, "dirty": dirty, "source_date_epoch": int(epoch)}


def whitelisted_sources(repo: Path) -> list[Path]:
    """Relative paths of the files that make the imet wheel (never tests, data or configs)."""
    files = [Path(f) for f in SOURCE_FILES if (repo / f).is_file()]
    for path in sorted((repo / "imet").rglob("*")):
        rel = path.relative_to(repo)
        if path.is_file() and path.suffix in PACKAGE_SUFFIXES and "__pycache__" not in rel.parts:
            files.append(rel)
    return files


USE_VENV = ("run this script with the project's venv, `.venv/bin/python packaging/build_dataset.py "
            "...` (`make venv` makes it)")

# pip's own summary lines name a failure class, never its cause.
_PIP_CODES = re.compile(r"error: [a-z]+(-[a-z]+)+$")
_CAUSE = re.compile(r"(error:|[A-Za-z_.]*(Error|Exception|Exit)\b.*:|fatal:)")


def error_lines(output: str, keep: int = 3) -> str:
    """The last lines of a failed pip build that name a cause (`error: …`, `SomeError: …`, from
    the build's own output that pip boxes), joined with ` | `. pip's closing lines are left out:
    they name only the failure class (`error: metadata-generation-failed`) and say "See above
    for details". With no such line, pip's last lines."""
    lines = [line.strip(" \t│╰─>×") for line in output.splitlines()]
    lines = [line for line in lines if line]
    causes = [line for line in lines if _CAUSE.match(line) and not _PIP_CODES.match(line)]
    if not causes:
        causes = [line for line in lines if not line.startswith(("note:", "hint:"))]
    picked = list(dict.fromkeys(causes[-keep:]))
    return " | ".join(picked) or "pip printed nothing"


def missing_build_tools() -> list[str]:
    """The packages this interpreter lacks to build the two wheels and read the locks'
    requirements: pip, setuptools, `wheel` where setuptools predates its own bdist_wheel (70.1),
    and `packaging`. Read from the installed distributions, never imported (importing
    setuptools here would replace distutils under pip), before any download, so a bare system
    Python fails in a second."""
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    missing = [name for name in ("pip", "setuptools", "packaging") if not installed(name)]
    setuptools = installed("setuptools")
    if setuptools and not installed("wheel"):
        major_minor = tuple(int(part) for part in re.findall(r"\d+", setuptools)[:2])
        if major_minor < (70, 1):
            missing.append("wheel")
    return missing


def _build_wheel(src: Path, out: Path, epoch: int) -> Path:
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(epoch), "PYTHONHASHSEED": "0"}
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
           "--no-index", "--wheel-dir", str(out), str(src)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        cause = error_lines(proc.stderr + proc.stdout)
        hint = ""
        if "invalid command 'bdist_wheel'" in cause:
            hint = f"; {sys.executable} lacks the `wheel` package: {USE_VENV}"
        raise BuildError(f"building a wheel from {src.name} failed: {cause}{hint}")
    wheels = sorted(out.glob("*.whl"))
    if len(wheels) != 1:
        raise BuildError(f"building {src.name} gave {len(wheels)} wheels, expected one")
    return wheels[0]


def _normalise_tree(root: Path, epoch: int) -> None:
    for path in sorted(root.rglob("*")):
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
        os.utime(path, (epoch, epoch))


def local_version(base: str, state: dict, content_digest: str) -> str:
    """`0.1.0+g<commit>`; a tree with uncommitted changes adds the digest of its content, so
    pip sees two different builds as two versions and never keeps a stale one."""
    local = f"g{(state['git_commit'] or 'nogit')[:12]}"
    if state["dirty"]:
        local += f".dirty.{content_digest[:8]}"
    return f"{base}+{local}"


def build_imet_wheel(repo: Path, out: Path, state: dict, content_digest: str) -> tuple[Path, str]:
    """Build the imet wheel from the whitelisted sources; returns (wheel path, version)."""
    with tempfile.TemporaryDirectory(prefix="imet-src-") as tmp:
        src = Path(tmp) / "imet-src"
        for rel in whitelisted_sources(repo):
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(repo / rel, src / rel)
        setup = (src / "setup.py").read_text(encoding="utf-8")
        m = re.search(r"""version\s*=\s*["']([^"']+)["']""", setup)
        if not m:
            raise BuildError("setup.py: no version=\"...\" found; the imet wheel needs a version")
        version = local_version(m.group(1), state, content_digest)
        (src / "setup.py").write_text(setup[:m.start(1)] + version + setup[m.end(1):], encoding="utf-8")
        _normalise_tree(src, state["source_date_epoch"])
        wheel = _build_wheel(src, Path(tmp) / "out", state["source_date_epoch"])
        out.mkdir(parents=True, exist_ok=True)
        final = out / wheel.name
        shutil.copyfile(wheel, final)
    return final, version


def build_sdist_wheel(sdist: Path, out: Path) -> Path:
    """A wheel from a locked sdist (pretrainedmodels publishes no wheel). Its timestamps come
    from the sdist itself, so the wheel's hash depends only on the sdist and setuptools."""
    with tempfile.TemporaryDirectory(prefix="imet-sdist-") as tmp:
        with tarfile.open(sdist) as tar:
            epoch = max(m.mtime for m in tar.getmembers())
            tar.extractall(tmp, filter="data")
        (top,) = [p for p in Path(tmp).iterdir() if p.is_dir()]
        shutil.rmtree(top / f"{top.name.split('-')[0]}.egg-info", ignore_errors=True)
        _normalise_tree(top, epoch)
        wheel = _build_wheel(top, Path(tmp) / "out", epoch)
        out.mkdir(parents=True, exist_ok=True)
        final = out / wheel.name
        shutil.copyfile(wheel, final)
    return final
