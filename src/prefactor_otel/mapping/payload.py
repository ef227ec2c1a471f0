"""ReadableSpan -> SpanRecord: the Prefactor payloads of one span. Pure functions, no I/O, no state.

The payload follows the envelope other Prefactor tools read: span_id, trace_id,
parent_span_id, name, kind, status, inputs, metadata, token_usage, error, events, links. The result payload
carries outputs, token_usage and error. A span whose parent is remote (another process's span, W3C traceparent)
says so in `metadata["otel.parent.is_remote"]`; its `trace_id` and `parent_span_id` name the span it continues.

Redaction comes first and covers every string of the span that is sent: the span name, attributes, event names and
attributes, link attributes, status description (exception messages and stacktraces are event attributes), the
instrumentation scope, and the Resource attributes copied into metadata. Nothing after step 1 reads the raw span
for content. Called from the exporting thread (and the gateway's workers); no shared state but bounded caches, plain
dicts read and filled without a lock (a race only repeats a computation): redaction's, the classifier's, the Resource
metadata's, and here the origins (scope + Resource -> metadata, by identity; the last one answered is tried first,
one slot replaced whole). mapping/README.md lists them.

Spans of the SDK's own classes are read through the fields their properties return (`_read_fields`: 1.7 -> 0.4 us a
span), their Status's and attribute dict's too, after a probe span at import showed that those fields hold what the
properties return; any other span class, or an SDK that fails the probe, is read through the public properties
(`_read_properties`). The two give the same record (tests/test_mapping_span_read.py, test_mapping_encoded.py).

`map_span(..., encoded=True)` (the exporter's call) writes the payloads as JSON as it maps them: the bytes
`values.encode_json` writes of the dicts `map_span` returns otherwise (tests/test_mapping_encoded.py compares them on
every kind of span), one encoder call each, and a plain span's result payload the one shared encoded object
(docs/wire.md, "Payloads encoded while mapping").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import msgspec
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk import trace as sdk_trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace import Span as SdkSpan
from opentelemetry.sdk.util import BoundedList
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, StatusCode, TraceFlags
from opentelemetry.trace.status import Status as SdkStatus

from prefactor_otel.mapping import conventions
from prefactor_otel.mapping import typed as typed_mod
from prefactor_otel.mapping.limits import MAX_BYTES_PER_CHAR, truncate_tree
from prefactor_otel.mapping.options import DEFAULT_OPTIONS, MappingOptions
from prefactor_otel.mapping.redaction import Redactor
from prefactor_otel.mapping.resource import resource_metadata
from prefactor_otel.mapping.values import (
    NO_RESULT,
    ORJSON_DUMPS,
    RawJson,
    attributes_dict,
    hex_span_id,
    hex_trace_id,
    iso_from_ns,
    json_safe,
    plain_attributes,
    to_json,
)

Status = Literal["active", "complete", "failed"]


class SpanRecord(msgspec.Struct, gc=False):
    """Everything the planner needs about one OTel span, already mapped: an ended span, or (status "active") a span
    mapped at its start to be created live (its end time is then its start time, its result payload empty).

    A msgspec Struct without garbage-collector support (`gc=False`): the planner keeps each record until its span
    is delivered, and as a container the collector counts (a dataclass) a batch of them in flight brought young
    collections, and every hundredth a full one of the host's heap (docs/wire.md, "Containers in flight"). Mutable
    like the dataclass it was (`parent_is_remote` is set by the planner), built faster, read as fast. Its values are
    ids, texts, payloads (bytes or, unencoded, a fresh dict) and the Resource's shared attributes: none refers back
    to a record, so no cycle runs through one (what `gc=False` asks)."""

    trace_id: int
    span_id: int
    parent_span_id: int | None
    parent_is_remote: bool
    name: str
    schema_name: str
    status: Status
    start_time_ns: int
    end_time_ns: int
    payload: dict[str, Any] | RawJson  # RawJson once the exporter has encoded it
    result_payload: dict[str, Any] | RawJson
    scope: str | None
    resource: Mapping[str, object]  # the Resource's attributes (shared, not copied)
    convention: str | None = None  # the GenAI convention that typed or recognised the span, if any

    @property
    def is_local_root(self) -> bool:
        return self.parent_span_id is None or self.parent_is_remote

    @property
    def started_at(self) -> str:
        return iso_from_ns(self.start_time_ns) or ""

    @property
    def finished_at(self) -> str:
        return iso_from_ns(self.end_time_ns) or ""


class MappingError(ValueError):
    """A span cannot be mapped (e.g. it has no context). The exporter counts and logs it."""


_EXCEPTION_EVENT = "exception"
# By the member's id: an Enum's hash is a Python call (hash of its name), an int's is not. The members live as long
# as the module, so their ids are never reused.
_KIND_NAMES = {id(kind): kind.name.lower() for kind in SpanKind}
_ERROR = StatusCode.ERROR
_NONE_DROPPED = (0, 0, 0)  # nothing dropped: attributes, events, links
_EMPTY_OBJECT: RawJson = b"{}"  # the encoded result payload of a started span
# Attribute values that are JSON as they are (floats are not: NaN and infinities go through json_safe).
_JSON_SCALARS = frozenset({str, int, bool, type(None)})
_INFINITY = float("inf")  # a float strictly between the infinities is finite and not NaN: JSON as it is


def _error_type_attribute(value: object) -> str | None:
    # `error.type` is the semconv's error class; one instrumentation writes it as "<class 'openai.X'>".
    if not isinstance(value, str) or not value:
        return None
    if value.startswith("<class '") and value.endswith("'>"):
        return value[8:-2]
    return value


def _error(
    events: list[tuple[str, Mapping[str, object]]], description: str | None, attributes: Mapping[str, object]
) -> dict[str, Any]:
    for name, attrs in events:
        if name == _EXCEPTION_EVENT:
            return {
                "error_type": str(attrs.get("exception.type") or "Exception"),
                "message": json_safe(attrs.get("exception.message")),
                "stacktrace": json_safe(attrs.get("exception.stacktrace")),
            }
    error_type = _error_type_attribute(attributes.get("error.type")) or "error"
    return {"error_type": error_type, "message": description, "stacktrace": None}


def _redacted_events(
    span_events: Sequence[Event], redactor: Redactor | None, log: list[dict[str, Any]]
) -> list[tuple[str, Mapping[str, object]]]:
    out: list[tuple[str, Mapping[str, object]]] = []
    for index, event in enumerate(span_events):
        attrs: Mapping[str, object] = event.attributes or {}
        name = event.name
        if redactor is not None:
            name = redactor.redact_label(name, f"events[{index}].name", log)
            if attrs:
                attrs = redactor.redact_attributes(attrs, f"events[{index}].attributes", log)
        out.append((name, attrs))
    return out


def _links(span_links: Sequence[Link], redactor: Redactor | None, log: list[dict[str, Any]]) -> list[dict[str, Any]]:
    links = []
    for index, link in enumerate(span_links):
        attrs: Mapping[str, object] | None = link.attributes
        if redactor is not None and attrs:
            attrs = redactor.redact_attributes(attrs, f"links[{index}].attributes", log)
        links.append(
            {
                "trace_id": hex_trace_id(link.context.trace_id),
                "span_id": hex_span_id(link.context.span_id),
                "attributes": attributes_dict(attrs),
            }
        )
    return links


def _longest_string(attributes: Mapping[str, object]) -> int:
    longest = 0
    for value in attributes.values():
        if isinstance(value, str):
            if len(value) > longest:
                longest = len(value)
        elif isinstance(value, (list, tuple)):
            for item in value:
                if isinstance(item, str) and len(item) > longest:
                    longest = len(item)
    return longest


def _limit(section: dict[str, Any], limit: int, longest: int, name: str, log: list[dict[str, Any]]) -> dict[str, Any]:
    # Parsed strings are never longer than the raw attribute strings they come from, so when even the longest raw
    # string fits (at 4 UTF-8 bytes per character), the walk is skipped: the common case in the hot path.
    if not limit or not section or longest * MAX_BYTES_PER_CHAR <= limit:
        return section
    limited: dict[str, Any] = truncate_tree(section, limit, name, log)  # a dict in, a dict out
    return limited


def _redact_section_keys(redactor: Redactor, section: dict[str, Any], name: str, log: list[dict[str, Any]]) -> None:
    for key, value in section.items():
        value_type = type(value)
        if value_type in _JSON_SCALARS or value_type is float:
            continue  # a section's text and numbers: value-scanned as raw attributes, no keys inside
        if key == "messages" and isinstance(value, list):
            # Message text was value-scanned; only tool-call arguments and extra parts can hold keyed secrets.
            # Most messages have neither: told by two key tests, no loop over the field names.
            for index, message in enumerate(value):
                if isinstance(message, dict) and ("tool_calls" in message or "parts" in message):
                    if "tool_calls" in message:
                        redactor.redact_keys_in(message["tool_calls"], f"{name}.messages[{index}].tool_calls", log)
                    if "parts" in message:
                        redactor.redact_keys_in(message["parts"], f"{name}.messages[{index}].parts", log)
        elif value_type is dict or value_type is list or isinstance(value, (dict, list)):
            redactor.redact_keys_in(value, f"{name}.{key}", log)


def _dedupe(log: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per (path, rule), counts summed: a JSON value with many secrets reads as one line."""
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for entry in log:
        key = (entry["path"], entry["rule"])
        if key in merged:
            merged[key]["count"] = merged[key].get("count", 1) + entry.get("count", 1)
        else:
            merged[key] = dict(entry)
    return list(merged.values())


