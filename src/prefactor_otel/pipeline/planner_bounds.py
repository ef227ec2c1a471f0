"""The planner's part for bounded memory: what happens when a limit is reached -- orphans, drops, forced finishes,
all counted.

`MemoryBounds` is a part the Planner (planner.py) holds: the Planner calls `enforce` after every `add`, and
`orphan_waiting_tops` for each run it plans. It works on the runs of the planner's `RunTable` (runs.py) and owns
only the limits. No I/O; called only by the Planner, under the pipeline's state lock. The limits:
- queued spans (`max_queued_spans`, never below `max_waiting_spans`): past it, the oldest pending spans are dropped,
  counted `dropped["queue_full"]`.
- spans waiting for a parent not yet created (`max_waiting_spans`): past it, the tops of the oldest waiting chains
  are sent as orphans (`spans_orphaned_count`). A chain is also orphaned once one of its spans has waited
  `max_wait_seconds` (`spans_orphaned_age`, at the next plan), and every waiting chain at shutdown
  (`spans_orphaned_shutdown`). An orphan is sent without `parent_span_id`, the OTel parent kept in its payload,
  `metadata.orphaned = true` -- never dropped silently.
- open runs (`MAX_OPEN_TRACES`): past it, the least recently active runs with nothing pending are finished at the
  next plan with what they have.
"""

from __future__ import annotations

from prefactor_otel.pipeline.runs import RunState, RunTable, parent_resolved_deep, waiting_chains

MAX_OPEN_TRACES = 10_000


class MemoryBounds:
    def __init__(
        self, runs: RunTable, *, max_queued_spans: int, max_waiting_spans: int, max_wait_seconds: float
    ) -> None:
        self._runs = runs
        self._max_queued = max(max_queued_spans, max_waiting_spans)
        self._max_waiting = max_waiting_spans
        self._max_wait = max_wait_seconds

    def enforce(self, now: float) -> None:
        """After new spans: drop, orphan and finish early what is past a limit."""
        runs = self._runs
        if runs.queued > self._max_queued:
            self._drop_oldest(runs.queued - self._max_queued)
        if runs.queued > self._max_waiting:  # waiting spans are queued spans: fewer queued, nothing to check
            chains = [(trace, *chain) for trace in self._traces_with_pending() for chain in waiting_chains(trace)]
            excess = sum(size for _trace, _top, size, _earliest in chains) - self._max_waiting
            for trace, top, size, _earliest in sorted(chains, key=lambda chain: chain[3]):  # oldest waiting first
                if excess <= 0:
                    break
                runs.orphan(trace, top, "count")
                excess -= size
        if len(runs.traces) > MAX_OPEN_TRACES:
            # Bounded memory: the least recently active trace is closed early.
            self._force_finish_oldest(len(runs.traces) - MAX_OPEN_TRACES)

    def orphan_waiting_tops(self, trace: RunState, why: str, now: float | None) -> None:
        """Orphan the top of each waiting chain (with `now`: of chains where some span has waited too long).
        Spans caught in a parent cycle (corrupt input) have no top: at shutdown they are orphaned one by one."""
        for top, _size, earliest in waiting_chains(trace):
            if now is None or now - earliest >= self._max_wait:
                self._runs.orphan(trace, top, why)
        if now is None:
            for span_id, record in trace.pending.items():
                if span_id not in trace.orphaned and not parent_resolved_deep(trace, record):
                    self._runs.orphan(trace, span_id, why)

    def _traces_with_pending(self) -> list[RunState]:
        # Only traces with pending spans: not O(open runs).
        traces = self._runs.traces
        return [traces[i] for i in self._runs.with_pending if i in traces and traces[i].pending]

    def _drop_oldest(self, count: int) -> None:
        runs = self._runs
        candidates = sorted(
            (t.arrived[span_id], t.trace_id, span_id)
            for t in (runs.traces[i] for i in runs.with_pending if i in runs.traces)
            for span_id in t.pending
        )
        for _, trace_id, span_id in candidates[:count]:
            runs.dequeue(runs.traces[trace_id], span_id)
            runs.drop(1, "queue_full")

    def _force_finish_oldest(self, count: int) -> None:
        traces = self._runs.traces
        for trace_id in list(traces)[:count]:
            trace = traces[trace_id]
            if not trace.pending:
                trace.root_delivered = True  # finish it on the next plan with what we have
                trace.last_activity = float("-inf")
