"""Durations, the session budget's decisions, and the stop signals."""
from __future__ import annotations

import os
import signal

import pytest

from imet.config import parse_duration
from imet.errors import UserError
from imet.train.events import StopRequest
from imet.train.loop import DurationEstimate, SessionBudget


@pytest.mark.parametrize("text,seconds", [
    ("9h", 32400), ("30m", 1800), ("90s", 90), ("1h30m", 5400), ("5400", 5400),
    (" 2H 5M 3S ", 7503), ("0.5h", 1800), (120, 120), ("0", 0)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "9 hours", "-5", "1d", "h"])
def test_bad_durations_name_the_flag(text):
    with pytest.raises(UserError, match="--time-budget"):
        parse_duration(text)


def test_estimate_is_pessimistic_about_the_next_unit():
    estimate = DurationEstimate(window=3, safety=1.5, prior_s=2.0)
    assert estimate.next() == 2.0  # nothing measured yet: the prior
    for seconds in (1.0, 4.0, 1.0):
        estimate.add(seconds)
    assert estimate.next() == 6.0  # the slowest recent unit, with a safety factor
    assert estimate.mean() == 2.0
    estimate.add(1.0)
    estimate.add(1.0)  # 4.0 falls out of the window
    assert estimate.next() == 1.5


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_budget_keeps_room_for_the_unit_plus_a_save():
    clock = Clock()
    budget = SessionBudget(total_s=100, margin_s=10, clock=clock)
    budget.step.add(8.0)  # next step estimated 10 s
    budget.save.add(4.0)  # next save estimated 5 s
    assert budget.left() == 90
    clock.now += 74  # 16 s left: step + save = 15 s fits
    assert budget.fits_step()
    clock.now += 2  # 14 s left: does not
    assert not budget.fits_step()
    assert budget.elapsed() == 76


def test_eval_is_budgeted_separately_from_steps():
    clock = Clock()
    budget = SessionBudget(total_s=60, clock=clock)
    budget.step.add(1.0)
    budget.eval.add(40.0)
    clock.now += 20
    assert budget.fits_step() and not budget.fits_eval()


def test_sigterm_sets_the_flag_and_handlers_are_restored():
    before = signal.getsignal(signal.SIGTERM)
    with StopRequest() as stop:
        assert not stop
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop and stop.reason == "signal" and stop.signal_name == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_second_ctrl_c_changes_nothing_and_nested_blocks_install_once(capfd):
    # Once stopping, further signals only say so: the save in progress finishes and the exit
    # stays 75 (tests/test_reliability.py shows it end to end).
    before = signal.getsignal(signal.SIGINT)
    with StopRequest() as stop:
        with stop:  # imet train installs it before start-up, the loop enters it again
            os.kill(os.getpid(), signal.SIGINT)
            assert stop.signal_name == "SIGINT"
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGTERM)
            assert stop.reason == "signal" and stop.signal_name == "SIGINT"
        assert signal.getsignal(signal.SIGINT) is not before
    assert signal.getsignal(signal.SIGINT) is before
    assert capfd.readouterr().err.count("already stopping") == 2


def test_the_cli_keeps_its_handlers_once_stopping_until_the_process_exits(capfd):
    # `imet train` exits right after its block: a Ctrl-C that lands after the save, before the
    # exit, is noted like any other instead of killing the process by SIGINT (exit -2, not 75).
    before = {s: signal.getsignal(s) for s in StopRequest.SIGNALS}
    try:
        with StopRequest(process_exits=True):
            pass
        assert {s: signal.getsignal(s) for s in StopRequest.SIGNALS} == before
        with StopRequest(process_exits=True) as stop:
            os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.reason == "signal"
        assert capfd.readouterr().err.count("already stopping") == 1
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)


def test_one_session_length_default_everywhere():
    """train --time-budget and the emulator's --time-limit share one default: today's 12 h
    Kaggle session. predict has no default budget: without one, every run and view runs."""
    from imet.cli import build_parser
    from imet.config import DEFAULT_TIME_BUDGET, TrainConfig, parse_duration

    assert parse_duration(DEFAULT_TIME_BUDGET) == 12 * 3600
    assert TrainConfig().time_budget == DEFAULT_TIME_BUDGET
    predict = build_parser(["predict"]).parse_args(["predict", "--data", "d", "--runs", "r",
                                                    "--out", "s.csv"])
    assert predict.time_budget is None
    emulated = build_parser(["kaggle"]).parse_args(["kaggle", "run", "k", "--out", "o"])
    assert emulated.time_limit == 12 * 3600
