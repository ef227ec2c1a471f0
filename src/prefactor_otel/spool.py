"""The durable spool: bulk items that could not be delivered wait on disk, oldest first, across restarts.

Files: one or more per hand-off, each written atomically (temporary `.tmp-p<pid>-*` + fsync + rename) in a 0700
directory, named `<time ns, 20 digits>-<pid>-<counter>.json` so that names sort in write order (the stamp never
repeats within a process). Files hold only bulk items -- never the token or a header. The format (bounded files,
large shared objects stored once per file) is in `spool_format`.

Bounded: a hand-off is split into files of at most `max_file_bytes` (one item larger than that gets a file of its
own; an item larger than `max_item_bytes` is dropped, counted). Before writing, the oldest files are dropped
(counted) until the new ones fit under `max_bytes`, counting other processes' files (`append` rescans when the
directory changed since its last scan or write; every rescan trims to the cap too); a hand-off larger than the
whole cap is refused (`append` returns False, counted, logged). Files past the retention age are dropped, counted.

Other processes' files: the directory is rescanned when a sender takes the lock with an empty index, and at most
every `rescan_seconds` otherwise (`has_backlog`, `append`), so files a live process leaves behind are replayed.
`.tmp-*` files older than a minute whose writer is not a live process are removed.

Reading the files back (leases, one sender per directory, the read limit, the quarantine) is `spool_replay`:
`SpoolReplay`, a mixin of `Spool` that shares the state `Spool.__init__` owns.

Threads: the exporter's export callers and its background sender call every method. `_lock` guards the index,
leases, own-file set, counters and the sender-lock descriptor; file writes happen under it (names and the index
must agree in order). `reset_after_fork` must be called in a forked child before anything else.
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
from prefactor_otel.spool_disk import SenderLock, make_private_directory, scan, write_atomic
from prefactor_otel.spool_format import FORMAT_VERSION, ItemEncoder, pack, spans_in
from prefactor_otel.spool_replay import SpoolReplay

__all__ = ["FORMAT_VERSION", "Spool", "default_spool_dir"]

DEFAULT_MAX_FILE_BYTES = 1 << 20
DEFAULT_MAX_ITEM_BYTES = 4 << 20  # the transport's default request limit: a larger item could never be sent


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
        self._quarantine_bytes = max(max_file_bytes, max_bytes // 10)
        self._rescan_seconds = rescan_seconds
        self._lock = threading.Lock()
        self._counter = 0
        self._last_stamp = 0
        self._index: dict[str, int] = {}  # unleased file name -> size, in name (= write) order
        self._leased: dict[str, int] = {}  # name -> size of files this process has leased and not yet settled
        self._own: set[str] = set()  # names of files this process wrote that may still exist
        self._foreign_bytes = 0  # files leased by other live processes, as of the last rescan
        self._total = 0
        self._last_rescan = float("-inf")
        self._seen_mtime_ns = 0  # the directory's mtime after our last scan or write: another change is not ours
        self._sender = SenderLock(directory)
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
        for path, name in found.expired:
            self._discard(path, name, "spool_expired")
        self._recount()
        self._last_rescan = time.monotonic()
        self._seen_mtime_ns = self._directory_mtime_ns()
        self._make_room(0)  # a lowered cap, or a backlog from before the cap held: trimmed, oldest first, counted

    def _rescan_due(self) -> bool:
        return time.monotonic() - self._last_rescan >= self._rescan_seconds

    def _directory_mtime_ns(self) -> int:
        try:
            return os.stat(self.directory).st_mtime_ns
        except OSError:
            return 0

    def _recount(self) -> None:
        self._total = sum(self._index.values()) + sum(self._leased.values()) + self._foreign_bytes

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
            if self._rescan_due() or self._directory_mtime_ns() != self._seen_mtime_ns:
                with contextlib.suppress(OSError):
                    self._rescan()  # another process wrote or took files: theirs count against the cap too
            if not self._make_room(new_bytes):
                self.counters["spool_refused_items"] += len(encoded)
                self._log.log(
                    logging.WARNING,
                    "spool_refused",
                    "Prefactor spool: refused %d item(s) (%d bytes) that do not fit the %d-byte cap; they stay in "
                    "memory",
                    len(encoded),
                    new_bytes,
                    self._max_bytes,
                )
                return False
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
            self._seen_mtime_ns = self._directory_mtime_ns()
            self.counters["items_spooled"] += len(encoded)
        return True

    def _next_name(self) -> str:
        # Strictly increasing within the process, so the files of one hand-off (and of successive ones) sort in order.
        stamp = max(time.time_ns(), self._last_stamp + 1)
        self._last_stamp = stamp
        self._counter += 1
        return f"{stamp:020d}-{os.getpid()}-{self._counter:06d}.json"

    def _make_room(self, new_bytes: int) -> bool:
        """Drop the oldest unleased files until `new_bytes` fit under the cap. False if they cannot fit."""
        if new_bytes > self._max_bytes:
            return False
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
            self._index.pop(name, None)  # another process leased it: not dropped, and still someone's backlog
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
        return self._total


def _is_span(item: dict[str, Any] | bytes) -> bool:
    return isinstance(item, dict) and item.get("_type") == "agent_spans/create"
