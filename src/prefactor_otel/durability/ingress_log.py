"""The gateway's ingress log: what it acknowledged, on disk before the acknowledgement. Storage only.

What is kept and when it may go is the gateway's (gateway/service.py); this module keeps records safely:
- **Segments**: `seg-<number>.log` files, numbered in write order. A segment starts with `SEGMENT_MAGIC`; each
  record is `length (u32) | crc32 of the body (u32) | body`, the body `key length (u16) | key (UTF-8) | data`.
  A new segment is begun when the current one would pass `segment_bytes` (the old one is fsynced and closed first),
  and when the owner `seal`s it; records are only ever appended to the current segment of this process, never to
  a segment found at `open` (a torn tail stays a torn tail).
- **Reading back** (`replay`): the segments found at `open`, oldest first, record by record. A record whose checksum
  fails is counted (`records_corrupt`) and skipped (its length is still trusted when it stays inside the file); a
  record cut short at the end of a file (a write torn by a crash) or a length that runs past the end is counted
  (`records_torn`) and ends that segment; a file that does not start with the magic is counted
  (`segments_unreadable`) and skipped. Nothing raises for bad content.
- **Group commit** (`write` then `sync`): `write` appends a record under the write lock (a plain write, no fsync)
  and returns a `Ticket`; `sync(ticket)` returns once that record is fsynced. Concurrent callers share fsyncs: one
  of them syncs everything written so far while the others wait, and whoever arrives during that fsync waits for
  the next one, which covers them all. `synced_seq` says how far the log is durable.
- **Cap** (`max_bytes`): the bytes of every live segment. A record that would pass it raises `IngressLogFull`.
- **One owner per directory**: `open` takes an exclusive `fcntl.flock` on `<directory>/.lock` (held until `close` or
  the process ends, a SIGKILL included); a second owner gets `IngressLogLocked` naming the holder's pid.
- **Retiring**: `retire(segment)` deletes a segment that is not the one being written (`seal` it first).
- After a failed write or fsync the log refuses every later write (`IngressLogBroken`): what the kernel did with
  the failed pages is unknown, so nothing more may be acknowledged from this log.

Threads and locks: `write`, `sync` and the readings are called from any thread (the gateway's request threads);
`open`, `replay`, `seal`, `retire` and `close` by the gateway's owner threads. `_lock` guards the current segment (its
descriptor, size, number), the byte count, the write sequence and the live segments; `_sync_cond` guards the synced
sequence and whether an fsync is under way. An fsync runs on a duplicate of the descriptor with neither held, so
writers go on writing (into the next group) meanwhile; a rotation fsyncs the old segment under `_lock`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
import threading
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SEGMENT_MAGIC = b"PFGWLOG1"
_HEADER = struct.Struct(">II")  # body length, crc32 of the body
_KEY_LENGTH = struct.Struct(">H")
MAX_RECORD_BYTES = 1 << 30
_LOCK_FILE = ".lock"
_PREFIX, _SUFFIX = "seg-", ".log"


class IngressLogLocked(RuntimeError):
    """Another process owns the directory (a second gateway on the same directory)."""


class IngressLogFull(RuntimeError):
    """The record would take the log past its byte cap."""


class IngressLogBroken(RuntimeError):
    """A write or fsync failed earlier: the log takes nothing more."""


@dataclass(frozen=True, slots=True)
class Ticket:
    seq: int  # the record's place in this process's write order (1, 2, ...): `sync` waits for it
    segment: int


@dataclass(frozen=True, slots=True)
class LogRecord:
    segment: int
    key: str
    data: bytes


def frame(key: str, data: bytes) -> bytes:
    raw_key = key.encode("utf-8")
    body = _KEY_LENGTH.pack(len(raw_key)) + raw_key + data
    if len(body) > MAX_RECORD_BYTES:
        raise ValueError("an ingress log record is limited to 1 GiB")
    return _HEADER.pack(len(body), zlib.crc32(body)) + body


def segment_name(number: int) -> str:
    return f"{_PREFIX}{number:012d}{_SUFFIX}"


def segment_number(name: str) -> int | None:
    if not (name.startswith(_PREFIX) and name.endswith(_SUFFIX)):
        return None
    digits = name[len(_PREFIX) : -len(_SUFFIX)]
    return int(digits) if digits.isdigit() else None


class IngressLog:
    def __init__(self, directory: Path, *, max_bytes: int, segment_bytes: int) -> None:
        self.directory = directory
        self._max_bytes = max_bytes
        self._segment_bytes = segment_bytes
        self._lock = threading.Lock()
        self._sync_cond = threading.Condition(threading.Lock())
        self._lock_fd: int | None = None
        self._fd: int | None = None  # the segment being written (None until the first write, and after `seal`)
        self._current: int | None = None
        self._current_size = 0
        self._next = 1
        self._sizes: dict[int, int] = {}  # live segment -> bytes
        self._found: list[int] = []  # segments found at open: what `replay` reads
        self._written = 0
        self._synced = 0
        self._syncing = False
        self._broken: str | None = None
        self.counters: Counter[str] = Counter()

    # ------------------------------------------------------------------ lifecycle

    def open(self) -> list[int]:
        """Take the directory (IngressLogLocked if another process has it) and find the segments left by earlier
        processes; returns their numbers, oldest first."""
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.directory / _LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = ""
            with contextlib.suppress(OSError, ValueError):
                holder = f" (pid {int(os.pread(fd, 32, 0).decode().strip())})"
            os.close(fd)
            raise IngressLogLocked(
                f"another gateway{holder} is using the directory {self.directory}: one gateway per directory (give "
                "this one its own PREFACTOR_GATEWAY_DIR / --dir)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._lock_fd = fd
        found: list[int] = []
        for path in self.directory.iterdir():
            number = segment_number(path.name)
            if number is None:
                continue
            try:
                self._sizes[number] = path.stat().st_size
            except OSError:
                continue
            found.append(number)
        found.sort()
        self._found = found
        self._next = (found[-1] + 1) if found else 1
        return list(found)

    def close(self) -> None:
        """Fsync and close the current segment and release the directory. Later writes raise."""
        with self._lock:
            self._close_current()
            self._broken = self._broken or "closed"
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # releases the flock
                self._lock_fd = None

    # ------------------------------------------------------------------ writing

    def write(self, key: str, data: bytes) -> Ticket:
        """Append one record (not yet durable: `sync` the ticket). Raises IngressLogFull past the cap,
        IngressLogBroken after a failure or close."""
        record = frame(key, data)
        with self._lock:
            if self._broken is not None:
                raise IngressLogBroken(self._broken)
            if self.bytes + len(record) > self._max_bytes:
                self.counters["refused_full"] += 1
                raise IngressLogFull(f"the ingress log is at its cap ({self._max_bytes} bytes)")
            try:
                if self._fd is not None and self._current_size + len(record) > self._segment_bytes:
                    self._close_current()
                if self._fd is None:
                    self._begin_segment()
                assert self._fd is not None and self._current is not None
                _write_all(self._fd, record)
            except OSError as exc:
                self._broken = f"a write failed ({type(exc).__name__}: {exc.strerror or exc})"
                raise IngressLogBroken(self._broken) from exc
            self._current_size += len(record)
            self._sizes[self._current] = self._current_size
            self._written += 1
            self.counters["records_written"] += 1
            return Ticket(self._written, self._current)

    def sync(self, ticket: Ticket) -> None:
        """Return once the ticket's record is on disk (fsynced), sharing one fsync with concurrent callers.
        Raises IngressLogBroken if the fsync failed (this one or the one that covered the ticket)."""
        cond = self._sync_cond
        with cond:
            while self._synced < ticket.seq:
                if self._broken is not None and self._broken != "closed":
                    raise IngressLogBroken(self._broken)
                if not self._syncing:
                    break
                cond.wait()
            else:
                return
            self._syncing = True
        target = 0
        error: OSError | None = None
        try:
            with self._lock:
                target = self._written
                fd = os.dup(self._fd) if self._fd is not None else None
            if fd is not None:
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            self.counters["fsyncs"] += 1
        except OSError as exc:
            error = exc
            with self._lock:
                self._broken = f"an fsync failed ({type(exc).__name__}: {exc.strerror or exc})"
        with cond:
            self._syncing = False
            if error is None:
                self._synced = max(self._synced, target)
            cond.notify_all()
        if error is not None:
            raise IngressLogBroken(self._broken or "fsync failed") from error

    @property
    def synced_seq(self) -> int:
        """Records 1..synced_seq of this process's writes are durable."""
        return self._synced

    @property
    def written_seq(self) -> int:
        return self._written

    def _begin_segment(self) -> None:
        number = self._next
        self._next += 1
        path = self.directory / segment_name(number)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        try:
            _write_all(fd, SEGMENT_MAGIC)
            os.fsync(fd)
            _fsync_directory(self.directory)  # the new file's name is durable before a record in it is acknowledged
        except OSError:
            os.close(fd)
            raise
        self._fd, self._current, self._current_size = fd, number, len(SEGMENT_MAGIC)
        self._sizes[number] = self._current_size
        self.counters["segments_created"] += 1

    def _close_current(self) -> None:
        """Under `_lock`: fsync and close the segment being written; what it holds is durable."""
        fd, self._fd = self._fd, None
        self._current = None
        self._current_size = 0
        if fd is None:
            return
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        # Everything written so far is on disk now.
        with self._sync_cond:
            self._synced = max(self._synced, self._written)
            self._sync_cond.notify_all()

    def seal(self) -> int | None:
        """End the segment being written (fsynced), so it can be retired; the next write begins a new one.
        Returns the sealed segment's number, or None if none was being written."""
        with self._lock:
            current = self._current
            if current is None:
                return None
            try:
                self._close_current()
            except OSError as exc:
                self._broken = f"an fsync failed ({type(exc).__name__}: {exc.strerror or exc})"
                raise IngressLogBroken(self._broken) from exc
            return current

    # ------------------------------------------------------------------ segments

    @property
    def current_segment(self) -> int | None:
        return self._current

    def segments(self) -> list[int]:
        with self._lock:
            return sorted(self._sizes)

    @property
    def bytes(self) -> int:
        return sum(self._sizes.values())

    @property
    def max_bytes(self) -> int:
        return self._max_bytes

    def retire(self, segment: int) -> bool:
        """Delete a segment no longer needed. Not the one being written (False); a missing file is gone already."""
        with self._lock:
            if segment == self._current or segment not in self._sizes:
                return False
            with contextlib.suppress(FileNotFoundError):
                (self.directory / segment_name(segment)).unlink()
            del self._sizes[segment]
            self.counters["segments_retired"] += 1
            return True

    # ------------------------------------------------------------------ reading back

    def replay(self) -> Iterator[LogRecord]:
        """The records of the segments found at `open`, oldest first (see the module docstring for bad content)."""
        for number in list(self._found):
            yield from self._read_segment(number)

    def _read_segment(self, number: int) -> Iterator[LogRecord]:
        path = self.directory / segment_name(number)
        try:
            content = path.read_bytes()
        except OSError:
            self.counters["segments_unreadable"] += 1
            return
        if not content.startswith(SEGMENT_MAGIC):
            if content:  # an empty file is a segment created at a crash before its magic: nothing in it
                self.counters["segments_unreadable"] += 1
            return
        offset = len(SEGMENT_MAGIC)
        end = len(content)
        while offset < end:
            if end - offset < _HEADER.size:
                self.counters["records_torn"] += 1
                return
            length, checksum = _HEADER.unpack_from(content, offset)
            start = offset + _HEADER.size
            if length > MAX_RECORD_BYTES or start + length > end:
                self.counters["records_torn"] += 1
                return
            body = content[start : start + length]
            offset = start + length
            if zlib.crc32(body) != checksum or length < _KEY_LENGTH.size:
                self.counters["records_corrupt"] += 1
                continue
            (key_length,) = _KEY_LENGTH.unpack_from(body, 0)
            if _KEY_LENGTH.size + key_length > length:
                self.counters["records_corrupt"] += 1
                continue
            try:
                key = body[_KEY_LENGTH.size : _KEY_LENGTH.size + key_length].decode("utf-8")
            except UnicodeDecodeError:
                self.counters["records_corrupt"] += 1
                continue
            self.counters["records_replayed"] += 1
            yield LogRecord(number, key, bytes(body[_KEY_LENGTH.size + key_length :]))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
