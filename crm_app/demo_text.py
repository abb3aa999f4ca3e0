"""How the demo shows things: event fields, values, durations and counter
series in words a person reads (no enum names, Python lists, booleans or
ISO timestamps)."""

from __future__ import annotations

import contextlib
import re
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from datetime import time as clock_time
from typing import Any
from zoneinfo import ZoneInfo

from crm.customers.v1 import customers_pb2 as cpb

#: Event fields the demo shows, in this order.
_SHOWN = ("from_stage", "to_stage", "cause", "kind", "channel", "reason", "reasons",
          "calendar", "milestone", "first_response_by", "promised_by", "due_at", "expires_at",
          "code", "template", "purpose", "list", "late")
#: Fields whose values are codes with underscores (``one_time``, ``breached_promise``).
_CODES = {"from_stage", "to_stage", "cause", "kind", "channel", "reason", "reasons",
          "purpose", "milestone"}


def _brief(data: dict[str, Any]) -> str:
    """The fields of an event worth a look, in words: ``from stage: one time;
    to stage: repeat; cause: purchase``."""
    return "; ".join(f"{k.replace('_', ' ')}: {_human(k, data[k])}" for k in _SHOWN
                     if k in data and data[k] not in ("", None, []))


def _human(key: str, value: Any) -> str:
    """A value as a person reads it: no Python lists, enum names, booleans or
    ``timedelta``/ISO-timestamp forms."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, timedelta):
        return _duration(value)
    if isinstance(value, list | tuple):
        return ", ".join(_human(key, v) for v in value)
    text = str(value)
    if key.endswith(("_at", "_by")):
        with contextlib.suppress(ValueError):
            return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(
                UTC).strftime("%Y-%m-%d %H:%M UTC")
    if text.startswith("moot:"):  # a follow-up an event made pointless
        return f"moot after {text.removeprefix('moot:')}"
    return _words(text) if key in _CODES else text


def _words(code: str) -> str:
    """``breached_promise`` -> ``breached promise``; anything but a plain
    code (an event type, a sentence) stays as it is."""
    return code.replace("_", " ") if re.fullmatch(r"[a-z][a-z0-9_]*", code) else code


def _stage(stage: cpb.Stage.ValueType) -> str:
    """``STAGE_ONE_TIME`` -> ``one time``."""
    return _words(cpb.Stage.Name(stage).removeprefix("STAGE_").lower())


def _next_weekday_at(now: datetime, weekday: int, at: clock_time, zone: ZoneInfo) -> datetime:
    """The first ``weekday`` (0 Monday) at local time ``at`` in ``zone`` after ``now``."""
    local = now.astimezone(zone)
    day = local.date() + timedelta(days=(weekday - local.weekday()) % 7)
    when = datetime.combine(day, at, zone)
    if when <= now:
        when = datetime.combine(day + timedelta(days=7), at, zone)
    return when


def _local(at: datetime, zone: ZoneInfo) -> str:
    """``Monday 2026-12-14 12:30 Europe/Madrid``."""
    return f"{at.astimezone(zone):%A %Y-%m-%d %H:%M} {zone.key}"


def _duration(delta: timedelta) -> str:
    """``1 day``, ``2 days``, ``25 h``, ``1 h 30 min``, ``45 min``."""
    minutes = int(delta.total_seconds() // 60)
    days, rest = divmod(minutes, 24 * 60)
    if days and not rest:
        return f"{days} day{'s' if days > 1 else ''}"
    hours, minutes = divmod(minutes, 60)
    parts = [f"{hours} h" if hours else "", f"{minutes} min" if minutes else ""]
    return " ".join(p for p in parts if p) or f"{delta.total_seconds():g} s"


def _tally(statuses: Iterable[str]) -> str:
    """``2 scheduled, 1 due`` (``none`` for nothing)."""
    counts = Counter(statuses)
    return ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "none"


def _labels(series: str) -> dict[str, str]:
    inside = series.partition("{")[2].rstrip("}")
    return dict(part.split("=", 1) for part in inside.split(",") if "=" in part)


def _moved(name: str, labels: dict[str, str], before: dict[str, float],
           now: dict[str, float]) -> bool:
    """Some series of counter ``name`` whose labels include ``labels`` grew."""
    return any(series.startswith(name + "{") and value > before.get(series, 0.0)
               and labels.items() <= _labels(series).items()
               for series, value in now.items())


def _series(series: str) -> str:
    """``crm_loyalty_actions_total{action_type=discount,reason=,service=loyalty}`` ->
    ``crm_loyalty_actions_total (action type discount)``: empty labels and the
    service (the metric's prefix names it) left out."""
    name = series.partition("{")[0]
    shown = [f"{k.replace('_', ' ')} {_words(v)}" for k, v in _labels(series).items()
             if v and k != "service"]
    return f"{name} ({', '.join(shown)})" if shown else name
