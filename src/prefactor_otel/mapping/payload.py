"""ReadableSpan -> SpanRecord: the Prefactor payloads of one span. Pure functions, no I/O, no state.

The payload follows the envelope other Prefactor tools read (architecture.md): span_id, trace_id,
parent_span_id, name, kind, status, inputs, metadata, token_usage, error, events, links. The result payload
carries outputs, token_usage and error.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import StatusCode

from prefactor_otel.mapping import conventions
from prefactor_otel.mapping.resource import selected_resource_attributes
from prefactor_otel.mapping.values import (
    attributes_dict,
    hex_span_id,
    hex_trace_id,
    iso_from_ns,
    json_safe,
    parse_json_maybe,
)

Status = Literal["complete", "failed"]


@dataclass(slots=True)
class SpanRecord:
    """Everything the planner needs about one finished OTel span, already mapped."""

    trace_id: int
    span_id: int
    parent_span_id: int | None
    parent_is_remote: bool
    name: str
    schema_name: str
    status: Status
    start_time_ns: int
    end_time_ns: int
    payload: dict[str, Any]
    result_payload: dict[str, Any]
    scope: str | None
    resource: Mapping[str, object]  # the Resource's attributes (shared, not copied)

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


# attribute -> (section, field) for the generic GenAI mapping. Consumed attributes leave `metadata`.
_INPUT_FIELDS = {
    "gen_ai.request.model": "model",
    "gen_ai.provider.name": "provider",
    "gen_ai.system": "provider",
    "gen_ai.input.messages": "messages",
    "gen_ai.system_instructions": "system_instructions",
    "gen_ai.tool.name": "tool_name",
    "gen_ai.tool.call.id": "tool_call_id",
    "gen_ai.tool.call.arguments": "arguments",
    "gen_ai.agent.name": "agent_name",
    "gen_ai.agent.id": "agent_id",
    "gen_ai.conversation.id": "conversation_id",
}
_OUTPUT_FIELDS = {
    "gen_ai.response.model": "model",
    "gen_ai.output.messages": "messages",
    "gen_ai.response.finish_reasons": "finish_reasons",
    "gen_ai.response.id": "response_id",
    "gen_ai.tool.call.result": "result",
}
_USAGE_INPUT = ("gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens")
_USAGE_OUTPUT = ("gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens")
_EXCEPTION_EVENT = "exception"


def _token_usage(attributes: Mapping[str, object], consumed: set[str]) -> dict[str, int] | None:
    def first_int(keys: tuple[str, ...]) -> int | None:
        for key in keys:
            value = attributes.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                consumed.add(key)
                return int(value)
        return None

    prompt = first_int(_USAGE_INPUT)
    completion = first_int(_USAGE_OUTPUT)
    if prompt is None and completion is None:
        return None
    return {
        "prompt_tokens": prompt or 0,
        "completion_tokens": completion or 0,
        "total_tokens": (prompt or 0) + (completion or 0),
    }


def _error(span: ReadableSpan) -> dict[str, Any] | None:
    for event in span.events:
        if event.name == _EXCEPTION_EVENT:
            attrs = event.attributes or {}
            return {
                "error_type": str(attrs.get("exception.type") or "Exception"),
                "message": json_safe(attrs.get("exception.message")),
                "stacktrace": json_safe(attrs.get("exception.stacktrace")),
            }
    if span.status.status_code is StatusCode.ERROR:
        return {"error_type": "error", "message": span.status.description, "stacktrace": None}
    return None


def _events(span: ReadableSpan) -> list[dict[str, Any]]:
    return [
        {"name": event.name, "timestamp": iso_from_ns(event.timestamp), "attributes": attributes_dict(event.attributes)}
        for event in span.events
    ]


def _links(span: ReadableSpan) -> list[dict[str, Any]]:
    return [
        {
            "trace_id": hex_trace_id(link.context.trace_id),
            "span_id": hex_span_id(link.context.span_id),
            "attributes": attributes_dict(link.attributes),
        }
        for link in span.links
    ]


def map_span(span: ReadableSpan) -> SpanRecord:
    context = span.context
    if context is None or not context.is_valid:
        raise MappingError(f"span {span.name!r} has no valid context")
    if span.start_time is None or span.end_time is None:
        raise MappingError(f"span {span.name!r} has not ended")

    attributes: Mapping[str, object] = span.attributes or {}
    classification = conventions.classify(attributes)
    consumed: set[str] = {"gen_ai.operation.name"} if classification.convention else set()

    inputs: dict[str, Any] = {}
    outputs: dict[str, Any] = {}
    if classification.convention:
        for key, field in _INPUT_FIELDS.items():
            if key in attributes and field not in inputs:
                inputs[field] = parse_json_maybe(attributes[key])
                consumed.add(key)
        for key, field in _OUTPUT_FIELDS.items():
            if key in attributes and field not in outputs:
                outputs[field] = parse_json_maybe(attributes[key])
                consumed.add(key)
        if classification.operation:
            inputs["operation"] = classification.operation
    token_usage = _token_usage(attributes, consumed) if classification.convention else None

    metadata = {key: json_safe(value) for key, value in attributes.items() if key not in consumed}
    scope = span.instrumentation_scope
    scope_label = None
    if scope is not None and scope.name:
        metadata["otel.scope.name"] = scope.name
        if scope.version:
            metadata["otel.scope.version"] = scope.version
        scope_label = f"{scope.name}@{scope.version}" if scope.version else scope.name
    resource_attrs = span.resource.attributes if span.resource is not None else {}
    for key, value in selected_resource_attributes(resource_attrs).items():
        metadata[f"resource.{key}"] = json_safe(value)
    if classification.convention:
        metadata["convention"] = classification.convention
    if span.dropped_attributes or span.dropped_events or span.dropped_links:
        metadata["otel.dropped"] = {
            "attributes": span.dropped_attributes,
            "events": span.dropped_events,
            "links": span.dropped_links,
        }

    failed = span.status.status_code is StatusCode.ERROR
    status: Status = "failed" if failed else "complete"
    error = _error(span) if failed else None
    parent = span.parent
    parent_id = parent.span_id if parent is not None and parent.is_valid else None
    kind = span.kind.name.lower() if span.kind is not None else "internal"

    payload: dict[str, Any] = {
        "span_id": hex_span_id(context.span_id),
        "trace_id": hex_trace_id(context.trace_id),
        "parent_span_id": hex_span_id(parent_id) if parent_id is not None else None,
        "name": span.name,
        "kind": kind,
        "status": status,
        "inputs": inputs,
        "metadata": metadata,
        "token_usage": token_usage,
        "error": error,
        "events": _events(span),
        "links": _links(span),
    }
    result_payload: dict[str, Any] = {"outputs": outputs, "token_usage": token_usage, "error": error}
    return SpanRecord(
        trace_id=context.trace_id,
        span_id=context.span_id,
        parent_span_id=parent_id,
        parent_is_remote=bool(parent is not None and parent_id is not None and parent.is_remote),
        name=span.name,
        schema_name=classification.schema_name,
        status=status,
        start_time_ns=span.start_time,
        end_time_ns=max(span.end_time, span.start_time),
        payload=payload,
        result_payload=result_payload,
        scope=scope_label,
        resource=resource_attrs,
    )
