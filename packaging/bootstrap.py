"""imet offline bootstrap: install imet and its pinned wheels from the imet-src Kaggle dataset.

Shipped in the dataset as `imet_bootstrap.py`; the first thing every imet kernel runs:

    python /kaggle/input/datasets/<owner>/imet-src/imet_bootstrap.py

(/kaggle/input/imet-src/ in older sessions, which mounted each input flat.)

Standard library only: it runs before anything is installed. It finds the dataset (its own folder,
or the folder holding an imet MANIFEST.json anywhere under `$IMET_KAGGLE_ROOT/input`, default
/kaggle/input, in any mount layout), checks that this interpreter and platform are the ones the
wheels were built for, verifies every file's sha256, installs exactly the locked files with
`pip install --no-index --no-deps`, checks that each package imports at its locked version and
prints a short table. A fallback wheel (one the MANIFEST gives a `fallback` requirement: timm and
its stack, which Kaggle's image ships) is installed only when the image's copy is missing or does
not satisfy that requirement, and the bootstrap says so in one line; otherwise the image's is
kept. A marker keyed by the MANIFEST's hash makes a second call return at once.
Exit status 0 on success, 2 with one line `imet-bootstrap: error: ...` otherwise.
"""
import argparse
import hashlib
import importlib
import importlib.metadata
import json
import os
import platform
import re
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

MANIFEST_NAME = "MANIFEST.json"
FORMAT = "imet-dataset"
ROOT_ENV = "IMET_KAGGLE_ROOT"  # the Kaggle root (/kaggle); the local emulator points it elsewhere
DATASET_ENV = "IMET_DATASET_DIR"  # names the dataset folder outright
SEARCH_DEPTH = 6  # /kaggle/input/datasets/<owner>/<slug>/versions/<n> is five levels down


class BootstrapError(Exception):
    """Something the user can fix; printed as one line."""


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(folder):
    path = Path(folder) / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise BootstrapError(f"{path}: unreadable ({exc}); re-attach the imet-src dataset")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BootstrapError(f"{path}: not an imet dataset manifest (format != {FORMAT!r})")
    return manifest


def _is_imet_manifest(path):
    try:
        return json.loads(path.read_bytes()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def find_dataset(input_root=None, here=None):
    """The dataset folder: $IMET_DATASET_DIR, this script's own folder, or a search of the inputs."""
    if os.environ.get(DATASET_ENV):
        return Path(os.environ[DATASET_ENV])
    if here is not None and _is_imet_manifest(Path(here) / MANIFEST_NAME):
        return Path(here)
    root = Path(input_root or Path(os.environ.get(ROOT_ENV, "/kaggle")) / "input")
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        depth = len(Path(dirpath).relative_to(root).parts)
        if depth >= SEARCH_DEPTH:
            dirnames[:] = []
        dirnames.sort()
        if MANIFEST_NAME in filenames and _is_imet_manifest(Path(dirpath) / MANIFEST_NAME):
            found.append(Path(dirpath))
            dirnames[:] = []
    if not found:
        raise BootstrapError(f"no imet dataset (a {MANIFEST_NAME} of format {FORMAT!r}) under "
                             f"{root}; attach <owner>/imet-src to the kernel's dataset_sources")
    hashes = {file_sha256(f / MANIFEST_NAME) for f in found}
    if len(hashes) > 1:
        raise BootstrapError(f"{len(found)} different imet datasets attached "
                             f"({', '.join(map(str, found))}); attach one, or set {DATASET_ENV}")
    return found[0]


def _glibc():
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
        return tuple(int(x) for x in version.split(".")[:2]) if name == "glibc" else None
    except (ValueError, OSError, AttributeError):
        return None


def _platform_ok(tag, machine, glibc):
    legacy = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}
    m = re.fullmatch(r"manylinux_(\d+)_(\d+)_(\w+)", tag)
    old = re.fullmatch(r"(manylinux1|manylinux2010|manylinux2014)_(\w+)", tag)
    if m:
        need, arch = (int(m.group(1)), int(m.group(2))), m.group(3)
    elif old:
        need, arch = legacy[old.group(1)], old.group(2)
    else:
        return tag in ("any", f"linux_{machine}")
    return arch == machine and glibc is not None and glibc >= need


