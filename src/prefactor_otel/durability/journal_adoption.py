"""Taking over the run journals of processes that ended: the reading half of the run journal (journal.py).

Ownership: the owner holds an exclusive `fcntl.flock` on its journal for its lifetime; the kernel drops the lock
when the process dies however it dies. A journal whose lock can be taken is abandoned -- the lock, not the pid, says
whether the owner is alive, so pid reuse cannot fool it. After taking the lock, the taker checks that the path still
names the file it locked (the owner may have compacted or deleted it in between). The taker holds the lock while it
makes the finishes durable, then `discard()`s the journal (or `release()`s it, untouched, when it could not); if the
taker dies first, the lock is dropped again and a later process takes the same journal (finishing twice is harmless:
a finish carries a deterministic idempotency key). Journals of ended processes with no open run are deleted by the
next taker. Reading is bounded: at most `max_read_bytes` per journal, lines of at most 512 bytes; a journal cut at
the bound is reported as truncated (logged, counted), never an exception.

`JournalAdoption` is a part `RunJournal` (journal.py) holds and calls: it owns the set of taken journals and its
lock; it counts into the journal's `counters` (given at construction) and asks the journal, through
`own_journal`, which journal is this process's own (never taken).

Threads: `take()`, `discard()`, `release()` are called (through RunJournal) by whichever thread replays the spool,
`release_all()` by the thread shutting down, `reset_after_fork()` by the journal's fork handling. `self._lock`
guards the set of taken journals; it is a leaf lock (nothing is called under it that takes another lock), never
taken while the journal's own lock is held, and replaced, not acquired, after a fork. `own_journal` is called
outside it, and parsing a taken journal happens outside it too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from prefactor_otel._logging import RateLimitedLog, logger
from prefactor_otel.durability.journal_file import FORMAT_VERSION, lock_existing, parse

JOURNAL_RE = re.compile(r"^runs-(\d+)-[0-9a-f]{8}\.journal$")
TEMP_RE = re.compile(r"^\.runs-(\d+)-[0-9a-f]{8}\.journal\.tmp$")
TAKE_LIMIT = 8
# A temporary journal lives for the few milliseconds of a creation or compaction; one older than this was left
# by a process that died mid-write (the age keeps a taker from racing a creator between open and flock).
_STALE_TEMP_S = 300.0


class AbandonedRun(NamedTuple):
    instance_id: str
    last_activity_ns: int
    live_spans: tuple[tuple[str, int], ...] = ()  # (span id, start ns) of its spans left `active`


@dataclass(slots=True, eq=False)
class AbandonedJournal:
    """A journal of a process that ended, locked by this process until `discard()` or `release()`."""

    path: Path
    runs: list[AbandonedRun]  # the runs still open, in order of first mention
    malformed_lines: int  # lines skipped, a torn last line and a missing header included
    truncated: bool  # the journal was longer than max_read_bytes: runs past the bound were not read
    _fd: int | None = field(default=None, repr=False)
    _owner_pid: int = field(default=0, repr=False)


class JournalAdoption:
    """The taking side of the run journal: scan the directory, lock and parse the journals of ended processes, and
    hold them (locked) until they are discarded or released."""

    def __init__(
        self,
        directory: Path,
        *,
        max_read_bytes: int,
        own_journal: Callable[[], str | None],
        counters: Counter[str],
    ) -> None:
        self._directory = directory
        self._max_read_bytes = max_read_bytes
        self._own_journal = own_journal  # the name of this process's own journal, if any (after its fork check)
        self.counters = counters  # the journal's: what is taken, removed and found malformed is counted there
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._taken: dict[int, AbandonedJournal] = {}  # fd -> journal taken and not yet discarded/released
        self._log = RateLimitedLog()

    def take(self, limit: int = TAKE_LIMIT) -> list[AbandonedJournal]:
        """Take (lock) up to `limit` journals of processes that ended and still list open runs. The caller makes
        their finishes durable, then calls `discard()` (or `release()` to leave a journal for later). Journals
        with no open run are deleted here. Never raises."""
        taken: list[AbandonedJournal] = []
        try:
            own = self._own_journal()
            names: list[str] = []
            with os.scandir(self._directory) as entries:
                for entry in entries:
                    if JOURNAL_RE.match(entry.name) and entry.name != own:
                        names.append(entry.name)
                    elif TEMP_RE.match(entry.name) and entry.stat().st_mtime < time.time() - _STALE_TEMP_S:
                        self._remove_stale_temp(Path(entry.path))
            for name in sorted(names):
                if len(taken) >= limit:
                    break
                journal = self._take(self._directory / name)
                if journal is not None:
                    taken.append(journal)
        except Exception as exc:
            self.counters["journal_errors"] += 1
            self._log.log(logging.WARNING, "take", "Prefactor run journal: scan for abandoned runs failed (%r)", exc)
        return taken

    def _take(self, path: Path) -> AbandonedJournal | None:
        fd = lock_existing(path)
        if fd is None:
            return None  # gone, alive, or not ours to read
        keep = False
        try:
            parsed = parse(fd, self._max_read_bytes)
            if parsed.version is not None and parsed.version != FORMAT_VERSION:
                self.counters["journals_unknown_version"] += 1
                return None  # written by another version of this package: it takes it
            malformed = parsed.malformed + parsed.torn + (parsed.version is None)
            self.counters["journal_lines_malformed"] += malformed
            if parsed.truncated:
                self.counters["journals_truncated"] += 1
                logger.warning(
                    "Prefactor run journal: %s is longer than %d bytes; runs past that point stay active",
                    path.name,
                    self._max_read_bytes,
                )
            if not parsed.runs:
                with contextlib.suppress(OSError):
                    os.unlink(path)
                self.counters["journals_removed_empty"] += 1
                return None
            spans_of: dict[str, list[tuple[str, int]]] = {}
            for span_id, (instance_id, start_ns) in parsed.spans.items():
                spans_of.setdefault(instance_id, []).append((span_id, start_ns))
            runs = [
                AbandonedRun(instance_id, ns, tuple(spans_of.get(instance_id, ())))
                for instance_id, ns in parsed.runs.items()
            ]
            journal = AbandonedJournal(path, runs, malformed, parsed.truncated, fd, os.getpid())
            with self._lock:
                self._taken[fd] = journal
            keep = True
            self.counters["journals_taken"] += 1
            self.counters["abandoned_runs_taken"] += len(runs)
            logger.info(
                "Prefactor run journal: %d run(s) left open by an ended process (%s)%s",
                len(runs),
                path.name,
                f", {malformed} malformed line(s) skipped" if malformed else "",
            )
            return journal
        finally:
            if not keep:
                os.close(fd)

    def _remove_stale_temp(self, path: Path) -> None:
        """A temporary journal whose lock can be taken belongs to a process that died while creating it."""
        fd = lock_existing(path)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(path)
            os.close(fd)

    def discard(self, abandoned: AbandonedJournal) -> None:
        """Delete a taken journal: its runs' finishes are durable now (delivered or in the spool)."""
        self._end_take(abandoned, delete=True)

    def release(self, abandoned: AbandonedJournal) -> None:
        """Give a taken journal back untouched (its finishes could not be made durable): a later take retries."""
        self._end_take(abandoned, delete=False)

    def _end_take(self, abandoned: AbandonedJournal, *, delete: bool) -> None:
        if abandoned._fd is None or abandoned._owner_pid != os.getpid():
            return  # already ended, or taken by the parent before a fork: the parent's to end
        try:
            with self._lock:
                if delete:
                    with contextlib.suppress(OSError):
                        os.unlink(abandoned.path)  # we hold its lock, so the path is still the file we read
                    self.counters["journals_discarded"] += 1
                self._release_locked(abandoned)
        except Exception:
            self.counters["journal_errors"] += 1
            logger.warning("Prefactor run journal: ending a take failed", exc_info=True)

    def release_all(self) -> None:
        """At shutdown: give back every journal taken and not yet discarded or released."""
        with self._lock:
            for journal in list(self._taken.values()):
                self._release_locked(journal)

    def _release_locked(self, abandoned: AbandonedJournal) -> None:
        fd = abandoned._fd
        if fd is None:
            return
        abandoned._fd = None
        self._taken.pop(fd, None)
        with contextlib.suppress(OSError):
            os.close(fd)

    def reset_after_fork(self) -> None:
        """In a forked child: forget the parent's taken journals without releasing their locks. Idempotent.

        Closing our copy of a descriptor leaves the parent's lock in place (it belongs to the shared open file
        description); flock(LOCK_UN) would release it for the parent too."""
        if self._pid == os.getpid():
            return
        self._lock = threading.Lock()  # the parent's may have been held by a thread that does not exist here
        for fd, journal in self._taken.items():
            with contextlib.suppress(OSError):
                os.close(fd)
            journal._fd = None
        self._taken.clear()
        self._pid = os.getpid()
