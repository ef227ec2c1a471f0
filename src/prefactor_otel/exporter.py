"""PrefactorSpanExporter: owns state and the OpenTelemetry contract; wires mapping, planner and transport.

Contract (architecture.md): constructible with no arguments; never raises from the constructor or `export`;
`export` is thread-safe and returns within the export timeout; `force_flush` and `shutdown` honour their
`timeout_millis`; after shutdown `export` returns FAILURE and warns once; the API token never appears in logs,
errors or repr.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from prefactor_otel import __version__, ids
from prefactor_otel._logging import RateLimitedLog, logger
from prefactor_otel.config import ConfigError, PrefactorConfig
from prefactor_otel.mapping import SpanRecord, agent_schema_version, agent_version_from_resource, map_span
from prefactor_otel.mapping.options import MappingOptions
from prefactor_otel.metrics import register_metrics
from prefactor_otel.models import BULK_CREATE_SPAN, BULK_FINISH_INSTANCE, BULK_START
from prefactor_otel.outcomes import NOT_PROCESSED, BulkResult, ItemOutcome
from prefactor_otel.planner import PlannedItem, Planner
from prefactor_otel.spool import Spool, default_spool_dir
from prefactor_otel.transport import (
    BulkTransport,
    chunk_encoded,
    encode_item,
    encode_json,
    suppress_instrumentation,
)

SDK_HEADER = f"prefactor-otel@{__version__}"
_TICK_S = 0.5
_TICK_BACKOFF_CAP_S = 30.0


def _carries_genai(record: SpanRecord) -> bool:
    """PREFACTOR_SPAN_FILTER=genai: a span some GenAI convention typed or recognised."""
    return record.schema_name != "otel:span" or record.convention is not None


class PrefactorSpanExporter(SpanExporter):
    """Exports OTel spans to Prefactor: one agent instance per trace, one agent span per span, in bulk.

    Keyword arguments are the PrefactorConfig options (`api_url`, `api_token`, `agent_id`, ...) and override
    the PREFACTOR_* environment variables. `config=` passes a ready PrefactorConfig; `http_client=` an httpx
    client to use instead of the exporter's own.
    """

    def __init__(
        self,
        *,
        config: PrefactorConfig | None = None,
        http_client: httpx.Client | None = None,
        environ: Mapping[str, str] | None = None,
        **options: Any,
    ) -> None:
        self._disabled_reason: str | None = None
        self._shutdown = False
        self._warned_after_shutdown = False
        self._send_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._log = RateLimitedLog()
        self._counters: Counter[str] = Counter()
        self._dropped: Counter[str] = Counter()
        self._planner: Planner | None = None
        self._unplanned: deque[SpanRecord] = deque()
        self._scopes: set[str] = set()
        self._ticker: threading.Thread | None = None
        self._ticker_stop = threading.Event()
        self._transport: BulkTransport | None = None
        self._rest_only: set[str] = set()
        self._exit_deadline: float | None = None
        self._spool: Spool | None = None
        self._spool_retry_at = 0.0
        self._spool_backoff = 1.0
        self._rest_only_changed = False
        try:
            self._config = config if config is not None else PrefactorConfig.load(environ, **options)
        except ConfigError as exc:
            logger.error("Prefactor exporter disabled: invalid configuration: %s", exc)
            self._config = PrefactorConfig(enabled=False)
            self._disabled_reason = "invalid configuration"
            return
        try:
            self._mapping_options = MappingOptions.from_config(self._config)
        except ConfigError as exc:
            # e.g. a redaction callback that cannot be imported: fail closed, send nothing unredacted
            logger.error("Prefactor exporter disabled: invalid configuration: %s", exc)
            self._disabled_reason = "invalid configuration"
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
            logger.error("Prefactor exporter disabled: cannot create the HTTP client (%s)", type(exc).__name__)
            self._disabled_reason = "HTTP client error"
            return
        if self._config.spool:
            directory = (
                Path(self._config.spool_dir)
                if self._config.spool_dir
                else default_spool_dir(self._config.api_base, self._config.agent_id or "deployment")
            )
            spool = Spool(
                directory,
                max_bytes=self._config.spool_max_bytes,
                retention_seconds=self._config.spool_retention_seconds,
            )
            self._spool = spool if spool.enabled else None
        logger.info("Prefactor exporter ready: %s", self._config.describe())
        try:
            register_metrics(self.stats, __version__)
        except Exception:  # self-metrics are a convenience: never a reason to fail
            logger.debug("Prefactor self-metrics unavailable", exc_info=True)
        if self._spool is not None and self._spool.has_backlog:
            logger.info("Prefactor: %d bytes left in the spool by an earlier run; re-sending", spool.backlog_bytes)
            self._ensure_ticker()
        ref = weakref.ref(self)
        if hasattr(os, "register_at_fork"):

            def _after_fork() -> None:
                exporter = ref()
                if exporter is not None:
                    exporter._reset_after_fork()

            os.register_at_fork(after_in_child=_after_fork)

        def _at_exit() -> None:
            exporter = ref()
            if exporter is not None:
                exporter._begin_exit()

        # Registered after the TracerProvider's own atexit hook in the usual set-up order, so it runs first
        # (atexit is LIFO): from then on every export and the final shutdown share one exit budget.
        atexit.register(_at_exit)

    def __repr__(self) -> str:
        return f"PrefactorSpanExporter({self._config.describe()}, disabled={self._disabled_reason!r})"

    # ------------------------------------------------------------------ OTel contract

    @property
    def enabled(self) -> bool:
        return self._disabled_reason is None

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            return self._export(spans)
        except Exception:  # the host application must never see our failure
            logger.exception("Prefactor export failed unexpectedly; %d span(s) not delivered", len(spans))
            self._dropped["internal_error"] += len(spans)
            return SpanExportResult.FAILURE

    def _export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._shutdown:
            if not self._warned_after_shutdown:
                self._warned_after_shutdown = True
                logger.warning("Prefactor exporter already shut down; ignoring %d span(s)", len(spans))
            self._dropped["after_shutdown"] += len(spans)
            return SpanExportResult.FAILURE
        if self._disabled_reason is not None:
            return SpanExportResult.SUCCESS  # a no-op by configuration is not an export failure
        deadline = time.monotonic() + self._config.export_timeout
        if self._exit_deadline is not None:
            deadline = min(deadline, self._exit_deadline)  # the process is exiting: the exit budget rules
        records = self._map(spans)
        with self._state_lock:
            self._unplanned.extend(records)
            self._trim_unplanned()
        if not self._send_lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            return SpanExportResult.FAILURE
        try:
            ok = self._drain(deadline)
        finally:
            self._send_lock.release()
        self._ensure_ticker()
        return SpanExportResult.SUCCESS if ok else SpanExportResult.FAILURE

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        if self._disabled_reason is not None or self._shutdown:
            return True
        deadline = time.monotonic() + timeout_millis / 1000
        if not self._send_lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            return False
        try:
            return self._drain(min(deadline, time.monotonic() + self._config.export_timeout), flush=True)
        except Exception:
            logger.exception("Prefactor force_flush failed unexpectedly")
            return False
        finally:
            self._send_lock.release()

    def shutdown(self, timeout_millis: int = 30_000) -> None:
        """Deliver what is left within min(timeout_millis, PREFACTOR_SHUTDOWN_TIMEOUT), then close."""
        if self._shutdown:
            return
        now = time.monotonic()
        deadline = min(now + timeout_millis / 1000, self._exit_deadline or now + self._config.shutdown_timeout)
        self._ticker_stop.set()
        try:
            if self._transport is not None:
                self._transport.interrupt_waits()  # a sender sleeping in backoff lets go of the lock now
            if self._disabled_reason is None and self._send_lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
                try:
                    if self._transport is not None:
                        self._transport.resume_waits()
                    self._drain(deadline, shutdown=True)
                finally:
                    self._send_lock.release()
        except Exception:
            logger.exception("Prefactor shutdown failed unexpectedly")
        finally:
            self._shutdown = True
            if self._transport is not None:
                self._transport.close()
            self._report_losses()

    # ------------------------------------------------------------------ internals

    def _map(self, spans: Sequence[ReadableSpan]) -> list[SpanRecord]:
        records: list[SpanRecord] = []
        for span in spans:
            try:
                record = map_span(span, self._mapping_options)
            except Exception as exc:  # one bad span must not cost the batch
                self._dropped["mapping_error"] += 1
                self._log.log(logging.WARNING, "map", "Prefactor: span %r could not be mapped (%s)", span.name, exc)
                continue
            if record.scope:
                self._scopes.add(record.scope)
            try:
                # Encoded now, the payload trees are freed young; held until delivery, the garbage collector
                # would scan and promote them (measured: most of the collector's cost per span).
                record.payload = encode_json(record.payload)  # type: ignore[arg-type]
                record.result_payload = encode_json(record.result_payload)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                pass  # kept as dicts: the send path reports what cannot be encoded
            records.append(record)
        return records

    def _trim_unplanned(self) -> None:
        # Records wait here only until the account partition is known; bounded like the planner.
        overflow = len(self._unplanned) - self._config.max_queued_spans
        for _ in range(max(0, overflow)):
            self._unplanned.popleft()
            self._dropped["queue_full"] += 1

    def _ensure_planner(self, deadline: float) -> Planner | None:
        if self._planner is not None:
            return self._planner
        assert self._transport is not None
        if self._config.agent_id:
            partition = ids.extract_partition(self._config.agent_id)
        else:
            pfid = self._transport.generate_pfid(deadline)
            if pfid is None or not ids.is_pfid(pfid):
                return None
            partition = ids.extract_partition(pfid)
        config = self._config
        scopes = self._scopes

        versions: dict[tuple[int, int], tuple[object, dict[str, Any]]] = {}

        def agent_version_for(resource: Mapping[str, object]) -> dict[str, Any]:
            # Built and dumped once per (Resource, scopes seen so far): the scope set only grows, so its size
            # names it.
            key = (id(resource), len(scopes))
            cached = versions.get(key)
            if cached is not None and cached[0] is resource:
                return cached[1]
            version = agent_version_from_resource(
                resource,
                sdk_version=__version__,
                agent_name=config.agent_name,
                agent_identifier=config.agent_identifier,
                scopes=sorted(scopes),
            ).model_dump(exclude_none=True)
            if len(versions) >= 64:
                versions.clear()
            versions[key] = (resource, version)  # holding the Resource keeps its id from being reused
            return version

        self._planner = Planner(
            partition=partition,
            agent_key=config.agent_id or "deployment",
            agent_id=config.agent_id,
            environment_id=config.environment_id,
            purpose=config.purpose,
            agent_version_for=agent_version_for,
            schema_version=agent_schema_version(),
            max_waiting_spans=config.max_waiting_spans,
            max_queued_spans=config.max_queued_spans,
            max_wait_seconds=config.max_wait_seconds,
            finish_grace_seconds=config.finish_grace_seconds,
            span_filter=_carries_genai if config.span_filter == "genai" else None,
        )
        return self._planner

    def _drain(self, deadline: float, *, flush: bool = False, shutdown: bool = False) -> bool:
        """Send everything the planner has ready. True if nothing that was ready is left undelivered.

        With a spool backlog, the backlog goes first (oldest first keeps parents before children); what
        cannot be delivered by the deadline is handed to the spool, behind it.
        """
        transport = self._transport
        if transport is None:
            return True
        with suppress_instrumentation():
            planner = self._ensure_planner(deadline)
            if planner is None:
                return False
            with self._state_lock:
                if self._unplanned:
                    planner.add(list(self._unplanned), time.monotonic())
                    self._unplanned.clear()
            spool = self._spool
            if spool is not None and spool.has_backlog:
                retry_due = time.monotonic() >= self._spool_retry_at
                if not ((retry_due or shutdown) and self._replay_spool(deadline)):
                    self._spill(planner, flush=flush, shutdown=shutdown)
                    return False
            delivered = self._send_live(planner, deadline, flush=flush, shutdown=shutdown)
            if not delivered and not transport.auth_failed:
                self._spill(planner, flush=flush, shutdown=shutdown)
            return delivered

    def _send_live(self, planner: Planner, deadline: float, *, flush: bool, shutdown: bool) -> bool:
        max_items = self._config.max_items_per_request
        # One clock reading per drain: re-plans within it must not pick up, one by one, the runs whose grace
        # period ends meanwhile (that made single-item requests under load); the next drain takes them together.
        now = time.monotonic()
        for _round in range(10_000):  # bounded: every round makes progress or returns
            if time.monotonic() >= deadline:
                return False
            with self._state_lock:
                items = planner.plan(now, flush=flush, shutdown=shutdown)
            if not items:
                return True
            encoded, sendable = self._encode(items, planner)
            if not sendable:
                continue
            verdict = self._send_round(planner, sendable, encoded, max_items, deadline)
            if verdict is False:
                return False
            if isinstance(verdict, int):
                max_items = verdict
            # Re-plan: after a partial failure to re-order what is left, after success for finishes
            # that just became due. The next plan is empty when everything is delivered.
        return False

    # ------------------------------------------------------------------ durable spool

    def _spill(self, planner: Planner, *, flush: bool, shutdown: bool) -> None:
        """Hand everything ready to the spool, in plan order; the planner then treats it as delivered."""
        spool = self._spool
        if spool is None:
            return
        with self._state_lock:
            items = planner.plan(time.monotonic(), flush=flush, shutdown=shutdown)
            if items and spool.append([encode_item(item.body) for item in items]):
                planner.handoff(items, time.monotonic())
        self._spool_retry_at = max(self._spool_retry_at, time.monotonic() + self._spool_backoff)

    def _replay_spool(self, deadline: float) -> bool:
        """Send spool files oldest first. True once the spool is empty; False (backing off) on failure."""
        spool = self._spool
        transport = self._transport
        assert spool is not None and transport is not None
        while spool.has_backlog:
            if time.monotonic() >= deadline:
                return False
            file = spool.take_oldest()
            if file is None:
                break
            remaining = self._send_spooled(file.items, deadline)
            if remaining:
                spool.give_back(file, remaining)
                self._spool_backoff = min(_TICK_BACKOFF_CAP_S, max(1.0, self._spool_backoff * 2))
                self._spool_retry_at = time.monotonic() + self._spool_backoff
                return False
            spool.complete(file)
        self._spool_backoff = 1.0
        return True

    def _send_spooled(self, items: list[dict[str, Any]], deadline: float) -> list[dict[str, Any]]:
        """Deliver spooled items in order; returns what is left to send later (empty: all settled)."""
        transport = self._transport
        assert transport is not None
        pending = list(items)
        max_items = self._config.max_items_per_request
        while pending:
            head = pending[0]
            if head["_type"] in self._rest_only:
                result = transport.send_rest(head, deadline)
                if result.error == "rejected":
                    result.outcomes = {head["idempotency_key"]: ItemOutcome("error", result.code, result.message)}
                    result.error = None
                chunk = [head]
            else:
                encoded = [encode_item(item) for item in pending[: max_items * 4]]
                first = chunk_encoded(encoded, max_items, self._config.max_request_bytes)[0]
                chunk = pending[: len(first)]
                keys = [item["idempotency_key"] for item in chunk]
                result = transport.send_bulk(encoded[: len(first)], keys, deadline)
                if result.error is None:
                    planned = [PlannedItem(item["idempotency_key"], item["_type"], item, 0) for item in chunk]
                    self._learn_rest_only(planned, result.outcomes)
            if result.error in ("too_large", "rejected") and len(chunk) > 1:
                max_items = max(1, len(chunk) // 2)
                continue
            if result.error in ("too_large", "rejected"):
                result = BulkResult({head["idempotency_key"]: ItemOutcome("error", result.error)})
            if result.error is not None:
                return pending
            settled = 0
            for item in chunk:
                outcome = result.outcomes.get(item["idempotency_key"], NOT_PROCESSED)
                if outcome.status == "not_processed":
                    break
                settled += 1
                self._settle_spooled(item, outcome, pending)
            if settled == 0 and not self._rest_only_changed:
                return pending
            self._rest_only_changed = False
            del pending[:settled]
        return []

    def _settle_spooled(self, item: dict[str, Any], outcome: ItemOutcome, pending: list[dict[str, Any]]) -> None:
        action = item["_type"]
        done = outcome.status == "success" or outcome.code in ("idempotency_key_already_used", "already_exists")
        if action in (BULK_START, BULK_FINISH_INSTANCE) and outcome.code == "invalid_action":
            done = True  # already started / already finished: our own earlier attempt
        if done:
            if action == BULK_CREATE_SPAN:
                self._counters["spans_replayed"] += 1
            return
        details = item.get("details") if action == BULK_CREATE_SPAN else None
        if outcome.code == "not_found" and isinstance(details, dict) and details.get("parent_span_id"):
            # The parent never reached the server (dropped earlier): keep the span, without the link.
            orphan = {**item, "details": {k: v for k, v in details.items() if k != "parent_span_id"}}
            payload = dict(details.get("payload") or {})
            payload["metadata"] = {**(payload.get("metadata") or {}), "orphaned": True}
            orphan["details"]["payload"] = payload
            orphan["idempotency_key"] = ids.idempotency_key("orphan", item["idempotency_key"])
            pending.insert(1, orphan)  # right after the item being settled (which is removed)
            self._counters["spans_orphaned_parent_rejected"] += 1
            return
        self._dropped[f"spool_rejected:{action}:{outcome.code or 'error'}"] += 1

    def _send_round(
        self,
        planner: Planner,
        items: list[PlannedItem],
        encoded: list[bytes],
        max_items: int,
        deadline: float,
    ) -> bool | int:
        """Send one plan in order. True: all delivered; False: stop for now; int: re-plan with this chunk size."""
        transport = self._transport
        assert transport is not None
        for segment in self._segments(items, encoded, max_items):
            if isinstance(segment, int):  # an action the bulk endpoint refused: its REST call
                item = items[segment]
                result = transport.send_rest(item.body, deadline)
                if result.error == "rejected":
                    result.outcomes = {item.key: ItemOutcome("error", result.code, result.message)}
                    result.error = None
                keys = [item.key]
                chunk_items = [item]
            else:
                chunk_items = [items[i] for i in segment]
                keys = [item.key for item in chunk_items]
                result = transport.send_bulk([encoded[i] for i in segment], keys, deadline)
                self._learn_rest_only(chunk_items, result.outcomes)
            with self._state_lock:
                planner.apply(result.outcomes, time.monotonic())
            if result.error in ("too_large", "rejected"):
                if len(chunk_items) == 1:
                    with self._state_lock:
                        replaced = result.error == "too_large" and planner.replace_with_placeholder(
                            keys[0], len(encoded[segment.start]) if isinstance(segment, range) else 0
                        )
                        if not replaced:
                            # One item the server will not take in any request: drop it, counted.
                            planner.apply({keys[0]: ItemOutcome("error", result.error)}, time.monotonic())
                    return True
                return max(1, len(chunk_items) // 2)  # split in halves and re-plan
            if result.error is not None:
                return False
            outcomes = result.outcomes.values()
            if not any(o.status != "not_processed" for o in outcomes) and not self._rest_only_changed:
                self._dropped_contract_round()
                return False
            if self._rest_only_changed or any(o.status != "success" for o in outcomes):
                self._rest_only_changed = False
                return True
        return True

    def _segments(self, items: list[PlannedItem], encoded: list[bytes], max_items: int) -> list[range | int]:
        """Consecutive bulk-able items chunked by count and bytes; REST-only actions as single indices."""
        segments: list[range | int] = []
        start = 0
        for index, item in enumerate([*items, None]):
            if item is None or item.action in self._rest_only:
                if index > start:
                    chunks = chunk_encoded(encoded[start:index], max_items, self._config.max_request_bytes)
                    segments.extend(range(c.start + start, c.stop + start) for c in chunks)
                if item is not None:
                    segments.append(index)
                start = index + 1
        return segments

    def _learn_rest_only(self, items: list[PlannedItem], outcomes: dict[str, ItemOutcome]) -> None:
        """An action type the bulk endpoint does not know is sent as its REST call from then on.

        `agent_instances/start|finish` in bulk are inferred, not documented (prefactor-api.md, question 1).
        """
        for item in items:
            outcome = outcomes.get(item.key)
            if outcome is None or outcome.status != "error" or item.action in self._rest_only:
                continue
            unknown_type = outcome.code == "not_implemented" or (
                outcome.code in ("invalid_action", "bad_request", "validation_errors")
                and "_type" in (outcome.message or "")
            )
            if unknown_type:
                self._rest_only.add(item.action)
                self._rest_only_changed = True
                outcomes[item.key] = NOT_PROCESSED
                logger.info("Prefactor: bulk does not take %r; sending it as its REST call", item.action)

    def _dropped_contract_round(self) -> None:
        self._counters["empty_bulk_answers"] += 1
        self._log.log(logging.WARNING, "empty", "Prefactor export: the server processed no item of a request")

    def _encode(self, items: list[PlannedItem], planner: Planner) -> tuple[list[bytes], list[PlannedItem]]:
        encoded: list[bytes] = []
        sendable: list[PlannedItem] = []
        limit = self._config.max_request_bytes
        replaced = False
        for item in items:
            try:
                data = encode_item(item.body)
            except (TypeError, ValueError) as exc:
                self._log.log(logging.WARNING, "encode", "Prefactor: item could not be encoded (%s)", exc)
                with self._state_lock:
                    planner.apply({item.key: ItemOutcome("error", "unencodable")}, time.monotonic())
                continue
            if len(data) > limit:
                # Checked before sending: a poison span must not cost a 413 ladder on every export.
                with self._state_lock:
                    if not planner.replace_with_placeholder(item.key, len(data)):
                        planner.apply({item.key: ItemOutcome("error", "too_large")}, time.monotonic())
                self._log.log(logging.WARNING, "too_large", "Prefactor: a %d-byte span became a placeholder", len(data))
                replaced = True
                continue
            encoded.append(data)
            sendable.append(item)
        if replaced:
            return [], []  # re-plan, so the placeholder keeps its place before its children
        return encoded, sendable

    # ------------------------------------------------------------------ background finishing

    def _ensure_ticker(self) -> None:
        if self._ticker is not None and self._ticker.is_alive():
            return
        if self._shutdown or self._disabled_reason is not None:
            return
        self._ticker = threading.Thread(target=self._tick_loop, name="prefactor-otel-finisher", daemon=True)
        self._ticker.start()

    def _tick_loop(self) -> None:
        """Finishes instances after their grace period, sends aged orphans and replays the spool when no
        export comes along."""
        delay = _TICK_S
        while not self._ticker_stop.wait(delay):
            planner = self._planner
            spool = self._spool
            due = spool is not None and spool.has_backlog and time.monotonic() >= self._spool_retry_at
            if planner is not None and not due:
                with self._state_lock:
                    due = planner.has_due_work(time.monotonic())
            if not due or not self._send_lock.acquire(blocking=False):
                continue
            try:
                deadline = time.monotonic() + self._config.export_timeout
                if planner is None:
                    with suppress_instrumentation():
                        ok = self._replay_spool(deadline)
                else:
                    ok = self._drain(deadline)
            except Exception:
                logger.exception("Prefactor background send failed unexpectedly")
                ok = False
            finally:
                self._send_lock.release()
            delay = _TICK_S if ok else min(_TICK_BACKOFF_CAP_S, delay * 2)

    def _begin_exit(self) -> None:
        if self._exit_deadline is None:
            self._exit_deadline = time.monotonic() + self._config.shutdown_timeout

    def _reset_after_fork(self) -> None:
        self._send_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._ticker = None
        self._ticker_stop = threading.Event()
        if self._transport is not None:
            self._transport.reset_after_fork()

    # ------------------------------------------------------------------ visibility

    def _report_losses(self) -> None:
        stats = self.stats()
        if stats["spans_dropped"] or stats["spans_queued"]:
            logger.warning(
                "Prefactor exporter shut down: %d span(s) exported, %d dropped %s, %d left undelivered",
                stats["spans_exported"],
                stats["spans_dropped"],
                dict(stats["dropped_by_reason"]),
                stats["spans_queued"],
            )

    def stats(self) -> dict[str, Any]:
        """Counters: spans received/exported/dropped (by reason), retries, requests, instances."""
        planner = self._planner
        dropped: Counter[str] = Counter(self._dropped)
        counters: Counter[str] = Counter(self._counters)
        queued = len(self._unplanned)
        open_traces = 0
        if planner is not None:
            dropped.update(planner.dropped)
            counters.update(planner.counters)
            queued += planner.queued_spans
            open_traces = planner.open_traces
        if self._transport is not None:
            counters.update(self._transport.counters)
        if self._spool is not None:
            for key, value in self._spool.counters.items():
                if key.startswith("dropped:"):
                    dropped[key.removeprefix("dropped:")] += value
                else:
                    counters[key] += value
        return {
            "enabled": self.enabled,
            "disabled_reason": self._disabled_reason,
            "spans_received": counters["spans_received"] + self._dropped["mapping_error"],
            "spans_exported": counters["spans_exported"] + counters["spans_replayed"],
            "spans_dropped": sum(v for k, v in dropped.items() if not k.startswith("finish_rejected")),
            "dropped_by_reason": dict(dropped),
            "spans_filtered_out": counters["spans_filtered_out"],
            "spans_reparented": counters["spans_reparented"],
            "spans_orphaned": sum(v for k, v in counters.items() if k.startswith("spans_orphaned_")),
            "spans_queued": queued,
            "open_traces": open_traces,
            "instances_registered": counters["instances_registered"],
            "instances_finished": counters["instances_finished"],
            "requests": counters["requests"],
            "retries": counters["retries"],
            "contract_errors": counters["contract_errors"],  # answers that did not fit the API contract
            "bytes_sent": counters["bytes_sent"],
            "auth_failed": bool(self._transport and self._transport.auth_failed),
            "spans_spooled": counters["spans_spooled"],
            "spans_replayed": counters["spans_replayed"],
            "spool_backlog_bytes": self._spool.backlog_bytes if self._spool is not None else 0,
            "spool_enabled": self._spool is not None,
            "requests_by_outcome": {
                key.removeprefix("outcome:"): value for key, value in counters.items() if key.startswith("outcome:")
            },
        }
