"""Run control in one process: when Prefactor terminates a run, stop it in the planner, then tell the application.

Prefactor says a run is terminated in two ways: an answer carrying `control.terminate` (`on_terminate_answer`,
Delivery's hook) or a poll of the run's status (`poll`, control/poll.py: each run at most once per
PREFACTOR_CONTROL_POLL_INTERVAL, a run quiet for a while sooner; how long each has been quiet is the planner's).
Either way the run is first stopped in the planner (nothing the application does once it is told can still reach
the run), then recorded in the process's TerminationRegistry
(control/terminations.py: the application's callbacks run there). An answer for a spooled item of a run this
process never opened (its planner does not know the instance: the spool of a process that ended) is recorded apart
(`record_not_ours`): logged, counted, its replayed items dropped, and no callback of this process runs.

One RunControl per process, built with the pipeline it stops runs in: a forked child builds its own with its own
pipeline (the exporter hooks it into Delivery and the poller again there).

Threads and locks: `on_terminate_answer` runs on the sending thread (the one holding the exporter's send lock),
with no lock held; `poll` on the finisher thread. Both take the pipeline's `state_lock` only to read or change
the planner, and release it before recording: the registry has its own lock and calls the application's
callbacks on this thread. RunControl has no lock of its own and no state besides what it was built with.
"""

from __future__ import annotations

from prefactor_otel._logging import logger
from prefactor_otel.control.poll import InstancePoller
from prefactor_otel.control.terminations import SOURCE_RESPONSE, TerminationRegistry
from prefactor_otel.pipeline.delivery import Delivery
from prefactor_otel.pipeline.items import PlannedItem
from prefactor_otel.pipeline.pipeline import Pipeline
from prefactor_otel.sdk.exit_budget import ExitBudget
from prefactor_otel.transport.wire import instance_id_of

# The longest a poll of run statuses may take from one tick of the finisher thread.
_POLL_BUDGET_S = 5.0


class RunControl:
    def __init__(
        self,
        pipeline: Pipeline,
        delivery: Delivery,
        poller: InstancePoller | None,
        registry: TerminationRegistry,
        exit_budget: ExitBudget,
        *,
        export_timeout: float,
    ) -> None:
        self._pipeline = pipeline
        self._delivery = delivery
        self._poller = poller
        self._registry = registry
        self._exit_budget = exit_budget
        self._export_timeout = export_timeout

    def on_terminate_answer(self, item: PlannedItem, reason: str | None) -> None:
        """Delivery heard `control.terminate` in the answer to `item` (sending thread, no lock held)."""
        pipeline = self._pipeline
        instance_id = instance_id_of(item.body)
        trace_id: int | None = item.trace_id or None  # 0: an item read back from the spool
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
            if self._registry.record_not_ours(instance_id, reason, SOURCE_RESPONSE):
                self._delivery.counters["control_terminations_not_ours"] += 1
            return
        self.stop_run(trace_id)  # first: once the application is told, nothing more reaches the run
        self._registry.record(instance_id, trace_id, reason, SOURCE_RESPONSE)

    def poll(self) -> None:
        """The slow path: ask for the status of the runs open here (each at most once per poll interval)."""
        poller = self._poller
        pipeline = self._pipeline
        if poller is None or poller.stopped or pipeline.planner is None:
            return
        with pipeline.state_lock:
            runs = pipeline.planner.active_runs()
            quiet_since = pipeline.planner.runs.last_activity_of_active_runs()
        if not runs:
            return
        try:
            deadline = self._exit_budget.deadline(min(self._export_timeout, _POLL_BUDGET_S))
            poller.poll(runs, deadline, quiet_since)
        except Exception:  # never a reason to stop the finisher thread
            logger.debug("Prefactor: polling for control failed", exc_info=True)

    def stop_run(self, trace_id: int | None) -> None:
        """Stop the run of `trace_id` in the planner: it sends nothing more for it. The poller's `before_record`."""
        pipeline = self._pipeline
        if trace_id is None:
            return
        with pipeline.state_lock:
            if pipeline.planner is not None:
                pipeline.planner.terminate(trace_id)
