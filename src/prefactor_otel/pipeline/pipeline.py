"""The pipeline of one process: mapped spans -> planner -> delivery, with the spool behind it.

`Pipeline` holds what belongs to one process and is rebuilt whole in a forked child: span records waiting for
the account partition (`unplanned`), the planner (created once the partition is known), and the drain that sends
what is ready -- this process's spooled backlog first, then live items, and what cannot be delivered to the spool.
In a forked child the new pipeline carries what the child knows of its parent's spans (`spans_at_fork`, read from
the parent's pipeline at the fork; `note_parent_spans` as the child ends copies of them): planner.ForkOrigin.
A process that can send nothing more (the server refused its token, its proxy is unusable: `stopped_reason`) keeps
spilling to the spool, stops replaying it, and without a spool drops what it holds, counted under that reason.

It is built from its parts -- a config, a `Delivery` over a transport, a `Backlog` or None, the partition if known
(or one an earlier process saved, checked with the server first: partition.py) --
by the exporter, and the same way by anything else that yields span records (a gateway decoding OTLP: it needs
nothing of the OTel SDK's exporter; tests/test_pipeline_alone.py drives it so). Such an owner keeps the exporter's
rule: one thread drains at a time (the exporter's send lock). `run_part` says which part of each trace its runs are
(docs/cross-process.md): the exporter passes one random per process, a gateway its replica's id, and `None` keeps the
ids of a pipeline that sees every trace whole. `late_spans_open_a_run` (a gateway's, which needs a part): a span
that comes after its run was finished opens the trace's next run instead of being dropped (planner.py).

Span starts (PrefactorSpanProcessor) arrive in `starts`, a deque the application's threads append to (an atomic
append, nothing else, on their side); the sending thread pops them, reads them (starts.py) and gives them to the
planner before the ended spans of the same drain.

Threads and locks: `add` and `note_parent_spans` are called from any thread exporting spans; `drain`, `spill_unsent` and
`background_send` by the one thread holding the exporter's send lock (`spill_unsent` by shutdown without it).
`state_lock` guards `unplanned` and the planner; it is held only for in-memory work (a plan encodes its items:
items.wire_data), journal writes and one spool append on a spill, never across a request. Counters are written
by the thread doing the work.

The account partition (`AccountPartition`, partition.py) is the sending thread's: it learns or checks it before the
planner is built, and when the server says it changed (a register refused for its partition, checked), `_replan`
builds a planner in the new one, under the state lock, and gives it every span the old one held.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from opentelemetry import trace as trace_api

from prefactor_otel._logging import logger
from prefactor_otel._version import __version__
from prefactor_otel.config.options import PrefactorConfig
from prefactor_otel.mapping import SpanRecord, agent_schema_version, agent_version_from_resource
from prefactor_otel.mapping.redaction import Redactor
from prefactor_otel.mapping.resource import installed_instrumentations
from prefactor_otel.pipeline.backlog import Backlog
from prefactor_otel.pipeline.delivery import Delivery, PlannedSource
from prefactor_otel.pipeline.partition import REFUSED_FOR_PARTITION, AccountPartition, RefusalWatch
from prefactor_otel.pipeline.planner import ForkOrigin, Planner, check_run_part
from prefactor_otel.pipeline.starts import LivePolicy, StartedSpan, read_start
from prefactor_otel.transport.client import suppress_instrumentation


def carries_genai(record: SpanRecord) -> bool:
    """PREFACTOR_SPAN_FILTER=genai: a span some GenAI convention typed or recognised."""
    return record.schema_name != "otel:span" or record.convention is not None


class Pipeline:
    def __init__(
        self,
        config: PrefactorConfig,
        delivery: Delivery,
        backlog: Backlog | None,
        *,
        partition: int | None,
        redactor: Redactor | None,
        saved_partition: int | None = None,
        fork_origin: ForkOrigin | None = None,
        starts: deque[Any] | None = None,
        map_started: Callable[[Any], SpanRecord] | None = None,
        run_part: str | None = None,
        late_spans_open_a_run: bool = False,
    ) -> None:
        check_run_part(run_part)  # here, not when the planner is built at the first drain
        if late_spans_open_a_run and run_part is None:
            raise ValueError("late spans open a run only with a run part (the new run needs an id of its own)")
        self._config = config
        # Which part of each trace this pipeline's runs are (planner.py, docs/cross-process.md): the exporter's is
        # random per process, a gateway's its replica's id; None when this pipeline sees every trace whole.
        self.run_part = run_part
        # A span after its run finished opens the trace's next run (the gateway's; planner.py), not a drop.
        self.late_spans_open_a_run = late_spans_open_a_run
        self.starts: deque[Any] = starts if starts is not None else deque()
        self._map_started = map_started
        self._delivery = delivery
        self._backlog = backlog
        # `partition`: known for sure (an agent id's, a parent's); `saved_partition`: an earlier process's, checked.
        self._account = AccountPartition(
            delivery.transport,
            backlog,
            config.api_token.get(),
            given=partition,
            saved=saved_partition,
            learnt=not config.agent_id,
        )
        self._redactor = redactor
        self._fork_origin = fork_origin  # in a forked child; shared with the planner, guarded by state_lock
        self.state_lock = threading.Lock()
        self.unplanned: deque[SpanRecord] = deque()
        self.planner: Planner | None = None
        self.dropped: Counter[str] = Counter()
        self._refusal_reported = False  # the refused token is reported once (sending thread only)

    # ------------------------------------------------------------------ input

    def add(self, records: Iterable[SpanRecord]) -> None:
        with self.state_lock:
            self.unplanned.extend(records)
            # Records wait here only until the account partition is known; bounded like the planner.
            for _ in range(max(0, len(self.unplanned) - self._config.max_queued_spans)):
                self.unplanned.popleft()
                self.dropped["queue_full"] += 1

    def _take_starts(self, planner: Planner) -> None:
        starts = self.starts
        if not starts:
            return
        batch: list[StartedSpan] = []
        for _ in range(len(starts)):
            try:
                span = starts.popleft()()  # a weak reference (processor.py)
            except IndexError:
                break
            if span is None:
                continue  # ended and exported already: its end carries what the planner needs
            try:
                started = read_start(span)
            except Exception:  # a span object we do not know how to read: its end still comes the usual way
                self.dropped["start_unreadable"] += 1
                continue
            if started is not None:
                batch.append(started)
        with self.state_lock:
            planner.start(batch, time.monotonic())

    def _take_unplanned(self, planner: Planner) -> None:
        with self.state_lock:
            if self.unplanned:
                planner.add(list(self.unplanned), time.monotonic())
                self.unplanned.clear()

    # ------------------------------------------------------------------ the planner

    @property
    def partition(self) -> int | None:
        """The account partition runs are planned in (None: not known yet)."""
        return self._account.value

    @property
    def partition_confirmed(self) -> bool:
        """The partition is an agent id's, or the server answered it in this process (not only a saved one)."""
        return self._account.confirmed

    def ensure_planner(self, deadline: float) -> Planner | None:
        planner = self.planner
        account = self._account
        if planner is not None and account.confirmed:
            return planner
        partition = account.resolve(deadline)  # learnt, or a saved one checked (partition.py)
        if partition is None:
            return None
        if planner is None:
            self.planner = planner = self._new_planner(partition)
        elif planner.partition != partition:
            planner = self._replan(partition)
        return planner

    def _new_planner(self, partition: int) -> Planner:
        config = self._config
        redactor = self._redactor
        versions: dict[int, tuple[object, dict[str, Any]]] = {}

        def agent_version_for(resource: Mapping[str, object]) -> dict[str, Any]:
            # Built and dumped once per Resource; the entry holds the Resource, so its id cannot be reused while
            # cached.
            cached = versions.get(id(resource))
            if cached is not None and cached[0] is resource:
                return cached[1]
            version = agent_version_from_resource(
                resource,
                sdk_version=__version__,
                agent_name=config.agent_name,
                agent_identifier=config.agent_identifier,
                agent_sdk=installed_instrumentations(),
                redactor=redactor,  # the user's rules too: the Resource leaves the process in the agent version
            ).model_dump(exclude_none=True)
            if len(versions) >= 64:
                versions.clear()
            versions[id(resource)] = (resource, version)
            return version

        return Planner(
            partition=partition,
            agent_key=config.agent_id or "deployment",
            agent_id=config.agent_id,
            environment_id=config.environment_id,
            purpose=config.purpose,
            agent_version_for=agent_version_for,
            schema_version=agent_schema_version(),
            max_waiting_spans=config.max_waiting_spans,
            max_queued_spans=config.max_queued_spans,
            max_wait_seconds=config.max_wait_seconds,
            finish_grace_seconds=config.finish_grace_seconds,
            span_filter=carries_genai if config.span_filter == "genai" else None,
            fork_origin=self._fork_origin,
            live_policy=LivePolicy(config.live_spans),
            map_started=self._map_started,
            max_open_spans=config.max_queued_spans,
            run_part=self.run_part,
            late_spans_open_a_run=self.late_spans_open_a_run,
        )

    def _replan(self, partition: int) -> Planner:
        """The account's partition is not the one the planner builds ids in (another account, or a reset one, at
        this URL): a planner in the right one takes every span the old one held, so nothing the server refused for
        its partition is dropped. The old runs never existed there: out of the journal. Its counters carry on."""
        with self.state_lock:
            old = self.planner
            assert old is not None
            held = [trace for trace in old.runs.traces.values() if trace.pending]
            records = [record for trace in held for record in trace.pending.values()]
            old.discard_all("partition_changed")  # what cannot be planned again (live spans that ended) stays counted
            self.journal_runs()
            new = self._new_planner(partition)
            new.counters.update(old.counters)
            new.actions_dropped.update(old.actions_dropped)
            dropped = Counter(old.dropped)
            dropped["partition_changed"] -= len(records)
            new.dropped.update(+dropped)
            new.add(records, time.monotonic())
            new.counters["spans_added"] -= len(records)  # added once already, to the old planner
            self.planner = new
        self._account.counters["runs_replanned"] += len(held)
        logger.warning(
            "Prefactor: %d run(s) (%d span(s)) planned again in the account's partition", len(held), len(records)
        )
        return new

    def spans_at_fork(self) -> dict[int, set[int]]:
        """In a forked child, of the parent's pipeline: trace id -> the parent process's spans in each trace open
        at the fork (known to its planner, waiting for the partition, started and not yet read, and the span
        current in the forking thread with its parent). A child span under one of them is a local root of the
        child's own run (planner.ForkOrigin).

        Best effort: the planner may have been mid-update at the fork, and nothing here may fail the child.
        """
        spans: dict[int, set[int]] = {}
        try:
            if self.planner is not None:
                spans.update(self.planner.spans_of_open_runs())
            for record in list(self.unplanned):
                spans.setdefault(record.trace_id, set()).add(record.span_id)
            for span_ref in list(self.starts):
                span = span_ref()
                started = read_start(span) if span is not None else None
                if started is not None:
                    spans.setdefault(started.trace_id, set()).add(started.span_id)
        except Exception:
            pass
        current = trace_api.get_current_span()
        context = current.get_span_context()
        if context.is_valid:
            known = spans.setdefault(context.trace_id, set())
            known.add(context.span_id)
            parent = getattr(current, "parent", None)
            if parent is not None and getattr(parent, "is_valid", False):
                known.add(parent.span_id)
        return spans

    def note_parent_spans(self, copies: Iterable[tuple[int, int, int | None]]) -> None:
        """In a forked child: (trace id, span id, parent span id) of spans whose copies the child ended -- spans of
        the parent process, and so are their parents."""
        origin = self._fork_origin
        if origin is None:
            return
        with self.state_lock:
            for trace_id, span_id, parent_id in copies:
                ids_ = {span_id} if parent_id is None else {span_id, parent_id}
                if self.planner is not None:
                    self.planner.note_parent_spans(trace_id, ids_)
                else:
                    origin.parent_spans.setdefault(trace_id, set()).update(ids_)

    # ------------------------------------------------------------------ sending

    def drain(self, deadline: float, *, flush: bool = False, shutdown: bool = False) -> bool:
        """Send everything ready (this process's spooled backlog first: it is older). True if nothing ready is
        left. What cannot be delivered by the deadline goes to the spool, behind the backlog."""
        delivery = self._delivery
        with suppress_instrumentation():
            planner = self.ensure_planner(deadline)
            if planner is None:
                if shutdown or self.stopped_reason is not None:
                    self._keep_unplanned()
                self._report_refusal()
                return False
            self._take_starts(planner)
            self._take_unplanned(planner)
            backlog = self._backlog
            if backlog is not None and backlog.has_backlog:
                urgent = flush or shutdown
                if (backlog.retry_due(time.monotonic()) or urgent) and self.stopped_reason is None:
                    backlog.replay(delivery, deadline, wait=urgent)
                if backlog.has_own_backlog:  # our older items are still on disk: the new ones queue behind them
                    self._keep(planner, flush=flush, shutdown=shutdown)
                    self._report_refusal()
                    return False
            planner, delivered = self._deliver(planner, deadline, flush=flush, shutdown=shutdown)
            if not delivered:
                self._keep(planner, flush=flush, shutdown=shutdown)
            self._report_refusal()
            return delivered

    def _deliver(self, planner: Planner, deadline: float, *, flush: bool, shutdown: bool) -> tuple[Planner, bool]:
        """The planner's items to the server. While the partition is an unchecked saved one, a register refused
        for its partition is held, the server asked, and the runs planned again in the new partition; once the
        server answered it, no watch on the way (nothing per request): a refusal after that (the account reset
        under this process) is counted as usual, and the server asked after the drain (partition.py)."""
        account = self._account
        source = PlannedSource(planner, self.state_lock, flush=flush, shutdown=shutdown, on_change=self.journal_runs)
        if not account.watch_refusals():
            refused_before = planner.dropped[REFUSED_FOR_PARTITION] if account.learnt else 0
            delivered = self._delivery.drain(source, deadline)
            if account.learnt and planner.dropped[REFUSED_FOR_PARTITION] > refused_before and account.may_recheck():
                planner = self._recheck(planner, deadline)
            return planner, delivered
        watch = RefusalWatch(source)
        delivered = self._delivery.drain(watch, deadline)
        if not watch.held:
            return planner, delivered
        planner = self._recheck(planner, deadline)
        # Changed: the runs again in the new partition. Not changed (or no answer): sent again, the refusal stands.
        source = PlannedSource(planner, self.state_lock, flush=flush, shutdown=shutdown, on_change=self.journal_runs)
        return planner, self._delivery.drain(source, deadline)

    def _recheck(self, planner: Planner, deadline: float) -> Planner:
        account = self._account
        if account.recheck(deadline) and account.value is not None:
            return self._replan(account.value)
        return planner

    @property
    def stopped_reason(self) -> str | None:
        """Why this process sends nothing more, or None: "auth" (the server refused the token, which cannot change
        in this process), "proxy" (the environment's proxy cannot be used). Also the reason spans are counted
        dropped under when nothing can keep them."""
        return self._delivery.transport.stopped_reason

    def _keep(self, planner: Planner, *, flush: bool, shutdown: bool) -> None:
        """What could not be delivered now goes to the spool, an outage, a refused token and an unusable proxy
        alike (a later process with a valid token, a usable proxy, sends it). Without a spool, a process that can
        send nothing more (`stopped_reason`) has nothing to wait for: everything is dropped, counted under that
        reason; and so is what the spool could not take at shutdown."""
        stopped = self.stopped_reason
        if self._backlog is not None:
            self._spill(planner, flush=flush, shutdown=shutdown)
        if stopped is not None:
            with self.state_lock:
                # A register the spool did not take (full) was planned, and so journaled, by the spill: the server
                # never accepted that run, so no later process may adopt it.
                planner.refused(None)
                if self._backlog is None or shutdown:
                    planner.discard_all(stopped)
                self.journal_runs()
            self._report_refusal()

    def _report_refusal(self) -> None:
        """Once, when the token was first refused: one error saying what happens to the spans, never the token.
        (An unusable proxy is reported by the exporter when it starts.)"""
        if self._refusal_reported or self.stopped_reason != "auth":
            return
        self._refusal_reported = True
        kept, dropped = self.refusal_figures("auth")
        status = self._delivery.transport.auth_status or 401
        if self._backlog is not None:
            logger.error(
                "Prefactor refused the API token (HTTP %d): what it stops is kept on disk in %s (%d span(s) so "
                "far) and sent when a process starts with a valid token; this process sends nothing more. Check "
                "%s and its scope.",
                status,
                self._backlog.spool.directory,
                kept,
                self._config.token_source,
            )
        else:
            logger.error(
                "Prefactor refused the API token (HTTP %d): %d span(s) dropped, and every later one (PREFACTOR_SPOOL "
                "is off: nothing keeps them until a valid token is configured); this process sends nothing more. "
                "Check %s and its scope.",
                status,
                dropped,
                self._config.token_source,
            )

    def refusal_figures(self, reason: str) -> tuple[int, int]:
        """(spans kept on disk, spans dropped for `reason`: "auth" or "proxy") by this process so far."""
        planner = self.planner
        kept = planner.counters["spans_spooled"] if planner is not None else 0
        if self._backlog is not None:
            kept += self._backlog.counters["spans_kept_unplanned"]
        dropped = self.dropped[reason] + (planner.dropped[reason] if planner is not None else 0)
        return kept, dropped

    def background_send(self, deadline: float) -> bool:
        """For the finisher thread: the spool's backlog alone while no span has come, else a drain."""
        if self.planner is None and self._backlog is not None and not self.unplanned and not self.starts:
            if self.stopped_reason is not None:
                return False  # the files stay for a process that can send them
            with suppress_instrumentation():
                # Learnt or checked first: files of another account at this URL must not be sent (backlog.py).
                self._account.resolve(deadline)
                replayed = self._backlog.replay(self._delivery, deadline)
            self._report_refusal()  # the token may first be refused replaying an earlier process's files
            return replayed
        return self.drain(deadline)

    def has_due_work(self, now: float) -> bool:
        backlog = self._backlog
        if backlog is not None and backlog.has_backlog and backlog.retry_due(now) and self.stopped_reason is None:
            return True
        planner = self.planner
        if planner is None or self.starts:
            return bool(self.unplanned) or bool(self.starts)
        with self.state_lock:
            return bool(self.unplanned) or planner.has_due_work(now)

    def journal_runs(self) -> None:
        """Under the state lock: the runs the last plan opened or the last outcomes closed, to the journal."""
        planner = self.planner
        if planner is None:
            return
        changes = planner.take_run_changes()  # taken even without a journal: they must not grow
        live_spans = planner.take_live_span_changes()
        if self._backlog is not None:
            self._backlog.record_runs(changes, live_spans)

    def _spill(self, planner: Planner, *, flush: bool, shutdown: bool) -> None:
        if self._backlog is not None:
            self._backlog.spill(planner, self.state_lock, flush=flush, shutdown=shutdown)

    def spill_unsent(self, *, shutdown: bool) -> None:
        """Without the send lock (shutdown could not get it in time): plan what we have, write it to the spool."""
        planner = self.planner
        if planner is None:
            self._keep_unplanned()
            return
        self._take_starts(planner)
        self._take_unplanned(planner)
        self._spill(planner, flush=True, shutdown=shutdown)

    def _keep_unplanned(self) -> None:
        """No partition yet (no agent id, API unreachable, the token refused, the proxy unusable): keep the span
        records themselves on disk. Without a spool, a process that can send nothing more drops them, counted."""
        with self.state_lock:
            records = list(self.unplanned)
            if not records:
                return
            if self._backlog is not None and self._backlog.keep_records(records):
                self.unplanned.clear()
            elif (reason := self.stopped_reason) is not None:
                self.dropped[reason] += len(records)
                self.unplanned.clear()

    def close(self) -> None:
        """At shutdown, after the last drain: journal what changed, and close the journal."""
        if self._backlog is not None:
            with self.state_lock:
                self.journal_runs()
            self._backlog.close()

    # ------------------------------------------------------------------ visibility

    def collect(self, counters: Counter[str], dropped: Counter[str], actions_dropped: Counter[str]) -> tuple[int, int]:
        """Adds this pipeline's counters; returns (spans queued, open runs)."""
        dropped.update(dict(self.dropped))  # dict(): one C call, safe while another thread adds a key
        counters.update({f"partition:{key}": value for key, value in dict(self._account.counters).items()})
        queued = len(self.unplanned)
        planner = self.planner
        if planner is None:
            return queued, 0
        dropped.update(dict(planner.dropped))
        actions_dropped.update(dict(planner.actions_dropped))
        counters.update(dict(planner.counters))
        return queued + planner.queued_spans, planner.open_traces
