"""The planner: which traces have agent instances, which spans exist, who waits for a parent. No I/O.

The exporter feeds it mapped spans (`add`), asks for the next ordered list of bulk items (`plan`), sends them
and reports each item's outcome back (`apply`). Everything it emits is keyed deterministically (ids.py), so
re-planning an item that was sent but not acknowledged produces the same item and the server deduplicates it.

Ordering rules: register + start come before a trace's first span; within one
plan parents come before children; a child whose parent has not been created waits here, bounded by count
and age, and is then sent as an orphan (planner_bounds.py) -- never dropped silently. An instance is finished
once its local root has been delivered and the trace has been quiet for a grace period (or at flush/shutdown).

With span starts (PrefactorSpanProcessor, `start`): a run is registered and started at its local root's start, live
spans are created `active` then finished with `agent_spans/finish`, and a run is finished as soon as every span
started here has ended and been delivered -- the grace period is then only a fallback (docs/live-runs.md).

In a forked child (`ForkOrigin`) a trace open at the fork is a run of the child's own, and a span whose parent is
a span of the parent process is a local root of it (docs/live-runs.md, "Forks and child processes").

Split by concept: this module plans (input, ordering, finishes); planner_live.py is what span starts add (live
spans, open spans, terminated runs); planner_outcomes.py applies what the server did with each item;
planner_bounds.py is what happens when a memory limit is reached (orphans, drops, forced finishes). All four
share one state, owned by `Planner.__init__`; no I/O, called only under the pipeline's state lock.
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

from prefactor_otel.mapping.payload import SpanRecord
from prefactor_otel.model import ids
from prefactor_otel.model.http import (
    BULK_CREATE_SPAN,
    BULK_FINISH_INSTANCE,
    BULK_FINISH_SPAN,
    AgentSchemaVersionForRegister,
)
from prefactor_otel.pipeline.items import (
    PlannedItem,
    finish_item,
    orphan_payload,
    placeholder_payloads,
    register_item,
    span_create_item,
    start_item,
)
from prefactor_otel.pipeline.planner_bounds import MemoryBounds
from prefactor_otel.pipeline.planner_live import LiveSpans, has_start_work
from prefactor_otel.pipeline.planner_outcomes import OutcomeRules
from prefactor_otel.pipeline.runs import PendingSpan, RunState, passes_filter, remember
from prefactor_otel.pipeline.starts import LivePolicy


class ForkOrigin(NamedTuple):
    """In a forked child, what it knows of its parent process: the child is a process of its own, so its part of a
    trace open at the fork is a run of its own (the parent finishes its run whenever it is over, and a finished run
    takes no more spans). A span of the child whose parent is a span of the parent process is a local root of the
    child's run (its OTel parent id stays in its payload), as a span whose parent is in another service is."""

    tag: str  # tells the child's run of a trace open at the fork from the parent's run of it (its instance id)
    # trace id -> spans of the parent process in it (known to its exporter at the fork, current in the forking
    # thread, or whose copy the child ended); grows as the child ends copies (under the pipeline's state lock).
    parent_spans: dict[int, set[int]]


# Resource attributes -> the register item's `agent_version` (AgentVersionForRegister dumped). The planner shares
# the returned dict between register items and never modifies it.
AgentVersionBuilder = Callable[[Mapping[str, object]], dict[str, Any]]


