"""A journal of this process's open agent runs, so that a later process finishes the runs of one that died.

A run (AgentInstance) is started when the first span of its trace is delivered and finished when the trace is
over. A process killed in between (SIGKILL, OOM, a pool worker terminated) would leave it `active` forever; its
journal on disk says which runs were open and when each was last active, and a later process sharing the spool
directory takes the journal over and finishes those runs.

Files: one journal per process, `runs-<pid>-<8 hex>.journal` in the spool directory (the spool's file pattern
never matches it), mode 0600, opened with O_NOFOLLOW. It is created lazily, when the first run opens, under a
temporary name (`.runs-....journal.tmp`), locked and given its header before it is renamed into place, so a
taker never sees a journal that is not yet owned. The pid in the name is informational only.

Format (journal_file.py, which also holds the parser and the file operations): a header line, then one
`<instance id> <ns>` (open, last active at <ns>) or `<instance id> -` (closed) line per change. A reader keeps
the largest time per run; a `-` line closes the run and a later time opens it again. Live spans (created `active`
in Prefactor while they run) are journaled with their run, `<span id> <start ns> <instance id>`, and closed with
`<span id> -` once their finish is delivered or handed to the spool: the taker finishes them `failed` before it
finishes their run, so a killed process leaves no span active in a finished run. At most MAX_LIVE_SPANS are
journaled at once (beyond that a span is counted, `live_spans_not_journaled`, and stays active if the process is
killed). A line that does not parse
is skipped and counted; a last line without its newline (a write cut short) is ignored. Each `record()` call
is one `write()` (O_APPEND). When closed entries dominate (more than 4 lines per open run, and at least 4096
lines), the journal is rewritten with only the open runs: temporary file, fsync, lock, rename over.

Ownership: the owner holds an exclusive `fcntl.flock` on its journal for its lifetime; the kernel drops the lock
when the process dies however it dies, and a later process takes the journal over: `RunJournal` holds a
`JournalAdoption` (journal_adoption.py) that does the taking, and passes `take_abandoned`, `discard` and `release`
on to it. At a
clean shutdown, `close()` deletes the journal when no run is open; runs still open keep it (locked until the
process exits, so a live sibling never finishes a run this process may still finish).

Durability: a process kill keeps the page cache, so a written line survives SIGKILL and OOM without fsync. A
record that opens a run is fsynced (`sync_opens`, default on; the journal's creation fsyncs the directory too),
so an OS crash or power loss cannot lose an open run: it loses at most later activity times (the run is then
finished with an earlier time) and closes (the run is finished a second time, harmlessly). With `sync_opens`
off, an OS crash loses what the kernel had not written back (typically the last 5-30 s). Compaction always
fsyncs before its rename, so a crash cannot replace a good journal with an empty one. (Where the spool directory
is on a tmpfs /tmp, an OS crash empties it whatever is fsynced.)

Fork: flock locks belong to the open file description, which a child shares. After a fork the child closes its
copies of the descriptors (never LOCK_UN: that would release the parent's lock) and starts with an empty open
set; its own journal (new name, new lock) is created when its first run opens. This runs from an
`os.register_at_fork` hook, and again (idempotently) if `record()` or the owner's `reset_after_fork()` notices a
new pid first.

Platforms without fcntl (Windows): the journal is disabled and says so once (INFO); runs of a killed process
stay active there. A directory that cannot be written disables the journal with one warning. No method raises.

Threads: `record()` is called by the exporter's sending thread; `take_abandoned()`, `discard()`, `release()`
by whichever thread replays the spool; `close()` by the thread shutting down; `reset_after_fork()` by the child's
fork hook. `self._lock` guards the descriptor, path, open set and line count; it is a leaf lock (nothing is
called under it that takes another lock: the adoption's `reset_after_fork` takes none) and is replaced, not
acquired, after a fork. The set of taken journals is the adoption's, under the adoption's own leaf lock
(journal_adoption.py), which is never taken while `self._lock` is held. Parsing a taken journal happens outside
both."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import threading
import weakref
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

from prefactor_otel._logging import RateLimitedLog, logger
from prefactor_otel.durability.journal_adoption import TAKE_LIMIT, AbandonedJournal, JournalAdoption
from prefactor_otel.durability.journal_file import HEADER, MAX_NS, OPEN_FLAGS, fsync_directory, write_all

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

# Instance ids are PFIDs (32 base32 characters); anything id-like without spaces or line breaks is accepted.
_ID_RE = re.compile(r"[0-9A-Za-z_.:-]{1,128}")
_COMPACT_MIN_LINES = 4096
_COMPACT_LINES_PER_OPEN_RUN = 4
_DEFAULT_MAX_READ_BYTES = 16 * 1024 * 1024


# Live spans journaled at once, over all runs: each line is ~70 bytes, so the journal stays under a megabyte.
MAX_LIVE_SPANS = 10_000


class RunJournal:
    """The journal of this process's open runs, in `directory` (the spool directory)."""

    def __init__(
        self,
        directory: Path,
        *,
        sync_opens: bool = True,
        max_read_bytes: int = _DEFAULT_MAX_READ_BYTES,
    ) -> None:
        self.directory = Path(directory)
        self._sync_opens = sync_opens
        self._max_read_bytes = max(1, max_read_bytes)
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._fd: int | None = None
        self._path: Path | None = None
        self._open: dict[str, int] = {}  # instance id -> last activity (ns): this process's open runs only
        self._live: dict[str, tuple[str, int]] = {}  # live span id -> (instance id, start ns), of open runs
        self._live_of_run: dict[str, dict[str, None]] = {}  # instance id -> its live span ids (closed with it)
        self._lines = 0  # lines in the current file, header included
        self._rewrite_needed = False  # a write failed part-way: the file no longer matches `_open`
        self.counters: Counter[str] = Counter()
        self._log = RateLimitedLog()
        self._adoption = JournalAdoption(
            self.directory,
            max_read_bytes=self._max_read_bytes,
            own_journal=self._own_journal_name,
            counters=self.counters,
        )
        self.enabled = self._prepare()
        if self.enabled and hasattr(os, "register_at_fork"):
            ref = weakref.ref(self)

            def _after_fork_in_child() -> None:
                journal = ref()
                if journal is not None:
                    journal.reset_after_fork()

            os.register_at_fork(after_in_child=_after_fork_in_child)

    def _prepare(self) -> bool:
        if fcntl is None:
            logger.info(
                "Prefactor run journal disabled: no fcntl on this platform; runs of a killed process stay active"
            )
            return False
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            probe = self.directory / f".probe-journal-{os.getpid()}-{secrets.token_hex(4)}"
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | OPEN_FLAGS, 0o600)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            self._disable(exc)
            return False
        return True

    def _disable(self, exc: OSError) -> None:
        logger.warning(
            "Prefactor run journal disabled: cannot write in %s (%s); runs of a killed process will stay active",
            self.directory,
            type(exc).__name__,
        )
        self.counters["journal_disabled"] += 1

    # ------------------------------------------------------------------ journals of ended processes

    def take_abandoned(self, limit: int = TAKE_LIMIT) -> list[AbandonedJournal]:
        """Take (lock) up to `limit` journals of processes that ended and still list open runs. The caller makes
        their finishes durable, then calls `discard()` (or `release()` to leave a journal for later). Journals
        with no open run are deleted here. Never raises."""
        if not self.enabled or limit <= 0:
            return []
        return self._adoption.take(limit)

    def discard(self, abandoned: AbandonedJournal) -> None:
        """Delete a taken journal: its runs' finishes are durable now (delivered or in the spool)."""
        self._adoption.discard(abandoned)

    def release(self, abandoned: AbandonedJournal) -> None:
        """Give a taken journal back untouched (its finishes could not be made durable): a later take retries."""
        self._adoption.release(abandoned)

    def _own_journal_name(self) -> str | None:
        """This process's journal's name, never taken (the adoption asks before it scans)."""
        with self._lock:
            if self._pid != os.getpid():
                self._forget_parent_locked()
            return self._path.name if self._path is not None else None

    # ------------------------------------------------------------------ this process's runs

    @property
    def path(self) -> Path | None:
        """This process's journal file, or None before the first run opens (or after `close()`)."""
        return self._path

    @property
    def open_runs(self) -> int:
        return len(self._open)

    def record(
        self, updates: Mapping[str, int | None], live_spans: Mapping[str, tuple[str, int] | None] | None = None
    ) -> None:
        """Note runs' latest activity (ns since epoch: the run is open) or their end (None: finished or handed
        off for finishing), and live spans: (instance id, start ns) once their create may reach the server, None
        once their finish is delivered or handed off. Updates that change nothing write nothing. Never raises."""
        if not self.enabled or not (updates or live_spans):
            return
        try:
            with self._lock:
                if self._pid != os.getpid():
                    self._forget_parent_locked()
                self._record_locked(updates, live_spans or {})
        except Exception as exc:  # the journal must never break an export
            self.counters["journal_errors"] += 1
            if self._fd is not None:
                self._rewrite_needed = True  # memory may be ahead of the file: write it whole next time
            self._log.log(logging.WARNING, "record", "Prefactor run journal: record failed (%r)", exc)

    def _record_locked(
        self, updates: Mapping[str, int | None], live_spans: Mapping[str, tuple[str, int] | None]
    ) -> None:
        open_runs = self._open
        lines: list[str] = []
        opened = False
        for instance_id, activity_ns in updates.items():
            if type(instance_id) is not str:
                self._reject(instance_id, "instance id is not a string")
                continue
            if activity_ns is None:
                if instance_id in open_runs:
                    del open_runs[instance_id]
                    lines.append(f"{instance_id} -\n")
                    for span_id in self._live_of_run.pop(instance_id, ()):
                        del self._live[span_id]  # closed with the run, by the reader too
                continue
            if type(activity_ns) is not int or not 0 <= activity_ns <= MAX_NS:
                self._reject(instance_id, "activity time is not an int of ns since epoch")
                continue
            known = open_runs.get(instance_id)
            if known is None:
                if _ID_RE.fullmatch(instance_id) is None:
                    self._reject(instance_id, "instance id is not id-like")
                    continue
                opened = True
            elif activity_ns <= known:
                continue
            open_runs[instance_id] = activity_ns
            lines.append(f"{instance_id} {activity_ns}\n")
        opened = self._record_live_locked(live_spans, lines) or opened
        if not lines:
            return
        if self._fd is None and not open_runs:
            self._rewrite_needed = False  # the runs that never reached a file have all ended: nothing to write
            return
        if self._fd is None or self._rewrite_needed:
            self._write_whole_locked()  # the whole open set, these updates included
            return
        data = "".join(lines).encode("ascii")
        try:
            write_all(self._fd, data)
            if opened and self._sync_opens:
                os.fsync(self._fd)
        except OSError as exc:
            self._write_failed(exc)
            return
        self._lines += len(lines)
        if self._lines > max(_COMPACT_MIN_LINES, _COMPACT_LINES_PER_OPEN_RUN * (len(open_runs) + len(self._live))):
            self._write_whole_locked()

    def _record_live_locked(self, live_spans: Mapping[str, tuple[str, int] | None], lines: list[str]) -> bool:
        """Live span lines (after the run lines of the same update, so a span's run is open before it). True if
        a span was opened: it is fsynced like a run, or an OS crash could leave it active."""
        opened = False
        for span_id, span in live_spans.items():
            if span is None:
                closed = self._live.pop(span_id, None)
                if closed is not None:
                    self._live_of_run[closed[0]].pop(span_id, None)
                    lines.append(f"{span_id} -\n")
                continue
            if span_id in self._live:
                continue
            instance_id, start_ns = span
            if instance_id not in self._open:
                continue  # not a run this process must finish (its parent's, before a fork): not ours either
            if type(start_ns) is not int or not 0 <= start_ns <= MAX_NS or _ID_RE.fullmatch(span_id) is None:
                self._reject(span_id, "live span id or start time is malformed")
                continue
            if len(self._live) >= MAX_LIVE_SPANS:
                self.counters["live_spans_not_journaled"] += 1
                continue
            self._live[span_id] = (instance_id, start_ns)
            self._live_of_run.setdefault(instance_id, {})[span_id] = None
            lines.append(f"{span_id} {start_ns} {instance_id}\n")
            opened = True
        return opened

    def _reject(self, instance_id: object, reason: str) -> None:
        self.counters["records_rejected"] += 1
        self._log.log(
            logging.WARNING,
            "reject",
            "Prefactor run journal: update for %.80r not recorded (%s); %d rejected so far",
            instance_id,
            reason,
            self.counters["records_rejected"],
        )

    def _write_failed(self, exc: OSError) -> None:
        self._rewrite_needed = True  # the next record rewrites the file from memory
        self.counters["journal_write_errors"] += 1
        self._log.log(
            logging.WARNING,
            "write",
            "Prefactor run journal: write failed (%s); open runs are kept in memory and written again next time",
            type(exc).__name__,
        )

    def _write_whole_locked(self) -> None:
        """Write the open set as this process's journal: create it (the first open, or after creation failed),
        or replace it (compaction, or repair after a failed write). A failure is counted and retried next time."""
        runs = "".join(f"{i} {ns}\n" for i, ns in self._open.items())
        spans = "".join(f"{s} {ns} {i}\n" for s, (i, ns) in self._live.items())
        content = HEADER + (runs + spans).encode("ascii")
        creating = self._fd is None
        # A new name is unique: no live process shares the pid, and 32 random bits keep a dead one's file apart.
        path = self.directory / f"runs-{os.getpid()}-{secrets.token_hex(4)}.journal" if creating else self._path
        assert path is not None
        try:
            fd = self._new_locked_file(path, content, sync=True)
            if creating and self._sync_opens:
                fsync_directory(self.directory)  # the new name survives an OS crash too
        except OSError as exc:
            self._write_failed(exc)
            return
        old, self._fd, self._path = self._fd, fd, path
        if old is not None:
            os.close(old)  # the old file is unlinked by the rename; closing drops its lock
            self.counters["journal_rewrites"] += 1
        self._lines = 1 + len(self._open) + len(self._live)
        self._rewrite_needed = False

    def _new_locked_file(self, path: Path, content: bytes, *, sync: bool) -> int:
        """Write `content` to a temporary file, lock it, then rename it to `path` (so it is never unowned)."""
        temp = path.with_name(f".{path.name}.tmp")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | OPEN_FLAGS, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            write_all(fd, content)
            if sync:
                os.fsync(fd)
            os.replace(temp, path)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        return fd

    def close(self) -> int:
        """At shutdown: delete the journal if no run is open. Runs still open (a request still in flight on
        another thread, a finish that could not be handed off) stay in it, locked until this process exits,
        then a later process takes them; records made after close() keep going into it. Journals taken and not
        yet discarded are released. Returns the number of runs still open."""
        if not self.enabled:
            return 0
        try:
            with self._lock:
                if self._pid != os.getpid():
                    self._forget_parent_locked()
            self._adoption.release_all()  # under its own lock, not ours: both stay leaf locks
            with self._lock:
                left = len(self._open)
                if left:
                    if self._rewrite_needed or self._fd is None:
                        self._write_whole_locked()
                    logger.info("Prefactor run journal: %d run(s) still open at shutdown, in %s", left, self._path)
                elif self._fd is not None and self._path is not None:
                    with contextlib.suppress(OSError):
                        os.unlink(self._path)
                    os.close(self._fd)
                    self._fd, self._path, self._lines = None, None, 0  # a later open starts a new journal
                return left
        except Exception as exc:
            self.counters["journal_errors"] += 1
            logger.warning("Prefactor run journal: close failed (%r)", exc)
            return 0

    def reset_after_fork(self) -> None:
        """In a forked child: forget the parent's journal without releasing its lock. Idempotent."""
        if self._pid == os.getpid():
            return
        self._lock = threading.Lock()  # the parent's may have been held by a thread that does not exist here
        with self._lock:
            self._forget_parent_locked()

    def _forget_parent_locked(self) -> None:
        # Closing our copy of a descriptor leaves the parent's lock in place (it belongs to the shared open
        # file description); flock(LOCK_UN) would release it for the parent too.
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._adoption.reset_after_fork()  # the journals the parent took: likewise (takes no lock)
        self._fd, self._path, self._lines = None, None, 0
        self._open.clear()
        self._live.clear()
        self._live_of_run.clear()
        self._rewrite_needed = False
        self._pid = os.getpid()
