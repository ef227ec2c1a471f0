"""`Gateway`: authenticate, route, acknowledge once durable, and drive one pipeline per (route, agent).

The path of a request (`accept`, on the front end's request thread):
1. authenticate: the bearer token -> its route (routes.py; constant-time); none or unknown -> `Unauthenticated`;
2. route: each ResourceSpans goes to the agent its resource attribute `prefactor.agent` names (a key of the
   route's agents), else to the route's default agent; a name the route does not have -> those spans are refused
   (partial success, counted), never written elsewhere;
3. decode (otlp.py) to count the spans and refuse the invalid ones (partial success);
4. admit: spans accepted and not yet planned are bounded (`queue_max_spans`: beyond it `Overloaded` 429); a full
   ingress log, a spool near its cap (`SPOOL_HIGH_WATER`), a failed log, start-up (replay) and stopping ->
   `Overloaded(unavailable=True)` 503. Retry-After grows with the backlog (`_retry_after`), capped at
   `max_retry_after_s`, a third of the finish grace (at least 1 s, at most 60 s): a client that honours it comes
   back while the run its spans belong to is still open (docs/gateway.md, "Retry-After and the finish grace");
5. write: one ingress-log record per (route, agent) -- its key and the serialized protobuf of those spans -- and
   queue it for the worker, in log order (the order lock). A record with spans of a trace already finished (late)
   is written only once the finished-traces file carries that trace's state (`_cover_late`, ledger.py: rare, one
   fsync), so a replay never skips it;
6. sync: return once the records are fsynced (group commit: concurrent requests share fsyncs).

The worker thread (`_run`, the one thread that drives every pipeline, so their one sender): at start it replays
the ingress log left by an earlier gateway (the records of traces it had finished are skipped, but for a late
trace's, whose state the finished-traces file carries: its planner gets that state first, then every record of it,
ledger.py), and only then is the gateway ready; it then takes the queued records whose fsync is done, oldest first,
decodes and maps them (targets.py: a remote parent is an ordinary parent here), adds them to their pipeline and
drains it; it sends what is due in the background (grace periods, orphans, the spool's backlog at the spool's
backoff; a pipeline without a spool or a partition backs off after a failure), finishes runs whose top never came
once they are idle (`max_wait_seconds` + the finish grace), and retires the ingress-log segments whose traces are
all done (ledger.py).
Decoding a replayed record needs otlp.py's `parse_protobuf`; live records were decoded by their request.

`shutdown(timeout_s)`: stop accepting, then the worker takes what was acknowledged, drains every pipeline as the
exporter's shutdown does (deliver, or spool what cannot be delivered within the budget; every run is finished),
retires what is done, says what was dropped and not yet said, closes; whatever is still in the ingress log is
replayed at the next start.

Drops are said (drops.py): about once a second the worker reads each pipeline's drop counters and logs, per
(route, agent, reason), the spans dropped since its last line, at most one line per minute each. `stats()` and
`stats_view(authorization)` (the front end's `GET /stats`, scoped to the token's route) show every count.

The replica id (`replica_id`, a file in the directory, created once) names this gateway's runs apart from another
replica's: each pipeline's run part (targets.py).

Threads and locks: `accept`, `not_ready_reason`, `stats`, `stats_view`, `startup_line` from any thread (the front
ends' request threads and their health checks); `start`, `stop_accepting`, `shutdown` from the owner's thread.
`_order_lock` makes log order and queue order one (held for a write and an append, never across an fsync); `_cond`
(its own lock) guards the queue, the queued span count and the worker's wake-ups; `_counters_lock` the gateway's
counters (a leaf: taken under `_order_lock` too, never around anything). Each pipeline's `state_lock` is taken
inside the pipeline and targets.py; the ingress log and the ledger have their own. `_drops` is the worker's alone.
Lock order: `_order_lock` -> `_cond`, `_order_lock` -> the log's and the ledger's locks, `_order_lock` -> a
pipeline's `state_lock` (a late trace's planner state, read by `_cover_late` and `_retire`, which marks traces done
under the order lock); never the other way.
"""

from __future__ import annotations

import math
import os
import secrets
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans
from opentelemetry.sdk.trace import ReadableSpan

