"""The lock of bundled wheels: what imet ships to an offline Kaggle kernel, and why.

`python packaging/lock.py` re-resolves `wheels/requirements.txt` (and, for `--include-torch`,
`wheels/requirements-torch.txt`) with pip's own resolver: `pip install --dry-run --report` for
each target interpreter, reading only metadata (PyPI serves it apart from the wheels), so nothing
large is downloaded. The roots come from setup.py's INSTALL_REQUIRES; whatever Kaggle's image
already has (PLATFORM) is left out together with the packages only it needs, except FALLBACK:
those and what they need beyond the rest go to `wheels/requirements-fallback.txt`, resolved
together with the lock so that both fit one environment; the bootstrap installs a fallback only
where the image's copy is missing or too old.

The lock is a pip requirements file with `--hash` lines: every file that any target needs has its
sha256 there, so `pip download --require-hashes` verifies each download.
"""
from __future__ import annotations

import argparse
import ast
import functools
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LOCK = REPO / "wheels" / "requirements.txt"
TORCH_LOCK = REPO / "wheels" / "requirements-torch.txt"
FALLBACK_LOCK = REPO / "wheels" / "requirements-fallback.txt"

# What Kaggle's image preinstalls, and why each is not bundled (shown in the README): defined
# once, in imet, where the emulator shows a kernel only these.
sys.path.insert(0, str(REPO))
from imet.kaggle.platform_env import FALLBACK, PLATFORM

# Only sdists exist for these: build_dataset builds a wheel from the locked sdist. Their runtime
# dependencies (from their setup.py, which pip cannot read for a foreign target without building)
# are written here so that the resolver locks them.
SDIST_ONLY = {"pretrainedmodels": ["munch"]}

# pip does not widen `--platform manylinux_2_28_x86_64` to the older manylinux tags that the same
# machine also runs, so we name them all: a glibc 2.28 system runs every manylinux_2_k, k <= 28.
LEGACY_MANYLINUX = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}
DEFAULT_PLATFORM = "manylinux_2_28_x86_64"
DEFAULT_TARGETS = ("3.11", "3.12")  # 3.12: Kaggle's image; 3.11: where the tests install it


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def expand_platforms(platforms) -> list[str]:
    """Every platform tag that a machine able to run `platforms` also runs (newest first)."""
    out: list[str] = []
    for tag in platforms:
        m = re.fullmatch(r"manylinux_(\d+)_(\d+)_(\w+)", tag)
        legacy = re.fullmatch(r"(manylinux1|manylinux2010|manylinux2014)_(\w+)", tag)
        if legacy:
            (major, minor), arch = LEGACY_MANYLINUX[legacy.group(1)], legacy.group(2)
        elif m:
            major, minor, arch = int(m.group(1)), int(m.group(2)), m.group(3)
        else:
            out.append(tag)
            continue
        for k in range(minor, 4, -1):
            out.append(f"manylinux_{major}_{k}_{arch}")
            out += [f"{name}_{arch}" for name, v in LEGACY_MANYLINUX.items() if v == (major, k)]
    return list(dict.fromkeys(out))


def target_args(python_version: str, platforms) -> list[str]:
    """pip options that select wheels for a foreign CPython `python_version` on `platforms`."""
    abi = "cp" + python_version.replace(".", "")
    args = ["--only-binary=:all:", "--python-version", python_version,
            "--implementation", "cp", "--abi", abi]
    for tag in expand_platforms(platforms):
        args += ["--platform", tag]
    return args


