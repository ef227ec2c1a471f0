"""otel:agent: an agent run. Pure functions, called from map_span on the exporting thread; no state.

An agent span carries its conversation like a model call does (the OTel GenAI attributes or events, pydantic-ai's
whole run), its request parameters and its response facts; a generic input/output value (OpenInference,
Traceloop) stays the raw `value`, which is what those conventions record for a run. A run whose prompt and answer
are recorded as one value each in a shape we know (the Vercel AI SDK's root span, Mastra's agent run) gets them as
messages: the prompt (after the system instructions) in, the answer out, a structured object as `result`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan

from prefactor_otel.mapping.builders import otel
from prefactor_otel.mapping.builders.common import generic_value, request_params, strip_method
from prefactor_otel.mapping.builders.conversation import (
    AI_RESPONSE_KEYS,
    ai_response_message,
    finish_reasons,
    input_messages,
    output_messages,
)
from prefactor_otel.mapping.chains import (
    ADK_LLM_REQUEST,
    ADK_LLM_RESPONSE,
    AGENT_CONVERSATION,
    AGENT_DESCRIPTION,
    AGENT_ID,
    AGENT_NAME,
    AGENT_NAME_SUFFIXES,
    AGENT_RESULT,
    AGENT_VERSION,
    AI_RESPONSE_OBJECT,
    FINISH_REASONS,
    GENERIC_INPUT,
    GENERIC_OUTPUT,
    INPUT_MESSAGES,
    MODEL,
    OUTPUT_MESSAGES,
    PROVIDER,
    RESPONSE_ID,
    RESPONSE_MODEL,
    RUN_OUTPUT,
    RUN_PROMPT,
    SYSTEM_INSTRUCTIONS,
)
from prefactor_otel.mapping.context import Context, Typed
from prefactor_otel.mapping.messages import Message, normalize_messages, run_prompt_messages, system_message
from prefactor_otel.mapping.values import json_safe

_INVOKE_PREFIX = "invoke_agent "
_CREATE_PREFIX = "create_agent"


def agent_name(ctx: Context) -> str | None:
    """The agent's name: its attribute; else its span name without the operation or a method suffix
    (`invoke_agent weather` -> `weather`, `weather_agent.run` -> `weather_agent`). A `create_agent` span without
    the attribute has none: its span name is the operation, not a name."""
    name = ctx.value(AGENT_NAME)
    if name is not None:
        return name  # type: ignore[no-any-return]
    span_name = ctx.name
    if span_name.startswith(_CREATE_PREFIX) or ctx.attributes.get("gen_ai.operation.name") == "create_agent":
        return None
    if span_name.startswith(_INVOKE_PREFIX):
        return span_name[len(_INVOKE_PREFIX) :] or None
    return strip_method(span_name, AGENT_NAME_SUFFIXES) or None


def agent(ctx: Context, typed: Typed, span: ReadableSpan) -> None:
    if not ctx.event_records:
        params_there = ctx.layout("agent", otel.agent_layout)
        if params_there is not None:
            _otel_agent(ctx, typed, params_there)
            return
    typed.put(typed.fields, "agent_name", agent_name(ctx))
    typed.put(typed.fields, "agent_id", ctx.value(AGENT_ID))
    typed.put(typed.fields, "agent_description", ctx.value(AGENT_DESCRIPTION))
    typed.put(typed.fields, "agent_version", ctx.value(AGENT_VERSION))
    conversation = ctx.attributes.get("gen_ai.conversation.id")
    if conversation is not None:
        typed.put(typed.fields, "conversation_id", json_safe(conversation))
    typed.put(typed.fields, "model", ctx.value(MODEL))
    typed.put(typed.fields, "provider", ctx.value(PROVIDER))
    typed.put(typed.fields, "params", request_params(ctx, typed))
    if ctx.has_any(_RUN_KEYS):
        _run_io(ctx, typed)
        return
    # Most agent spans carry no conversation at all: one C-level check skips the chains below.
    conversation_keys = ctx.has_any(_CONVERSATION_KEYS)
    if not conversation_keys and not ctx.event_records:
        _generic_io(ctx, typed, inputs=True, outputs=True)
        return
    # pydantic-ai: the whole conversation of the run (A6 puts it with the inputs), the final output separately.
    hit = ctx.first_json(AGENT_CONVERSATION) if conversation_keys else None
    if hit is not None:
        system = None
        instructions = ctx.first_json(SYSTEM_INSTRUCTIONS)
        if instructions is not None:
            system = system_message(instructions[1])
        messages = normalize_messages(hit[1])
        if messages is not None and system is not None:
            messages = [system, *messages]
        typed.put(typed.inputs, "messages", messages if messages is not None else hit[1])
    else:
        typed.put(typed.inputs, "messages", input_messages(ctx, generic=False, flattened=False))
        _generic_io(ctx, typed, inputs=True, outputs=False)
    output = output_messages(ctx, generic=False, flattened=False)
    typed.put(typed.outputs, "messages", output)
    hit = ctx.first_json(AGENT_RESULT) if conversation_keys else None
    if hit is not None:
        typed.put(typed.outputs, "result", hit[1])
    elif output is None:
        _generic_io(ctx, typed, inputs=False, outputs=True)
    typed.put(typed.result, "finish_reasons", finish_reasons(ctx, output))
    if conversation_keys:
        typed.put(typed.result, "response_id", ctx.value(RESPONSE_ID))
        typed.put(typed.result, "response_model", ctx.value(RESPONSE_MODEL))


def _otel_agent(ctx: Context, typed: Typed, params_there: tuple[tuple[str, str], ...]) -> None:
    """`agent` for a span whose names are OTel GenAI agent names and names no builder reads (builders/otel.py),
    without events: no conversation, no run prompt or answer, no generic value is there, so `agent` fills the
    agent's fields, model, provider and parameters only; each chain has at most its first name there, read
    directly in the order and with the rules of the general path above. A string value is read inline
    (`otel.first_value` and `otel.put` reduce to "a non-empty string is consumed and put"); any other value takes
    those functions, as before."""
    attributes = ctx.attributes
    consumed = ctx.consumed
    fields = typed.fields
    put = otel.put
    first_value = otel.first_value
    name = attributes.get(otel.AGENT_NAME)
    if type(name) is str and name:
        consumed.add(otel.AGENT_NAME)
        fields["agent_name"] = name
    else:
        name = first_value(attributes, consumed, otel.AGENT_NAME)
        put(fields, "agent_name", name if name is not None else agent_name(ctx))
    otel.put_fields(fields, attributes, consumed, _AGENT_FIELDS)
    conversation = attributes.get("gen_ai.conversation.id")
    if conversation is not None:
        if type(conversation) is str:
            if conversation:
                fields["conversation_id"] = conversation  # `json_safe` of a string is the string
        else:
            put(fields, "conversation_id", json_safe(conversation))
    otel.put_fields(fields, attributes, consumed, _MODEL_FIELD)
    otel.put_provider(fields, attributes, consumed)
    if params_there:
        params = otel.params(attributes, consumed, params_there)
        if params is not None:  # a dict with at least one parameter
            fields["params"] = params


# The agent's string fields after its name, in the order `agent` puts them.
_MODEL_FIELD = ((otel.MODEL, "model"),)
_AGENT_FIELDS = (
    (otel.AGENT_ID, "agent_id"),
    (otel.AGENT_DESCRIPTION, "agent_description"),
    (otel.AGENT_VERSION, "agent_version"),
)


def _run_io(ctx: Context, typed: Typed) -> None:
    """A run recorded as its prompt and its answer (the Vercel AI SDK's generateText / streamText / generateObject /
    streamObject root span; Mastra's agent run): messages in and out, a structured object as `result`."""
    system = None
    hit = ctx.first_json(SYSTEM_INSTRUCTIONS)
    if hit is not None:
        system = system_message(hit[1])
    messages: list[Message] | None = None
    hit = ctx.first_json(RUN_PROMPT)
    if hit is not None:
        messages = run_prompt_messages(hit[1])
        if messages is None:
            typed.put(typed.inputs, "value", hit[1])
    if system is not None and (not messages or messages[0] != system):
        messages = [system, *(messages or ())]
    typed.put(typed.inputs, "messages", messages)
    output: list[Message] | None = None
    if ctx.has_any(AI_RESPONSE_KEYS):
        output = [ai_response_message(ctx)]
    hit = ctx.first_json(AI_RESPONSE_OBJECT)
    if hit is not None:
        typed.put(typed.outputs, "result", hit[1])
    hit = ctx.first_json(RUN_OUTPUT)
    if hit is not None:
        answer = hit[1]
        if type(answer) is dict and ("text" in answer or "object" in answer):
            # Mastra: {text, object?, files, ...}; the text is the answer, the object the structured result
            if isinstance(answer.get("text"), str) and answer["text"]:
                output = [{"role": "assistant", "content": answer["text"]}]
            typed.put(typed.outputs, "result", answer.get("object"))
            rest = {k: v for k, v in answer.items() if k not in ("text", "object") and v not in (None, [], {}, "")}
            typed.put(typed.outputs, "value", rest)
        else:
            typed.put(typed.outputs, "value", answer)
    typed.put(typed.outputs, "messages", output)
    typed.put(typed.result, "finish_reasons", finish_reasons(ctx, output))
    typed.put(typed.result, "response_id", ctx.value(RESPONSE_ID))
    typed.put(typed.result, "response_model", ctx.value(RESPONSE_MODEL))


def _generic_io(ctx: Context, typed: Typed, *, inputs: bool, outputs: bool) -> None:
    # OpenInference / Traceloop record a run's input and output as one raw value each: kept as `value`, but for
    # the conversation of a graph's state (`{"messages": [...]}`, LangGraph), which becomes `messages`.
    if inputs:
        found = generic_value(ctx, GENERIC_INPUT)
        if found is not None:
            _put_state(typed, typed.inputs, found[1], ())
    if outputs:
        found = generic_value(ctx, GENERIC_OUTPUT)
        if found is not None:
            _put_state(typed, typed.outputs, found[1], typed.inputs.get("messages") or ())


def _put_state(typed: Typed, target: dict[str, Any], value: Any, asked: Sequence[Message]) -> None:
    """A run's state: its `messages` (when every one is a message) as the shared shape, any other keys as `value`.
    The output state repeats the conversation it was given: only what the run added is its output."""
    inner = value.get("messages") if type(value) is dict else None
    if (
        "messages" in target
        or type(inner) is not list
        or not inner
        or not all(type(m) is dict and "role" in m for m in inner)
    ):
        typed.put(target, "value", value)
        return
    messages = normalize_messages(inner) or []
    if asked and messages[: len(asked)] == list(asked):
        messages = messages[len(asked) :]
    typed.put(target, "messages", messages)
    typed.put(target, "value", {k: v for k, v in value.items() if k != "messages"})


# What a run recorded as one prompt and one answer carries (`_run_io`).
_RUN_KEYS = frozenset((*RUN_PROMPT, *RUN_OUTPUT, *AI_RESPONSE_OBJECT, *AI_RESPONSE_KEYS))
# Every attribute the conversation part of an agent span reads (the rest of it reads events).
_CONVERSATION_KEYS = frozenset(
    (
        *AGENT_CONVERSATION,
        *AGENT_RESULT,
        *SYSTEM_INSTRUCTIONS,
        *INPUT_MESSAGES,
        *OUTPUT_MESSAGES,
        *ADK_LLM_REQUEST,
        *ADK_LLM_RESPONSE,
        *FINISH_REASONS,
        *RESPONSE_ID,
        *RESPONSE_MODEL,
    )
)