def _typed(
    ctx: typed_mod.Context,
    classification: conventions.Classification,
    span: ReadableSpan,
    attributes: Mapping[str, object],
    redactor: Redactor | None,
    redactions: list[dict[str, Any]],
) -> tuple[typed_mod.Typed, dict[str, Any] | None]:
    raw_operation = attributes.get("gen_ai.operation.name")
    if isinstance(raw_operation, str) and raw_operation.strip().lower() == classification.operation:
        ctx.consume("gen_ai.operation.name")  # now `operation`; a value the span type overrode stays
    typed = typed_mod.build(ctx, classification, span)
    if redactor is not None and (ctx.event_records or redactor.needs_key_walk(attributes)):
        # Key rules inside parsed JSON (`{"password": ...}` in tool arguments, request bodies); skipped when
        # redaction's pass over the attributes found nothing a key rule could mask there (events: always walked).
        _redact_section_keys(redactor, typed.inputs, "inputs", redactions)
        _redact_section_keys(redactor, typed.outputs, "outputs", redactions)
        if "params" in typed.fields:
            redactor.redact_keys_in(typed.fields["params"], "params", redactions)
    return typed, typed_mod.token_usage(ctx, classification.schema_name)


def map_span(
    span: ReadableSpan, options: MappingOptions | None = None, *, started: bool = False, encoded: bool = False
) -> SpanRecord:
    """Map one ended span. Pure: the same span and options always give the same record; never raises for
    content (a failing redaction callback masks the value), only MappingError for a span without context/end.

    started: map a span that has only started (a live span): what it holds so far, status "active", no result.
    encoded: the record's payloads as their JSON (RawJson), written as they are mapped: the bytes `encode_json`
    writes of the dicts, without building what a plain span's result needs (what the exporter sends). A payload the
    encoder refuses stays a dict (the send path reports it), and so does the result payload after it.
    """
    read = _read_fields(span) if type(span) in SDK_SPAN_CLASSES else None
    if read is None:
        read = _read_properties(span)
    (
        name,
        trace_id,
        span_id,
        parent_id,
        parent_is_remote,
        start_ns,
        end_ns,
        attributes,
        span_events,
        span_links,
        status_code,
        resource,
        scope,
        span_kind,
        dropped,
        description,
    ) = read
    if started:
        end_ns = start_ns
    if start_ns is None or end_ns is None:
        raise MappingError("the span has not ended")
    opts = options if options is not None else DEFAULT_OPTIONS

    # 1. Redaction first, on our own copy of the raw attribute values: nothing after this sees a secret.
    redactions: list[dict[str, Any]] = []
    redactor = opts.redactor if opts.redactor.active else None
    longest: int | None = None  # the longest attribute string, once known (the length limits ask)
    if redactor is not None:
        name = redactor.redact_label(name, "name", redactions)
        longest = redactor.redact_owned(attributes, "attributes", redactions)
    events = _redacted_events(span_events, redactor, redactions) if span_events else []
    links = _links(span_links, redactor, redactions) if span_links else []
    if redactor is not None and description:
        description = redactor.redact_text(description, "status.description", redactions)

    # The envelope every span has, whatever its type (nothing below changes what it reads).
    failed = status_code is _ERROR and not started
    status: Status = "active" if started else "failed" if failed else "complete"
    error = _error(events, description, attributes) if failed else None
    kind = _KIND_NAMES.get(id(span_kind)) or (span_kind.name.lower() if span_kind is not None else "internal")
    # The ids as hex (hex_span_id / hex_trace_id, inline): a valid SpanContext's ids fit their width, and
    # to_bytes().hex() costs half a format spec.
    span_hex = span_id.to_bytes(8, "big").hex()
    trace_hex = trace_id.to_bytes(16, "big").hex()
    parent_hex = parent_id.to_bytes(8, "big").hex() if parent_id is not None else None
    event_list = (
        [
            {"name": name, "timestamp": iso_from_ns(event.timestamp), "attributes": attributes_dict(attrs)}
            for (name, attrs), event in zip(events, span_events, strict=True)
        ]
        if events
        else []
    )
    end_ns = end_ns if end_ns >= start_ns else start_ns

    # 2. Classification and the typed fields of the span's type.
    classification = conventions.classify(attributes, name)
    convention = classification.convention
    if convention is None:
        # A plain span (most spans of most traces), straight to its record: no typed fields, its attributes stay in
        # metadata as they are. (Usage attributes are GenAI attributes, so a span carrying any has a convention.)
        # Its metadata is its attribute dict itself (this span's own copy, redacted): only values that are not JSON
        # as they are get replaced, in place, where a fresh dict would copy every item.
        for key, value in attributes.items():
            value_type = type(value)
            if value_type not in _JSON_SCALARS and not (value_type is float and -_INFINITY < value < _INFINITY):  # type: ignore[operator]
                attributes[key] = json_safe(value)
        scope_label, origin, origin_redactions, resource_attributes = _origin(scope, resource, redactor)
        attributes.update(origin)
        if origin_redactions:
            redactions.extend(origin_redactions)
        if redactions:
            attributes["prefactor.redactions"] = _dedupe(redactions)
        if dropped != _NONE_DROPPED:
            attributes["otel.dropped"] = {"attributes": dropped[0], "events": dropped[1], "links": dropped[2]}
        if parent_is_remote:
            attributes["otel.parent.is_remote"] = True  # see below
        payload = {
            "span_id": span_hex,
            "trace_id": trace_hex,
            "parent_span_id": parent_hex,
            "name": name,
            "kind": kind,
            "status": status,
            "inputs": {},
            "metadata": attributes,
            "token_usage": None,
            "error": error,
            "events": event_list,
            "links": links,
        }
        if not encoded:
            plain_result: dict[str, Any] | RawJson = (
                {} if started else {"outputs": {}, "token_usage": None, "error": error}
            )
            return SpanRecord(  # positional: a keyword call costs more, once per span
                trace_id, span_id, parent_id, parent_is_remote, name, classification.schema_name, status, start_ns,
                end_ns, payload, plain_result, scope_label, resource_attributes, None,
            )  # fmt: skip
        payload_json = _as_json(payload)
        if type(payload_json) is not bytes:
            plain_result = {} if started else {"outputs": {}, "token_usage": None, "error": error}
        elif started:
            plain_result = _EMPTY_OBJECT
        elif error is None:
            plain_result = NO_RESULT  # `encode_json`'s bytes of {"outputs": {}, "token_usage": None, "error": None}
        else:
            plain_result = _as_json({"outputs": {}, "token_usage": None, "error": error})
        return SpanRecord(
            trace_id, span_id, parent_id, parent_is_remote, name, classification.schema_name, status, start_ns,
            end_ns, payload_json, plain_result, scope_label, resource_attributes, None,
        )  # fmt: skip

    ctx = typed_mod.Context(attributes, span_events, name, events)
    mapping_error = None
    try:
        typed, token_usage = _typed(ctx, classification, span, attributes, redactor, redactions)
    except Exception as exc:
        # A shape no instrumentation we know produces: keep the span, generic, with every attribute in
        # metadata (already redacted), rather than lose it in the exporter.
        ctx = typed_mod.Context(attributes, span_events, name, events)
        typed, token_usage = typed_mod.Typed(), None
        mapping_error = type(exc).__name__
    fields, inputs, outputs, result = typed.fields, typed.inputs, typed.outputs, typed.result

    # 3. Content controls: capture switches, then length limits.
    omitted = []
    if not opts.capture_inputs and inputs:
        inputs, omitted = {}, ["inputs"]
    if not opts.capture_outputs and outputs:
        outputs = {}
        omitted.append("outputs")
    truncated: list[dict[str, Any]] = []
    if (opts.max_input_length and inputs) or (opts.max_output_length and outputs):
        if longest is None:
            longest = _longest_string(attributes)
        for _, event_attributes in events:  # builders read messages from events too (agent and tool spans)
            longest = max(longest, _longest_string(event_attributes))
        inputs = _limit(inputs, opts.max_input_length, longest, "inputs", truncated)
        outputs = _limit(outputs, opts.max_output_length, longest, "outputs", truncated)

    # 4. Metadata: every attribute no field consumed, then what the mapping itself has to say.
    consumed = ctx.consumed
    metadata: dict[str, Any] = {}
    for key, value in attributes.items():
        if key not in consumed:
            value_type = type(value)
            if value_type in _JSON_SCALARS or (value_type is float and -_INFINITY < value < _INFINITY):  # type: ignore[operator]
                metadata[key] = value
            else:
                metadata[key] = json_safe(value)
    scope_label, origin, origin_redactions, resource_attributes = _origin(scope, resource, redactor)
    metadata.update(origin)
    if origin_redactions:
        redactions.extend(origin_redactions)
    if convention:
        metadata["convention"] = convention
    if classification.decided_by:
        metadata["prefactor.classified_by"] = classification.decided_by
    if redactions:
        metadata["prefactor.redactions"] = _dedupe(redactions)
    if truncated:
        metadata["prefactor.truncated"] = truncated
    if omitted:
        metadata["prefactor.content_omitted"] = omitted
    if mapping_error:
        metadata["prefactor.mapping_error"] = mapping_error
    if ctx.invalid_counts:
        metadata["prefactor.invalid_counts"] = ctx.invalid_counts
    if dropped != _NONE_DROPPED:
        metadata["otel.dropped"] = {"attributes": dropped[0], "events": dropped[1], "links": dropped[2]}
    if parent_is_remote:
        # Its parent is another process's span (W3C traceparent): this span's run is that process's part of the
        # trace, continued here. `parent_span_id` and `trace_id` above name the span it continues
        # (docs/cross-process.md).
        metadata["otel.parent.is_remote"] = True

    payload = {
        "span_id": span_hex,
        "trace_id": trace_hex,
        "parent_span_id": parent_hex,
        "name": name,
        "kind": kind,
        "status": status,
        **fields,
        "inputs": inputs,
        "metadata": metadata,
        "token_usage": token_usage,
        "error": error,
        "events": event_list,
        "links": links,
    }
    result_payload: dict[str, Any]
    if started:
        result_payload = {}
    elif result:
        result_payload = {"outputs": outputs, **result, "token_usage": token_usage, "error": error}
    else:
        result_payload = {"outputs": outputs, "token_usage": token_usage, "error": error}
    payload_out: dict[str, Any] | RawJson = payload
    result_out: dict[str, Any] | RawJson = result_payload
    if encoded:
        payload_out = _as_json(payload)
        if type(payload_out) is bytes:
            result_out = _as_json(result_payload)
    return SpanRecord(  # positional: a keyword call costs more, once per span
        trace_id, span_id, parent_id, parent_is_remote, name, classification.schema_name, status, start_ns, end_ns,
        payload_out, result_out, scope_label, resource_attributes, convention,
    )  # fmt: skip


