"""PFIDs and the deterministic ids and idempotency keys derived from OTel ids.

A PFID is a 48-bit millisecond timestamp, a 30-bit partition and 80 random bits (160 bits in binary form,
where the partition takes 32), written as 32 lowercase Crockford base32 characters: the first carries 3 bits.
This module matches the public `pfid` package bit for bit (checked against its fixture table in the tests)
without depending on it: that package needs Python >= 3.11 and we support 3.10.

Everything the exporter sends is keyed deterministically on OTel ids, so a retry, a replay or a second process
re-sending the same span produces the same Prefactor id and the same idempotency key, never a duplicate.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
_PAIRS = [a + b for a in ALPHABET for b in ALPHABET]
_LOW40 = (1 << 40) - 1
_DECODE = {c: i for i, c in enumerate(ALPHABET)}
# Crockford's decoding is lenient about these look-alikes.
_DECODE.update({"o": 0, "i": 1, "l": 1})

MAX_TIMESTAMP = (1 << 48) - 1
MAX_PARTITION = (1 << 30) - 1
MAX_RANDOMNESS = (1 << 80) - 1
PFID_LENGTH = 32
_PFID_RE = re.compile(r"^[0-7][0-9abcdefghjkmnpqrstvwxyz]{31}$")

IDEMPOTENCY_KEY_MIN = 8
IDEMPOTENCY_KEY_MAX = 64


class PfidError(ValueError):
    """A value is not a PFID or a PFID cannot be built from the given parts."""


def encode(timestamp_ms: int, partition: int, randomness: int) -> str:
    """Build the 32-character PFID for the given parts."""
    if not 0 <= timestamp_ms <= MAX_TIMESTAMP:
        raise PfidError(f"PFID timestamp out of range: {timestamp_ms}")
    if not 0 <= partition <= MAX_PARTITION:
        raise PfidError(f"PFID partition out of range: {partition}")
    if not 0 <= randomness <= MAX_RANDOMNESS:
        raise PfidError("PFID randomness must fit in 80 bits")
    return _encode_checked(timestamp_ms, partition, randomness)


def _encode_checked(timestamp_ms: int, partition: int, randomness: int) -> str:
    """`encode` for parts already known to be in range (the caller checked or built them so)."""
    # 16 lookups of 10 bits (two characters) each, on four 40-bit words (machine-size ints, cheap to shift):
    # this runs once per exported span. The 160 bits are 2 zero bits, timestamp, partition, randomness.
    high = (timestamp_ms << 30) | partition
    a, b = high >> 40, high & _LOW40
    c, d = randomness >> 40, randomness & _LOW40
    p = _PAIRS
    return "".join(
        (
            p[a >> 30], p[(a >> 20) & 1023], p[(a >> 10) & 1023], p[a & 1023],
            p[b >> 30], p[(b >> 20) & 1023], p[(b >> 10) & 1023], p[b & 1023],
            p[c >> 30], p[(c >> 20) & 1023], p[(c >> 10) & 1023], p[c & 1023],
            p[d >> 30], p[(d >> 20) & 1023], p[(d >> 10) & 1023], p[d & 1023],
        )
    )  # fmt: skip


def encode_binary(binary: bytes) -> str:
    """Encode the 20-byte binary form (timestamp, partition, randomness, big-endian)."""
    if len(binary) != 20:
        raise PfidError("binary PFID must be 20 bytes")
    if binary[6] & 0xC0:
        raise PfidError("binary PFID partition overflows 30 bits")
    return encode(
        int.from_bytes(binary[0:6], "big"),
        int.from_bytes(binary[6:10], "big"),
        int.from_bytes(binary[10:20], "big"),
    )


def decode(pfid: str) -> tuple[int, int, int]:
    """Split a PFID into (timestamp_ms, partition, randomness). Upper case is tolerated, as in `pfid`."""
    if not isinstance(pfid, str) or len(pfid) != PFID_LENGTH:
        raise PfidError("a PFID is a 32-character string")
    value = 0
    for char in pfid.lower():
        digit = _DECODE.get(char)
        if digit is None:
            raise PfidError(f"invalid PFID character {char!r}")
        value = (value << 5) | digit
    if value >> 158:
        raise PfidError("PFID overflows 158 bits (first character must be 0-7)")
    return value >> 110, (value >> 80) & MAX_PARTITION, value & MAX_RANDOMNESS


def is_pfid(value: object) -> bool:
    """True for a canonical (lowercase) PFID -- the form the API accepts."""
    if not isinstance(value, str) or not _PFID_RE.match(value):
        return False
    try:
        decode(value)
    except PfidError:
        return False
    return True


def extract_partition(pfid: str) -> int:
    """The account partition carried by any id of that account (agent, environment, instance...)."""
    return decode(pfid)[1]


def timestamp_of(pfid: str) -> int:
    return decode(pfid)[0]


def _hash80(*parts: str) -> int:
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=10).digest()
    return int.from_bytes(digest, "big")


def _clamp_ms(unix_nanos: int | None) -> int:
    if unix_nanos is None or unix_nanos < 0:
        return 0
    return min(unix_nanos // 1_000_000, MAX_TIMESTAMP)


def span_pfid(partition: int, trace_id: int, span_id: int, start_time_ns: int | None) -> str:
    """Prefactor span id for an OTel span: the same OTel span always gets the same PFID.

    `encode(clamped start ms, partition, 80 bits of blake2b("span", trace hex, span hex))`, computed in fewer steps
    (it runs once per exported span; tests/test_ids.py holds it to that composition on random and edge inputs):
    - the hash's input starts with the trace's part: a hasher fed that part is kept for the last trace asked
      (spans are planned trace by trace) and copied, which costs less than hashing the whole input again;
    - the PFID's 160 bits split on character boundaries: 2 zero bits and the timestamp's top 38 bits (8
      characters, the same for 1,024 ms: cached by `ms >> 10`), its low 10 bits (2), the partition (6, cached),
      the hash (16).
    Thread-safe without a lock: each cache entry is read and written as one object; a lost race costs a miss."""
    last = _LAST_TRACE
    if last[0] == trace_id:
        hasher = last[1].copy()
    else:
        base = hashlib.blake2b(b"span\x1f%032x\x1f" % trace_id, digest_size=10)
        _set_last_trace((trace_id, base))
        hasher = base.copy()
    hasher.update(b"%016x" % span_id)
    digest = int.from_bytes(hasher.digest(), "big")
    part = _PARTITIONS.get(partition)
    if part is None:
        part = _partition_text(partition)
    if start_time_ns is None or start_time_ns < 0:
        ms = 0
    else:
        ms = start_time_ns // 1_000_000
        if ms > MAX_TIMESTAMP:
            ms = MAX_TIMESTAMP
    top = _TOPS.get(ms >> 10)
    if top is None:
        top = _top_text(ms >> 10)
    c, d = digest >> 40, digest & _LOW40
    p = _PAIRS
    return "".join(
        (
            top, p[ms & 1023], part,
            p[c >> 30], p[(c >> 20) & 1023], p[(c >> 10) & 1023], p[c & 1023],
            p[d >> 30], p[(d >> 20) & 1023], p[(d >> 10) & 1023], p[d & 1023],
        )
    )  # fmt: skip


def _set_last_trace(entry: tuple[int | None, Any]) -> None:
    global _LAST_TRACE
    _LAST_TRACE = entry


def _partition_text(partition: int) -> str:
    """The 6 characters of a partition in every PFID of it (checked in range here, once per partition)."""
    if not 0 <= partition <= MAX_PARTITION:
        raise PfidError(f"PFID partition out of range: {partition}")
    text = _PAIRS[partition >> 20] + _PAIRS[(partition >> 10) & 1023] + _PAIRS[partition & 1023]
    if len(_PARTITIONS) >= _CACHED_KEPT:
        _PARTITIONS.clear()
    _PARTITIONS[partition] = text
    return text


def _top_text(top: int) -> str:
    """The first 8 characters of a PFID: 2 zero bits and the timestamp's top 38 bits (`ms >> 10`)."""
    text = _PAIRS[top >> 30] + _PAIRS[(top >> 20) & 1023] + _PAIRS[(top >> 10) & 1023] + _PAIRS[top & 1023]
    if len(_TOPS) >= _CACHED_KEPT:
        _TOPS.clear()  # a plan's spans start within far fewer than _CACHED_KEPT spans of 1,024 ms
    _TOPS[top] = text
    return text


