"""The state the planner keeps: one open run (`RunState`), all of them (`RunTable`), and the questions it asks
about a run. No I/O, no locks: the planner and its parts (planner*.py), called only under the pipeline's state
lock, are the only callers.

- `RunState`: ids, what was registered and created, the spans waiting to be sent, the root's outcome, and the
  span filter's bookkeeping. Every per-span collection is bounded (`remember`): a run that lasts for hours keeps
  the newest MAX_SPANS_REMEMBERED_PER_TRACE span ids; a late child of a forgotten parent waits, then goes as an
  orphan.
- A pending span is its record in `RunState.pending` (span id -> `SpanRecord`, in the order queued) and its arrival
  in `RunState.arrived`: no object of its own. What is rare -- sent as an orphan, replaced by a placeholder, its
  create tried while live -- is in the run's side collections keyed by span id (`orphaned`, `too_large`,
  `attempted`), which hold pending spans only: whoever takes a span out of `pending` takes it out of them too
  (`RunTable.dequeue`, `clear_pending`; the outcomes' inline path, planner_outcomes.py).
- Side collections cost nothing until used. Every dict field of a `RunState` (its queue, what it created, its
  spans' Prefactor ids, the rare per-span state, the filter's and the starts' bookkeeping) is the one
  `SHARED_EMPTY` dict until the run writes it: a new run allocates no dict, and a run waiting out its finish grace
  (thousands of them under load) holds two -- what it created and its spans' ids -- not twelve, its queue given
  back once delivered (`RunTable.release_queue`). Why: each dict a run holds is memory and one more object on the
  host's GC count, so full collections of the host's heap came sooner with every run open (issue 22). The rule:
  read a side collection as it is; to write one, take it with `own` and store it back first
  (`trace.orphaned = orphaned = own(trace.orphaned)`; the planner's hot paths inline it, once per run); to remove
  from one that may be unwritten, guard by its truth (`if trace.orphaned: trace.orphaned.pop(...)`: the shared
  empty is falsy); to empty one, store `SHARED_EMPTY` back. The shared empty is a read-only view, so a write that
  missed the rule raises and fails in tests instead of filling the one dict every run shares.
- `RunTable`: the one owner of the state the planner's parts share -- the open runs, what is remembered of the
  runs closed (finished, terminated, opened here; with `keep_finished_spans`, the span ids each finished run of a
  trace created: `EarlierSpans`), the count of queued spans, the journal's changes and the counters. The planner
  creates it and hands it to each part; its methods keep the counts true as spans are queued, dropped and runs
  forgotten.
- Waiting chains: a span waits while its parent is neither created nor on its way; `waiting_chains` groups the
  waiting spans under the top of each chain, so the planner can release a whole chain, links intact, by
  orphaning its top only.
- The span filter (PREFACTOR_SPAN_FILTER=genai): `passes_filter` keeps the spans the filter wants and their
  ancestors, and re-parents a kept span past filtered-out ancestors.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections import Counter, OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeVar, cast

from prefactor_otel.mapping.payload import SpanRecord
from prefactor_otel.mapping.values import as_dict, hex_span_id
from prefactor_otel.model import ids
from prefactor_otel.pipeline.starts import StartedSpan

# Span ids remembered per open run (created spans, Prefactor ids, filter bookkeeping). A run that lives for hours
# would otherwise grow without bound; a late child of a forgotten parent waits and is then sent as an orphan.
MAX_SPANS_REMEMBERED_PER_TRACE = 10_000
# Runs remembered once closed: finished (a late span of one is dropped, counted), terminated in Prefactor, and opened
# by this process (what tells its own runs from runs replayed from another process's spool).
MAX_FINISHED_TRACES_REMEMBERED = 10_000
MAX_TERMINATED_TRACES_REMEMBERED = 10_000
# Span ids remembered over all finished runs with `keep_finished_spans` (the gateway: what tells a late span from a
# retried copy of one already delivered). 8 bytes each (EarlierSpans): 8 MB at most, beside the traces' bound above.
MAX_FINISHED_SPANS_REMEMBERED = 1_000_000


class EarlierSpans:
    """The span ids the finished runs of one trace created here, sorted in an array of unsigned 64-bit ints: 8 bytes
    a span where a frozenset of ints takes about 60, and asked only for spans of finished traces (rare), so a binary
    search is cheap enough. Immutable: a later run's spans make a new one (`joined`)."""

    __slots__ = ("_ids",)

    def __init__(self, span_ids: Iterable[int]) -> None:
        self._ids = array("Q", sorted(set(span_ids)))

    def __contains__(self, span_id: object) -> bool:
        ids_ = self._ids
        if not isinstance(span_id, int):
            return False
        index = bisect_left(ids_, span_id)
        return index < len(ids_) and ids_[index] == span_id

    def __len__(self) -> int:
        return len(self._ids)

    def joined(self, span_ids: Iterable[int]) -> EarlierSpans:
        return EarlierSpans([*self._ids, *span_ids])


