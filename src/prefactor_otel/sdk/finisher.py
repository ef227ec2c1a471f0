"""The exporter's own thread, the finisher: the work no export call brings.

It wakes every half second and: notices interpreter exit (then begins the exit budget); finishes the runs of dead
processes (every minute; the exporter looked at start); polls the status of the runs open here for control
(run_control.py, PREFACTOR_CONTROL_POLL_INTERVAL); and, when the pipeline has due work (span starts to read, live
spans to create or finish, runs past their grace period, aged orphans, the spool's backlog), sends it -- only if
the send lock is free (it never waits for it), backing off while sends fail. It never stops on an error.

One Finisher per process, as the SDK's BatchSpanProcessor has one worker: built with the pipeline of its process
and started by the exporter (lazily, and in a forked child at once, by the exporter's fork hook); a daemon thread
named `prefactor-otel-finisher`. The thread keeps its exporter alive (`keep_alive`): the exporter's process hooks
hold it weakly, and an exporter whose thread still sends must still hear of exit and of a worker's end.

Threads and locks: `ensure_running`, `stop` and `join` are called by the exporter (any exporting thread;
`shutdown`'s caller); the loop runs on the finisher thread. The finisher sends only while holding the exporter's
send lock (`send_lock`, taken without waiting); the pipeline's `state_lock` is taken inside the pipeline and
RunControl. Its own state (the thread, the stop event) has no lock: two threads starting it at once may each start
one (both then serve the same pipeline under the send lock), as before.
"""

from __future__ import annotations

import threading
import time

from prefactor_otel._logging import logger
from prefactor_otel.pipeline.backlog import Backlog
from prefactor_otel.pipeline.pipeline import Pipeline
from prefactor_otel.sdk import lifecycle
from prefactor_otel.sdk.exit_budget import ExitBudget
from prefactor_otel.sdk.run_control import RunControl

TICK_S = 0.5
_TICK_BACKOFF_CAP_S = 30.0
_ADOPT_EVERY_S = 60.0  # how often the journals of ended processes are looked for


def adopt_abandoned_runs(backlog: Backlog | None) -> None:
    """Finish the runs that processes which ended left open (their journals). Never raises."""
    if backlog is None:
        return
    try:
        backlog.adopt_abandoned()
    except Exception:  # never a reason to fail the application
        logger.exception("Prefactor: finishing the runs of ended processes failed unexpectedly")


class Finisher:
    def __init__(
        self,
        pipeline: Pipeline,
        send_lock: threading.Lock,
        exit_budget: ExitBudget,
        control: RunControl,
        backlog: Backlog | None,
        *,
        export_timeout: float,
        keep_alive: object,
    ) -> None:
        self._pipeline = pipeline
        self._send_lock = send_lock
        self._exit_budget = exit_budget
        self._control = control
        self._backlog = backlog
        self._export_timeout = export_timeout
        self._keep_alive = keep_alive  # held, never used: see the module's docstring
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def ensure_running(self) -> None:
        """Start the thread unless it runs (again, should it have died). After `stop` a new thread ends at once."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._thread = threading.Thread(target=self._run, name="prefactor-otel-finisher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """The thread ends after its current tick (shutdown)."""
        self._stop.set()

    def join(self, deadline: float) -> None:
        """Wait for the thread to end, until `deadline` (time.monotonic()); at once when called on it."""
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.monotonic()))

    def _run(self) -> None:
        stop = self._stop
        exit_budget = self._exit_budget
        pipeline = self._pipeline
        delay = TICK_S
        next_send = 0.0
        next_adoption = time.monotonic() + _ADOPT_EVERY_S  # the exporter has just looked
        while not stop.wait(TICK_S):
            if not exit_budget.started and lifecycle.interpreter_exiting():
                exit_budget.begin()
            now = time.monotonic()
            if now >= next_adoption and not exit_budget.started:
                next_adoption = now + _ADOPT_EVERY_S
                adopt_abandoned_runs(self._backlog)
            if not exit_budget.started:
                self._control.poll()
            if now < next_send or not pipeline.has_due_work(now):
                continue
            if not self._send_lock.acquire(blocking=False):
                continue
            try:
                deadline = exit_budget.deadline(self._export_timeout)
                ok = pipeline.background_send(deadline)
            except Exception:
                logger.exception("Prefactor background send failed unexpectedly")
                ok = False
            finally:
                self._send_lock.release()
            delay = TICK_S if ok else min(_TICK_BACKOFF_CAP_S, delay * 2)
            next_send = time.monotonic() + delay - TICK_S
