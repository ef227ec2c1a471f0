"""Which ingress-log segments may be deleted, and what a replay must know of finished traces: the `SegmentLedger`.

A segment may be retired (deleted) once every trace with spans in it is done -- finished by its pipeline, with
everything of it delivered or in that pipeline's spool -- and no record of it still waits for the worker. Until
then a restart replays it. A trace is keyed by (pipeline key, trace id): `TraceKey`.

Why a trace's first segment is enough to give a replayed run the same id: a run's id derives from its trace's first
span seen (ids.instance_pfid), and the segment holding that span is kept until the trace is done, so a replay sees
it first again. But a trace already done may have spans in a live segment without its first one: its last spans
beside a slower trace's, or spans that came after its run was finished (*late*: live, they open the trace's next run,
held until quiet, docs/gateway.md "Late spans"). Replayed alone they would open a second run of it under the first
one's name. So the ledger keeps the **finished-traces file** (`finished-traces.json` in the gateway's directory,
replaced atomically and fsynced):
- `finished`: the traces each pipeline finished most recently, as many as its planner remembers finished runs
  (`MAX_FINISHED_TRACES_REMEMBERED`, the same bound and order). A replay skips their records...
- `runs`: ...except for a finished trace a record came for after it was done (a *late* trace), while such a record
  may be replayed: the file carries its `CarriedTrace` -- how many times a run of it was opened again and the span
  ids its runs created (the planner's `finished_trace_state`) -- and the replay gives the planner that state first
  (`restore_finished_trace`), then every record of the trace: the spans its runs created are retried copies
  (ignored), the others open its next run with the right number, held and sent whole once quiet, as live.
  Bounded: at most `MAX_FINISHED_SPANS_REMEMBERED` ids per pipeline (the planner's own bound; past it the oldest
  late traces are written without ids, and a replay skips them as before). A file without `runs` (the previous
  format) loads: its traces are skipped, as that format's gateway did.

When the file is written, so that a record is never acknowledged where a replay would skip it:
- before any segment is deleted, when something in it changed (as before);
- by a request thread, before it acknowledges a record holding spans of a finished trace whose state the file does
  not carry yet (`late_traces`, then `cover_late`): rare, so one fsync on that request is cheap. A trace is marked
  done (`mark_done`, added to `finished`) under the gateway's order lock and only while no record of it waits in the
  queue (gateway/service.py `_retire`), so a record is either taken before its trace is listed or checked here;
- by the worker, at once, when a late trace in the file is done again (its state moved on: `flush`). A gateway
  killed between that run's finish and this write replays with the older state: the late spans of both runs go to
  the earlier of the two (docs/gateway.md, "Known limits").
A late trace's state leaves the file once none of its records is in a live segment or waits (`prune_late`, under
the order lock too).

Threads and locks: the gateway's worker thread owns the segment bookkeeping (`taken`, `mark_done`, `retire`,
`prune_late`, `flush`); a request thread calls `hold` and `late_traces` / `cover_late` under the gateway's order
lock; `held` is read by any thread. `_lock` guards the per-segment counts of records not yet taken (`_waiting`) and
what the file lists (`_recent`, `_late`, `_late_waiting`); `_file_lock` makes one writer of the file at a time (the
worker or a request thread) and is taken before `_lock`, never inside it.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import threading
from collections import Counter, OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefactor_otel._logging import logger
from prefactor_otel.durability.ingress_log import IngressLog
from prefactor_otel.pipeline.runs import MAX_FINISHED_SPANS_REMEMBERED, MAX_FINISHED_TRACES_REMEMBERED

TraceKey = tuple[str, int]
# (times a run of the trace was opened again, the span ids its runs created): Planner.finished_trace_state
TraceState = tuple[int, list[int]]
FINISHED_FILE = "finished-traces.json"
_PINNED = "\x00pinned"  # a pipeline key no route has: its traces are never done
_ID_BYTES = 8


@dataclass(frozen=True, slots=True)
class CarriedTrace:
    """A finished trace's state as the file carries it: the span ids packed (8 bytes each, big-endian, base64), so a
    late trace of 10,000 spans costs ~107 KB in memory and in the file, not a list of ints."""

    runs_opened: int
    span_count: int
    encoded: str

    @classmethod
    def of(cls, state: TraceState) -> CarriedTrace:
        runs_opened, span_ids = state
        packed = b"".join(span_id.to_bytes(_ID_BYTES, "big") for span_id in span_ids)
        return cls(runs_opened, len(span_ids), base64.b64encode(packed).decode("ascii"))

    @classmethod
    def parse(cls, runs_opened: object, encoded: object) -> CarriedTrace:
        """From the file: ValueError unless a count >= 0 and whole 8-byte ids."""
        if not isinstance(runs_opened, int) or isinstance(runs_opened, bool) or runs_opened < 0:
            raise ValueError("runs opened")
        if not isinstance(encoded, str):
            raise ValueError("span ids")
        try:
            packed = base64.b64decode(encoded, validate=True)
        except binascii.Error as exc:
            raise ValueError("span ids") from exc
        if len(packed) % _ID_BYTES:
            raise ValueError("span ids")
        return cls(runs_opened, len(packed) // _ID_BYTES, encoded)

    def span_ids(self) -> list[int]:
        packed = base64.b64decode(self.encoded)
        return [int.from_bytes(packed[i : i + _ID_BYTES], "big") for i in range(0, len(packed), _ID_BYTES)]

    @property
    def state(self) -> TraceState:
        return self.runs_opened, self.span_ids()


class SegmentLedger:
    def __init__(self, directory: Path) -> None:
        self._path = directory / FINISHED_FILE
        self._lock = threading.Lock()
        self._file_lock = threading.Lock()
        self._waiting: dict[int, int] = {}  # segment -> records written and not yet taken by the worker
        self._segments: dict[int, set[TraceKey]] = {}  # live segment -> traces with spans in it
        self._traces: dict[TraceKey, set[int]] = {}  # trace -> live segments holding its spans
        self._open: dict[str, set[int]] = {}  # pipeline key -> traces not yet done
        self._done: set[TraceKey] = set()  # done traces with spans in a live segment
        self._recent: dict[str, OrderedDict[int, None]] = {}  # pipeline key -> traces finished, newest last
        # Late traces (a record came after they were done) whose records may be replayed -> their state in the file
        # (None: no ids known, listed in `finished` only), in the order they became late; and how many of their late
        # records were acknowledged and not yet taken by the worker.
        self._late: dict[TraceKey, CarriedTrace | None] = {}
        self._late_waiting: Counter[TraceKey] = Counter()
        self._file_dirty = False  # the file's content changed: written before the next segment is deleted
        self._file_urgent = False  # a late trace's state in it moved on: written at the worker's next round
        self._changed = True  # since the last `retirable`: only then is it worth computing again
        self.finished_at_start: frozenset[TraceKey] = frozenset()
        self.states_at_start: dict[TraceKey, TraceState] = {}

    # ------------------------------------------------------------------ the finished-traces file

    def load(self) -> frozenset[TraceKey]:
        """The traces an earlier gateway finished most recently (a replay skips their records), and in
        `states_at_start` the state of those it carried (a replay gives it to the planner, then their records)."""
        carried: dict[TraceKey, CarriedTrace] = {}
        try:
            data = json.loads(self._path.read_text(encoding="utf-8"))
            found = [(str(key), int(trace, 16)) for key, trace in data["finished"]]
        except FileNotFoundError:
            found, data = [], {}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # Without it a replay may open a second run for a finished trace's late spans; everything else is
            # re-sent under the same idempotency keys. Said, not fatal.
            why = type(exc).__name__
            logger.error("Prefactor gateway: %s is unreadable (%s); replaying without it", self._path, why)
            found, data = [], {}
        try:
            for key, trace, runs_opened, encoded in data.get("runs", ()):
                carried[(str(key), int(trace, 16))] = CarriedTrace.parse(runs_opened, encoded)
        except (ValueError, TypeError, AttributeError) as exc:
            # The previous behaviour for these traces: their records skipped (their late spans lost). Said.
            why = type(exc).__name__
            logger.error("Prefactor gateway: the late traces in %s are unreadable (%s); skipping them", self._path, why)
            carried = {}
        for key, trace_id in found:
            self._remember(key, trace_id)
        finished = frozenset(found)
        self._late = {trace: state for trace, state in carried.items() if trace in finished}
        self._file_dirty = False
        self.finished_at_start = finished
        self.states_at_start = {trace: state.state for trace, state in self._late.items() if state is not None}
        return finished

    def _remember(self, key: str, trace_id: int) -> None:
        """Under `_lock` (or at load, alone)."""
        recent = self._recent.setdefault(key, OrderedDict())
        recent[trace_id] = None
        recent.move_to_end(trace_id)
        while len(recent) > MAX_FINISHED_TRACES_REMEMBERED:
            forgotten, _ = recent.popitem(last=False)
            self._late.pop((key, forgotten), None)  # no longer listed: a replay treats its records as new
        self._file_dirty = True

    def _write_finished(self) -> None:
        """Under `_file_lock`. OSError if it cannot be written (the file on disk is then the previous one)."""
        with self._lock:
            entries = [[key, f"{trace:032x}"] for key, recent in self._recent.items() for trace in recent]
            late = list(self._late.items())
            urgent = self._file_urgent
            self._file_dirty = self._file_urgent = False  # what changes from here on is written next time
        runs: list[list[Any]] = []
        ids_left: dict[str, int] = {}
        skipped = 0
        for (key, trace_id), state in reversed(late):  # the newest late traces first, within the bound
            if state is None:
                continue
            left = ids_left.get(key, MAX_FINISHED_SPANS_REMEMBERED)
            if state.span_count > left:
                skipped += 1
                continue
            ids_left[key] = left - state.span_count
            runs.append([key, f"{trace_id:032x}", state.runs_opened, state.encoded])
        if skipped:
            logger.warning(
                "Prefactor gateway: %d late trace(s) written without their span ids (over %d ids): a replay skips "
                "their records",
                skipped,
                MAX_FINISHED_SPANS_REMEMBERED,
            )
        body = json.dumps({"finished": entries, "runs": runs[::-1]}, separators=(",", ":")).encode()
        tmp = self._path.with_name(f".tmp-{self._path.name}")
        try:
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
        except OSError:
            with self._lock:
                self._file_dirty = True
                self._file_urgent = self._file_urgent or urgent
            raise

    # ------------------------------------------------------------------ late traces

    def late_traces(self, key: str, trace_ids: Iterable[int]) -> tuple[list[int], list[int]]:
        """A request thread, under the gateway's order lock, before it writes a record of these traces: those already
        finished (the record is late for them), and of those the ones whose state the file does not carry yet (the
        caller asks their planner, then `cover_late`)."""
        with self._lock:
            recent = self._recent.get(key)
            if not recent:
                return [], []
            late = [trace_id for trace_id in trace_ids if trace_id in recent]
            return late, [trace_id for trace_id in late if (key, trace_id) not in self._late]

    def cover_late(self, covered: Iterable[tuple[str, Sequence[int], Mapping[int, TraceState | None]]]) -> None:
        """Under the gateway's order lock, before a request's records are written: (key, late traces, their states
        not yet carried) per record. Once this returns the file carries every one that has a state, and they are
        counted as waiting for the worker (`taken(..., late=...)`) so the file keeps them. OSError (nothing
        counted) if the file could not be written: the request must be refused."""
        covered = list(covered)
        added: list[tuple[TraceKey, CarriedTrace | None]] = []
        with self._file_lock:
            with self._lock:
                for key, _, states in covered:
                    for trace_id, state in states.items():
                        carried = CarriedTrace.of(state) if state is not None else None
                        self._late[(key, trace_id)] = carried
                        added.append(((key, trace_id), carried))
            if any(carried is not None for _, carried in added):
                try:
                    self._write_finished()
                except OSError:
                    with self._lock:
                        for trace, carried in added:
                            if trace in self._late and self._late[trace] is carried:
                                del self._late[trace]
                    raise
            with self._lock:
                for key, late, _ in covered:
                    for trace_id in late:
                        self._late_waiting[(key, trace_id)] += 1

    def release_late(self, key: str, trace_ids: Iterable[int]) -> None:
        """A record counted by `cover_late` that was not written after all (the log full or failed)."""
        with self._lock:
            for trace_id in trace_ids:
                trace = (key, trace_id)
                waiting = self._late_waiting[trace] - 1
                if waiting > 0:
                    self._late_waiting[trace] = waiting
                else:
                    del self._late_waiting[trace]

    def late_among(self, key: str, trace_ids: Iterable[int]) -> list[int]:
        """Of these traces, those whose state the file carries (the worker refreshes it when they are done)."""
        with self._lock:
            return [trace_id for trace_id in trace_ids if (key, trace_id) in self._late]

    def prune_late(self) -> None:
        """The worker, under the gateway's order lock: a late trace none of whose records is in a live segment or
        waits for the worker leaves the file (written at `flush`): it cannot be replayed any more."""
        with self._lock:
            for trace in [t for t in self._late if t not in self._traces and not self._late_waiting.get(t)]:
                if self._late.pop(trace) is not None:
                    self._file_urgent = True

    def has_late(self) -> bool:
        with self._lock:
            return bool(self._late)

    def flush(self) -> None:
        """The worker, every round: write the file now if a late trace's state in it moved on (`mark_done`)."""
        if not self._file_urgent:
            return
        with self._file_lock:
            try:
                self._write_finished()
            except OSError as exc:
                logger.error("Prefactor gateway: cannot write %s (%s); trying again", self._path, exc)
                with self._lock:
                    self._file_urgent = True

    # ------------------------------------------------------------------ records in and taken

    def hold(self, segment: int) -> None:
        """A record written to `segment` and queued for the worker (a request thread, under the order lock)."""
        with self._lock:
            self._waiting[segment] = self._waiting.get(segment, 0) + 1

    def held(self) -> int:
        with self._lock:
            return sum(self._waiting.values())

    def taken(
        self, segment: int, key: str, trace_ids: Iterable[int], *, held: bool = True, late: Iterable[int] = ()
    ) -> None:
        """The worker gave a record's spans to its pipeline (`held`: it was counted by `hold`; a replayed one was
        not; `late`: its traces counted by `cover_late`): its traces are open again until the pipeline is done with
        them."""
        if held:
            with self._lock:
                left = self._waiting.get(segment, 0) - 1
                if left > 0:
                    self._waiting[segment] = left
                else:
                    self._waiting.pop(segment, None)
        if late:
            self.release_late(key, late)
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

    def mark_done(
        self, key: str, trace_ids: Iterable[int], states: Mapping[int, TraceState | None] | None = None
    ) -> None:
        """The worker, under the gateway's order lock, for traces none of whose records waits in the queue: done,
        and listed finished. `states`: the planner's state now of those that are late (`late_among`): the file
        carries it, written at once (`flush`) when it moved on."""
        open_here = self._open.get(key)
        with self._lock:
            for trace_id in trace_ids:
                self._changed = True
                if open_here is not None:
                    open_here.discard(trace_id)
                trace = (key, trace_id)
                self._done.add(trace)
                self._remember(key, trace_id)
                if states is not None and trace_id in states and trace in self._late:
                    state = states[trace_id]
                    carried = CarriedTrace.of(state) if state is not None else None
                    if carried != self._late[trace]:
                        self._late[trace] = carried
                        self._file_urgent = True

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
        if self._file_dirty or self._file_urgent:
            with self._file_lock:
                try:
                    self._write_finished()
                except OSError as exc:
                    logger.error(
                        "Prefactor gateway: cannot write %s (%s); ingress-log segments are kept", self._path, exc
                    )
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