def _as_json(value: dict[str, Any]) -> dict[str, Any] | RawJson:
    """`encode_json`'s bytes of a payload, or the payload itself where the encoder refuses it (the exporter then
    keeps it a dict, and the send path reports what cannot be encoded)."""
    if ORJSON_DUMPS is not None:
        try:
            return ORJSON_DUMPS(value)
        except TypeError:  # orjson refuses it: pydantic-core, then the stdlib, as `to_json` does
            pass
    try:
        return to_json(value)
    except (TypeError, ValueError):
        return value


_Read = tuple[
    str,  # name
    int,  # trace id
    int,  # span id
    "int | None",  # parent span id (a valid parent's)
    bool,  # whether that parent is remote
    "int | None",  # start time
    "int | None",  # end time
    dict[str, object],  # a copy of the attributes, ours to redact in place
    Sequence[Event],
    Sequence[Link],
    StatusCode,
    "Resource | None",
    "InstrumentationScope | None",
    SpanKind,
    tuple[int, int, int],  # dropped attributes, events, links
    "str | None",  # the status description
]


def _read_properties(span: ReadableSpan) -> _Read:
    """What map_span reads of a span, through its public properties (each a Python call, read once): any span."""
    context = span.context
    if context is None or not context.is_valid:
        raise MappingError("the span has no valid context")  # no name: it is unredacted here, and may hold a secret
    parent = span.parent
    parent_id = parent.span_id if parent is not None and parent.is_valid else None
    # `span.events` / `span.links` copy the SDK's list under its lock on each read: its own field is only asked,
    # once (its len() is a Python call), whether it is empty (most spans have neither); an SDK without it gets the
    # public property.
    span_events: Sequence[Event] = getattr(span, "_events", None)  # type: ignore[assignment]
    span_events = span.events if span_events is None or span_events else ()
    span_links: Sequence[Link] = getattr(span, "_links", None)  # type: ignore[assignment]
    span_links = span.links if span_links is None or span_links else ()
    status = span.status
    return (
        span.name,
        context.trace_id,
        context.span_id,
        parent_id,
        bool(parent is not None and parent_id is not None and parent.is_remote),
        span.start_time,
        span.end_time,
        plain_attributes(span.attributes),
        span_events,
        span_links,
        status.status_code,
        span.resource,
        span.instrumentation_scope,
        span.kind,
        (span.dropped_attributes, span.dropped_events, span.dropped_links),
        status.description,
    )


