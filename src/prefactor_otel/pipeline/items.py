"""The bulk items the exporter sends, built from what it knows: pure functions, no state, safe from any thread.

The planner builds every item through these; the spool's replay rewrites a spooled span create as an orphan with
`orphan_item` (the same body and key the planner would give it), and runs left open by a dead process are
finished with `finish_item` (the same key as the finish their own process would have sent).
"""

from __future__ import annotations

import copy
from typing import Any

import msgspec

from prefactor_otel.mapping.payload import SpanRecord
from prefactor_otel.mapping.values import RawJson, as_dict, iso_from_ns
from prefactor_otel.model import ids
from prefactor_otel.model.http import (
    BULK_CREATE_SPAN,
    BULK_FINISH_INSTANCE,
    BULK_FINISH_SPAN,
    BULK_REGISTER,
    BULK_START,
)
from prefactor_otel.transport.wire import encode_item


class PlannedItem(msgspec.Struct, gc=False, frozen=True):
    """One bulk item as planned. `data` is the wire item: its JSON bytes (`wire_data`), or the dict where it stays
    one -- a register (its schema set is sent once, schema_once.py), an item the encoder refused (the send path
    reports it), an item read back from the spool. `body` is the item as a dict, decoded from the bytes: for the
    rare paths that read a field (a REST call, an orphan rewrite, a terminated run's answer).

    A msgspec Struct without garbage-collector support (`gc=False`), like `SpanRecord`: one per item in flight, and
    not a container the collector counts, so a batch in flight does not bring collections of the host's heap
    (docs/wire.md, "Containers in flight"). Immutable, and cheaper to build than the NamedTuple it was. It holds
    strings, bytes, ints and at most one item dict: no reference cycle can run through it."""

    key: str
    action: str  # the item's `_type`
    data: dict[str, Any] | bytes
    trace_id: int
    span_id: int | None = None

    @property
    def body(self) -> dict[str, Any]:
        data = self.data
        return data if type(data) is dict else as_dict(data)


def wire_data(body: dict[str, Any]) -> dict[str, Any] | bytes:
    """A planned item's `data`: its JSON bytes, or the dict itself where the encoder refuses it.

    Encoded when planned, so the dicts of a batch's items die as they are built: an item held until its answer
    (one per span, in flight) is then one tuple and its bytes, not three containers -- fewer garbage collections,
    of the host's heap too, while a batch is in flight (docs/wire.md, "Containers in flight"). The bytes
    are `encode_item`'s, which the send path would write (`benchmarks/wire_diff.py`)."""
    try:
        return encode_item(body)
    except (TypeError, ValueError):  # sent as a dict: the send path encodes it again and reports what it refuses
        return body


def register_item(
    instance_id: str,
    *,
    agent_version: dict[str, Any],
    schema_version: dict[str, Any],
    agent_id: str | None,
    environment_id: str | None,
    purpose: str | None,
    external_identifier: str | None = None,
) -> dict[str, Any]:
    """`agent_instances/register`: the run with its client-chosen id, agent version and schema set (shared dicts,
    never modified), and the name of the trace part it is (`external_identifier`, docs/cross-process.md)."""
    item: dict[str, Any] = {
        "_type": BULK_REGISTER,
        "idempotency_key": ids.idempotency_key_for_id(BULK_REGISTER, instance_id),
        "id": instance_id,
        "agent_version": agent_version,
        "agent_schema_version": schema_version,
    }
    if agent_id:
        item["agent_id"] = agent_id
    if environment_id:
        item["environment_id"] = environment_id
    if purpose:
        item["purpose"] = purpose
    if external_identifier:
        item["external_identifier"] = external_identifier
    return item


def start_item(instance_id: str, start_ns: int) -> dict[str, Any]:
    return {
        "_type": BULK_START,
        "idempotency_key": ids.idempotency_key_for_id(BULK_START, instance_id),
        "agent_instance_id": instance_id,
        "timestamp": iso_from_ns(start_ns),
    }


