"""Spool replay: the oldest file leased for sending, its unsent rest given back, one sender per directory.

A mixin of `Spool` (spool.py), split out as its own concept: it shares the state `Spool.__init__` owns (the index,
leases, own-file set, counters, the sender lock) and the file naming, bounds and rescans described there.

Leases: a sender takes a file by renaming it to `<name>.lease-<pid>`; a lease whose process died (or that carries
our own pid but is not one we hold: a restart that reused the pid) is taken back by the next rescan.

One sender per directory: `with spool.sending() as acquired:` holds a non-blocking exclusive flock on
`.sender.lock` while a process replays, so processes sharing the directory never send files of one run out of
order. The flock belongs to the open file description, which a fork shares: the parent releases with LOCK_UN
(so a child's inherited copy cannot keep it held) and a child only closes its copy (`reset_after_fork`).

A file is read only if it is within the read limit, so replay memory is bounded whatever the backlog; a version-1
file over it (written before files were bounded) is rewritten as bounded files in its place, reading it in chunks.
`has_own_backlog` says whether files this process wrote still exist anywhere (leased by anyone): while they do,
live items of the same runs must not be sent ahead of them.

Unreadable files (not JSON, truncated, a checksum that does not match, wrong shape, or over the read limit and not
splittable) are moved to `.quarantine/` (at most `max_bytes // 10` bytes, oldest removed first, a larger file
deleted; inside the cap, and emptied first when the spool needs room), every span they held counted as dropped
`spool_corrupt` (from the file's checked header; a file without an intact header counts the span items still
readable in it, and `spool_corrupt_files_counted_partly` counts such files), logged once per file with its path
(the first 100 files of a process; rate-limited after); `take_oldest` serves the next file and never raises.

Threads: the thread replaying (the one holding the exporter's send lock: its background sender, a flush or a
shutdown) calls `sending`, `take_oldest`, `give_back` and `complete`; `has_backlog` and `has_own_backlog` are asked
by the exporter's threads before they send. Every method runs under `Spool._lock` (spool.py), which guards what it
reads and changes here, and takes or releases the sender flock under it; the flock itself is held across the whole
replay, outside `_lock`. `has_backlog` only tries `_lock` (when busy it answers from the index).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefactor_otel._logging import RateLimitedLog, logger
from prefactor_otel.durability.spool_disk import (
    QUARANTINE,
    SenderLock,
    base_name,
    names_present,
    quarantine,
    write_atomic,
    write_pieces,
)
from prefactor_otel.durability.spool_format import CorruptFile, ItemEncoder, decode, render, spans_in, v1_pieces

_SENDER_POLL_S = 0.05
_CORRUPT_FILES_LOGGED = 100  # per process, one line each; later ones are rate-limited


@dataclass(slots=True)
class SpoolFile:
    path: Path
    items: list[dict[str, Any]]


class SpoolReplay:
    # State owned by Spool.__init__ (spool.py), used here.
    directory: Path
    enabled: bool
    _max_bytes: int
    _max_file_bytes: int
    _max_item_bytes: int
    _read_limit: int
    _quarantine_bytes: int
    _lock: threading.Lock
    _index: dict[str, int]
    _leased: dict[str, int]
    _own: set[str]
    _sender: SenderLock
    _writer: SenderLock
    _foreign_bytes: int
    counters: Counter[str]
    _log: RateLimitedLog
    # Spool methods used here.
    _rescan: Callable[[], None]
    _rescan_due: Callable[[], bool]
    _recount: Callable[[], None]
    _forget: Callable[[str], None]
    _refresh: Callable[[], None]
    _lock_writer: Callable[[], bool]
    _make_room: Callable[[int], bool]
    _note_directory: Callable[[], None]

    # ------------------------------------------------------------------ reading

    @property
    def has_backlog(self) -> bool:
        """Any file to replay, ours or another process's (rescanned at most every `rescan_seconds`)."""
        if not self._index and self.enabled and self._rescan_due() and self._lock.acquire(blocking=False):
            try:
                with contextlib.suppress(OSError):
                    self._rescan()
            finally:
                self._lock.release()
        return bool(self._index)

    @property
    def has_own_backlog(self) -> bool:
        """Whether files this process wrote still exist, leased by anyone: until they are gone, live items of the
        same runs must wait (or be spooled behind them)."""
        with self._lock:
            if not self._own:
                return False
            if self._leased.keys() & self._own:
                return True
            for name in self._own:
                if os.path.exists(self.directory / name):
                    return True
            try:
                # Leased by another process (its pid is in the name): list the directory. A listing is not
                # atomic against renames, so a name is only given up when two listings miss it.
                missing = self._own - names_present(self.directory)
                if missing:
                    missing -= names_present(self.directory)
            except OSError:
                return True  # cannot tell: the safe answer keeps the order
            self._own -= missing
            return bool(self._own)

    def take_oldest(self, deadline: float | None = None) -> SpoolFile | None:
        """Lease the oldest file for sending. None if there is none, another process took it, or the monotonic
        `deadline` passed. Unreadable files are quarantined on the way; this never raises."""
        with self._lock:
            while self._index:
                if deadline is not None and time.monotonic() >= deadline:
                    return None
                name, size = next(iter(self._index.items()))
                lease = self.directory / f"{name}.lease-{os.getpid()}"
                try:
                    os.replace(self.directory / name, lease)
                except FileNotFoundError:
                    # Another process took it (if it was ours, it is still our backlog): on disk, theirs now.
                    self._foreign_bytes += self._index.pop(name)
                    self._recount()
                    continue
                except OSError as exc:
                    self._log.log(logging.WARNING, "spool_lease", "Prefactor spool: cannot lease a file (%s)", exc)
                    return None
                self._index.pop(name)
                self._leased[name] = size
                try:
                    size = os.stat(lease).st_size
                    self._leased[name] = size
                    if size > self._read_limit:
                        if self._split_oversized(lease, name):
                            continue  # its pieces are now the oldest files
                        raise CorruptFile(f"{size} bytes, over the {self._read_limit}-byte read limit")
                    with open(lease, "rb") as fh:
                        items = decode(fh.read(self._read_limit + 1))
                except Exception as exc:  # whatever is wrong with one file, the next one is served
                    self._set_aside(lease, name, exc)
                    continue
                self._recount()
                return SpoolFile(lease, items)
            return None

    def _split_oversized(self, lease: Path, name: str) -> bool:
        """Rewrite an oversized version-1 file (written before files were bounded) as bounded files in its place.
        False (nothing left behind) if it is not one, or cannot be split."""
        if not self._lock_writer():
            return False
        try:
            with contextlib.suppress(OSError):
                self._refresh()
            # The pieces are written while the file itself is still on disk: they must fit beside it.
            pieces = write_pieces(
                self.directory,
                name.removesuffix(".json"),
                v1_pieces(lease, self._max_file_bytes, self._max_item_bytes),
                mtime=os.stat(lease).st_mtime,
                budget=self._max_bytes - self._total,
            )
        except (CorruptFile, OSError, ValueError):
            return False
        finally:
            self._writer.release()
        with contextlib.suppress(OSError):
            os.unlink(lease)  # if it stays, the next rescan takes it back: its items are sent twice, idempotently
        was_ours = name in self._own
        self._forget(name)
        self._index = dict(sorted({**self._index, **dict(pieces)}.items()))
        if was_ours:
            self._own.update(piece for piece, _ in pieces)
        self._recount()
        self.counters["spool_files_split"] += 1
        return True

    def _set_aside(self, path: Path, name: str, problem: Exception) -> None:
        count, exact = spans_in(path)
        kept = quarantine(path, self.directory / QUARANTINE, name, self._quarantine_bytes)
        self._forget(name)
        self.counters["spool_files_quarantined"] += 1
        self.counters["dropped:spool_corrupt"] += count
        if not exact:
            self.counters["spool_corrupt_files_counted_partly"] += 1
        why = problem if isinstance(problem, CorruptFile) else type(problem).__name__
        where = f"moved to {self.directory / QUARANTINE / name}" if kept else f"deleted from {self.directory}"
        spans = f"{count} span(s)" if exact else f"{count} span(s) (those still readable in it: no intact header)"
        message = "Prefactor spool: unreadable file %s (%s): %s dropped (spool_corrupt); the file was %s"
        args = (name, why, spans, where)
        # One line per file, with its path, for the first files; a directory of damaged files is summarised after.
        if self.counters["spool_files_quarantined"] <= _CORRUPT_FILES_LOGGED:
            logger.warning(message, *args)
        else:
            self._log.log(logging.WARNING, "spool_corrupt", message, *args)

    def complete(self, file: SpoolFile) -> None:
        with self._lock:
            with contextlib.suppress(OSError):
                file.path.unlink()
            self._forget(base_name(file.path.name))

    def give_back(self, file: SpoolFile, remaining: Sequence[dict[str, Any]]) -> None:
        """Return the unsent rest of a leased file to the queue, keeping its place (its name)."""
        name = base_name(file.path.name)
        with self._lock:
            if not remaining:
                with contextlib.suppress(OSError):
                    file.path.unlink()
                self._forget(name)
                return
            try:
                encoder = ItemEncoder(remaining)
                data = render([encoder.encode(item) for item in remaining])
            except (TypeError, ValueError, RecursionError):
                self._put_back_whole(file.path, name)
                return
            # The rest is written beside the lease before the lease goes: both are on disk for a moment, so the
            # rest is written only if both fit under the cap (write lock held); else the whole file is put back.
            if not self._lock_writer():
                self._put_back_whole(file.path, name)
                return
            try:
                with contextlib.suppress(OSError):
                    self._refresh()
                if self._total + len(data) > self._max_bytes:
                    self._put_back_whole(file.path, name)
                    return
                write_atomic(self.directory / name, data, mtime=os.stat(file.path).st_mtime)
                file.path.unlink(missing_ok=True)
            except OSError:
                # The lease (the whole file, resent items included: idempotent) is taken back by the next rescan.
                self._foreign_bytes += self._leased.pop(name, 0)  # still on disk until then
                self._recount()
                return
            finally:
                self._writer.release()
            self._leased.pop(name, None)
            self._index[name] = len(data)
            self._index = dict(sorted(self._index.items()))
            self._recount()
            self._note_directory()

    def _put_back_whole(self, lease: Path, name: str) -> None:
        """Return a leased file as it is, under its name (its delivered items are sent again: idempotent)."""
        size = self._leased.pop(name, 0)
        try:
            os.replace(lease, self.directory / name)
        except OSError:
            self._foreign_bytes += size  # left leased: the next rescan takes it back
        else:
            self._index[name] = size
            self._index = dict(sorted(self._index.items()))
            self.counters["spool_given_back_whole"] += 1
        self._recount()

    # ------------------------------------------------------------------ one sender per directory

    @contextlib.contextmanager
    def sending(self, deadline: float | None = None) -> Iterator[bool]:
        """`with spool.sending() as acquired:` -- replay only if acquired; another process (or thread) is the
        sender otherwise. Without a deadline it never blocks; with one (monotonic) it retries until then, for a
        flush or shutdown that must see its own backlog sent (another sender holds the lock per replay only)."""
        acquired = self._acquire_sender()
        while not acquired and deadline is not None and time.monotonic() + _SENDER_POLL_S < deadline:
            time.sleep(_SENDER_POLL_S)  # flock has no timed wait: poll, outside our lock
            acquired = self._acquire_sender()
        try:
            yield acquired
        finally:
            if acquired:
                self._release_sender()

    def _acquire_sender(self) -> bool:
        if not self.enabled:
            return False
        with self._lock:
            try:
                if not self._sender.acquire():
                    return False
            except OSError as exc:
                self._log.log(logging.WARNING, "spool_lock", "Prefactor spool: cannot open the sender lock (%s)", exc)
                return False
            if not self._index or self._rescan_due():
                with contextlib.suppress(OSError):
                    self._rescan()  # files other processes left: this sender replays them too
            return True

    def _release_sender(self) -> None:
        with self._lock:
            self._sender.release()
