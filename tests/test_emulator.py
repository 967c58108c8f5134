"""The local Kaggle emulator: isolation, time limit, chained sessions, rendering."""
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from imet.errors import UserError
from imet.kaggle.campaign.emulated import run_chain
from imet.kaggle.emulator import mount_points, run_session
from imet.kaggle.render import read_metadata, render

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="unshare needs root")


def make_kernel(folder, code, internet=True, kernel_id="{owner}/imet-test"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "script.py").write_text(textwrap.dedent(code))
    meta = {"id": kernel_id, "title": "imet test", "code_file": "script.py",
            "language": "python", "kernel_type": "script", "is_private": True,
            "enable_gpu": False, "enable_internet": internet,
            "dataset_sources": ["{owner}/imet-src"], "competition_sources": ["imet-2019-fgvc6"],
            "kernel_sources": [kernel_id]}
    (folder / "kernel-metadata.json").write_text(json.dumps(meta))
    return folder


PROBE = """
import getpass, os, socket, sys
from pathlib import Path
root = Path(os.environ["IMET_KAGGLE_ROOT"])
print("cwd-is-working", Path.cwd() == root / "working")
data = root / "input" / "datasets" / getpass.getuser() / "data"  # not in the metadata: a dataset
print("input", (data / "hello.txt").read_text().strip())
try:
    (data / "new.txt").write_text("x")
    print("input-writable")
except OSError:
    print("input-read-only")
try:
    socket.create_connection(("127.0.0.1", int(sys.argv[1] if len(sys.argv) > 1 else PORT)), timeout=2).close()
    print("network-up")
except OSError:
    print("network-down")
Path("result.txt").write_text("done")
"""


@pytest.fixture
def listener():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    yield server.getsockname()[1]
    server.close()


@pytest.fixture
def data_input(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "hello.txt").write_text("hello")
    return data


@needs_root
@pytest.mark.parametrize("internet", [True, False])
def test_session_isolation(tmp_path, listener, data_input, internet):
    kernel = make_kernel(tmp_path / "k", PROBE.replace("PORT", str(listener)), internet)
    result = run_session(kernel, {"data": data_input}, tmp_path / "out", 1, time_limit=60)
    log = result.log.read_text()
    assert result.exit_code == 0 and not result.timed_out, log
    assert "cwd-is-working True" in log and "input hello" in log
    assert "in the nested layout (datasets/" in log.splitlines()[0]
    assert "input-read-only" in log
    assert ("network-up" if internet else "network-down") in log
    assert (result.output / "result.txt").read_text() == "done"
    assert not (data_input / "new.txt").exists()


def test_time_limit_kills_and_keeps_output(tmp_path):
    kernel = make_kernel(tmp_path / "k", """
        import time
        from pathlib import Path
        Path("before.txt").write_text("saved")
        print("sleeping", flush=True)
        time.sleep(60)
        Path("after.txt").write_text("never")
        """)
    result = run_session(kernel, {}, tmp_path / "out", 1, time_limit=3)
    assert result.timed_out and result.seconds < 20
    assert (result.output / "before.txt").read_text() == "saved"
    assert not (result.output / "after.txt").exists()
    assert "sleeping" in result.log.read_text()


def test_chain_attaches_previous_output_until_no_handover(tmp_path):
    kernel = make_kernel(tmp_path / "k", """
        import getpass, json, os
        from pathlib import Path
        prev = (Path(os.environ["IMET_KAGGLE_ROOT"]) / "input" / "notebooks" / getpass.getuser()
                / "imet-test" / "count.txt")
        count = int(prev.read_text()) + 1 if prev.exists() else 1
        Path("count.txt").write_text(str(count))
        if count < 3:
            Path("HANDOVER.json").write_text(json.dumps({"step": count}))
        """)
    results = run_chain(kernel, {}, tmp_path / "out", time_limit=60, max_sessions=5)
    assert [r.version for r in results] == [1, 2, 3]
    assert [(r.output / "count.txt").read_text() for r in results] == ["1", "2", "3"]
    assert results[-1].handover is None and results[0].handover == {"step": 1}
    # The same chain again in the same OUT starts over: it attaches nothing of the first.
    again = run_chain(kernel, {}, tmp_path / "out", time_limit=60, max_sessions=5)
    assert [(r.version, (r.output / "count.txt").read_text()) for r in again] == [
        (1, "1"), (2, "2"), (3, "3")]