from prefactor_otel._logging import announce, logger
from prefactor_otel.durability.ingress_log import (
    IngressLog,
    IngressLogBroken,
    IngressLogFull,
    IngressLogLocked,
    LogRecord,
)
from prefactor_otel.gateway.drops import DropReport
from prefactor_otel.gateway.ledger import SegmentLedger, TraceState
from prefactor_otel.gateway.otlp import OtlpDecodeError, decode_spans, parse_protobuf
from prefactor_otel.gateway.routes import AGENT_ATTRIBUTE, Route
from prefactor_otel.gateway.settings import GatewaySettings
from prefactor_otel.gateway.targets import AgentPipeline

__all__ = ["Acceptance", "Gateway", "IngressLogLocked", "Overloaded", "Unauthenticated"]

TICK_S = 0.2
SPOOL_HIGH_WATER = 0.8  # a spool fuller than this refuses new requests: the spool drops its oldest at its cap
SPOOLED_SPAN_BYTES_MIN = 1024
SPILL_FILE_BYTES = 64 * 1024  # a spool file's fixed part, generously: measured ~12 KiB (the span type schemas)
MAX_RETRY_AFTER_S = 60.0
RETRY_AFTER_GRACE_SHARE = 1 / 3  # of the finish grace: a client refused twice still comes back within it
_REPLICA_FILE = "replica-id"
_REPLAY_DRAIN_EVERY = 500  # records replayed between drains: the pipelines stay under their own bounds


class Unauthenticated(Exception):
    """No or wrong ingress token: HTTP 401, gRPC UNAUTHENTICATED."""