_K = TypeVar("_K")
_V = TypeVar("_V")


# The one empty dict every run's side collection is until the run writes it (`own`): a read-only view of an empty
# dict. Reads (`in`, `len`, iteration, `get`) find nothing, as in any empty dict, and `in` and `len` cost what they
# cost on a dict (a dict subclass would take Python's slow path for `in`); any write, insertion or removal, raises
# (TypeError, AttributeError), so a write site that missed `own` -- or a removal not guarded by the collection's
# truth, the shared empty being falsy -- fails at once, in tests, instead of filling one dict every run shares. Typed
# as the dict it stands for: what the fields are once written.
SHARED_EMPTY: dict[Any, Any] = cast("dict[Any, Any]", MappingProxyType({}))


def shared_empty() -> dict[Any, Any]:
    """What a new run's side collections are (RunState's declarations): the shared empty, not a dict of its own."""
    return SHARED_EMPTY


def own(collection: dict[_K, _V]) -> dict[_K, _V]:
    """A run's side collection, to write: itself, or a new dict of the run's own in place of the shared empty --
    which the caller stores back before writing (`trace.orphaned = orphaned = own(trace.orphaned)`)."""
    return {} if collection is SHARED_EMPTY else collection


@dataclass(slots=True)
class LiveSpan:
    """A span created active: its payload at the start (to tell what appeared later) and, once it has ended and
    its create may have reached the server, the ended record to finish it with."""

    started_payload: dict[str, Any]
    ended: SpanRecord | None = None


