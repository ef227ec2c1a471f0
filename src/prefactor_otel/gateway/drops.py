"""`DropReport`: the gateway says, in its log, every span it acknowledged and then dropped.

A span the gateway acknowledged can still be dropped by its pipeline -- most often `instance_already_finished`: it
came after its run was finished (more than the finish grace after the trace's root, e.g. a child the Collector
retried late). The pipelines count every drop by reason (pipeline/counts.py); nobody reads those counters in a
gateway unless something does, so this does: the worker calls `check(targets, now)` about once a second
(`CHECK_EVERY_S`), which reads each pipeline's drop counters (dict copies: no per-span cost) and logs, per (route,
agent, reason), one WARNING line with the spans dropped since the last line for it:

    Prefactor gateway: dropped 3 span(s) of route default agent default since 2026-12-07T09:12:03Z:
    instance_already_finished (they came after their run was finished: ...)

The first drop of a reason is said at the next check; after that at most one line per (route, agent, reason) per
`interval_s` (60 s), carrying everything dropped meanwhile, so a steady loss is one line a minute, never a flood.
`flush(targets)` at shutdown says what is left unsaid, whatever the interval. A line names the route, the agent
key and the reason: never a token, an agent id or a span's content.

`run_terminated` (the user stopped the run in Prefactor: nothing is wrong) is said at INFO, every other reason at
WARNING.

Threads: the gateway's worker only (`check`, `flush`); `lines` (how many were logged, in `Gateway.stats()`) is an
int read by any thread. No lock: one writer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Protocol

from prefactor_otel._logging import logger

CHECK_EVERY_S = 1.0
DEFAULT_INTERVAL_S = 60.0

# What an operator can do about each reason (a prefix matches the reasons that carry a code after a colon).
_ADVICE: dict[str, str] = {
    "instance_already_finished": (
        "they came after their trace was forgotten (a late span of a recent trace opens its next run instead): "
        "raise the grace, or shorten the client's or Collector's retry interval"
    ),
    "run_terminated": "their run was terminated in Prefactor; nothing to do",
    "instance_rejected": "Prefactor refused their run: check the agent id and the token's environment",
    "rejected": "Prefactor refused these spans (the code says why)",
    "finish_rejected": "Prefactor refused their run's finish (the code says why)",
    "queue_full": "the pipeline's queue was full: lower PREFACTOR_GATEWAY_MAX_QUEUED_SPANS",
    "mapping_error": "they could not be mapped (a bug: please report it with the span's instrumentation)",
    "spool_full": "the spool reached PREFACTOR_SPOOL_MAX_BYTES while Prefactor was unreachable: raise it",
    "spool_expired": "they waited in the spool past PREFACTOR_SPOOL_RETENTION_SECONDS: Prefactor was unreachable",
    "spool_corrupt": "a spool file was unreadable (disk trouble?)",
}
_DEFAULT_ADVICE = "see the reason in docs/gateway.md, 'Drops'"


def advice(reason: str) -> str:
    """What to do about spans dropped for `reason` (one short phrase)."""
    found = _ADVICE.get(reason)
    if found is None:
        found = _ADVICE.get(reason.split(":", 1)[0], _DEFAULT_ADVICE)
    return found


class Dropping(Protocol):
    """What `DropReport` reads of a pipeline (gateway/targets.py's AgentPipeline)."""

    route: str
    agent: str

    def dropped_by_reason(self) -> dict[str, int]: ...


@dataclass
class _Said:
    count: int  # the counter when last said
    at: float  # monotonic, when last said (-inf: never)
    since: float  # wall clock, the start of what the next line covers


class DropReport:
    def __init__(self, interval_s: float = DEFAULT_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self._said: dict[tuple[str, str, str], _Said] = {}
        self._started = time.time()
        self._next_check = 0.0
        self.lines = 0  # lines logged so far

    def due(self, now: float) -> bool:
        return now >= self._next_check

    def check(self, targets: Iterable[Dropping], now: float, *, flush: bool = False) -> None:
        """Log what each pipeline dropped since its last line per reason (rate-limited unless `flush`)."""
        self._next_check = now + CHECK_EVERY_S
        for target in targets:
            for reason, count in target.dropped_by_reason().items():
                key = (target.route, target.agent, reason)
                said = self._said.get(key)
                if said is None:
                    said = self._said[key] = _Said(0, float("-inf"), self._started)
                new = count - said.count
                if new <= 0 or (not flush and now - said.at < self.interval_s):
                    continue
                logger.log(
                    logging.INFO if reason == "run_terminated" else logging.WARNING,
                    "Prefactor gateway: dropped %d span(s) of route %s agent %s since %s: %s (%s)",
                    new,
                    target.route,
                    target.agent,
                    _utc(said.since),
                    reason,
                    advice(reason),
                )
                self.lines += 1
                said.count, said.at, said.since = count, now, time.time()

    def flush(self, targets: Iterable[Dropping]) -> None:
        """At shutdown: say whatever is left unsaid, whatever the interval."""
        self.check(targets, time.monotonic(), flush=True)


def _utc(wall: float) -> str:
    return datetime.fromtimestamp(wall, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
