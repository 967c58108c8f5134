"""A campaign's own state: DIR/campaign.json, rewritten atomically after every action, so a
campaign killed at any moment continues from it without pushing anything twice.

One job per kernel: each member's trainer, then the validation and the inference. `where` says
whose versions the jobs count: "kaggle", or "emulator" (--emulate, DIR/emulator).

    state    waiting (to push) | pushing (asked, answer not seen) | running | finished |
             stopped (still handing over after max_sessions) | dropped (failed too often) |
             budget (not pushed: the GPU-hours would pass the plan's)
    push     {"before": N}: the kernel's version count just before a push whose answer was not
             recorded yet; a restart compares it with Kaggle's count to tell whether it went
    sessions one per pushed version: version, pushed_at, status, ended_at, gpu_s
    watch    what the status polls of the running version saw (KaggleBackend.poll)
"""
from __future__ import annotations

import json
from pathlib import Path

from imet.errors import UserError
from imet.fileio import atomic_write_text
from imet.kaggle.render import INFERENCE, VALIDATION, trainer_folder, trainer_slug

STATE_FILE = "campaign.json"
FINALS = (VALIDATION, INFERENCE)
WAITING, PUSHING, RUNNING = "waiting", "pushing", "running"
FINISHED, STOPPED, DROPPED, BUDGET = "finished", "stopped", "dropped", "budget"
ENDED = (FINISHED, STOPPED, DROPPED, BUDGET)


def new_job(kind: str, ref: str, folder: str) -> dict:
    return {"kind": kind, "ref": ref, "folder": folder, "state": WAITING, "sessions": [],
            "failures": 0, "best_f2": None, "message": "", "push": None, "watch": {},
            "counted": 0}


def new_state(plan, where: str = "kaggle") -> dict:
    jobs = {m.name: new_job("trainer", f"{plan.owner}/{trainer_slug(m.name)}",
                         trainer_folder(m.name)) for m in plan.members}
    for kind in FINALS:
        jobs[kind] = new_job(kind, f"{plan.owner}/imet-{kind}", kind)
    return {"format": "imet-campaign", "version": 1, "plan": str(plan.path),
            "members": [m.name for m in plan.members], "where": where, "jobs": jobs,
            "done": False, "exit_code": None, "submission": None}


def load_state(out: Path, plan, where: str = "kaggle") -> dict:
    """The saved state of this plan's campaign in `out` run `where`, or a new one."""
    path = Path(out) / STATE_FILE
    if not path.is_file():
        return new_state(plan, where)
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise UserError(f"{path}: not valid JSON ({err}); it is the campaign's state: restore "
                        "it, or start the campaign in another --out") from None
    members = [m.name for m in plan.members]
    if state.get("members") != members:
        raise UserError(f"{path}: a campaign of members {', '.join(state.get('members') or [])} "
                        f"is under way here, not of {', '.join(members)}; use another --out")
    found = state.get("where", "kaggle")
    if found != where:
        names = {"kaggle": "on Kaggle", "emulator": "in the emulator (--emulate)"}
        raise UserError(f"{path}: a campaign {names.get(found, found)} is under way here, not "
                        f"{names[where]}; use another --out")
    return state


def save_state(out: Path, state: dict) -> None:
    atomic_write_text(Path(out) / STATE_FILE, json.dumps(state, indent=2) + "\n")


def trainers(state: dict) -> list[dict]:
    return [state["jobs"][name] for name in state["members"]]


def gpu_seconds(job: dict) -> float:
    return sum(s.get("gpu_s") or 0.0 for s in job["sessions"])


def gpu_used_s(state: dict) -> float:
    return sum(gpu_seconds(job) for job in state["jobs"].values())


def completed(job: dict) -> int:
    return sum(1 for s in job["sessions"] if s.get("status") == "COMPLETE")


def attached_members(state: dict) -> list[str]:
    """The members whose outputs the validation and inference get: every one with a completed
    session (finished, or stopped with its best model so far), less the dropped."""
    return [name for name in state["members"]
            if completed(state["jobs"][name]) and state["jobs"][name]["state"] != DROPPED]
