"""otel:tool: a tool call. Pure functions, called from map_span on the exporting thread; no state."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pydantic_core
from opentelemetry.sdk.trace import ReadableSpan

from prefactor_otel.mapping.builders import otel
from prefactor_otel.mapping.builders.common import strip_method, unwrap_envelope
from prefactor_otel.mapping.chains import (
    CHOICE_EVENT,
    DETAILS_EVENT,
    TOOL_ARGUMENTS,
    TOOL_CALL_ID,
    TOOL_DESCRIPTION,
    TOOL_NAME,
    TOOL_NAME_SUFFIXES,
    TOOL_RESULT,
    TOOL_TYPE,
)
from prefactor_otel.mapping.context import Context, Typed
from prefactor_otel.mapping.messages import block_text
from prefactor_otel.mapping.values import parse_json_maybe


def _name_from_span(name: str) -> str | None:
    # `execute_tool get_weather` (OTel GenAI), `get_weather.tool` (Traceloop), `get_weather.__call__` (DSPy via
    # OpenInference, which writes no tool.name): a span name without one of these forms is not the tool's name.
    if name.startswith(_EXECUTE_PREFIX):
        return name[len(_EXECUTE_PREFIX) :] or None
    stripped = strip_method(name, TOOL_NAME_SUFFIXES)
    return stripped if stripped != name else None


_EXECUTE_PREFIX = "execute_tool "


def tool(ctx: Context, typed: Typed, span: ReadableSpan) -> None:
    if not ctx.event_records and ctx.layout("tool", otel.tool_layout) is not None:
        _otel_tool(ctx, typed)
        return
    typed.put(typed.fields, "tool_name", ctx.value(TOOL_NAME) or _name_from_span(ctx.name))
    typed.put(typed.fields, "tool_call_id", ctx.value(TOOL_CALL_ID))
    typed.put(typed.fields, "tool_type", ctx.value(TOOL_TYPE))
    typed.put(typed.fields, "tool_description", ctx.value(TOOL_DESCRIPTION))
    hit = ctx.first(TOOL_ARGUMENTS)
    if hit is None and "tool.parameters" in ctx.attributes:
        # OpenInference: tool.parameters is the parameter JSON schema per spec, the call arguments in some
        # processors. A schema is not arguments: leave it in metadata then.
        parsed = parse_json_maybe(ctx.attributes["tool.parameters"])
        if not (isinstance(parsed, dict) and ("properties" in parsed or parsed.get("type") == "object")):
            hit = ("tool.parameters", ctx.attributes["tool.parameters"])
            ctx.consumed.add("tool.parameters")
    if hit is not None:
        key, raw = hit
        if key == "input.value":
            ctx.consume("input.mime_type")
        arguments = unwrap_envelope(key, ctx.parse(key, raw), raw)
        if (
            key == "input.value"
            and type(arguments) is dict
            and len(arguments) == 1
            and type(arguments.get("kwargs")) is dict
        ):
            # OpenInference's DSPy tools record the bound arguments of `Tool.__call__(**kwargs)`: {"kwargs": {...}}.
            arguments = arguments["kwargs"]
        typed.put(typed.inputs, "arguments", _unwrap_tool_arguments(arguments, typed))
    hit = ctx.first(TOOL_RESULT)
    if hit is not None:
        key, raw = hit
        if key == "output.value":
            ctx.consume("output.mime_type")
        result = block_text(unwrap_envelope(key, ctx.parse(key, raw), raw))
        typed.put(typed.outputs, "result", _unwrap_tool_result(result, typed))
    if ctx.event_records and ("arguments" not in typed.inputs or "result" not in typed.outputs):
        arguments, result = _io_from_events(ctx.event_records)
        if "arguments" not in typed.inputs:
            typed.put(typed.inputs, "arguments", arguments)
        if "result" not in typed.outputs:
            typed.put(typed.outputs, "result", result)


def _otel_tool(ctx: Context, typed: Typed) -> None:
    """`tool` for a span whose names are OTel GenAI tool names and names no builder reads (builders/otel.py),
    without events: each chain has at most its first name there, read directly, in the order and with the rules of
    the general path above (no `tool.parameters`, no generic input or output value).

    A string value is read inline (`otel.first_value` and `otel.put` reduce to "a non-empty string is consumed and
    put"), and so are the common shapes of the arguments and the result: a JSON object in a string, parsed as
    `parse_json_maybe` parses it, that is no envelope (`unwrap_envelope`: no LangChain serialisation in the raw
    text), no LangChain tool payload (`_unwrap_tool_arguments`: no `input_str`) and no tool message
    (`_unwrap_tool_result`: no `output` or `role`). Anything else takes those functions, as before."""
    attributes = ctx.attributes
    consumed = ctx.consumed
    fields = typed.fields
    value = attributes.get(otel.TOOL_NAME)
    if type(value) is str and value:
        consumed.add(otel.TOOL_NAME)
        fields["tool_name"] = value
    else:
        otel.put(
            fields, "tool_name", otel.first_value(attributes, consumed, otel.TOOL_NAME) or _name_from_span(ctx.name)
        )
    otel.put_fields(fields, attributes, consumed, _TOOL_FIELDS)
    raw = attributes.get(otel.TOOL_ARGUMENTS)
    if raw is not None and raw != "":
        consumed.add(otel.TOOL_ARGUMENTS)
        arguments = _parsed_object(raw)
        if arguments is None or "input_str" in arguments:
            arguments = _unwrap_tool_arguments(unwrap_envelope(otel.TOOL_ARGUMENTS, parse_json_maybe(raw), raw), typed)
        otel.put(typed.inputs, "arguments", arguments)
    raw = attributes.get(otel.TOOL_RESULT)
    if raw is not None and raw != "":
        consumed.add(otel.TOOL_RESULT)
        result = _parsed_object(raw)
        if result is None or "output" in result or "role" in result:
            result = _unwrap_tool_result(
                block_text(unwrap_envelope(otel.TOOL_RESULT, parse_json_maybe(raw), raw)), typed
            )
        otel.put(typed.outputs, "result", result)


# The tool's string fields after its name, in the order `tool` puts them.
_TOOL_FIELDS = (
    (otel.TOOL_CALL_ID, "tool_call_id"),
    (otel.TOOL_TYPE, "tool_type"),
    (otel.TOOL_DESCRIPTION, "tool_description"),
)


def _parsed_object(raw: object) -> dict[str, Any] | None:
    """`unwrap_envelope(key, parse_json_maybe(raw), raw)` for a key that is no Traceloop envelope, when `raw` is a
    string holding a JSON object and no LangChain serialisation: that object (which `block_text` leaves as it
    is). None for anything else (the caller then takes the general reading)."""
    if type(raw) is not str or raw[:1] != "{" or '"lc": 1' in raw or '"lc":1' in raw or '"data": {' in raw:
        return None
    try:
        parsed = _from_json(raw, allow_inf_nan=False)  # `values._decode`'s first step
    except (ValueError, RecursionError):
        return None
    return parsed if type(parsed) is dict else None


_from_json = pydantic_core.from_json


def _io_from_events(records: Sequence[tuple[str, Mapping[str, object]]]) -> tuple[Any, Any]:
    """Arguments and result a tool span carries in events (Strands): the OTel GenAI details event's `tool_call` /
    `tool_call_response` parts, or the older `gen_ai.tool.message` (arguments) and `gen_ai.choice` (result)."""
    arguments: Any = None
    result: Any = None
    for name, attributes in records:
        if name == DETAILS_EVENT:
            for key in ("gen_ai.input.messages", "gen_ai.output.messages"):
                messages = parse_json_maybe(attributes.get(key))
                for message in messages if isinstance(messages, list) else ():
                    parts = message.get("parts") if isinstance(message, dict) else None
                    for part in parts if isinstance(parts, list) else ():
                        if isinstance(part, dict) and part.get("type") == "tool_call" and arguments is None:
                            arguments = parse_json_maybe(part.get("arguments"))
                        elif isinstance(part, dict) and part.get("type") == "tool_call_response" and result is None:
                            result = block_text(parse_json_maybe(part.get("response")))
        elif name == "gen_ai.tool.message" and arguments is None:
            arguments = parse_json_maybe(attributes.get("content"))
        elif name == CHOICE_EVENT and result is None:
            result = block_text(parse_json_maybe(attributes.get("message")))
    return arguments, result


def _unwrap_tool_arguments(value: Any, typed: Typed) -> Any:
    # Traceloop's LangChain tool spans put the whole callback payload in gen_ai.tool.call.arguments:
    # {"input_str": "{'city': 'Paris'}", "inputs": {...}, "kwargs": {"tool_call_id": ...}, "tags": [...]}
    if isinstance(value, dict) and "input_str" in value:
        kwargs = value.get("kwargs")
        if isinstance(kwargs, dict) and kwargs.get("tool_call_id") and "tool_call_id" not in typed.fields:
            typed.fields["tool_call_id"] = kwargs["tool_call_id"]
        inputs = value.get("inputs")
        return inputs if inputs not in (None, {}) else value.get("input_str")
    return value


def _unwrap_tool_result(value: Any, typed: Typed) -> Any:
    # LangChain ToolMessage (Traceloop {"output": <lc ToolMessage>, "kwargs": ...}; OpenInference {"type": "tool",
    # "data": {...}}), both unwrapped to a message by now: the result is its content.
    if isinstance(value, dict) and "output" in value and ("kwargs" in value or len(value) == 1):
        value = value["output"]  # LangChain.js through OpenInference: {"output": <ToolMessage>}
    if isinstance(value, dict) and value.get("role") == "tool" and "content" in value:
        if value.get("tool_call_id") and "tool_call_id" not in typed.fields:
            typed.fields["tool_call_id"] = value["tool_call_id"]
        return parse_json_maybe(value["content"])
    return value
