"""Helpers every builder shares: generic input/output values, envelopes, common fields, model fields, params.

Pure functions, called from map_span on the exporting thread; no state.
"""

from __future__ import annotations

from typing import Any

from prefactor_otel.mapping.chains import (
    INVOCATION_PARAMS,
    MODEL,
    NOT_PARAMS,
    PROVIDER,
    REQUEST_PARAMS,
    RESPONSE_MODEL,
    SESSION,
    TAGS,
    UNKNOWN_MODEL,
    USER,
)
from prefactor_otel.mapping.context import Context, Typed
from prefactor_otel.mapping.messages import unwrap_langchain
from prefactor_otel.mapping.values import json_safe, parse_json_maybe


def _has_langchain_serialisation(raw: object) -> bool:
    return isinstance(raw, str) and ('"lc": 1' in raw or '"lc":1' in raw or '"data": {' in raw)


_TRACELOOP_ENVELOPES = frozenset(
    {"traceloop.entity.input", "gen_ai.task.input", "traceloop.entity.output", "gen_ai.task.output"}
)


def unwrap_envelope(key: str, parsed: Any, raw: object) -> Any:
    """Traceloop wraps entity I/O as {"inputs": x, "tags":..., "kwargs":...} / {"outputs": x, ...}."""
    if key in _TRACELOOP_ENVELOPES and isinstance(parsed, dict):
        for inner in ("inputs", "outputs", "output"):
            if inner in parsed:
                parsed = parsed[inner]
                break
    if _has_langchain_serialisation(raw):
        parsed = unwrap_langchain(parsed)
    return parsed


def generic_value(ctx: Context, keys: tuple[str, ...]) -> tuple[str, Any] | None:
    hit = ctx.first(keys)
    if hit is None:
        return None
    key, raw = hit
    if key == "input.value":
        ctx.consume("input.mime_type")
    elif key == "output.value":
        ctx.consume("output.mime_type")
    return key, unwrap_envelope(key, ctx.parse(key, raw), raw)


def drop_raw_io(ctx: Context, *, inputs: bool, outputs: bool) -> None:
    # OpenInference LLM / embedding spans repeat the whole request and response in input.value / output.value;
    # once the structured attributes are mapped, the raw copies are redundant (and can be large).
    if inputs:
        ctx.consume("input.value", "input.mime_type")
    if outputs:
        ctx.consume("output.value", "output.mime_type")


def as_list(value: Any) -> list[Any] | None:
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def tags(ctx: Context) -> list[Any] | None:
    hit = ctx.first(TAGS)
    if hit is None:
        return None
    value = parse_json_maybe(hit[1])
    if isinstance(value, str):
        return [t.strip() for t in value.split(",") if t.strip()]
    return as_list(value)


def request_params(ctx: Context, typed: Typed) -> dict[str, Any] | None:
    attributes = ctx.attributes
    if not ctx.has_any(_PARAM_KEYS):
        return None  # agent spans mostly carry none
    params: dict[str, Any] = {}
    for key in ctx.present(_REQUEST_PARAM_KEYS):  # the parameters the span has, in REQUEST_PARAMS order
        name = _PARAM_NAMES[key]
        if name not in params:
            ctx.consumed.add(key)
            value = attributes[key]
            if type(value) is not int and type(value) is not str:  # ints and strings are JSON as they are
                value = json_safe(value)
            if value is not None and value != []:
                params[name] = value
        elif key.startswith(_AI_SETTINGS) and params.get(name) == json_safe(attributes[key]):
            ctx.consumed.add(key)  # the AI SDK's copy of a gen_ai.request.* parameter
    hit = ctx.first_json(INVOCATION_PARAMS)
    if hit is not None and isinstance(hit[1], dict):
        invocation = hit[1]
        for name, value in invocation.items():
            if name not in NOT_PARAMS and name not in params and value is not None:
                params[name] = value
        # OpenInference names the model only in the response; a failed call has it in its request only.
        if "model" not in typed.fields and isinstance(invocation.get("model"), str):
            typed.fields["model"] = invocation["model"]
    return params or None


