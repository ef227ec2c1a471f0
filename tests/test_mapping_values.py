"""mapping/values.py's `iso_from_ns`: the formatted-seconds cache and the table of millisecond endings give what
formatting each instant in full gives (truncated to the millisecond, never rounded up), on random instants, every
millisecond ending, and instants on either side of a second."""

from __future__ import annotations

import random
from datetime import datetime, timezone

from prefactor_otel.mapping.values import iso_from_ns


def _reference(unix_nanos: int) -> str:
    seconds, millis = divmod(unix_nanos // 1_000_000, 1000)
    return datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S") + f".{millis:03d}Z"


def test_iso_from_ns_matches_a_full_format() -> None:
    rng = random.Random(3)
    instants = [rng.randrange(0, 4_102_444_800 * 10**9) for _ in range(5000)]
    base = 1_765_104_000 * 10**9
    instants += [base + millis * 1_000_000 + rng.randrange(1_000_000) for millis in range(1000)]
    instants += [base - 1, base, base + 999_999_999, base + 1_000_000_000, 0, 999_999]
    for unix_nanos in instants:
        assert iso_from_ns(unix_nanos) == _reference(unix_nanos), unix_nanos
    assert iso_from_ns(None) is None
