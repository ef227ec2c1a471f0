"""Messages in and out of a model call (and of an agent run), finish reasons. Pure functions.

Sources, first hit wins: the OTel GenAI JSON attributes, the flattened families of other conventions, then the
span's events (the OTel GenAI details event, the older per-message events), then the generic input/output value.
Called from map_span on the exporting thread; no state (the parsed events are kept on the span's Context).
"""

from __future__ import annotations

from typing import Any

from prefactor_otel.mapping.builders.common import as_list, drop_raw_io, generic_value
from prefactor_otel.mapping.chains import (
    ADK_LLM_REQUEST,
    ADK_LLM_RESPONSE,
    AI_RESPONSE_OBJECT,
    AI_RESPONSE_REASONING,
    AI_RESPONSE_TEXT,
    AI_RESPONSE_TOOL_CALLS,
    CHOICE_EVENT,
    DETAILS_EVENT,
    FINISH_REASONS,
    GENERIC_INPUT,
    GENERIC_OUTPUT,
    INPUT_MESSAGES,
    MESSAGE_EVENTS,
    OUTPUT_MESSAGES,
    SYSTEM_INSTRUCTIONS,
)
from prefactor_otel.mapping.context import Context
from prefactor_otel.mapping.messages import (
    Message,
    from_flattened,
    normalize_message,
    normalize_messages,
    normalize_tool_call,
    system_message,
)
from prefactor_otel.mapping.values import json_safe, parse_json_maybe


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


EventConversation = tuple[list[Message] | None, list[Message] | None, Message | None]  # inputs, outputs, system
_NO_EVENT_CONVERSATION: EventConversation = (None, None, None)


def event_conversation(ctx: Context) -> EventConversation:
    """The messages the span's events carry: input messages, output messages, system instructions."""
    if ctx.event_conversation is not None:
        return ctx.event_conversation  # type: ignore[no-any-return]
    if not ctx.event_records:
        ctx.event_conversation = _NO_EVENT_CONVERSATION
        return _NO_EVENT_CONVERSATION
    inputs: list[Message] | None = None
    outputs: list[Message] | None = None
    system: Message | None = None
    for name, attributes in ctx.event_records:
        if name == DETAILS_EVENT:
            for key, value in attributes.items():
                if key == "gen_ai.input.messages" or key == "gen_ai.output.messages":
                    messages = normalize_messages(parse_json_maybe(value))
                    if messages:
                        if key == "gen_ai.input.messages":
                            inputs = [*(inputs or ()), *messages]
                        else:
                            outputs = [*(outputs or ()), *messages]
                elif key == "gen_ai.system_instructions":
                    system = system_message(parse_json_maybe(value))
        elif name in MESSAGE_EVENTS:
            role = attributes.get("role") or MESSAGE_EVENTS[name]
            message = _event_message(role, attributes.get("content"))
            if role == "tool" and attributes.get("id") is not None and "tool_call_id" not in message:
                message["tool_call_id"] = str(attributes["id"])
            inputs = [*(inputs or ()), message]
        elif name == CHOICE_EVENT:
            message = _event_message("assistant", attributes.get("message"))
            if attributes.get("finish_reason"):
                message["finish_reason"] = str(attributes["finish_reason"])
            outputs = [*(outputs or ()), message]
    ctx.event_conversation = (inputs, outputs, system)
    return ctx.event_conversation  # type: ignore[no-any-return]


def _event_message(role: object, content: object) -> Message:
    # Strands writes the JSON of the message's content blocks; other writers a whole message, or plain text.
    parsed = parse_json_maybe(content)
    if isinstance(parsed, dict) and ("parts" in parsed or "content" in parsed):
        return normalize_message({**parsed, "role": parsed.get("role") or role})
    return normalize_message({"role": role, "content": parsed})


def _gemini_message(content: dict[str, Any]) -> Message:
    # Gemini's Content: {role: user|model, parts: [{text} | {function_call} | {function_response}]}
    role = content.get("role")
    return normalize_message({**content, "role": "assistant" if role == "model" else role})