class Planner(LiveSpans, OutcomeRules, MemoryBounds):
    def __init__(
        self,
        *,
        partition: int,
        agent_key: str,
        agent_id: str | None,
        environment_id: str | None,
        purpose: str | None,
        agent_version_for: AgentVersionBuilder,
        schema_version: AgentSchemaVersionForRegister,
        max_waiting_spans: int = 10_000,
        max_queued_spans: int = 20_000,
        max_wait_seconds: float = 30.0,
        finish_grace_seconds: float = 2.0,
        span_filter: Callable[[SpanRecord], bool] | None = None,
        fork_origin: ForkOrigin | None = None,
        live_policy: LivePolicy | None = None,
        map_started: Callable[[Any], SpanRecord | None] | None = None,
        max_open_spans: int = 20_000,
    ) -> None:
        self.partition = partition
        self._agent_key = agent_key
        self._agent_id = agent_id
        self._environment_id = environment_id
        self._purpose = purpose
        self._agent_version_for = agent_version_for
        self._schema_version = schema_version.model_dump(exclude_none=True)
        self._max_waiting = max_waiting_spans
        self._max_queued = max(max_queued_spans, max_waiting_spans)
        self._max_wait = max_wait_seconds
        self._grace = finish_grace_seconds
        self._span_filter = span_filter
        self._live_policy = live_policy
        self._map_started = map_started
        self._max_open = max_open_spans
        self._open_count = 0  # spans started here, not yet received ended, over all runs
        self._terminated: OrderedDict[int, None] = OrderedDict()
        self._fork = fork_origin  # in a forked child: what it knows of its parent process
        self._fork_runs: dict[int, int] = {}  # forked child: trace open at the fork -> its runs here finished so far
        # instance id -> trace id of every run this planner opened (its own spans), newest kept: what tells this
        # process's runs from runs replayed from another process's spool when Prefactor terminates one.
        self._own_runs: OrderedDict[str, int] = OrderedDict()
        # instance id -> latest activity (ns) of runs this process must finish, or None once finished or handed
        # off: what the journal of open runs records (taken by the exporter after every plan and delivery).
        self.run_changes: dict[str, int | None] = {}
        # Prefactor span id -> (instance id, start ns) of live spans whose active create may reach the server, or
        # None once their finish is delivered or handed off: journaled with their run (a killed process's live
        # spans are finished by the process that adopts its runs).
        self.live_span_changes: dict[str, tuple[str, int] | None] = {}
        self._traces: OrderedDict[int, RunState] = OrderedDict()
        self._finished: OrderedDict[int, None] = OrderedDict()
        self._items: dict[str, PlannedItem] = {}  # key -> item of the last plan, for `apply`
        self._with_pending: dict[int, None] = {}  # trace ids that (may) have pending spans, in arrival order
        self._queued = 0
        self.counters: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()  # span creates only; instance actions: `actions_dropped`
        self.actions_dropped: Counter[str] = Counter()

    # ------------------------------------------------------------------ input

    def add(self, records: Iterable[SpanRecord], now: float) -> None:
        for record in records:
            self.counters["spans_added"] += 1
            if self._fork is not None and self._under_parent_process(record.trace_id, record.parent_span_id):
                record.parent_is_remote = True  # a local root of this process's run
            if record.trace_id in self._finished and not self._reopen_forked(record.trace_id):
                # A finished instance accepts no spans; this one came after the grace period.
                self._drop(1, "run_terminated" if record.trace_id in self._terminated else "instance_already_finished")
                continue
            trace = self._traces.get(record.trace_id)
            if trace is None:
                trace = self._new_trace(record.trace_id, record.start_time_ns, record.resource)
            elif record.start_time_ns < trace.first_start_ns:
                trace.first_start_ns = record.start_time_ns  # e.g. the root, exported after its children
            if trace.rejected:
                self._drop(1, "instance_rejected", record)
                continue
            if trace.open:
                opened = trace.open.pop(record.span_id, None)
                if opened is not None:
                    self._open_count -= 1
            live = trace.live.get(record.span_id)
            if live is not None:
                self._on_live_end(trace, record, live, now)
                continue
            if record.span_id in trace.pending or record.span_id in trace.created:
                self.counters["spans_duplicate_ignored"] += 1
                continue
            if self._span_filter is not None and not passes_filter(
                trace, record, self._span_filter(record), self.counters
            ):
                trace.last_activity = now
                continue
            trace.pending[record.span_id] = PendingSpan(record, now)
            self._with_pending[record.trace_id] = None
            trace.last_activity = now
            trace.last_end_ns = max(trace.last_end_ns, record.end_time_ns)
            self._traces.move_to_end(record.trace_id)
            self._queued += 1
        self._enforce_bounds(now)

    def _under_parent_process(self, trace_id: int, parent_span_id: int | None) -> bool:
        """In a forked child: is this parent a span of the parent process (so the span is a local root here)?"""
        fork = self._fork
        if fork is None or parent_span_id is None:
            return False
        spans = fork.parent_spans.get(trace_id)
        return spans is not None and parent_span_id in spans

    def _reopen_forked(self, trace_id: int) -> bool:
        """In a forked child, a span of a trace open at the fork whose run here is finished: the child's work in a
        trace it shares with its parent comes in bursts (a pool worker's tasks), so it starts a new run of the
        child's instead of being dropped. Not a run terminated in Prefactor: its later spans stay dropped."""
        fork = self._fork
        if fork is None or trace_id not in fork.parent_spans or trace_id in self._terminated:
            return False
        self._finished.pop(trace_id, None)
        self._fork_runs[trace_id] = self._fork_runs.get(trace_id, 0) + 1
        return True

    def note_parent_spans(self, trace_id: int, span_ids: Iterable[int]) -> None:
        """In a forked child: these spans are the parent process's (the child ended its copies of them). Spans
        waiting here for one of them become local roots of this process's run."""
        if self._fork is None:
            return
        known = self._fork.parent_spans.setdefault(trace_id, set())
        known.update(span_ids)
        trace = self._traces.get(trace_id)
        if trace is None:
            return
        for pending in trace.pending.values():
            if pending.record.parent_span_id in known:
                pending.record.parent_is_remote = True
        for opened in trace.open.values():
            if opened.started.parent_span_id in known:
                opened.started = opened.started._replace(parent_is_remote=True)

    def _new_trace(self, trace_id: int, first_start_ns: int, resource: Mapping[str, object]) -> RunState:
        key = self._agent_key
        if self._fork is not None and trace_id in self._fork.parent_spans:
            # Not the parent's run of this trace: one of our own (and a new one after each that finished here).
            key = f"{key}\x1ffork\x1f{self._fork.tag}\x1f{self._fork_runs.get(trace_id, 0)}"
        instance_id = ids.instance_pfid(self.partition, key, trace_id, first_start_ns)
        register = register_item(
            instance_id,
            agent_version=self._agent_version_for(resource),
            schema_version=self._schema_version,
            agent_id=self._agent_id,
            environment_id=self._environment_id,
            purpose=self._purpose,
        )
        trace = RunState(trace_id, instance_id, register, start_item(instance_id, first_start_ns))
        self._remember_own_run(instance_id, trace_id)
        trace.first_start_ns = first_start_ns
        self._traces[trace_id] = trace
        return trace

    # ------------------------------------------------------------------ planning

    @staticmethod
    def _parent_resolved(trace: RunState, record: SpanRecord, planned: frozenset[int] | set[int]) -> bool:
        if record.is_local_root:
            return True
        return record.parent_span_id in trace.created or record.parent_span_id in planned

    def plan(self, now: float, *, flush: bool = False, shutdown: bool = False) -> list[PlannedItem]:
        """The items to send next, in dependency order.

        flush: finish instances whose root is in without waiting for the grace period.
        shutdown: also send every waiting child as an orphan and finish every instance.
        """
        items: list[PlannedItem] = []
        empty: list[int] = []
        for trace in self._candidates(now, everything=flush or shutdown):
            if trace.rejected:
                continue
            if shutdown:
                self._orphan_waiting_tops(trace, "shutdown", None)
            else:
                self._orphan_waiting_tops(trace, "age", now)
            span_items = self._plan_spans(trace)
            if trace.root_skipped and not trace.pending and not trace.created and not trace.registered:
                if shutdown or flush or now - trace.last_activity >= self._grace:
                    empty.append(trace.trace_id)  # the filter kept nothing: no agent run to report
                continue
            if trace.live:
                span_items.extend(self._plan_span_finishes(trace, span_items, now, shutdown=shutdown))
            finish = self._plan_finish(trace, now, span_items, flush=flush, shutdown=shutdown)
            announce = trace.announce and (trace.register_item is not None or trace.start_item is not None)
            if not span_items and finish is None and not announce:
                continue
            if not trace.journaled:
                trace.journaled = True  # from this plan on the run may exist on the server
                # Its start at least: a run adopted before any span of it ended is finished no earlier.
                self.run_changes[trace.instance_id] = max(trace.last_end_ns, trace.root_end_ns, trace.first_start_ns)
            if trace.register_item is not None:
                items.append(self._item(trace.register_item, trace.trace_id))
            if trace.start_item is not None:
                if trace.planned_start_ns is None:
                    # At the earliest start seen: a bare exporter sends nothing of a run before its root has
                    # ended (children wait for it), so this is the root's start, whichever span came first.
                    trace.planned_start_ns = trace.first_start_ns
                    trace.start_item = start_item(trace.instance_id, trace.first_start_ns)
                items.append(self._item(trace.start_item, trace.trace_id))
            items.extend(span_items)
            if finish is not None:
                items.append(finish)
        for trace_id in empty:
            del self._traces[trace_id]
        self._items = {item.key: item for item in items}
        return items

    def _candidates(self, now: float, *, everything: bool) -> list[RunState]:
        """Traces that may have work: those with pending spans, and those quiet for the grace period.

        Not every open trace: with thousands of runs waiting out their grace period, a plan per export must not
        cost O(open runs). `_traces` is ordered by last activity (oldest first), so the quiet ones are a prefix.
        """
        if everything:
            return list(self._traces.values())
        chosen: dict[int, RunState] = {}
        for trace_id, trace in self._traces.items():
            if now - trace.last_activity < self._grace:
                break
            chosen[trace_id] = trace
        for trace_id in list(self._with_pending):
            trace = self._traces.get(trace_id)
            if trace is None or not (trace.pending or (trace.tracked and has_start_work(trace))):
                del self._with_pending[trace_id]  # cleaned lazily: cheaper than at every removal
            else:
                chosen.setdefault(trace_id, trace)
        return list(chosen.values())

    def _plan_spans(self, trace: RunState) -> list[PlannedItem]:
        if not trace.pending:
            return []
        children: dict[int, list[PendingSpan]] = {}
        frontier: deque[PendingSpan] = deque()
        for pending in trace.pending.values():
            record = pending.record
            if pending.orphaned or record.is_local_root or record.parent_span_id in trace.created:
                frontier.append(pending)
            else:
                children.setdefault(record.parent_span_id, []).append(pending)  # type: ignore[arg-type]
        planned: list[PlannedItem] = []
        while frontier:
            pending = frontier.popleft()
            planned.append(self._create_item(trace, pending))
            frontier.extend(children.pop(pending.record.span_id, ()))
        return planned

    def _create_item(self, trace: RunState, pending: PendingSpan) -> PlannedItem:
        pending.attempted = True
        record = pending.record
        payload = record.payload
        result_payload = record.result_payload
        if pending.too_large_bytes is not None:
            payload, result_payload = placeholder_payloads(record, pending.too_large_bytes)
        parent_id: str | None = None
        if pending.orphaned:
            payload = orphan_payload(payload)
        elif not record.is_local_root:
            parent = trace.pending.get(record.parent_span_id)  # type: ignore[arg-type]
            start_ns = parent.record.start_time_ns if parent is not None else None
            parent_id = self._span_pfid(trace, record.parent_span_id, start_ns)  # type: ignore[arg-type]
        span_id = self._span_pfid(trace, record.span_id, record.start_time_ns)
        if record.status == "active":
            self.live_span_changes[span_id] = (trace.instance_id, record.start_time_ns)
        body = span_create_item(
            record,
            trace.instance_id,
            span_id,
            parent_id,
            payload,
            result_payload,
            orphan=pending.orphaned,
            placeholder=pending.too_large_bytes is not None,
        )
        return PlannedItem(body["idempotency_key"], BULK_CREATE_SPAN, body, record.trace_id, record.span_id)

    def _span_pfid(self, trace: RunState, span_id: int, start_ns: int | None) -> str:
        # The PFID embeds the span's start time; we remember created ids so a parent's id is rebuilt exactly.
        cached = trace.span_ids.get(span_id)
        if cached is not None:
            return cached
        if start_ns is None:
            raise LookupError("parent span id requested before the parent was seen")
        value = ids.span_pfid(self.partition, trace.trace_id, span_id, start_ns)
        remember(trace.span_ids, span_id, value)
        return value

    def _plan_finish(
        self, trace: RunState, now: float, span_items: list[PlannedItem], *, flush: bool, shutdown: bool
    ) -> PlannedItem | None:
        creates = [item for item in span_items if item.action == BULK_CREATE_SPAN]
        if len(creates) != len(trace.pending):
            return None  # somebody still waits for a parent: the run is not over
        if len(span_items) - len(creates) != len(trace.live):
            return None  # a live span is still open, or waits for its create
        planned = [trace.pending[item.span_id].record for item in creates]  # type: ignore[index]
        planned = [record for record in planned if record.status != "active"]
        planned.extend(trace.live[item.span_id].ended for item in span_items if item.action == BULK_FINISH_SPAN)  # type: ignore[misc,index]
        roots = [record for record in planned if record.is_local_root]
        root_in = trace.root_delivered or trace.root_skipped or bool(roots)
        # With starts known: over once every span started here has ended and arrived; while one has not (its
        # end may have been lost), the grace period is stretched to the longest a child may wait for its parent.
        waiting_for_open = trace.tracked and bool(trace.open)
        over = trace.tracked and not trace.open
        grace = max(self._grace, self._max_wait) if waiting_for_open else self._grace
        quiet = now - trace.last_activity >= grace
        if not (shutdown or (root_in and (over or quiet or (flush and not waiting_for_open)))):
            return None
        if not span_items and not trace.created:
            return None
        if root_in:
            failed = trace.root_failed or any(record.status == "failed" for record in roots)
            end_ns = max([trace.root_end_ns, *(record.end_time_ns for record in roots)])
        else:
            # Shutdown before the root ended: close the run at its last known span (at its start when none has
            # ended: never before it, which the API refuses), failed if any span failed.
            failed = trace.any_failed or any(record.status == "failed" for record in planned)
            end_ns = max(trace.last_end_ns, trace.first_start_ns, trace.planned_start_ns or 0)
        body = finish_item(trace.instance_id, "failed" if failed else "complete", end_ns)
        return PlannedItem(body["idempotency_key"], BULK_FINISH_INSTANCE, body, trace.trace_id)

    @staticmethod
    def _item(body: dict[str, Any], trace_id: int) -> PlannedItem:
        return PlannedItem(body["idempotency_key"], body["_type"], body, trace_id)

    # ------------------------------------------------------------------ introspection

    def spans_of_open_runs(self) -> dict[int, set[int]]:
        """Trace id -> the spans this process knows in each open run (ended, created, live or open): what a forked
        child is told are its parent's spans."""
        return {
            trace_id: {*trace.span_ids, *trace.created, *trace.pending, *trace.live, *trace.open}
            for trace_id, trace in list(self._traces.items())
        }

    def take_run_changes(self) -> dict[str, int | None]:
        changes, self.run_changes = self.run_changes, {}
        return changes

    def take_live_span_changes(self) -> dict[str, tuple[str, int] | None]:
        changes, self.live_span_changes = self.live_span_changes, {}
        return changes

    @property
    def queued_spans(self) -> int:
        return self._queued

    @property
    def open_traces(self) -> int:
        return len(self._traces)

    def has_due_work(self, now: float) -> bool:
        """Cheap check for the background ticker: is anything ready without new input?"""
        for trace in self._candidates(now, everything=False):
            if trace.rejected:
                continue
            if trace.root_delivered and not trace.pending and now - trace.last_activity >= self._grace:
                return True
            if trace.tracked and has_start_work(trace):
                return True
            for pending in trace.pending.values():
                if (
                    pending.orphaned
                    or now - pending.arrived_at >= self._max_wait
                    or self._parent_resolved(trace, pending.record, frozenset())
                ):
                    return True
        return False
