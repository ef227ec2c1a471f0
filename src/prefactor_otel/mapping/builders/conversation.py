"""Messages in and out of a model call (and of an agent run), finish reasons. Pure functions.

Called from map_span on the exporting thread; no state.
"""

from __future__ import annotations

from typing import Any

from prefactor_otel.mapping.builders.common import as_list, drop_raw_io, generic_value
from prefactor_otel.mapping.chains import (
    FINISH_REASONS,
    GENERIC_INPUT,
    GENERIC_OUTPUT,
    INPUT_MESSAGES,
    OUTPUT_MESSAGES,
    SYSTEM_INSTRUCTIONS,
)
from prefactor_otel.mapping.context import Context
from prefactor_otel.mapping.messages import (
    Message,
    from_flattened,
    normalize_message,
    normalize_messages,
    system_message,
)
from prefactor_otel.mapping.values import json_safe


def messages_from_response(value: Any) -> list[Message] | None:
    """Output messages from a raw response body: OpenAI `choices`, LangChain `generations`, or a message list."""
    if isinstance(value, dict):
        choices = value.get("choices")
        if isinstance(choices, list):
            messages = []
            for choice in choices:
                if not isinstance(choice, dict):
                    continue
                body = (
                    choice.get("message") or choice.get("delta") or {"role": "assistant", "content": choice.get("text")}
                )
                message = normalize_message(body)
                if choice.get("finish_reason"):
                    message["finish_reason"] = choice["finish_reason"]
                messages.append(message)
            return messages
        generations = value.get("generations")
        if isinstance(generations, list):
            messages = []
            for batch in generations:
                for generation in batch if isinstance(batch, list) else [batch]:
                    if isinstance(generation, dict):
                        inner = generation.get("message")
                        if isinstance(inner, dict):
                            messages.append(normalize_message(inner))
                        else:
                            messages.append({"role": "assistant", "content": generation.get("text")})
            return messages
        if "role" in value:
            return [normalize_message(value)]
    return normalize_messages(value)


def input_messages(ctx: Context) -> list[Message] | Any:
    """Input messages through the chain; a raw value when only an unparseable fallback exists."""
    system = None
    hit = ctx.first_json(SYSTEM_INSTRUCTIONS)
    if hit is not None:
        system = system_message(hit[1])
    messages: list[Message] | None = None
    raw_fallback: Any = None
    hit = ctx.first_json(INPUT_MESSAGES)
    if hit is not None:
        messages = normalize_messages(hit[1])
        if messages is None:
            raw_fallback = hit[1]
    if messages is None and raw_fallback is None:
        groups = ctx.family("llm.input_messages.")
        if groups is not None:
            messages = from_flattened(groups, "message.")
            drop_raw_io(ctx, inputs=True, outputs=False)
    if messages is None and raw_fallback is None:
        groups = ctx.family("gen_ai.prompt.")
        if groups is not None:
            messages = from_flattened(groups, "")
    if messages is None and raw_fallback is None:
        groups = ctx.family("llm.prompts.")
        if groups is not None:
            messages = [{"role": "user", "content": g.get("prompt.text")} for _, g in sorted(groups.items())]
        elif isinstance(ctx.attributes.get("llm.prompts"), (list, tuple)):
            ctx.consume("llm.prompts")
            messages = [{"role": "user", "content": str(p)} for p in ctx.attributes["llm.prompts"]]  # type: ignore[union-attr]
    if messages is None and raw_fallback is None:
        generic = generic_value(ctx, GENERIC_INPUT)
        if generic is not None:
            messages = normalize_messages(generic[1])
            if messages is None:
                raw_fallback = generic[1]
    if system is not None:
        if messages is None:
            messages = [system]
        elif not messages or messages[0].get("role") != "system" or messages[0].get("content") != system["content"]:
            messages = [system, *messages]
    return messages if messages is not None else raw_fallback


def output_messages(ctx: Context) -> list[Message] | Any:
    hit = ctx.first_json(OUTPUT_MESSAGES)
    if hit is not None:
        messages = normalize_messages(hit[1])
        return messages if messages is not None else hit[1]
    groups = ctx.family("llm.output_messages.")
    if groups is not None:
        drop_raw_io(ctx, inputs=False, outputs=True)
        return from_flattened(groups, "message.")
    groups = ctx.family("gen_ai.completion.")
    if groups is not None:
        return from_flattened(groups, "")
    generic = generic_value(ctx, GENERIC_OUTPUT)
    if generic is not None:
        messages = messages_from_response(generic[1])
        return messages if messages is not None else generic[1]
    return None


def finish_reasons(ctx: Context, output_messages: Any) -> list[Any] | None:
    hit = ctx.first(FINISH_REASONS)
    if hit is not None:
        return as_list(json_safe(hit[1]))
    if isinstance(output_messages, list):
        reasons = [m["finish_reason"] for m in output_messages if isinstance(m, dict) and m.get("finish_reason")]
        return reasons or None
    return None