def _read_fields(span: Any) -> _Read | None:
    """`_read_properties` of a span of the SDK's own classes, through the fields their properties return (checked
    at import by `sdk_span_classes`), and its SpanContexts as the 6-tuples they are: 1.7 -> 0.4 us a span. None
    when a context is not a SpanContext (then the properties are read)."""
    context = span._context
    parent = span._parent
    if type(context) is not SpanContext or (parent is not None and type(parent) is not SpanContext):
        return None
    trace_id, span_id, _, _, _, valid = context
    if not valid:
        raise MappingError("the span has no valid context")
    parent_id: int | None = None
    remote = False
    if parent is not None:
        _, parent_span_id, parent_remote, _, _, parent_valid = parent
        if parent_valid:
            parent_id, remote = parent_span_id, bool(parent_remote)
    raw_attributes = span._attributes
    if type(raw_attributes) is BoundedAttributes:
        # What its copy() returns (a copy of its dict), without the Python call.
        attributes: dict[str, object] = raw_attributes._dict.copy()  # type: ignore[assignment]
        dropped_attributes = raw_attributes.dropped
    else:
        attributes = plain_attributes(raw_attributes)
        dropped_attributes = raw_attributes.dropped if isinstance(raw_attributes, BoundedAttributes) else 0
    raw_events, raw_links = span._events, span._links
    if type(raw_events) is BoundedList and type(raw_links) is BoundedList:
        # Emptiness by the deque each holds (its len() in C; the list's own __len__ is a Python call), the drop
        # counts as fields; a list with items is copied as `events` / `links` copy it (tuple(_events), under its
        # lock: a live span's events may still grow on another thread).
        span_events: Sequence[Event] = tuple(raw_events) if raw_events._dq else ()  # type: ignore[attr-defined]
        span_links: Sequence[Link] = tuple(raw_links) if raw_links._dq else ()  # type: ignore[attr-defined]
        dropped = (dropped_attributes, raw_events.dropped, raw_links.dropped)
    else:
        span_events = tuple(raw_events) if raw_events else ()  # `events` is tuple(_events): a copy under its lock
        span_links = tuple(raw_links) if raw_links else ()
        dropped = (
            dropped_attributes,
            raw_events.dropped if isinstance(raw_events, BoundedList) else 0,
            raw_links.dropped if isinstance(raw_links, BoundedList) else 0,
        )
    status = span._status
    if type(status) is SdkStatus:
        status_code, description = status._status_code, status._description  # what its properties return
    else:
        status_code, description = status.status_code, status.description
    return (
        span._name,
        trace_id,
        span_id,
        parent_id,
        remote,
        span._start_time,
        span._end_time,
        attributes,
        span_events,
        span_links,
        status_code,
        span._resource,
        span._instrumentation_scope,
        span._kind,
        dropped,
        description,
    )