class Overloaded(Exception):
    """Cannot take the request now; the client should retry after `retry_after_s`.
    unavailable=False: the queue is full -> HTTP 429 / gRPC RESOURCE_EXHAUSTED.
    unavailable=True: the ingress log or spool is full, the gateway is starting (replaying) or stopping
    -> HTTP 503 / gRPC UNAVAILABLE."""

    def __init__(self, reason: str, retry_after_s: float, *, unavailable: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s
        self.unavailable = unavailable


@dataclass(frozen=True)
class Acceptance:
    rejected_spans: int  # partial_success.rejected_spans
    message: str  # partial_success.error_message ("" when none rejected)


@dataclass(slots=True)
class _Entry:
    seq: int  # the ingress log's write sequence: taken once synced
    segment: int
    target: AgentPipeline
    spans: list[ReadableSpan]
    late: tuple[int, ...] = ()  # traces finished before this record came (SegmentLedger.cover_late)
    trace_ids: frozenset[int] | None = None  # its spans' traces, computed once when asked (`_queued_traces`)


class Gateway:
    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self._routes = settings.routes
        self._log = IngressLog(
            settings.directory / "log", max_bytes=settings.log_max_bytes, segment_bytes=settings.segment_bytes
        )
        self._ledger = SegmentLedger(settings.directory)
        self._targets: dict[str, AgentPipeline] = {}
        self._order_lock = threading.Lock()
        self._cond = threading.Condition(threading.Lock())
        self._queue: deque[_Entry] = deque()
        self._queued_spans = 0
        self._counters_lock = threading.Lock()
        self._counters: Counter[str] = Counter()
        self._worker: threading.Thread | None = None
        self._state = "not started"  # not started -> replaying -> ready -> stopping -> stopped
        self._failure: str | None = None
        self._stop_deadline: float | None = None
        self._shutting_down = threading.Event()  # set once by shutdown: the worker finishes and closes
        self._replayed_whole = False  # segments are retired only once every one found at start was replayed
        self._rate = 0.0  # spans per second the worker takes in (moving average), for Retry-After
        self._bytes_per_span = 0.0  # OTLP bytes per accepted span (moving average), for the spool's high water
        self.replica_id = ""
        self.max_retry_after_s = max_retry_after(settings)
        self._drops = DropReport()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Take the directory (IngressLogLocked if another gateway has it), build the pipelines, and start the
        worker, which replays what an earlier gateway acknowledged before the gateway is ready."""
        if self._state != "not started":
            return
        directory = self.settings.directory
        directory.mkdir(parents=True, exist_ok=True)
        self._log.open()
        try:
            self.replica_id = _replica_id(directory)
            self._ledger.load()
            for route in self._routes.routes:
                for agent in route.agents:
                    spool = directory / "spool" / f"{route.name}.{agent}"
                    target = AgentPipeline(
                        route.name, agent, route.agent_config(agent), spool, run_part=self.replica_id
                    )
                    self._targets[target.key] = target
        except Exception:
            self._log.close()
            raise
        self._state = "replaying"
        if self.settings.open:
            logger.warning(
                "Prefactor gateway: no ingress token is configured: it accepts requests without one, on %s only "
                "(set PREFACTOR_GATEWAY_TOKENS before listening on any other address)",
                self.settings.host,
            )
        announce(self.startup_line())
        self._worker = threading.Thread(target=self._run, name="prefactor-gateway-worker", daemon=True)
        self._worker.start()

    def wait_ready(self, timeout_s: float) -> bool:
        """Wait until the replay is done (or the gateway failed); True when ready."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._state == "replaying" and self._failure is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(min(left, TICK_S))
        return self.not_ready_reason() is None

    def not_ready_reason(self) -> str | None:
        if self._failure is not None:
            return self._failure
        if self._state == "ready":
            return None
        if self._state == "replaying":
            return f"replaying the ingress log ({self._log.counters['records_replayed']} records so far)"
        return self._state

    def stop_accepting(self) -> None:
        with self._cond:
            if self._state in ("replaying", "ready", "not started"):
                self._state = "stopping"
            self._cond.notify_all()

    def shutdown(self, timeout_s: float) -> None:
        """Deliver or spool everything acknowledged within `timeout_s`; what remains in the ingress log is replayed
        by the next gateway on this directory."""
        deadline = time.monotonic() + max(0.0, timeout_s)
        with self._cond:
            if self._shutting_down.is_set():
                return
            self._state = "stopping"
            self._stop_deadline = deadline
            self._shutting_down.set()
            self._cond.notify_all()
        for target in self._targets.values():
            target.transport.cap_deadline(deadline)
        worker = self._worker
        if worker is not None:
            worker.join(max(0.0, deadline - time.monotonic()) + 1.0)
            if worker.is_alive():
                logger.warning("Prefactor gateway: the worker did not stop in time; the ingress log keeps the rest")
        else:
            self._close()
        with self._cond:
            self._state = "stopped"

    # ------------------------------------------------------------------ accepting

    def accept(self, authorization: str | None, request: ExportTraceServiceRequest) -> Acceptance:
        try:
            return self._accept(authorization, request)
        except (Unauthenticated, Overloaded):
            raise
        except Exception:
            logger.exception("Prefactor gateway: a request failed unexpectedly")
            self._count(internal_errors=1, overloaded_503=1)
            raise Overloaded("internal error", 1.0, unavailable=True) from None

    def authenticate(self, authorization: str | None) -> Route:
        """The route of the ingress token in `authorization` (the raw `Authorization` header or gRPC metadata value),
        or `Unauthenticated`, counted in `stats()["requests_unauthenticated"]`. The front ends call it before they
        read or decode a body (an early refusal is counted too); `accept` calls it again. Constant time over the
        configured tokens (routes.py); any thread."""
        route = self._routes.authenticate(authorization)
        if route is None:
            self._count(requests_unauthenticated=1)
            raise Unauthenticated("a valid ingress token is required (Authorization: Bearer <token>)")
        return route

    def _accept(self, authorization: str | None, request: ExportTraceServiceRequest) -> Acceptance:
        self._count(requests=1)
        route = self.authenticate(authorization)
        if self._state != "ready" or self._failure is not None:
            self._count(overloaded_503=1)
            reason = self.not_ready_reason() or "not ready"
            raise Overloaded(f"the gateway is not accepting: {reason}", self._retry_after(0), unavailable=True)
        groups, rejected, messages = _by_agent(route, request)
        batches: list[tuple[AgentPipeline, ExportTraceServiceRequest, list[ReadableSpan]]] = []
        for agent, part in groups.items():
            decoded = decode_spans(part)
            rejected += decoded.rejected
            if decoded.message:
                messages.append(decoded.message)
            if decoded.spans:
                batches.append((self._targets[f"{route.name}.{agent}"], part, decoded.spans))
        total = sum(len(spans) for _, _, spans in batches)
        if total > self.settings.queue_max_spans:
            rejected += total
            messages.append(
                f"{total} spans in one request, more than the gateway queues ({self.settings.queue_max_spans}): "
                "send smaller batches"
            )
            batches, total = [], 0
        if batches:
            bodies = [(target, part.SerializeToString(), spans) for target, part, spans in batches]
            size = sum(len(body) for _, body, _ in bodies)
            last = None
            with self._order_lock:  # admission too: concurrent requests cannot overshoot the bound together
                if self._state != "ready":  # checked again here: after shutdown's barrier nothing is written
                    self._count(overloaded_503=1)
                    raise Overloaded("the gateway is stopping", self._retry_after(0), unavailable=True)
                self._admit(total)
                if self._log.bytes + size + 64 * len(bodies) > self._log.max_bytes:
                    self._count(overloaded_503=1)
                    raise Overloaded(
                        "the ingress log is full (nothing acknowledged is dropped; it empties as runs finish)",
                        self._retry_after(self._log_backlog_spans()),
                        unavailable=True,
                    )
                try:
                    late = self._cover_late(bodies)
                except OSError as exc:
                    logger.error("Prefactor gateway: cannot write the finished-traces file (%s)", exc)
                    self._count(overloaded_503=1)
                    raise Overloaded(
                        "cannot write the finished-traces file", self.max_retry_after_s, unavailable=True
                    ) from None
                entries: list[_Entry] = []
                try:
                    for (target, body, spans), late_here in zip(bodies, late, strict=True):
                        last = self._log.write(target.key, body)
                        self._ledger.hold(last.segment)
                        entries.append(_Entry(last.seq, last.segment, target, spans, late_here))
                except IngressLogFull:
                    # Not after the check above, but should a part be written: it is the worker's like any record
                    # (its spans come again with the client's retry, under the same ids).
                    self._release_late(bodies[len(entries) :], late[len(entries) :])
                    self._enqueue(entries)
                    self._count(overloaded_503=1)
                    raise Overloaded(
                        "the ingress log is full", self._retry_after(self._log_backlog_spans()), unavailable=True
                    ) from None
                except IngressLogBroken as exc:
                    self._release_late(bodies[len(entries) :], late[len(entries) :])
                    self._fail(f"the ingress log failed: {exc}")
                    self._count(overloaded_503=1)
                    raise Overloaded("the ingress log failed", self.max_retry_after_s, unavailable=True) from None
                self._enqueue(entries)
            try:
                assert last is not None
                self._log.sync(last)
            except IngressLogBroken as exc:
                self._fail(f"the ingress log failed: {exc}")
                self._count(overloaded_503=1)
                raise Overloaded("the ingress log failed", self.max_retry_after_s, unavailable=True) from None
            with self._cond:
                self._cond.notify_all()
            self._count(spans_accepted=total, bytes_accepted=size)
            self._count(**{f"spans_accepted:{target.key}": len(spans) for target, _, spans in bodies})
            per_span = size / total
            self._bytes_per_span = 0.9 * self._bytes_per_span + 0.1 * per_span if self._bytes_per_span else per_span
        if rejected:
            self._count(spans_rejected=rejected)
        return Acceptance(rejected, "; ".join(dict.fromkeys(messages)) if rejected else "")

    def _cover_late(self, bodies: list[tuple[AgentPipeline, bytes, list[ReadableSpan]]]) -> list[tuple[int, ...]]:
        """Under the order lock, before the records are written: per record, the traces of it already finished (it
        came late for them). Before it is acknowledged the finished-traces file must carry their state, or a replay
        would skip it (ledger.py): asked of their planner for those the file does not carry yet. OSError if the file
        cannot be written."""
        ledger = self._ledger
        late: list[tuple[int, ...]] = []
        covered: list[tuple[str, list[int], dict[int, TraceState | None]]] = []
        for target, _, spans in bodies:
            trace_ids = {span.context.trace_id for span in spans if span.context is not None}
            finished, uncovered = ledger.late_traces(target.key, trace_ids)
            late.append(tuple(finished))
            if finished:
                covered.append((target.key, finished, {t: _finished_state(target, t) for t in uncovered}))
        if covered:
            ledger.cover_late(covered)
        return late

    def _release_late(
        self, bodies: list[tuple[AgentPipeline, bytes, list[ReadableSpan]]], late: list[tuple[int, ...]]
    ) -> None:
        """Records `_cover_late` counted and that were not written after all."""
        for (target, _, _), traces in zip(bodies, late, strict=True):
            if traces:
                self._ledger.release_late(target.key, traces)

    def _enqueue(self, entries: list[_Entry]) -> None:
        """Under the order lock: written records to the worker, in log order."""
        with self._cond:
            self._queue.extend(entries)
            self._queued_spans += sum(len(entry.spans) for entry in entries)

    def _admit(self, spans: int) -> None:
        """Room for `spans` more, or Overloaded: the queue bound (429), a spool near its cap (503)."""
        # What a pipeline may spill at once if Prefactor is down: everything queued, at the size per span its spool
        # took so far (else a conservative guess: a spool item is JSON, larger than its OTLP protobuf), plus a
        # file's fixed part (the schema set a run's register carries). The spool drops its oldest past its cap:
        # the gateway must refuse before that.
        queued = self._queued_spans + sum(target.queued_spans for target in self._targets.values()) + spans
        guess = max(SPOOLED_SPAN_BYTES_MIN, 3 * self._bytes_per_span)
        for target in self._targets.values():
            spill = SPILL_FILE_BYTES + queued * max(guess, target.spool_bytes_per_span)
            if target.spool_fill(spill) >= SPOOL_HIGH_WATER:
                self._count(overloaded_503=1)
                raise Overloaded(
                    f"the spool of {target.key} is nearly full (Prefactor unreachable?)",
                    self._retry_after(self._spool_backlog_spans(target)),
                    unavailable=True,
                )
        backlog = queued - spans
        if queued > self.settings.queue_max_spans:
            self._count(overloaded_429=1)
            raise Overloaded(
                f"{backlog} spans are queued (bound {self.settings.queue_max_spans})",
                self._retry_after(backlog),
                unavailable=False,
            )

    def _log_backlog_spans(self) -> int:
        """The ingress log's content in spans (about): what must be finished before it has room again."""
        return int(self._log.bytes / max(1.0, self._bytes_per_span))

    @staticmethod
    def _spool_backlog_spans(target: AgentPipeline) -> int:
        """A spool's backlog in spans (about): what must be delivered before it has room again."""
        per_span = max(float(SPOOLED_SPAN_BYTES_MIN), target.spool_bytes_per_span)
        return int(target.spool_fill() * target.config.spool_max_bytes / per_span)

    def _retry_after(self, backlog_spans: int) -> float:
        """Seconds until the backlog is likely taken in, at the worker's recent rate: at least 1, at most
        `max_retry_after_s` (a third of the finish grace; counted `retry_after_capped` when that cap binds)."""
        rate = self._rate if self._rate > 0 else 100.0
        seconds = float(max(1.0, math.ceil(backlog_spans / rate)))
        if seconds > self.max_retry_after_s:
            self._count(retry_after_capped=1)
            return self.max_retry_after_s
        return seconds

    def _fail(self, reason: str) -> None:
        if self._failure is None:
            logger.error("Prefactor gateway: %s; not accepting any more requests", reason)
            self._failure = reason

    # ------------------------------------------------------------------ the worker

    def _run(self) -> None:
        try:
            self._replay()
            with self._cond:
                if self._state == "replaying":
                    self._state = "ready"
                self._cond.notify_all()
            stop = self._shutting_down
            while True:
                with self._cond:
                    if not self._queue_ready() and not stop.is_set():
                        self._cond.wait(TICK_S)
                stopping = stop.is_set()
                self._take()
                if stopping:
                    self._finish_everything()
                    return
                self._background()
                now = time.monotonic()
                if self._drops.due(now):
                    self._drops.check(self._targets.values(), now)
        except Exception:
            logger.exception("Prefactor gateway: the worker failed unexpectedly")
            self._fail("the worker failed")
            with self._cond:
                self._cond.notify_all()
        finally:
            if self._shutting_down.is_set():
                self._close()

    def _queue_ready(self) -> bool:
        return bool(self._queue) and self._queue[0].seq <= self._log.synced_seq

    def _take(self) -> None:
        """Give the synced records to their pipelines, in log order, and drain the pipelines that got spans."""
        touched: dict[str, AgentPipeline] = {}
        started = time.monotonic()
        taken_spans = 0
        while True:
            with self._cond:
                if not self._queue_ready():
                    break
                entry = self._queue.popleft()
            target = entry.target
            records = target.map_spans(entry.spans)
            target.pipeline.add(records)
            with self._cond:  # only now: the spans are counted in the pipeline's queue (admission reads both)
                self._queued_spans -= len(entry.spans)
            self._ledger.taken(entry.segment, target.key, {record.trace_id for record in records}, late=entry.late)
            touched[target.key] = target
            taken_spans += len(entry.spans)
            if target.queued_spans >= target.config.max_queued_spans // 2:
                target.drain(time.monotonic() + target.config.export_timeout)
        for target in touched.values():
            target.drain(time.monotonic() + target.config.export_timeout)
        if taken_spans:
            elapsed = max(1e-3, time.monotonic() - started)
            self._rate = 0.7 * self._rate + 0.3 * (taken_spans / elapsed) if self._rate else taken_spans / elapsed

    def _background(self) -> None:
        now = time.monotonic()
        for target in self._targets.values():
            config = target.config
            if target.background_due(now):  # also finishes runs whose root never came (the planner's rule)
                target.drain(time.monotonic() + config.export_timeout, background=True)
        self._retire()

    def _retire(self) -> None:
        if not self._replayed_whole:
            return  # a segment partly replayed may hold traces the ledger has not seen
        ledger = self._ledger
        done: dict[str, list[int]] = {}
        for key, target in self._targets.items():
            open_traces = ledger.open_traces(key)
            if open_traces:
                done_here = target.done_traces(list(open_traces))
                if done_here:
                    done[key] = done_here
        if done or ledger.has_late():
            with self._order_lock:
                # Under the order lock: a record of a trace written from now on finds it listed finished, and is
                # checked before it is acknowledged (`_cover_late`); one written before and not taken yet keeps its
                # trace open this round (taken, it reopens it anyway). A late trace's state, if the trace is done
                # again, is the planner's now.
                queued = self._queued_traces() if done else {}
                for key, trace_ids in done.items():
                    waiting = queued.get(key, set())
                    trace_ids = [trace_id for trace_id in trace_ids if trace_id not in waiting]
                    target = self._targets[key]
                    states = {t: _finished_state(target, t) for t in ledger.late_among(key, trace_ids)}
                    ledger.mark_done(key, trace_ids, states)
                ledger.prune_late()
            ledger.flush()
        current = self._log.current_segment
        if current is not None and ledger.all_done(current) and self._log.written_seq == self._log.synced_seq:
            with self._order_lock:  # no request writes into it meanwhile
                if ledger.all_done(current) and self._log.current_segment == current:
                    self._log.seal()
                    ledger.touch()
        retirable = ledger.retirable(self._log.current_segment)
        if retirable:
            self._count(segments_retired=ledger.retire(self._log, retirable))
            if ledger.has_late():  # a late trace whose last segment went leaves the file now
                with self._order_lock:
                    ledger.prune_late()
                ledger.flush()

    def _queued_traces(self) -> dict[str, set[int]]:
        """Under the order lock (nothing is queued meanwhile): pipeline key -> the traces of the records written and
        not yet taken by the worker."""
        traces: dict[str, set[int]] = {}
        with self._cond:
            entries = list(self._queue)
        for entry in entries:
            if entry.trace_ids is None:
                entry.trace_ids = frozenset(s.context.trace_id for s in entry.spans if s.context is not None)
            traces.setdefault(entry.target.key, set()).update(entry.trace_ids)
        return traces

    def _replay(self) -> None:
        finished = self._ledger.finished_at_start
        states = self._ledger.states_at_start
        carried: dict[tuple[str, int], bool] = {}  # finished trace -> its state given to the planner: replay it
        found = self._log.segments()
        replayed = skipped = 0
        unknown: set[str] = set()
        for record in self._replay_records():
            target = self._targets.get(record.key)
            if target is None:
                self._ledger.pin(record.segment)  # kept: a gateway with that route back delivers it
                self._count(replay_unknown_route_records=1)
                if record.key not in unknown:  # once per key, however many records
                    unknown.add(record.key)
                    logger.error(
                        "Prefactor gateway: the ingress log holds spans for %r, which is no longer a route and agent "
                        "of this gateway's; they are kept in the log, not sent",
                        record.key,
                    )
                continue
            try:
                decoded = decode_spans(parse_protobuf(record.data))
            except OtlpDecodeError:
                self._count(replay_undecodable_records=1)
                continue
            spans = []
            for span in decoded.spans:
                context = span.context
                trace = (record.key, context.trace_id) if context is not None else None
                if trace is not None and trace in finished:
                    replay = carried.get(trace)
                    if replay is None:  # its first span: the planner gets the trace's state before any of them
                        replay = carried[trace] = _restore_finished(target, trace[1], states.get(trace))
                    if not replay:
                        self._ledger.skipped(record.segment, record.key, trace[1])
                        skipped += 1
                        continue
                spans.append(span)
            records = target.map_spans(spans)
            target.pipeline.add(records)
            self._ledger.taken(record.segment, target.key, {r.trace_id for r in records}, held=False)
            replayed += len(spans)
            if target.queued_spans >= target.config.max_queued_spans // 2:
                target.drain(time.monotonic() + target.config.export_timeout)
        if not self._shutting_down.is_set():
            self._replayed_whole = True
            for segment in found:
                self._ledger.known(segment)  # one whose records were all unreadable is retired too
        self._count(spans_replayed=replayed, spans_skipped_finished=skipped)
        if replayed or skipped:
            logger.info(
                "Prefactor gateway: replayed %d span(s) from the ingress log (%d of finished traces skipped)",
                replayed,
                skipped,
            )
        for target in self._targets.values():
            target.drain(time.monotonic() + target.config.export_timeout)

    def _replay_records(self) -> Iterator[LogRecord]:
        for count, record in enumerate(self._log.replay(), start=1):
            yield record
            if count % _REPLAY_DRAIN_EVERY == 0:
                for target in self._targets.values():
                    if target.queued_spans:
                        target.drain(time.monotonic() + target.config.export_timeout)
            if self._shutting_down.is_set():
                return  # the rest stays in the log for the next gateway

    def _finish_everything(self) -> None:
        """Shutdown, on the worker: everything acknowledged to its pipeline, then each pipeline drained as the
        exporter's shutdown drains (deliver, or spool what cannot be delivered by the deadline; runs finished)."""
        deadline = self._stop_deadline if self._stop_deadline is not None else time.monotonic()
        with self._order_lock:
            pass  # a barrier: a request past it sees the state `stopping` and writes nothing
        for _ in range(100):  # requests still syncing their records: bounded wait
            with self._cond:
                if not self._queue:
                    break
                if not self._queue_ready():
                    self._cond.wait(0.05)
            self._take()
        targets = list(self._targets.values())
        for index, target in enumerate(targets):
            # An equal share of what is left of the budget for each pipeline still to go.
            share = max(0.0, deadline - time.monotonic()) / (len(targets) - index)
            try:
                target.pipeline.drain(time.monotonic() + share, shutdown=True)
            except Exception:
                logger.exception("Prefactor gateway: draining %s at shutdown failed", target.key)
        self._retire()
        self._drops.flush(targets)

    def _close(self) -> None:
        for target in self._targets.values():
            try:
                target.close()
            except Exception:
                logger.exception("Prefactor gateway: closing %s failed", target.key)
        self._log.close()

    # ------------------------------------------------------------------ visibility

    def _count(self, **amounts: int) -> None:
        with self._counters_lock:
            self._counters.update(amounts)

    def stats(self) -> dict[str, Any]:
        with self._counters_lock:
            counters = dict(self._counters)
        log_counters = dict(self._log.counters)
        return {
            "ready": self.not_ready_reason() is None,
            "not_ready_reason": self.not_ready_reason(),
            "replica_id": self.replica_id,
            "requests": counters.get("requests", 0),
            "requests_unauthenticated": counters.get("requests_unauthenticated", 0),
            "spans_accepted": counters.get("spans_accepted", 0),
            "spans_rejected": counters.get("spans_rejected", 0),
            "bytes_accepted": counters.get("bytes_accepted", 0),
            "overloaded_429": counters.get("overloaded_429", 0),
            "overloaded_503": counters.get("overloaded_503", 0),
            "internal_errors": counters.get("internal_errors", 0),
            "spans_queued": self._queued_spans,
            "spans_replayed": counters.get("spans_replayed", 0),
            "spans_skipped_finished": counters.get("spans_skipped_finished", 0),
            "replay_unknown_route_records": counters.get("replay_unknown_route_records", 0),
            "replay_undecodable_records": counters.get("replay_undecodable_records", 0),
            "log_segments": len(self._log.segments()),
            "log_bytes": self._log.bytes,
            "log_segments_retired": log_counters.get("segments_retired", 0),
            "log_records_corrupt": log_counters.get("records_corrupt", 0),
            "log_records_torn": log_counters.get("records_torn", 0),
            "log_fsyncs": log_counters.get("fsyncs", 0),
            "open_traces": self._ledger.open_count,
            "retry_after_max_s": self.max_retry_after_s,
            "retry_after_capped": counters.get("retry_after_capped", 0),
            "drop_log_lines": self._drops.lines,
            "pipelines": {
                key: {**target.stats(), "spans_accepted": counters.get(f"spans_accepted:{key}", 0)}
                for key, target in self._targets.items()
            },
        }

    def stats_view(self, authorization: str | None) -> dict[str, Any]:
        """`stats()` as `GET /stats` shows it to the holder of `authorization`: the gateway's own counters (they name
        no route or agent) and the pipelines of the token's route only; every pipeline when the gateway has no
        ingress token at all (loopback only). `Unauthenticated` (counted) without a valid token. Any thread."""
        route = self.authenticate(authorization)
        view = self.stats()
        if not self.settings.open:
            view["pipelines"] = {
                key: entry for key, entry in view["pipelines"].items() if self._targets[key].route == route.name
            }
        return view

    def startup_line(self) -> str:
        routes = "; ".join(route.describe() for route in self._routes.routes)
        auth = "no ingress token (loopback only)" if self.settings.open else "bearer ingress tokens"
        return (
            f"prefactor-otel gateway: spans go to {routes}; {auth}; ingress log and spools in {self.settings.directory}"
        )


def _by_agent(
    route: Route, request: ExportTraceServiceRequest
) -> tuple[dict[str, ExportTraceServiceRequest], int, list[str]]:
    """The request's ResourceSpans grouped by the route's agent each one names; spans naming an agent the route
    does not have are refused (count and message)."""
    groups: dict[str, ExportTraceServiceRequest] = {}
    rejected = 0
    messages: list[str] = []
    for resource_spans in request.resource_spans:
        chosen = _chosen_agent(resource_spans)
        agent = route.agent_key(chosen)
        if agent is None:
            count = sum(len(scope.spans) for scope in resource_spans.scope_spans)
            rejected += count
            messages.append(f"{AGENT_ATTRIBUTE}={str(chosen)[:64]!r} is not an agent this token may write to")
            continue
        groups.setdefault(agent, ExportTraceServiceRequest()).resource_spans.append(resource_spans)
    return groups, rejected, messages


def _chosen_agent(resource_spans: ResourceSpans) -> str | None:
    for attribute in resource_spans.resource.attributes:
        if attribute.key == AGENT_ATTRIBUTE:
            value = attribute.value
            return value.string_value if value.WhichOneof("value") == "string_value" else str(value)
    return None


def max_retry_after(settings: GatewaySettings) -> float:
    """The longest Retry-After the gateway sends: a third of the shortest finish grace of its routes, in whole
    seconds, at least 1 (the least a Retry-After can say) and at most `MAX_RETRY_AFTER_S`."""
    graces = [route.config.finish_grace_seconds for route in settings.routes.routes]
    grace = min(graces) if graces else settings.config.finish_grace_seconds
    return float(min(MAX_RETRY_AFTER_S, max(1, math.floor(grace * RETRY_AFTER_GRACE_SHARE))))


def _finished_state(target: AgentPipeline, trace_id: int) -> TraceState | None:
    """What the trace's planner would need to go on with it in another process (Planner.finished_trace_state):
    None while a run of it is open, or once its span ids are forgotten. Any thread (the pipeline's state lock)."""
    pipeline = target.pipeline
    with pipeline.state_lock:
        planner = pipeline.planner
        return planner.finished_trace_state(trace_id) if planner is not None else None


def _restore_finished(target: AgentPipeline, trace_id: int, state: TraceState | None) -> bool:
    """The replay, at a finished trace's first span: give its planner the state the finished-traces file carried,
    so its records can be replayed (True); False (skip them, as before late traces were carried) without one, or
    without a planner yet (no partition known)."""
    if state is None:
        return False
    pipeline = target.pipeline
    # Created on the pipeline's first drain otherwise; at once when the agent id gives the partition.
    planner = pipeline.ensure_planner(time.monotonic() + target.config.export_timeout)
    if planner is None:
        return False
    with pipeline.state_lock:
        return planner.restore_finished_trace(trace_id, *state)


def _replica_id(directory: Path) -> str:
    """This gateway's replica id: created once (random), kept in the directory so a restart keeps its run ids."""
    path = directory / _REPLICA_FILE
    try:
        value = path.read_text(encoding="ascii").strip()
        if value:
            return value
    except (OSError, UnicodeDecodeError):
        pass
    value = secrets.token_hex(8)
    tmp = path.with_name(f".tmp-{_REPLICA_FILE}")
    with open(tmp, "w", encoding="ascii") as fh:
        fh.write(value + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)  # the id is kept before any run is derived from it
    finally:
        os.close(fd)
    return value
