"""ISO 8601 timestamps in and out, as integer microseconds since the epoch.

Parsed by hand: `datetime.fromisoformat` only accepts `Z` and arbitrary fraction lengths from Python 3.11.
"""

from __future__ import annotations

import functools
import re
import time
from datetime import datetime, timedelta, timezone

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_ONE_US = timedelta(microseconds=1)
# An explicit offset (or Z) is required: a naive time is ambiguous, and the strict server says so.
_TS_RE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:[.,](\d{1,9}))?(?:([Zz])|([+-])(\d{2}):?(\d{2}))$"
)


def now_us() -> int:
    return time.time_ns() // 1000


def parse_timestamp(value: object) -> int:
    """Microseconds since the epoch for an ISO 8601 date-time with `Z` or an offset; ValueError otherwise."""
    if not isinstance(value, str):
        raise ValueError("must be an ISO 8601 string")
    return _parse(value)


# Cached: spans of one batch share many timestamps (a parent's end, a child's start, "now").
@functools.lru_cache(maxsize=16384)
def _parse(value: str) -> int:
    match = _TS_RE.match(value)
    if match is None:
        raise ValueError("must be ISO 8601 with a time zone (e.g. 2024-01-01T00:00:00.000Z)")
    year, month, day, hour, minute, second = (int(match.group(i)) for i in range(1, 7))
    fraction = (match.group(7) or "").ljust(6, "0")[:6]
    try:
        moment = datetime(year, month, day, hour, minute, second, tzinfo=timezone.utc)
    except ValueError as exc:
        raise ValueError(f"not a valid date-time: {exc}") from None
    micros = (moment - _EPOCH) // _ONE_US + int(fraction)
    if match.group(8) is None:
        hours, minutes = int(match.group(10)), int(match.group(11))
        if hours > 23 or minutes > 59:
            raise ValueError("invalid UTC offset")
        offset = (hours * 3600 + minutes * 60) * 1_000_000
        micros = micros - offset if match.group(9) == "+" else micros + offset
    return micros


def format_timestamp(micros: int | None) -> str | None:
    """`YYYY-MM-DDTHH:MM:SS.ffffffZ` (UTC, microseconds: what the API stores and prefactor-core sends), or None."""
    if micros is None:
        return None
    return _format(micros)


@functools.lru_cache(maxsize=16384)
def _format(micros: int) -> str:
    moment = _EPOCH + timedelta(microseconds=micros)
    return (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T{moment.hour:02d}:{moment.minute:02d}:"
        f"{moment.second:02d}.{moment.microsecond:06d}Z"
    )
