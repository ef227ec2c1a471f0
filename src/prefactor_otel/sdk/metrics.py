"""The exporter's counters as OTel metrics, through whatever MeterProvider the application set.

Observable instruments read `exporter.stats()` at collection time: nothing is recorded on the export path,
and with no MeterProvider configured the API's no-op provider makes this free. Instruments created before
the application sets its provider are proxied by the API and start reporting once it does.

Threads: `register_metrics` runs once, on the thread constructing the exporter; the callbacks run on whichever
thread collects (a metric reader's thread, or the application calling `collect`). No state and no lock of its
own: `stats()` copies each counter atomically (stats.py), and the exporter is held weakly.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from typing import Any

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

METER_NAME = "prefactor_otel"


def register_metrics(stats: Callable[[], dict[str, Any]], version: str) -> None:
    """Register observable counters reading `stats` (held weakly when it is a bound method)."""
    owner = getattr(stats, "__self__", None)
    ref = weakref.WeakMethod(stats) if owner is not None else (lambda: stats)

    def read() -> dict[str, Any] | None:
        func = ref()
        return func() if func is not None else None

    def spans(_: CallbackOptions) -> Iterable[Observation]:
        data = read()
        if data is None:
            return []
        out = [
            Observation(data["spans_exported"], {"outcome": "exported"}),
            Observation(data["spans_spooled"], {"outcome": "spooled"}),
            Observation(data["spans_replayed"], {"outcome": "replayed"}),
            Observation(data["spans_orphaned"], {"outcome": "orphaned"}),
        ]
        out.extend(
            Observation(count, {"outcome": "dropped", "reason": reason})
            for reason, count in data["dropped_by_reason"].items()
        )
        return out

    def requests(_: CallbackOptions) -> Iterable[Observation]:
        data = read()
        if data is None:
            return []
        return [Observation(count, {"outcome": outcome}) for outcome, count in data["requests_by_outcome"].items()]

    def retries(_: CallbackOptions) -> Iterable[Observation]:
        data = read()
        return [] if data is None else [Observation(data["retries"])]

    def backlog(_: CallbackOptions) -> Iterable[Observation]:
        data = read()
        return [] if data is None else [Observation(data["spool_backlog_bytes"])]

    meter = metrics.get_meter(METER_NAME, version)
    meter.create_observable_counter(
        "prefactor_otel.spans", callbacks=[spans], unit="{span}", description="Spans by outcome"
    )
    meter.create_observable_counter(
        "prefactor_otel.requests",
        callbacks=[requests],
        unit="{request}",
        description="HTTP requests to Prefactor by outcome",
    )
    meter.create_observable_counter(
        "prefactor_otel.retries", callbacks=[retries], unit="{request}", description="Retried requests"
    )
    meter.create_observable_gauge(
        "prefactor_otel.spool.backlog", callbacks=[backlog], unit="By", description="Bytes waiting in the spool"
    )
