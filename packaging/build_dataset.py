"""Build the imet source dataset: imet + the locked wheels, uploadable as a Kaggle Dataset.

    python packaging/build_dataset.py [--out dist/kaggle-dataset] [--owner USER]
        [--python-version 3.12] [--platform manylinux_2_28_x86_64 ...] [--include-torch]
    kaggle datasets create -p dist/kaggle-dataset      # the first time
    kaggle datasets version -p dist/kaggle-dataset -m "what changed"

The folder is flat (Kaggle uploads only top-level files): the wheels, imet_bootstrap.py (run it
first in a kernel), MANIFEST.json (sha256 of every file, versions, target, source commit) and,
when the Kaggle owner is known, dataset-metadata.json (a local build for `imet kaggle run` needs
no account). Downloads are verified against wheels/requirements.txt (and the fallback
wheels against wheels/requirements-fallback.txt) and cached in wheels/.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lock  # noqa: E402  (packaging/ is a folder of scripts, not a package)
import secrets_scan  # noqa: E402
import wheelbuild  # noqa: E402
from wheelfetch import (FetchError, download, fallback_requirements, import_name,  # noqa: E402
                       say, sha256)

REPO = lock.REPO
BOOTSTRAP_SRC = Path(__file__).resolve().parent / "bootstrap.py"
BOOTSTRAP_NAME = "imet_bootstrap.py"
SLUG = "imet-src"
TITLE = "imet source and wheels"
class UserError(Exception):
    """Printed as `build_dataset: error: <message>`; exit status 2."""


SIGN_IN_HINT = ("pass --owner USER, or sign in the kaggle client (`kaggle auth login`, "
                "$KAGGLE_API_TOKEN or ~/.kaggle/access_token; legacy: $KAGGLE_USERNAME or "
                "~/.kaggle/kaggle.json)")


def resolve_owner(explicit: str | None, required: bool = True) -> str | None:
    """--owner, else who the kaggle client signs in as, without reading out any secret:
    $KAGGLE_USERNAME, the user name in the legacy kaggle.json or in what `kaggle auth login`
    cached (credentials.json), else, with only an API token ($KAGGLE_API_TOKEN or
    ~/.kaggle/access_token, which hold no name), the user the kaggle client finds for it.
    None when nobody is found and the owner is not `required`."""
    owner = explicit or os.environ.get("KAGGLE_USERNAME") or _owner_in_config() or \
        _owner_from_client()
    if not owner:
        if not required:
            return None
        raise UserError(f"no Kaggle owner: {SIGN_IN_HINT}")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{1,49}", owner):
        raise UserError(f"--owner {owner!r}: not a Kaggle user name (letters, digits, - and _)")
    return owner


def _owner_in_config() -> str | None:
    home = Path.home()
    files = [Path(folder) / "kaggle.json" for folder in filter(None, [
        os.environ.get("KAGGLE_CONFIG_DIR"), home / ".kaggle",
        Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config") / "kaggle"])]
    for path in files + [home / ".kaggle" / "credentials.json"]:
        try:
            owner = json.loads(path.read_text()).get("username")
        except (OSError, ValueError, AttributeError):
            continue
        if owner:
            return owner
    return None


def _owner_from_client() -> str | None:
    """Importing the kaggle client signs it in (a token is looked up on Kaggle's server); its
    help text on failure goes to stdout, which is not this script's to fill."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            import kaggle
    except Exception:  # noqa: BLE001 - no client, or one that cannot sign in: no owner
        return None
    return kaggle.api.config_values.get("username") or None


def scan_sources(source: Path) -> None:
    for rel in wheelbuild.whitelisted_sources(source):
        secrets_scan.scan_file(source / rel, label=str(rel))


def prepare_out(out: Path) -> Path:
    """A fresh sibling folder to fill; the old build is replaced only when the new one is complete."""
    if out.exists() and any(out.iterdir()):
        manifest = out / "MANIFEST.json"
        if not (manifest.is_file() and '"imet-dataset"' in manifest.read_text(errors="replace")):
            raise UserError(f"--out {out} exists and is not an imet dataset build; choose an empty "
                            "or new folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))


def publish(staging: Path, out: Path) -> None:
    for path in staging.iterdir():
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}-old-{os.getpid()}")
        os.replace(out, old)
    os.replace(staging, out)
    os.chmod(out, 0o755)
    if old:
        shutil.rmtree(old)


def build(args) -> Path:
    started = time.time()
    owner = resolve_owner(args.owner, required=False)
    platforms = args.platforms or [lock.DEFAULT_PLATFORM]
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    locks = [Path(args.lock), lock.FALLBACK_LOCK]
    locks += [lock.TORCH_LOCK] if args.include_torch else []
    entries = {}
    for path in locks:
        targets = lock.lock_targets(path)
        if args.python_version not in targets:
            raise UserError(f"{path.name} has hashes for CPython {', '.join(targets) or '?'}, not "
                            f"{args.python_version}; run `python packaging/lock.py --python-version "
                            f"{args.python_version}{' --include-torch' if args.include_torch else ''}`")
        entries.update(lock.read_lock(path))
    missing = wheelbuild.missing_build_tools()
    if missing:
        raise UserError(f"{sys.executable} lacks the package{'s' * (len(missing) > 1)} "
                        f"{', '.join(missing)}, needed to build and check the wheels: "
                        f"{wheelbuild.USE_VENV}")
    sdists = {n: e for n, e in entries.items() if n in lock.SDIST_ONLY}
    wheels_locked = {n: e for n, e in entries.items() if n not in sdists}
    source = Path(args.source).resolve()
    if not (source / "setup.py").is_file() or not (source / "imet").is_dir():
        raise UserError(f"--source {source}: not an imet checkout (needs setup.py and imet/)")
    scan_sources(source)
    state = wheelbuild.source_state(source)
    say(f"imet dataset for CPython {args.python_version} on {', '.join(platforms)}, "
        f"owner {owner or 'unknown'}")
    files = download(wheels_locked, cache, args.python_version, platforms)
    fallback = fallback_requirements(files, set(lock.read_lock(lock.FALLBACK_LOCK)),
                                     args.python_version)
    staging = prepare_out(Path(args.out))
    try:
        packages = []
        for name, entry in sorted(wheels_locked.items()):
            shutil.copyfile(files[name], staging / files[name].name)
            packages.append({"name": entry["name"], "version": entry["version"],
                             "file": files[name].name, "origin": "locked wheel"})
            if name in fallback:  # the bootstrap keeps an image's copy that satisfies this
                packages[-1].update(origin="locked fallback wheel", **fallback[name])
        for name, entry in sorted(sdists.items()):
            sdist = next((p for p in sorted(cache.glob("*.tar.gz"))
                          if sha256(p) in entry["hashes"]), None)
            if sdist is None:
                lock.sdist_entry(name, f"{entry['name']}=={entry['version']}", cache)
                sdist = next(p for p in sorted(cache.glob("*.tar.gz")) if sha256(p) in entry["hashes"])
            say(f"building a wheel from {sdist.name}")
            wheel = wheelbuild.build_sdist_wheel(sdist, staging)
            packages.append({"name": entry["name"], "version": entry["version"], "file": wheel.name,
                             "origin": f"built from locked sdist {sdist.name}"})
        digest = hashlib.sha256(b"".join((source / rel).read_bytes() + str(rel).encode()
                                         for rel in wheelbuild.whitelisted_sources(source))).hexdigest()
        say("building the imet wheel")
        wheel, version = wheelbuild.build_imet_wheel(source, staging, state, digest)
        packages.append({"name": "imet", "version": version, "file": wheel.name,
                         "origin": "built from this repository"})
        for p in packages:
            p["sha256"] = sha256(staging / p["file"])
            p["import"] = import_name(p["name"], staging / p["file"])
        shutil.copyfile(BOOTSTRAP_SRC, staging / BOOTSTRAP_NAME)
        for path in sorted(staging.iterdir()):
            secrets_scan.scan_file(path, look_inside_zip=path.name in {p["file"] for p in packages
                                                                       if "built" in p["origin"]})
        write_json(staging / "MANIFEST.json", manifest(packages, staging, state, version,
                                                       args.python_version, platforms, owner))
        if owner:
            write_json(staging / "dataset-metadata.json", {
                "title": TITLE, "id": f"{owner}/{SLUG}", "licenses": [{"name": "other"}],
                "subtitle": "imet package and its pinned wheels for offline kernels",
                "description": description(packages, args.python_version, platforms)})
        else:
            say("no Kaggle owner, so no dataset-metadata.json: the folder serves `imet kaggle "
                f"run`; to upload it, {SIGN_IN_HINT}")
        publish(staging, Path(args.out))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    total = sum(p.stat().st_size for p in Path(args.out).iterdir())
    say(f"wrote {args.out}: {len(packages)} wheels, {total / 1e6:.1f} MB, in {time.time() - started:.0f}s")
    return Path(args.out)


def manifest(packages, staging, state, version, python_version, platforms, owner) -> dict:
    tools = {}
    for tool in ("pip", "setuptools", "wheel"):
        try:
            from importlib.metadata import version as v
            tools[tool] = v(tool)
        except Exception:  # a missing build tool is recorded as absent, not fatal
            tools[tool] = None
    return {
        "format": "imet-dataset", "manifest_version": 1, "dataset": f"{owner}/{SLUG}" if owner else None,
        "imet_version": version,
        "target": {"python": python_version, "implementation": "cp",
                   "abi": "cp" + python_version.replace(".", ""), "platforms": platforms},
        "source": {k: state[k] for k in ("git_commit", "dirty", "source_date_epoch")},
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "built_with": {"python": sys.version.split()[0], **tools},
        "bootstrap": BOOTSTRAP_NAME,
        "packages": packages,
        "files": {p.name: sha256(p) for p in sorted(staging.iterdir())},
    }


def description(packages, python_version, platforms) -> str:
    rows = "\n".join(f"- {p['name']} {p['version']} ({p['origin']})" for p in packages)
    return (f"The imet package and the wheels it needs beyond Kaggle's image, for CPython "
            f"{python_version} on {', '.join(platforms)}. In a kernel, run first:\n\n"
            f"    python /kaggle/input/{SLUG}/{BOOTSTRAP_NAME}\n\n"
            f"It verifies every file against MANIFEST.json and installs offline.\n\n{rows}\n\n"
            "Each bundled package keeps its own license.")


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="build_dataset.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--out", default=str(REPO / "dist" / "kaggle-dataset"),
                   help="folder to write (replaced as a whole when the build succeeds)")
    p.add_argument("--owner", help="Kaggle user that owns the dataset (default: $KAGGLE_USERNAME, "
                   "the user name in ~/.kaggle/kaggle.json or in what `kaggle auth login` "
                   "cached, else the user of $KAGGLE_API_TOKEN / ~/.kaggle/access_token as the "
                   "kaggle client finds it)")
    p.add_argument("--python-version", default="3.12",
                   help="CPython version of the kernel (default 3.12, Kaggle's image)")
    p.add_argument("--platform", action="append", dest="platforms",
                   help=f"platform tag of the kernel, repeatable (default {lock.DEFAULT_PLATFORM})")
    p.add_argument("--include-torch", action="store_true",
                   help="also bundle torch, torchvision and their CUDA wheels "
                   "(wheels/requirements-torch.txt; several GB)")
    p.add_argument("--lock", default=str(lock.LOCK), help="the lock file (default wheels/requirements.txt)")
    p.add_argument("--source", default=str(REPO),
                   help="the imet checkout to package (default: this repository)")
    p.add_argument("--cache", default=str(REPO / "wheels"), help="download cache (default wheels/)")
    args = p.parse_args(argv)
    try:
        build(args)
    except (UserError, FetchError, wheelbuild.BuildError, secrets_scan.SecretFound) as exc:
        print(f"build_dataset: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
