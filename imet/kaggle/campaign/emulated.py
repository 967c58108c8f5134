"""A campaign's Kaggle at home (`imet kaggle campaign --emulate`): each pushed version runs as a
local emulator session (emulator.run_session). Each kernel has a folder DIR/emulator/<slug>/:

    pushed/v<N>/kernel/        the kernel folder as pushed (its code and metadata)
    pushed/v<N>/session.json   the version's record: the inputs attached, the time limit, then
                               the runner's start and end (status, failure, exit code, timings)
    pushed/v<N>/session.lock   held by the session's runner for as long as it lives
    pushed/v<N>/runner.txt     the runner's own messages (the session's lines are in its log)
    v<N>/log.txt, v<N>/kaggle/working   the session: its log, and its output
    output                     the latest session's output

A push writes the record (which makes the version count) and starts a runner, `python -m
imet.kaggle.campaign.emulated pushed/v<N>`, in a session of its own: as on Kaggle, a session
goes on when the campaign is killed; run again, it finds it running or ended in its record. A
version whose runner is gone without a recorded end counts as failed (pushed again under the
retries); the lock tells a live runner from a gone one (a pid could be reused; a lock dies with
its holder). `imet kaggle run --chain` is the same backend under driver.Chain (run_chain), its
versions right in OUT, every --input attached, the session's lines on the console.

Attached as Kaggle does: each `--input NAME=PATH` (NAME a slug, or owner/slug) for the dataset
or competition source with that slug (or a kernel outside the campaign), and each of the
campaign's own kernels in kernel_sources as the output of its latest completed version; mounted
in the layout the backend is given (emulator.mount_points: nested as today's Kaggle, or flat).
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

from imet.errors import UserError
from imet.fileio import atomic_copy, atomic_write_text
from imet.kaggle.campaign.driver import Chain
from imet.kaggle.campaign.remote import PushRefused
from imet.kaggle.emulator import DEFAULT_LAYOUT, SessionResult, run_session
from imet.kaggle.render import read_metadata, slug_of

RECORD, LOCK, RUNNER_LOG, KERNEL = "session.json", "session.lock", "runner.txt", "kernel"


def _sources(meta: dict) -> tuple[list[str], list[str]]:
    """(dataset and competition slugs, kernel refs) a kernel's metadata attaches."""
    data = [slug_of(ref) for ref in meta["dataset_sources"] + meta["competition_sources"]]
    return data, list(meta["kernel_sources"])


def missing_inputs(planned: dict[str, dict[str, str]], inputs: dict[str, Path],
                   optional: set[str]) -> list[str]:
    """The source slugs the rendered kernels (`planned`: folder -> files) attach that no
    --input gives, less the `optional` ones: the datasets and competitions, and the kernels
    that are not the campaign's own."""
    metas = [json.loads(files["kernel-metadata.json"]) for files in planned.values()]
    own = {meta["id"] for meta in metas}
    needed: list[str] = []
    for meta in metas:
        data, kernels = _sources(meta)
        needed += data + [slug_of(ref) for ref in kernels if ref not in own]
    given = {slug_of(name) for name in inputs}
    return [slug for slug in dict.fromkeys(needed) if slug not in given and slug not in optional]


def _read(record_dir: Path) -> dict:
    return json.loads((record_dir / RECORD).read_text(encoding="utf-8"))


def _write(record_dir: Path, record: dict) -> None:
    atomic_write_text(record_dir / RECORD, json.dumps(record, indent=2) + "\n")


def _held(lock: Path) -> bool:
    """Whether a live runner holds the version's lock."""
    try:
        handle = open(lock, "rb")
    except FileNotFoundError:
        return False
    with handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        return False


