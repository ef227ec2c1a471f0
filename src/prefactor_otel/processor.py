"""PrefactorSpanProcessor: batching like the SDK's BatchSpanProcessor, plus what only a processor sees.

The processor owns a PrefactorSpanExporter and a BatchSpanProcessor feeding it (so the `OTEL_BSP_*` settings,
the queue and its fork handling are the SDK's own). What it adds over `BatchSpanProcessor(PrefactorSpanExporter())`:
- `force_flush` flushes the exporter too (the SDK's processors never call the exporter's `force_flush`), so the
  runs whose spans have all ended are finished at once, not after the grace period.

Threads: `on_start`/`on_end` run on the application's threads and only hand the span on (no mapping, no I/O);
`force_flush`/`shutdown` on the caller's thread. The processor holds no lock of its own.
"""

from __future__ import annotations

import time
from typing import Any

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from prefactor_otel.exporter import PrefactorSpanExporter


class PrefactorSpanProcessor(SpanProcessor):
    """Batches ended spans to a PrefactorSpanExporter, as BatchSpanProcessor does, and sees span starts.

    `exporter`: the exporter to feed (default: one built from `exporter_options` and the PREFACTOR_* environment).
    `max_queue_size`, `schedule_delay_millis`, `max_export_batch_size`, `export_timeout_millis`: as for
    BatchSpanProcessor (default: the `OTEL_BSP_*` environment variables, then the SDK's defaults).
    """

    def __init__(
        self,
        exporter: PrefactorSpanExporter | None = None,
        *,
        max_queue_size: int | None = None,
        schedule_delay_millis: float | None = None,
        max_export_batch_size: int | None = None,
        export_timeout_millis: float | None = None,
        **exporter_options: Any,
    ) -> None:
        self.exporter = exporter if exporter is not None else PrefactorSpanExporter(**exporter_options)
        self._batch = BatchSpanProcessor(
            self.exporter,
            max_queue_size=max_queue_size,
            schedule_delay_millis=schedule_delay_millis,
            max_export_batch_size=max_export_batch_size,
            export_timeout_millis=export_timeout_millis,
        )

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        self._batch.on_end(span)

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        deadline = time.monotonic() + timeout_millis / 1000
        flushed = self._batch.force_flush(timeout_millis)
        left_ms = max(0, int((deadline - time.monotonic()) * 1000))
        return self.exporter.force_flush(left_ms) and flushed

    def shutdown(self) -> None:
        self._batch.shutdown()  # exports what is queued, then shuts the exporter down