@dataclass(slots=True, init=False)
class RunState:
    """One open run. The fields below, with their defaults, are what a new run holds; `__init__` is written out
    (one run is opened per trace: the generated one calls a factory per dict field and tests each argument against
    its sentinel) and held to these declarations by tests/test_planner_items.py."""

    trace_id: int
    instance_id: str
    register_item: dict[str, Any] | None  # dropped once the server has it: open runs hold little
    start_item: dict[str, Any] | None
    registered: bool = False
    started: bool = False
    # Side collections (every dict field below): the shared empty until the run writes one (module docstring).
    created: dict[int, None] = field(default_factory=shared_empty)  # an insertion-ordered set, bounded
    # Spans to create: span id -> record, in the order queued (a live span ended before its create was tried keeps
    # its place, its ended record replacing the live one), and when each was queued (`now` of the call that queued
    # it; a live span's when it ended). The rare state of a pending span is in the side collections below, which
    # never hold a span that is not pending.
    pending: dict[int, SpanRecord] = field(default_factory=shared_empty)
    arrived: dict[int, float] = field(default_factory=shared_empty)
    # Insertion-ordered sets as dicts: an empty dict, or one of ints only, is no object for the GC to track.
    orphaned: dict[int, None] = field(default_factory=shared_empty)  # sent without its parent link (RunTable.orphan)
    too_large: dict[int, int] = field(default_factory=shared_empty)  # -> its bytes: a small placeholder is sent
    attempted: dict[int, None] = field(default_factory=shared_empty)  # a live span's create planned: server may have it
    root_delivered: bool = False
    root_failed: bool = False
    root_end_ns: int = 0
    last_end_ns: int = 0
    # The earliest start of any span of the run seen so far (ended, or started with PrefactorSpanProcessor): what
    # the run's start item carries when it is first planned, so the run's window covers its spans whichever of
    # them was exported first. Fixed once the start is planned (`planned_start_ns`): the server may have it then.
    first_start_ns: int = 0
    planned_start_ns: int | None = None
    any_failed: bool = False
    last_activity: float = 0.0
    rejected: bool = False
    # span filter: spans with an exported descendant (kept whole), and filtered spans -> their OTel parent
    needed: dict[int, None] = field(default_factory=shared_empty)
    skipped: dict[int, int | None] = field(default_factory=shared_empty)
    root_skipped: bool = False
    # OTel span id -> Prefactor id, for the spans seen: a parent's id is rebuilt exactly for its children
    span_ids: dict[int, str] = field(default_factory=shared_empty)
    journaled: bool = False  # the run is in `run_changes` as open: this process must finish it
    # Starts (PrefactorSpanProcessor): spans started here and not yet received ended, live spans, and whether the
    # run is to be registered before any span of it is sent (its local root has started).
    tracked: bool = False
    open: dict[int, StartedSpan] = field(default_factory=shared_empty)  # started here, not yet received ended
    open_live: dict[int, None] = field(default_factory=shared_empty)  # the open spans gone live (created, planned)
    live: dict[int, LiveSpan] = field(default_factory=shared_empty)
    announce: bool = False
    # Its finish was planned without its root (the planner's rule for a root that never comes): from then on the
    # run is over whatever comes, and once closed a later span of its trace opens a new run (planner.py).
    finished_without_root: bool = False
    # A run opened for spans that came after the trace's run was finished (late_spans_open_a_run): nothing of it is
    # planned until it has been quiet for the grace period, when it is sent whole, finish included. A gateway killed
    # before then has registered nothing of it, so it leaves no run `active`; its replay sends the run whole.
    hold_until_quiet: bool = False

    def __init__(
        self,
        trace_id: int,
        instance_id: str,
        register_item: dict[str, Any] | None,
        start_item: dict[str, Any] | None,
    ) -> None:
        self.trace_id = trace_id
        self.instance_id = instance_id
        self.register_item = register_item
        self.start_item = start_item
        self.registered = False
        self.started = False
        self.created = SHARED_EMPTY
        self.pending = SHARED_EMPTY
        self.arrived = SHARED_EMPTY
        self.orphaned = SHARED_EMPTY
        self.too_large = SHARED_EMPTY
        self.attempted = SHARED_EMPTY
        self.root_delivered = False
        self.root_failed = False
        self.root_end_ns = 0
        self.last_end_ns = 0
        self.first_start_ns = 0
        self.planned_start_ns = None
        self.any_failed = False
        self.last_activity = 0.0
        self.rejected = False
        self.needed = SHARED_EMPTY
        self.skipped = SHARED_EMPTY
        self.root_skipped = False
        self.span_ids = SHARED_EMPTY
        self.journaled = False
        self.tracked = False
        self.open = SHARED_EMPTY
        self.open_live = SHARED_EMPTY
        self.live = SHARED_EMPTY
        self.announce = False
        self.finished_without_root = False
        self.hold_until_quiet = False