class EmulatorBackend:
    """`folders`: kernel ref -> its versions' folder where not root/<slug> (`imet kaggle run
    --out`; it starts over at v1). `python`, `accelerator`, `echo`: as run_session's. `env`: set
    for the sessions on top of this process's. `attach_all`: every input is attached (`imet
    kaggle run --input`), not only those the metadata names (a campaign). `layout`: how the
    sessions mount their inputs (emulator.LAYOUTS)."""

    def __init__(self, root: Path, inputs: dict[str, Path], time_limit: float,
                 folders: dict[str, Path] | None = None, python: str = sys.executable,
                 accelerator: str | None = None, echo: bool = False,
                 env: dict[str, str] | None = None, attach_all: bool = False,
                 layout: str = DEFAULT_LAYOUT):
        self.root, self.time_limit = Path(root).resolve(), float(time_limit)
        self.layout = layout
        self.inputs = {slug: Path(path).resolve() for slug, path in inputs.items()}
        self.folders = {ref: Path(folder).resolve() for ref, folder in (folders or {}).items()}
        self.python, self.accelerator, self.echo, self.env = python, accelerator, echo, env
        self.attach_all = attach_all
        self.runners: list[subprocess.Popen] = []
        for folder in self.folders.values():
            shutil.rmtree(folder / "pushed", ignore_errors=True)

    def _kernel(self, ref: str) -> Path:
        return self.folders.get(ref) or self.root / slug_of(ref)

    def _pushed(self, ref: str, version: int) -> Path:
        return self._kernel(ref) / "pushed" / f"v{version}"

    def _versions(self, ref: str) -> list[int]:
        """The versions pushed: those whose record was written (a push killed before is none)."""
        return sorted(int(p.parent.name[1:])
                      for p in (self._kernel(ref) / "pushed").glob(f"v*/{RECORD}"))

    def current_version(self, ref: str) -> int:
        return max(self._versions(ref), default=0)

    def _output(self, ref: str, version: int) -> Path:
        return self._kernel(ref) / f"v{version}" / "kaggle" / "working"

    def _attached_output(self, ref: str) -> Path:
        """The output of the kernel's latest completed version: what kernel_sources attaches."""
        for version in reversed(self._versions(ref)):
            if _read(self._pushed(ref, version)).get("status") == "COMPLETE":
                return self._output(ref, version)
        raise PushRefused(f"{ref}: no completed version whose output could be attached")

    def _attach(self, meta: dict) -> dict[str, str]:
        """input name (as --input gave it, or a kernel's slug) -> path, for the session."""
        data, kernels = _sources(meta)
        by_slug = {slug_of(name): name for name in self.inputs}
        attached = {name: str(path) for name, path in self.inputs.items()
                    if self.attach_all or slug_of(name) in data}
        # A source with neither an output here nor an --input is left out: a chain's first
        # session has no output of its own yet; a campaign refused the others (missing_inputs).
        for ref in kernels:
            slug = slug_of(ref)
            if self._versions(ref):
                attached.pop(by_slug.get(slug, slug), None)
                attached[slug] = str(self._attached_output(ref))
            elif slug in by_slug:
                attached[by_slug[slug]] = str(self.inputs[by_slug[slug]])
        return attached

    def push(self, folder: Path) -> int:
        meta = read_metadata(folder)
        ref, attached = meta["id"], self._attach(meta)
        version = self.current_version(ref) + 1
        record_dir = self._pushed(ref, version)
        if record_dir.exists():  # what a push killed before its record left
            shutil.rmtree(record_dir)
        shutil.copytree(folder, record_dir / KERNEL)
        with open(record_dir / LOCK, "wb") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            _write(record_dir, {"ref": ref, "version": version, "inputs": attached,
                                "time_limit": self.time_limit, "python": self.python,
                                "accelerator": self.accelerator, "echo": self.echo,
                                "layout": self.layout, "pushed_at": time.time()})
            with open(record_dir / RUNNER_LOG, "ab") as log:
                # The runner inherits the locked file: the lock lives as long as the runner.
                self.runners.append(subprocess.Popen(
                    [sys.executable, "-m", "imet.kaggle.campaign.emulated", str(record_dir)],
                    stdin=subprocess.DEVNULL, stdout=None if self.echo else log,
                    stderr=None if self.echo else subprocess.STDOUT,
                    env={**os.environ, **self.env} if self.env else None,
                    pass_fds=(lock.fileno(),), start_new_session=True))
        return version

    def poll(self, ref: str, watch: dict) -> tuple[str, str] | None:
        self.runners = [p for p in self.runners if p.poll() is None]  # reap the ended
        record_dir = self._pushed(ref, self.current_version(ref))
        record = _read(record_dir)
        if "status" not in record:
            if _held(record_dir / LOCK):
                return None
            record = _read(record_dir)  # it may have ended between the two looks
        if "status" in record:
            return record["status"], record.get("failure", "")
        return "ERROR", ("its session ended without recording an end (its runner was killed, "
                         "or never started); see " + str(record_dir / RUNNER_LOG))

    def fetch_outputs(self, ref: str, dest: Path, pattern: str | None) -> None:
        """The latest version's output files whose path matches `pattern` (re.search, as the
        kaggle client does), copied into `dest`."""
        output, dest = self._output(ref, self.current_version(ref)), Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        for folder, _, files in os.walk(output):
            for name in files:
                path = Path(folder) / name
                relative = path.relative_to(output).as_posix()
                if pattern is None or re.search(pattern, relative):
                    (dest / relative).parent.mkdir(parents=True, exist_ok=True)
                    atomic_copy(path, dest / relative)

    def handover_datasets(self, out, owner, save):
        return None  # the emulator always attaches a kernel's own output