def sdk_span_classes() -> frozenset[type]:
    """The SDK span classes whose fields `_read_fields` (and pipeline/starts.py's `read_start`) may read: those that
    inherit ReadableSpan's properties unchanged, if a probe span confirms that the fields hold what those properties
    return (an SDK that computes a property differently, or names its fields otherwise, gets no class: every span is
    then read through the properties)."""
    try:
        context = SpanContext(0x1F, 0x2F, False, TraceFlags(TraceFlags.SAMPLED))
        parent = SpanContext(0x1F, 0x3F, True, TraceFlags(TraceFlags.SAMPLED))
        link = Link(SpanContext(0x4F, 0x5F, False), {"l": 1})
        event = Event("e", {"a": 1}, timestamp=7)
        scope = InstrumentationScope("probe-scope", "1.0")
        resource = Resource.create({"service.name": "probe"})
        status = SdkStatus(StatusCode.ERROR, "probe")
        attributes, events = BoundedAttributes(4, {"k": "v"}), BoundedList.from_seq(4, [event])
        attributes.dropped, events.dropped = 1, 2  # as if the limits had dropped some (quietly: no warning logged)
        probe = ReadableSpan(
            name="probe",
            context=context,
            parent=parent,
            resource=resource,
            attributes=attributes,
            events=events,
            links=BoundedList.from_seq(2, [link]),
            kind=SpanKind.CLIENT,
            status=status,
            start_time=5,
            end_time=6,
            instrumentation_scope=scope,
        )
        read = _read_fields(probe)
        holds = read is not None and read == _read_properties(probe)
        holds = holds and read is not None and read[:7] == ("probe", 0x1F, 0x2F, 0x3F, True, 5, 6)
        holds = holds and read is not None and read[7] == {"k": "v"} and read[14] == (1, 2, 0)
        holds = holds and read is not None and read[10] is StatusCode.ERROR and read[15] == "probe"
        # SpanContext's tuple layout, which both readers unpack: (trace, span, remote, flags, state, valid).
        holds = holds and len(context) == 6 and tuple(context)[:4] == (0x1F, 0x2F, False, TraceFlags.SAMPLED)
        holds = holds and tuple(context)[5] is True
    except Exception:  # another SDK layout: the public properties only
        return frozenset()
    if not holds:
        return frozenset()
    properties = (
        "context", "parent", "name", "start_time", "end_time", "attributes", "events", "links", "status",
        "resource", "instrumentation_scope", "kind", "dropped_attributes", "dropped_events", "dropped_links",
    )  # fmt: skip
    classes = [ReadableSpan, SdkSpan, getattr(sdk_trace, "_Span", SdkSpan)]
    return frozenset(
        cls for cls in classes if all(getattr(cls, name, None) is getattr(ReadableSpan, name) for name in properties)
    )


