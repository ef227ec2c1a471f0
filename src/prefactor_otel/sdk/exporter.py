"""PrefactorSpanExporter: the OpenTelemetry contract (`export`, `force_flush`, `shutdown`), construction and
start, and what the exporter does when its process forks, exits or is a multiprocessing worker that ends.

Contract: constructible with no arguments; never raises from the constructor or `export`; `export` is
thread-safe and returns within the export timeout; `force_flush` and `shutdown` honour their `timeout_millis`;
at interpreter exit everything, whatever the set-up order, shares one budget (PREFACTOR_SHUTDOWN_TIMEOUT); after
shutdown `export` returns FAILURE and warns once; the API token never appears in logs, errors or repr.

Work is split: mapping (pure, on the calling thread) -> pipeline/pipeline.py (the planner and the drain of one
process) -> pipeline/delivery.py (requests, outcomes), with the spool and the journal of open runs
(pipeline/backlog.py, durability/) for what cannot be delivered now. The exporter holds, as parts it calls:
- for its whole life: the HTTP client (BulkTransport), Delivery, the spool's Backlog, the run-status poller, and
  the start queue (`_start_queue`: span starts from a PrefactorSpanProcessor, a deque read by the pipeline on the
  sending thread);
- per process (built at start and again, in one place, by the fork hook `_reset_after_fork`): the send lock, its
  counters, the exit budget (exit_budget.py), the Pipeline (with the process's run part: a random id that keys
  this process's runs apart from another process's part of the same trace, docs/cross-process.md), RunControl
  (run_control.py: terminations from answers and polls) and the Finisher (finisher.py: the exporter's own thread,
  as the SDK's batch processor has one worker).

Process lifecycle (the hooks are registered through lifecycle.py, holding the exporter weakly):
- exit: `_begin_exit` (our atexit hook) begins the exit budget; when the provider's hook runs first, the exit
  budget and the finisher notice the exit themselves (exit_budget.py).
- shutdown: deliver what is left within the budget, keeping back up to `_SPILL_RESERVE_S` to write the rest to
  the spool; runs still open stay in the journal of open runs. After it `export` returns FAILURE.
- a multiprocessing worker ends with os._exit() (no atexit hook): `_finish_as_a_worker` flushes the global
  TracerProvider and shuts down, within the same budget.
- fork: `_reset_after_fork` (registered once per exporter) is the one place that rebuilds locks, threads, the HTTP
  client and the pipeline, and it starts the child's finisher thread there and then (as the SDK's batch processor
  starts its worker), so the child's live spans go live before it exports anything. The child starts with no runs
  of its parent's and a run part of its own: its part of a trace open at the fork is a run of its own
  (planner.ForkOrigin), and it never sends its copies of the parent's open spans. The spool and the journal also
  guard themselves with fork hooks of their own, because their descriptors must be handled even when the
  exporter is gone.

Threads and locks:
- `export()` is called by the BatchSpanProcessor's worker (or any thread); `force_flush` by the application or the
  processor; `shutdown` by the application, the TracerProvider's shutdown (an atexit hook) or `_finish_as_a_worker`
  (a multiprocessing finalizer); `_begin_exit` by our atexit hook; `_reset_after_fork` in the forked child, on its
  only thread, before anything else of the child's (it reads the parent's pipeline without its lock: a lock another
  parent thread held at the fork stays held in the child). The finisher thread (finisher.py) sends what span starts
  make due, finishes runs after their grace period, sends aged orphans, replays the spool, polls for control and
  notices interpreter exit; a PrefactorSpanProcessor's `on_start` appends to the start queue (any thread).
- `_send_lock`: one sender at a time (delivery, replay, spill after a failed delivery), shared with the finisher,
  which only ever tries it. Never waited for past a caller's deadline; `shutdown` waits for it only until shortly
  before its deadline, else spills to the spool without sending.
- the pipeline's `state_lock`: the planner and the records waiting for it (see pipeline/pipeline.py).
- `_lifecycle_lock`: `shutdown` runs once; a second, concurrent call returns at once.
- Counters are plain Counters written by the thread doing the work; `stats()` copies each one atomically.
"""

from __future__ import annotations