def _adk_request(request: dict[str, Any]) -> tuple[list[Message] | None, Message | None]:
    """Google ADK's LlmRequest JSON: the messages of `contents` and the system instruction of `config`."""
    contents = request.get("contents")
    messages = [_gemini_message(c) for c in contents if isinstance(c, dict)] if isinstance(contents, list) else None
    config = request.get("config")
    instruction = config.get("system_instruction") if isinstance(config, dict) else None
    if isinstance(instruction, dict):  # a Content
        instruction = instruction.get("parts")
    return messages, system_message(instruction) if instruction else None


def input_messages(ctx: Context, *, generic: bool = True, flattened: bool = True) -> list[Message] | Any:
    """Input messages through the chain; a raw value when only an unparseable fallback exists.

    generic: fall back on the generic input value (`input.value`, ...); agents keep that as their `value`.
    flattened: look for the flattened families (model-call conventions only: agent spans have none)."""
    if (
        not ctx.has_any(_INPUT_KEYS if generic else _INPUT_KEYS_NOT_GENERIC)
        and not ctx.event_records
        and not (flattened and ctx.has_families())
    ):
        return None  # no source of input messages at all (most model calls of a small span's kind): none found
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
    if messages is None and raw_fallback is None and flattened:
        groups = ctx.family("llm.input_messages.")
        if groups is not None:
            messages = from_flattened(groups, "message.")
            drop_raw_io(ctx, inputs=True, outputs=False)
    if messages is None and raw_fallback is None and flattened:
        groups = ctx.family("gen_ai.prompt.")
        if groups is not None:
            messages = from_flattened(groups, "")
    if messages is None and raw_fallback is None and flattened:
        groups = ctx.family("llm.prompts.")
        if groups is not None:
            messages = [{"role": "user", "content": g.get("prompt.text")} for _, g in sorted(groups.items())]
        else:
            prompts = ctx.attributes.get("llm.prompts")
            if isinstance(prompts, (list, tuple)):
                ctx.consume("llm.prompts")
                messages = [{"role": "user", "content": str(p)} for p in prompts]
    if messages is None and raw_fallback is None and "gcp.vertex.agent.llm_request" in ctx.attributes:
        hit = ctx.first_json(ADK_LLM_REQUEST)
        if hit is not None and isinstance(hit[1], dict):
            messages, adk_system = _adk_request(hit[1])
            system = system or adk_system
    if messages is None and raw_fallback is None and ctx.event_records:
        messages, _, event_system = event_conversation(ctx)
        system = system or event_system
    if messages is None and raw_fallback is None and generic:
        found = generic_value(ctx, GENERIC_INPUT)
        if found is not None:
            messages = normalize_messages(found[1])
            if messages is None:
                raw_fallback = found[1]
    if system is not None:
        if messages is None:
            messages = [system]
        elif not messages or messages[0].get("role") != "system" or messages[0].get("content") != system["content"]:
            messages = [system, *messages]
    return messages if messages is not None else raw_fallback


def output_messages(ctx: Context, *, generic: bool = True, flattened: bool = True) -> list[Message] | Any:
    """Output messages through the chain (generic, flattened: as in input_messages)."""
    if (
        not ctx.has_any(_OUTPUT_KEYS if generic else _OUTPUT_KEYS_NOT_GENERIC)
        and not ctx.event_records
        and not (flattened and ctx.has_families())
    ):
        return None  # as in input_messages
    hit = ctx.first_json(OUTPUT_MESSAGES)
    if hit is not None:
        messages = normalize_messages(hit[1])
        return messages if messages is not None else hit[1]
    if ctx.has_any(_AI_ANSWER_KEYS):
        message = ai_response_message(ctx)
        if message["content"] is None and "tool_calls" not in message:
            # generateObject / streamObject: the model answered the object's JSON text
            hit = ctx.first(AI_RESPONSE_OBJECT)
            message["content"] = hit[1] if hit is not None and isinstance(hit[1], str) else None
        return [message]
    if flattened:
        groups = ctx.family("llm.output_messages.")
        if groups is not None:
            drop_raw_io(ctx, inputs=False, outputs=True)
            return from_flattened(groups, "message.")
        groups = ctx.family("gen_ai.completion.")
        if groups is not None:
            return from_flattened(groups, "")
    if "gcp.vertex.agent.llm_response" in ctx.attributes:
        hit = ctx.first_json(ADK_LLM_RESPONSE)
        if hit is not None and isinstance(hit[1], dict) and isinstance(hit[1].get("content"), dict):
            message = _gemini_message(hit[1]["content"])
            if hit[1].get("finish_reason"):
                message["finish_reason"] = str(hit[1]["finish_reason"]).lower()
            return [message]
    if ctx.event_records:
        messages = event_conversation(ctx)[1]
        if messages is not None:
            return messages
    if generic:
        found = generic_value(ctx, GENERIC_OUTPUT)
        if found is not None:
            messages = messages_from_response(found[1])
            return messages if messages is not None else found[1]
    return None


