"""The exporter's process lifecycle: what it does when its process forks, when the interpreter exits, when a
multiprocessing worker ends, and at `shutdown`.

A mixin of PrefactorSpanExporter (exporter.py), split out as its own concept; it shares the exporter's state (built
by its `__init__` and `_new_process_state`). lifecycle.py holds the hooks through which the exporter learns of these
events (registered here, `_register_process_hooks`, holding the exporter weakly); this module what it does then.

- exit: everything shares one budget, PREFACTOR_SHUTDOWN_TIMEOUT from the moment the exit is noticed: `_begin_exit`
  sets `_exit_deadline` and caps the transport's requests there, and no deadline the exporter computes (`_deadline`)
  passes it. Our atexit hook notices the exit first when the exporter was created after its TracerProvider (atexit
  is LIFO); otherwise the provider's hook (flush, shutdown) runs first, and the exporter notices the exit itself:
  `_deadline` on every call and the finisher thread every half second (`lifecycle.interpreter_exiting`).
- shutdown: deliver what is left within the budget, keeping back up to `_SPILL_RESERVE_S` to write the rest to
  the spool; runs still open stay in the journal of open runs. After it `export` returns FAILURE (exporter.py).
- a multiprocessing worker ends with os._exit() (no atexit hook): `_finish_as_a_worker` flushes the global
  TracerProvider and shuts down, within the same budget.
- fork: `_reset_after_fork` (registered once per exporter) is the one place that rebuilds locks, threads, the HTTP
  client and the pipeline, and it starts the child's finisher thread there and then (as the SDK's batch processor
  starts its worker), so the child's live spans go live before it exports anything. The child starts with no runs
  of its parent's: its part of a trace open at the fork is a run of its own (planner.ForkOrigin), and it never
  sends its copies of the parent's open spans. The spool and the journal also guard themselves with fork hooks of
  their own, because their descriptors must be handled even when the exporter is gone.

Threads and locks:
- `shutdown` is called by the application, the TracerProvider's shutdown (an atexit hook) or `_finish_as_a_worker`
  (a multiprocessing finalizer); `_lifecycle_lock`: it runs once, a second, concurrent call returns at once. It
  takes `_send_lock` to send (waiting for it only until shortly before its deadline, else it spills to the spool
  without sending) and joins the finisher thread.
- `_begin_exit`: our atexit hook, a worker's finalizer, the finisher thread, or any thread computing a deadline; it
  sets `_exit_deadline` once (no lock: threads noticing the exit together set deadlines as close as they are).
- `_reset_after_fork` runs in the forked child, on its only thread, before anything else of the child's; it reads
  the parent's pipeline without its lock (a lock another parent thread held at the fork stays held in the child).
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

from opentelemetry import trace as trace_api
from opentelemetry.sdk.trace import ReadableSpan

from prefactor_otel._logging import logger
from prefactor_otel.config.options import PrefactorConfig
from prefactor_otel.control.poll import InstancePoller
from prefactor_otel.pipeline.backlog import Backlog
from prefactor_otel.pipeline.delivery import Delivery
from prefactor_otel.pipeline.pipeline import Pipeline
from prefactor_otel.pipeline.planner import ForkOrigin
from prefactor_otel.sdk import lifecycle
from prefactor_otel.transport.client import BulkTransport

# Of a shutdown budget, what is kept back for writing the undelivered rest to the spool.
_SPILL_RESERVE_S = 0.5


class ExporterLifecycle:
    # State owned by PrefactorSpanExporter (exporter.py), used here.
    _config: PrefactorConfig
    _transport: BulkTransport | None
    _delivery: Delivery | None
    _backlog: Backlog | None
    _pipeline: Pipeline | None
    _poller: InstancePoller | None
    _starts: deque[weakref.ref[ReadableSpan]]
    _send_lock: threading.Lock
    _lifecycle_lock: threading.Lock
    _ticker: threading.Thread | None
    _ticker_stop: threading.Event
    _exit_deadline: float | None
    _forked_at_ns: int | None
    _traces_open_at_fork: frozenset[int]
    _shutdown: bool
    _closing: bool
    _disabled_reason: str | None
    # PrefactorSpanExporter methods used here.
    _new_process_state: Callable[[], None]
    _new_pipeline: Callable[[ForkOrigin | None], Pipeline]
    _ensure_ticker: Callable[[], None]
    stats: Callable[[], dict[str, Any]]

    def _register_process_hooks(self) -> None:
        lifecycle.register(
            self,
            after_fork_in_child=ExporterLifecycle._reset_after_fork,
            # Runs first when the exporter was created after its TracerProvider; otherwise the exporter notices
            # the exit itself (`_deadline`, and the finisher thread every half second).
            at_exit=ExporterLifecycle._begin_exit,
            at_worker_exit=ExporterLifecycle._finish_as_a_worker,
        )

    # ------------------------------------------------------------------ shutdown

    def shutdown(self, timeout_millis: int = 30_000) -> None:
        """Deliver what is left within min(timeout_millis, PREFACTOR_SHUTDOWN_TIMEOUT), then close.

        What cannot be delivered in time goes to the spool (a later process sends it); runs still open are in
        the journal of open runs. Runs once: a second, concurrent call returns at once.
        """
        with self._lifecycle_lock:
            if self._shutdown or self._closing:
                return
            self._closing = True
        try:
            if self._disabled_reason is None:
                self._shutdown_delivery(timeout_millis / 1000)
        except Exception:
            logger.exception("Prefactor shutdown failed unexpectedly")
        finally:
            self._shutdown = True
            if self._transport is not None:
                self._transport.close()
            self._report_at_close()

    def _shutdown_delivery(self, budget_s: float) -> None:
        deadline = min(self._deadline(budget_s), self._deadline(self._config.shutdown_timeout))
        transport = self._transport
        pipeline = self._pipeline
        assert transport is not None and pipeline is not None
        self._ticker_stop.set()
        # Another thread's request must end in time for us to send or spill: its backoff sleeps wake now, and its
        # socket waits are capped halfway to the point where we stop waiting for the send lock (it ends within a
        # quarter second of the cap), so the lock frees up with time left for our own last attempt.
        now = time.monotonic()
        lock_deadline = deadline - min(_SPILL_RESERVE_S, (deadline - now) / 5)
        transport.interrupt_waits()
        self._cap_transport(now + (lock_deadline - now) / 2)
        if self._send_lock.acquire(timeout=max(0.0, lock_deadline - time.monotonic())):
            try:
                transport.resume_waits()
                self._cap_transport(deadline)
                pipeline.drain(deadline, shutdown=True)
            finally:
                self._send_lock.release()
        else:
            # The in-flight request did not end in time: keep everything on disk instead (idempotency keys make
            # a later re-send of what that request delivered harmless).
            pipeline.spill_unsent(shutdown=True)
        ticker = self._ticker
        if ticker is not None and ticker is not threading.current_thread():
            ticker.join(max(0.0, deadline - time.monotonic()))
        pipeline.close()

    def _report_at_close(self) -> None:
        stats = self.stats()
        if stats["spans_dropped"] or stats["spans_queued"]:
            logger.warning(
                "Prefactor exporter shut down: %d span(s) exported, %d dropped %s, %d left undelivered",
                stats["spans_exported"],
                stats["spans_dropped"],
                dict(stats["dropped_by_reason"]),
                stats["spans_queued"],
            )
        pipeline = self._pipeline
        transport = self._transport
        stopped = transport.stopped_reason if transport is not None else None
        if stopped is not None and pipeline is not None and transport is not None:
            kept, dropped = pipeline.refusal_figures(stopped)
            where = f" in {self._backlog.spool.directory}" if self._backlog is not None else ""
            if stopped == "auth":
                why = f"Prefactor refused the API token (HTTP {transport.auth_status or 401})"
                fixed = "a valid token"
            else:
                why = "Prefactor could not use the proxy the environment sets"
                fixed = "a usable proxy"
            logger.warning(
                "%s: %d span(s) kept on disk%s, sent when a process starts with %s; %d dropped (reason %s)",
                why,
                kept,
                where,
                fixed,
                dropped,
                stopped,
            )
        elif stats["spool_backlog_bytes"]:
            assert self._backlog is not None
            logger.warning(
                "Prefactor: %d bytes of undelivered items are kept in the spool (%s); the next process that starts "
                "with this configuration re-sends them",
                stats["spool_backlog_bytes"],
                self._backlog.spool.directory,
            )

    # ------------------------------------------------------------------ exit

    def _deadline(self, seconds: float) -> float:
        """now + seconds, but never past the exit budget once the interpreter is exiting."""
        if self._exit_deadline is None and lifecycle.interpreter_exiting():
            self._begin_exit()
        deadline = time.monotonic() + seconds
        return deadline if self._exit_deadline is None else min(deadline, self._exit_deadline)

    def _begin_exit(self) -> None:
        if self._exit_deadline is not None:
            return
        self._exit_deadline = time.monotonic() + self._config.shutdown_timeout
        self._cap_transport(self._exit_deadline)

    def _cap_transport(self, at: float) -> None:
        cap = getattr(self._transport, "cap_deadline", None)
        if cap is not None:
            cap(at)

    def _finish_as_a_worker(self) -> None:
        """A multiprocessing worker ends: flush the global TracerProvider (normally the one feeding this exporter:
        its batch queue holds the worker's last spans), then shut down, all within the exit budget."""
        if self._shutdown:
            return
        self._begin_exit()
        budget_ms = int(self._config.shutdown_timeout * 1000)
        flush = getattr(trace_api.get_tracer_provider(), "force_flush", None)
        if callable(flush):
            try:
                flush(budget_ms)
            except Exception:
                logger.debug("Prefactor: flushing the tracer provider in a worker failed", exc_info=True)
        self.shutdown(budget_ms)

    # ------------------------------------------------------------------ fork

    def _reset_after_fork(self) -> None:
        """The one place a forked child is made whole: new locks and threads, a new HTTP client, and no state of
        the parent's (its runs, waiting spans and counters stay the parent's to deliver). The child's part of a
        trace open at the fork is a run of its own (planner.ForkOrigin). Its sending thread starts here, as the
        SDK's batch worker does, so its live spans go live without waiting for its first export."""
        parent_spans = self._pipeline.spans_at_fork() if self._pipeline is not None else {}
        self._new_process_state()
        self._starts.clear()  # the parent's starts: its spans, which the parent exports
        self._forked_at_ns = time.time_ns()
        # Only spans of traces open at the fork that started before it are copies of the parent's: a span of any
        # other trace is the child's own, even with a start time set in the past.
        self._traces_open_at_fork = frozenset(parent_spans)
        if self._transport is not None:
            self._transport.reset_after_fork()
        if self._delivery is not None:
            self._delivery.reset_after_fork()
        if self._poller is not None:
            self._poller.reset_after_fork()
        if self._backlog is not None:
            self._backlog.reset_after_fork()
        if self._delivery is not None:
            origin = ForkOrigin(f"{os.getpid()}-{self._forked_at_ns}", parent_spans)
            self._pipeline = self._new_pipeline(origin)
            self._ensure_ticker()
