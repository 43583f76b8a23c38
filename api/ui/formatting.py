"""Jinja filters: how numbers, times and ids read on the pages."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any


def number(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 10 ** (-digits) and value != 0 else f"{value:.{digits}f}"
    return str(value)


def percent(value: Any, digits: int = 1) -> str:
    if value is None:
        return "–"
    return f"{100 * float(value):.{digits}f}%"


def signed(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    return f"{float(value):+.{digits}f}"


def interval(ci: Any, digits: int = 3) -> str:
    """A (low, high) confidence interval as "0.712–0.801"."""
    if not ci or len(ci) != 2 or ci[0] is None or ci[1] is None:
        return "–"
    return f"{float(ci[0]):.{digits}f}–{float(ci[1]):.{digits}f}"


def duration(seconds: Any) -> str:
    if seconds is None:
        return "–"
    seconds = int(round(float(seconds)))
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {seconds:02d} s" if minutes else f"{seconds} s"


def when(value: Any) -> str:
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M")
    return "–" if value is None else str(value)


def short_id(value: Any) -> str:
    return str(value)[:8] if value else "–"


FILTERS = {
    "number": number,
    "percent": percent,
    "signed": signed,
    "interval": interval,
    "duration": duration,
    "when": when,
    "short_id": short_id,
}