import logging
import secrets
import sys
import threading
import time
import weakref
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
from opentelemetry import trace as trace_api
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from prefactor_otel._logging import RateLimitedLog, logger
from prefactor_otel._logging import configure_level as configure_log_level
from prefactor_otel._version import __version__
from prefactor_otel.config.options import OPTIONS, PrefactorConfig, Secret
from prefactor_otel.config.text import given_settings, with_option_docs
from prefactor_otel.config.values import ConfigError
from prefactor_otel.control.poll import InstancePoller
from prefactor_otel.control.terminations import TERMINATIONS
from prefactor_otel.durability.journal import RunJournal
from prefactor_otel.durability.spool import Spool, default_spool_dir
from prefactor_otel.mapping import SpanRecord, map_span
from prefactor_otel.mapping.options import MappingOptions
from prefactor_otel.model import ids
from prefactor_otel.pipeline.backlog import Backlog
from prefactor_otel.pipeline.delivery import Delivery
from prefactor_otel.pipeline.pipeline import Pipeline
from prefactor_otel.pipeline.planner import ForkOrigin
from prefactor_otel.pipeline.starts import live_mapper
from prefactor_otel.sdk import lifecycle
from prefactor_otel.sdk.exit_budget import ExitBudget
from prefactor_otel.sdk.finisher import Finisher, adopt_abandoned_runs
from prefactor_otel.sdk.metrics import register_metrics
from prefactor_otel.sdk.run_control import RunControl
from prefactor_otel.sdk.startup_line import StartupLine
from prefactor_otel.sdk.stats import collect_stats
from prefactor_otel.transport.api_check import CheckResult, check_exporter
from prefactor_otel.transport.client import BulkTransport

SDK_HEADER = f"prefactor-otel@{__version__}"
# The reasons an exporter is disabled on purpose (its export() succeeds as a no-op); every other one is an error.
_DISABLED_BY_CHOICE = frozenset({"PREFACTOR_ENABLED is false", "no API token"})
# Of a shutdown budget, what is kept back for writing the undelivered rest to the spool.
_SPILL_RESERVE_S = 0.5


def _trace_id(span: ReadableSpan) -> int | None:
    context = span.context
    return context.trace_id if context is not None else None


