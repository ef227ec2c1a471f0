"""The planner's part for outcomes: what the server did with each item of the last plan, applied to the runs.

`OutcomeRules` is a part the Planner (planner.py) holds: the Planner tells it the items of each plan it makes
(`expect`), and passes on to it what became of them (`apply`, `handoff`, `refused`, `replace_with_placeholder`).
It works on the runs of the planner's `RunTable` (runs.py) and owns the items of the last plan, by key. No I/O;
called only by the Planner, under the pipeline's state lock. The verdict on each outcome comes from outcomes.judge
(the one rule book for live and spooled items); this part records it: a run registered, started, rejected (its
waiting spans dropped, counted) or finished and forgotten, or, when the request carrying its register was refused
whole for its token or could not be sent (`refused`), no longer journaled; a span delivered (the run's root, its
failures), sent again as an orphan, replaced by a placeholder, or dropped with its code; a live span created active,
then finished.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from operator import attrgetter

from prefactor_otel.mapping.payload import SpanRecord
from prefactor_otel.model.http import (
    BULK_CREATE_SPAN,
    BULK_FINISH_INSTANCE,
    BULK_FINISH_SPAN,
    BULK_REGISTER,
    BULK_START,
)
from prefactor_otel.pipeline import runs as runs_module
from prefactor_otel.pipeline.items import PlannedItem
from prefactor_otel.pipeline.runs import SHARED_EMPTY, RunState, RunTable, own, remember
from prefactor_otel.transport.outcomes import SUCCESS, ItemOutcome, Verdict, judge

_key_of = attrgetter("key")  # PlannedItem.key, read in C


class OutcomeRules:
    def __init__(self, runs: RunTable) -> None:
        self._runs = runs
        self._items: dict[str, PlannedItem] = {}  # key -> item of the last plan

    def expect(self, items: list[PlannedItem]) -> None:
        """The items of the plan just made: the outcomes that follow are for these (an earlier plan's are void)."""
        self._items = dict(zip(map(_key_of, items), items, strict=True))  # {item.key: item ...}, built in C

    def replace_with_placeholder(self, key: str, original_bytes: int) -> bool:
        """A span too large for any request: next plans send a small placeholder in the same place of the tree.

        False if the item is not a span create of the last plan, or is already a placeholder.
        """
        item = self._items.get(key)
        if item is None or item.action != BULK_CREATE_SPAN or item.span_id is None:
            return False
        trace = self._runs.traces.get(item.trace_id)
        span_id = item.span_id
        if trace is None or span_id not in trace.pending or span_id in trace.too_large:
            return False
        trace.too_large = too_large = own(trace.too_large)
        too_large[span_id] = original_bytes
        self._runs.counters["spans_replaced_too_large"] += 1
        return True

    def handoff(self, items: Iterable[PlannedItem], now: float) -> None:
        """These items went to the durable spool: treat them as delivered (the spool sends them in order)."""
        self.apply({item.key: SUCCESS for item in items}, now, spooled=True)

    def refused(self, keys: Iterable[str] | None) -> None:
        """These items of the last plan were in a request the server refused whole (401/403: the token), or that
        could not be sent (an unusable proxy): a run whose register was among them and was never accepted does
        not exist on the server, so it is no longer
        journaled as one this process must finish (a later process would finish it and hear `not_found`). The
        next plan that hands its register on (to the server or the spool) journals it again. An earlier attempt
        of that register carried the same token, so it was refused too. None: every item of the last plan."""
        for key in list(self._items) if keys is None else keys:
            item = self._items.get(key)
            if item is None or item.action != BULK_REGISTER:
                continue
            trace = self._runs.traces.get(item.trace_id)
            if trace is None or trace.registered or not trace.journaled:
                continue
            trace.journaled = False
            self._runs.run_changes[trace.instance_id] = None  # closing the run closes its live spans in the journal

    def apply(self, outcomes: Mapping[str, ItemOutcome], now: float, *, spooled: bool = False) -> None:
        """Record what the server did with each item of the last plan. Keys not given = not processed."""
        runs = self._runs
        traces_get, items_get = runs.traces.get, self._items.get
        run_changes, release_queue = runs.run_changes, runs.release_queue
        bound = runs_module.MAX_SPANS_REMEMBERED_PER_TRACE  # remember()'s bound, read at the call (tests lower it)
        # The common item, a finished span created (or spooled), is recorded inline and counted once per call:
        # what _on_span and _delivered do for it, without their calls (once per exported span). A plan's items
        # come run by run, so the run of the last such item is kept (`run_id`, `trace`, its queue's methods) while
        # items of it follow -- its journal line written once for them (`journal`, before any other item: a finish
        # closes the line) -- and any other item forgets it (it may finish or reject a run, which leaves the table).
        delivered = live_created = 0  # the spans taken out of their queues: both (counted once per call)
        run_id: int | None = None
        trace: RunState | None = None
        journal: RunState | None = None  # the run whose delivered spans move its journal line
        pending: dict[int, SpanRecord] = {}
        arrived: dict[int, float] = {}
        created: dict[int, None] = {}
        flagged = False  # the run has rare per-span state (runs.py): taken out with the span
        try:
            for key, outcome in outcomes.items():
                item = items_get(key)
                if item is None:
                    continue
                if outcome is SUCCESS and item.action == BULK_CREATE_SPAN:
                    if trace is None or item.trace_id != run_id:
                        if journal is not None:
                            run_changes[journal.instance_id] = journal.last_end_ns
                            journal = None
                        if trace is not None and not pending and not trace.open:
                            release_queue(trace)  # its queue delivered, no span open here: the queue goes at once
                        run_id = item.trace_id
                        trace = traces_get(run_id)
                        if trace is None:
                            continue
                        pending, arrived, created = trace.pending, trace.arrived, trace.created
                        if pending is SHARED_EMPTY:  # nothing of the run is pending (its spans were dropped)
                            pending, arrived = {}, {}  # what its items find: nothing (the shared empty has no pop)
                        if created is SHARED_EMPTY:  # runs.own(), inline: its spans delivered are remembered
                            created = trace.created = {}
                        flagged = bool(trace.orphaned or trace.too_large or trace.attempted)
                    span_id: int = item.span_id  # type: ignore[assignment]  # a span create's is never None
                    record = pending.pop(span_id, None)
                    if record is None:
                        continue
                    arrived.pop(span_id, None)
                    if flagged:  # RunTable.dequeue's, inline
                        if trace.orphaned:
                            trace.orphaned.pop(span_id, None)
                        if trace.too_large:
                            trace.too_large.pop(span_id, None)
                        if trace.attempted:
                            trace.attempted.pop(span_id, None)
                    created[span_id] = None  # remember(), inline
                    if len(created) > bound:
                        del created[next(iter(created))]
                    status = record.status
                    if status == "active":
                        live_created += 1  # counted as exported once finished
                        continue
                    delivered += 1
                    if record.parent_span_id is None or record.parent_is_remote:  # a local root
                        trace.root_delivered = True
                        trace.root_failed = trace.root_failed or status == "failed"
                        trace.root_end_ns = max(trace.root_end_ns, record.end_time_ns)
                    if status == "failed":
                        trace.any_failed = True
                    if trace.journaled:
                        journal = trace
                    continue
                if journal is not None:
                    run_changes[journal.instance_id] = journal.last_end_ns
                    journal = None
                if trace is not None and not pending and not trace.open:
                    release_queue(trace)
                trace = None
                self._apply_other(item, outcome, spooled)
        finally:
            if journal is not None:
                run_changes[journal.instance_id] = journal.last_end_ns
            if trace is not None and not pending and not trace.open:
                release_queue(trace)
            runs.queued -= delivered + live_created  # true even if an item raised midway (nothing raises between a
            # span's dequeue and its count)
        if delivered:
            runs.counters["spans_spooled" if spooled else "spans_exported"] += delivered
        if live_created:
            runs.counters["spans_live_created"] += live_created

    def _apply_other(self, item: PlannedItem, outcome: ItemOutcome, spooled: bool) -> None:
        """What `apply` does for an item other than a finished span created: registers, starts, finishes, live
        spans, and any item the server did not accept."""
        action = item.action
        if outcome.status == "not_processed":
            return
        trace = self._runs.traces.get(item.trace_id)
        if trace is None:
            return
        span_id = item.span_id
        if outcome is SUCCESS:  # the shared outcome of most items: judge's first answer, without the call
            verdict = Verdict.DONE
        else:
            can_orphan = span_id is not None and span_id in trace.pending and span_id not in trace.orphaned
            verdict = judge(action, outcome, can_orphan=can_orphan)
        if action == BULK_CREATE_SPAN:
            if span_id is not None:
                self._on_span(trace, span_id, verdict, outcome, spooled)
        elif action == BULK_REGISTER:
            self._on_register(trace, verdict is Verdict.DONE, outcome)
        elif action == BULK_START:
            self._on_start(trace, verdict is Verdict.DONE, outcome)
        elif action == BULK_FINISH_SPAN and span_id is not None:
            self._on_span_finish(trace, span_id, verdict, outcome, spooled)
        elif action == BULK_FINISH_INSTANCE:
            self._on_finish(trace, verdict is Verdict.DONE, outcome)

    def _on_register(self, trace: RunState, ok: bool, outcome: ItemOutcome) -> None:
        if ok:
            trace.registered = True
            trace.register_item = None
            self._runs.counters["instances_registered"] += 1
        else:
            self._reject(trace, f"register_{outcome.code or 'error'}")

    def _on_start(self, trace: RunState, ok: bool, outcome: ItemOutcome) -> None:
        if ok:
            trace.started = True
            trace.start_item = None
        else:
            self._reject(trace, f"start_{outcome.code or 'error'}")

    def _reject(self, trace: RunState, reason: str) -> None:
        trace.rejected = True
        if trace.journaled:
            self._runs.run_changes[trace.instance_id] = None  # the run does not exist: nothing to finish
        self._runs.drop(self._runs.clear_pending(trace), f"instance_rejected:{reason}")

    def _on_span(self, trace: RunState, span_id: int, verdict: Verdict, outcome: ItemOutcome, spooled: bool) -> None:
        record = trace.pending.get(span_id)
        if record is None:
            return
        runs = self._runs
        if verdict is Verdict.DONE:
            runs.dequeue(trace, span_id)
            trace.created = created = own(trace.created)
            remember(created, span_id, None)
            if record.status == "active":
                runs.counters["spans_live_created"] += 1  # counted as exported once finished
                return
            self._delivered(trace, record, spooled)
            return
        if verdict is Verdict.ORPHAN:
            # The server does not know the parent (e.g. it was dropped): keep the span, without the link.
            runs.orphan(trace, span_id, "parent_rejected")
            return
        runs.dequeue(trace, span_id)
        if trace.live and trace.live.pop(span_id, None) is not None:  # when it ends it is sent whole
            self._live_span_closed(trace, span_id)
        runs.drop(1, f"rejected:{outcome.code or 'error'}")

    def _on_span_finish(
        self, trace: RunState, span_id: int, verdict: Verdict, outcome: ItemOutcome, spooled: bool
    ) -> None:
        live = trace.live.get(span_id)
        if live is None or live.ended is None or verdict is Verdict.PENDING:
            return
        del trace.live[span_id]
        self._live_span_closed(trace, span_id)
        if verdict is Verdict.DONE:
            self._delivered(trace, live.ended, spooled)
        else:
            self._runs.drop(1, f"finish_rejected:{outcome.code or 'error'}")

    def _live_span_closed(self, trace: RunState, span_id: int) -> None:
        """The server has (or the spool will send) this live span's finish, or never got it: not the journal's."""
        pfid = trace.span_ids.get(span_id)
        if pfid is not None:
            self._runs.live_span_changes[pfid] = None

    def _delivered(self, trace: RunState, record: SpanRecord, spooled: bool) -> None:
        """An ended span is in Prefactor (or in the spool, which sends it in order)."""
        self._runs.counters["spans_spooled" if spooled else "spans_exported"] += 1
        if record.is_local_root:
            trace.root_delivered = True
            trace.root_failed = trace.root_failed or record.status == "failed"
            trace.root_end_ns = max(trace.root_end_ns, record.end_time_ns)
        if record.status == "failed":
            trace.any_failed = True
        if trace.journaled:
            self._runs.run_changes[trace.instance_id] = trace.last_end_ns

    def _on_finish(self, trace: RunState, ok: bool, outcome: ItemOutcome) -> None:
        if ok:
            self._runs.counters["instances_finished"] += 1  # or handed to the spool, which finishes it in order
        else:
            self._runs.actions_dropped[f"finish_rejected:{outcome.code or 'error'}"] += 1
        self._runs.forget(trace)
