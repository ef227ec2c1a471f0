"""The planner's part for bounded memory: what happens when a limit is reached -- orphans, drops, forced finishes,
all counted.

A mixin of `Planner` (planner.py), split out as its own concept; it shares the planner's state and runs under the
same rules: no I/O, called only under the pipeline's state lock. The limits, checked after every `add`:
- queued spans (`max_queued_spans`, never below `max_waiting_spans`): past it, the oldest pending spans are dropped,
  counted `dropped["queue_full"]`.
- spans waiting for a parent not yet created (`max_waiting_spans`): past it, the tops of the oldest waiting chains
  are sent as orphans (`spans_orphaned_count`). A chain is also orphaned once one of its spans has waited
  `max_wait_seconds` (`spans_orphaned_age`, at the next plan), and every waiting chain at shutdown
  (`spans_orphaned_shutdown`). An orphan is sent without `parent_span_id`, the OTel parent kept in its payload,
  `metadata.orphaned = true` -- never dropped silently.
- open runs (`_MAX_OPEN_TRACES`): past it, the least recently active runs with nothing pending are finished at the
  next plan with what they have.
Every span create dropped anywhere in the planner goes through `_drop`, counted by reason in `dropped`.
"""

from __future__ import annotations

from collections import Counter, OrderedDict

from prefactor_otel.mapping.payload import SpanRecord
from prefactor_otel.pipeline.runs import PendingSpan, RunState, parent_resolved_deep, waiting_chains

_MAX_OPEN_TRACES = 10_000


class MemoryBounds:
    # State owned by Planner.__init__ (planner.py), used here.
    _traces: OrderedDict[int, RunState]
    _with_pending: dict[int, None]
    _queued: int
    _open_count: int
    run_changes: dict[str, int | None]
    _max_queued: int
    _max_waiting: int
    _max_wait: float
    counters: Counter[str]
    dropped: Counter[str]

    def _enforce_bounds(self, now: float) -> None:
        if self._queued > self._max_queued:
            self._drop_oldest(self._queued - self._max_queued)
        if self._queued > self._max_waiting:  # waiting spans are queued spans: fewer queued, nothing to check
            chains = [chain for trace in self._traces_with_pending() for chain in waiting_chains(trace)]
            excess = sum(size for _top, size, _earliest in chains) - self._max_waiting
            for top, size, _earliest in sorted(chains, key=lambda chain: chain[2]):  # oldest waiting first
                if excess <= 0:
                    break
                self._orphan(top, "count")
                excess -= size
        if len(self._traces) > _MAX_OPEN_TRACES:
            # Bounded memory: the least recently active trace is closed early.
            self._force_finish_oldest(len(self._traces) - _MAX_OPEN_TRACES)

    def _traces_with_pending(self) -> list[RunState]:
        # Only traces with pending spans: not O(open runs).
        return [self._traces[i] for i in self._with_pending if i in self._traces and self._traces[i].pending]

    def _orphan_waiting_tops(self, trace: RunState, why: str, now: float | None) -> None:
        """Orphan the top of each waiting chain (with `now`: of chains where some span has waited too long).
        Spans caught in a parent cycle (corrupt input) have no top: at shutdown they are orphaned one by one."""
        for top, _size, earliest in waiting_chains(trace):
            if now is None or now - earliest >= self._max_wait:
                self._orphan(top, why)
        if now is None:
            for pending in trace.pending.values():
                if not pending.orphaned and not parent_resolved_deep(trace, pending.record):
                    self._orphan(pending, why)

    def _orphan(self, pending: PendingSpan, why: str) -> None:
        pending.orphaned = True
        self.counters[f"spans_orphaned_{why}"] += 1

    def _drop_oldest(self, count: int) -> None:
        candidates = sorted(
            (p.arrived_at, t.trace_id, span_id)
            for t in (self._traces[i] for i in self._with_pending if i in self._traces)
            for span_id, p in t.pending.items()
        )
        for _, trace_id, span_id in candidates[:count]:
            pending = self._traces[trace_id].pending.pop(span_id)
            self._queued -= 1
            self._drop(1, "queue_full", pending.record)

    def _force_finish_oldest(self, count: int) -> None:
        for trace_id in list(self._traces)[:count]:
            trace = self._traces[trace_id]
            if not trace.pending:
                trace.root_delivered = True  # finish it on the next plan with what we have
                trace.last_activity = float("-inf")

    def discard_all(self, reason: str) -> int:
        """Forget every run and span held here, the spans counted `dropped[reason]`; returns how many.

        For when nothing held can ever be sent by this process and nothing can keep it (the server refused the
        token and there is no spool). Counted: pending spans and live spans that ended (their finish was due);
        spans still running are counted when they end and come back (a new run for them, discarded in turn).
        """
        count = 0
        for trace in self._traces.values():
            count += len(trace.pending) + sum(1 for live in trace.live.values() if live.ended is not None)
            self._open_count -= len(trace.open)
            if trace.journaled:
                self.run_changes[trace.instance_id] = None
        self._traces.clear()
        self._with_pending.clear()
        self._queued = 0
        if count:
            self._drop(count, reason)
        return count

    def _drop(self, count: int, reason: str, record: SpanRecord | None = None) -> None:
        self.dropped[reason] += count
