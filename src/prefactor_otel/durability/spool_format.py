"""Spool file format: bulk items packed into bounded files, and read back with their shape checked.

Pure functions and one per-append encoder: no I/O except `spans_in`/`count_spans` (bounded reads), no lock, no
module state. `Spool` calls them from whichever thread appends or replays (outside or under its own lock).

Version 2 (written since the per-file limit):

    {"version":2,"shared":{KEY:VALUE,...},"refs":[[INDEX,FIELD,KEY],...],"items":[ITEM,...]}

A top-level field of a dict item whose value is an object or array that recurs in the hand-off (the same object:
the planner gives every register item one `agent_schema_version` dict, ~10 KB) and has at least `SHARE_MIN_BYTES`
of JSON is written once per file under `shared`, keyed by a digest of its JSON, and left out of the item; `refs`
puts it back on reading, as one object shared by every item that refers to it (one copy in memory per file).
Items handed over already encoded (bytes) are written as they are. Version 1 (`{"version":1,"items":[...]}`) is
still read.

Checked files (written since issue 19; still version 2, so an older reader reads them and ignores the extra keys):

    {"version":2,"spans":S,"count":N,"crc":"BODY","head":"HEAD","shared":...,"refs":...,"items":[...]}

`S` span create items out of `N` items; `BODY` is the CRC-32 (8 hex digits) of every byte after the header (from
`"shared"` to the end), `HEAD` the CRC-32 of `S,N,BODY`. A reader refuses a file whose body does not match
(`CorruptFile`: flipped bytes inside a prompt are caught, not sent), and a file whose header checks tells how many
spans it held even when the rest is truncated or damaged (`spans_in`). A file without that header (older files, or
one whose header is damaged) is counted from its raw bytes: the span items still readable in it.

A version-1 file over the read limit (the spool once wrote a whole hand-off into one file) is not loaded:
`iter_v1_items` walks it item by item in bounded memory, so the spool can rewrite it as bounded files.

Packing: items go into a file in order until the next one would take it past `max_file_bytes`; then a new file
starts. An item bigger than the limit on its own gets a file of its own (the caller bounds single items).
"""

from __future__ import annotations

import codecs
import hashlib
import json
import re
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

FORMAT_VERSION = 2
SHARE_MIN_BYTES = 1024
SPAN_CREATE = "agent_spans/create"
# Compact JSON writes this once per span create item; inside a string the quotes would be escaped (\"), so
# counting it in raw bytes counts span items even in a file that no longer parses (whitespace allowed: files not
# written by us).
_SPAN_MARKER = b'"_type":"agent_spans/create"'
_SPAN_MARKER_RE = re.compile(rb'"_type"\s{0,8}:\s{0,8}"agent_spans/create"')
_SPAN_MARKER_MAX = len(_SPAN_MARKER) + 16
_V1_PREFIX = b'{"version":1,"items":['
_FILE_OVERHEAD = 160  # the checked header, the envelope's keys and brackets, rounded up
_HEADER_RE = re.compile(
    rb'^\{"version":2,"spans":(\d{1,9}),"count":(\d{1,9}),"crc":"([0-9a-f]{8})","head":"([0-9a-f]{8})",'
)
_HEADER_MAX = 96  # the longest header the pattern above matches, rounded up
_CHECKED_PREFIX = b'{"version":2,"spans":'
_REF_OVERHEAD = 16  # `[INDEX,` `,` `],` of one ref, rounded up (INDEX is counted separately)


class CorruptFile(ValueError):
    """A spool file that is not JSON or not the shape the spool writes."""


@dataclass(slots=True)
class EncodedItem:
    body: bytes  # the item's JSON without its shared fields
    shared: tuple[tuple[bytes, str, bytes], ...]  # (field as JSON, key, value as JSON)
    is_span: bool

    @property
    def size(self) -> int:
        """Bytes this item costs in a file of its own."""
        return _FILE_OVERHEAD + len(self.body) + sum(len(f) + 2 * len(k) + len(v) + 24 for f, k, v in self.shared)


def dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=_embedded_json).encode(
        "utf-8", errors="replace"
    )


