"""The files a training run leaves for people (metrics.csv, run.json, plots/*.png, written by
the `report_subscribers`), and the look-ups that find a run's earlier files and code version.

Plots use matplotlib's object API on the Agg canvas (no pyplot: no global figure registry, no
GUI backend), safe inside a training process and on a headless kernel; matplotlib is imported
only where a figure is drawn (`predict` reads run.json here and saves ~0.3 CPU-s of imports)."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import os
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, TextIO

import numpy as np

import imet
from imet.fileio import atomic_write_bytes, atomic_write_text, utc_timestamp
from imet.observe.console import ConsoleProgress, redact
from imet.train.events import (Checkpoint, Evaluation, Failure, Finish, Handover, InitEvaluation,
                               Progress, RankZeroSubscriber, RunStart)
from imet.walk import walk_folders

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

PLOTS_DIR = "plots"
# A plot 800 px wide shows no more than this many training points; a 20-epoch iMet run logs
# ~68,000 steps. Evaluation rows are always all kept.
MAX_PROGRESS_POINTS = 2000


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) or math.isinf(number) else number


def _series(rows: Iterable[dict[str, Any]], key: str,
            keep: Callable[[dict[str, Any]], bool] = lambda row: True) -> tuple[list, list]:
    points = {}
    for row in rows:
        step, value = _number(row.get("step")), _number(row.get(key))
        if step is not None and value is not None and keep(row):
            points[step] = value  # a step written twice (resume) plots once, last value wins
    steps = sorted(points)
    return steps, [points[step] for step in steps]


def _is_eval(row: dict[str, Any]) -> bool:
    kind = row.get("kind")
    return kind == "evaluation" if kind else _number(row.get("f2")) is not None


def _starts(rows: list[dict[str, Any]], key: str) -> list[float]:
    """The steps where `key` (stage, session) takes a new value."""
    starts, previous = [], None
    for row in sorted(rows, key=lambda r: _number(r.get("step")) or 0.0):
        value = row.get(key)
        if value not in (None, ""):
            if previous is not None and str(value) != str(previous):
                starts.append(_number(row.get("step")))
            previous = value
    return [step for step in starts if step is not None]


# (column, how its changes are drawn): a stage switch and a session handover
MARKS = {"stage": dict(color="grey", ls="--", lw=0.8, label="stage switch"),
         "session": dict(color="tab:brown", ls=":", lw=1.0, label="session handover")}


def _plot_loss(ax, rows) -> None:
    steps, values = _series(rows, "loss", lambda row: not _is_eval(row))
    if not steps:
        steps, values = _series(rows, "train_loss")
    if steps:
        ax.plot(steps, values, lw=1, color="tab:blue", label="train loss")
    steps, values = _series(rows, "val_loss")
    if steps:
        ax.plot(steps, values, "o-", ms=3, color="tab:orange", label="validation loss")
    ax.set_ylabel("loss")


def _plot_f2(ax, rows) -> None:
    steps, values = _series(rows, "f2", _is_eval)
    if steps:
        ax.plot(steps, values, "o-", ms=3, color="tab:green", label="validation F2")
        best = max(range(len(values)), key=values.__getitem__)
        ax.scatter([steps[best]], [values[best]], s=80, marker="*", color="tab:red", zorder=3,
                   label=f"best {values[best]:.4f} @ step {int(steps[best])}")
    ax.set_ylabel("F2")


def _plot_lr(ax, rows) -> None:
    steps, values = _series(rows, "lr")
    if steps:
        ax.plot(steps, values, lw=1, color="tab:purple", label="learning rate")
        # One-cycle and warmup schedules span decades: a log axis shows their shape.
        if min(values) > 0 and max(values) > 10 * min(values):
            ax.set_yscale("log")
    ax.set_ylabel("learning rate")


PANELS: dict[str, Callable] = {"loss": _plot_loss, "f2": _plot_f2, "lr": _plot_lr}


def thin(rows: list[dict[str, Any]], limit: int = MAX_PROGRESS_POINTS) -> list[dict[str, Any]]:
    """Every evaluation row and at most about `limit` evenly spaced other rows (the last kept)."""
    others = [i for i, row in enumerate(rows) if not _is_eval(row)]
    if len(others) <= limit:
        return rows
    stride = -(-len(others) // limit)
    keep = set(others[::stride]) | {others[-1]}
    return [row for i, row in enumerate(rows) if i in keep or _is_eval(row)]


# Fixed margins (inches) instead of a constrained layout: that one draws the figure once more
# only to measure its labels, doubling the cost of every PNG (~0.15 CPU-s a draw).
_MARGIN = dict(left=0.95, right=0.2, top=0.45, bottom=0.55, between=0.6)


def history_figure(rows: list[dict[str, Any]], panels: list[str],
                   title: str | None = None) -> Figure:
    """One axes per panel, stacked, each with its own step axis, so that every panel can be cut
    out as a picture of its own (`write_plots`)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    panel_h = 2.8
    height = (_MARGIN["top"] + _MARGIN["bottom"] + panel_h * len(panels)
              + _MARGIN["between"] * (len(panels) - 1))
    figure = Figure(figsize=(8, height), dpi=100)
    FigureCanvasAgg(figure)
    figure.subplots_adjust(left=_MARGIN["left"] / 8, right=1 - _MARGIN["right"] / 8,
                           top=1 - _MARGIN["top"] / height, bottom=_MARGIN["bottom"] / height,
                           hspace=_MARGIN["between"] / panel_h)
    axes = figure.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    marks = {key: _starts(rows, key) for key in MARKS}
    for ax, panel in zip(axes, panels):
        PANELS[panel](ax, rows)
        has_data = bool(ax.get_legend_handles_labels()[0])
        for key, steps in marks.items():
            for i, step in enumerate(steps):
                ax.axvline(step, **(MARKS[key] if i == 0 else {**MARKS[key], "label": None}))
        ax.grid(True, alpha=0.3)
        ax.tick_params(labelbottom=True)
        ax.set_xlabel("step")
        if has_data:
            ax.legend(loc="best", fontsize="small")
        else:
            ax.text(0.5, 0.5, "no data yet", ha="center", va="center", transform=ax.transAxes,
                    color="grey")
    if title:
        figure.suptitle(title, y=1 - 0.1 / height, va="top")
    return figure