def check_interpreter(manifest):
    """A clear error naming the mismatch when this interpreter cannot use the bundled wheels."""
    target = manifest["target"]
    here_py = "%d.%d" % sys.version_info[:2]
    impl = sys.implementation.name
    machine = platform.machine()
    glibc = _glibc()
    here = (f"{impl} {here_py} on {sys.platform} {machine}"
            + (f" (glibc {glibc[0]}.{glibc[1]})" if glibc else ""))
    wanted = f"CPython {target['python']} on {' or '.join(target['platforms'])}"
    hint = f"rebuild with `python packaging/build_dataset.py --python-version {here_py}`"
    if impl != "cpython" or here_py != target["python"]:
        raise BootstrapError(f"the dataset holds wheels for {wanted}, but this kernel runs {here}; {hint}")
    if not sys.platform.startswith("linux") or not any(
            _platform_ok(t, machine, glibc) for t in target["platforms"]):
        raise BootstrapError(f"the dataset holds wheels for {wanted}, but this machine is {here}; "
                             f"rebuild with a --platform this machine runs")


def verify_files(folder, manifest):
    for name, digest in sorted(manifest["files"].items()):
        path = Path(folder) / name
        if not path.is_file():
            raise BootstrapError(f"{path}: missing from the dataset; upload a complete build again")
        if file_sha256(path) != digest:
            raise BootstrapError(f"{path}: sha256 differs from {MANIFEST_NAME}; the upload is "
                                 "damaged or altered, build and upload the dataset again")


def marker_path(manifest_hash):
    # The marker lives with the packages it describes: a fresh environment has none.
    return Path(sysconfig.get_paths()["purelib"]) / f".imet-bootstrap-{manifest_hash[:16]}.json"


def installed_version(dist):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def editable_location(dist):
    """Where an editable (development) install of `dist` points, else None."""
    for found in importlib.metadata.distributions(name=dist):  # an egg-info in cwd may shadow
        try:
            info = json.loads(found.read_text("direct_url.json") or "{}")
        except ValueError:
            continue
        if info.get("dir_info", {}).get("editable"):
            return info.get("url")
    return None


def _same_version(a, b):
    return a is not None and re.sub(r"[-_.]", ".", a) == re.sub(r"[-_.]", ".", b)


def image_shortfall(package):
    """Why this interpreter's own copy of a fallback package cannot be kept, or None to keep it."""
    try:  # pip, which the bootstrap runs anyway, carries `packaging`
        from pip._vendor.packaging.requirements import Requirement
    except ImportError:
        from packaging.requirements import Requirement
    want = Requirement(package["fallback"])
    got = installed_version(package["name"])
    if got is None:
        return f"this kernel has no {package['name']}"
    if not want.specifier.contains(got, prereleases=True):
        return f"this kernel's {package['name']} {got} does not satisfy {want}"
    return None


def fallbacks_to_install(packages):
    """Names of the fallback packages to install: those that imet, or a fallback being
    installed, asks for and whose copy in this kernel falls short."""
    def key(name):  # PEP 503's name; imet's own is not installed yet
        return re.sub(r"[-_.]+", "-", name).lower()

    need, grew = {"imet"}, True
    while grew:
        grew = False
        for p in packages:
            if p.get("fallback") and key(p["name"]) not in need and \
                    need & set(p.get("fallback_for", ["imet"])) and image_shortfall(p):
                need.add(key(p["name"]))
                grew = True
    return {p["name"] for p in packages if p.get("fallback") and key(p["name"]) in need}