def _failure(result) -> str:
    if result.timed_out:
        return f"killed at the session limit ({result.seconds:.0f}s); log {result.log}"
    lines = [line for line in result.log.read_text(errors="replace").splitlines() if line.strip()]
    last = lines[-1].strip() if lines else ""
    return f"exit code {result.exit_code}: {last[:300]}; log {result.log}"


def run_version(record_dir: Path) -> int:
    """The runner: the pushed version's session, its start and end in its record."""
    record = _read(record_dir)
    record.update(started_at=time.time(), runner_pid=os.getpid())
    _write(record_dir, record)
    status, failure = "ERROR", ""
    try:
        result = run_session(record_dir / KERNEL, {k: Path(v) for k, v in record["inputs"].items()},
                             record_dir.parents[1], record["version"], record["time_limit"],
                             python=record["python"], accelerator=record["accelerator"],
                             echo=record["echo"], layout=record.get("layout", DEFAULT_LAYOUT))
        record.update(exit_code=result.exit_code, timed_out=result.timed_out,
                      seconds=round(result.seconds, 3), log=str(result.log))
        status, failure = ("COMPLETE", "") if result.ok else ("ERROR", _failure(result))
    except UserError as err:
        failure = str(err)
    except Exception as err:  # the runner's own trouble: the session failed, the record says
        traceback.print_exc()
        failure = f"the emulator failed: {type(err).__name__}: {err}"
    record.update(status=status, failure=failure, ended_at=time.time())
    _write(record_dir, record)
    return 0


def run_chain(kernel_dir: Path, inputs: dict[str, Path], out: Path, time_limit: float,
              max_sessions: int, env: dict[str, str] | None = None,
              python: str = sys.executable, accelerator: str | None = None,
              layout: str = DEFAULT_LAYOUT) -> list[SessionResult]:
    """`imet kaggle run --chain`: the chain (driver.Chain) of KERNEL_DIR in the emulator, its
    sessions in OUT/v<N>, each with the previous one's output attached as the kernel's own
    output; the sessions that ran. Fetched small outputs go to OUT/outputs/v<N>."""
    ref = read_metadata(kernel_dir)["id"]
    backend = EmulatorBackend(out, inputs, time_limit, {ref: out}, python, accelerator,
                              echo=True, env=env, attach_all=True, layout=layout)
    Chain(kernel_dir, backend, max_sessions, Path(out) / "outputs", poll_s=0.2).run()
    for runner in backend.runners:  # its last lines are out before the caller's
        runner.wait()
    results = []
    for version in backend._versions(ref):
        record = _read(backend._pushed(ref, version))
        if "exit_code" not in record:  # refused before its kernel ran: a bad input or setting
            raise UserError(record["failure"])
        results.append(SessionResult(version, record["exit_code"], record["timed_out"],
                                     record["seconds"], backend._output(ref, version),
                                     Path(record["log"])))
    return results


if __name__ == "__main__":
    sys.exit(run_version(Path(sys.argv[1])))
