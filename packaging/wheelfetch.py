"""The locked wheels of the source dataset: which fit a target interpreter and platform (pip's
tag rules), which are cached already (by the lock's sha256), `pip download` of the rest, and
what each bundled wheel is imported as and, for the fallback wheels, what an image's own copy
must satisfy to be kept (read by the bootstrap from MANIFEST.json)."""
from __future__ import annotations

import email.parser
import hashlib
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import lock  # packaging/ is a folder of scripts: the caller put it on sys.path

# Import names that differ from the distribution name (the rest are found inside the wheel).
IMPORT_NAMES = {"python-telegram-bot": "telegram", "delegator-py": "delegator",
                "iterative-stratification": "iterstrat", "pyyaml": "yaml", "imet": "imet"}

class FetchError(Exception):
    """A wheel that cannot be had: printed by build_dataset as one line, exit status 2."""


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def wheel_tags(filename: str) -> set[tuple[str, str, str]]:
    parts = filename[:-4].split("-")
    py, abi, plat = parts[-3], parts[-2], parts[-1]
    return {(p, a, pl) for p in py.split(".") for a in abi.split(".") for pl in plat.split(".")}


def wheel_fits(filename: str, python_version: str, platforms: list[str]) -> bool:
    """Could a CPython `python_version` on `platforms` install this wheel? (pip's tag rules)"""
    if not filename.endswith(".whl"):
        return False
    cp = "cp" + python_version.replace(".", "")
    minor = int(python_version.split(".")[1])
    plats = set(lock.expand_platforms(platforms)) | {"any"}
    for py, abi, plat in wheel_tags(filename):
        if plat not in plats:
            continue
        if abi == cp and py == cp:
            return True
        if abi == "abi3" and re.fullmatch(r"cp3\d+", py) and int(py[3:]) <= minor:
            return True
        if abi == "none" and (py in ("py3", cp, f"py3{minor}") or py == "py2.py3"):
            return True
    return False


def cached_file(cache: Path, entry: dict, fits) -> Path | None:
    """A file in the cache with one of the entry's locked hashes that `fits` the target."""
    stem = lock.canonical(entry["name"]).replace("-", "_")
    for path in sorted(cache.iterdir()):
        if lock.canonical(path.name.split("-")[0]).replace("-", "_") != stem or not fits(path.name):
            continue
        if sha256(path) in entry["hashes"]:
            return path
    return None


def fetched_name(line: str) -> str | None:
    """The requirement a line of `pip download` starts on: "Collecting NAME==V" for an index,
    "Processing /path/NAME.whl" for a file pip found locally (a --find-links folder, a file://
    index)."""
    words = line.split()
    if len(words) >= 2 and words[0] == "Collecting":
        return words[1]
    if len(words) >= 2 and words[0] == "Processing":
        return Path(words[1]).name
    return None


def download(entries: dict, cache: Path, python_version: str, platforms: list[str]) -> dict:
    """{name: cached wheel} for every locked wheel, downloading (hash-checked) what is missing."""
    fits = lambda name: wheel_fits(name, python_version, platforms)  # noqa: E731
    found = {n: cached_file(cache, e, fits) for n, e in entries.items()}
    missing = sorted(n for n, f in found.items() if f is None)
    if missing:
        say(f"downloading {len(missing)} of {len(entries)} wheels for CPython {python_version} "
            f"into {cache} (the rest are cached)")
        with tempfile.TemporaryDirectory() as tmp:
            req = Path(tmp) / "requirements.txt"
            req.write_text("".join(f"{entries[n]['name']}=={entries[n]['version']} "
                                   + " ".join(f"--hash=sha256:{h}" for h in entries[n]["hashes"])
                                   + "\n" for n in missing))
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes",
                   "--progress-bar", "on" if sys.stderr.isatty() else "off",
                   *lock.target_args(python_version, platforms), "-d", str(cache), "-r", str(req)]
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            done, tail = 0, []
            for line in proc.stdout:
                tail = (tail + [line.rstrip()])[-5:]
                name = fetched_name(line)
                if name:
                    done += 1
                    say(f"  [{done}/{len(missing)}] {name}")
                elif line.lstrip().startswith("Downloading "):
                    say(f"        {line.strip()}")
            if proc.wait() != 0:
                raise FetchError(f"pip download for CPython {python_version} failed: "
                                f"{' / '.join(t for t in tail if t)[-400:]}")
        found = {n: cached_file(cache, e, fits) for n, e in entries.items()}
    for name, path in found.items():
        if path is None:
            raise FetchError(f"{entries[name]['name']}=={entries[name]['version']}: no wheel for "
                            f"CPython {python_version} on {', '.join(platforms)} matches the lock's "
                            "hashes; re-run packaging/lock.py with this --python-version")
    return found


def import_name(dist: str, wheel: Path) -> str | None:
    """The module to import to check `dist` (None when it has no importable top level)."""
    key = lock.canonical(dist)
    if key in IMPORT_NAMES:
        return IMPORT_NAMES[key]
    with zipfile.ZipFile(wheel) as zf:
        tops = {n.split("/")[0].split(".")[0] for n in zf.namelist()
                if not n.split("/")[0].endswith((".dist-info", ".data"))}
    guess = key.replace("-", "_")
    return guess if guess in tops else None


def fallback_requirements(files: dict, names: set, python_version: str) -> dict:
    """{name: {"fallback": requirement, "fallback_for": [names]}} for the fallback wheels: what
    an image's copy must satisfy to be kept (setup.py's for the FALLBACK packages; for their
    dependencies every specifier the bundled fallback wheels declare, joined) and who asks
    ("imet", or the fallbacks whose installation brings the need)."""
    from packaging.requirements import Requirement  # dev tool: `packaging` comes with pip/build

    specs: dict[str, list[str]] = {n: [] for n in names}
    parents: dict[str, set[str]] = {n: set() for n in names}
    declared = [("imet", s) for s in lock.install_requires()]
    for name in sorted(names):
        with zipfile.ZipFile(files[name]) as zf:
            meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
            headers = email.parser.Parser().parsestr(zf.read(meta).decode(), headersonly=True)
        declared += [(name, s) for s in headers.get_all("Requires-Dist") or []]
    env = lock.marker_env(python_version)
    for parent, spec in declared:
        req = Requirement(spec)
        dep = lock.canonical(req.name)
        if dep in specs and not (req.marker and not req.marker.evaluate({**env, "extra": ""})):
            specs[dep] += [str(s) for s in req.specifier]
            parents[dep].add(parent)
    return {n: {"fallback": n + ",".join(sorted(set(s))), "fallback_for": sorted(parents[n])}
            for n, s in specs.items()}
