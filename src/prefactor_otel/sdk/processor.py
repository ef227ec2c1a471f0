"""PrefactorSpanProcessor: batching like the SDK's BatchSpanProcessor, plus what only a processor sees.

The processor owns a PrefactorSpanExporter and a BatchSpanProcessor feeding it (so the `OTEL_BSP_*` settings,
the queue and its fork handling are the SDK's own). What it adds over `BatchSpanProcessor(PrefactorSpanExporter())`:
- span starts: `on_start` appends the span to the exporter's start queue (a deque: one atomic append, no mapping,
  no I/O, no lock on the application's thread); the exporter's sending thread reads them within half a second. So
  a run is registered at its root's real start, live spans (PREFACTOR_LIVE_SPANS) are created `active` while they
  run, and a run is finished as soon as every span started here has ended and been delivered.
- `force_flush` flushes the exporter too (the SDK's processors never call the exporter's `force_flush`), so the
  runs whose spans have all ended are finished at once, not after the grace period.

Threads: `on_start`/`on_end` run on the application's threads and only hand the span on; `force_flush`/`shutdown`
on the caller's thread. The processor holds no lock of its own. The start queue is bounded (PREFACTOR_MAX_QUEUED_
SPANS): a start beyond it is counted (`starts_dropped`) and that span is exported at its end as without starts.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from weakref import ref as _weak

import httpx
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from prefactor_otel.config.options import OPTIONS, PrefactorConfig, Secret
from prefactor_otel.config.text import with_option_docs
from prefactor_otel.sdk.exporter import PrefactorSpanExporter
from prefactor_otel.transport.api_check import CheckResult

# The exporter's keyword parameters that are not options (OPTIONS): passed through as they are.
EXPORTER_ONLY = ("config", "http_client", "environ")


class PrefactorSpanProcessor(SpanProcessor):
    """Batches ended spans to a PrefactorSpanExporter, as BatchSpanProcessor does, and sees span starts."""

    def __init__(
        self,
        exporter: PrefactorSpanExporter | None = None,
        *,
        max_queue_size: int | None = None,
        schedule_delay_millis: float | None = None,
        max_export_batch_size: int | None = None,
        export_timeout_millis: float | None = None,
        config: PrefactorConfig | None = None,
        http_client: httpx.Client | None = None,
        environ: Mapping[str, str] | None = None,
        api_url: str | None = None,
        api_token: str | Secret | None = None,
        agent_id: str | None = None,
        environment_id: str | None = None,
        agent_name: str | None = None,
        agent_identifier: str | None = None,
        purpose: str | None = None,
        enabled: bool | None = None,
        span_filter: str | None = None,
        live_spans: str | None = None,
        allow_insecure: bool | None = None,
        tls_verify: bool | None = None,
        ca_bundle: str | None = None,
        spool: bool | None = None,
        spool_dir: str | None = None,
        spool_max_bytes: int | None = None,
        spool_retention_seconds: float | None = None,
        shutdown_timeout: float | None = None,
        export_timeout: float | None = None,
        max_items_per_request: int | None = None,
        max_request_bytes: int | None = None,
        compression: str | None = None,
        schema_once: bool | None = None,
        max_waiting_spans: int | None = None,
        max_queued_spans: int | None = None,
        max_wait_seconds: float | None = None,
        finish_grace_seconds: float | None = None,
        control_poll_interval: float | None = None,
        capture_inputs: bool | None = None,
        capture_outputs: bool | None = None,
        max_input_length: int | None = None,
        max_output_length: int | None = None,
        redact_defaults: bool | None = None,
        redact_patterns: Sequence[str] | str | None = None,
        redact_keys: Sequence[str] | str | None = None,
        redact_callback: str | Callable[[str, str], str] | None = None,
    ) -> None:
        """`exporter`: the exporter to feed (default: one built from the other keywords, as
        `PrefactorSpanExporter(...)` takes them, and the environment). Passing both an exporter and exporter
        options is a TypeError: the options would be ignored.

        `max_queue_size`, `schedule_delay_millis`, `max_export_batch_size`, `export_timeout_millis`: as for
        BatchSpanProcessor (default: the `OTEL_BSP_*` environment variables, then the SDK's defaults).
        `config`, `http_client`, `environ`: as for PrefactorSpanExporter.
        """
        exporter_options = {
            name: value
            for name, value in locals().items()
            if (name in OPTIONS or name in EXPORTER_ONLY) and value is not None
        }
        if exporter is not None and exporter_options:
            raise TypeError(
                f"PrefactorSpanProcessor: pass options to the exporter you give, not beside it: "
                f"{', '.join(sorted(exporter_options))}"
            )
        self.exporter = exporter if exporter is not None else PrefactorSpanExporter(**exporter_options)
        self._batch = BatchSpanProcessor(
            self.exporter,
            max_queue_size=max_queue_size,
            schedule_delay_millis=schedule_delay_millis,
            max_export_batch_size=max_export_batch_size,
            export_timeout_millis=export_timeout_millis,
        )
        # On the application's thread once per span: the batch processor's own method, without a frame of ours
        # (measured: 485 -> 440 ns per span).
        self.on_end = self._batch.on_end  # type: ignore[method-assign]
        queue = self.exporter._start_queue()
        self._starts: deque[_weak[ReadableSpan]] | None = None
        self._max_starts = 0
        if queue is not None:
            self._starts, self._max_starts = queue

    def run_id(self, trace_id: int | None = None) -> str | None:
        """The Prefactor run id of a trace (default: the current span's), once the exporter has read its start."""
        return self.exporter.run_id(trace_id)

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        starts = self._starts
        if starts is None:
            return
        if len(starts) < self._max_starts:
            # A weak reference: the queue must not keep spans alive (measured: holding them until the sending
            # thread reads them made the garbage collector's passes on the application's thread cost +20-30% per
            # span in a tight loop). An open span is held by the application; one gone already ended and was
            # exported, and its end tells the planner what its start would have.
            starts.append(_weak(span))
        else:
            self.exporter._count_start_dropped()

    def on_end(self, span: ReadableSpan) -> None:
        self._batch.on_end(span)  # replaced per instance by the batch processor's on_end (__init__)

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        deadline = time.monotonic() + timeout_millis / 1000
        flushed = self._batch.force_flush(timeout_millis)
        left_ms = max(0, int((deadline - time.monotonic()) * 1000))
        return self.exporter.force_flush(left_ms) and flushed

    def shutdown(self) -> None:
        # exports what is queued, then shuts the exporter down
        self._batch.shutdown()  # type: ignore[no-untyped-call]  # the SDK leaves BatchSpanProcessor.shutdown untyped

    def check(self, timeout: float | None = None) -> CheckResult:
        """The exporter's `check()`: can it reach Prefactor with its settings? Never raises."""
        return self.exporter.check(timeout)


PrefactorSpanProcessor.__init__.__doc__ = with_option_docs(PrefactorSpanProcessor.__init__.__doc__)
