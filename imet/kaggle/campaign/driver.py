"""The campaign driver: every member's trainer kernel, up to `parallel` sessions at once, pushed
again on every handover; then one validation kernel over every trainer output and one inference
kernel, whose submission.csv is fetched into DIR. Each action is saved in DIR/campaign.json first
(state.py), so a killed campaign, run again, pushes nothing twice. The backend runs the kernels
(remote.KaggleBackend: Kaggle; emulated.EmulatorBackend: the emulator). A chain is the same loop
over one member (Chain). The status table is kept in DIR as status.csv and status.md.
"""
from __future__ import annotations

import csv
import io
import json
import math
import shutil
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

from imet.errors import HANDED_OVER_EXIT_CODE, HANDOVER_FILE as HANDOVER
from imet.fileio import atomic_copy, atomic_write_text
from imet.kaggle.campaign import remote
from imet.kaggle.campaign.state import (BUDGET, DROPPED, ENDED, FINALS, FINISHED, PUSHING, RUNNING,
                                        STOPPED, WAITING, attached_members, completed, gpu_seconds,
                                        gpu_used_s, new_job, save_state, trainers)
from imet.kaggle.render import (INFERENCE, VALIDATION, plan_kernels, read_metadata, slug_of,
                                with_setting, write_kernels)

COLUMNS = ("member", "sessions", "state", "best F2", "GPU-hours", "telegram", "last message")


def rows(state: dict) -> list[dict]:
    out = []
    for name in [*state["members"], *FINALS]:
        job = state["jobs"][name]
        if name in FINALS and not job["sessions"]:
            continue
        best = job.get("best_f2")
        out.append({"member": name, "sessions": len(job["sessions"]), "state": job["state"],
                    "best F2": "" if best is None else f"{float(best):.4f}",
                    "GPU-hours": f"{gpu_seconds(job) / 3600:.2f}",
                    "telegram": job.get("telegram") or "",
                    "last message": job.get("message") or ""})
    return out


