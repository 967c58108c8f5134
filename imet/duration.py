"""Durations for people to read: ETAs, session time left, a run's wall time. Sits beside
imet/errors.py, below every layer that shows one (console, Telegram, the runs table)."""
from __future__ import annotations

import math


def format_duration(seconds: object, sep: str = "") -> str:
    """`seconds` as its two largest units: "45s", "1m05s", "1h02m", "3d2h"; "?" for what is not
    a duration (None, not a number, NaN, infinite, negative). `sep` goes between the two: the
    console packs a dozen figures into each log line and leaves it out, a Telegram message is
    read on a phone and puts a space there ("1h 02m")."""
    try:
        value = float(seconds)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "?"
    if not math.isfinite(value) or value < 0:
        return "?"
    days, rest = divmod(int(round(value)), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{sep}{hours}h"
    if hours:
        return f"{hours}h{sep}{minutes:02d}m"
    if minutes:
        return f"{minutes}m{sep}{secs:02d}s"
    return f"{secs}s"
