"""The planner's part for span starts (PrefactorSpanProcessor): the spans still open, and live spans.

`LiveSpans` is a part the Planner (planner.py) holds: the Planner finds or opens the run of each started span and
hands the span here (`open`); it hands here every ended span of a run with spans open or live (`ended`), and asks
for the finishes of live spans when it plans a run (`plan_finishes`). It works on the runs of the planner's
`RunTable` (runs.py) and owns one figure of its own: the spans open over all runs, bounded. No I/O; called only by
the Planner, under the pipeline's state lock. What it adds to a run (runs.py `RunState`):
- each started span is remembered in `open` until its ended record arrives (bounded over all runs: the oldest is
  forgotten, counted), and spans the LivePolicy wants go live -- with their open ancestors, so a live span's parent
  exists in Prefactor before it. An open span is its `StartedSpan` (no object of its own); those gone live are in
  the run's `open_live` too, which holds open spans only. A run whose local root has started is announced
  (registered and started with that time) before any span of it has ended.
- A live span is a pending create with status "active"; when it ends, either its create was never tried (the ended
  record replaces it: one complete create) or it was (the ended record waits in `LiveSpan.ended` for its
  `agent_spans/finish`, planned right after the create is delivered, with what appeared after the start in
  `result_payload.params_at_end`). A live span that will not end here (shutdown; its end lost after the root ended
  and the run has been quiet for max_wait_seconds; forgotten) is finished `failed`, error `SpanNotEnded`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pydantic_core

from prefactor_otel.mapping.payload import SpanRecord
from prefactor_otel.mapping.values import RawJson, as_dict
from prefactor_otel.model.http import BULK_FINISH_SPAN
from prefactor_otel.pipeline.items import PlannedItem, params_at_end, span_finish_item, wire_data
from prefactor_otel.pipeline.runs import SHARED_EMPTY, LiveSpan, RunState, RunTable, own
from prefactor_otel.pipeline.starts import LivePolicy, StartedSpan


class LiveSpans:
    def __init__(
        self,
        runs: RunTable,
        *,
        live_policy: LivePolicy | None,
        map_started: Callable[[Any], SpanRecord | None] | None,
        max_open_spans: int,
        finish_grace_seconds: float,
        max_wait_seconds: float,
    ) -> None:
        self._runs = runs
        self._live_policy = live_policy
        self._map_started = map_started
        self._max_open = max_open_spans
        self._grace = finish_grace_seconds
        self._max_wait = max_wait_seconds
        self.open_spans = 0  # spans started here, not yet received ended, over all runs

    # ------------------------------------------------------------------ starts and ends

    def open(self, trace: RunState, started: StartedSpan, now: float, joined: bool = False) -> None:
        """A span started in this run (the Planner found or opened the run): open until it ends, live if the
        policy wants it. `joined`: the span opened just before, in the same call of the Planner's, was of this run
        too, so the run is tracked, active `now`, last of the open runs and due a look already. Call `limit_open`
        after a batch."""
        if not joined:
            runs = self._runs
            trace.tracked = True
            trace.last_activity = now
            runs.traces.move_to_end(trace.trace_id)
            runs.with_pending[trace.trace_id] = None
        if started.parent_span_id is None or started.parent_is_remote:  # a local root (is_local_root, inlined)
            trace.announce = True
        open_spans = trace.open
        if open_spans is SHARED_EMPTY:  # runs.own(), inline: asked once per started span
            open_spans = trace.open = {}
        open_spans[started.span_id] = started
        self.open_spans += 1
        policy = self._live_policy
        if policy is not None and policy.wants(started):
            self._go_live(trace, started.span_id, now)

    def limit_open(self) -> None:
        """Bounded memory: past the limit, the oldest open spans are forgotten."""
        if self.open_spans > self._max_open:
            self._forget_oldest_open(self.open_spans - self._max_open)

    def ended(self, trace: RunState, record: SpanRecord, now: float) -> bool:
        """An ended span of a run with spans open or live: no longer open. True if it was live (handled here: its
        create is replaced or its finish is due), False if it goes the usual way (a create)."""
        if trace.open and trace.open.pop(record.span_id, None) is not None:
            self.open_spans -= 1
            if trace.open_live:
                trace.open_live.pop(record.span_id, None)
        live = trace.live.get(record.span_id) if trace.live else None
        if live is None:
            return False
        self._on_live_end(trace, record, live, now)
        return True

    def close_run(self, trace: RunState) -> int:
        """Nothing more of this run will be sent (terminated, or everything discarded): its open and live spans are
        forgotten. Returns how many live spans had ended (their finish was due: the caller counts them dropped)."""
        ended = sum(1 for live in trace.live.values() if live.ended is not None)
        self.open_spans -= len(trace.open)
        trace.live = trace.open = trace.open_live = SHARED_EMPTY
        return ended

    def _go_live(self, trace: RunState, span_id: int, now: float) -> None:
        """Create the span active now, and its open ancestors not yet live (a live span's parent must exist)."""
        chain: list[StartedSpan] = []
        open_spans, gone_live = trace.open, trace.open_live
        current = open_spans.get(span_id)
        while current is not None and current.span_id not in gone_live and len(chain) <= len(open_spans):
            chain.append(current)
            parent_id = current.parent_span_id
            current = None if current.is_local_root or parent_id is None else open_spans.get(parent_id)
        if not chain:
            return
        trace.open_live = gone_live = own(gone_live)
        trace.live = live = own(trace.live)
        for started in reversed(chain):  # ancestors first
            gone_live[started.span_id] = None
            record = self._map_live(started)
            if record is None:
                continue  # not mappable: the span goes the usual way, once it has ended
            record.parent_is_remote = started.parent_is_remote  # a forked child's local root stays one
            live[record.span_id] = LiveSpan(decoded(record.payload))
            self._runs.enqueue(trace, record, now)
            self._runs.counters["spans_live"] += 1

    def _map_live(self, started: StartedSpan) -> SpanRecord | None:
        if self._map_started is None:
            return None
        try:
            return self._map_started(started.span)
        except Exception:
            self._runs.counters["spans_live_unmappable"] += 1
            return None

    def _on_live_end(self, trace: RunState, record: SpanRecord, live: LiveSpan, now: float) -> None:
        """A live span has ended. Its create not yet tried: send the ended span instead, in one create. Tried (the
        server may have it, active): finish it, after its create."""
        trace.last_activity = now
        trace.last_end_ns = max(trace.last_end_ns, record.end_time_ns)
        self._runs.traces.move_to_end(record.trace_id)
        span_id = record.span_id
        if span_id in trace.pending and span_id not in trace.attempted:
            del trace.live[span_id]
            trace.pending[span_id] = record  # keeps its place in the queue (pending: a dict of the run's own)
            trace.arrived = arrived = own(trace.arrived)
            arrived[span_id] = now
            return
        live.ended = record
        self._runs.with_pending[trace.trace_id] = None

    def _forget_oldest_open(self, count: int) -> None:
        """Bounded memory: a span that never ends is forgotten (counted); the run's finish stops waiting for it."""
        runs = self._runs
        for trace in list(runs.traces.values()):
            while trace.open and count > 0:
                span_id = next(iter(trace.open))
                opened = trace.open.pop(span_id)
                if trace.open_live:
                    trace.open_live.pop(span_id, None)
                self.open_spans -= 1
                count -= 1
                runs.counters["open_spans_forgotten"] += 1
                live = trace.live.get(span_id)
                if live is not None and live.ended is None:
                    live.ended = self._unended(trace, opened, live, "forgotten: too many spans open at once")
                    runs.with_pending[trace.trace_id] = None
            if count <= 0:
                return

    # ------------------------------------------------------------------ planning

    def plan_finishes(
        self, trace: RunState, span_items: list[PlannedItem], now: float, *, shutdown: bool
    ) -> list[PlannedItem]:
        """Finishes of live spans that have ended, once their create is delivered or in this plan. A live span still
        open is finished `failed` at shutdown (the process ends before it does), or when its run's root has ended and
        the run has been quiet for the longest a span may wait (its end was lost, e.g. by a full batch queue)."""
        # What the plan creates and whether the run's end was lost: asked only when a live span needs them (most
        # plans of a run: its live span still open, or ended with its create delivered), before any is changed.
        planned: set[int | None] | None = None
        lost: bool | None = None
        items = []
        for span_id, live in trace.live.items():
            record = live.ended
            if record is None:
                opened = trace.open.get(span_id)
                if opened is None:
                    continue
                if not shutdown:
                    if lost is None:
                        root_ended = trace.root_delivered or any(
                            other.ended is not None and other.ended.is_local_root for other in trace.live.values()
                        )
                        lost = root_ended and now - trace.last_activity >= max(self._grace, self._max_wait)
                    if not lost:
                        continue
                why = "the process shut down before this span ended" if shutdown else "its end never arrived"
                record = live.ended = self._unended(trace, opened, live, why)
            if span_id not in trace.created:
                if planned is None:
                    planned = {item.span_id for item in span_items}
                if span_id not in planned:
                    continue  # its create waits (for a parent) or failed: the finish follows it
            pfid = self._runs.span_pfid(trace, span_id, record.start_time_ns)
            result = dict(decoded(record.result_payload))
            late = params_at_end(live.started_payload, decoded(record.payload))
            if late:
                result["params_at_end"] = late
            body = span_finish_item(pfid, record, result)
            items.append(
                PlannedItem(body["idempotency_key"], BULK_FINISH_SPAN, wire_data(body), trace.trace_id, span_id)
            )
        return items

    @staticmethod
    def _unended(trace: RunState, started: StartedSpan, live: LiveSpan, why: str) -> SpanRecord:
        """The record a live span that will not end here is finished with: failed, at the run's last activity."""
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


def decoded(payload: dict[str, Any] | RawJson) -> dict[str, Any]:
    """`as_dict`, parsed by pydantic-core (Rust, installed with pydantic) instead of the stdlib: three payloads per
    live span (its payload at the start; at its finish, its payload and result). 3.4 against 10.9 us per payload of
    the benchmark's realistic workload, the same dicts (tests/test_planner.py). Payloads are our own compact,
    strict JSON (encode_json); anything it refuses goes to `as_dict`."""
    if isinstance(payload, bytes):
        try:
            value = pydantic_core.from_json(payload)
        except ValueError:
            return as_dict(payload)
        return value if isinstance(value, dict) else {}
    return payload


def has_start_work(trace: RunState) -> bool:
    """Work that span starts create: a run to announce, a live span to finish, a run over with its last span."""
    if trace.announce and (trace.register_item is not None or trace.start_item is not None):
        return True
    if any(live.ended is not None for live in trace.live.values()):
        return True
    return not trace.open and not trace.live and (trace.root_delivered or trace.root_skipped)