def _origin(
    scope: InstrumentationScope | None,
    resource: Resource | None,
    redactor: Redactor | None,
) -> _Origin:
    """`(scope label, metadata, redactions, Resource attributes)` of where a span comes from: its instrumentation
    scope (`otel.scope.name` / `.version`, redacted) then the selected Resource attributes (resource.py); the last,
    the Resource's own attribute mapping (immutable, shared: the record's `resource`), read once, not per span.

    Every span of one tracer shares its scope and Resource (both immutable), so the result is computed once per
    (scope, Resource, Redactor) and shared: callers copy the metadata into their own dict and never edit the
    redaction entries (`_dedupe` copies them). With a redaction callback the scope is redacted on every span as
    before (the callback sees every string it always saw); the Resource part is cached either way.
    """
    if redactor is not None and not redactor.caches_texts:
        scope_label, metadata, log = _scope_metadata(scope, redactor)
        resource_meta, resource_log = resource_metadata(resource, redactor)
        resource_attributes = resource.attributes if resource is not None else {}
        return scope_label, {**metadata, **resource_meta}, [*log, *resource_log], resource_attributes
    last = _LAST_ORIGIN[0]  # consecutive spans mostly share their tracer: no key to build, no lookup
    if last[0] is scope and last[1] is resource and last[2] is redactor:
        return last[3]
    key = (id(scope), id(resource), id(redactor))
    cached = _ORIGINS.get(key)
    if cached is None or cached[0] is not scope or cached[1] is not resource or cached[2] is not redactor:
        scope_label, metadata, log = _scope_metadata(scope, redactor)
        resource_meta, resource_log = resource_metadata(resource, redactor)
        resource_attributes = resource.attributes if resource is not None else {}
        origin = (scope_label, {**metadata, **resource_meta}, [*log, *resource_log], resource_attributes)
        if len(_ORIGINS) >= _ORIGIN_CACHE_SIZE:
            _ORIGINS.clear()  # more scopes than any process has: start over rather than grow
        # Holding the scope, Resource and Redactor keeps their ids from being reused while the entry lives.
        cached = _ORIGINS[key] = (scope, resource, redactor, origin)
    _LAST_ORIGIN[0] = cached
    return cached[3]


