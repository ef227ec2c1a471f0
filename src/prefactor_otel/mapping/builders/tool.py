"""otel:tool: a tool call. Pure functions, called from map_span on the exporting thread; no state."""

from __future__ import annotations

from typing import Any

from opentelemetry.sdk.trace import ReadableSpan

from prefactor_otel.mapping.builders.common import strip_affix, unwrap_envelope
from prefactor_otel.mapping.chains import (
    TOOL_ARGUMENTS,
    TOOL_CALL_ID,
    TOOL_DESCRIPTION,
    TOOL_NAME,
    TOOL_RESULT,
    TOOL_TYPE,
)
from prefactor_otel.mapping.context import Context, Typed
from prefactor_otel.mapping.values import parse_json_maybe


def tool(ctx: Context, typed: Typed, span: ReadableSpan) -> None:
    name = ctx.value(TOOL_NAME) or strip_affix(ctx.name, "execute_tool ", ".tool")
    typed.put(typed.fields, "tool_name", name)
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
        typed.put(typed.inputs, "arguments", _unwrap_tool_arguments(arguments, typed))
    hit = ctx.first(TOOL_RESULT)
    if hit is not None:
        key, raw = hit
        if key == "output.value":
            ctx.consume("output.mime_type")
        result = unwrap_envelope(key, ctx.parse(key, raw), raw)
        typed.put(typed.outputs, "result", _unwrap_tool_result(result, typed))


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
    if isinstance(value, dict) and "output" in value and "kwargs" in value:
        value = value["output"]
    if isinstance(value, dict) and value.get("role") == "tool" and "content" in value:
        if value.get("tool_call_id") and "tool_call_id" not in typed.fields:
            typed.fields["tool_call_id"] = value["tool_call_id"]
        return parse_json_maybe(value["content"])
    return value
