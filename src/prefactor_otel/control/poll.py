"""The slow path of control: poll `GET /api/v1/agent_instance/{id}` for active runs and record those found
`terminated` (the fast path is `control` in span answers, see pipeline/delivery.py).

As Prefactor's own SDKs do: each run at most once per `interval_s` (PREFACTOR_CONTROL_POLL_INTERVAL, default 30 s;
0 disables), its first poll one interval after it was first seen (a short run learns of termination from its span
answers, and costs no GET). A call polls at most `max_per_call` runs, the longest-due first, and stops at its
deadline. A 401/403 means the token may not read runs: polling stops for good, logged once at WARNING (the
exporter's writes go on). Any other failure is swallowed (DEBUG) and the run is polled again next interval.

Threads: `poll` is called by one exporter thread at a time (the exporter's finisher thread); it takes no lock of
its own. It records into the TerminationRegistry (which has its own lock) and sends through
`BulkTransport.get`, which may run alongside the sender's requests.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterable

from prefactor_otel._logging import logger
from prefactor_otel.control.terminations import SOURCE_POLL, TerminationRegistry
from prefactor_otel.transport.client import BulkTransport

MAX_POLLS_PER_CALL = 16  # one periodic tick never turns into a burst of GETs, however many runs are open
# Statuses after which a run never changes again: it is polled no more.
FINAL_STATUSES = frozenset({"complete", "failed", "cancelled"})


class InstancePoller:
    def __init__(
        self,
        transport: BulkTransport,
        registry: TerminationRegistry,
        interval_s: float,
        *,
        max_per_call: int = MAX_POLLS_PER_CALL,
    ) -> None:
        self._transport = transport
        self._registry = registry
        self._interval = interval_s
        self._max_per_call = max_per_call
        self._due: dict[str, float] = {}  # instance id -> when it is polled next (time.monotonic())
        self._done: set[str] = set()  # runs found finished or terminated (pruned with the runs passed in)
        self._stopped = interval_s <= 0
        self.counters: Counter[str] = Counter()
        # Set by the exporter: stops the run in its planner; called before the termination is recorded, so nothing
        # the application does once it is told can still reach the run.
        self.before_record: Callable[[str, int | None], None] | None = None

    @property
    def stopped(self) -> bool:
        """True when polling is off (interval 0) or was refused (401/403): `poll` then does nothing."""
        return self._stopped

    def reset_after_fork(self) -> None:
        """A forked child polls its own runs from scratch (the parent goes on polling its own)."""
        self._due = {}
        self._done = set()
        self.counters = Counter()

    def poll(self, runs: Iterable[tuple[str, int | None]], deadline: float) -> None:
        """Poll the runs of `runs` (instance id, OTel trace id) that are due, by `deadline` (time.monotonic()).
        Pass every run still active each time: a run no longer passed is forgotten. Never raises."""
        if self._stopped:
            return
        try:
            self._poll(runs, deadline)
        except Exception as exc:  # a bug here must not end the exporter's periodic thread
            self.counters["control_poll_errors"] += 1
            logger.debug("Prefactor: polling runs failed (%r)", exc)

    def _poll(self, runs: Iterable[tuple[str, int | None]], deadline: float) -> None:
        now = time.monotonic()
        active: dict[str, int | None] = dict(runs)
        # Forget runs no longer active; a new run is first polled one interval from now.
        self._due = {run: self._due.get(run, now + self._interval) for run in active if run not in self._done}
        self._done &= active.keys()
        due = sorted((at, run) for run, at in self._due.items() if at <= now)
        for _at, instance_id in due[: self._max_per_call]:
            if self._stopped or self._transport.auth_failed or time.monotonic() >= deadline:
                return
            trace_id = active[instance_id]
            if self._registry.for_instance(instance_id) is not None:  # already known (an answer said so)
                self._registry.record(instance_id, trace_id, None, SOURCE_POLL)  # attaches the trace id if new
                self._finished(instance_id)
                continue
            self._due[instance_id] = time.monotonic() + self._interval
            self._poll_one(instance_id, trace_id, deadline)

    def _poll_one(self, instance_id: str, trace_id: int | None, deadline: float) -> None:
        self.counters["control_polls"] += 1
        read = self._transport.get(f"/agent_instance/{instance_id}", deadline)
        status = read.status
        if status in (401, 403):
            self._stopped = True
            self.counters["control_poll_refused"] += 1
            logger.warning(
                "Prefactor: the API token may not read agent instances (HTTP %d); polling runs for termination "
                "stops (terminations still arrive with span answers)",
                status,
            )
            return
        if status != 200:
            self.counters["control_poll_failures"] += 1
            logger.debug("Prefactor: polling run %s failed (%s)", instance_id, status or read.error)
            return
        details = _details(read.body)
        if details is None:
            self.counters["control_poll_failures"] += 1
            logger.debug("Prefactor: the answer polling run %s is not an agent instance", instance_id)
            return
        run_status = details.get("status")
        if run_status == "terminated":
            if self.before_record is not None:
                self.before_record(instance_id, trace_id)  # the run stops before the application is told
            self._registry.record(instance_id, trace_id, details.get("termination_reason"), SOURCE_POLL)
            self._finished(instance_id)
        elif run_status in FINAL_STATUSES:
            self._finished(instance_id)

    def _finished(self, instance_id: str) -> None:
        self._due.pop(instance_id, None)
        self._done.add(instance_id)


def _details(answer: bytes) -> dict[str, object] | None:
    try:
        parsed = json.loads(answer)
    except ValueError:
        return None
    details = parsed.get("details") if isinstance(parsed, dict) else None
    return details if isinstance(details, dict) else None
