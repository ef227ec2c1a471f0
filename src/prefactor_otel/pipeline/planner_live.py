"""The planner's part for span starts (PrefactorSpanProcessor): live spans, the spans still open, terminated runs.

A mixin of `Planner` (planner.py), split out as its own concept; it shares the planner's state and runs under the
same rules: no I/O, called only under the pipeline's state lock. What it adds to a run (runs.py `RunState`):
- `start`: a run is created at its local root's start (registered and started with that time: `announce`), each
  started span is remembered in `open` until its ended record arrives (bounded over all runs: the oldest is
  forgotten, counted), and spans the LivePolicy wants go live -- with their open ancestors, so a live span's parent
  exists in Prefactor before it.
- A live span is a pending create with status "active"; when it ends, either its create was never tried (the ended
  record replaces it: one complete create) or it was (the ended record waits in `LiveSpan.ended` for its
  `agent_spans/finish`, planned right after the create is delivered, with what appeared after the start in
  `result_payload.params_at_end`). A live span that will not end here (shutdown; its end lost after the root ended
  and the run has been quiet for max_wait_seconds; forgotten) is finished `failed`, error `SpanNotEnded`.
- `terminate`: the run was terminated in Prefactor; what waits is dropped (counted `run_terminated`), and so is
  every later span of it.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prefactor_otel.mapping.payload import SpanRecord
from prefactor_otel.mapping.values import as_dict
from prefactor_otel.model.http import BULK_FINISH_SPAN
from prefactor_otel.pipeline.items import PlannedItem, params_at_end, span_finish_item
from prefactor_otel.pipeline.runs import LiveSpan, OpenSpan, PendingSpan, RunState
from prefactor_otel.pipeline.starts import LivePolicy, StartedSpan

MAX_TERMINATED_TRACES_REMEMBERED = 10_000


class LiveSpans:
    # State owned by Planner.__init__ (planner.py), used here.
    _traces: OrderedDict[int, RunState]
    _finished: OrderedDict[int, None]
    _terminated: OrderedDict[int, None]
    _own_runs: OrderedDict[str, int]
    _with_pending: dict[int, None]
    _live_policy: LivePolicy | None
    _map_started: Callable[[Any], SpanRecord | None] | None
    _max_open: int
    _open_count: int
    _queued: int
    _grace: float
    _max_wait: float
    counters: Counter[str]
    # Planner methods used here.
    _new_trace: Callable[[int, int, Mapping[str, object]], RunState]
    _drop: Callable[..., None]  # planner_bounds.py
    _forget: Callable[[RunState], None]
    _span_pfid: Callable[[RunState, int, int | None], str]
    _under_parent_process: Callable[[int, int | None], bool]
    _reopen_forked: Callable[[int], bool]

    def start(self, started_spans: Iterable[StartedSpan], now: float) -> None:
        """Spans that started in this process (PrefactorSpanProcessor), in the order they started."""
        for started in started_spans:
            trace_id = started.trace_id
            if not started.parent_is_remote and self._under_parent_process(trace_id, started.parent_span_id):
                started = started._replace(parent_is_remote=True)  # forked child: a local root of its own run
            if trace_id in self._finished and not self._reopen_forked(trace_id):
                continue  # a span of a run already finished (or terminated): its end is counted when it comes
            trace = self._traces.get(trace_id)
            if trace is None:
                resource = getattr(started.span.resource, "attributes", None) or {}
                trace = self._new_trace(trace_id, started.start_time_ns, resource)
            elif started.start_time_ns < trace.first_start_ns:
                trace.first_start_ns = started.start_time_ns
            if trace.rejected or started.span_id in trace.created or started.span_id in trace.pending:
                continue  # rejected run, or the span has already ended and arrived
            trace.tracked = True
            trace.last_activity = now
            self._traces.move_to_end(trace_id)
            if started.is_local_root:
                trace.announce = True
            trace.open[started.span_id] = OpenSpan(started)
            self._open_count += 1
            self._with_pending[trace_id] = None
            if self._live_policy is not None and self._live_policy.wants(started):
                self._go_live(trace, started.span_id, now)
        if self._open_count > self._max_open:
            self._forget_oldest_open(self._open_count - self._max_open)

    def _go_live(self, trace: RunState, span_id: int, now: float) -> None:
        """Create the span active now, and its open ancestors not yet live (a live span's parent must exist)."""
        chain: list[OpenSpan] = []
        current = trace.open.get(span_id)
        while current is not None and not current.live and len(chain) <= len(trace.open):
            chain.append(current)
            started = current.started
            current = None if started.is_local_root else trace.open.get(started.parent_span_id)  # type: ignore[arg-type]
        for opened in reversed(chain):  # ancestors first
            opened.live = True
            record = self._map_live(opened.started)
            if record is None:
                continue  # not mappable: the span goes the usual way, once it has ended
            record.parent_is_remote = opened.started.parent_is_remote  # a forked child's local root stays one
            trace.live[record.span_id] = LiveSpan(as_dict(record.payload))
            trace.pending[record.span_id] = PendingSpan(record, now)
            self._with_pending[trace.trace_id] = None
            self._queued += 1
            self.counters["spans_live"] += 1

    def _map_live(self, started: StartedSpan) -> SpanRecord | None:
        if self._map_started is None:
            return None
        try:
            return self._map_started(started.span)
        except Exception:
            self.counters["spans_live_unmappable"] += 1
            return None

    def _on_live_end(self, trace: RunState, record: SpanRecord, live: LiveSpan, now: float) -> None:
        """A live span has ended. Its create not yet tried: send the ended span instead, in one create. Tried (the
        server may have it, active): finish it, after its create."""
        trace.last_activity = now
        trace.last_end_ns = max(trace.last_end_ns, record.end_time_ns)
        self._traces.move_to_end(record.trace_id)
        pending = trace.pending.get(record.span_id)
        if pending is not None and not pending.attempted:
            del trace.live[record.span_id]
            pending.record = record
            pending.arrived_at = now
            return
        live.ended = record
        self._with_pending[trace.trace_id] = None

    def _forget_oldest_open(self, count: int) -> None:
        """Bounded memory: a span that never ends is forgotten (counted); the run's finish stops waiting for it."""
        for trace in list(self._traces.values()):
            while trace.open and count > 0:
                span_id = next(iter(trace.open))
                opened = trace.open.pop(span_id)
                self._open_count -= 1
                count -= 1
                self.counters["open_spans_forgotten"] += 1
                live = trace.live.get(span_id)
                if live is not None and live.ended is None:
                    live.ended = self._unended(trace, opened, live, "forgotten: too many spans open at once")
                    self._with_pending[trace.trace_id] = None
            if count <= 0:
                return

    def terminate(self, trace_id: int) -> int:
        """The run was terminated in Prefactor: send nothing more for it (what is waiting is dropped, counted, and
        so are its later spans). Returns how many waiting spans were dropped."""
        trace = self._traces.get(trace_id)
        if trace_id in self._terminated:
            return 0
        self._terminated[trace_id] = None
        while len(self._terminated) > MAX_TERMINATED_TRACES_REMEMBERED:
            self._terminated.popitem(last=False)
        if trace is None:
            self._finished[trace_id] = None
            return 0
        dropped = len(trace.pending) + sum(1 for live in trace.live.values() if live.ended is not None)
        self._queued -= len(trace.pending)
        self._open_count -= len(trace.open)
        if dropped:
            self._drop(dropped, "run_terminated")
        trace.pending.clear()
        trace.live.clear()
        trace.open.clear()
        self.counters["runs_terminated"] += 1
        self._forget(trace)
        return dropped

    def instance_of_trace(self, trace_id: int) -> str | None:
        trace = self._traces.get(trace_id)
        return trace.instance_id if trace is not None else None

    def trace_of_instance(self, instance_id: str) -> int | None:
        """The trace of a run this process opened (the newest MAX_TERMINATED_TRACES_REMEMBERED runs, open or
        finished); None for a run it did not open, e.g. one replayed from the spool of a process that ended."""
        return self._own_runs.get(instance_id)

    def _remember_own_run(self, instance_id: str, trace_id: int) -> None:
        self._own_runs[instance_id] = trace_id
        self._own_runs.move_to_end(instance_id)
        while len(self._own_runs) > MAX_TERMINATED_TRACES_REMEMBERED:
            self._own_runs.popitem(last=False)

    def active_runs(self) -> list[tuple[str, int]]:
        """(instance id, trace id) of the runs registered here and not finished: what the control poller asks."""
        return [(t.instance_id, t.trace_id) for t in self._traces.values() if t.registered]

    def _plan_span_finishes(
        self, trace: RunState, span_items: list[PlannedItem], now: float, *, shutdown: bool
    ) -> list[PlannedItem]:
        """Finishes of live spans that have ended, once their create is delivered or in this plan. A live span still
        open is finished `failed` at shutdown (the process ends before it does), or when its run's root has ended and
        the run has been quiet for the longest a span may wait (its end was lost, e.g. by a full batch queue)."""
        planned = {item.span_id for item in span_items}
        root_ended = trace.root_delivered or any(
            live.ended is not None and live.ended.is_local_root for live in trace.live.values()
        )
        lost = root_ended and now - trace.last_activity >= max(self._grace, self._max_wait)
        items = []
        for span_id, live in trace.live.items():
            record = live.ended
            if record is None:
                opened = trace.open.get(span_id)
                if not (shutdown or lost) or opened is None:
                    continue
                why = "the process shut down before this span ended" if shutdown else "its end never arrived"
                record = live.ended = self._unended(trace, opened, live, why)
            if span_id not in trace.created and span_id not in planned:
                continue  # its create waits (for a parent) or failed: the finish follows it
            pfid = self._span_pfid(trace, span_id, record.start_time_ns)
            result = dict(as_dict(record.result_payload))
            late = params_at_end(live.started_payload, as_dict(record.payload))
            if late:
                result["params_at_end"] = late
            body = span_finish_item(pfid, record, result)
            items.append(PlannedItem(body["idempotency_key"], BULK_FINISH_SPAN, body, trace.trace_id, span_id))
        return items

    def _unended(self, trace: RunState, opened: OpenSpan, live: LiveSpan, why: str) -> SpanRecord:
        """The record a live span that will not end here is finished with: failed, at the run's last activity."""
        started = opened.started
        error = {"error_type": "SpanNotEnded", "message": why, "stacktrace": None}
        return SpanRecord(
            started.trace_id,
            started.span_id,
            started.parent_span_id,
            started.parent_is_remote,
            "",
            "",
            "failed",
            started.start_time_ns,
            max(started.start_time_ns, trace.last_end_ns),
            {**live.started_payload, "status": "failed", "error": error},
            {"outputs": {}, "token_usage": None, "error": error},
            None,
            {},
        )


def has_start_work(trace: RunState) -> bool:
    """Work that span starts create: a run to announce, a live span to finish, a run over with its last span."""
    if trace.announce and (trace.register_item is not None or trace.start_item is not None):
        return True
    if any(live.ended is not None for live in trace.live.values()):
        return True
    return not trace.open and not trace.live and (trace.root_delivered or trace.root_skipped)