def ai_response_message(ctx: Context) -> Message:
    """The answer of a Vercel AI SDK call (a model call or the call's root span) as one assistant message: its text
    (`ai.response.text`), tool calls (`ai.response.toolCalls`: `{toolCallId, toolName, input}` with `input` a JSON
    string; `args` before v5) and reasoning (a `reasoning` part)."""
    text = ctx.value(AI_RESPONSE_TEXT)
    message: Message = {"role": "assistant", "content": text if isinstance(text, str) else None}
    hit = ctx.first_json(AI_RESPONSE_TOOL_CALLS)
    if hit is not None and isinstance(hit[1], list):
        message["tool_calls"] = [
            normalize_tool_call(
                {
                    "id": call.get("toolCallId"),
                    "name": call.get("toolName"),
                    "arguments": call["input"] if "input" in call else call.get("args"),
                }
            )
            for call in hit[1]
            if isinstance(call, dict)
        ]
    elif hit is not None:
        ctx.consumed.discard(hit[0])  # not the shape we know: left in metadata as it came
    reasoning = ctx.value(AI_RESPONSE_REASONING)
    if isinstance(reasoning, str) and reasoning:
        message["parts"] = [{"type": "reasoning", "content": reasoning}]
    return message


# What `ai_response_message` reads; with the object, what an AI SDK answer may carry.
AI_RESPONSE_KEYS = frozenset((*AI_RESPONSE_TEXT, *AI_RESPONSE_TOOL_CALLS, *AI_RESPONSE_REASONING))
_AI_ANSWER_KEYS = frozenset((*AI_RESPONSE_KEYS, *AI_RESPONSE_OBJECT))
# Every attribute input_messages / output_messages read, but the flattened families' (events apart): a span with
# none of them, no events and no family has no messages, and every chain below would miss.
_INPUT_KEYS_NOT_GENERIC = frozenset((*SYSTEM_INSTRUCTIONS, *INPUT_MESSAGES, *ADK_LLM_REQUEST, "llm.prompts"))
_INPUT_KEYS = frozenset((*_INPUT_KEYS_NOT_GENERIC, *GENERIC_INPUT))
_OUTPUT_KEYS_NOT_GENERIC = frozenset((*OUTPUT_MESSAGES, *_AI_ANSWER_KEYS, *ADK_LLM_RESPONSE))
_OUTPUT_KEYS = frozenset((*_OUTPUT_KEYS_NOT_GENERIC, *GENERIC_OUTPUT))


def finish_reasons(ctx: Context, output_messages: Any) -> list[Any] | None:
    hit = ctx.first(FINISH_REASONS)
    if hit is not None:
        value = hit[1]
        if type(value) is tuple and all(type(reason) is str for reason in value):
            reasons: list[Any] | None = list(value)  # the common shape (a string array): what the line below gives
        else:
            if isinstance(value, str) and value.startswith("["):
                value = parse_json_maybe(value)  # Mastra writes the list as JSON: '["stop"]'
            reasons = as_list(json_safe(value))
        if (
            hit[0] != _AI_FINISH_REASON
            and _AI_FINISH_REASON in ctx.attributes
            and reasons == [ctx.attributes[_AI_FINISH_REASON]]
        ):
            ctx.consume(_AI_FINISH_REASON)  # the AI SDK's own copy beside gen_ai.response.finish_reasons
        return reasons
    if isinstance(output_messages, list):
        reasons = [m["finish_reason"] for m in output_messages if isinstance(m, dict) and m.get("finish_reason")]
        return reasons or None
    return None


_AI_FINISH_REASON = FINISH_REASONS[-1]