class RunTable:
    """The runs of one planner: those open, what is remembered of those closed, and the counters of what became
    of their spans. Owned by the Planner, shared with its parts (LiveSpans, OutcomeRules, MemoryBounds), which
    read and change it through these fields and methods; only under the pipeline's state lock."""

    def __init__(self, partition: int) -> None:
        self.partition = partition  # the account partition every Prefactor id of these runs is built in
        # trace id -> open run, least recently active first (a run moves to the end when a span of it arrives)
        self.traces: OrderedDict[int, RunState] = OrderedDict()
        # closed runs -> whether the run was finished without its root: a late span of one is dropped, unless the
        # run's root never came (the late span may be it: the planner opens a new run of the trace for it)
        self.finished: OrderedDict[int, bool] = OrderedDict()
        self.terminated: OrderedDict[int, None] = OrderedDict()  # runs terminated in Prefactor: nothing more sent
        # With `keep_finished_spans` (the planner's late_spans_open_a_run): trace id -> the span ids its finished
        # runs here created, newest trace last, kept while a later run of the trace is open too. A span of the trace
        # listed here is a retried copy (ignored); any other opens the trace's next run. Bounded by traces
        # (MAX_FINISHED_TRACES_REMEMBERED) and by span ids over all traces (MAX_FINISHED_SPANS_REMEMBERED): a
        # finished trace whose ids were forgotten drops its later spans, as without the option.
        self.keep_finished_spans = False
        self.finished_spans: OrderedDict[int, EarlierSpans] = OrderedDict()
        self._finished_span_count = 0
        # instance id -> trace id of every run this planner opened (its own spans), newest kept: what tells this
        # process's runs from runs replayed from another process's spool when Prefactor terminates one.
        self.own_runs: OrderedDict[str, int] = OrderedDict()
        self.with_pending: dict[int, None] = {}  # trace ids that (may) have pending spans, in arrival order
        self.queued = 0  # pending spans over all runs
        # instance id -> latest activity (ns) of runs this process must finish, or None once finished or handed
        # off: what the journal of open runs records (taken by the exporter after every plan and delivery).
        self.run_changes: dict[str, int | None] = {}
        # Prefactor span id -> (instance id, start ns) of live spans whose active create may reach the server, or
        # None once their finish is delivered or handed off: journaled with their run (a killed process's live
        # spans are finished by the process that adopts its runs).
        self.live_span_changes: dict[str, tuple[str, int] | None] = {}
        self.counters: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()  # span creates only; instance actions: `actions_dropped`
        self.actions_dropped: Counter[str] = Counter()

    # ------------------------------------------------------------------ runs

    def open_run(self, trace: RunState) -> None:
        """A run this process opened: open, and remembered as its own."""
        self.traces[trace.trace_id] = trace
        own = self.own_runs
        own[trace.instance_id] = trace.trace_id
        own.move_to_end(trace.instance_id)
        while len(own) > MAX_TERMINATED_TRACES_REMEMBERED:
            own.popitem(last=False)

    def forget(self, trace: RunState) -> None:
        """The run is over here (finished, terminated, or its finish handed to the spool): closed, remembered
        finished, and no longer one the journal holds open."""
        if trace.journaled:
            self.run_changes[trace.instance_id] = None
        self.traces.pop(trace.trace_id, None)
        self.finished[trace.trace_id] = trace.finished_without_root
        while len(self.finished) > MAX_FINISHED_TRACES_REMEMBERED:
            self.finished.popitem(last=False)
        if self.keep_finished_spans and trace.trace_id not in self.terminated:
            self._remember_spans(trace)

    def _remember_spans(self, trace: RunState) -> None:
        """The spans this run created (and those the span filter left out: a retried copy of one is no new span),
        joined to those of the trace's earlier runs."""
        spans = self.finished_spans
        mine = [*trace.created, *trace.skipped, *trace.live]
        earlier = spans.pop(trace.trace_id, None)
        if earlier is not None:
            self._finished_span_count -= len(earlier)
        joined = earlier.joined(mine) if earlier is not None else EarlierSpans(mine)
        spans[trace.trace_id] = joined
        self._finished_span_count += len(joined)
        while spans and (
            len(spans) > MAX_FINISHED_TRACES_REMEMBERED or self._finished_span_count > MAX_FINISHED_SPANS_REMEMBERED
        ):
            _, forgotten = spans.popitem(last=False)
            self._finished_span_count -= len(forgotten)

    def remember_terminated(self, trace_id: int) -> None:
        self.terminated[trace_id] = None
        while len(self.terminated) > MAX_TERMINATED_TRACES_REMEMBERED:
            self.terminated.popitem(last=False)
        forgotten = self.finished_spans.pop(trace_id, None)  # its later spans are dropped, copies or not
        if forgotten is not None:
            self._finished_span_count -= len(forgotten)

    def span_pfid(self, trace: RunState, span_id: int, start_ns: int | None) -> str:
        """The Prefactor id of a span of the run. It embeds the span's start time: remembered, so a parent's id is
        rebuilt exactly for its children. LookupError for a span neither seen nor given its start."""
        span_ids = trace.span_ids
        cached = span_ids.get(span_id) if span_ids else None  # (the shared empty's `get` is dearer than a dict's)
        if cached is not None:
            return cached
        if start_ns is None:
            raise LookupError("parent span id requested before the parent was seen")
        value = ids.span_pfid(self.partition, trace.trace_id, span_id, start_ns)
        if span_ids is SHARED_EMPTY:  # own(), inline (once per live span's create and finish)
            span_ids = trace.span_ids = {}
        remember(span_ids, span_id, value)
        return value

    # ------------------------------------------------------------------ queued spans

    def enqueue(self, trace: RunState, record: SpanRecord, now: float) -> None:
        """A span to create, waiting in its run until it is planned and delivered."""
        pending, arrived = trace.pending, trace.arrived
        if pending is SHARED_EMPTY:  # own(), inline (once per live span): a queue and its arrivals go together
            pending = trace.pending = {}
        if arrived is SHARED_EMPTY:
            arrived = trace.arrived = {}
        pending[record.span_id] = record
        arrived[record.span_id] = now
        self.with_pending[trace.trace_id] = None
        self.queued += 1

    def dequeue(self, trace: RunState, span_id: int) -> SpanRecord:
        """A pending span leaves the queue (delivered, or dropped by the caller, who counts it), and its side
        state with it."""
        record = trace.pending.pop(span_id)  # the caller's span is pending: the run's queue is a dict of its own
        trace.arrived.pop(span_id, None)
        if trace.orphaned:  # the shared empty is falsy, and refuses pop
            trace.orphaned.pop(span_id, None)
        if trace.too_large:
            trace.too_large.pop(span_id, None)
        if trace.attempted:
            trace.attempted.pop(span_id, None)
        self.queued -= 1
        return record

    def clear_pending(self, trace: RunState) -> int:
        """Every pending span of the run leaves the queue; returns how many (the caller counts them)."""
        count = len(trace.pending)
        self.queued -= count
        trace.pending = trace.arrived = trace.orphaned = trace.too_large = trace.attempted = SHARED_EMPTY
        return count

    @staticmethod
    def release_queue(trace: RunState) -> None:
        """A run with nothing pending holds no queue: its queue, arrivals and the side collections of pending spans
        go back to the shared empty (an emptied dict keeps its table: some 300 bytes for a run of 9 spans, and a dict
        that held records stays tracked by the GC). Called as the outcomes empty a run's queue (OutcomeRules.apply)
        and, for a queue emptied any other way, for the runs with spans since the last plan (Planner._candidates).
        A run with spans open here (PrefactorSpanProcessor) keeps its queue: its spans come again soon, and it
        finishes as soon as they have, without waiting out a grace period (a queue made again costs its growth)."""
        if not trace.pending and not trace.open:
            trace.pending = trace.arrived = trace.orphaned = trace.too_large = trace.attempted = SHARED_EMPTY

    def orphan(self, trace: RunState, span_id: int, why: str) -> None:
        """Send the pending span without its parent link (counted by why): never dropped for a missing parent."""
        trace.orphaned = orphaned = own(trace.orphaned)
        orphaned[span_id] = None
        self.counters[f"spans_orphaned_{why}"] += 1

    def drop(self, count: int, reason: str) -> None:
        """Every span create dropped anywhere in the planner is counted here, by reason."""
        self.dropped[reason] += count

    # ------------------------------------------------------------------ readings

    def instance_of_trace(self, trace_id: int) -> str | None:
        trace = self.traces.get(trace_id)
        return trace.instance_id if trace is not None else None

    def trace_of_instance(self, instance_id: str) -> int | None:
        """The trace of a run this process opened (the newest MAX_TERMINATED_TRACES_REMEMBERED runs, open or
        finished); None for a run it did not open, e.g. one replayed from the spool of a process that ended."""
        return self.own_runs.get(instance_id)

    def active_runs(self) -> list[tuple[str, int]]:
        """(instance id, trace id) of the runs registered here and not finished: what the control poller asks."""
        return [(t.instance_id, t.trace_id) for t in self.traces.values() if t.registered]

    def last_activity_of_active_runs(self) -> dict[str, float]:
        """Instance id -> when (time.monotonic()) a span of each run of `active_runs` last started or ended here:
        the control poller polls a run that has been quiet a while sooner (control/poll.py)."""
        return {t.instance_id: t.last_activity for t in self.traces.values() if t.registered}

    def spans_of_open_runs(self) -> dict[int, set[int]]:
        """Trace id -> the spans this process knows in each open run (ended, created, live or open): what a forked
        child is told are its parent's spans."""
        return {
            trace_id: {*trace.span_ids, *trace.created, *trace.pending, *trace.live, *trace.open}
            for trace_id, trace in list(self.traces.items())
        }

    def take_run_changes(self) -> dict[str, int | None]:
        changes, self.run_changes = self.run_changes, {}
        return changes

    def take_live_span_changes(self) -> dict[str, tuple[str, int] | None]:
        changes, self.live_span_changes = self.live_span_changes, {}
        return changes

    def finished_span_ids(self, trace_id: int) -> list[int] | None:
        """The span ids the finished runs of this trace created (`finished_spans`), sorted; None when none are kept
        (the option is off, the trace was never finished here, or its ids were forgotten). A copy: rare (a gateway
        writing what its replay needs, docs/gateway.md "Late spans")."""
        earlier = self.finished_spans.get(trace_id)
        return list(earlier._ids) if earlier is not None else None


