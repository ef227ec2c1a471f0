"""The durable spool: bulk items that could not be delivered wait on disk, oldest first, across restarts.

Files: one or more per hand-off, each written atomically (temporary `.tmp-p<pid>-*` + fsync + rename) in a 0700
directory, named `<time ns, 20 digits>-<pid>-<counter>.json` so that names sort in write order (the stamp never
repeats within a process). Files hold only bulk items -- never the token or a header. The format (bounded files,
large shared objects stored once per file) is in `spool_format`.

Bounded: a hand-off is split into files of at most `max_file_bytes` (one item larger than that gets a file of its
own; an item larger than `max_item_bytes` is dropped, counted). `max_bytes` bounds every byte in the directory
(waiting files, leases, the quarantine, journals, records, lock and temporary files), across processes: whatever
makes it grow (`append`, a give-back's rewrite, a legacy split) runs under the directory's write lock
(`.write.lock`, flock, held for that write only), after a rescan when the directory changed (its mtime, trusted
once a second old, else backed by a listing of its names: see `_note_directory`) or else a re-stat of the files
that grow in place, and only if it fits.
To make room the quarantine is emptied, then the oldest waiting files are dropped (counted `spool_full`); what
cannot fit even so is refused (`append` returns False, counted, logged) and nothing is dropped for it. Every
rescan trims to the cap too. Files past the retention age are dropped, counted.

Other processes' files: the directory is rescanned when a sender takes the lock with an empty index, and at most
every `rescan_seconds` otherwise (`has_backlog`, `append`), so files a live process leaves behind are replayed.
`.tmp-*` files older than a minute whose writer is not a live process are removed.

Reading the files back (leases, one sender per directory, the read limit, the quarantine) is `spool_replay`:
`SpoolReplay`, a mixin of `Spool` that shares the state `Spool.__init__` owns.

Threads: the exporter's export callers and its background sender call every method. `_lock` guards the index,
leases, own-file set, byte counts, counters and both lock descriptors; file writes happen under it (names and the
index must agree in order), the write lock is taken and released inside it. `reset_after_fork` must be called in
a forked child before anything else.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prefactor_otel._logging import RateLimitedLog, logger
from prefactor_otel.durability.spool_disk import (
    QUARANTINE,
    WRITE_LOCK_FILE,
    SenderLock,
    make_private_directory,
    quarantine_files,
    scan,
    write_atomic,
)
from prefactor_otel.durability.spool_format import FORMAT_VERSION, ItemEncoder, pack, spans_in
from prefactor_otel.durability.spool_replay import SpoolReplay

__all__ = ["FORMAT_VERSION", "Spool", "default_spool_dir"]

DEFAULT_MAX_FILE_BYTES = 1 << 20
DEFAULT_MAX_ITEM_BYTES = 4 << 20  # the transport's default request limit: a larger item could never be sent
MTIME_TICK_NS = 1_000_000_000  # the coarsest mtime clock we trust to tell two changes apart (ext4: ~4 ms)
WRITE_LOCK_WAIT_S = 2.0  # another process writing holds `.write.lock` for one hand-off's files; beyond this: refused


def default_spool_dir(api_base: str, agent_key: str) -> Path:
    """Per user and per destination, so two configurations never replay each other's items."""
    digest = hashlib.sha256(f"{api_base}\x1f{agent_key}".encode()).hexdigest()[:16]
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(tempfile.gettempdir()) / f"prefactor-otel-{uid}" / digest


