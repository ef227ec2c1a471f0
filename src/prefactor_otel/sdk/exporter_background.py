"""The exporter's own thread (the finisher) and what it does, beside control answers from the sending thread.

A mixin of PrefactorSpanExporter (exporter.py), split out as its own concept; it shares the exporter's state.

The finisher thread (`_tick_loop`, started lazily by `_ensure_ticker`, a daemon) wakes every half second and:
notices interpreter exit; finishes the runs of dead processes (at start and every minute); polls the status of the
runs open here for control (PREFACTOR_CONTROL_POLL_INTERVAL, control_poll.py); and, when the pipeline has due work
(span starts to read, live spans to create or finish, runs past their grace period, aged orphans, the spool's
backlog), sends it -- only if the send lock is free (it never waits for it), backing off while sends fail.

Control: `_on_terminate_answer` is Delivery's hook (the sending thread, no lock held) for an answer carrying
`control.terminate`; polling runs on the finisher thread. Both record the termination in the process's
TerminationRegistry (control.py: the application's callbacks run there) and stop the run in the planner, under the
pipeline's state lock. An answer for a spooled item of a run this process never opened (its planner does not know
the instance: the spool of a process that ended) is recorded apart (`record_not_ours`): logged, counted, its
replayed items dropped, and no callback of this process runs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from prefactor_otel._logging import logger
from prefactor_otel.config.options import PrefactorConfig
from prefactor_otel.control.poll import InstancePoller
from prefactor_otel.control.terminations import SOURCE_RESPONSE, TERMINATIONS
from prefactor_otel.pipeline.backlog import Backlog
from prefactor_otel.pipeline.delivery import Delivery
from prefactor_otel.pipeline.items import PlannedItem
from prefactor_otel.pipeline.pipeline import Pipeline
from prefactor_otel.sdk import lifecycle
from prefactor_otel.transport.wire import instance_id_of

TICK_S = 0.5
_TICK_BACKOFF_CAP_S = 30.0
_ADOPT_EVERY_S = 60.0  # how often the journals of ended processes are looked for


class BackgroundWork:
    # State owned by PrefactorSpanExporter (exporter.py), used here.
    _config: PrefactorConfig
    _pipeline: Pipeline | None
    _backlog: Backlog | None
    _poller: InstancePoller | None
    _delivery: Delivery | None
    _send_lock: threading.Lock
    _ticker: threading.Thread | None
    _ticker_stop: threading.Event
    _exit_deadline: float | None
    _shutdown: bool
    _closing: bool
    _disabled_reason: str | None
    # PrefactorSpanExporter methods used here (exporter_lifecycle.py).
    _begin_exit: Callable[[], None]
    _deadline: Callable[[float], float]

    def _ensure_ticker(self) -> None:
        if self._ticker is not None and self._ticker.is_alive():
            return
        if self._shutdown or self._closing or self._disabled_reason is not None:
            return
        self._ticker = threading.Thread(target=self._tick_loop, name="prefactor-otel-finisher", daemon=True)
        self._ticker.start()

    def _tick_loop(self) -> None:
        """Finishes runs after their grace period, sends aged orphans, replays the spool, finishes the runs of
        dead processes (at start and every minute); notices exit."""
        stop = self._ticker_stop
        delay = TICK_S
        next_send = 0.0
        next_adoption = time.monotonic() + _ADOPT_EVERY_S  # the constructor has just looked
        while not stop.wait(TICK_S):
            if self._exit_deadline is None and lifecycle.interpreter_exiting():
                self._begin_exit()
            now = time.monotonic()
            if now >= next_adoption and self._exit_deadline is None:
                next_adoption = now + _ADOPT_EVERY_S
                self._adopt_abandoned_runs()
            pipeline = self._pipeline
            if pipeline is not None and self._exit_deadline is None:
                self._poll_for_control(pipeline)
            if pipeline is None or now < next_send or not pipeline.has_due_work(now):
                continue
            if not self._send_lock.acquire(blocking=False):
                continue
            try:
                deadline = self._deadline(self._config.export_timeout)
                ok = pipeline.background_send(deadline)
            except Exception:
                logger.exception("Prefactor background send failed unexpectedly")
                ok = False
            finally:
                self._send_lock.release()
            delay = TICK_S if ok else min(_TICK_BACKOFF_CAP_S, delay * 2)
            next_send = time.monotonic() + delay - TICK_S

    # ------------------------------------------------------------------ control

    def _on_terminate_answer(self, item: PlannedItem, reason: str | None) -> None:
        """Delivery heard `control.terminate` in the answer to `item` (sending thread, no lock held)."""
        pipeline = self._pipeline
        instance_id = instance_id_of(item.body)
        trace_id: int | None = item.trace_id or None  # 0: an item read back from the spool
        if pipeline is not None:
            with pipeline.state_lock:
                planner = pipeline.planner
                if planner is not None:
                    if instance_id is None and trace_id is not None:
                        instance_id = planner.instance_of_trace(trace_id)
                    elif trace_id is None and instance_id is not None:
                        trace_id = planner.trace_of_instance(instance_id)  # None: a run this process never opened
        if instance_id is None:
            return
        if trace_id is None:
            # A spooled item of a run this process did not open (the spool of a process that ended): the replay
            # drops the run's other items, but the application here never started it and must not hear of it.
            if TERMINATIONS.record_not_ours(instance_id, reason, SOURCE_RESPONSE) and self._delivery is not None:
                self._delivery.counters["control_terminations_not_ours"] += 1
            return
        self._stop_terminated_run(trace_id)  # first: once the application is told, nothing more reaches the run
        TERMINATIONS.record(instance_id, trace_id, reason, SOURCE_RESPONSE)

    def _poll_for_control(self, pipeline: Pipeline) -> None:
        """The slow path: ask for the status of the runs open here (each at most once per poll interval)."""
        poller = self._poller
        if poller is None or poller.stopped or pipeline.planner is None:
            return
        with pipeline.state_lock:
            runs = pipeline.planner.active_runs()
        if not runs:
            return
        poller.before_record = lambda _instance_id, trace_id: self._stop_terminated_run(trace_id)
        try:
            poller.poll(runs, self._deadline(min(self._config.export_timeout, 5.0)))
        except Exception:  # never a reason to stop the finisher thread
            logger.debug("Prefactor: polling for control failed", exc_info=True)

    def _stop_terminated_run(self, trace_id: int | None) -> None:
        pipeline = self._pipeline
        if trace_id is None or pipeline is None:
            return
        with pipeline.state_lock:
            if pipeline.planner is not None:
                pipeline.planner.terminate(trace_id)

    def _adopt_abandoned_runs(self) -> None:
        if self._backlog is None:
            return
        try:
            self._backlog.adopt_abandoned()
        except Exception:  # never a reason to fail the application
            logger.exception("Prefactor: finishing the runs of ended processes failed unexpectedly")