def span_create_item(
    record: SpanRecord,
    instance_id: str,
    span_id: str,
    parent_id: str | None,
    payload: dict[str, Any] | RawJson,
    result_payload: dict[str, Any] | RawJson,
    *,
    orphan: bool,
    placeholder: bool,
) -> dict[str, Any]:
    """`agent_spans/create`, fields nested under `details` as in the REST create: already finished, or (a live
    span, status "active") with no end and no result yet."""
    # Once per exported span: dict displays in the wire's field order, the common key without a call.
    status = record.status
    if status == "active":
        details: dict[str, Any] = {
            "agent_instance_id": instance_id,
            "id": span_id,
            "schema_name": record.schema_name,
            "status": status,
            "started_at": iso_from_ns(record.start_time_ns) or "",
        }
        if parent_id is not None:
            details["parent_span_id"] = parent_id
        details["payload"] = payload
    else:
        details = {
            "agent_instance_id": instance_id,
            "id": span_id,
            "schema_name": record.schema_name,
            "status": status,
            "started_at": iso_from_ns(record.start_time_ns) or "",
            "finished_at": iso_from_ns(record.end_time_ns) or "",
        }
        if parent_id is not None:
            details["parent_span_id"] = parent_id
        details["payload"] = payload
        details["result_payload"] = result_payload
    if orphan or placeholder or status == "active":
        # A live create is another body for the same span id: its own key (its finish follows it).
        key = span_create_key(span_id, orphan=orphan, placeholder=placeholder, live=status == "active")
    else:
        key = _CREATE_KEY_PREFIX + span_id  # span_create_key's key without a variant
    return {"_type": BULK_CREATE_SPAN, "idempotency_key": key, "details": details}


