"""otel:agent: an agent run. Pure functions, called from map_span on the exporting thread; no state."""

from __future__ import annotations

from opentelemetry.sdk.trace import ReadableSpan

from prefactor_otel.mapping.builders.common import generic_value, strip_affix
from prefactor_otel.mapping.chains import (
    AGENT_CONVERSATION,
    AGENT_DESCRIPTION,
    AGENT_ID,
    AGENT_NAME,
    AGENT_RESULT,
    AGENT_VERSION,
    GENERIC_INPUT,
    GENERIC_OUTPUT,
    MODEL,
    PROVIDER,
    SYSTEM_INSTRUCTIONS,
)
from prefactor_otel.mapping.context import Context, Typed
from prefactor_otel.mapping.messages import normalize_messages, system_message
from prefactor_otel.mapping.values import json_safe


def agent(ctx: Context, typed: Typed, span: ReadableSpan) -> None:
    name = ctx.value(AGENT_NAME) or strip_affix(ctx.name, "invoke_agent ", ".agent") or ctx.name
    typed.put(typed.fields, "agent_name", name)
    typed.put(typed.fields, "agent_id", ctx.value(AGENT_ID))
    typed.put(typed.fields, "agent_description", ctx.value(AGENT_DESCRIPTION))
    typed.put(typed.fields, "agent_version", ctx.value(AGENT_VERSION))
    conversation = ctx.attributes.get("gen_ai.conversation.id")
    if conversation is not None:
        typed.put(typed.fields, "conversation_id", json_safe(conversation))
    typed.put(typed.fields, "model", ctx.value(MODEL))
    typed.put(typed.fields, "provider", ctx.value(PROVIDER))
    # pydantic-ai: the whole conversation of the run (A6 puts it with the inputs), the final output separately.
    hit = ctx.first_json(AGENT_CONVERSATION)
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
        generic = generic_value(ctx, GENERIC_INPUT)
        if generic is not None:
            typed.put(typed.inputs, "value", generic[1])
        instructions = ctx.first_json(SYSTEM_INSTRUCTIONS)
        if instructions is not None:
            typed.put(typed.inputs, "system_instructions", instructions[1])
    hit = ctx.first_json(AGENT_RESULT)
    if hit is not None:
        typed.put(typed.outputs, "result", hit[1])
    else:
        generic = generic_value(ctx, GENERIC_OUTPUT)
        if generic is not None:
            typed.put(typed.outputs, "value", generic[1])