def test_inputs_are_mounted_nested_as_kaggle_does_today_or_flat():
    """Kind and owner from the metadata's sources ({owner}: the local user), an owner given in
    the name winning; a slug it does not name is a dataset of the kernel's owner."""
    meta = {"id": "{owner}/imet-trainer", "competition_sources": ["imet-2019-fgvc6"],
            "dataset_sources": ["{owner}/imet-src", "carol/imet-weights"],
            "kernel_sources": ["{owner}/imet-trainer", "dave/imet-inference"]}
    names = ["imet-2019-fgvc6", "imet-src", "imet-weights", "imet-trainer", "imet-inference",
             "erin/imet-src-old", "extra"]
    assert mount_points(meta, names, "nested", "me") == {
        "imet-2019-fgvc6": "competitions/imet-2019-fgvc6", "imet-src": "datasets/me/imet-src",
        "imet-weights": "datasets/carol/imet-weights", "imet-trainer": "notebooks/me/imet-trainer",
        "imet-inference": "notebooks/dave/imet-inference",
        "erin/imet-src-old": "datasets/erin/imet-src-old", "extra": "datasets/me/extra"}
    assert mount_points(meta, ["frank/imet-src"], "nested", "me") == {
        "frank/imet-src": "datasets/frank/imet-src"}
    assert mount_points(meta, names, "flat", "me") == {
        **{name: name for name in names}, "erin/imet-src-old": "imet-src-old"}
    with pytest.raises(UserError, match="attach each input once"):
        mount_points(meta, ["imet-src", "me/imet-src"], "nested", "me")
    with pytest.raises(UserError, match="attach each input once"):
        mount_points(meta, ["a/imet-src", "b/imet-src"], "flat", "me")
    with pytest.raises(UserError, match="nested, flat"):
        mount_points(meta, [], "deep", "me")


def test_flat_layout_and_the_header_naming_it(tmp_path, data_input):
    kernel = make_kernel(tmp_path / "k", """
        import os
        from pathlib import Path
        root = Path(os.environ["IMET_KAGGLE_ROOT"])
        print("flat", (root / "input" / "data" / "hello.txt").read_text())
        """)
    result = run_session(kernel, {"data": data_input}, tmp_path / "out", 1, 60, layout="flat")
    log = result.log.read_text()
    assert result.ok and "flat hello" in log, log
    assert "in the flat layout (data)" in log.splitlines()[0]


def test_chain_stops_at_max_sessions(tmp_path):
    kernel = make_kernel(tmp_path / "k", """
        from pathlib import Path
        Path("HANDOVER.json").write_text("{}")
        """)
    assert len(run_chain(kernel, {}, tmp_path / "out", time_limit=60, max_sessions=2)) == 2


