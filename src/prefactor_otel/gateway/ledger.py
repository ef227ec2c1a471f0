"""Which ingress-log segments may be deleted, and which traces a replay must skip: the `SegmentLedger`.

A segment may be retired (deleted) once every trace with spans in it is done -- finished by its pipeline, with
everything of it delivered or in that pipeline's spool -- and no record of it still waits for the worker. Until
then a restart replays it. A trace is keyed by (pipeline key, trace id): `TraceKey`.

Why a trace's first segment is enough to give a replayed run the same id: a run's id derives from its trace's first
span seen (ids.instance_pfid), and the segment holding that span is kept until the trace is done, so a replay sees
it first again. But a trace already done may have spans in a live segment without its first one: spans that came
after its run was finished (the planner holds them in the trace's next run and sends it whole once quiet: a
gateway killed in that window loses them, docs/gateway.md "Late spans"), or its last spans beside a
slower trace's. Replaying those would open a second run of it. So the ledger keeps the **finished-traces file**
(`finished-traces.json` in the gateway's directory, replaced atomically and fsynced): the traces each pipeline
finished most recently, as many as its planner remembers finished runs (`MAX_FINISHED_TRACES_REMEMBERED`, the same
bound and order, so a replay drops what the live planner dropped), written whenever it changed before any segment
is deleted. A replay skips their records. A trace whose spans come after the planner forgot it starts a new run,
live as on replay.

Threads and locks: the gateway's worker thread owns the ledger (`taken`, `mark_done`, `retire`), except `hold`,
called by a request thread under the gateway's order lock, and `held`, read by any thread; `_lock` guards the
per-segment counts of records not yet taken (`_waiting`).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path

from prefactor_otel._logging import logger
from prefactor_otel.durability.ingress_log import IngressLog
from prefactor_otel.pipeline.runs import MAX_FINISHED_TRACES_REMEMBERED

TraceKey = tuple[str, int]
FINISHED_FILE = "finished-traces.json"
_PINNED = "\x00pinned"  # a pipeline key no route has: its traces are never done


class SegmentLedger:
    def __init__(self, directory: Path) -> None:
        self._path = directory / FINISHED_FILE
        self._lock = threading.Lock()
        self._waiting: dict[int, int] = {}  # segment -> records written and not yet taken by the worker
        self._segments: dict[int, set[TraceKey]] = {}  # live segment -> traces with spans in it
        self._traces: dict[TraceKey, set[int]] = {}  # trace -> live segments holding its spans
        self._open: dict[str, set[int]] = {}  # pipeline key -> traces not yet done
        self._done: set[TraceKey] = set()  # done traces with spans in a live segment
        self._recent: dict[str, OrderedDict[int, None]] = {}  # pipeline key -> traces finished, newest last
        self._recent_changed = False
        self._changed = True  # since the last `retirable`: only then is it worth computing again
        self.finished_at_start: frozenset[TraceKey] = frozenset()

    # ------------------------------------------------------------------ the finished-traces file

    def load(self) -> frozenset[TraceKey]:
        """The traces an earlier gateway finished most recently: a replay skips their records."""
        try:
            data = json.loads(self._path.read_text(encoding="utf-8"))
            found = [(str(key), int(trace, 16)) for key, trace in data["finished"]]
        except FileNotFoundError:
            found = []
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # Without it a replay may open a second run for a finished trace's late spans; everything else is
            # re-sent under the same idempotency keys. Said, not fatal.
            why = type(exc).__name__
            logger.error("Prefactor gateway: %s is unreadable (%s); replaying without it", self._path, why)
            found = []
        for key, trace_id in found:
            self._remember(key, trace_id)
        self._recent_changed = False
        self.finished_at_start = frozenset(found)
        return self.finished_at_start

    def _remember(self, key: str, trace_id: int) -> None:
        recent = self._recent.setdefault(key, OrderedDict())
        recent[trace_id] = None
        recent.move_to_end(trace_id)
        while len(recent) > MAX_FINISHED_TRACES_REMEMBERED:
            recent.popitem(last=False)
        self._recent_changed = True

    def _write_finished(self) -> None:
        entries = [[key, f"{trace:032x}"] for key, recent in self._recent.items() for trace in recent]
        body = json.dumps({"finished": entries}, separators=(",", ":")).encode()
        tmp = self._path.with_name(f".tmp-{self._path.name}")
        with open(tmp, "wb") as fh:
            fh.write(body)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self._path)
        fd = os.open(self._path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        self._recent_changed = False

    # ------------------------------------------------------------------ records in and taken

    def hold(self, segment: int) -> None:
        """A record written to `segment` and queued for the worker (a request thread, under the order lock)."""
        with self._lock:
            self._waiting[segment] = self._waiting.get(segment, 0) + 1

    def held(self) -> int:
        with self._lock:
            return sum(self._waiting.values())

    def taken(self, segment: int, key: str, trace_ids: Iterable[int], *, held: bool = True) -> None:
        """The worker gave a record's spans to its pipeline (`held`: it was counted by `hold`; a replayed one was
        not): its traces are open again until the pipeline is done with them."""
        if held:
            with self._lock:
                left = self._waiting.get(segment, 0) - 1
                if left > 0:
                    self._waiting[segment] = left
                else:
                    self._waiting.pop(segment, None)
        self._changed = True
        traces = self._segments.setdefault(segment, set())
        open_here = self._open.setdefault(key, set())
        for trace_id in trace_ids:
            trace = (key, trace_id)
            traces.add(trace)
            self._traces.setdefault(trace, set()).add(segment)
            self._done.discard(trace)
            open_here.add(trace_id)

    def skipped(self, segment: int, key: str, trace_id: int) -> None:
        """A replayed record of a trace finished before (in the finished-traces file): skipped, the trace stays done."""
        trace = (key, trace_id)
        self._segments.setdefault(segment, set()).add(trace)
        self._traces.setdefault(trace, set()).add(segment)
        if trace_id not in self._open.get(key, ()):
            self._done.add(trace)

    def open_traces(self, key: str) -> set[int]:
        return self._open.get(key, set())

    def mark_done(self, key: str, trace_ids: Iterable[int]) -> None:
        open_here = self._open.get(key)
        for trace_id in trace_ids:
            self._changed = True
            if open_here is not None:
                open_here.discard(trace_id)
            self._done.add((key, trace_id))
            self._remember(key, trace_id)

    # ------------------------------------------------------------------ retiring

    def touch(self) -> None:
        """Something `retirable` depends on changed outside the ledger (a segment was sealed)."""
        self._changed = True

    def retirable(self, current: int | None) -> list[int]:
        """The segments that may go (not `current`, the one being written). Computed again only after a change
        (records taken, traces done, a segment sealed, a retirement that failed)."""
        if not self._changed:
            return []
        self._changed = False
        with self._lock:
            waiting = set(self._waiting)
        return sorted(
            segment
            for segment, traces in self._segments.items()
            if segment != current and segment not in waiting and traces <= self._done
        )

    def all_done(self, segment: int) -> bool:
        """Every trace of `segment` is done and nothing of it waits (the current segment may then be sealed)."""
        with self._lock:
            if segment in self._waiting:
                return False
        traces = self._segments.get(segment)
        return traces is None or traces <= self._done

    def retire(self, log: IngressLog, segments: list[int]) -> int:
        """Delete these segments (all retirable), once the finished-traces file is up to date. Returns how many
        were deleted."""
        if not segments:
            return 0
        if self._recent_changed:
            try:
                self._write_finished()
            except OSError as exc:
                logger.error("Prefactor gateway: cannot write %s (%s); ingress-log segments are kept", self._path, exc)
                self._changed = True  # tried again at the next round
                return 0
        retired = 0
        for segment in segments:
            for trace in self._segments.pop(segment, set()):
                held_in = self._traces.get(trace)
                if held_in is not None:
                    held_in.discard(segment)
                    if not held_in:
                        del self._traces[trace]
                        self._done.discard(trace)
            # A segment found at start and never replayed into the ledger (all its records unreadable) goes too.
            with contextlib.suppress(OSError):
                if log.retire(segment):
                    retired += 1
        return retired

    def known(self, segment: int) -> None:
        """A segment replayed whole: one none of whose records named a trace (all unreadable) holds nothing."""
        self._segments.setdefault(segment, set())
        self._changed = True

    def pin(self, segment: int) -> None:
        """Keep `segment` for good in this process (records for a route and agent this gateway does not have)."""
        self.taken(segment, _PINNED, [0], held=False)

    @property
    def open_count(self) -> int:
        return sum(len(traces) for traces in self._open.values())