def pip_install(folder, packages):
    """Install exactly the listed wheel files, offline, ignoring any pip configuration."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull  # no index, find-links or constraints from the machine
    # pip byte-compiles at install, which also keeps old packages' SyntaxWarnings
    # (pretrainedmodels) out of the kernel's log.
    cmd = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--find-links",
           str(folder), "--no-cache-dir", "--disable-pip-version-check", "--no-warn-script-location",
           "--quiet", *[str(Path(folder) / p["file"]) for p in packages]]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise BootstrapError(f"pip install from {folder} failed: {last}")


def check_imports(packages):
    """[(name, version, import name, status)]; status 'ok' or what went wrong."""
    # albumentations would ask PyPI for its latest version while being imported here.
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    importlib.invalidate_caches()
    rows = []
    for p in packages:
        got = installed_version(p["name"])
        status = "ok"
        if editable_location(p["name"]):
            status = f"ok (kept the editable install {got})"
        elif not _same_version(got, p["version"]):
            status = f"installed {got or 'nothing'}, locked {p['version']}"
        elif p.get("import"):
            t0 = time.time()
            try:
                importlib.import_module(p["import"])
                status = f"ok ({time.time() - t0:.1f}s)"
            except Exception as exc:  # any import failure is reported in the table, then raised
                status = f"import failed: {type(exc).__name__}: {exc}".splitlines()[0]
        rows.append((p["name"], p["version"], p.get("import") or "-", status))
    return rows


def print_table(rows, out=sys.stdout):
    widths = [max(len(str(r[i])) for r in rows + [("package", "version", "import", "status")])
              for i in range(4)]
    for row in [("package", "version", "import", "status")] + rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip(), file=out)


def bootstrap(folder=None, quiet=False, check=True):
    """Install the dataset into this interpreter; returns a summary dict. Raises BootstrapError."""
    started = time.time()
    folder = Path(folder) if folder else find_dataset(here=Path(__file__).resolve().parent)
    manifest = read_manifest(folder)
    manifest_hash = file_sha256(folder / MANIFEST_NAME)
    # Fallbacks stand in only for what the image lacks; an image's copy that fits is kept.
    wanted = fallbacks_to_install(manifest["packages"])
    kept = [p for p in manifest["packages"] if p.get("fallback") and p["name"] not in wanted]
    packages = [p for p in manifest["packages"] if p not in kept]
    # Checked on every call, the fast one too (10 MB of hashing): an altered or foreign
    # dataset is refused even where an earlier, intact copy was installed.
    check_interpreter(manifest)
    verify_files(folder, manifest)
    marker = marker_path(manifest_hash)
    if marker.is_file() and all(_same_version(installed_version(p["name"]), p["version"])
                                or editable_location(p["name"]) for p in packages):
        if not quiet:
            print(f"imet-bootstrap: {len(packages)} packages from {folder} already installed "
                  f"(imet {manifest.get('imet_version')})")
        return {"folder": str(folder), "installed": False, "seconds": time.time() - started}
    if not quiet:
        for p in packages:
            if p.get("fallback"):
                print(f"imet-bootstrap: {image_shortfall(p)}; installing the dataset's "
                      f"{p['name']} {p['version']}")
    # A developer's editable checkout (the local emulator runs kernels in the project venv) is
    # what they want to run: replacing it with the dataset's copy would hide their changes.
    pip_started = time.time()
    pip_install(folder, [p for p in packages if not editable_location(p["name"])])
    pip_seconds = time.time() - pip_started
    rows = check_imports(packages) if check else []
    rows += [(p["name"], installed_version(p["name"]) or "-", "-",
              "ok (not needed: nothing installed asks for it)" if image_shortfall(p)
              else f"ok (kept this kernel's; fits {p['fallback']})") for p in kept if check]
    if not quiet and rows:
        print_table(rows)
    bad = [r for r in rows if not r[3].startswith("ok")]
    if bad:
        raise BootstrapError(f"{bad[0][0]} {bad[0][1]}: {bad[0][3]}")
    marker.write_text(json.dumps({"manifest_sha256": manifest_hash, "folder": str(folder),
                                  "installed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}))
    if not quiet:
        print(f"imet-bootstrap: installed {len(packages)} packages from {folder} in "
              f"{time.time() - started:.1f}s (pip {pip_seconds:.1f}s; "
              f"source {manifest['source'].get('git_commit') or '?'})")
    return {"folder": str(folder), "installed": True, "seconds": time.time() - started}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="imet_bootstrap.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", help=f"the dataset folder (default: this script's folder, "
                        f"${DATASET_ENV}, or a search under ${ROOT_ENV}/input)")
    parser.add_argument("--quiet", action="store_true", help="print nothing on success")
    args = parser.parse_args(argv)
    try:
        bootstrap(args.dataset, quiet=args.quiet)
    except BootstrapError as exc:
        print(f"imet-bootstrap: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