class PrefactorSpanExporter(SpanExporter):
    """Exports OTel spans to Prefactor: one agent instance per trace, one agent span per span, in bulk.

    Every option is a keyword argument (see `__init__`, or `help(PrefactorConfig)`); each overrides its
    environment variable. Built with no argument (as `opentelemetry-instrument` does), it reads the environment.
    """

    def __init__(
        self,
        *,
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
        """Build the exporter. It never raises for a bad value: one error naming it, and the exporter sends
        nothing (`repr` shows what was set and the error). A misspelt keyword is a TypeError, as for any call.

        `config`: a ready PrefactorConfig (the other options are then ignored); `http_client`: an httpx client to
        use instead of the exporter's own; `environ`: the mapping read instead of `os.environ`. Every other
        keyword is an option; None (the default) means its environment variable, else its default.
        """
        options = {name: value for name, value in locals().items() if name in OPTIONS}
        self._disabled_reason: str | None = None
        self._shutdown = False
        self._closing = False
        self._warned_after_shutdown = False
        self._lifecycle_lock = threading.Lock()
        # Span starts from a PrefactorSpanProcessor (see _start_queue): the same deque for the exporter's life, so
        # the processor may hold it; emptied in a forked child.
        self._starts: deque[weakref.ref[ReadableSpan]] = deque()
        self._transport: BulkTransport | None = None
        self._delivery: Delivery | None = None
        self._backlog: Backlog | None = None
        self._pipeline: Pipeline | None = None
        self._finisher: Finisher | None = None
        self._poller: InstancePoller | None = None
        self._config_error: str | None = None
        self._startup_line: StartupLine | None = None
        self._given_settings = ""
        configure_log_level(environ)
        try:
            self._config = config if config is not None else PrefactorConfig.load(environ, **options)
            self._mapping_options = MappingOptions.from_config(self._config)
        except ConfigError as exc:
            # e.g. a redaction callback that cannot be imported: fail closed, send nothing unredacted
            logger.error("Prefactor exporter disabled: invalid configuration: %s", exc)
            self._config_error = str(exc)
            if not hasattr(self, "_config"):
                self._config = PrefactorConfig(enabled=False)
                # repr must show what the user set, not the defaults of this stand-in
                self._given_settings = given_settings(environ, options)
            self._disabled_reason = "invalid configuration"
        # Built once the configuration is known (the exit budget needs its shutdown timeout), in every case: a
        # disabled exporter counts what it refuses too.
        self._new_process_state()
        if self._disabled_reason is not None:
            return
        if not self._config.enabled:
            self._disabled_reason = "PREFACTOR_ENABLED is false"
            logger.info("Prefactor exporter disabled (PREFACTOR_ENABLED=false)")
            return
        if not self._config.api_token:
            self._disabled_reason = "no API token"
            logger.warning(
                "Prefactor exporter disabled: PREFACTOR_API_TOKEN is not set; spans will not be sent to Prefactor"
            )
            return
        try:
            self._transport = BulkTransport(self._config, sdk_header=SDK_HEADER, client=http_client)
        except Exception as exc:  # never raise into the host application
            # The exception's text (a TLS file's problem, ...), never the token: headers are built after this.
            logger.error(
                "Prefactor exporter disabled: cannot create the HTTP client (%s: %s); spans are not sent and export() "
                "reports FAILURE",
                type(exc).__name__,
                str(exc)[:200],
            )
            self._disabled_reason = "HTTP client error"
            return
        try:
            self._start()
        except Exception:  # never raise into the host application (e.g. no thread can be started)
            logger.exception("Prefactor exporter disabled: it could not start")
            self._disabled_reason = "start-up error"

    def _start(self) -> None:
        assert self._transport is not None
        self._delivery = Delivery(self._transport, self._config)
        self._poller = InstancePoller(self._transport, TERMINATIONS, self._config.control_poll_interval)
        self._open_spool()
        self._pipeline = self._new_pipeline(None)
        self._finisher = self._new_finisher(self._pipeline)
        if self._backlog is not None:
            self._pipeline.add(self._backlog.take_records(self._config.max_queued_spans))
        # Said once PrefactorSpanProcessor holds the exporter, or at the first export() without it (startup_line.py).
        self._startup_line = StartupLine(
            self._config, str(self._backlog.spool.directory) if self._backlog is not None else None
        )
        self._report_unusable_proxy()
        logger.debug("Prefactor exporter ready: %s", self._config.describe())
        try:
            register_metrics(self.stats, __version__)
        except Exception:  # self-metrics are a convenience: never a reason to fail
            logger.debug("Prefactor self-metrics unavailable", exc_info=True)
        adopt_abandoned_runs(self._backlog)
        if self._backlog is not None and self._backlog.has_backlog:
            logger.info(
                "Prefactor: %d bytes left in the spool by an earlier run; re-sending", self._backlog.spool.backlog_bytes
            )
        self._register_process_hooks()
        self._ensure_finisher()

    def _report_unusable_proxy(self) -> None:
        """One error for a proxy the client cannot use: which variable, why, the fix, and what happens meanwhile
        (nothing is sent; export() reports FAILURE, as the OTLP exporter does when it cannot send)."""
        transport = self._transport
        if transport is None or transport.proxy_error is None:
            return
        if self._backlog is not None:
            meanwhile = (
                f"until then nothing is sent: spans are kept on disk in {self._backlog.spool.directory} and sent "
                "by a process started with a usable proxy, and export() reports FAILURE"
            )
        else:
            meanwhile = (
                "until then nothing is sent and spans are dropped (PREFACTOR_SPOOL is off: nothing keeps them), "
                "counted with reason proxy; export() reports FAILURE"
            )
        logger.error("Prefactor: %s; %s", transport.proxy_error, meanwhile)

    def _new_process_state(self) -> None:
        """Everything that belongs to one process: built at construction and again in a forked child (the
        pipeline and the parts built with it follow: `_new_pipeline`, `_new_finisher`)."""
        self._send_lock = threading.Lock()
        self._log = RateLimitedLog()
        self._counters: Counter[str] = Counter()
        self._dropped: Counter[str] = Counter()
        self._exit_budget = ExitBudget(self._config.shutdown_timeout, self._cap_transport)
        self._finisher = None
        self._forked_at_ns: int | None = None
        self._traces_open_at_fork: frozenset[int] = frozenset()

    def _new_pipeline(self, fork_origin: ForkOrigin | None) -> Pipeline:
        assert self._delivery is not None
        partition = saved = None
        if self._config.agent_id:
            partition = ids.extract_partition(self._config.agent_id)
        elif self._pipeline is not None:  # a forked child: what its parent knew, checked as the parent would
            if self._pipeline.partition_confirmed:
                partition = self._pipeline.partition
            else:
                saved = self._pipeline.partition
        elif self._backlog is not None:  # this token's, checked with the server before it is trusted
            saved = self._backlog.load_partition(self._config.api_token.get())
        return Pipeline(
            self._config,
            self._delivery,
            self._backlog,
            partition=partition,
            saved_partition=saved,
            redactor=self._mapping_options.redactor,
            fork_origin=fork_origin,
            starts=self._starts,
            map_started=live_mapper(self._mapping_options),
            # This process's part of every trace: another process (a service it calls or is called by, a forked
            # child) never derives its runs' ids (docs/cross-process.md).
            run_part=secrets.token_hex(8),
        )

    def _new_finisher(self, pipeline: Pipeline) -> Finisher:
        """The parts of this process that work on `pipeline`: RunControl, hooked into Delivery (answers) and the
        poller (polls), and the finisher thread (not started yet: `_ensure_finisher`)."""
        assert self._delivery is not None
        control = RunControl(
            pipeline,
            self._delivery,
            self._poller,
            TERMINATIONS,
            self._exit_budget,
            export_timeout=self._config.export_timeout,
        )
        self._delivery.on_terminate = control.on_terminate_answer
        if self._poller is not None:
            self._poller.before_record = lambda _instance_id, trace_id: control.stop_run(trace_id)
        return Finisher(
            pipeline,
            self._send_lock,
            self._exit_budget,
            control,
            self._backlog,
            export_timeout=self._config.export_timeout,
            keep_alive=self,
        )

    def _ensure_finisher(self) -> None:
        finisher = self._finisher
        if finisher is None or self._shutdown or self._closing or self._disabled_reason is not None:
            return
        finisher.ensure_running()

    def _open_spool(self) -> None:
        if not self._config.spool:
            return
        directory = (
            Path(self._config.spool_dir)
            if self._config.spool_dir
            else default_spool_dir(self._config.api_base, self._config.agent_id or "deployment")
        )
        spool = Spool(
            directory,
            max_bytes=self._config.spool_max_bytes,
            retention_seconds=self._config.spool_retention_seconds,
            max_item_bytes=self._config.max_request_bytes,  # a larger item could never be sent
        )
        if spool.enabled:
            self._backlog = Backlog(
                spool, RunJournal(spool.directory), retention_seconds=self._config.spool_retention_seconds
            )

    def __repr__(self) -> str:
        if self._config_error is not None and self._given_settings:
            # The config in use is a disabled stand-in: show what was set and why it was refused instead.
            return (
                f"PrefactorSpanExporter(set: {self._given_settings}, disabled='invalid configuration', "
                f"error={self._config_error!r})"
            )
        error = f", error={self._config_error!r}" if self._config_error is not None else ""
        return f"PrefactorSpanExporter({self._config.describe()}, disabled={self._disabled_reason!r}{error})"

    def run_id(self, trace_id: int | None = None) -> str | None:
        """The Prefactor run (agent instance id) of a trace open here: by default the trace of the span current in
        the calling context. None when the exporter has not seen the trace yet (with PrefactorSpanProcessor, about
        half a second after its root started) or no longer holds it (finished)."""
        if trace_id is None:
            context = trace_api.get_current_span().get_span_context()
            if not context.is_valid:
                return None
            trace_id = context.trace_id
        pipeline = self._pipeline
        if pipeline is None or pipeline.planner is None:
            return None
        with pipeline.state_lock:
            return pipeline.planner.instance_of_trace(trace_id)

    def _count_start_dropped(self) -> None:
        """A span start the queue had no room for: that span is not live and its run's finish does not wait for
        it (its end is exported as usual). Counted from application threads: exact enough, not exact."""
        self._counters["starts_dropped"] += 1

    # ------------------------------------------------------------------ OTel contract

    @property
    def enabled(self) -> bool:
        return self._disabled_reason is None

    def _start_queue(self) -> tuple[deque[weakref.ref[ReadableSpan]], int] | None:
        """For PrefactorSpanProcessor: the deque its `on_start` appends started spans to, and the length beyond
        which it counts them in `_count_start_dropped` instead. None when the exporter sends nothing."""
        if self._disabled_reason is not None:
            return None
        if self._startup_line is not None:
            self._startup_line.under_processor()
        return self._starts, self._config.max_queued_spans

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._shutdown or self._closing:
            if not self._warned_after_shutdown:
                self._warned_after_shutdown = True
                logger.warning("Prefactor exporter already shut down; ignoring %d span(s)", len(spans))
            self._dropped["after_shutdown"] += len(spans)
            return SpanExportResult.FAILURE
        if self._disabled_reason is not None:
            # A no-op by configuration (PREFACTOR_ENABLED=false, no token) is not an export failure; an exporter
            # an error disabled sends its spans nowhere: that is never SUCCESS.
            by_choice = self._disabled_reason in _DISABLED_BY_CHOICE
            return SpanExportResult.SUCCESS if by_choice else SpanExportResult.FAILURE
        if self._startup_line is not None and not self._startup_line.said:
            self._startup_line.first_export(sys._getframe(1))  # once: no PrefactorSpanProcessor asked first
        self._counters["spans_received"] += len(spans)
        excess = len(spans) - self._config.max_queued_spans
        if excess > 0:
            # More than the queue holds: the oldest would be trimmed right after mapping. Not mapping them keeps
            # one huge export() (a direct call; the batch processor sends 512) within its time and memory.
            self._dropped["queue_full"] += excess
            spans = spans[excess:]
        try:
            records = self._map(spans)
        except Exception:  # the host application must never see our failure
            logger.exception("Prefactor: mapping failed unexpectedly; %d span(s) dropped", len(spans))
            self._dropped["internal_error"] += len(spans)
            return SpanExportResult.FAILURE
        try:
            # From here on the spans are the planner's: an unexpected error below leaves them queued, not lost.
            return self._deliver(records)
        except Exception:
            logger.exception("Prefactor export failed unexpectedly; its spans stay queued")
            return SpanExportResult.FAILURE

    def _deliver(self, records: list[SpanRecord]) -> SpanExportResult:
        pipeline = self._pipeline
        assert pipeline is not None
        deadline = self._exit_budget.deadline(self._config.export_timeout)
        pipeline.add(records)
        self._ensure_finisher()
        if not self._send_lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            return SpanExportResult.FAILURE
        try:
            ok = pipeline.drain(deadline)
        finally:
            self._send_lock.release()
        return SpanExportResult.SUCCESS if ok else SpanExportResult.FAILURE

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        if self._disabled_reason is not None or self._shutdown or self._closing:
            return True
        budget = self._exit_budget
        deadline = min(budget.deadline(timeout_millis / 1000), budget.deadline(self._config.export_timeout))
        if not self._send_lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            return False
        try:
            assert self._pipeline is not None
            return self._pipeline.drain(deadline, flush=True)
        except Exception:
            logger.exception("Prefactor force_flush failed unexpectedly")
            return False
        finally:
            self._send_lock.release()

    # ------------------------------------------------------------------ mapping

    def _map(self, spans: Sequence[ReadableSpan]) -> list[SpanRecord]:
        records: list[SpanRecord] = []
        forked_at = self._forked_at_ns
        open_at_fork = self._traces_open_at_fork
        copies: list[tuple[int, int, int | None]] = []
        options = self._mapping_options
        for span in spans:
            if forked_at is not None and (span.start_time or 0) < forked_at and _trace_id(span) in open_at_fork:
                # This process's copy of a span that was open in the parent at the fork: the parent exports it.
                self._counters["spans_ignored_forked_copy"] += 1
                context, parent = span.context, span.parent
                if context is not None:
                    copies.append((context.trace_id, context.span_id, parent.span_id if parent is not None else None))
                continue
            try:
                # The payloads encoded as they are mapped, so their trees are freed young; held until delivery,
                # the garbage collector would scan and promote them (measured: most of the collector's cost per
                # span). One that cannot be encoded stays a dict: the send path reports it.
                records.append(map_span(span, options, encoded=True))
            except Exception as exc:  # one bad span must not cost the batch
                self._dropped["mapping_error"] += 1
                self._log.log(logging.WARNING, "map", "Prefactor: a span could not be mapped (%s)", type(exc).__name__)
        if copies and self._pipeline is not None:
            self._pipeline.note_parent_spans(copies)  # the child's spans under them are local roots here
        return records

    # ------------------------------------------------------------------ visibility

    def stats(self) -> dict[str, Any]:
        """Counters: spans received/exported/dropped (by reason), retries, requests, runs, spool (see stats.py)."""
        return collect_stats(
            enabled=self.enabled,
            disabled_reason=self._disabled_reason,
            counters=self._counters,
            dropped=self._dropped,
            pipeline=self._pipeline,
            transport=self._transport,
            delivery=self._delivery,
            backlog=self._backlog,
            poller=self._poller,
        )

    def check(self, timeout: float | None = None) -> CheckResult:
        """Check, without sending a span, that this exporter can reach Prefactor with its token, agent and
        environment ids (ping, agent and environment reads through its own HTTP client), within `timeout` seconds
        (default: PREFACTOR_EXPORT_TIMEOUT). Never raises: a CheckResult, false when there is a problem."""
        not_sending = "it is shut down" if self._shutdown else self._disabled_reason
        return check_exporter(self._config, self._transport, not_sending, timeout)

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
            if self._startup_line is not None:
                self._startup_line.at_close()
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
        budget = self._exit_budget
        deadline = min(budget.deadline(budget_s), budget.deadline(self._config.shutdown_timeout))
        transport = self._transport
        pipeline = self._pipeline
        assert transport is not None and pipeline is not None
        finisher = self._finisher
        if finisher is not None:
            finisher.stop()
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
        if finisher is not None:
            finisher.join(deadline)
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

    # ------------------------------------------------------------------ process lifecycle

    def _register_process_hooks(self) -> None:
        lifecycle.register(
            self,
            after_fork_in_child=PrefactorSpanExporter._reset_after_fork,
            # Runs first when the exporter was created after its TracerProvider; otherwise the exporter notices
            # the exit itself (its exit budget on every deadline, and the finisher thread every half second).
            at_exit=PrefactorSpanExporter._begin_exit,
            at_worker_exit=PrefactorSpanExporter._finish_as_a_worker,
        )

    def _begin_exit(self) -> None:
        """The interpreter exits (our atexit hook): from now on everything shares the exit budget."""
        self._exit_budget.begin()

    def _cap_transport(self, at: float) -> None:
        cap = getattr(self._transport, "cap_deadline", None)
        if cap is not None:
            cap(at)

    def _finish_as_a_worker(self) -> None:
        """A multiprocessing worker ends: flush the global TracerProvider (normally the one feeding this exporter:
        its batch queue holds the worker's last spans), then shut down, all within the exit budget."""
        if self._shutdown:
            return
        self._exit_budget.begin()
        budget_ms = int(self._config.shutdown_timeout * 1000)
        flush = getattr(trace_api.get_tracer_provider(), "force_flush", None)
        if callable(flush):
            try:
                flush(budget_ms)
            except Exception:
                logger.debug("Prefactor: flushing the tracer provider in a worker failed", exc_info=True)
        self.shutdown(budget_ms)

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
            origin = ForkOrigin(parent_spans)  # the child's new pipeline has a run part of its own
            self._pipeline = self._new_pipeline(origin)
            self._finisher = self._new_finisher(self._pipeline)
            self._ensure_finisher()


# The options' documentation, generated from OPTIONS so it cannot drift (help(PrefactorSpanExporter) shows it).
PrefactorSpanExporter.__init__.__doc__ = with_option_docs(PrefactorSpanExporter.__init__.__doc__)
