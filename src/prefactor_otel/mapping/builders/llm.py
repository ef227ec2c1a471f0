"""otel:llm: a model call. Pure functions, called from map_span on the exporting thread; no state."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan

from prefactor_otel.mapping.builders.common import model_fields, request_params
from prefactor_otel.mapping.builders.conversation import finish_reasons, input_messages, output_messages
from prefactor_otel.mapping.chains import (
    AI_TOOL_CHOICE,
    COMPLETION_START_TIME,
    RESPONSE_ID,
    TOOL_DEFINITIONS,
    TTFT_EVENTS,
)
from prefactor_otel.mapping.context import Context, Typed
from prefactor_otel.mapping.values import parse_json_maybe


def llm(ctx: Context, typed: Typed, span: ReadableSpan) -> None:
    model_fields(ctx, typed)
    params = request_params(ctx, typed)
    tool_choice = ctx.first_json(AI_TOOL_CHOICE)  # the AI SDK's, JSON: {"type": "auto"}
    if tool_choice is not None:
        params = {**(params or {}), "tool_choice": tool_choice[1]}
    typed.put(typed.fields, "params", params)
    typed.put(typed.fields, "tool_definitions", _tool_definitions(ctx))
    typed.put(typed.inputs, "messages", input_messages(ctx))
    output = output_messages(ctx)
    typed.put(typed.outputs, "messages", output)
    typed.put(typed.result, "finish_reasons", finish_reasons(ctx, output))
    typed.put(typed.result, "response_id", ctx.value(RESPONSE_ID))
    typed.put(typed.result, "ttft_ms", _ttft_ms(ctx, span))


def _tool_definition(raw: Any) -> Any:
    """One tool definition as `{type, name, description, parameters}` (the OTel GenAI shape); OpenAI's
    `{"type": "function", "function": {...}}`, OpenInference's `tool.*` fields and Anthropic's `input_schema` are
    flattened into it."""
    if not isinstance(raw, dict):
        return raw
    function = raw.get("function")
    source = function if isinstance(function, dict) else raw
    name = source.get("name", source.get("tool.name"))
    definition = {
        "type": raw.get("type", "function"),
        "name": name if name is None or isinstance(name, str) else str(name),
        "description": source.get("description", source.get("tool.description")),
        "parameters": parse_json_maybe(_first_present(source, _PARAMETER_KEYS)),
    }
    return {k: v for k, v in definition.items() if v is not None}


# A tool's JSON schema: OpenAI / OTel GenAI, OpenInference, Anthropic (`input_schema`), MCP (`inputSchema`).
_PARAMETER_KEYS = ("parameters", "tool.parameters", "input_schema", "inputSchema")


def _first_present(source: dict[str, Any], keys: tuple[str, ...]) -> Any:
    for key in keys:
        value = source.get(key)
        if value is not None:
            return value
    return None


def _tool_definitions(ctx: Context) -> Any:
    hit = ctx.first_json(TOOL_DEFINITIONS)
    if hit is not None:
        if isinstance(hit[1], list):
            # the Vercel AI SDK writes a string array, one JSON definition each
            return [_tool_definition(parse_json_maybe(d) if isinstance(d, str) else d) for d in hit[1]]
        return hit[1]
    for family in ("llm.tools.", "llm.request.functions."):
        groups = ctx.family(family)
        if groups is not None:
            definitions = []
            for _, fields in sorted(groups.items()):
                schema = fields.get("tool.json_schema")
                definitions.append(_tool_definition(parse_json_maybe(schema) if schema is not None else fields))
            return definitions
    return None


def _ttft_ms(ctx: Context, span: ReadableSpan) -> float | None:
    start = span.start_time
    if start is None:
        return None
    for event in ctx.events:
        if event.name in TTFT_EVENTS:
            return round((event.timestamp - start) / 1e6, 3)
    hit = ctx.first(COMPLETION_START_TIME)
    if hit is not None and isinstance(hit[1], str):
        try:
            first = datetime.fromisoformat(hit[1].strip('"').replace("Z", "+00:00")).timestamp() * 1e9
        except ValueError:
            return None
        if first < start:
            # Before the call started: not this call's first token (Mastra 1.71 repeats the first step's time on
            # every step of an agent loop). Left in metadata as it came.
            ctx.consumed.discard(hit[0])
            return None
        return round((first - start) / 1e6, 3)
    return None
