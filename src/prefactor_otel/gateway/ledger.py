"""Which ingress-log segments may be deleted, and which traces a replay must skip: the `SegmentLedger`.

A segment may be retired (deleted) once every trace with spans in it is done -- finished by its pipeline, with
everything of it delivered or in that pipeline's spool -- and no record of it still waits for the worker. Until
then a restart replays it. A trace is keyed by (pipeline key, trace id): `TraceKey`.

Why a trace's first segment is enough to give a replayed run the same id: a run's id derives from its trace's first
span seen (ids.instance_pfid), and the segment holding that span is kept until the trace is done, so a replay sees
it first again. A trace already done may still have spans in a segment kept for another trace (its late spans, or
its spans beside a slower trace's): replaying those would open a second run of it. So done traces with spans in a
live segment are written to the **finished-traces file** (`finished-traces.json` in the gateway's directory,
replaced atomically and fsynced) before any segment is deleted; a replay skips their records, as the pipeline
dropped them the first time (a finished run accepts no spans). An entry leaves the file once no live segment holds
its trace.

Threads and locks: the gateway's worker thread owns the ledger (`taken`, `mark_done`, `retire`), except `hold`,
called by a request thread under the gateway's order lock, and `held`, read by any thread; `_lock` guards the
per-segment counts of records not yet taken (`_waiting`).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterable
from pathlib import Path

from prefactor_otel._logging import logger
from prefactor_otel.durability.ingress_log import IngressLog

TraceKey = tuple[str, int]
FINISHED_FILE = "finished-traces.json"


class SegmentLedger:
    def __init__(self, directory: Path) -> None:
        self._path = directory / FINISHED_FILE
        self._lock = threading.Lock()
        self._waiting: dict[int, int] = {}  # segment -> records written and not yet taken by the worker
        self._segments: dict[int, set[TraceKey]] = {}  # live segment -> traces with spans in it
        self._traces: dict[TraceKey, set[int]] = {}  # trace -> live segments holding its spans
        self._open: dict[str, set[int]] = {}  # pipeline key -> traces not yet done
        self._done: set[TraceKey] = set()
        self.finished_at_start: frozenset[TraceKey] = frozenset()

    # ------------------------------------------------------------------ the finished-traces file

    def load(self) -> frozenset[TraceKey]:
        """The traces an earlier gateway finished whose spans are still in its segments: a replay skips them."""
        try:
            data = json.loads(self._path.read_text(encoding="utf-8"))
            found = frozenset((str(key), int(trace, 16)) for key, trace in data["finished"])
        except FileNotFoundError:
            found = frozenset()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # Without it a replay may open a second run for a trace's late spans; everything else is re-sent under
            # the same idempotency keys. Said, not fatal.
            logger.error(
                "Prefactor gateway: %s is unreadable (%s); replaying without it", self._path, type(exc).__name__
            )
            found = frozenset()
        self.finished_at_start = found
        return found

    def _write_finished(self, keep: Iterable[TraceKey]) -> None:
        body = json.dumps({"finished": sorted([key, f"{trace:032x}"] for key, trace in keep)}).encode()
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
        traces = self._segments.setdefault(segment, set())
        open_here = self._open.setdefault(key, set())
        for trace_id in trace_ids:
            trace = (key, trace_id)
            traces.add(trace)
            self._traces.setdefault(trace, set()).add(segment)
            self._done.discard(trace)
            open_here.add(trace_id)

    def skipped(self, segment: int, key: str, trace_id: int) -> None:
        """A replayed record of a trace finished before: it stays done, and in the file while the segment lives."""
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
            if open_here is not None:
                open_here.discard(trace_id)
            self._done.add((key, trace_id))

    # ------------------------------------------------------------------ retiring

    def retirable(self, current: int | None) -> list[int]:
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
        """Delete these segments (all retirable), after writing the done traces that other live segments still
        hold to the finished-traces file. Returns how many were deleted."""
        if not segments:
            return 0
        going = set(segments)
        keep = [
            trace
            for trace in self._done
            if self._traces.get(trace, set()) - going  # still in a segment that stays
        ]
        try:
            self._write_finished(keep)
        except OSError as exc:
            logger.error("Prefactor gateway: cannot write %s (%s); ingress-log segments are kept", self._path, exc)
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

    def forget_segment_if_empty(self, segment: int) -> None:
        """A segment none of whose records named a trace (all unreadable): nothing holds it."""
        self._segments.setdefault(segment, set())

    @property
    def open_count(self) -> int:
        return sum(len(traces) for traces in self._open.values())