def _scope_metadata(
    scope: InstrumentationScope | None, redactor: Redactor | None
) -> tuple[str | None, dict[str, Any], list[dict[str, Any]]]:
    metadata: dict[str, Any] = {}
    log: list[dict[str, Any]] = []
    if scope is None or not scope.name:
        return None, metadata, log
    scope_name, scope_version = scope.name, scope.version
    if redactor is not None:
        scope_name = redactor.redact_label(scope_name, "otel.scope.name", log)
        if scope_version:
            scope_version = redactor.redact_label(scope_version, "otel.scope.version", log)
    metadata["otel.scope.name"] = scope_name
    if scope_version:
        metadata["otel.scope.version"] = scope_version
    return (f"{scope_name}@{scope_version}" if scope_version else scope_name), metadata, log


_ORIGIN_CACHE_SIZE = 256
_Origin = tuple[str | None, dict[str, Any], list[dict[str, Any]], Mapping[str, object]]
# The last entry `_origin` answered with, tried first (one slot: a list item replaced whole, so a thread reads either
# the old entry or the new one; a race only costs a dict lookup). Its placeholder matches no call.
_LAST_ORIGIN: list[tuple[Any, Any, Any, _Origin]] = [(object(), object(), object(), (None, {}, [], {}))]
_ORIGINS: dict[
    tuple[int, int, int],
    tuple[
        InstrumentationScope | None,
        Resource | None,
        Redactor | None,
        _Origin,
    ],
] = {}

# Span classes read through their fields (`_read_fields`); checked once, at import.
SDK_SPAN_CLASSES = sdk_span_classes()