_REQUEST_PARAM_KEYS = tuple(key for key, _ in REQUEST_PARAMS)
_PARAM_NAMES = dict(REQUEST_PARAMS)
_PARAM_KEYS = frozenset((*_REQUEST_PARAM_KEYS, *INVOCATION_PARAMS))
_AI_SETTINGS = "ai.settings."


def strip_method(name: str, suffixes: tuple[str, ...]) -> str:
    """`name` without one trailing method suffix (`weather_agent.run` -> `weather_agent`); as it is without one."""
    if name.endswith(suffixes):
        for suffix in suffixes:
            if name.endswith(suffix) and len(name) > len(suffix):
                return name[: -len(suffix)]
    return name


# ---------------------------------------------------------------------------------------------- per type


def common_fields(ctx: Context, typed: Typed, operation: str | None) -> None:
    if operation:  # `typed.put` of a string or None: put when not empty
        typed.fields["operation"] = operation
    there = ctx.layout("common", _common_chains)
    if there is None:  # a span without a name plan
        if not ctx.has_any(_COMMON_KEYS):
            return
        there = (True, True, True)
    elif there is _NONE_THERE:
        return  # most spans name no session, user or tags
    session, user, tags_there = there
    if session:
        typed.put(typed.fields, "session_id", ctx.value(SESSION))
    if user:
        typed.put(typed.fields, "user_id", ctx.value(USER))
    if tags_there:
        typed.put(typed.fields, "tags", tags(ctx))


def _common_chains(names: frozenset[str]) -> tuple[bool, bool, bool]:
    """Which of the session, user and tags chains have a name among these (made once per name plan): a chain
    without one reads nothing, so common_fields skips it."""
    there = (not names.isdisjoint(SESSION), not names.isdisjoint(USER), not names.isdisjoint(TAGS))
    return _NONE_THERE if there == _NONE_THERE else there


_NONE_THERE = (False, False, False)
_COMMON_KEYS = frozenset((*SESSION, *USER, *TAGS))


def ai_sdk_envelope(ctx: Context) -> None:
    """The Vercel AI SDK repeats on every span what the payload already says: `ai.operationId` is the operation,
    `operation.name` is "<operationId> <functionId>" and `resource.name` the functionId (the agent's name on the
    root). Consumed when they are those copies; anything else stays in metadata."""
    attributes = ctx.attributes
    operation = attributes.get("ai.operationId")
    if not isinstance(operation, str):
        return
    ctx.consume("ai.operationId")
    function_id = attributes.get("ai.telemetry.functionId")
    expected = f"{operation} {function_id}" if isinstance(function_id, str) else operation
    if attributes.get("operation.name") == expected:
        ctx.consume("operation.name")
    if function_id is not None and attributes.get("resource.name") == function_id:
        ctx.consume("resource.name")


def model_fields(ctx: Context, typed: Typed) -> None:
    hit = ctx.first(MODEL)
    if hit is not None and hit[1] == UNKNOWN_MODEL:
        # Traceloop's placeholder for a model without a name: not a model, left in metadata as it came.
        ctx.consumed.discard(hit[0])
        ctx.consumed.discard("gen_ai.response.model")
        hit = None
    model = (hit[1] if type(hit[1]) is str else json_safe(hit[1])) if hit is not None else None
    typed.put(typed.fields, "model", model)
    typed.put(typed.fields, "provider", ctx.value(PROVIDER))
    response_model = ctx.value(RESPONSE_MODEL) if ctx.attributes.get("gen_ai.response.model") != UNKNOWN_MODEL else None
    if response_model is None and hit is not None and hit[0] == "llm.model_name":
        response_model = model  # OpenInference's llm.model_name is the model the response named
    typed.put(typed.result, "response_model", response_model)
