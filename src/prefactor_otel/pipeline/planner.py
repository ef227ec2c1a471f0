"""The planner: which traces have agent instances, which spans exist, who waits for a parent. No I/O.

The pipeline feeds it mapped spans (`add`), asks for the next ordered list of bulk items (`plan`), sends them
and reports each item's outcome back (`apply`). Everything it emits is keyed deterministically (ids.py), so
re-planning an item that was sent but not acknowledged produces the same item and the server deduplicates it.

Ordering rules: register + start come before a trace's first span; within one
plan parents come before children; a child whose parent has not been created waits here, bounded by count
and age, and is then sent as an orphan (planner_bounds.py) -- never dropped silently. An instance is finished
once its local root has been delivered and the trace has been quiet for a grace period (or at flush/shutdown).
A run whose root never comes (lost on the way, or in a service that does not export here) is finished once every
span of it has been delivered, none started here is still open, and it has been quiet for max_wait_seconds + the
grace period: ended at its last span, failed if any span failed, counted `runs_finished_without_root`. A later span
of its trace (the root after all, in a run that lasted longer) opens a new run of the part rather than being dropped
(docs/live-runs.md, docs/gateway.md).

With span starts (PrefactorSpanProcessor, `start`): a run is registered and started at its local root's start, live
spans are created `active` then finished with `agent_spans/finish`, and a run is finished as soon as every span
started here has ended and been delivered -- the grace period is then only a fallback (docs/live-runs.md).

Parts of a trace (docs/cross-process.md): with a `run_part` (the exporter passes a random one per process, a gateway
its replica's id), this planner's runs are keyed on the agent, the trace and the part, so another process's part of
the same trace never derives the same run id; each run names its trace in its register's `external_identifier`
(`otel:<trace id>:<part>`). A span whose parent is remote arriving after this part's run of its trace finished opens a
new run of the part (the n-th: `otel:<trace id>:<part>:<n>`) instead of being dropped as late. Without a part
(`None`) the ids are those of one process owning the whole trace, and a finished run stays finished.

Late spans (`late_spans_open_a_run`, the gateway's: its spans come through retries and reorderings, and each was
acknowledged): any span of a trace whose run here is finished that the finished run did not create opens the next
run of the part too, counted `runs_reopened_late`; a span that run did create is a client's retry of one already
delivered, counted `spans_duplicate_ignored`, never a second copy (the RunTable keeps each finished run's span ids,
bounded). A span of the new run whose parent is a span of an earlier run is the new run's top at once (made a local
root: no wait of max_wait_seconds for a parent that is not coming), its payload keeping its OTel parent ids and
marking `metadata["prefactor.parent_in_earlier_run"]` (docs/gateway.md, "Late spans"). Such a run is held until it
has been quiet for the grace period, then sent whole -- register, start, spans and finish in one plan -- so a gateway
killed meanwhile leaves no half-sent run on the server (its replay carries the trace's state over and sends the run
whole then: `finished_trace_state` / `restore_finished_trace`). Without the
option (the exporter: a late span of its own process is a span that outlived its run's grace) such a span is
dropped, counted `instance_already_finished`.

In a forked child (`ForkOrigin`, which needs a part: the child's is its own) a trace open at the fork is a run of the
child's own, and a span whose parent is a span of the parent process is a local root of it (docs/live-runs.md,
"Forks and child processes").

One object composed of parts, each a concept of its own: the Planner takes spans in, opens runs, plans (ordering,
finishes) and stops terminated runs; it holds `LiveSpans` (planner_live.py: what span starts add -- open spans, live
spans), `OutcomeRules` (planner_outcomes.py: what the server did with each item) and `MemoryBounds`
(planner_bounds.py: what happens when a memory limit is reached -- orphans, drops, forced finishes), and calls each
through its few methods. The state they share -- open runs, closed runs remembered, queued spans, the journal's
changes, the counters -- has one owner, the `RunTable` (runs.py) the Planner creates and hands to each part.

Threads and locks: no I/O and no lock of its own. Every call is made under the pipeline's state lock
(`Pipeline.state_lock`): by the pipeline (spans, starts, plans and outcomes on the sending thread, or the shutting-down
thread when it spills without the send lock; a forked child's `note_parent_spans` from the thread ending copies;
`has_due_work` from the finisher's ticker) and by the exporter for control (`terminate`, `active_runs`,
`instance_of_trace`: the finisher thread, the sending thread, an application thread asking for its run). The parts and
the RunTable are called only by the Planner, so under that lock too.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

from prefactor_otel.mapping.payload import SpanRecord
from prefactor_otel.mapping.values import as_dict
from prefactor_otel.model import ids
from prefactor_otel.model.http import (
    BULK_CREATE_SPAN,
    BULK_FINISH_INSTANCE,
    BULK_REGISTER,
    AgentSchemaVersionForRegister,
)
from prefactor_otel.pipeline import runs as runs_module
from prefactor_otel.pipeline.items import (
    PlannedItem,
    ended_span_create_item,
    finish_item,
    orphan_payload,
    placeholder_payloads,
    register_item,
    span_create_item,
    start_item,
    wire_data,
)
from prefactor_otel.pipeline.planner_bounds import MemoryBounds
from prefactor_otel.pipeline.planner_live import LiveSpans, has_start_work
from prefactor_otel.pipeline.planner_outcomes import OutcomeRules
from prefactor_otel.pipeline.runs import (
    MAX_FINISHED_TRACES_REMEMBERED,
    SHARED_EMPTY,
    RunState,
    RunTable,
    own,
    passes_filter,
)
from prefactor_otel.pipeline.starts import LivePolicy, StartedSpan
from prefactor_otel.transport.outcomes import ItemOutcome


class ForkOrigin(NamedTuple):
    """In a forked child, what it knows of its parent process: the child is a process of its own, so its part of a
    trace open at the fork is a run of its own (the parent finishes its run whenever it is over, and a finished run
    takes no more spans), told from the parent's by the child's own run part. A span of the child whose parent is a
    span of the parent process is a local root of the child's run (its OTel parent id stays in its payload), as a
    span whose parent is in another service is."""

    # trace id -> spans of the parent process in it (known to its exporter at the fork, current in the forking
    # thread, or whose copy the child ended); grows as the child ends copies (under the pipeline's state lock).
    parent_spans: dict[int, set[int]]


MAX_RUN_PART_LENGTH = 64


def check_run_part(run_part: str | None) -> None:
    """ValueError unless `run_part` is None or a name a run key and an `external_identifier` can carry: 1 to 64
    printable ASCII characters, no space (a gateway's replica id, a process's random hex)."""
    if run_part is None:
        return
    if (
        not isinstance(run_part, str)
        or not 0 < len(run_part) <= MAX_RUN_PART_LENGTH
        or not all("!" <= char <= "~" for char in run_part)
    ):
        raise ValueError(
            f"run_part must be 1 to {MAX_RUN_PART_LENGTH} printable ASCII characters without spaces, "
            f"not {run_part!r:.80}"
        )


def continue_earlier_run(record: SpanRecord) -> None:
    """A span whose parent is a span of an earlier run of its trace (it came after that run was finished): a local
    root of the new run, as a remote parent's span is, its payload keeping its OTel `trace_id` and `parent_span_id`
    and saying where that parent is. The payload is copied (encoded payloads are decoded): rare, off the hot path."""
    record.parent_is_remote = True
    payload = dict(as_dict(record.payload))
    payload["metadata"] = {**(payload.get("metadata") or {}), "prefactor.parent_in_earlier_run": True}
    record.payload = payload


# A run's start item until its first plan builds it (`plan`: never sent, only told apart from None, "started").
_START_NOT_BUILT: dict[str, Any] = {}


# Resource attributes -> the register item's `agent_version` (AgentVersionForRegister dumped). The planner shares
# the returned dict between register items and never modifies it.
AgentVersionBuilder = Callable[[Mapping[str, object]], dict[str, Any]]


class Planner:
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
        run_part: str | None = None,
        late_spans_open_a_run: bool = False,
    ) -> None:
        check_run_part(run_part)
        if fork_origin is not None and run_part is None:
            raise ValueError("a forked child's planner needs a run part of its own (its runs are not its parent's)")
        if late_spans_open_a_run and run_part is None:
            raise ValueError("late spans open a run only with a run part (the new run needs an id of its own)")
        self.partition = partition
        self._agent_key = agent_key
        self._run_part = run_part  # this part of every trace (a process, a gateway replica); None: the whole trace
        self._agent_id = agent_id
        self._environment_id = environment_id
        self._purpose = purpose
        self._agent_version_for = agent_version_for
        self._schema_version = schema_version.model_dump(exclude_none=True)
        self._max_wait = max_wait_seconds
        self._grace = finish_grace_seconds
        # How long a run whose root has not come stays open once everything of it is delivered: its children have
        # waited max_wait_seconds for a parent by then, and the run has been quiet a grace period more.
        self._rootless_idle = max_wait_seconds + finish_grace_seconds
        self._span_filter = span_filter
        self._fork = fork_origin  # in a forked child: what it knows of its parent process
        # trace id -> how many runs of it this part finished and then opened again (newest kept, bounded as the
        # finished runs are): the n-th run of a trace here has a key, so an id, of its own.
        self._reopened: OrderedDict[int, int] = OrderedDict()
        # The state the parts share; read it (tests, introspection) but change it only through the planner.
        self.runs = RunTable(partition)
        # A late span opens the trace's next run (module docstring); the runs' span ids are kept for it.
        self._late_spans_open_a_run = late_spans_open_a_run
        self.runs.keep_finished_spans = late_spans_open_a_run
        self._live = LiveSpans(
            self.runs,
            live_policy=live_policy,
            map_started=map_started,
            max_open_spans=max_open_spans,
            finish_grace_seconds=finish_grace_seconds,
            max_wait_seconds=max_wait_seconds,
        )
        self._outcomes = OutcomeRules(self.runs)
        self._bounds = MemoryBounds(
            self.runs,
            max_queued_spans=max_queued_spans,
            max_waiting_spans=max_waiting_spans,
            max_wait_seconds=max_wait_seconds,
        )

    # ------------------------------------------------------------------ input

    def add(self, records: Iterable[SpanRecord], now: float) -> None:
        """Spans that ended (mapped), in the order they were exported."""
        runs = self.runs
        traces, finished, counters = runs.traces, runs.finished, runs.counters
        earlier_runs = runs.finished_spans  # empty unless late spans open a run
        records = list(records)
        # A new part of a trace whose run here is finished: its spans open a new run, whichever of them (its top
        # span, whose parent is remote, or one of its children) is first in the batch. So do the spans of a trace
        # whose run was finished without its root (`finished` holds True): the root may be among them; and with
        # late_spans_open_a_run, any span the finished run did not create.
        # Computed over the whole batch when its first span of a finished trace is met (rare: most batches have
        # none, and a walk of every record per batch would cost each span).
        new_parts: set[int] | None = None
        counters["spans_added"] += len(records)  # once per batch: the loop below runs per span
        fork, span_filter, live = self._fork, self._span_filter, self._live
        with_pending, move_to_end, queued = runs.with_pending, traces.move_to_end, 0
        # The run the previous span joined, while every span since was of it: a batch holds a run's spans mostly
        # one after another (9 in 10 on both benchmark workloads), so what is true of the run after its first span
        # joined it stays true for the next -- open, not finished, not rejected, last in `traces` (most recently
        # active), in `with_pending`, active `now` -- and is not checked or written again (once per run, not per
        # span). Reset by any span of another run: it may move that run last, or open it.
        joined_id: int | None = None
        joined: RunState | None = None
        # The run's queue, what it created and whether it has spans open or live, read when the run is found (its
        # open and live spans only shrink while spans are added: a span that finds none, none of its run after it
        # in the stretch will either).
        pending: dict[int, SpanRecord] = {}
        arrived: dict[int, float] = {}
        created: dict[int, None] = {}
        watch_live = False
        try:
            for record in records:
                trace_id = record.trace_id
                if fork is not None and self._under_parent_process(trace_id, record.parent_span_id):
                    record.parent_is_remote = True  # a local root of this process's run
                earlier = earlier_runs.get(trace_id) if earlier_runs else None
                if earlier is not None and record.span_id in earlier:
                    counters["spans_duplicate_ignored"] += 1  # created by an earlier run: a retried copy
                    continue
                if joined is not None and trace_id == joined_id:
                    trace = joined
                    if record.start_time_ns < trace.first_start_ns:
                        trace.first_start_ns = record.start_time_ns
                else:
                    joined = None
                    late_run = False
                    if trace_id in finished:
                        if new_parts is None:
                            new_parts = self._new_parts(records)
                        if not self._reopen(trace_id, trace_id in new_parts):
                            # A finished instance accepts no spans; this one came after the grace period.
                            reason = "run_terminated" if trace_id in runs.terminated else "instance_already_finished"
                            runs.drop(1, reason)
                            continue
                        if not record.parent_is_remote:
                            counters["runs_reopened_late"] += 1  # not a new part entering here: a span after its run
                            late_run = self._late_spans_open_a_run
                    found = traces.get(trace_id)
                    if found is None:
                        trace = self._new_trace(trace_id, record.start_time_ns, record.resource)
                        trace.hold_until_quiet = late_run  # sent whole, once quiet (RunState.hold_until_quiet)
                    else:
                        trace = found
                        if record.start_time_ns < trace.first_start_ns:
                            trace.first_start_ns = record.start_time_ns  # e.g. the root, exported after its children
                    if trace.rejected:
                        runs.drop(1, "instance_rejected")
                        continue
                    pending, arrived, created = trace.pending, trace.arrived, trace.created
                    if pending is SHARED_EMPTY:  # runs.own(), inline: the run's queue is made as a span joins it
                        pending = trace.pending = {}
                    if arrived is SHARED_EMPTY:
                        arrived = trace.arrived = {}
                    watch_live = bool(trace.open or trace.live)
                if watch_live and (trace.open or trace.live) and live.ended(trace, record, now):
                    continue  # a live span: its create is replaced, or its finish is due
                span_id = record.span_id
                if span_id in pending or span_id in created:
                    counters["spans_duplicate_ignored"] += 1
                    continue
                if span_filter is not None and not passes_filter(trace, record, span_filter(record), counters):
                    trace.last_activity = now
                    continue
                if earlier is not None and record.parent_span_id in earlier and not record.is_local_root:
                    continue_earlier_run(record)  # its parent is in an earlier run: this run's top, at once
                pending[span_id] = record  # RunTable.enqueue, counted once per batch
                arrived[span_id] = now
                queued += 1
                if record.end_time_ns > trace.last_end_ns:
                    trace.last_end_ns = record.end_time_ns
                if joined is None:
                    with_pending[trace_id] = None
                    trace.last_activity = now
                    move_to_end(trace_id)
                    joined_id, joined = trace_id, trace
        finally:
            runs.queued += queued  # true even if a span raised midway
        self._bounds.enforce(now)

    def _new_parts(self, records: list[SpanRecord]) -> set[int]:
        """The traces of `records` whose spans open a new run of a trace finished here (see `add`)."""
        finished, earlier_runs = self.runs.finished, self.runs.finished_spans
        if not finished or self._run_part is None:
            return set()
        return {
            r.trace_id
            for r in records
            if finished.get(r.trace_id)
            or (r.parent_is_remote and r.trace_id in finished)
            or (r.trace_id in earlier_runs and r.span_id not in earlier_runs[r.trace_id])
        }

    def start(self, started_spans: Iterable[StartedSpan], now: float) -> None:
        """Spans that started in this process (PrefactorSpanProcessor), in the order they started: the run of each is
        found or opened here, the span itself goes to the live spans part."""
        traces, finished, fork, live_open = self.runs.traces, self.runs.finished, self._fork, self._live.open
        # The run the previous span opened in, while every span since was of it (spans start run by run, mostly):
        # open, not finished, not rejected, and `LiveSpans.open` has made it active `now` (`joined`), so neither is
        # checked or written again. Reset by any span of another run.
        joined: RunState | None = None
        for started in started_spans:
            trace_id = started.trace_id
            if (
                fork is not None
                and not started.parent_is_remote
                and self._under_parent_process(trace_id, started.parent_span_id)
            ):
                started = started._replace(parent_is_remote=True)  # forked child: a local root of its own run
            if joined is not None and trace_id == joined.trace_id:
                trace = joined
                if started.start_time_ns < trace.first_start_ns:
                    trace.first_start_ns = started.start_time_ns
            else:
                joined = None
                if trace_id in finished and not self._reopen(trace_id, started.parent_is_remote or finished[trace_id]):
                    continue  # a span of a run already finished (or terminated): its end is counted when it comes
                found = traces.get(trace_id)
                if found is None:
                    resource = getattr(started.span.resource, "attributes", None) or {}
                    trace = self._new_trace(trace_id, started.start_time_ns, resource)
                else:
                    trace = found
                    if started.start_time_ns < trace.first_start_ns:
                        trace.first_start_ns = started.start_time_ns
                if trace.rejected:
                    continue
            if started.span_id in trace.created or started.span_id in trace.pending:
                continue  # the span has already ended and arrived
            live_open(trace, started, now, joined is not None)
            joined = trace
        self._live.limit_open()

    def _under_parent_process(self, trace_id: int, parent_span_id: int | None) -> bool:
        """In a forked child: is this parent a span of the parent process (so the span is a local root here)?"""
        fork = self._fork
        if fork is None or parent_span_id is None:
            return False
        spans = fork.parent_spans.get(trace_id)
        return spans is not None and parent_span_id in spans

    def _reopen(self, trace_id: int, new_part: bool) -> bool:
        """A span of a trace whose run here is finished: does it open a new run of this part? Yes for a new entry
        into this process from elsewhere (`new_part`: a span whose parent is remote, e.g. a second request of the
        same trace) or for a trace whose run was finished without its root (the root may come late: a run that
        lasted longer than the planner waited), with late_spans_open_a_run for any span the finished run did not
        create (`new_part` too), and in a forked child for any span of a trace open at the fork (the child's work in
        a trace it shares with its parent comes in bursts: a pool worker's tasks). Never for a run
        terminated in Prefactor (its later spans stay dropped), nor without a run part (the new run could not have
        an id of its own). Otherwise the span is late, and dropped."""
        if self._run_part is None or trace_id in self.runs.terminated:
            return False
        fork = self._fork
        if not (new_part or (fork is not None and trace_id in fork.parent_spans)):
            return False
        self.runs.finished.pop(trace_id, None)
        reopened = self._reopened
        reopened[trace_id] = reopened.pop(trace_id, 0) + 1
        while len(reopened) > MAX_FINISHED_TRACES_REMEMBERED:
            reopened.popitem(last=False)
        return True

    def note_parent_spans(self, trace_id: int, span_ids: Iterable[int]) -> None:
        """In a forked child: these spans are the parent process's (the child ended its copies of them). Spans
        waiting here for one of them become local roots of this process's run."""
        if self._fork is None:
            return
        known = self._fork.parent_spans.setdefault(trace_id, set())
        known.update(span_ids)
        trace = self.runs.traces.get(trace_id)
        if trace is None:
            return
        for record in trace.pending.values():
            if record.parent_span_id in known:
                record.parent_is_remote = True
        for span_id, started in list(trace.open.items()):
            if started.parent_span_id in known:
                trace.open[span_id] = started._replace(parent_is_remote=True)

    def _new_trace(self, trace_id: int, first_start_ns: int, resource: Mapping[str, object]) -> RunState:
        key = self._agent_key
        trace_name: str | None = None
        if self._run_part is not None:
            # This part's run of the trace (its n-th, after n that finished here): no other part derives its id.
            key = f"{key}\x1fpart\x1f{self._run_part}"
            trace_name = f"otel:{trace_id:032x}:{self._run_part}"
            again = self._reopened.get(trace_id, 0)
            if again:
                key = f"{key}\x1f{again}"
                trace_name = f"{trace_name}:{again}"
        instance_id = ids.instance_pfid(self.partition, key, trace_id, first_start_ns)
        register = register_item(
            instance_id,
            agent_version=self._agent_version_for(resource),
            schema_version=self._schema_version,
            agent_id=self._agent_id,
            environment_id=self._environment_id,
            purpose=self._purpose,
            external_identifier=trace_name,
        )
        # The start item is built when first planned (at the earliest start seen by then): a placeholder till then.
        trace = RunState(trace_id, instance_id, register, _START_NOT_BUILT)
        trace.first_start_ns = first_start_ns
        self.runs.open_run(trace)
        return trace

    # ------------------------------------------------------------------ control

    def terminate(self, trace_id: int) -> int:
        """The run was terminated in Prefactor: send nothing more for it (what is waiting is dropped, counted, and
        so are its later spans). Returns how many waiting spans were dropped."""
        runs = self.runs
        if trace_id in runs.terminated:
            return 0
        runs.remember_terminated(trace_id)
        trace = runs.traces.get(trace_id)
        if trace is None:
            runs.finished[trace_id] = False
            return 0
        dropped = runs.clear_pending(trace) + self._live.close_run(trace)
        if dropped:
            runs.drop(dropped, "run_terminated")
        runs.counters["runs_terminated"] += 1
        runs.forget(trace)
        return dropped

    def discard_all(self, reason: str) -> int:
        """Forget every run and span held here, the spans counted `dropped[reason]`; returns how many.

        For when nothing held can ever be sent by this process and nothing can keep it (the server refused the
        token and there is no spool). Counted: pending spans and live spans that ended (their finish was due);
        spans still running are counted when they end and come back (a new run for them, discarded in turn).
        """
        runs = self.runs
        count = 0
        for trace in runs.traces.values():
            count += len(trace.pending) + self._live.close_run(trace)
            if trace.journaled:
                runs.run_changes[trace.instance_id] = None
        runs.traces.clear()
        runs.with_pending.clear()
        runs.queued = 0
        if count:
            runs.drop(count, reason)
        return count

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
            if trace.hold_until_quiet and not (flush or shutdown) and now - trace.last_activity < self._grace:
                continue  # a late run: nothing of it is sent until it can be sent whole
            order = self._creation_order(trace)
            if len(order) < len(trace.pending):
                # Some span waits for a parent (the common case, every span reachable, skips this walk): release
                # the chains that waited too long, or all of them at shutdown, then order again.
                if shutdown:
                    self._bounds.orphan_waiting_tops(trace, "shutdown", None)
                else:
                    self._bounds.orphan_waiting_tops(trace, "age", now)
                order = self._creation_order(trace)
            roots: list[SpanRecord] = []  # the ended local roots among the creates (one per run at most, usually)
            span_items = self._create_items(trace, order, roots)
            if trace.root_skipped and not trace.pending and not trace.created and not trace.registered:
                if shutdown or flush or now - trace.last_activity >= self._grace:
                    empty.append(trace.trace_id)  # the filter kept nothing: no agent run to report
                continue
            finishes = self._live.plan_finishes(trace, span_items, now, shutdown=shutdown) if trace.live else []
            finish = self._plan_finish(trace, now, order, roots, finishes, flush=flush, shutdown=shutdown)
            if finishes:
                span_items.extend(finishes)
            announce = trace.announce and (trace.register_item is not None or trace.start_item is not None)
            if not span_items and finish is None and not announce:
                continue
            if not trace.journaled:
                trace.journaled = True  # from this plan on the run may exist on the server
                # Its start at least: a run adopted before any span of it ended is finished no earlier.
                opened_at = max(trace.last_end_ns, trace.root_end_ns, trace.first_start_ns)
                self.runs.run_changes[trace.instance_id] = opened_at
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
            del self.runs.traces[trace_id]
        self._outcomes.expect(items)
        return items

    def _candidates(self, now: float, *, everything: bool) -> list[RunState]:
        """Traces that may have work: those with pending spans, and those quiet for the grace period.

        Not every open trace: with thousands of runs waiting out their grace period, a plan per export must not
        cost O(open runs). `_traces` is ordered by last activity (oldest first), so the quiet ones are a prefix.
        """
        traces, with_pending = self.runs.traces, self.runs.with_pending
        if everything:
            return list(traces.values())
        chosen: dict[int, RunState] = {}
        for trace_id, trace in traces.items():
            if now - trace.last_activity < self._grace:
                break
            chosen[trace_id] = trace
        release_queue = self.runs.release_queue
        for trace_id in list(with_pending):
            run = traces.get(trace_id)
            if run is not None and run.pending is not SHARED_EMPTY and not run.pending and not run.open:
                release_queue(run)  # emptied other than by the outcomes: no queue held while it waits out its grace
            if run is None or not (run.pending or (run.tracked and has_start_work(run))):
                del with_pending[trace_id]  # cleaned lazily: cheaper than at every removal
            else:
                chosen.setdefault(trace_id, run)
        return list(chosen.values())

    @staticmethod
    def _creation_order(trace: RunState) -> list[SpanRecord]:
        """The pending spans that can be created now, parents before children: those whose parent is created (or
        that need none: local roots, orphans), then their descendants, breadth first. A span missing from it waits
        for a parent (runs.waiting_chains: the same reachability, span by span)."""
        pending_spans = trace.pending
        if not pending_spans:
            return []
        created, orphaned = trace.created, trace.orphaned
        children: dict[int, list[SpanRecord]] = {}
        order: list[SpanRecord] = []
        append = order.append
        for record in pending_spans.values():
            parent_span_id = record.parent_span_id
            if (
                parent_span_id is None
                or record.parent_is_remote
                or parent_span_id in created
                or (orphaned and record.span_id in orphaned)
            ):
                append(record)
            else:
                below = children.get(parent_span_id)
                if below is None:
                    children[parent_span_id] = [record]
                else:
                    below.append(record)
        if children:
            # `order` grows while it is walked: each span's children join the end (a queue, without a deque). A
            # list's iterator reads by index against the current length, so it reaches what is appended behind it.
            pop, extend = children.pop, order.extend
            for parent in order:
                below = pop(parent.span_id, None)
                if below is not None:
                    extend(below)
                    if not children:
                        break
        return order

    def _create_items(self, trace: RunState, order: list[SpanRecord], roots: list[SpanRecord]) -> list[PlannedItem]:
        """The creates of a run's pending spans, in `order`; the ended local roots among them join `roots` (what
        the run's finish needs, found here rather than in a pass of its own). Once per exported span, so the
        common case -- an ended span with its own payloads -- is built here with the run's fields read once; the
        rest go to _create_item."""
        if not order:
            return []
        span_ids, pending_spans, instance_id = trace.span_ids, trace.pending, trace.instance_id
        if span_ids is SHARED_EMPTY:  # runs.own(), inline: a span planned is remembered with its Prefactor id
            span_ids = trace.span_ids = {}
        partition, span_pfid, trace_id = self.partition, ids.span_pfid, trace.trace_id
        bound = runs_module.MAX_SPANS_REMEMBERED_PER_TRACE  # remember()'s bound, read at the call (tests lower it)
        orphaned, too_large = trace.orphaned, trace.too_large
        special = bool(orphaned or too_large)  # most runs have no span sent as an orphan or a placeholder
        items: list[PlannedItem] = []
        append = items.append
        for record in order:
            otel_span_id = record.span_id
            if record.status == "active" or (special and (otel_span_id in orphaned or otel_span_id in too_large)):
                append(self._create_item(trace, record, roots))
                continue
            # Prefactor ids: a span's is often known already (a child asked for it as its parent's).
            parent_id: str | None = None
            parent_span_id = record.parent_span_id
            if parent_span_id is not None and not record.parent_is_remote:  # not a local root
                parent_id = span_ids.get(parent_span_id)
                if parent_id is None:
                    parent = pending_spans.get(parent_span_id)
                    if parent is None:
                        parent_id = self.runs.span_pfid(trace, parent_span_id, None)  # LookupError: never seen
                    else:  # RunTable.span_pfid and remember(), without the calls
                        parent_id = span_pfid(partition, trace_id, parent_span_id, parent.start_time_ns)
                        span_ids[parent_span_id] = parent_id
                        if len(span_ids) > bound:
                            del span_ids[next(iter(span_ids))]
            else:
                roots.append(record)
            span_id = span_ids.get(otel_span_id)
            if span_id is None:  # RunTable.span_pfid and remember(), without the calls
                span_id = span_pfid(partition, trace_id, otel_span_id, record.start_time_ns)
                span_ids[otel_span_id] = span_id
                if len(span_ids) > bound:
                    del span_ids[next(iter(span_ids))]
            body = ended_span_create_item(record, instance_id, span_id, parent_id)
            append(PlannedItem(body["idempotency_key"], BULK_CREATE_SPAN, wire_data(body), trace_id, otel_span_id))
        return items

    def _create_item(self, trace: RunState, record: SpanRecord, roots: list[SpanRecord]) -> PlannedItem:
        """The create of any pending span: orphaned, a placeholder, live (`active`), or as _create_items builds."""
        otel_span_id = record.span_id
        trace.attempted = attempted = own(trace.attempted)
        attempted[otel_span_id] = None  # the server may have it from now on (read for live spans)
        parent_id: str | None = None
        orphaned = otel_span_id in trace.orphaned
        if not orphaned and not record.is_local_root:
            parent = trace.pending.get(record.parent_span_id)  # type: ignore[arg-type]
            start_ns = parent.start_time_ns if parent is not None else None
            parent_id = self.runs.span_pfid(trace, record.parent_span_id, start_ns)  # type: ignore[arg-type]
        span_id = self.runs.span_pfid(trace, otel_span_id, record.start_time_ns)
        payload, result_payload = record.payload, record.result_payload
        too_large = trace.too_large.get(otel_span_id) if trace.too_large else None
        if too_large is not None:
            payload, result_payload = placeholder_payloads(record, too_large)
        if orphaned:
            payload = orphan_payload(payload)
        if record.status == "active":
            self.runs.live_span_changes[span_id] = (trace.instance_id, record.start_time_ns)
        elif record.is_local_root:
            roots.append(record)
        body = span_create_item(
            record,
            trace.instance_id,
            span_id,
            parent_id,
            payload,
            result_payload,
            orphan=orphaned,
            placeholder=too_large is not None,
        )
        return PlannedItem(body["idempotency_key"], BULK_CREATE_SPAN, wire_data(body), record.trace_id, otel_span_id)

    def _plan_finish(
        self,
        trace: RunState,
        now: float,
        order: list[SpanRecord],
        roots: list[SpanRecord],
        finishes: list[PlannedItem],
        *,
        flush: bool,
        shutdown: bool,
    ) -> PlannedItem | None:
        """The run's finish, if it is due with this plan: `order` the spans it creates (`_creation_order`), `roots`
        the ended local roots among them (`_create_items`), `finishes` its live spans' finishes."""
        # With starts known: over once every span started here has ended and arrived; while one has not (its
        # end may have been lost), the grace period is stretched to the longest a child may wait for its parent.
        waiting_for_open = trace.tracked and bool(trace.open)
        over = trace.tracked and not trace.open
        grace = max(self._grace, self._max_wait) if waiting_for_open else self._grace
        quiet = now - trace.last_activity >= grace
        if not (shutdown or flush or over or quiet or trace.finished_without_root):
            # Not yet, whatever the spans planned (most plans of a run in its grace period): a run whose root is in
            # waits for one of these, and one without its root for an idle time (max wait + grace) longer still.
            return None
        # Every pending span is created in this plan and every live span finished, or the run is not over. The
        # planned ended spans that are local roots: the creates' (found as they were built) and the live spans'.
        if len(order) != len(trace.pending):
            return None  # somebody still waits for a parent: the run is not over
        live_spans = trace.live
        if len(finishes) != len(live_spans):
            return None  # a live span is still open, or waits for its create
        ended_live: list[SpanRecord] = []
        for item in finishes:
            ended = live_spans[item.span_id].ended  # type: ignore[index]  # a live span's finish names it
            if ended is not None:  # always: a finish is planned only for a live span that ended
                ended_live.append(ended)
                if ended.parent_span_id is None or ended.parent_is_remote:  # a local root
                    roots.append(ended)
        root_in = trace.root_delivered or trace.root_skipped or bool(roots)
        rootless = not root_in and (trace.finished_without_root or self._over_without_root(trace, now))
        if not (shutdown or rootless or (root_in and (over or quiet or (flush and not waiting_for_open)))):
            return None
        if not order and not finishes and not trace.created:
            return None
        if rootless and not trace.finished_without_root:
            trace.finished_without_root = True  # over now, whatever comes before the finish is delivered
            self.runs.counters["runs_finished_without_root"] += 1
        if root_in:
            failed = trace.root_failed or any(record.status == "failed" for record in roots)
            end_ns = max([trace.root_end_ns, *(record.end_time_ns for record in roots)])
        else:
            # Shutdown before the root ended, or a root that never came: close the run at its last known span (at
            # its start when none has ended: never before it, which the API refuses), failed if any span failed.
            failed = (
                trace.any_failed
                or any(record.status == "failed" for record in order)
                or any(record.status == "failed" for record in ended_live)
            )
            end_ns = max(trace.last_end_ns, trace.first_start_ns, trace.planned_start_ns or 0)
        body = finish_item(trace.instance_id, "failed" if failed else "complete", end_ns)
        return PlannedItem(body["idempotency_key"], BULK_FINISH_INSTANCE, wire_data(body), trace.trace_id, None)

    def _over_without_root(self, trace: RunState, now: float) -> bool:
        """The rule for a run whose root has not come (never in this planner's hands: the exporter alone and the
        gateway see no span starts, and the root may be lost or in a service that does not export here): over
        once every span of it is delivered, none started here is still open (a root known to be running is waited
        for), and it has been quiet for max_wait_seconds + the grace period. Checked for runs the plan already
        looks at (quiet for the grace period, or with pending spans), so it costs nothing per span."""
        return (
            not trace.root_delivered
            and not trace.root_skipped
            and not trace.pending
            and not trace.open
            and not trace.live
            and bool(trace.created)
            and now - trace.last_activity >= self._rootless_idle
        )

    @staticmethod
    def _item(body: dict[str, Any], trace_id: int) -> PlannedItem:
        """A run's register (a dict: its schema set is sent once, schema_once.py) or start (its bytes)."""
        action = body["_type"]
        data = body if action == BULK_REGISTER else wire_data(body)
        return PlannedItem(body["idempotency_key"], action, data, trace_id, None)

    # ------------------------------------------------------------------ introspection

    # ------------------------------------------------------------------ outcomes (planner_outcomes.py)

    def apply(self, outcomes: Mapping[str, ItemOutcome], now: float, *, spooled: bool = False) -> None:
        """Record what the server did with each item of the last plan. Keys not given = not processed."""
        self._outcomes.apply(outcomes, now, spooled=spooled)

    def handoff(self, items: Iterable[PlannedItem], now: float) -> None:
        """These items went to the durable spool: treat them as delivered (the spool sends them in order)."""
        self._outcomes.handoff(items, now)

    def refused(self, keys: Iterable[str] | None) -> None:
        """Items of the last plan in a request refused whole (the token) or never sent (the proxy): their runs'
        registers were not accepted (OutcomeRules.refused). None: every item of the last plan."""
        self._outcomes.refused(keys)

    def replace_with_placeholder(self, key: str, original_bytes: int) -> bool:
        """A span too large for any request: next plans send a small placeholder in its place (False if the item
        is not a span create of the last plan, or is one already)."""
        return self._outcomes.replace_with_placeholder(key, original_bytes)

    # ------------------------------------------------------------------ introspection

    def spans_of_open_runs(self) -> dict[int, set[int]]:
        """Trace id -> the spans this process knows in each open run: what a forked child is told are its parent's
        spans."""
        return self.runs.spans_of_open_runs()

    def instance_of_trace(self, trace_id: int) -> str | None:
        return self.runs.instance_of_trace(trace_id)

    def trace_of_instance(self, instance_id: str) -> int | None:
        """The trace of a run this process opened; None for one it did not open (e.g. replayed from a spool)."""
        return self.runs.trace_of_instance(instance_id)

    def active_runs(self) -> list[tuple[str, int]]:
        """(instance id, trace id) of the runs registered here and not finished: what the control poller asks."""
        return self.runs.active_runs()

    def take_run_changes(self) -> dict[str, int | None]:
        return self.runs.take_run_changes()

    def take_live_span_changes(self) -> dict[str, tuple[str, int] | None]:
        return self.runs.take_live_span_changes()

    @property
    def counters(self) -> Counter[str]:
        return self.runs.counters

    @property
    def dropped(self) -> Counter[str]:
        """Span creates dropped, by reason; instance actions: `actions_dropped`."""
        return self.runs.dropped

    @property
    def actions_dropped(self) -> Counter[str]:
        return self.runs.actions_dropped

    @property
    def queued_spans(self) -> int:
        return self.runs.queued

    @property
    def open_traces(self) -> int:
        return len(self.runs.traces)

    @property
    def open_spans(self) -> int:
        """Spans started here (PrefactorSpanProcessor) and not yet received ended, over all runs (bounded)."""
        return self._live.open_spans

    def has_due_work(self, now: float) -> bool:
        """Cheap check for the background ticker: is anything ready without new input?"""
        for trace in self._candidates(now, everything=False):
            if trace.rejected:
                continue
            if trace.hold_until_quiet and now - trace.last_activity < self._grace:
                continue
            if trace.root_delivered and not trace.pending and now - trace.last_activity >= self._grace:
                return True
            if self._over_without_root(trace, now):
                return True
            if trace.tracked and has_start_work(trace):
                return True
            arrived, orphaned = trace.arrived, trace.orphaned
            for span_id, record in trace.pending.items():
                if (
                    span_id in orphaned
                    or now - arrived[span_id] >= self._max_wait
                    or self._parent_resolved(trace, record, frozenset())
                ):
                    return True
        return False

    # ------------------------------------------------------------------ a finished trace carried over (gateway replay)

    def finished_trace_state(self, trace_id: int) -> tuple[int, list[int]] | None:
        """What a later process needs to treat this finished trace's spans as this planner would: how many times a
        run of it was opened again here (`_reopened`: its next run is that plus one) and the span ids its runs
        created (sorted). None while a run of it is open, or when its ids are not kept (late_spans_open_a_run off,
        never finished here, terminated, or forgotten past the bounds). The gateway writes it in its
        finished-traces file (gateway/ledger.py)."""
        runs = self.runs
        if trace_id in runs.traces or trace_id not in runs.finished:
            return None
        span_ids = runs.finished_span_ids(trace_id)
        if span_ids is None:
            return None
        return self._reopened.get(trace_id, 0), span_ids

    def restore_finished_trace(self, trace_id: int, runs_opened: int, span_ids: Iterable[int]) -> bool:
        """The inverse of `finished_trace_state`, before any span of the trace is added (the gateway's replay): the
        trace is finished here, its runs created `span_ids` (a span among them that comes again is a retried copy,
        `spans_duplicate_ignored`) and was opened again `runs_opened` times (any other span opens run
        `runs_opened + 1`, held and sent whole once quiet, as live). False (nothing changed) unless late spans open
        a run here and the planner knows nothing of the trace yet."""
        runs = self.runs
        if not self._late_spans_open_a_run or runs_opened < 0:
            return False
        if trace_id in runs.traces or trace_id in runs.finished or trace_id in runs.terminated:
            return False
        if runs_opened:
            reopened = self._reopened
            reopened[trace_id] = runs_opened
            reopened.move_to_end(trace_id)
            while len(reopened) > MAX_FINISHED_TRACES_REMEMBERED:
                reopened.popitem(last=False)
        # Closed as a run of it that created those spans would have been: remembered finished, its ids kept, within
        # the same bounds (RunTable.forget).
        carried = RunState(trace_id, "", None, None)
        carried.created = dict.fromkeys(span_ids)
        runs.forget(carried)
        return True