def png_bytes(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def render_history_png(history: list[dict[str, Any]], title: str | None = None) -> bytes:
    """One PNG with loss, F2 and LR against step. `history`: rows as in metrics.csv (progress and
    evaluation rows; values may be numbers or CSV strings; missing fields are skipped)."""
    return png_bytes(history_figure(thin(list(history or [])), list(PANELS), title))


def write_plots(run_dir: str | os.PathLike, history: list[dict[str, Any]],
                title: str | None = None) -> list[str]:
    """<run_dir>/plots/history.png (all panels) and loss.png, f2.png, lr.png, written atomically;
    returns their paths. Drawn once: each panel's PNG is cut from history.png's pixels, from a
    little above its axes (the figure's top for the first) to a little above the next: its tick
    labels and "step" in, the next panel's top tick label out."""
    from PIL import Image  # matplotlib's own PNG writer is PIL too
    folder = Path(run_dir) / PLOTS_DIR
    figure = history_figure(thin(list(history or [])), list(PANELS), title)
    written = [atomic_write_bytes(folder / "history.png", png_bytes(figure))]
    pixels = np.asarray(figure.canvas.buffer_rgba())
    height, pad = pixels.shape[0], 0.15 / figure.get_figheight()
    edges = [1.0] + [ax.get_position().y1 + pad for ax in figure.axes[1:]] + [0.0]
    for panel, top, bottom in zip(PANELS, edges, edges[1:]):
        buffer, band = io.BytesIO(), pixels[round((1 - top) * height):round((1 - bottom) * height)]
        Image.fromarray(band).save(buffer, format="png")
        written.append(atomic_write_bytes(folder / f"{panel}.png", buffer.getvalue()))
    return [str(path) for path in written]


# A run's earlier files (metrics.csv, run.json, the registry, the dataset manifest) lie under
# the input roots, at a depth that varies by kind on Kaggle. The roots can be large (109k
# images), so one run's subscribers share one `InputFiles`: each announces the names it will
# look up, and the first look-up walks the roots once for all of them.

class InputFiles:
    """Files of the wanted names under `roots` (roots that are not folders are skipped), each
    name's in walk order: sorted, reproducible."""

    def __init__(self, roots: Iterable[str | os.PathLike] = ()):
        self.roots = [Path(root) for root in roots]
        self._wanted: set[str] = set()
        self._found: dict[str, list[Path]] = {}

    def want(self, *names: str) -> "InputFiles":
        self._wanted.update(names)
        return self

    def named(self, name: str) -> list[Path]:
        if name not in self._found:
            # Normally one walk for every wanted name; a name not announced before the first
            # look-up costs a walk of its own.
            names = (self._wanted | {name}) - set(self._found)
            found: dict[str, list[Path]] = {n: [] for n in names}
            folders = [root for root in self.roots if root.is_dir()]
            for folder, _, filenames in walk_folders(folders):
                for match in names.intersection(filenames):
                    found[match].append(folder / match)
            self._found.update(found)
        return list(self._found[name])


def input_files(inputs: "InputFiles | Iterable[str | os.PathLike]", *names: str) -> InputFiles:
    """`inputs` as an InputFiles that wants `names`: a shared one as it is, roots wrapped."""
    return (inputs if isinstance(inputs, InputFiles) else InputFiles(inputs)).want(*names)


def files_named(roots: Iterable[str | os.PathLike], name: str) -> Iterator[Path]:
    """Every file called `name` under the roots, each root in sorted (reproducible) order."""
    yield from InputFiles(roots).named(name)


# Where a run's code came from and which config decided it is recorded in run.json and the run
# registry, so results from different kernels (each with its own copy of the code) compare.
MANIFEST_NAME = "MANIFEST.json"
# What the imet wheel is built from (packaging/wheelbuild.py: the package, setup.py, README.md):
# a change elsewhere in the checkout does not change the code, so it does not make it dirty.
CODE_PATHS = ("imet", "setup.py", "README.md")


def find_manifest(input_roots: InputFiles | Iterable[str | os.PathLike] = ()) -> Path | None:
    """The packaging dataset's MANIFEST.json describing the imet code that runs: first beside the
    imported package (the dataset imet was imported from), then under the input roots."""
    beside = [parent / MANIFEST_NAME for parent in Path(imet.__file__).resolve().parents[1:4]]
    return next((path for path in beside if path.is_file()), None) or next(
        iter(input_files(input_roots, MANIFEST_NAME).named(MANIFEST_NAME)), None)


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
    manifest, the commit is the one it was built from (its "source", '+dirty' when built from
    local changes); without one, the checkout's. Either way the same code gets the same commit."""
    manifest = find_manifest(input_roots)
    version: dict[str, Any] = {"imet": imet.__version__, "manifest_sha256": None,
                               "git_commit": None}
    try:
        raw = manifest.read_bytes() if manifest is not None else None
    except OSError:
        raw = None
    if raw is None:
        version["git_commit"] = git_commit() or installed_commit()
        return version
    version["manifest_sha256"] = hashlib.sha256(raw).hexdigest()
    try:
        source = json.loads(raw).get("source") or {}
    except (ValueError, AttributeError):
        return version
    commit = source.get("git_commit") if isinstance(source, dict) else None
    if commit:
        version["git_commit"] = f"{commit}{'+dirty' if source.get('dirty') else ''}"
    return version


def installed_commit() -> str | None:
    """The commit an installed imet wheel was built from, from its version's local part
    (packaging/wheelbuild.py `0.1.0+g<commit>[.dirty.<digest>]`): all that a kernel's validate
    and predict, running the dataset's wheel without its manifest in sight, know of their code."""
    from importlib import metadata
    try:
        local = metadata.version("imet").partition("+")[2]
    except metadata.PackageNotFoundError:
        return None
    commit, _, rest = local.partition(".")
    if not commit.startswith("g") or commit == "gnogit":
        return None
    return commit[1:] + ("+dirty" if rest.startswith("dirty") else "")


def short_code_version(version: dict[str, Any] | None) -> str:
    """'0.1.0@g:1a2b3c4d' (a '+' for local changes) where the commit is known (checkout or
    manifest), '0.1.0@m:1a2b3c4d' (the manifest's hash) for code built outside git, else '0.1.0'."""
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


# metrics.csv: one row per progress and evaluation event, appended (a long run emits tens of
# thousands), flushed whole, synced at checkpoints; a torn last line (power loss mid-write) is
# dropped on the next read. Rows are keyed by (kind, step): a resumed run first drops every row
# beyond the checkpoint step, and a row repeated at the same key replaces the old.
METRICS_CSV = "metrics.csv"
COLUMNS = ("run", "kind", "session", "time", "stage", "epoch", "step", "epoch_step", "loss",
           "lr", "img_per_s", "f2", "threshold", "best_f2", "val_loss", "is_best")
_INT_COLUMNS = {"session", "stage", "epoch", "step", "epoch_step"}
_TEXT_COLUMNS = {"run", "kind"}


def _format(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)
    return str(value)


def _parse(column: str, text: str) -> Any:
    if text == "":
        return None
    if column in _TEXT_COLUMNS:
        return text
    if column == "is_best":
        return text in ("1", "True", "true")
    try:
        return int(text) if column in _INT_COLUMNS else float(text)
    except ValueError:
        return None


def _rows_to_csv(rows: Iterable[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows({column: _format(row.get(column)) for column in COLUMNS} for row in rows)
    return buffer.getvalue()


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a metrics.csv with typed values; a torn (unterminated) last line is dropped and
    columns this version does not know are ignored. A missing file reads as no rows."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    rows = ({column: _parse(column, raw.get(column) or "") for column in COLUMNS}
            for raw in csv.DictReader(io.StringIO(text)))
    return [row for row in rows if row["step"] is not None]


def find_run_metrics(run_name: str,
                     inputs: InputFiles | Iterable[str | os.PathLike]) -> Path | None:
    """The metrics.csv of `run_name` with the most rows among the input roots (recursive): on
    Kaggle the previous session's output is an attached input."""
    best, best_count = None, 0
    for candidate in input_files(inputs, METRICS_CSV).named(METRICS_CSV):
        count = sum(1 for row in read_metrics(candidate) if row["run"] == run_name)
        if count > best_count:
            best, best_count = candidate, count
    return best


class MetricsWriter(RankZeroSubscriber):
    """Event subscriber writing <run_dir>/metrics.csv. `input_roots` (or the run's shared
    InputFiles): where a resumed session looks for the previous session's file when the run dir
    has none (Kaggle's attached inputs)."""

    def __init__(self, run_dir: str | os.PathLike,
                 input_roots: InputFiles | Iterable[str | os.PathLike] = ()):
        self.path = Path(run_dir) / METRICS_CSV
        self.inputs = input_files(input_roots, METRICS_CSV)
        self._handle: io.TextIOBase | None = None
        self._writer = None
        self._keys: set[tuple[str, int]] = set()
        self._run = None
        self._session = None
        self._stage = None  # evaluation events carry no stage: the last progress event's

    def _on_run_start(self, event: RunStart) -> None:
        self._run, self._session = str(event.run_name or ""), event.session
        rows: list[dict[str, Any]] = []
        if event.resumed_from is not None:
            source = self.path
            rows = self._rows_until(source, int(event.resumed_from))
            if not rows:  # a fresh Kaggle output folder: the previous session's is an input
                source = find_run_metrics(self._run, self.inputs)
                rows = self._rows_until(source, int(event.resumed_from)) if source else []
            if rows:
                log.info("metrics.csv: continuing %d rows from %s (up to step %s)",
                         len(rows), source, event.resumed_from)
        self._rewrite(rows)

    def _rows_until(self, path: Path, step: int) -> list[dict[str, Any]]:
        return [row for row in read_metrics(path)
                if row["run"] == self._run and row["step"] <= step]

    def _on_progress(self, event: Progress) -> None:
        self._stage = event.stage
        self._write({"kind": "progress", "stage": event.stage, "epoch": event.epoch,
                     "step": event.step, "epoch_step": event.epoch_step, "loss": event.loss,
                     "lr": event.lr, "img_per_s": event.img_per_s}, event.time)

    def _on_evaluation(self, event: Evaluation) -> None:
        self._write({"kind": "evaluation", "stage": self._stage, "epoch": event.epoch,
                     "step": event.step, "f2": event.f2, "threshold": event.threshold,
                     "best_f2": event.best_f2, "val_loss": event.val_loss,
                     "is_best": event.is_best}, event.time)
        self._sync()

    def _on_checkpoint(self, event: Checkpoint | Handover | Finish | Failure) -> None:
        self._sync()

    _on_handover = _on_finish = _on_failure = _on_checkpoint

    def _write(self, row: dict[str, Any], when: float) -> None:
        if row.get("step") is None:
            return
        if self._handle is None:  # events before run_start (or after close): keep what exists
            self._rewrite(read_metrics(self.path))
        row = {**row, "run": self._run, "session": self._session, "time": round(when, 3),
               "step": int(row["step"])}
        key = (row["kind"], row["step"])
        if key in self._keys:  # the same step evaluated again after a resume: replace it (rare)
            self._handle.flush()
            rows = [old for old in read_metrics(self.path) if (old["kind"], old["step"]) != key]
            self._rewrite(rows + [row])
            return
        self._keys.add(key)
        self._writer.writerow([_format(row.get(column)) for column in COLUMNS])
        self._handle.flush()

    def _rewrite(self, rows: list[dict[str, Any]]) -> None:
        self.close()
        self._keys = {(row["kind"], row["step"]) for row in rows}
        atomic_write_text(self.path, _rows_to_csv(rows))
        self._handle = open(self.path, "a", encoding="utf-8", newline="")
        self._writer = csv.writer(self._handle, lineterminator="\n")

    def _sync(self) -> None:
        if self._handle is not None:
            self._handle.flush()
            os.fsync(self._handle.fileno())

    def rows(self) -> list[dict[str, Any]]:
        """Every row of this run in the file (including those continued from a resume)."""
        if self._handle is not None:
            self._handle.flush()
        return [row for row in read_metrics(self.path)
                if self._run is None or row["run"] == self._run]

    def close(self) -> None:
        if self._handle is not None:
            try:
                self._sync()
            finally:
                self._handle.close()
                self._handle = None


# run.json (the run's summary) and plots/*.png are written when a session ends: at a handover
# (a half-done run's output already shows its curves), at the finish, and after a failure.
# run.json lists the sessions (number, device, kernel, start, wall time, how it ended) of a
# chain: a resumed session reads the previous run.json from the run dir or the attached inputs.
RUN_JSON = "run.json"


def read_run_json(path: str | os.PathLike) -> dict[str, Any] | None:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == "imet-run" else None


def find_run_json(run_name: str,
                  inputs: InputFiles | Iterable[str | os.PathLike]) -> dict[str, Any] | None:
    """The run.json of `run_name` with the most sessions among the input roots (recursive)."""
    best = None
    for path in input_files(inputs, RUN_JSON).named(RUN_JSON):
        data = read_run_json(path)
        if data and data.get("run_name") == run_name and (
                best is None or len(data.get("sessions", [])) > len(best["sessions"])):
            best = data
    return best


class ArtifactWriter(RankZeroSubscriber):
    """Event subscriber writing <run_dir>/run.json and <run_dir>/plots/*.png."""

    def __init__(self, run_dir: str | os.PathLike,
                 input_roots: InputFiles | Iterable[str | os.PathLike] = (),
                 telegram: dict[str, Any] | None = None):
        self.run_dir = Path(run_dir)
        self.inputs = input_files(input_roots, RUN_JSON, MANIFEST_NAME)
        self.telegram = telegram  # TelegramStatus.record(): this session's, per session
        self.summary: dict[str, Any] = {}
        self._session: dict[str, Any] | None = None
        self._history: list[dict[str, Any]] = []

    def _on_run_start(self, event: RunStart) -> None:
        run_name = str(event.run_name or "")
        previous = None  # a fresh start (no checkpoint) owes nothing to an older run.json
        if event.resumed_from is not None:
            previous = read_run_json(self.run_dir / RUN_JSON)
            if not previous or previous.get("run_name") != run_name:
                previous = find_run_json(run_name, self.inputs)
        # Sessions before this one; a later one left by an abandoned attempt is not history.
        sessions = [s for s in (previous or {}).get("sessions", [])
                    if int(s.get("session") or 0) < int(event.session or 1)]
        self._session = {"session": event.session, "started": utc_timestamp(event.time),
                         "start_time": event.time, "device": event.device,
                         "kernel": event.kernel, "resumed_from": event.resumed_from,
                         "wall_s": None, "ended": None}
        if self.telegram is not None:
            self._session["telegram"] = self.telegram
        self.summary = {
            "format": "imet-run", "version": 1, "run_name": run_name, "status": "running",
            "arch": event.arch, "fold": event.fold, "image_size": event.image_size,
            "total_steps": event.total_steps, "config": redact(event.config or {}),
            "config_hash": event.config_fingerprint, "code_version": code_version(self.inputs),
            "best_f2": event.best_f2, "best_step": event.best_step,
            "threshold": event.threshold, "sessions": sessions + [self._session]}
        if event.init_f2 is not None:  # --init: the untuned model's F2 (first session)
            self.summary["init_f2"] = event.init_f2

    def _on_init_evaluation(self, event: InitEvaluation) -> None:
        self.summary["init_f2"] = event.f2

    def _on_evaluation(self, event: Evaluation) -> None:
        if event.is_best:
            self.summary["threshold"] = event.threshold
        self.summary.update(best_f2=event.best_f2, best_step=event.best_step)
        self._history = list(event.history or self._history)

    def _end_session(self, event, status: str, **extra: Any) -> list[str]:
        if self._session is not None:
            self._session["wall_s"] = round(event.time - self._session["start_time"], 3)
            self._session["ended"] = status
        self.summary.update(status=status, updated=utc_timestamp(event.time), **extra)
        self.summary["total_wall_s"] = round(sum(s.get("wall_s") or 0.0
                                                 for s in self.summary.get("sessions", [])), 3)
        # run.json first: drawing the plots takes seconds, and a session cut by its limit
        # while drawing must still leave its summary.
        self._write_json()
        plots = self._write_plots()
        self.summary["plots"] = [os.path.relpath(p, self.run_dir) for p in plots]
        self._write_json()
        return plots

    def _write_plots(self) -> list[str]:
        rows = [row for row in read_metrics(self.run_dir / METRICS_CSV)
                if row.get("run") in (None, self.summary.get("run_name"))]
        history = rows or self._history
        title = f"{self.summary.get('run_name')} (fold {self.summary.get('fold')})"
        try:
            return write_plots(self.run_dir, history, title=title)
        except Exception as err:  # a plot must never cost the run its run.json
            log.warning("plots for %s failed: %s: %s", self.run_dir, type(err).__name__, err)
            return []

    def _write_json(self) -> None:
        summary = dict(self.summary)
        summary["sessions"] = [{k: v for k, v in s.items() if k != "start_time"}
                               for s in summary.get("sessions", [])]
        atomic_write_text(self.run_dir / RUN_JSON,
                          json.dumps(redact(summary), indent=2, default=str) + "\n")

    def _on_handover(self, event: Handover) -> None:
        self._end_session(event, "handover", next=event.next, reason=event.reason,
                          checkpoint=event.checkpoint, last_step=event.step)

    def _on_finish(self, event: Finish) -> None:
        self._history = list(event.history or self._history)
        artifacts = [str(a) for a in event.artifacts or []]
        self.summary.update(best_f2=event.best_f2, best_step=event.best_step,
                            duration_s=event.duration_s)
        plots = self._end_session(event, "finished", next=None)
        listed = artifacts + [p for p in plots + [str(self.run_dir / RUN_JSON)]
                              if p not in artifacts]
        self.summary["artifacts"] = [os.path.relpath(p, self.run_dir) if os.path.isabs(p)
                                     else p for p in listed]
        self._write_json()

    def _on_failure(self, event: Failure) -> None:
        if not self.run_dir.is_dir():  # refused before the run began (bad input): nothing written
            return
        error = str(event.error or "").strip()
        self._end_session(event, "failed", error=error.splitlines()[0][:500] if error else "")


def report_subscribers(run_dir: str | os.PathLike, input_roots: Iterable[str | os.PathLike] = (),
                       every_s: float = 60.0, stream: TextIO | None = None,
                       telegram: dict[str, Any] | None = None, preface: str = "") -> list:
    """The standard set for a training run: ConsoleProgress, MetricsWriter, ArtifactWriter.
    `input_roots` (or the run's shared `InputFiles`, which `imet train` also gives the
    registry): where a resumed session finds the previous session's metrics.csv/run.json;
    searched once for all of them. `telegram`: the session's notification status for
    run.json; `preface`: the console's first line at the run's start (its Telegram status)."""
    inputs = input_files(input_roots)
    return [ConsoleProgress(every_s=every_s, stream=stream, preface=preface),
            MetricsWriter(run_dir, inputs),
            ArtifactWriter(run_dir, inputs, telegram)]