# Caches of span_pfid (module-level: every planner of the process shares them; bounded, cleared when full).
_CACHED_KEPT = 256
_PARTITIONS: dict[int, str] = {}
_TOPS: dict[int, str] = {}
_LAST_TRACE: tuple[int | None, Any] = (None, None)  # (trace id, blake2b fed "span\x1f<trace hex>\x1f")


def instance_pfid(partition: int, agent_key: str, trace_id: int, first_seen_ns: int | None) -> str:
    """Prefactor agent-instance id for one trace of one agent: `encode(clamped ms, partition, _hash80("instance",
    agent_key, trace hex))`, the hash's common part fed once per agent key (the last one asked: a planner's runs
    share theirs) and copied (once per run; tests/test_ids.py holds it to that composition)."""
    last = _LAST_AGENT_KEY
    if last[0] == agent_key:
        hasher = last[1].copy()
    else:
        base = hashlib.blake2b(f"instance\x1f{agent_key}\x1f".encode(), digest_size=10)
        _set_last_agent_key((agent_key, base))
        hasher = base.copy()
    hasher.update(b"%032x" % trace_id)
    if not 0 <= partition <= MAX_PARTITION:
        raise PfidError(f"PFID partition out of range: {partition}")
    # In range by construction: a clamped timestamp, 80 bits of digest.
    return _encode_checked(_clamp_ms(first_seen_ns), partition, int.from_bytes(hasher.digest(), "big"))