def remember(bounded: dict[Any, Any], key: Any, value: Any) -> None:
    """Insert into an insertion-ordered dict that keeps at most MAX_SPANS_REMEMBERED_PER_TRACE entries."""
    bounded[key] = value
    if len(bounded) > MAX_SPANS_REMEMBERED_PER_TRACE:
        del bounded[next(iter(bounded))]


def parent_resolved_deep(trace: RunState, record: SpanRecord) -> bool:
    """True if the parent is created, or pending with a chain that ends in a created/root span."""
    seen: set[int] = set()
    current = record
    while True:
        if current.is_local_root or current.parent_span_id in trace.created:
            return True
        parent = trace.pending.get(current.parent_span_id)  # type: ignore[arg-type]
        if parent is None or parent.span_id in seen:
            return False
        if parent.span_id in trace.orphaned:
            return True
        seen.add(parent.span_id)
        current = parent


def waiting_chains(trace: RunState) -> list[tuple[int, int, float]]:
    """The waiting chains of a trace: (span id of the top, spans in the chain, earliest arrival in the chain).

    A top waits for a parent that is not here; the spans below it wait for it. Orphaning the top releases
    the whole chain with its links intact (orphaning a grandchild first would cut it from its parent).
    """
    orphaned, arrived = trace.orphaned, trace.arrived
    waiting = {
        span_id: record
        for span_id, record in trace.pending.items()
        if span_id not in orphaned and not parent_resolved_deep(trace, record)
    }
    if not waiting:
        return []
    children: dict[int | None, list[int]] = {}
    for span_id, record in waiting.items():
        children.setdefault(record.parent_span_id, []).append(span_id)
    chains = []
    for span_id, top in waiting.items():
        if top.parent_span_id in waiting:
            continue
        size, earliest, stack, seen = 0, arrived[span_id], [span_id], set()
        while stack:
            current = stack.pop()
            if current in seen:
                continue
            seen.add(current)
            size += 1
            earliest = min(earliest, arrived[current])
            stack.extend(children.get(current, ()))
        chains.append((span_id, size, earliest))
    return chains