def markdown(state: dict, gpu_hours: float) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    for row in rows(state):
        cells = [str(row[c]).replace("|", "/") for c in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    budget = f"GPU-hours used: {gpu_used_s(state) / 3600:.2f} of {gpu_hours:g}"
    return "\n".join(lines + ["", budget]) + "\n"


def write_tables(out: Path, state: dict, gpu_hours: float) -> str:
    """Write DIR/status.csv and DIR/status.md; the Markdown text."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows(state))
    atomic_write_text(Path(out) / "status.csv", buffer.getvalue())
    text = markdown(state, gpu_hours)
    atomic_write_text(Path(out) / "status.md", text)
    return text


# What comes back of each kind of kernel: the trainers' small files (checkpoints stay on
# Kaggle), the validation's thresholds and report, the inference's submission.
OUTPUTS = {"trainer": remote.SMALL_OUTPUTS, VALIDATION: r"(^|/)[^/]+\.(json|md|csv|png)$",
           INFERENCE: r"(^|/)submission\.csv$"}
SUBMISSION = "submission.csv"


# How a trainer kernel hears the chat's commands (its script's line; imet.observe.telegram's
# COMMANDS_VAR): a campaign that relays them renders its trainers to read the relay, never
# to poll the bot the driver polls.
COMMANDS_SETTING = "TELEGRAM_COMMANDS"


class Campaign:
    """`commands`: the driver's side of the chat's commands (messages.CampaignCommands) when
    its CommandRelay polls the bot: the members' states go to it, the stops asked come back."""

    def __init__(self, plan, out: Path, kernels: Path, state: dict, accelerators: dict,
                 backend, poll_s: float, log: Callable[[str], None] = print,
                 notify: Callable[[str], None] = lambda text: None, commands=None):
        self.plan, self.out, self.kernels, self.state = plan, Path(out), Path(kernels), state
        self.accelerators, self.backend, self.poll_s = accelerators, backend, poll_s
        self.log, self.notify, self.commands = log, notify, commands
        self.handover = backend.handover_datasets(self.out, plan.owner, self._save)

    # ---- the loop ------------------------------------------------------------------------
    def run(self) -> int:
        if self.state["done"]:
            self.log(write_tables(self.out, self.state, self.plan.gpu_hours)
                     + f"campaign already over: {self.state.get('message', '')}")
        while not self.state["done"]:
            if not self.round():
                time.sleep(self.poll_s)
        return int(self.state["exit_code"] or 0)

    def round(self) -> bool:
        """One pass: settle pushes of a killed run, poll what runs, push what may. True when
        something changed."""
        pushing = [job for job in self.state["jobs"].values() if job["state"] == PUSHING]
        for job in pushing:
            self._resolve_push(job)
        acted = self._stops_asked() or bool(pushing)
        for job in self.state["jobs"].values():
            if job["state"] == RUNNING:
                acted = self._poll(job) or acted
        acted = self._schedule() or acted
        if all(job["state"] in ENDED for job in trainers(self.state)):
            acted = self._finals() or acted
        if self.commands is not None:
            self.commands.publish({} if self.state["done"] else {
                name: self.state["jobs"][name]["state"] for name in self.state["members"]})
        return acted

    def _stops_asked(self) -> bool:
        """The members the chat's /stop named: one waiting is not pushed again; one running
        (told through the relay) saves and hands over, and is not pushed again (_ended)."""
        stops = self.commands.take_stops() if self.commands is not None else []
        for name in stops:
            job = self.state["jobs"][name]
            if job["state"] == WAITING:
                job["state"] = STOPPED
                self._event(name, job, "stopped from Telegram before its next push")
            elif job["state"] in (RUNNING, PUSHING):
                job["stop_asked"] = True
                self._event(name, job, "/stop from Telegram: it saves and hands over at its "
                                       "next step, and is not pushed again")
        return bool(stops)

    def _save(self) -> None:
        save_state(self.out, self.state)
        write_tables(self.out, self.state, self.plan.gpu_hours)

    def _event(self, name: str, job: dict, text: str) -> None:
        text = " ".join(text.split())  # one line: it is a table cell
        job["message"] = text
        self._save()
        self.log(f"{name}: {text}")
        self.notify(f"imet campaign: {name}: {text}")

    # ---- pushing -------------------------------------------------------------------------
    def _folder(self, name: str, job: dict) -> Path:
        """Render the job's kernel into DIR/kernels: a trainer's first push leaves its own
        output out (a kernel that never ran has none); the final kernels attach the members."""
        first = {name} if job["kind"] == "trainer" and not completed(job) else set()
        via = {name: job["via_dataset"]} if job.get("via_dataset") else {}
        planned = plan_kernels(self.kernels, self.plan.owner, self.plan.settings,
                               self.accelerators, attach=attached_members(self.state),
                               first_push=first, handover_datasets=via)
        files = planned[job["folder"]]
        if self.commands is not None and job["kind"] == "trainer":
            code = json.loads(files["kernel-metadata.json"])["code_file"]
            files[code] = with_setting(files[code], COMMANDS_SETTING, "relay", code,
                                       required=False)
        (folder,) = write_kernels(self.out / "kernels", {job["folder"]: files})
        return folder

    def _push(self, name: str, job: dict) -> None:
        if job.get("via_dataset") and completed(job):
            self.handover.version(name, job)
        folder = self._folder(name, job)
        job["push"] = {"before": self.backend.current_version(job["ref"])}
        job["state"] = PUSHING
        self._save()
        try:
            pushed = self.backend.push(folder)
        except remote.PushRefused as err:
            if (job["kind"] != "trainer" or not completed(job) or job.get("via_dataset")
                    or self.handover is None):
                raise
            job.update(state=WAITING, push=None, via_dataset=self.handover.ref(name))
            self._event(name, job, f"Kaggle refused its own output as a source ({err}); "
                                   f"handing over through the dataset {job['via_dataset']}")
            return self._push(name, job)
        self._pushed(name, job, int(pushed or job["push"]["before"] + 1))

    def _pushed(self, name: str, job: dict, version: int) -> None:
        job["sessions"].append({"version": version, "pushed_at": time.time(), "status": None})
        job.update(state=RUNNING, push=None, watch={})
        self._event(name, job, f"session {len(job['sessions'])} pushed ({job['ref']} "
                               f"version {version})")

    def _resolve_push(self, job: dict) -> None:
        """A push asked for before a restart: done when Kaggle has a newer version than the
        count saved before it; else it is asked for again."""
        now = self.backend.current_version(job["ref"])
        if now > job["push"]["before"]:
            self._pushed(self._name(job), job, now)
        else:
            job.update(state=WAITING, push=None)
            self._save()

    def _name(self, job: dict) -> str:
        return next(n for n, j in self.state["jobs"].items() if j is job)

    def _schedule(self) -> bool:
        acted = False
        busy = sum(1 for job in trainers(self.state) if job["state"] in (RUNNING, PUSHING))
        for name in self.state["members"]:
            job = self.state["jobs"][name]
            if job["state"] != WAITING or busy >= self.plan.parallel:
                continue
            session_s = self.plan.session_hours * 3600
            would = gpu_used_s(self.state) + (busy + 1) * session_s
            if would > self.plan.gpu_hours * 3600:
                job["state"] = BUDGET
                self._event(name, job, f"not pushed: another {self.plan.session_hours:g} h "
                                       f"session would pass the budget of "
                                       f"{self.plan.gpu_hours:g} GPU-hours")
            else:
                self._push(name, job)
                busy += 1
            acted = True
        return acted

    # ---- a session's end -----------------------------------------------------------------
    def _poll(self, job: dict) -> bool:
        before = dict(job["watch"])
        ended = self.backend.poll(job["ref"], job["watch"])
        if ended is None:
            if job["watch"].get("seen_running") != before.get("seen_running"):
                self._save()
            return False
        self._ended(self._name(job), job, *ended)
        return True

    def _ended(self, name: str, job: dict, status: str, failure: str) -> None:
        session = job["sessions"][-1]
        dest = self._outputs(job)
        if dest.exists():  # what an earlier fetch left there is not this session's
            shutil.rmtree(dest)
        self.backend.fetch_outputs(job["ref"], dest, OUTPUTS[job["kind"]])
        if status == "COMPLETE" and job["kind"] == INFERENCE and not (dest / SUBMISSION).is_file():
            status, failure = "ERROR", f"its output has no {SUBMISSION}"
        session.update(status=status, ended_at=time.time())
        session["gpu_s"] = self._session_seconds(job, session, dest)
        n = len(job["sessions"])
        asked = job.pop("stop_asked", False)
        if (why := job.pop("telegram_lost", None)) is not None:
            self.log(f"{name}: warning: session {n} ran without Telegram ({why}); "
                     + ("the plan asks for it (telegram = true)" if self._asks_telegram() else
                        "a push may drop the kernel's secrets: set telegram = true in the plan "
                        "to attach the private imet-telegram dataset (README: Telegram)"))
        if status != "COMPLETE":
            job["failures"] += 1
            again = job["failures"] <= self.plan.retries and not asked
            job["state"] = WAITING if again else DROPPED
            tail = ("pushing it again" if again else
                    f"dropped after {job['failures']} failed sessions")
            return self._event(name, job, f"session {n} {status.lower()}"
                                          f"{': ' + failure if failure else ''}; {tail}")
        if job["kind"] == "trainer" and (dest / HANDOVER).is_file():
            if asked:
                job["state"] = STOPPED
                return self._event(name, job, f"session {n} stopped from Telegram and handed "
                                              "over; not pushed again (its checkpoint is in its "
                                              "output: chain its kernel to go on)")
            if n < self.plan.max_sessions:
                job["state"] = WAITING
                return self._event(name, job, f"session {n} handed over; pushing the next")
            job["state"] = STOPPED
            return self._event(name, job, f"still hands over after {n} sessions (max_sessions); "
                                          "its best model so far is used")
        job["state"] = FINISHED
        if job["kind"] == INFERENCE:
            atomic_copy(dest / SUBMISSION, self.out / SUBMISSION)
            self.state["submission"] = str(self.out / SUBMISSION)
        what = {"trainer": "the run finished", VALIDATION: "validated",
                INFERENCE: f"wrote {SUBMISSION} ({self.out / SUBMISSION})"}[job["kind"]]
        f2 = f", best F2 {job['best_f2']:.4f}" if job.get("best_f2") is not None else ""
        self._event(name, job, f"session {n}: {what}{f2}")

    def _asks_telegram(self) -> bool:
        return bool(getattr(getattr(self.plan, "settings", None), "telegram", False))

    def _outputs(self, job: dict) -> Path:
        """Where the fetched outputs of the job's latest session go."""
        return self.out / "outputs" / job["folder"] / f"v{job['sessions'][-1]['version']}"

    def _session_seconds(self, job: dict, session: dict, dest: Path) -> float:
        """The session's own wall time from its run.json; the time from push to end where
        that session wrote none (a kernel that failed before training, the final kernels)."""
        from imet.observe.files import RUN_JSON, read_run_json
        run = read_run_json(dest / RUN_JSON)
        if run:
            job["best_f2"] = run.get("best_f2", job.get("best_f2"))
            latest = (run.get("sessions") or [{}])[-1]
            # Its run.json says whether the session reported and whence the token: a push that
            # dropped the kernel's secrets shows as "off" here. Warned once it goes off: after
            # a session that had it, or from the first when the plan asks for it.
            telegram = latest.get("telegram")
            if isinstance(telegram, dict):
                was = job.get("telegram")
                job["telegram"] = telegram.get("source") if telegram.get("on") else "off"
                if job["telegram"] == "off" and was != "off" and (was or self._asks_telegram()):
                    job["telegram_lost"] = str(telegram.get("why") or "")
            number = int(latest.get("session") or 0)
            if number > job["counted"] and latest.get("wall_s") is not None:
                job["counted"] = number
                return float(latest["wall_s"])
        return round(session["ended_at"] - session["pushed_at"], 3)

    # ---- validation, then inference ------------------------------------------------------
    def _finals(self) -> bool:
        if not attached_members(self.state):
            return self._finish(1, "no member finished a session; nothing to validate")
        for kind in FINALS:
            job = self.state["jobs"][kind]
            if job["state"] == DROPPED:
                return self._finish(1, f"the {kind} kernel failed; see {self.out / 'outputs'}")
            if job["state"] == WAITING:
                self._push(kind, job)
                return True
            if job["state"] != FINISHED:
                return False
        return self._finish(0, f"{SUBMISSION} is in {self.out}")

    def _finish(self, code: int, text: str) -> bool:
        dropped = [n for n in self.state["members"]
                   if self.state["jobs"][n]["state"] in (DROPPED, BUDGET)
                   and n not in attached_members(self.state)]
        if dropped:
            text += f"; without {', '.join(dropped)}"
        self.state.update(done=True, exit_code=code, message=text)
        self._save()
        table = write_tables(self.out, self.state, self.plan.gpu_hours)
        said = f"campaign {'finished' if code == 0 else 'ended'}: {text}"
        self.log(table + said)
        self.notify(f"imet {said}\n\n{table}")
        return True


class Chain(Campaign):
    """`imet kaggle chain` and `imet kaggle run --chain`: a campaign of one member whose kernel
    folder is pushed as it is while a session hands over, at most `max_sessions` times, with no
    retry, no finals and no state file; session N's outputs go to OUTPUTS/v<N>. `run` returns 0
    (finished), HANDED_OVER_EXIT_CODE (still hands over after max_sessions) or 1 (failed)."""

    def __init__(self, kernel_dir: Path, backend, max_sessions: int, outputs: Path,
                 poll_s: float, log: Callable[[str], None] = print):
        self.kernel_dir, self.out, self.backend = Path(kernel_dir), Path(outputs), backend
        self.poll_s, self.log, self.notify, self.handover = poll_s, log, (lambda text: None), None
        self.commands = None  # the kernel polls the bot itself
        self.plan = SimpleNamespace(parallel=1, max_sessions=max_sessions, retries=0,
                                    gpu_hours=math.inf, session_hours=0.0)
        ref = read_metadata(kernel_dir)["id"]
        self.name = slug_of(ref)
        self.state = {"members": [self.name], "done": False, "exit_code": None,
                      "jobs": {self.name: new_job("trainer", ref, self.kernel_dir.name)}}

    def _save(self) -> None:
        pass

    def _folder(self, name: str, job: dict) -> Path:
        """The kernel folder as it is, or, while its kernel does not exist on Kaggle yet, a
        copy in OUTPUTS/first-push whose kernel_sources leave out its own output (it has
        none; render writes it there for every later push)."""
        meta = read_metadata(self.kernel_dir)
        own = meta["id"]
        if own not in meta["kernel_sources"] or self.backend.current_version(own) > 0:
            return self.kernel_dir
        first = self.out / "first-push"
        if first.exists():
            shutil.rmtree(first)
        first.mkdir(parents=True)
        shutil.copy2(self.kernel_dir / meta["code_file"], first / meta["code_file"])
        meta["kernel_sources"] = [ref for ref in meta["kernel_sources"] if ref != own]
        atomic_write_text(first / "kernel-metadata.json", json.dumps(meta, indent=2) + "\n")
        self.log(f"{own} has no version yet: its first push leaves its own output out of "
                 f"kernel_sources ({first})")
        return first

    def _outputs(self, job: dict) -> Path:
        return self.out / f"v{len(job['sessions'])}"

    def _finals(self) -> bool:
        job = self.state["jobs"][self.name]
        where, n = self._outputs(job), len(job["sessions"])
        code, text = {
            FINISHED: (0, f"the run finished; its summary is in {where}"),
            STOPPED: (HANDED_OVER_EXIT_CODE,
                      f"the run still hands over after {n} sessions; chain again to go on"),
            DROPPED: (1, f"the session failed; what it left is in {where}")}[job["state"]]
        self.state.update(done=True, exit_code=code, message=text)
        self.log(text)
        return True