def install_requires() -> list[str]:
    """setup.py's INSTALL_REQUIRES, read without running setup.py."""
    tree = ast.parse((REPO / "setup.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
                getattr(t, "id", None) == "INSTALL_REQUIRES" for t in node.targets):
            return list(ast.literal_eval(node.value))
    raise SystemExit("setup.py: no INSTALL_REQUIRES list found")


def requirement_name(spec: str) -> str:
    return canonical(re.match(r"\s*([A-Za-z0-9_.\-]+)", spec).group(1))


@functools.lru_cache(maxsize=None)
def resolve(roots: tuple[str, ...], python_version: str, platforms: tuple[str, ...]) -> dict:
    """pip's resolution for one target: {canonical name: install entry of pip's report}."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed",
               "--report", str(report), "--target", str(Path(tmp) / "t"),
               *target_args(python_version, platforms), *roots]
        print(f"resolving for CPython {python_version}: {' '.join(roots)}", file=sys.stderr)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"pip could not resolve for {python_version}:\n{proc.stderr[-3000:]}")
        data = json.loads(report.read_text())
    return {canonical(i["metadata"]["name"]): i for i in data["install"]}


def marker_env(python_version: str) -> dict:
    """The environment markers of a CPython `python_version` kernel on Linux x86_64."""
    return {"python_version": python_version, "python_full_version": python_version + ".0",
            "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
            "implementation_name": "cpython", "platform_python_implementation": "CPython",
            "os_name": "posix"}


def dependency_closure(installs: dict, roots: list[str], stop: set[str], python_version: str):
    """Names reachable from `roots` through Requires-Dist, never walking into `stop`."""
    from packaging.requirements import Requirement  # dev tool: `packaging` comes with pip/build

    env = marker_env(python_version)
    seen: dict[str, set[str]] = {}
    todo = [(requirement_name(r), "setup.py", ()) for r in roots]
    while todo:
        name, parent, extras = todo.pop()
        if name in stop:
            continue
        first = name not in seen
        seen.setdefault(name, set()).add(parent)
        if not first and not extras or name not in installs:
            continue
        for spec in installs[name]["metadata"].get("requires_dist", []):
            req = Requirement(spec)
            wanted = [""] + list(extras)
            if req.marker and not any(req.marker.evaluate({**env, "extra": e}) for e in wanted):
                continue
            todo.append((canonical(req.name), name, tuple(req.extras)))
    return seen


def lock_entries(targets, platforms, roots, stop, walk=None) -> dict:
    """{name: {"version", "hashes": set, "files": set, "via": set}} over all targets: what
    `walk` (default: `roots`) needs of pip's resolution of `roots`."""
    entries: dict[str, dict] = {}
    for py in targets:
        installs = resolve(tuple(roots), py, tuple(platforms))
        for name, via in dependency_closure(installs, walk or roots, stop, py).items():
            info = installs[name]
            version = info["metadata"]["version"]
            url = info["download_info"]["url"]
            digest = info["download_info"].get("archive_info", {}).get("hashes", {}).get("sha256")
            if not digest:
                raise SystemExit(f"{name}: the index gave no sha256 for {url}")
            entry = entries.setdefault(name, {"version": version, "hashes": set(), "files": set(),
                                              "via": set(), "name": info["metadata"]["name"]})
            if entry["version"] != version:
                raise SystemExit(f"{name}: {entry['version']} for one target, {version} for {py};"
                                 " pin one version in setup.py")
            entry["hashes"].add(digest)
            entry["files"].add(url.rsplit("/", 1)[-1])
            entry["via"] |= via
    return entries


def sdist_entry(name: str, spec: str, cache: Path) -> dict:
    """Lock an sdist-only package by downloading its (small) sdist and hashing it."""
    cache.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                    "--no-binary", ":all:", "-d", str(cache), spec], check=True)
    version = re.search(r"==\s*([\w.]+)", spec).group(1)
    path = next(p for p in cache.iterdir()
                if p.name.lower().startswith(f"{name}-{version}-".lower()[:-1] + ".")
                and p.name.endswith((".tar.gz", ".zip")))
    import hashlib
    return {"name": name, "version": version, "files": {path.name}, "via": {"setup.py"},
            "hashes": {hashlib.sha256(path.read_bytes()).hexdigest()}}


def write_lock(path: Path, entries: dict, header: str) -> None:
    lines = [f"# {line}" if line else "#" for line in header.splitlines()] + [""]
    for name in sorted(entries):
        e = entries[name]
        lines.append(f"{e['name']}=={e['version']} \\")
        hashes = sorted(e["hashes"])
        for i, h in enumerate(hashes):
            lines.append(f"    --hash=sha256:{h}" + (" \\" if i < len(hashes) - 1 else ""))
        lines.append(f"    # via {', '.join(sorted(e['via']))}")
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_lock(path: Path = LOCK) -> dict:
    """{canonical name: {"name", "version", "hashes": [..]}} from a lock written by write_lock."""
    entries: dict[str, dict] = {}
    current = None
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip().rstrip("\\").strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([\w.+!-]+)", line)
        if m:
            current = entries[canonical(m.group(1))] = {
                "name": m.group(1), "version": m.group(2), "hashes": []}
        elif line.startswith("--hash=sha256:") and current is not None:
            current["hashes"].append(line.split(":", 1)[1])
        else:
            raise ValueError(f"{path}: cannot read line {raw!r}")
    return entries