def ended_span_create_item(record: SpanRecord, instance_id: str, span_id: str, parent_id: str | None) -> dict[str, Any]:
    """`span_create_item` of an ended span with its own payloads, neither orphaned nor a placeholder: most span
    creates, so built without its tests and keyword arguments, its two times formatted here rather than by two
    `iso_from_ns` calls (the same texts: `_second_text`), and each details dict made by one display (the same item,
    tests/test_planner_items.py)."""
    start_ns, end_ns = record.start_time_ns, record.end_time_ns
    seconds, millis = divmod(start_ns // 1_000_000, 1000)
    started = (_SECOND_TEXTS.get(seconds) or _second_text(seconds)) + _MILLIS[millis]
    seconds, millis = divmod(end_ns // 1_000_000, 1000)
    finished = (_SECOND_TEXTS.get(seconds) or _second_text(seconds)) + _MILLIS[millis]
    if parent_id is None:
        details = {
            "agent_instance_id": instance_id,
            "id": span_id,
            "schema_name": record.schema_name,
            "status": record.status,
            "started_at": started,
            "finished_at": finished,
            "payload": record.payload,
            "result_payload": record.result_payload,
        }
    else:
        details = {
            "agent_instance_id": instance_id,
            "id": span_id,
            "schema_name": record.schema_name,
            "status": record.status,
            "started_at": started,
            "finished_at": finished,
            "parent_span_id": parent_id,
            "payload": record.payload,
            "result_payload": record.result_payload,
        }
    return {"_type": BULK_CREATE_SPAN, "idempotency_key": _CREATE_KEY_PREFIX + span_id, "details": details}


def _second_text(seconds: int) -> str:
    """The text of one Unix second in an ISO time (`iso_from_ns`'s, without the milliseconds), remembered: a plan's
    spans start and end within far fewer than _SECONDS_KEPT seconds. Cleared when full, as iso_from_ns's own cache."""
    text = (iso_from_ns(seconds * 1_000_000_000) or "")[:-5]
    if len(_SECOND_TEXTS) >= _SECONDS_KEPT:
        _SECOND_TEXTS.clear()
    _SECOND_TEXTS[seconds] = text
    return text


# Unix second -> its text in an ISO time; shared by any thread that builds items: a dict's get and set are atomic,
# two threads formatting one second store the same text, and a clear racing a read costs that read a re-format.
_SECONDS_KEPT = 256
_SECOND_TEXTS: dict[int, str] = {}
# The thousand endings of an ISO time (".123Z"), as iso_from_ns writes them.
_MILLIS = tuple((iso_from_ns(millis * 1_000_000) or "")[-5:] for millis in range(1000))


_CREATE_KEY_PREFIX = ids.idempotency_key_prefix(BULK_CREATE_SPAN)


def finish_item(instance_id: str, status: str, end_ns: int) -> dict[str, Any]:
    """`agent_instances/finish`; its key depends on the instance only, so finishing twice is harmless."""
    return {
        "_type": BULK_FINISH_INSTANCE,
        "idempotency_key": ids.idempotency_key_for_id(BULK_FINISH_INSTANCE, instance_id),
        "agent_instance_id": instance_id,
        "status": status,
        "timestamp": iso_from_ns(end_ns),
    }


def placeholder_payloads(record: SpanRecord, original_bytes: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The envelope without content: ids, name, status, times survive; the gap in the tree stays visible."""
    payload = as_dict(record.payload)
    error = payload.get("error")
    message = f"span too large to export ({original_bytes} bytes); content dropped"
    small = {
        key: payload.get(key)
        for key in ("span_id", "trace_id", "parent_span_id", "name", "kind", "status", "token_usage")
    }
    small["name"] = str(small["name"])[:1000]
    small.update(
        inputs={},
        metadata={"prefactor.too_large": True, "prefactor.original_bytes": original_bytes},
        error=(
            {"error_type": str(error.get("error_type"))[:200], "message": message, "stacktrace": None}
            if isinstance(error, dict)
            else None
        ),
        events=[],
        links=[],
    )
    result: dict[str, Any] = {"outputs": {}, "token_usage": small["token_usage"], "error": small["error"]}
    return small, result


def orphan_payload(payload: dict[str, Any] | RawJson) -> dict[str, Any]:
    """A span payload marked as sent without its parent link (the OTel parent id stays in the payload)."""
    marked = copy.copy(as_dict(payload))
    marked["metadata"] = {**(marked.get("metadata") or {}), "orphaned": True}
    return marked


def span_finish_item(span_id: str, record: SpanRecord, result_payload: dict[str, Any] | RawJson) -> dict[str, Any]:
    """`agent_spans/finish` of a live span, fields flat (a `details` wrapper is accepted by the API but stores no
    result); its key depends on the span only, so finishing twice is harmless."""
    return {
        "_type": BULK_FINISH_SPAN,
        "idempotency_key": ids.idempotency_key_for_id(BULK_FINISH_SPAN, span_id),
        "agent_span_id": span_id,
        "status": record.status,
        "timestamp": record.finished_at,
        "result_payload": result_payload,
    }


def unended_span_finish_item(span_id: str, end_ns: int, why: str) -> dict[str, Any]:
    """`agent_spans/finish` of a live span whose process ended before the span did (known only from the journal
    of a dead process): failed, error `SpanNotEnded`, with the key its own process would have used."""
    error = {"error_type": "SpanNotEnded", "message": why, "stacktrace": None}
    return {
        "_type": BULK_FINISH_SPAN,
        "idempotency_key": ids.idempotency_key_for_id(BULK_FINISH_SPAN, span_id),
        "agent_span_id": span_id,
        "status": "failed",
        "timestamp": iso_from_ns(end_ns),
        "result_payload": {"outputs": {}, "token_usage": None, "error": error},
    }


def params_at_end(started: dict[str, Any], ended: dict[str, Any]) -> dict[str, Any]:
    """Of a live span, the payload fields that changed or appeared after its start (attributes set later, events,
    usage, error): they go with its finish, under `result_payload.params_at_end`. Status and ids are left out."""
    late: dict[str, Any] = {}
    for key, value in ended.items():
        if key in _SAME_AT_END or (key in started and started[key] == value):
            continue
        before = started.get(key)
        if isinstance(value, dict) and isinstance(before, dict):
            value = {k: v for k, v in value.items() if k not in before or before[k] != v}  # only what changed
        late[key] = value
    return late


_SAME_AT_END = frozenset({"span_id", "trace_id", "parent_span_id", "status"})


def span_create_key(span_id: str, *, orphan: bool, placeholder: bool, live: bool = False) -> str:
    # Orphaning changes the body, so it gets its own key; the id stays, and "already exists" is success.
    variant = ("live" if live else "") + ("orphan" if orphan else "") + ("placeholder" if placeholder else "")
    return ids.idempotency_key_for_id(BULK_CREATE_SPAN, span_id, variant)


def orphan_item(body: dict[str, Any]) -> dict[str, Any]:
    """A span-create wire item (as read back from the spool) sent again without its parent link, exactly as the
    planner would have built it had it orphaned the span itself: same payload marking, same idempotency key."""
    details = {key: value for key, value in body["details"].items() if key != "parent_span_id"}
    payload = orphan_payload(details.get("payload") or {})
    details["payload"] = payload
    placeholder = bool(payload["metadata"].get("prefactor.too_large"))
    key = span_create_key(details["id"], orphan=True, placeholder=placeholder)
    return {**body, "idempotency_key": key, "details": details}
