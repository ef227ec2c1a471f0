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
once a second old, else backed by a listing of its names: see `DirectoryWatch`) or else a re-stat of the files
that grow in place, and only if it fits.
To make room the quarantine is emptied, then the oldest waiting files are dropped (counted `spool_full`); what
cannot fit even so is refused (`append` returns False, counted, logged) and nothing is dropped for it. Every
rescan trims to the cap too. Files past the retention age are dropped, counted.

Other processes' files: the directory is rescanned when a sender takes the lock with an empty index, and at most
every `rescan_seconds` otherwise (`has_backlog`, `append`), so files a live process leaves behind are replayed.
`.tmp-*` files older than a minute whose writer is not a live process are removed.

Reading the files back, oldest first. Leases: a sender takes a file by renaming it to `<name>.lease-<pid>`; a
lease whose process died (or that carries our own pid but is not one we hold: a restart that reused the pid) is
taken back by the next rescan.

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

Parts `Spool` holds and calls (spool_disk.py): two `SenderLock`s (`.sender.lock`, `.write.lock`), each owning its
descriptor; a `DirectoryWatch`, owning what the directory looked like after our last scan or write; and a
`RateLimitedLog`. The directory scans, atomic writes and the quarantine are functions of spool_disk.py; the file
format is spool_format.py.

Threads: the exporter's export callers and its background sender call every method: `sending`, `take_oldest`,
`give_back` and `complete` by the thread replaying (the one holding the exporter's send lock: its background
sender, a flush or a shutdown); `has_backlog` and `has_own_backlog` by the exporter's threads before they send.
`_lock` guards the index, leases,
own-file set, byte counts, counters and the parts above (both lock descriptors and the directory watch are only
touched under it); file writes happen under it (names and the index must agree in order), the write lock is taken
and released inside it, and the sender flock is taken or released under it while being held across the whole
replay, outside `_lock`. `has_backlog` only tries `_lock` (when busy it answers from the index).
`reset_after_fork` must be called in a forked child before anything else.
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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefactor_otel._logging import RateLimitedLog, logger
from prefactor_otel.durability.spool_disk import (
    QUARANTINE,
    WRITE_LOCK_FILE,
    DirectoryWatch,
    SenderLock,
    base_name,
    make_private_directory,
    names_present,
    quarantine,
    quarantine_files,
    scan,
    write_atomic,
    write_pieces,
)
from prefactor_otel.durability.spool_format import (
    FORMAT_VERSION,
    CorruptFile,
    ItemEncoder,
    decode,
    pack,
    render,
    spans_in,
    v1_pieces,
)

__all__ = ["FORMAT_VERSION", "Spool", "SpoolFile", "default_spool_dir"]

DEFAULT_MAX_FILE_BYTES = 1 << 20
DEFAULT_MAX_ITEM_BYTES = 4 << 20  # the transport's default request limit: a larger item could never be sent
WRITE_LOCK_WAIT_S = 2.0  # another process writing holds `.write.lock` for one hand-off's files; beyond this: refused
_SENDER_POLL_S = 0.05
_CORRUPT_FILES_LOGGED = 100  # per process, one line each; later ones are rate-limited


def default_spool_dir(api_base: str, agent_key: str) -> Path:
    """Per user and per destination, so two configurations never replay each other's items."""
    digest = hashlib.sha256(f"{api_base}\x1f{agent_key}".encode()).hexdigest()[:16]
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(tempfile.gettempdir()) / f"prefactor-otel-{uid}" / digest


@dataclass(slots=True)
class SpoolFile:
    """A file leased for sending: its lease path and its items. Settle it with `complete` or `give_back`."""

    path: Path
    items: list[dict[str, Any]]


class Spool:
    """The spool directory of one configuration: `append` at the tail, `take_oldest` / `give_back` / `complete` at
    the head, under `sending()`."""

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
        self._watch = DirectoryWatch(directory)  # did another process change the directory since our last look?
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
        self._watch.note()
        self._make_room(0)  # a lowered cap, or a backlog from before the cap held: trimmed, oldest first, counted

    def _rescan_due(self) -> bool:
        return time.monotonic() - self._last_rescan >= self._rescan_seconds

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
        if self._rescan_due() or self._watch.changed():
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
        self._watch.note()
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
            self._watch.note()

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