def lock_targets(path: Path = LOCK) -> list[str]:
    """The CPython versions a lock has hashes for (its `# Target(s): CPython ...` line)."""
    for line in path.read_text(encoding="utf-8").splitlines():
        m = re.match(r"# Targets?: CPython ([\d., ]+) on ", line)
        if m:
            return [v.strip() for v in m.group(1).split(",") if v.strip()]
    return []


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Re-resolve wheels/requirements.txt (the lock).")
    p.add_argument("--python-version", action="append", dest="targets",
                   help=f"target CPython (repeatable; default {' '.join(DEFAULT_TARGETS)})")
    p.add_argument("--platform", action="append", dest="platforms",
                   help=f"target platform tag (repeatable; default {DEFAULT_PLATFORM})")
    p.add_argument("--include-torch", action="store_true",
                   help="also write wheels/requirements-torch.txt (torch, torchvision and their needs)")
    p.add_argument("--torch", default="torch==2.14.1", help="torch requirement for --include-torch")
    p.add_argument("--torchvision", default="torchvision==0.29.1")
    args = p.parse_args(argv)
    targets = args.targets or list(DEFAULT_TARGETS)
    platforms = args.platforms or [DEFAULT_PLATFORM]
    specs = [s for s in install_requires() if requirement_name(s) not in PLATFORM]
    sdists = [s for s in specs if requirement_name(s) in SDIST_ONLY]
    roots = [s for s in specs if s not in sdists]
    roots += [d for s in sdists for d in SDIST_ONLY[requirement_name(s)]]
    stop = set(PLATFORM) | set(SDIST_ONLY)
    fallbacks = [s for s in install_requires() if requirement_name(s) in FALLBACK]
    entries = lock_entries(targets, platforms, roots + fallbacks, stop, walk=roots)
    for s in sdists:
        name = requirement_name(s)
        entries[name] = sdist_entry(name, s, REPO / "wheels")
        for dep in SDIST_ONLY[name]:
            entries[canonical(dep)]["via"] = {name}
    header = (f"The lock of wheels bundled into the imet Kaggle dataset; written by packaging/lock.py.\n"
              f"Targets: CPython {', '.join(targets)} on {', '.join(platforms)}.\n"
              f"Not bundled (Kaggle's image has them): {', '.join(sorted(PLATFORM))}.\n"
              f"Fallbacks for {', '.join(FALLBACK)}: requirements-fallback.txt.\n"
              f"pretrainedmodels is an sdist: build_dataset.py builds its wheel.")
    write_lock(LOCK, entries, header)
    print(f"wrote {LOCK.relative_to(REPO)}: {len(entries)} packages", file=sys.stderr)
    fstop = (set(PLATFORM) - set(FALLBACK)) | set(SDIST_ONLY) | set(entries)
    fentries = lock_entries(targets, platforms, roots + fallbacks, fstop, walk=fallbacks)
    write_lock(FALLBACK_LOCK, fentries,
               "Fallback wheels of the imet Kaggle dataset; written by packaging/lock.py.\n"
               f"Targets: CPython {', '.join(targets)} on {', '.join(platforms)}.\n"
               f"Kaggle's image has {', '.join(FALLBACK)}: the bootstrap installs one of these\n"
               "only where the image's copy is missing or misses what imet (or a fallback) asks.")
    print(f"wrote {FALLBACK_LOCK.relative_to(REPO)}: {len(fentries)} packages", file=sys.stderr)
    if args.include_torch:
        # Torch is pinned for Kaggle's interpreter only (the last target): its dependencies
        # (networkx, ...) differ between Python versions and nobody installs torch from here locally.
        troots = [args.torch, args.torchvision]
        tentries = lock_entries(targets[-1:], platforms, troots, {"numpy", "pillow"} | set(entries))
        write_lock(TORCH_LOCK, tentries, "torch and torchvision for build_dataset.py --include-torch"
                   f"\nTarget: CPython {targets[-1]} on {', '.join(platforms)}.")
        print(f"wrote {TORCH_LOCK.relative_to(REPO)}: {len(tentries)} packages", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