def _embedded_json(value: object) -> Any:
    """A value already encoded (the mapping's RawJson payloads are bytes of compact JSON): decoded to embed it."""
    if isinstance(value, bytes):
        return json.loads(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


class ItemEncoder:
    """Encodes the items of one append or give-back. A large sub-object several items share (the planner hands
    every register item the same schema dict) is encoded and hashed once, remembered by identity; one that
    occurs once is encoded inline (sharing it would only cost a digest)."""

    def __init__(self, items: Sequence[dict[str, Any] | bytes]) -> None:
        seen: set[int] = set()
        self._recurring: set[int] = set()
        for item in items:
            if isinstance(item, dict):
                for value in item.values():
                    if isinstance(value, (dict, list)):
                        (self._recurring if id(value) in seen else seen).add(id(value))
        # id -> (the object itself, kept so its id cannot be reused while we remember it; key; JSON)
        self._memo: dict[int, tuple[object, str, bytes]] = {}

    def encode(self, item: dict[str, Any] | bytes) -> EncodedItem:
        """Raises TypeError/ValueError (or RecursionError) for an item JSON cannot carry."""
        if isinstance(item, bytes):
            return EncodedItem(item, (), _SPAN_MARKER in item)
        shared: list[tuple[bytes, str, bytes]] = []
        rest: dict[str, Any] = {}
        for field, value in item.items():
            if id(value) in self._recurring and isinstance(value, (dict, list)):
                found = self._large(value)
                if found is not None:
                    shared.append((dumps(field), *found))
                    continue
            rest[field] = value
        return EncodedItem(dumps(rest), tuple(shared), item.get("_type") == SPAN_CREATE)

    def _large(self, value: dict[str, Any] | list[Any]) -> tuple[str, bytes] | None:
        memo = self._memo.get(id(value))
        if memo is None:
            encoded = dumps(value)
            memo = (value, hashlib.sha256(encoded).hexdigest()[:24], encoded)
            self._memo[id(value)] = memo
        _, key, encoded = memo
        return (key, encoded) if len(encoded) >= SHARE_MIN_BYTES else None


def pack(items: list[EncodedItem], max_file_bytes: int) -> list[bytes]:
    """Spool files holding `items` in order, each within `max_file_bytes` unless one item alone is larger."""
    files: list[bytes] = []
    current: list[EncodedItem] = []
    keys: set[str] = set()
    size = _FILE_OVERHEAD
    for item in items:
        cost = _cost(item, keys, len(current))
        if current and size + cost > max_file_bytes:
            files.append(render(current))
            current, keys, size = [], set(), _FILE_OVERHEAD
            cost = _cost(item, keys, 0)
        current.append(item)
        keys.update(key for _, key, _ in item.shared)
        size += cost
    if current:
        files.append(render(current))
    return files


def _cost(item: EncodedItem, keys_in_file: set[str], index: int) -> int:
    cost = len(item.body) + 1
    for field, key, value in item.shared:
        cost += len(field) + len(key) + len(str(index)) + _REF_OVERHEAD
        if key not in keys_in_file:
            cost += len(key) + len(value) + 4
    return cost


def render(items: list[EncodedItem]) -> bytes:
    shared: dict[str, bytes] = {}
    refs: list[bytes] = []
    for index, item in enumerate(items):
        for field, key, value in item.shared:
            shared.setdefault(key, value)
            refs.append(b'[%d,%s,"%s"]' % (index, field, key.encode()))
    body = b'"shared":{%s},"refs":[%s],"items":[%s]}' % (
        b",".join(b'"%s":%s' % (key.encode(), value) for key, value in shared.items()),
        b",".join(refs),
        b",".join(item.body for item in items),
    )
    spans = sum(1 for item in items if item.is_span)
    crc = b"%08x" % zlib.crc32(body)
    head = b"%08x" % zlib.crc32(b"%d,%d,%s" % (spans, len(items), crc))
    return b'{"version":%d,"spans":%d,"count":%d,"crc":"%s","head":"%s",%s' % (
        FORMAT_VERSION,
        spans,
        len(items),
        crc,
        head,
        body,
    )


class _Header(NamedTuple):
    spans: int
    items: int  # not `count`: that would shadow tuple.count
    crc: bytes  # of the body, 8 hex digits
    length: int  # bytes up to the body


def _checked_header(data: bytes) -> _Header | None:
    """A file's header, from its first bytes, when it is present and intact."""
    match = _HEADER_RE.match(data)
    if match is None:
        return None
    spans, count, crc, head = match.groups()
    if b"%08x" % zlib.crc32(b"%s,%s,%s" % (spans, count, crc)) != head:
        return None
    return _Header(int(spans), int(count), crc, match.end())


def decode(data: bytes) -> list[dict[str, Any]]:
    """The items of a spool file (version 1 or 2), shared objects restored. Raises CorruptFile."""
    if data.startswith(_CHECKED_PREFIX):
        header = _checked_header(data)
        if header is None:
            raise CorruptFile("damaged header")
        if b"%08x" % zlib.crc32(data[header.length :]) != header.crc:
            raise CorruptFile(f"checksum mismatch ({header.items} item(s), {header.spans} span(s))")
    elif b'"crc":"' in data[:_HEADER_MAX]:
        raise CorruptFile("damaged header")  # a checked file whose first bytes were changed: its body is unchecked
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise CorruptFile("not JSON") from exc
    if not isinstance(document, dict):
        raise CorruptFile("not an object")
    items = document.get("items")
    if not isinstance(items, list):
        raise CorruptFile("items is not a list")
    for item in items:
        if not (
            isinstance(item, dict)
            and isinstance(item.get("_type"), str)
            and isinstance(item.get("idempotency_key"), str)
        ):
            raise CorruptFile("an item without a string _type and idempotency_key")
    version = document.get("version")
    if version == 2:
        shared, refs = document.get("shared"), document.get("refs")
        if not isinstance(shared, dict) or not isinstance(refs, list):
            raise CorruptFile("shared/refs missing")
        for ref in refs:
            if not (
                isinstance(ref, list)
                and len(ref) == 3
                and type(ref[0]) is int
                and 0 <= ref[0] < len(items)
                and isinstance(ref[1], str)
                and ref[2] in shared
            ):
                raise CorruptFile("a ref that points nowhere")
            items[ref[0]][ref[1]] = shared[ref[2]]
    elif version != 1:
        raise CorruptFile(f"unknown version {version!r}")
    return items


def iter_v1_items(path: Path, max_item_bytes: int, chunk_bytes: int = 256 << 10) -> Iterator[bytes]:
    """The items of a version-1 file as their JSON, one at a time, reading `chunk_bytes` at a time. Raises
    CorruptFile if it is not the version-1 shape the spool wrote, is truncated, or holds an item over
    `max_item_bytes` (so at most about that much is held at once)."""
    decoder = json.JSONDecoder()
    utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
    with open(path, "rb") as fh:
        if fh.read(len(_V1_PREFIX)) != _V1_PREFIX:
            raise CorruptFile("not a version-1 spool file")
        text, pos, eof = "", 0, False
        while True:
            while pos < len(text) and text[pos] in " \t\r\n,":
                pos += 1
            if pos < len(text) and text[pos] == "]":
                return
            try:
                if pos >= len(text):
                    raise ValueError("need more")
                item, end = decoder.raw_decode(text, pos)
            except ValueError:
                # An item cut by the chunk boundary (or not JSON at all): read on, within the item bound.
                if eof:
                    raise CorruptFile("truncated") from None
                if len(text) - pos > max_item_bytes:
                    raise CorruptFile("an item over the item limit") from None
                chunk = fh.read(chunk_bytes)
                eof = not chunk
                text = text[pos:] + utf8.decode(chunk, final=eof)
                pos = 0
                continue
            if not (isinstance(item, dict) and isinstance(item.get("_type"), str)):
                raise CorruptFile("an item that is not a bulk item")
            yield text[pos:end].encode("utf-8", errors="replace")
            pos = end


def v1_pieces(path: Path, max_file_bytes: int, max_item_bytes: int) -> Iterator[bytes]:
    """A version-1 file's items as version-2 files of at most `max_file_bytes` (bar a single larger item), in
    order, read in chunks. Raises CorruptFile (see `iter_v1_items`)."""
    encoder = ItemEncoder(())
    batch: list[EncodedItem] = []
    size = _FILE_OVERHEAD
    for body in iter_v1_items(path, max_item_bytes):
        if batch and size + len(body) + 1 > max_file_bytes:
            yield render(batch)
            batch, size = [], _FILE_OVERHEAD
        batch.append(encoder.encode(body))  # already JSON: copied as it is
        size += len(body) + 1
    if batch:
        yield render(batch)


def spans_in(path: Path) -> tuple[int, bool]:
    """How many span create items a spool file holds, and whether that is exact: from its checked header when it
    is intact (whatever happened to the rest: truncated, bytes flipped), else the span items still readable in its
    raw bytes (a lower bound). (0, False) if the file cannot be read."""
    try:
        with open(path, "rb") as fh:
            header = _checked_header(fh.read(_HEADER_MAX))
    except OSError:
        return 0, False
    if header is not None:
        return header.spans, True
    return count_spans(path), False


def count_spans(path: Path, chunk_bytes: int = 1 << 20) -> int:
    """Span create items in a file, counted in its raw bytes (works on truncated files), read in bounded chunks.
    0 if the file cannot be read."""
    count = 0
    tail = b""
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(chunk_bytes):
                window = tail + chunk
                matches = list(_SPAN_MARKER_RE.finditer(window))
                count += len(matches)
                # Keep what could start a marker cut by the chunk boundary (less than a whole one, and nothing of a
                # marker already counted): it is counted once, in the next window.
                keep_from = max(len(window) - _SPAN_MARKER_MAX + 1, matches[-1].end() if matches else 0)
                tail = window[keep_from:]
    except OSError:
        return count
    return count