def _set_last_agent_key(entry: tuple[str | None, Any]) -> None:
    global _LAST_AGENT_KEY
    _LAST_AGENT_KEY = entry


_LAST_AGENT_KEY: tuple[str | None, Any] = (None, None)  # (agent key, blake2b fed "instance\x1f<agent key>\x1f")


def idempotency_key(action: str, *parts: str) -> str:
    """A stable key (8..64 chars) for one action on one object.

    Readable prefix for debugging, then 160 bits of hash: same action on the same object -> same key.
    """
    digest = hashlib.blake2b("\x1f".join((action, *parts)).encode(), digest_size=20).hexdigest()
    return f"{_key_prefix(action)}-{digest}"[:IDEMPOTENCY_KEY_MAX]


def idempotency_key_for_id(action: str, pfid: str, variant: str = "") -> str:
    """The key for one action on an object whose PFID is itself derived from its OTel ids (a span): the PFID
    already carries a hash of them, so it identifies the object as well as a second hash would, for less.
    `variant` (a few letters) tells apart bodies of the same action on the same object."""
    key = f"{_key_prefix(action)}-{pfid}"  # at most 20 + 1 + 32 characters
    return f"{key}-{variant}"[:IDEMPOTENCY_KEY_MAX] if variant else key


def idempotency_key_prefix(action: str) -> str:
    """What `idempotency_key_for_id(action, pfid)` puts before the PFID (no variant): `prefix + pfid` is that key."""
    return f"{_key_prefix(action)}-"


def _key_prefix(action: str) -> str:
    prefix = _KEY_PREFIXES.get(action)
    if prefix is None:
        prefix = _KEY_PREFIXES[action] = re.sub(r"[^a-z0-9]+", "-", action.lower()).strip("-")[:20] or "op"
    return prefix


_KEY_PREFIXES: dict[str, str] = {}
