"""otel:llm: a model call. Pure functions, called from map_span on the exporting thread; no state."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan

from prefactor_otel.mapping.builders import otel
from prefactor_otel.mapping.builders.common import model_fields, request_params
from prefactor_otel.mapping.builders.conversation import finish_reasons, input_messages, output_messages
from prefactor_otel.mapping.chains import (
    AI_TOOL_CHOICE,
    COMPLETION_START_TIME,
    RESPONSE_ID,
    TOOL_DEFINITIONS,
    TTFT_EVENTS,
    UNKNOWN_MODEL,
)
from prefactor_otel.mapping.context import Context, Typed
from prefactor_otel.mapping.messages import message_list
from prefactor_otel.mapping.values import json_safe, parse_json_maybe


def llm(ctx: Context, typed: Typed, span: ReadableSpan) -> None:
    if not ctx.events and not ctx.event_records:
        params_there = ctx.layout("llm", otel.llm_layout)
        if params_there is not None:
            _otel_llm(ctx, typed, params_there)
            return
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


def _otel_llm(ctx: Context, typed: Typed, params_there: tuple[tuple[str, str], ...]) -> None:
    """`llm` for a span whose names are OTel GenAI names and names no builder reads (builders/otel.py), without
    events: each chain below has at most its first name there, read directly, in the order and with the rules of
    the general path above (model_fields, request_params, input/output messages, finish_reasons, response id);
    tool definitions, tool choice, invocation parameters, flattened families and first-token times are not there.

    A string value (nearly every one) is read inline: `otel.first_value` and `otel.put` reduce to "a non-empty
    string is consumed and put"; any other value takes those functions, as before."""
    attributes = ctx.attributes
    consumed = ctx.consumed
    fields = typed.fields
    result = typed.result
    model = attributes.get(otel.MODEL)
    if type(model) is str:
        if model == UNKNOWN_MODEL:
            # Traceloop's placeholder for a model without a name: left in metadata as it came (model_fields).
            consumed.discard(otel.RESPONSE_MODEL)
        elif model:
            consumed.add(otel.MODEL)
            fields["model"] = model
    elif model is not None:
        _odd_model(model, consumed, fields)
    otel.put_provider(fields, attributes, consumed)
    response_model = attributes.get(otel.RESPONSE_MODEL)
    if type(response_model) is str:
        if response_model and response_model != UNKNOWN_MODEL:
            consumed.add(otel.RESPONSE_MODEL)
            result["response_model"] = response_model
    elif response_model is not None and response_model != UNKNOWN_MODEL:
        otel.put(result, "response_model", otel.first_value(attributes, consumed, otel.RESPONSE_MODEL))
    if params_there:
        params = otel.params(attributes, consumed, params_there)
        if params is not None:  # a dict with at least one parameter
            fields["params"] = params
    if otel.SYSTEM_INSTRUCTIONS in attributes:
        otel.put(typed.inputs, "messages", input_messages(ctx))  # the system message leads: the general reading
    else:
        raw = attributes.get(otel.INPUT_MESSAGES)
        if raw is not None and raw != "":
            consumed.add(otel.INPUT_MESSAGES)
            otel.put(typed.inputs, "messages", message_list(raw))
    output: Any = None
    raw = attributes.get(otel.OUTPUT_MESSAGES)
    if raw is not None and raw != "":
        consumed.add(otel.OUTPUT_MESSAGES)
        output = message_list(raw)
        otel.put(typed.outputs, "messages", output)
    reasons = attributes.get(otel.FINISH_REASONS)
    if type(reasons) is tuple:
        for reason in reasons:
            if type(reason) is not str:
                otel.put(result, "finish_reasons", finish_reasons(ctx, output))
                break
        else:  # a string array (the common shape), as finish_reasons reads it
            consumed.add(otel.FINISH_REASONS)
            if reasons:
                result["finish_reasons"] = list(reasons)
    elif reasons is None or reasons == "":
        if isinstance(output, list):  # none there: the output messages' own, as finish_reasons takes them
            found = [m["finish_reason"] for m in output if isinstance(m, dict) and m.get("finish_reason")]
            if found:
                result["finish_reasons"] = found
    else:
        otel.put(result, "finish_reasons", finish_reasons(ctx, output))
    otel.put_fields(result, attributes, consumed, _RESPONSE_ID_FIELD)


def _odd_model(model: object, consumed: set[str], fields: dict[str, Any]) -> None:
    """`_otel_llm`'s model when it is not a string (an array, a number): the general path's rules."""
    if model == "":
        return
    if model == UNKNOWN_MODEL:
        consumed.discard(otel.RESPONSE_MODEL)
        return
    consumed.add(otel.MODEL)
    otel.put(fields, "model", json_safe(model))


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


_RESPONSE_ID_FIELD = ((otel.RESPONSE_ID, "response_id"),)
