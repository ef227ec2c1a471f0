"""The run journal's file format and the file operations it needs: pure parsing, whole writes, locking.

Format (ASCII, one record per line, append-only), after a `# prefactor-otel run journal v1` header line:
    <instance id> <ns>      the run is open, last active at <ns> (ns since epoch); the first mention opens it
    <instance id> -         the run was finished, or handed off for finishing
    <span id> <ns> <instance id>
                            a live span (created `active` in Prefactor) of that run, started at <ns>
    <span id> -             the live span was finished (or its finish handed off); closing a run closes its spans
`parse` keeps the largest time per run, skips and counts malformed lines, ignores a torn last line and never
reads past its bound; nothing in a file can make it raise. No state: safe from any thread. (A version of this
package from before live spans counts a span line as malformed and still finishes the run.)
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
from pathlib import Path
from typing import NamedTuple

from prefactor_otel._logging import logger

try:
    import fcntl
except ImportError:  # Windows: the journal is disabled there (journal.py says so)
    fcntl = None  # type: ignore[assignment]

FORMAT_VERSION = 1
HEADER = b"# prefactor-otel run journal v%d\n" % FORMAT_VERSION
HEADER_RE = re.compile(rb"^# prefactor-otel run journal v(\d{1,6})$")
ID_BYTES_RE = re.compile(rb"[0-9A-Za-z_.:-]{1,128}")
MAX_LINE = 512
MAX_NS = (1 << 63) - 1
OPEN_FLAGS = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


class Parsed(NamedTuple):
    version: int | None  # None: no header
    runs: dict[str, int]
    spans: dict[str, tuple[str, int]]  # live span id -> (its run's instance id, its start ns), of open runs only
    malformed: int
    torn: int
    truncated: bool


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def fsync_directory(directory: Path) -> None:
    """Make a new name in `directory` survive an OS crash (best effort: some systems cannot open directories)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def lock_existing(path: Path) -> int | None:
    """Open and lock an existing regular file without waiting; None if it is gone, locked, replaced or odd."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | OPEN_FLAGS)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        opened = os.fstat(fd)
        current = os.stat(path, follow_symlinks=False)  # still the file we locked? (not compacted or deleted)
        if stat.S_ISREG(opened.st_mode) and (opened.st_dev, opened.st_ino) == (current.st_dev, current.st_ino):
            return fd
    except OSError as exc:
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.ENOENT):
            logger.debug("Prefactor run journal: cannot lock %s (%s)", path.name, type(exc).__name__)
    os.close(fd)
    return None


def parse(fd: int, max_bytes: int) -> Parsed:
    """Read a journal line by line, at most `max_bytes`; nothing in the file can make this raise."""
    runs: dict[str, int] = {}
    spans: dict[str, tuple[str, int]] = {}
    malformed = torn = 0
    version: int | None = None
    consumed = 0
    first = True
    os.lseek(fd, 0, os.SEEK_SET)
    with open(fd, "rb", buffering=64 * 1024, closefd=False) as reader:
        while consumed < max_bytes:
            line = reader.readline(min(MAX_LINE + 1, max_bytes - consumed))
            if not line:
                break
            consumed += len(line)
            if not line.endswith(b"\n"):
                if len(line) <= MAX_LINE and consumed < max_bytes:
                    torn += 1  # the last line, cut short by a crash mid-write
                    break
                malformed += 1  # too long: skip to the next line break, within the bound
                while consumed < max_bytes:
                    rest = reader.readline(min(64 * 1024, max_bytes - consumed))
                    consumed += len(rest)
                    if not rest or rest.endswith(b"\n"):
                        break
                first = False
                continue
            line = line[:-1]
            if first:
                first = False
                header = HEADER_RE.match(line)
                if header is not None:
                    version = int(header.group(1))
                    if version != FORMAT_VERSION:
                        break
                    continue
            instance_id, _, value = line.partition(b" ")
            if ID_BYTES_RE.fullmatch(instance_id) is None:
                malformed += 1
                continue
            key = instance_id.decode("ascii")
            value, _, run_id = value.partition(b" ")
            if value == b"-" and not run_id:
                runs.pop(key, None)
                spans.pop(key, None)
            elif not (value.isdigit() and len(value) <= 19 and (ns := int(value)) <= MAX_NS):
                malformed += 1
            elif not run_id:
                if ns > runs.get(key, -1):
                    runs[key] = ns
            elif ID_BYTES_RE.fullmatch(run_id) is not None:
                spans[key] = (run_id.decode("ascii"), ns)
            else:
                malformed += 1
        truncated = consumed >= max_bytes and reader.read(1) != b""
    # A span line names its run; a run closed (or never opened) leaves its spans nothing to do.
    spans = {span_id: span for span_id, span in spans.items() if span[0] in runs}
    return Parsed(version, runs, spans, malformed, torn, truncated)