def passes_filter(trace: RunState, record: SpanRecord, wanted: bool, counters: Counter[str]) -> bool:
    """Keep spans the filter wants and their ancestors; remember the rest so children can skip them.

    Children normally end (and arrive) before their parent, so a kept child has marked its parent as
    needed by the time the parent arrives: trees stay whole. A kept span whose parent was already filtered
    out (it outlived it) is re-parented to its nearest exported ancestor instead of becoming an orphan.
    """
    if wanted or record.span_id in trace.needed:
        if not record.is_local_root:
            if record.parent_span_id in trace.skipped:
                _reparent(trace, record, counters)
            if record.parent_span_id is not None:
                trace.needed = needed = own(trace.needed)
                remember(needed, record.parent_span_id, None)
        return True
    trace.skipped = skipped = own(trace.skipped)
    remember(skipped, record.span_id, None if record.is_local_root else record.parent_span_id)
    counters["spans_filtered_out"] += 1
    if record.is_local_root:
        trace.root_skipped = True
        trace.root_failed = trace.root_failed or record.status == "failed"
        trace.root_end_ns = max(trace.root_end_ns, record.end_time_ns)
    return False


def _reparent(trace: RunState, record: SpanRecord, counters: Counter[str]) -> None:
    original = record.parent_span_id
    ancestor = original
    for _ in range(len(trace.skipped) + 1):  # bounded walk up through filtered-out spans
        if ancestor is None or ancestor not in trace.skipped:
            break
        ancestor = trace.skipped[ancestor]
    record.parent_span_id = ancestor
    payload = dict(as_dict(record.payload))
    payload["parent_span_id"] = hex_span_id(ancestor) if ancestor is not None else None
    payload["metadata"] = {**payload["metadata"], "prefactor.reparented_from": hex_span_id(original or 0)}
    record.payload = payload
    counters["spans_reparented"] += 1