class Spool(SpoolReplay):
    def __init__(
        self,
        directory: Path,
        *,
        max_bytes: int,
        retention_seconds: float,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
        max_item_bytes: int = DEFAULT_MAX_ITEM_BYTES,
        rescan_seconds: float = 5.0,
    ) -> None:
        self.directory = directory
        self._max_bytes = max_bytes
        self._retention = retention_seconds
        self._max_file_bytes = max_file_bytes
        self._max_item_bytes = max_item_bytes
        # A given-back file may have grown a little (orphaned copies); twice the larger limit leaves room for that.
        self._read_limit = 2 * max(max_file_bytes, max_item_bytes) + 65536
        self._quarantine_bytes = max_bytes // 10  # inside the cap: a larger damaged file is deleted (counted)
        self._rescan_seconds = rescan_seconds
        self._lock = threading.Lock()
        self._counter = 0
        self._last_stamp = 0
        self._index: dict[str, int] = {}  # unleased file name -> size, in name (= write) order
        self._leased: dict[str, int] = {}  # name -> size of files this process has leased and not yet settled
        self._own: set[str] = set()  # names of files this process wrote that may still exist
        self._foreign_bytes = 0  # files leased by other live processes, as of the last rescan
        self._other: dict[str, int] = {}  # other regular files in the directory (journals, records...) -> size
        self._quarantined: dict[str, int] = {}  # files in the quarantine -> size, oldest first
        self._total = 0  # every byte of every file in the directory and its quarantine, as far as we know
        self._last_rescan = float("-inf")
        # The directory's mtime after our last scan or write (0: unknown), and its names when that mtime was too
        # young to prove that nothing changed since (see `_note_directory`).
        self._seen_mtime_ns = 0
        self._seen_names: frozenset[str] | None = None
        self._sender = SenderLock(directory)
        self._writer = SenderLock(directory, WRITE_LOCK_FILE)  # held (briefly, under _lock) while growing the spool
        self.counters: Counter[str] = Counter()
        self._log = RateLimitedLog()
        self.enabled = self._prepare()

    # ------------------------------------------------------------------ set-up

    def _prepare(self) -> bool:
        try:
            make_private_directory(self.directory)
            self._rescan()
        except OSError as exc:
            logger.warning(
                "Prefactor spool disabled: cannot use %s (%s); undeliverable spans stay in memory only",
                self.directory,
                type(exc).__name__,
            )
            return False
        return True

    def reset_after_fork(self) -> None:
        """In a forked child, before any other call: new locks, and nothing the parent holds is ours."""
        self._lock = threading.Lock()
        self._log.reset_after_fork()
        self._sender.reset_after_fork()  # closes our copy only: the parent may be the sender
        self._writer.reset_after_fork()  # likewise: a parent's thread may have been writing at the fork
        # The parent's leases are the parent's: to us they are another live process's files.
        self._foreign_bytes += sum(self._leased.values())
        self._leased = {}
        # `_own` stays: files the parent wrote may hold earlier items of runs the child inherited.

    # ------------------------------------------------------------------ scanning

    def _rescan(self) -> None:
        """Rebuild the index from the directory (leases of dead processes taken back, expired files dropped)."""
        found = scan(self.directory, self._leased, self._retention)
        self.counters["spool_tmp_removed"] += found.tmp_removed
        self._index, self._foreign_bytes = found.index, found.foreign_bytes
        self._other, self._quarantined = found.other, found.quarantined
        for path, name in found.expired:
            self._discard(path, name, "spool_expired")
        self._recount()
        self._last_rescan = time.monotonic()
        self._note_directory()
        self._make_room(0)  # a lowered cap, or a backlog from before the cap held: trimmed, oldest first, counted

    def _rescan_due(self) -> bool:
        return time.monotonic() - self._last_rescan >= self._rescan_seconds

    def _note_directory(self) -> None:
        """Remember the directory as of now: its mtime and, when that is too young to prove anything, its names.
        File systems stamp mtimes from a coarse clock: a change made in the same tick as ours leaves the mtime as
        it is, so an mtime younger than `MTIME_TICK_NS` is backed by the list of names (a listing, no stat)."""
        self._seen_mtime_ns = self._directory_mtime_ns()
        self._seen_names = None
        if time.time_ns() - self._seen_mtime_ns < MTIME_TICK_NS:
            try:
                self._seen_names = frozenset(os.listdir(self.directory))
            except OSError:
                self._seen_mtime_ns = 0  # the next check rescans

    def _changed(self) -> bool:
        """Whether anyone added, removed or renamed a file in the directory since `_note_directory`."""
        if not self._seen_mtime_ns or self._directory_mtime_ns() != self._seen_mtime_ns:
            return True
        if self._seen_names is None:
            return False
        try:
            return frozenset(os.listdir(self.directory)) != self._seen_names
        except OSError:
            return True

    def _directory_mtime_ns(self) -> int:
        try:
            return os.stat(self.directory).st_mtime_ns
        except OSError:
            return 0

    def _recount(self) -> None:
        self._total = (
            sum(self._index.values())
            + sum(self._leased.values())
            + self._foreign_bytes
            + sum(self._other.values())
            + sum(self._quarantined.values())
        )

    def _restat(self) -> None:
        """Sizes of the files that grow in place (a journal of open runs is appended to), and of the quarantine
        (its files move in without changing the directory's own mtime)."""
        for name in list(self._other):
            try:
                self._other[name] = os.stat(self.directory / name, follow_symlinks=False).st_size
            except FileNotFoundError:
                del self._other[name]
            except OSError:
                pass
        with contextlib.suppress(OSError):
            self._quarantined = quarantine_files(self.directory / QUARANTINE)
        self._recount()

    def _refresh(self) -> None:
        """Before growing the spool, under the write lock: what the directory holds now. A full rescan when
        another process changed the directory (its mtime moved) or one is due; else the files that grow in place
        are stat'ed again."""
        if self._rescan_due() or self._changed():
            self._rescan()
        else:
            self._restat()

    # ------------------------------------------------------------------ writing

    def append(self, items: Sequence[dict[str, Any] | bytes]) -> bool:
        """Write items (dicts, or their JSON already encoded) durably, in order, in as many files as the per-file
        limit needs. False (nothing written) if the spool is off, the write failed or the items exceed the cap."""
        if not self.enabled or not items:
            return False
        encoder = ItemEncoder(items)
        encoded = []
        too_large = unencodable = 0
        for item in items:
            try:
                one = encoder.encode(item)
            except (TypeError, ValueError, RecursionError):
                unencodable += _is_span(item)
                continue
            if one.size > self._max_item_bytes:
                too_large += one.is_span
                continue
            encoded.append(one)
        files = pack(encoded, self._max_file_bytes)
        new_bytes = sum(len(data) for data in files)
        with self._lock:
            for reason, count in (("spool_item_too_large", too_large), ("spool_unencodable", unencodable)):
                if count:
                    self._count_drop(reason, count)
            if not self._lock_writer():
                return False
            try:
                with contextlib.suppress(OSError):
                    self._refresh()  # other processes' files (and the journals) count against the cap too
                if not self._make_room(new_bytes):
                    self.counters["spool_refused_items"] += len(encoded)
                    self._log.log(
                        logging.WARNING,
                        "spool_refused",
                        "Prefactor spool: refused %d item(s) (%d bytes) that do not fit the %d-byte cap; they stay "
                        "in memory",
                        len(encoded),
                        new_bytes,
                        self._max_bytes,
                    )
                    return False
                if not self._write(files):
                    return False
            finally:
                self._writer.release()
            self.counters["items_spooled"] += len(encoded)
        return True

    def _lock_writer(self) -> bool:
        """Take the directory's write lock (under _lock): one process at a time checks the cap and writes."""
        try:
            if self._writer.acquire(WRITE_LOCK_WAIT_S):
                return True
        except OSError as exc:
            self._log.log(logging.WARNING, "spool_lock", "Prefactor spool: cannot open the write lock (%s)", exc)
            return False
        self.counters["spool_write_lock_busy"] += 1
        self._log.log(
            logging.WARNING,
            "spool_write_lock",
            "Prefactor spool: another process held the spool's write lock for %.0f s; items stay in memory",
            WRITE_LOCK_WAIT_S,
        )
        return False

    def _write(self, files: list[bytes]) -> bool:
        """Write files (room made, write lock held). All or nothing: False (nothing left behind) on an error."""
        written: list[tuple[str, int]] = []
        try:
            for data in files:
                name = self._next_name()
                write_atomic(self.directory / name, data)
                written.append((name, len(data)))
        except OSError as exc:
            for name, _ in written:  # all or nothing: the caller keeps every item
                with contextlib.suppress(OSError):
                    os.unlink(self.directory / name)
            logger.warning("Prefactor spool write failed (%s); spans stay in memory", type(exc).__name__)
            self.counters["spool_write_errors"] += 1
            return False
        for name, size in written:
            self._index[name] = size
            self._own.add(name)
        self._recount()
        self._note_directory()
        return True

    def _next_name(self) -> str:
        # Strictly increasing within the process, so the files of one hand-off (and of successive ones) sort in order.
        stamp = max(time.time_ns(), self._last_stamp + 1)
        self._last_stamp = stamp
        self._counter += 1
        return f"{stamp:020d}-{os.getpid()}-{self._counter:06d}.json"

    def _make_room(self, new_bytes: int) -> bool:
        """Empty the quarantine (its spans were counted when it was set aside), then drop the oldest unleased
        files, until `new_bytes` fit under the cap. False if they cannot fit (nothing is dropped then)."""
        if self._total - sum(self._index.values()) - sum(self._quarantined.values()) + new_bytes > self._max_bytes:
            return False  # even an empty queue would not make room: what others hold, leases and journals stay
        while self._total + new_bytes > self._max_bytes and self._quarantined:
            name, size = next(iter(self._quarantined.items()))
            with contextlib.suppress(OSError):
                os.unlink(self.directory / QUARANTINE / name)
            del self._quarantined[name]
            self._total -= size
        while self._total + new_bytes > self._max_bytes and self._index:
            oldest = next(iter(self._index))
            self._discard(self.directory / oldest, oldest, "spool_full")
        return self._total + new_bytes <= self._max_bytes

    def _discard(self, path: Path, name: str, reason: str) -> None:
        """Drop a file, counting its spans by reason (counted before deleting: its header, or bounded reads)."""
        count, _exact = spans_in(path)
        try:
            path.unlink()
        except FileNotFoundError:
            # Another process leased it: not dropped, still someone's backlog, and still on disk (counted as
            # theirs until the next rescan says otherwise).
            self._foreign_bytes += self._index.pop(name, 0)
            self._recount()
            return
        except OSError:
            pass
        self._forget(name)
        self._count_drop(reason, count)

    def _count_drop(self, reason: str, count: int) -> None:
        self.counters[f"dropped:{reason}"] += count  # spans, like every other drop counter
        self._log.log(
            logging.WARNING,
            reason,
            "Prefactor spool: dropped %d span(s) (%s); %d dropped for this reason so far",
            count,
            reason,
            self.counters[f"dropped:{reason}"],
        )

    def _forget(self, name: str) -> None:
        self._index.pop(name, None)
        self._leased.pop(name, None)
        self._own.discard(name)
        self._recount()

    @property
    def backlog_bytes(self) -> int:
        """Bytes of bulk items waiting (this process's files and others', leased or not)."""
        return self._total - sum(self._other.values()) - sum(self._quarantined.values())

    @property
    def disk_bytes(self) -> int:
        """Every byte the spool directory holds as last counted (what the cap bounds): the waiting files, the
        quarantine, journals of open runs, kept records, lock and temporary files."""
        return self._total


def _is_span(item: dict[str, Any] | bytes) -> bool:
    return isinstance(item, dict) and item.get("_type") == "agent_spans/create"