def test_metadata_missing_field_is_one_line_error(tmp_path):
    kernel = make_kernel(tmp_path / "k", "print(1)")
    meta = json.loads((kernel / "kernel-metadata.json").read_text())
    del meta["enable_internet"]
    (kernel / "kernel-metadata.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="enable_internet"):
        read_metadata(kernel)


def test_render_replaces_owner(tmp_path):
    kernel = make_kernel(tmp_path / "k", "print(1)")
    out = render(kernel, "alice", tmp_path / "dist" / "k")
    meta = json.loads((out / "kernel-metadata.json").read_text())
    assert meta["id"] == "alice/imet-test" and meta["dataset_sources"] == ["alice/imet-src"]
    assert meta["kernel_sources"] == ["alice/imet-test"]
    assert (out / "script.py").read_text() == "print(1)"
    with pytest.raises(UserError):
        render(kernel, "a/b", tmp_path / "x")


def test_cli_missing_input_path(tmp_path):
    kernel = make_kernel(tmp_path / "k", "print(1)")
    proc = subprocess.run([sys.executable, "-m", "imet", "kaggle", "run", str(kernel), "--input",
                           f"data={tmp_path / 'nope'}", "--out", str(tmp_path / "o"),
                           "--time-limit", "60"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "nope" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@needs_root
def test_cli_with_relative_paths_as_the_readme_writes_them(tmp_path, data_input):
    """`kaggle run kernels/x --input data=DIR --out emu/x` from the folder the paths are
    relative to: the read-only mounts get absolute paths (they once resolved from the kernel's
    working folder: 'mount point does not exist', exit 32)."""
    make_kernel(tmp_path / "kernels" / "probe", PROBE.replace("PORT", "9"))
    (tmp_path / "inputs").mkdir()
    data_input.rename(tmp_path / "inputs" / "data")
    proc = subprocess.run([sys.executable, "-m", "imet", "kaggle", "run", "kernels/probe",
                           "--input", "data=inputs/data", "--time-limit", "60s",
                           "--out", "emu/probe"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    log = (tmp_path / "emu" / "probe" / "v1" / "log.txt").read_text()
    assert "input hello" in log and "input-read-only" in log


def test_session_log_names_the_accelerator_asked_for(tmp_path):
    code = "ACCELERATOR = 'none'\nprint('script asks for', ACCELERATOR)\n"
    kernel = make_kernel(tmp_path / "k", code)
    meta = json.loads((kernel / "kernel-metadata.json").read_text())
    (kernel / "kernel-metadata.json").write_text(json.dumps({**meta, "enable_gpu": True,
                                                             "machine_shape": "NvidiaTeslaT4"}))
    default = run_session(kernel, {}, tmp_path / "a", 1, time_limit=60)
    assert "accelerator NvidiaTeslaT4" in default.log.read_text().splitlines()[0]
    assert "script asks for NvidiaTeslaT4" in default.log.read_text()
    override = run_session(kernel, {}, tmp_path / "b", 1, time_limit=60, accelerator="nvidiah100")
    assert "accelerator NvidiaH100" in override.log.read_text().splitlines()[0]
    assert "script asks for NvidiaH100" in override.log.read_text()
    with pytest.raises(UserError, match="NvidiaTeslaT4"):
        run_session(kernel, {}, tmp_path / "c", 1, time_limit=60, accelerator="K80")


def test_the_script_is_told_its_kernel_id(tmp_path):
    """Kaggle gives a script no view of its metadata: the emulator, as render does, writes the
    kernel's id into the script's KERNEL line, the owner filled in."""
    import getpass

    kernel = make_kernel(tmp_path / "k", "KERNEL = None\nprint('kernel id', KERNEL)\n")
    result = run_session(kernel, {}, tmp_path / "out", 1, time_limit=60)
    assert f"kernel id {getpass.getuser()}/imet-test" in result.log.read_text()


ENV_PROBE = """
import importlib.util, sys, sysconfig
from pathlib import Path
for name in ("torch", "pandas", "numpy", "imet"):
    print(name, "importable" if importlib.util.find_spec(name) else "missing")
print("prefix", sys.prefix)
left = Path(sysconfig.get_paths()["purelib"]) / "left-by-a-session.txt"
print("fresh", not left.exists())
left.write_text("x")
"""


def test_kernel_runs_in_a_fresh_env_with_only_the_image_packages(tmp_path, monkeypatch):
    """No imet of the working tree (not even through PYTHONPATH), nothing an attached
    dataset bundles, nothing an earlier session installed; the image's packages are there,
    and the environment's template is built once."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("IMET_PLATFORM_ENV_CACHE", str(cache))
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[1]))
    kernel = make_kernel(tmp_path / "k", ENV_PROBE)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "MANIFEST.json").write_text(json.dumps(
        {"format": "imet-dataset", "packages": [{"name": "NumPy", "version": "1"}]}))
    logs = []
    for version in (1, 2):
        result = run_session(kernel, {"imet-src": bundle}, tmp_path / "out", version, 60)
        logs.append(result.log.read_text())
        assert result.ok, logs[-1]
    for version, log in enumerate(logs, 1):
        assert "torch importable" in log and "pandas importable" in log
        assert "numpy missing" in log and "imet missing" in log
        assert f"prefix {tmp_path / 'out' / f'v{version}' / 'env'}" in log
        assert "fresh True" in log
    assert len([p for p in cache.iterdir() if not p.name.startswith(".")]) == 1


def test_output_link_and_header_name_the_local_user(tmp_path):
    """OUT/output is the latest session's working folder (Kaggle keeps the latest version's
    output); the log header shows the kernel id with a user name, not the template's {owner}."""
    import getpass

    kernel = make_kernel(tmp_path / "k", """
        from pathlib import Path
        Path("made.txt").write_text("yes")
        """)
    for version in (1, 2):
        result = run_session(kernel, {}, tmp_path / "out", version, time_limit=60)
        assert (tmp_path / "out" / "output").resolve() == result.output.resolve()
    header = result.log.read_text().splitlines()[0]
    assert f"{getpass.getuser()}/imet-test v2" in header and "{owner}" not in header
    assert ((tmp_path / "out" / "output") / "made.txt").read_text() == "yes"


def test_input_names_and_the_layout_flag_are_checked_on_the_command_line(tmp_path, capsys):
    from imet.cli import main
    kernel = make_kernel(tmp_path / "k", "print(1)")
    with pytest.raises(SystemExit) as exit_:
        main(["kaggle", "run", str(kernel), "--out", str(tmp_path / "o"),
              "--input", f"a/b/c={tmp_path}"])
    assert exit_.value.code == 2 and "expected SLUG=PATH or OWNER/SLUG=PATH" in \
        capsys.readouterr().err
    assert main(["kaggle", "campaign", str(tmp_path / "plan.toml"), "--out", str(tmp_path / "c"),
                 "--input-layout", "flat"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "--input-layout is for --emulate" in line
