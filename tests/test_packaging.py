"""packaging/: the lock, the dataset build, the offline bootstrap, the real kaggle client's upload.

The slow tests (`-m packaging`) build real datasets (downloads are cached in wheels/), install one
into a fresh venv that sees only Kaggle's platform set, with no network at all (`unshare -n`) and a
read-only input mount, then import imet and take a training step.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "packaging"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import bootstrap  # noqa: E402
import lock  # noqa: E402
import secrets_scan  # noqa: E402
import wheelbuild  # noqa: E402
import wheelfetch  # noqa: E402
from kaggle_standin import KaggleStandin  # noqa: E402

from imet.kaggle.emulator import bundled_by, fresh_env

PY = f"{sys.version_info[0]}.{sys.version_info[1]}"
BUILD = [sys.executable, str(REPO / "packaging" / "build_dataset.py")]
FAKE_TOKEN = "123456789:" + "A1b2C3d4E5" * 3 + "xY_-z"  # shaped like a bot token, not one


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_build(*args, env=None):
    return subprocess.run(BUILD + list(args), capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def dataset(local_dataset):
    return local_dataset


def test_lock_bundles_everything_the_platform_lacks():
    locked = lock.read_lock()
    for spec in lock.install_requires():
        name = lock.requirement_name(spec)
        assert (name in lock.PLATFORM) != (name in locked), name
    for name in ("six", "munch", "albucore", "pydantic-core", "httpx", "pexpect", "ptyprocess"):
        assert name in locked, name
    assert not set(locked) & set(lock.PLATFORM)
    assert all(e["hashes"] and all(len(h) == 64 for h in e["hashes"]) for e in locked.values())
    assert lock.lock_targets() == ["3.11", "3.12"]
    torch = lock.read_lock(lock.TORCH_LOCK)
    assert {"torch", "torchvision"} <= set(torch) and not set(torch) & set(locked)
    assert lock.lock_targets(lock.TORCH_LOCK) == ["3.12"]


def test_fallback_lock_pins_the_timm_stack_apart_from_the_lock():
    fallback, locked = lock.read_lock(lock.FALLBACK_LOCK), lock.read_lock()
    assert set(lock.FALLBACK) <= set(fallback) and not set(fallback) & set(locked)
    assert not set(fallback) & (set(lock.PLATFORM) - set(lock.FALLBACK))
    assert lock.lock_targets(lock.FALLBACK_LOCK) == lock.lock_targets()


def test_bootstrap_keeps_an_image_copy_only_when_it_satisfies_the_requirement():
    import timm

    assert bootstrap.image_shortfall({"name": "timm", "fallback": "timm>=0.9"}) is None
    assert bootstrap.image_shortfall({"name": "timm", "fallback": "timm>=99"}) == \
        f"this kernel's timm {timm.__version__} does not satisfy timm>=99"
    assert bootstrap.image_shortfall({"name": "no-such-dist", "fallback": "no-such-dist"}) == \
        "this kernel has no no-such-dist"
    # A missing dependency is installed only for a fallback that is itself installed.
    packages = [{"name": "timm", "fallback": "timm>=99", "fallback_for": ["imet"]},
                {"name": "safetensors", "fallback": "safetensors>=0.4", "fallback_for": ["imet"]},
                {"name": "No_Such.Dist", "fallback": "no-such-dist", "fallback_for": ["timm"]},
                {"name": "no-such-other", "fallback": "no-such-other",
                 "fallback_for": ["safetensors"]}, {"name": "six", "version": "1.17.0"}]
    assert bootstrap.fallbacks_to_install(packages) == {"timm", "No_Such.Dist"}


def test_a_target_the_lock_does_not_cover_is_refused_before_any_download(tmp_path):
    proc = run_build("--owner", "tester", "--python-version", "3.11", "--include-torch",
                     "--out", str(tmp_path / "out"))
    assert proc.returncode == 2 and not (tmp_path / "out").exists()
    assert "requirements-torch.txt has hashes for CPython 3.12, not 3.11" in proc.stderr


def _sdist(folder: Path, setup_py: str) -> Path:
    """A one-file sdist, `brokenpkg-1.0.tar.gz`, whose setup.py is `setup_py`."""
    src = folder / "brokenpkg-1.0"
    src.mkdir(parents=True)
    (src / "setup.py").write_text(setup_py)
    sdist = folder / "brokenpkg-1.0.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        tar.add(src, arcname=src.name)
    shutil.rmtree(src)
    return sdist


def test_a_failed_wheel_build_shows_the_builds_own_error(tmp_path):
    sdist = _sdist(tmp_path, "import imet_no_such_build_dep\n")
    with pytest.raises(wheelbuild.BuildError) as err:
        wheelbuild.build_sdist_wheel(sdist, tmp_path / "out")
    message = str(err.value)
    assert message.startswith("building a wheel from brokenpkg-1.0 failed: ")
    assert "No module named 'imet_no_such_build_dep'" in message
    assert "See above" not in message and "\n" not in message
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def wheelless_python(tmp_path_factory):
    """A real venv as `python -m venv` makes it on 3.11: pip and setuptools 65, which builds
    wheels only with the `wheel` package, absent here, as is `packaging`."""
    venv = tmp_path_factory.mktemp("wheelless") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
    python = venv / "bin" / "python"
    tools = subprocess.run([python, "-m", "pip", "list", "--format", "json"], check=True,
                           capture_output=True, text=True).stdout
    names = {p["name"]: p["version"] for p in json.loads(tools)}
    if "wheel" in names or int(names.get("setuptools", "99").split(".")[0]) >= 70:
        pytest.skip(f"this Python's venv brings {names}: no wheel-less setuptools to test with")
    return python


def test_a_missing_build_tool_is_named_before_any_download(wheelless_python, tmp_path):
    proc = subprocess.run([wheelless_python, *BUILD[1:], "--python-version", PY,
                           "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == (f"build_dataset: error: {wheelless_python} lacks the packages "
                           "packaging, wheel, needed to build and check the wheels: run this "
                           "script with the project's venv, `.venv/bin/python "
                           "packaging/build_dataset.py ...` (`make venv` makes it)\n")
    assert not (tmp_path / "out").exists() and not any((tmp_path / "cache").iterdir())


def test_pips_bdist_wheel_error_is_shown_and_explained(wheelless_python, tmp_path):
    """Past the check (say, setuptools reports no version), pip's real failure still names its
    cause and the way out."""
    sdist = _sdist(tmp_path, "from setuptools import setup\nsetup(name='brokenpkg', version='1.0')\n")
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import wheelbuild\n"
            "try:\n    wheelbuild.build_sdist_wheel(wheelbuild.Path(sys.argv[2]), "
            "wheelbuild.Path(sys.argv[3]))\nexcept wheelbuild.BuildError as e:\n    print(e)")
    proc = subprocess.run([wheelless_python, "-c", code, str(REPO / "packaging"), str(sdist),
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert proc.stdout.startswith("building a wheel from brokenpkg-1.0 failed: "), proc.stderr
    assert "error: invalid command 'bdist_wheel'" in proc.stdout
    assert f"{wheelless_python} lacks the `wheel` package: run this script with the " \
        "project's venv, `.venv/bin/python packaging/build_dataset.py ...`" in proc.stdout


def test_platform_tags_widen_like_pip_should():
    tags = lock.expand_platforms(["manylinux_2_28_x86_64"])
    assert tags[0] == "manylinux_2_28_x86_64"
    assert {"manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux1_x86_64"} <= set(tags)
    fits = wheelfetch.wheel_fits
    wheel = "pydantic_core-2.50.4-cp312-cp312-manylinux2014_x86_64.manylinux_2_17_x86_64.whl"
    assert fits(wheel, "3.12", ["manylinux_2_28_x86_64"])
    assert not fits(wheel, "3.11", ["manylinux_2_28_x86_64"])
    assert not fits(wheel, "3.12", ["manylinux_2_12_x86_64"])
    assert fits("opencv-5.0-cp37-abi3-manylinux_2_28_x86_64.whl", "3.12", ["manylinux_2_28_x86_64"])
    assert fits("six-1.17.0-py2.py3-none-any.whl", "3.12", ["manylinux_2_28_x86_64"])


def test_secret_scan_names_the_file_never_the_secret(tmp_path):
    leaky = tmp_path / "x-1.0-py3-none-any.whl"
    with zipfile.ZipFile(leaky, "w") as zf:
        zf.writestr("x/__init__.py", f"TOKEN = '{FAKE_TOKEN}'\n")
    with pytest.raises(secrets_scan.SecretFound) as err:
        secrets_scan.scan_file(leaky)
    assert "x/__init__.py line 1" in str(err.value) and FAKE_TOKEN not in str(err.value)
    (tmp_path / "kaggle.json").write_text('{"username": "u", "key": "' + "ab" * 16 + '"}')
    with pytest.raises(secrets_scan.SecretFound, match="kaggle.json"):
        secrets_scan.scan_file(tmp_path / "kaggle.json")


@pytest.mark.packaging
def test_dataset_is_flat_verified_and_whitelisted(dataset):
    names = sorted(p.name for p in dataset.iterdir())
    assert all((dataset / n).is_file() for n in names)  # Kaggle uploads top-level files only
    manifest = json.loads((dataset / "MANIFEST.json").read_text())
    meta = json.loads((dataset / "dataset-metadata.json").read_text())
    assert meta["id"] == "tester/imet-src" and len(meta["licenses"]) == 1
    assert set(names) == set(manifest["files"]) | {"MANIFEST.json", "dataset-metadata.json"}
    assert all(sha256(dataset / n) == h for n, h in manifest["files"].items())
    assert manifest["target"] == {"python": PY, "implementation": "cp",
                                  "abi": "cp" + PY.replace(".", ""),
                                  "platforms": ["manylinux_2_28_x86_64"]}
    locked, fallback = lock.read_lock(), lock.read_lock(lock.FALLBACK_LOCK)
    for p in manifest["packages"]:
        if p["origin"] == "locked wheel":
            assert p["sha256"] in locked[lock.canonical(p["name"])]["hashes"], p["name"]
        if p["origin"] == "locked fallback wheel":
            assert p["sha256"] in fallback[lock.canonical(p["name"])]["hashes"], p["name"]
    by_name = {lock.canonical(p["name"]): p for p in manifest["packages"]}
    assert set(by_name) == set(locked) | set(fallback) | {"imet"}
    assert {n for n, p in by_name.items() if p.get("fallback")} == set(fallback)
    # the emulated image keeps its own timm stack, as Kaggle's does
    assert bundled_by([dataset]) == set(locked) | {"imet"}
    assert by_name["pretrainedmodels"]["file"].endswith("-py3-none-any.whl")
    with zipfile.ZipFile(dataset / by_name["imet"]["file"]) as zf:
        tops = {n.split("/")[0] for n in zf.namelist()}
    assert tops == {"imet", f"imet-{by_name['imet']['version']}.dist-info"}
    assert manifest["source"]["git_commit"] and manifest["imet_version"] == by_name["imet"]["version"]


@pytest.mark.packaging
def test_build_refuses_secrets_and_keeps_the_key_out(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(REPO / "imet", src / "imet", ignore=shutil.ignore_patterns("__pycache__"))
    for f in ("setup.py", "README.md"):
        shutil.copy(REPO / f, src / f)
    (src / "imet" / "leak.py").write_text(f"BOT = '{FAKE_TOKEN}'\n")
    out = tmp_path / "out"
    proc = run_build("--owner", "tester", "--source", str(src), "--out", str(out))
    assert proc.returncode == 2 and not out.exists()
    assert "imet/leak.py line 1" in proc.stderr and FAKE_TOKEN not in proc.stderr + proc.stdout
    assert len(proc.stderr.strip().splitlines()) == 1
    (src / "imet" / "leak.py").unlink()
    (src / "imet" / "kaggle.json").write_text('{"username": "u", "key": "k"}')
    proc = run_build("--owner", "tester", "--source", str(src), "--out", str(out))
    assert proc.returncode == 2 and "imet/kaggle.json" in proc.stderr and not out.exists()
    # the owner comes from kaggle.json's username; the key never reaches the output or the log
    (src / "imet" / "kaggle.json").unlink()
    config = tmp_path / "cfg"
    config.mkdir()
    (config / "kaggle.json").write_text(json.dumps({"username": "someone", "key": "f" * 32}))
    env = {"KAGGLE_CONFIG_DIR": str(config), "KAGGLE_USERNAME": ""}
    proc = run_build("--source", str(src), "--python-version", PY, "--out", str(out), env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "dataset-metadata.json").read_text())["id"] == "someone/imet-src"
    assert "f" * 32 not in proc.stderr + proc.stdout
    assert not any("f" * 32 in p.read_text(errors="ignore") for p in out.glob("*.json"))
    # with no account at all the build still serves the emulator; it says how to make it
    # uploadable and writes no dataset-metadata.json with a made-up owner
    env = {"KAGGLE_CONFIG_DIR": str(tmp_path / "none"), "KAGGLE_USERNAME": "", "HOME": str(tmp_path)}
    proc = run_build("--source", str(src), "--python-version", PY, "--out", str(tmp_path / "o2"),
                     env=env)
    assert proc.returncode == 0 and "--owner" in proc.stdout + proc.stderr, proc.stderr
    assert not (tmp_path / "o2" / "dataset-metadata.json").exists()
    assert json.loads((tmp_path / "o2" / "MANIFEST.json").read_text())["dataset"] is None


@pytest.mark.packaging
def test_default_target_is_kaggles_python(dataset, tmp_path):
    out = tmp_path / "ds312"
    proc = run_build("--owner", "tester", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "MANIFEST.json").read_text())
    assert manifest["target"]["python"] == "3.12"
    files = {p["name"]: p["file"] for p in manifest["packages"]}
    assert "-cp312-cp312-manylinux" in files["pydantic_core"]
    # Same inputs, same bytes: the pure wheels of two independent builds are identical, the
    # ones we build included (imet whenever its sources did not change in between).
    first = {p["file"]: p["sha256"] for p in json.loads((dataset / "MANIFEST.json").read_text())["packages"]}
    shared = [p for p in manifest["packages"] if p["file"] in first]
    assert any(p["name"] == "pretrainedmodels" for p in shared) and len(shared) >= 15
    assert all(p["sha256"] == first[p["file"]] for p in shared)
    # this interpreter is not the target: the bootstrap says which mismatch, before touching pip
    proc = subprocess.run([sys.executable, str(out / "imet_bootstrap.py")], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2
    assert "CPython 3.12" in proc.stderr and f"cpython {PY}" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.packaging
def test_bootstrap_rejects_an_altered_file(dataset, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(dataset, copy)
    victim = next(copy.glob("six-*.whl"))
    victim.write_bytes(victim.read_bytes() + b"\0")
    proc = subprocess.run([sys.executable, str(copy / "imet_bootstrap.py")], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and victim.name in proc.stderr and "sha256" in proc.stderr


TRAIN_STEP = """
import torch, imet, albumentations, telegram, iterstrat, delegator, pretrainedmodels, six
from imet.models import build_model
torch.manual_seed(0)
model = build_model("resnet18", num_classes=7)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
x, y = torch.randn(4, 3, 32, 32), (torch.rand(4, 7) > 0.5).float()
loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)
loss.backward()
opt.step()
print("imet", imet.__file__, "loss", float(loss))
"""


@pytest.mark.packaging
def test_offline_bootstrap_in_a_fresh_platform_venv(dataset, tmp_path):
    venv = tmp_path / "venv"
    python = fresh_env(sys.executable, set(lock.read_lock()) | {"imet"}, venv,
                       cache=tmp_path / "platform-env")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON"))}
    for module in ("imet", "six", "albumentations", "numpy"):
        probe = subprocess.run([python, "-c", f"import {module}"], cwd=tmp_path, env=env,
                               capture_output=True, text=True)
        # nothing of ours is there before the bootstrap; the platform is
        assert (probe.returncode == 0) == (module == "numpy"), (module, probe.stderr[-300:])
    kaggle = tmp_path / "kaggle"
    mount = kaggle / "input" / "datasets" / "tester" / "imet-src" / "versions" / "3"
    mount.mkdir(parents=True)
    (kaggle / "working").mkdir()
    # No network at all, the input mounted read-only as on Kaggle; the first call searches the
    # inputs (run from outside the dataset), the second is the dataset's own copy.
    script = (f"mount --bind {dataset} {mount} && mount -o remount,bind,ro {mount} && "
              f"cd {kaggle / 'working'} && "
              f"{python} {REPO / 'packaging' / 'bootstrap.py'} && "
              f"{python} {mount / 'imet_bootstrap.py'} && "
              f"{python} -c '{TRAIN_STEP}'")
    env.update(IMET_KAGGLE_ROOT=str(kaggle), HOME=str(tmp_path))
    proc = subprocess.run(["unshare", "-n", "-m", "--", "sh", "-c", script], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "package" in out and "albumentations" in out and "installed 25 packages" in out
    assert "already installed" in out  # the second call returns at once
    assert f"imet {venv}" in out and "loss" in out
    assert "Read-only" not in proc.stderr


@pytest.mark.packaging
@pytest.mark.parametrize("image_has_timm", [False, True])
def test_bootstrap_installs_the_bundled_timm_only_where_the_image_lacks_it(
        dataset, tmp_path, image_has_timm):
    manifest = json.loads((dataset / "MANIFEST.json").read_text())
    timm = next(p for p in manifest["packages"] if p["name"] == "timm")
    assert timm["fallback"] == next(s for s in lock.install_requires() if s.startswith("timm"))
    venv = tmp_path / "venv"
    exclude = set(lock.read_lock()) | {"imet"} | (set() if image_has_timm else {"timm"})
    python = fresh_env(sys.executable, exclude, venv, cache=tmp_path / "platform-env")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON"))}
    env["HOME"] = str(tmp_path)
    proc = subprocess.run(
        [python, str(REPO / "packaging" / "bootstrap.py"), "--dataset", str(dataset)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    said = ("imet-bootstrap: this kernel has no timm; installing the dataset's timm "
            f"{timm['version']}")
    assert (said in proc.stdout) != image_has_timm, proc.stdout
    assert ("kept this kernel's; fits timm>=" in proc.stdout) == image_has_timm
    assert "installing the dataset's safetensors" not in proc.stdout  # the image's fits
    probe = subprocess.run([python, "-c", "import timm; print(timm.__file__)"], cwd=tmp_path,
                           env=env, capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr[-2000:]
    assert Path(probe.stdout.strip()).is_relative_to(venv) != image_has_timm


@pytest.mark.packaging
def test_real_kaggle_client_uploads_the_dataset(dataset, tmp_path):
    manifest = json.loads((dataset / "MANIFEST.json").read_text())
    kaggle_cli = Path(sys.executable).parent / "kaggle"
    with KaggleStandin() as server:
        env = {**os.environ, **server.client_env(tmp_path)}
        for args in (["datasets", "create", "-p", str(dataset), "-q"],
                     ["datasets", "version", "-p", str(dataset), "-m", "new wheels", "-q"]):
            proc = subprocess.run([str(kaggle_cli), *args], env=env, capture_output=True,
                                  text=True, timeout=300)
            assert proc.returncode == 0 and "error" not in proc.stdout.lower(), proc.stdout + proc.stderr
        created = [c for c in server.calls if c.get("method") == "CreateDataset"][0]
    assert created["user"] == "tester"
    body = created["body"]
    assert (body["ownerSlug"], body["slug"], body["licenseName"]) == ("tester", "imet-src", "other")
    assert body["isPrivate"] is True
    ds = server.datasets["tester/imet-src"]
    assert [v["notes"] for v in ds["versions"]] == ["Initial release", "new wheels"]
    for version in ds["versions"]:
        got = {f["name"]: hashlib.sha256(f["data"]).hexdigest() for f in version["files"]}
        assert got == {**manifest["files"], "MANIFEST.json": sha256(dataset / "MANIFEST.json")}


def _owner_in(env: dict) -> subprocess.CompletedProcess:
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import build_dataset; "
            "print(build_dataset.resolve_owner(None))")
    base = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_")}
    return subprocess.run([sys.executable, "-c", code, str(REPO / "packaging")],
                          capture_output=True, text=True, timeout=120, env={**base, **env})


def test_owner_follows_the_kaggle_clients_sign_in_ways(tmp_path):
    """kaggle 2.x: `kaggle auth login` caches credentials.json with the user name; an API token
    ($KAGGLE_API_TOKEN or ~/.kaggle/access_token) names nobody, so the client asks the server
    (here the stand-in); the legacy kaggle.json still works."""
    home = tmp_path / "home"
    (home / ".kaggle").mkdir(parents=True)
    (home / ".kaggle" / "credentials.json").write_text(json.dumps(
        {"refresh_token": "r" * 20, "access_token": "a" * 20, "username": "oauth-user"}))
    proc = _owner_in({"HOME": str(home)})
    assert proc.stdout.strip() == "oauth-user", proc.stderr
    assert "r" * 20 not in proc.stdout + proc.stderr

    (home / ".kaggle" / "credentials.json").unlink()
    with KaggleStandin() as kaggle:
        env = kaggle.client_env(tmp_path / "client")
        env = {k: v for k, v in env.items() if not k.startswith("KAGGLE_") or k ==
               "KAGGLE_API_ENVIRONMENT"}
        env.update(HOME=str(home), KAGGLE_API_TOKEN="standin-api-token")
        proc = _owner_in(env)
        assert proc.stdout.strip() == "tester", proc.stderr
        assert "IntrospectToken" in kaggle.methods()
        assert "standin-api-token" not in proc.stdout + proc.stderr

        (home / ".kaggle" / "access_token").write_text("standin-api-token\n")
        proc = _owner_in({k: v for k, v in env.items() if k != "KAGGLE_API_TOKEN"})
        assert proc.stdout.strip() == "tester", proc.stderr

        (home / ".kaggle" / "access_token").write_text("unknown-token\n")
        proc = _owner_in({k: v for k, v in env.items() if k != "KAGGLE_API_TOKEN"})
        assert proc.returncode != 0 and "kaggle auth login" in proc.stderr
        assert "unknown-token" not in proc.stdout + proc.stderr


def test_download_counter_counts_wheels_pip_finds_locally():
    """A transcript of `pip download` where one wheel came from a local file index: each
    requirement is counted once, so the counter runs 1, 2 without a gap."""
    transcript = [
        "Looking in indexes: https://pypi.org/simple, file:///opt/pypi/simple",
        "Collecting albucore==0.0.24 (from -r r.txt (line 1))",
        "  Downloading albucore-0.0.24-py3-none-any.whl (15 kB)",
        "Processing /opt/pypi/files/annotated_types-0.8.0-py3-none-any.whl (from -r r.txt "
        "(line 2))",
        "Saved ./out/albucore-0.0.24-py3-none-any.whl",
        "Successfully downloaded albucore annotated-types",
    ]
    names = [n for n in map(wheelfetch.fetched_name, transcript) if n]
    assert names == ["albucore==0.0.24", "annotated_types-0.8.0-py3-none-any.whl"]


# Where the source dataset sits below /kaggle/input: older sessions (flat), today's Kaggle
# (nested), and the deepest either search goes (6 folders).
SOURCE_MOUNTS = ["imet-src", "datasets/me/imet-src", "datasets/me/imet-src/a/b/c"]


@pytest.mark.parametrize("kernel", ["trainer", "validation", "inference"])
def test_each_kernel_finds_the_bootstrap_from_any_depth(tmp_path, kernel):
    """The kernel runs the first imet_bootstrap.py it finds, shallowest first, and the
    bootstrap itself finds its dataset at the same depths; one deeper is not searched."""
    root = tmp_path / "kaggle"
    for mount in SOURCE_MOUNTS + ["datasets/me/imet-src/a/b/c/d"]:
        folder = root / "input" / mount
        folder.mkdir(parents=True, exist_ok=True)
    script = REPO / "kernels" / kernel / f"{kernel}.py"
    for mount in [*reversed(SOURCE_MOUNTS), None]:
        for stale in (root / "input").rglob("imet_bootstrap.py"):
            stale.unlink()
        deep = root / "input" / (mount or "datasets/me/imet-src/a/b/c/d")
        (deep / "imet_bootstrap.py").write_text("import sys\nprint('ran', __file__)\nsys.exit(3)\n")
        (deep / "MANIFEST.json").write_text(json.dumps({"format": "imet-dataset"}))
        proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                              env={**os.environ, "IMET_KAGGLE_ROOT": str(root)}, timeout=60)
        if mount:
            assert proc.returncode == 3 and f"ran {deep / 'imet_bootstrap.py'}" in proc.stdout
            assert bootstrap.find_dataset(root / "input") == deep
        else:
            assert proc.returncode == 1 and "imet-src dataset is not attached" in proc.stderr
            with pytest.raises(bootstrap.BootstrapError):
                bootstrap.find_dataset(root / "input")
        (deep / "MANIFEST.json").unlink()
