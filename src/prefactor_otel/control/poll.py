"""The slow path of control: poll `GET /api/v1/agent_instance/{id}` for active runs and record those found
`terminated` (the fast path is `control` in span answers, see pipeline/delivery.py).

The schedule (docs/control.md). A run that is sending learns of a termination from its span answers, so it is
polled as Prefactor's own SDKs do: at most once per `interval_s` (PREFACTOR_CONTROL_POLL_INTERVAL, default 30 s;
0 disables), its first poll one interval after it was first seen (a short run costs no GET). A run that has sent
nothing for QUIET_POLL_S (no span of it started or ended here: no answer can tell it) is polled sooner: every
QUIET_POLL_S at first, the gap growing to a quarter of how long it has been quiet, up to the interval. So an idle
run learns of a termination within about 5 s for its first 20 s of quiet, within a quarter of its quiet time
after that, never later than the interval. Those early polls are capped per process (EARLY_POLLS_PER_S, a burst of
EARLY_POLL_BURST): a process with many idle runs costs at most that many extra GETs a second. The quiet times
come from the caller (`quiet_since`); without them every run is polled at the interval.

A call polls at most `max_per_call` runs, the longest-due first, and stops at its deadline. A 401/403 means the
token may not read runs: polling stops for good, logged once at WARNING (the exporter's writes go on). Any other
failure is swallowed (DEBUG) and the run is polled again next time it is due.

Threads: `poll` is called by one exporter thread at a time (the exporter's finisher thread); it takes no lock of
its own. It records into the TerminationRegistry (which has its own lock) and sends through
`BulkTransport.get`, which may run alongside the sender's requests.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping

from prefactor_otel._logging import logger
from prefactor_otel.control.terminations import SOURCE_POLL, TerminationRegistry
from prefactor_otel.transport.client import BulkTransport

MAX_POLLS_PER_CALL = 16  # one periodic tick never turns into a burst of GETs, however many runs are open
QUIET_POLL_S = 5.0  # a run that sent nothing for this long is polled this often at first (not above the interval)
QUIET_GAP_FRACTION = 0.25  # then every quarter of how long it has been quiet, up to the interval
EARLY_POLLS_PER_S = 2.0  # polls sooner than the interval, per process, on average ...
EARLY_POLL_BURST = 4.0  # ... and at most this many at once
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
        self._quiet_gap = min(interval_s, QUIET_POLL_S)
        self._since: dict[str, float] = {}  # instance id -> its last poll, or when first seen (time.monotonic())
        self._done: set[str] = set()  # runs found finished or terminated (pruned with the runs passed in)
        self._early_tokens = EARLY_POLL_BURST
        self._early_at = time.monotonic()
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
        self._since = {}
        self._done = set()
        self._early_tokens = EARLY_POLL_BURST
        self.counters = Counter()

    def gap(self, quiet_s: float) -> float:
        """Seconds between two polls of a run that has sent nothing for `quiet_s` seconds (the schedule above)."""
        if quiet_s < self._quiet_gap:
            return self._interval
        return min(self._interval, max(self._quiet_gap, quiet_s * QUIET_GAP_FRACTION))

    def poll(
        self,
        runs: Iterable[tuple[str, int | None]],
        deadline: float,
        quiet_since: Mapping[str, float] | None = None,
    ) -> None:
        """Poll the runs of `runs` (instance id, OTel trace id) that are due, by `deadline` (time.monotonic()).
        Pass every run still active each time: a run no longer passed is forgotten. `quiet_since`: instance id ->
        when (time.monotonic()) the run last did anything here; a run quiet for a while is due sooner. Never
        raises."""
        if self._stopped:
            return
        try:
            self._poll(runs, deadline, quiet_since or {})
        except Exception as exc:  # a bug here must not end the exporter's periodic thread
            self.counters["control_poll_errors"] += 1
            logger.debug("Prefactor: polling runs failed (%r)", exc)

    def _poll(self, runs: Iterable[tuple[str, int | None]], deadline: float, quiet_since: Mapping[str, float]) -> None:
        now = time.monotonic()
        active: dict[str, int | None] = dict(runs)
        # Forget runs no longer active; a new run's gap is counted from now.
        self._since = {run: self._since.get(run, now) for run in active if run not in self._done}
        self._done &= active.keys()
        self._early_tokens = min(EARLY_POLL_BURST, self._early_tokens + (now - self._early_at) * EARLY_POLLS_PER_S)
        self._early_at = now
        due: list[tuple[float, bool, str]] = []
        for run, since in self._since.items():
            last_seen = quiet_since.get(run)
            gap = self.gap(now - last_seen if last_seen is not None else 0.0)
            if since + gap <= now:
                due.append((since + gap, gap < self._interval, run))
        due.sort()
        for _at, early, instance_id in due[: self._max_per_call]:
            if self._stopped or self._transport.auth_failed or time.monotonic() >= deadline:
                return
            trace_id = active[instance_id]
            if self._registry.for_instance(instance_id) is not None:  # already known (an answer said so)
                self._registry.record(instance_id, trace_id, None, SOURCE_POLL)  # attaches the trace id if new
                self._finished(instance_id)
                continue
            if early:
                if self._early_tokens < 1:
                    continue  # the process's early polls are spent: this run waits (it stays due, oldest first)
                self._early_tokens -= 1
                self.counters["control_polls_early"] += 1
            self._since[instance_id] = time.monotonic()
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
        self._since.pop(instance_id, None)
        self._done.add(instance_id)


def _details(answer: bytes) -> dict[str, object] | None:
    try:
        parsed = json.loads(answer)
    except ValueError:
        return None
    details = parsed.get("details") if isinstance(parsed, dict) else None
    return details if isinstance(details, dict) else None
