"""Delivery: ordered items to the server, one path for items planned now and items read back from the spool.

A source hands out its next items in dependency order (`plan`) and takes back what became of each (`apply`); the
planner is one source (`PlannedSource`), a spool file another (`SpooledSource`). `Delivery.drain` encodes the
items, checks each against the request size, chunks them by count and bytes, sends each chunk through the
transport (an action the bulk endpoint refuses goes as its REST call from then on), halves a chunk the server
finds too large, and reports every outcome to the source, until the source has nothing ready or delivery must
stop. What an outcome means (delivered, send again as an orphan, rejected, not processed) is decided by
`outcomes.judge` for both sources, so a replayed item is treated exactly like a live one.

Threads: `drain` runs only on the thread that holds the exporter's send lock, so one request per exporter is in
flight at a time, and `rest_only` is read and written by that thread only. `PlannedSource` takes the exporter's
state lock around every planner call, because `export()` adds spans to the planner from other threads; its
`before_send` hook runs on the sending thread without it.
`SpooledSource` belongs to the sending thread alone.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from operator import attrgetter
from typing import Any, Protocol

from prefactor_otel._logging import RateLimitedLog, logger
from prefactor_otel.config.options import PrefactorConfig
from prefactor_otel.control.terminations import TERMINATIONS
from prefactor_otel.model.http import BULK_CREATE_SPAN, BULK_REGISTER
from prefactor_otel.pipeline.items import PlannedItem, orphan_item
from prefactor_otel.pipeline.planner import Planner
from prefactor_otel.pipeline.schema_once import SchemaOnce
from prefactor_otel.transport.client import BulkTransport
from prefactor_otel.transport.outcomes import NOT_PROCESSED, BulkResult, ItemOutcome, Verdict, judge
from prefactor_otel.transport.wire import chunk_encoded, encode_item, instance_id_of

_MAX_ROUNDS = 10_000  # every round makes progress or returns; this only bounds a misbehaving server
# Per-request passes over up to 500 outcomes run in C (map + attrgetter) rather than as Python generators.
_KEY = attrgetter("key")
_STATUS = attrgetter("status")
_TERMINATE = attrgetter("terminate")


class ItemSource(Protocol):
    def plan(self) -> list[PlannedItem]:
        """The next items to send, in dependency order; empty when nothing is ready."""

    def apply(self, outcomes: Mapping[str, ItemOutcome]) -> None:
        """What became of items of the last plan. Items without an outcome were not processed."""

    def too_large(self, key: str, size: int) -> None:
        """An item no request can carry: replace it by something smaller, or drop it (counted)."""

    def refused(self, keys: list[str]) -> None:
        """These items were in a request the server refused whole for its token (401/403), or that could not be
        sent at all (an unusable proxy): not processed, and a run they would have registered does not exist."""

    def before_send(self) -> None:
        """Called once per plan, after its items are encoded and before the first of them is sent, without any
        lock held: where what `plan` started (a journal's fsync) is waited for."""


class PlannedSource:
    """The planner as a source. `on_change` runs under the state lock after each plan and each apply: the
    exporter journals there the runs a plan opens (before any of its items is sent) and those it closes.
    `before_send` (optional) runs without the state lock once the plan's items are encoded, before any is sent:
    a journal that writes its lines under the lock in `on_change` and syncs them meanwhile (the fsync releases the
    GIL and overlaps the encoding) waits there until they are durable, so no `export()` waits behind an fsync for
    the state lock, and a run's register still never leaves before its journal line is on disk."""

    def __init__(
        self,
        planner: Planner,
        lock: threading.Lock,
        *,
        flush: bool = False,
        shutdown: bool = False,
        on_change: Callable[[], None] | None = None,
        before_send: Callable[[], None] | None = None,
    ) -> None:
        self._planner = planner
        self._lock = lock
        self._flush = flush
        self._shutdown = shutdown
        self._on_change = on_change
        self._before_send = before_send
        # One clock reading per drain: re-plans within it must not pick up, one by one, the runs whose grace
        # period ends meanwhile (that made single-item requests under load); the next drain takes them together.
        self._now = time.monotonic()

    def plan(self) -> list[PlannedItem]:
        with self._lock:
            items = self._planner.plan(self._now, flush=self._flush, shutdown=self._shutdown)
            if self._on_change is not None:
                self._on_change()
            return items

    def apply(self, outcomes: Mapping[str, ItemOutcome]) -> None:
        with self._lock:
            self._planner.apply(outcomes, time.monotonic())
            if self._on_change is not None:
                self._on_change()

    def before_send(self) -> None:
        if self._before_send is not None:
            self._before_send()

    def too_large(self, key: str, size: int) -> None:
        with self._lock:
            if not self._planner.replace_with_placeholder(key, size):
                self._planner.apply({key: ItemOutcome("error", "too_large")}, time.monotonic())

    def refused(self, keys: list[str]) -> None:
        with self._lock:
            self._planner.refused(keys)
            if self._on_change is not None:
                self._on_change()


class SpooledSource:
    """The items of one spool file, in their order. `pending` is what is left to send (orphans rewritten).

    Items of a run Prefactor terminated (this process's or, replayed from the spool of a process that ended,
    another's: `terminated(instance id)`, by default the process's TerminationRegistry) are dropped before each
    plan, counted `run_terminated`: a terminated run takes nothing more."""

    def __init__(self, items: list[dict[str, Any]], terminated: Callable[[str], bool] | None = None) -> None:
        self.pending = [PlannedItem(item["idempotency_key"], item["_type"], item, 0) for item in items]
        self.counters: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()  # span creates
        self.actions_dropped: Counter[str] = Counter()  # instance actions
        self._terminated = TERMINATIONS.run_terminated if terminated is None else terminated
        # A span finish names only its span: its run is the one of the span's create in this file, if there.
        self._run_of_span: dict[str, str] = {}
        for item in items:
            details = item.get("details")
            if isinstance(details, dict) and isinstance(details.get("id"), str):
                run = details.get("agent_instance_id")
                if isinstance(run, str):
                    self._run_of_span[details["id"]] = run

    def plan(self) -> list[PlannedItem]:
        kept = [item for item in self.pending if not self._of_terminated_run(item)]
        if len(kept) != len(self.pending):
            for item in self.pending:
                if self._of_terminated_run(item):
                    self._reject(item.action, "run_terminated", prefix=False)
            self.pending = kept
        return list(self.pending)

    def _of_terminated_run(self, item: PlannedItem) -> bool:
        run = instance_id_of(item.body)
        if run is None:
            span = item.body.get("agent_span_id")
            run = self._run_of_span.get(span) if isinstance(span, str) else None
        return run is not None and self._terminated(run)

    def apply(self, outcomes: Mapping[str, ItemOutcome]) -> None:
        kept: list[PlannedItem] = []
        for item in self.pending:
            outcome = outcomes.get(item.key, NOT_PROCESSED)
            details = item.body.get("details")
            can_orphan = isinstance(details, dict) and bool(details.get("parent_span_id"))
            verdict = judge(item.action, outcome, can_orphan=can_orphan)
            if verdict is Verdict.PENDING:
                kept.append(item)
            elif verdict is Verdict.ORPHAN:
                orphan = orphan_item(item.body)
                kept.append(PlannedItem(orphan["idempotency_key"], item.action, orphan, 0))  # in the same place
                self.counters["spans_orphaned_parent_rejected"] += 1
            elif verdict is Verdict.DONE:
                if item.action == BULK_CREATE_SPAN:
                    self.counters["spans_replayed"] += 1
            else:
                self._reject(item.action, outcome.code)
        self.pending = kept

    def too_large(self, key: str, size: int) -> None:
        self.apply({key: ItemOutcome("error", "too_large")})

    def refused(self, keys: list[str]) -> None:
        """Nothing to do: the items stay in their file, which keeps its place at the head of the spool."""

    def before_send(self) -> None:
        """Nothing to wait for: a spool file's runs were journaled by the process that wrote it."""

    def _reject(self, action: str, code: str | None, *, prefix: bool = True) -> None:
        if action == BULK_CREATE_SPAN:
            self.dropped[f"rejected:{code or 'error'}" if prefix else str(code)] += 1
        else:
            self.actions_dropped[f"{action.rsplit('/', 1)[-1]}_{'rejected:' if prefix else ''}{code or 'error'}"] += 1


class Delivery:
    def __init__(self, transport: BulkTransport, config: PrefactorConfig) -> None:
        self.transport = transport
        self._config = config
        self._log = RateLimitedLog()
        self.rest_only: set[str] = set()  # actions the bulk endpoint does not take: sent as their REST calls
        self._rest_only_changed = False
        self.counters: Counter[str] = Counter()
        # Registers after an agent's first leave its schema set out, learned (schema_once.py); the keys of the
        # items of the current plan that went without it.
        self.schema_once = SchemaOnce(self.counters, enabled=config.schema_once)
        self._without_schema: set[str] = set()
        # Called (on the sending thread, before the source hears of the outcomes) once per item whose answer
        # carried `control: {"terminate": true}`, with the item and the reason: the exporter records the run's
        # termination there. Set by the exporter; one that raises is logged and counted, never propagated.
        self.on_terminate: Callable[[PlannedItem, str | None], None] | None = None

    def reset_after_fork(self) -> None:
        self._log = RateLimitedLog()  # its lock may have been held by another thread at the fork
        self.counters = Counter()
        self.schema_once.counters = self.counters

    def drain(self, source: ItemSource, deadline: float) -> bool:
        """Send until the source has nothing ready (True) or delivery must stop for now (False)."""
        max_items = self._config.max_items_per_request
        for _round in range(_MAX_ROUNDS):
            if time.monotonic() >= deadline:
                return False
            items = source.plan()
            if not items:
                self.transport.outage.settled()  # after an outage: "delivery resumed ...; N spans sent", once
                return True
            encoded, sendable = self._encode(items, source)
            if not sendable:
                continue  # items were replaced or dropped: plan again
            try:
                source.before_send()
            except Exception as exc:  # what the plan started is in doubt, not the items: they go all the same
                self.counters["before_send_errors"] += 1
                self._log.log(logging.ERROR, "before_send", "Prefactor: waiting before a send failed (%r)", exc)
            verdict = self._send_round(source, sendable, encoded, max_items, deadline)
            if verdict is False:
                return False
            if type(verdict) is int:  # not True: a bool is an int, and True would make every later request 1 item
                max_items = verdict
            # Plan again: after a partial failure to re-order what is left, after success for finishes that
            # just became due. The next plan is empty once everything is delivered.
        return False

    def _encode(self, items: list[PlannedItem], source: ItemSource) -> tuple[list[bytes], list[PlannedItem]]:
        encoded: list[bytes] = []
        sendable: list[PlannedItem] = []
        limit = self._config.max_request_bytes
        replaced = False
        self._without_schema.clear()
        for item in items:
            wire = item.data
            try:
                if isinstance(wire, bytes):
                    data = wire  # encoded when planned (items.wire_data): most items
                elif item.action == BULK_REGISTER:
                    data, omitted = self.schema_once.encode(item.body)
                    if omitted:
                        self._without_schema.add(item.key)
                else:
                    data = encode_item(item.body)
            except (TypeError, ValueError) as exc:
                self._log.log(logging.WARNING, "encode", "Prefactor: item could not be encoded (%s)", exc)
                source.apply({item.key: ItemOutcome("error", "unencodable")})
                replaced = True
                continue
            if len(data) > limit:
                # Checked before sending: a poison span must not cost a 413 ladder on every export.
                source.too_large(item.key, len(data))
                self._log.log(
                    logging.WARNING, "too_large", "Prefactor: a %d-byte item is over the request limit", len(data)
                )
                replaced = True
                continue
            encoded.append(data)
            sendable.append(item)
        if replaced:
            return [], []  # plan again, so a placeholder keeps its place before its children
        return encoded, sendable

    def _send_round(
        self, source: ItemSource, items: list[PlannedItem], encoded: list[bytes], max_items: int, deadline: float
    ) -> bool | int:
        """Send one plan in order. True: go on; False: stop for now; int: plan again with this chunk size."""
        transport = self.transport
        for segment in self._segments(items, encoded, max_items):
            replan = False
            if isinstance(segment, int):  # an action the bulk endpoint refused: its REST call
                item = items[segment]
                result = transport.send_rest(item.body, deadline)
                if result.error == "rejected":
                    result.outcomes = {item.key: ItemOutcome("error", result.code, result.message)}
                    result.error = None
                chunk = [item]
                first = segment
            else:
                # Segments are consecutive ranges (chunk_encoded): slices copy them in C.
                first = segment.start
                chunk = items[first : segment.stop]
                result = transport.send_bulk(encoded[first : segment.stop], list(map(_KEY, chunk)), deadline)
                if "error" in set(map(_STATUS, result.outcomes.values())):  # it only learns from errors
                    self._learn_rest_only(chunk, result.outcomes)
                replan = self._learn_schema_once(chunk, result)
            terminating = (
                [(item, o) for item in chunk if (o := result.outcomes.get(item.key)) and o.terminate]
                if any(map(_TERMINATE, result.outcomes.values()))
                else []
            )
            source.apply(result.outcomes)
            if transport.outage.resuming:
                transport.outage.sent(_spans_delivered(chunk, result.outcomes))
            if terminating:
                self._report_terminations(terminating)
                if result.error is None:
                    return True  # plan again: what is left of the plan for the terminated run is gone from it
            if replan:
                return True  # plan again: the registers refused without their schema set go with it
            if result.error in ("too_large", "rejected"):
                if len(chunk) == 1:
                    if result.error == "too_large":
                        source.too_large(chunk[0].key, len(encoded[first]))
                    else:  # one item the server will not take in any request: drop it, counted
                        source.apply({chunk[0].key: ItemOutcome("error", result.code or "rejected")})
                    return True
                return max(1, len(chunk) // 2)  # split in halves and plan again
            if result.error in ("auth", "proxy"):
                source.refused([item.key for item in items])  # this chunk and the rest of the plan: all unsent
            if result.error is not None:
                return False
            statuses = set(map(_STATUS, result.outcomes.values()))
            if not statuses - {"not_processed"} and not self._rest_only_changed:  # no item processed
                self.counters["empty_bulk_answers"] += 1
                self._log.log(logging.WARNING, "empty", "Prefactor export: the server processed no item of a request")
                return False
            if self._rest_only_changed or not statuses <= {"success"}:
                self._rest_only_changed = False
                return True
        return True

    def _report_terminations(self, terminating: list[tuple[PlannedItem, ItemOutcome]]) -> None:
        """Hand each item whose answer says its run was terminated to `on_terminate` (live and spooled alike),
        after its outcome was applied (it was delivered); the caller then plans again, without that run."""
        for item, outcome in terminating:
            self.counters["control_terminate_answers"] += 1
            hook = self.on_terminate
            if hook is None:
                continue
            try:
                hook(item, outcome.terminate_reason)
            except Exception as exc:  # the hook must not cost the delivery of the items around it
                self.counters["control_hook_errors"] += 1
                self._log.log(logging.ERROR, "on_terminate", "Prefactor: recording a termination failed (%r)", exc)

    def _segments(self, items: list[PlannedItem], encoded: list[bytes], max_items: int) -> list[range | int]:
        """Consecutive bulk-able items chunked by count and bytes; REST-only actions as single indices."""
        segments: list[range | int] = []
        start = 0
        for index, item in enumerate([*items, None]):
            if item is None or item.action in self.rest_only:
                if index > start:
                    chunks = chunk_encoded(encoded[start:index], max_items, self._config.max_request_bytes)
                    segments.extend(range(c.start + start, c.stop + start) for c in chunks)
                if item is not None:
                    segments.append(index)
                start = index + 1
        return segments

    def _learn_schema_once(self, chunk: list[PlannedItem], result: BulkResult) -> bool:
        """Registers delivered with their schema set teach `schema_once`; one refused without it is made not
        processed (sent again with the set). True when that happened, or the whole request was refused with one in
        it: the caller plans again (the registers go with their set), rather than splitting the request or taking
        a request with nothing processed for an unusable server."""
        if not self.schema_once.enabled and not self._without_schema:
            # Omission off (the default, or turned off for good by a refusal) and no register of this plan went
            # without its set: nothing to learn or judge, and what `delivered` would record is read only while
            # omission is on. Skips a Python pass over every item of every request (~0.3 us/span realistic).
            return False
        refused_whole = result.error == "rejected"
        replan = False
        for item in chunk:
            if item.action != BULK_REGISTER:
                continue
            outcome = result.outcomes.get(item.key)
            if item.key in self._without_schema:
                judged = self.schema_once.judge(outcome, refused_whole)
                if judged is not None and judged is not outcome:
                    result.outcomes[item.key] = judged
                    replan = True
            elif outcome is not None and judge(item.action, outcome, can_orphan=False) is Verdict.DONE:
                self.schema_once.delivered(item.body)
        if refused_whole and not self.schema_once.enabled and self._without_schema.intersection(i.key for i in chunk):
            replan = True
        if replan:
            self._without_schema.clear()
        return replan

    def _learn_rest_only(self, items: list[PlannedItem], outcomes: dict[str, ItemOutcome]) -> None:
        """An action type the bulk endpoint does not know is sent as its REST call from then on.

        The bulk forms of `agent_instances/start|finish` are inferred from the REST names, not documented.
        """
        for item in items:
            outcome = outcomes.get(item.key)
            if outcome is None or outcome.status != "error" or item.action in self.rest_only:
                continue
            unknown_type = outcome.code == "not_implemented" or (
                outcome.code in ("invalid_action", "bad_request", "validation_errors")
                and "_type" in (outcome.message or "")
            )
            if unknown_type:
                self.rest_only.add(item.action)
                self._rest_only_changed = True
                outcomes[item.key] = NOT_PROCESSED
                logger.info("Prefactor: bulk does not take %r; sending it as its REST call", item.action)


def _spans_delivered(chunk: list[PlannedItem], outcomes: Mapping[str, ItemOutcome]) -> int:
    """Span creates of `chunk` the server took: what the "delivery resumed" line counts."""
    return sum(
        1
        for item in chunk
        if item.action == BULK_CREATE_SPAN and (o := outcomes.get(item.key)) and o.status == "success"
    )
