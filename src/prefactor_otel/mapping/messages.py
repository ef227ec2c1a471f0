"""Normalise the message shapes of the GenAI conventions into one shape. Pure functions.

Target shape:
`{role, content: str | None, parts?: [...], tool_calls?: [{id, name, arguments}], tool_call_id?, name?, finish_reason?}`

Sources:
- OTel GenAI JSON (`gen_ai.input.messages` / `gen_ai.output.messages`, pydantic-ai, Traceloop >= 0.60): a list of
  `{role, parts: [{type: text|tool_call|tool_call_response|reasoning|uri|blob..., ...}], finish_reason?}`.
- Older JSON shapes (`{role, content}` with OpenAI-style `tool_calls`) seen in callback payloads.
- Flattened attributes: OpenInference `llm.input_messages.{i}.message.*` and Traceloop's legacy
  `gen_ai.prompt.{i}.*` / `gen_ai.completion.{i}.*`, grouped by index before they reach this module.
- The Vercel AI SDK's model messages (`ai.prompt.messages`, the `messages` of `ai.prompt`): `{role, content: str |
  [{type: text|reasoning|image|file|tool-call|tool-result, ...}]}`, a tool call `{toolCallId, toolName, input}`
  (`args` before v5), a tool result `{toolCallId, toolName, output: {type, value}}` (`result` before v5).
- LangChain serialisations (`{"lc": 1, "type": "constructor", "id": [..., "AIMessage"], "kwargs": {...}}` and
  `{"type": "ai", "data": {...}}`) found in generic input/output values.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import pydantic_core

from prefactor_otel.mapping.values import parse_json_maybe

Message = dict[str, Any]

# Parts that become `content` / `tool_calls` / `tool_call_id`; every other part type is kept in `parts`.
_TEXT_PARTS = frozenset({"text", "input_text", "output_text"})
_LANGCHAIN_ROLES = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool", "function": "tool"}
_MAX_DEPTH = 8  # LangChain payloads nest; deeper structures are kept as they are


def _as_text(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    # Tool results and structured contents are JSON; keep them readable as one string in `content`.
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def _name(value: object) -> str | None:
    """Roles, ids and names are strings in the shared shape, whatever an instrumentation wrote."""
    return value if value is None or isinstance(value, str) else str(value)


def normalize_tool_call(call: Mapping[str, Any]) -> dict[str, Any]:
    """OTel `tool_call` part, OpenAI `{id, type, function: {name, arguments}}` or LangChain `{id, name, args}`."""
    function = call.get("function")
    if isinstance(function, dict):
        name, arguments = function.get("name"), function.get("arguments")
    else:
        name = call.get("name")
        arguments = call["arguments"] if "arguments" in call else call.get("args")
    return {"id": _name(call.get("id")), "name": _name(name), "arguments": parse_json_maybe(arguments)}


def _from_parts(role: object, parts: Sequence[Any]) -> Message:
    texts: list[str] = []
    tool_calls: list[dict[str, Any]] | None = None
    responses: list[dict[str, Any]] | None = None
    other: list[Any] | None = None
    for part in parts:
        if type(part) is not dict:
            texts.append(str(part))
            continue
        kind = part.get("type")
        if kind in _TEXT_PARTS:
            content = part["content"] if "content" in part else part.get("text")
            if isinstance(content, str):
                texts.append(content)
                continue
        elif kind == "tool_call":
            if tool_calls is None:
                tool_calls = []
            tool_calls.append(normalize_tool_call(part))
            continue
        elif kind == "tool_call_response":
            if responses is None:
                responses = []
            responses.append(part)
            continue
        elif kind is None or kind in _PROVIDER_BLOCKS:
            block = _provider_block(part)
            if isinstance(block, str):
                texts.append(block)
                continue
            if block is not None:
                if block.get("type") == "tool_call":
                    if tool_calls is None:
                        tool_calls = []
                    tool_calls.append(normalize_tool_call(block))
                else:
                    if responses is None:
                        responses = []
                    responses.append(block)
                continue
        if other is None:
            other = []
        other.append(part)
    message: Message = {"role": _name(role), "content": texts[0] if len(texts) == 1 else "\n".join(texts) or None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    if responses:
        if len(responses) == 1 and not texts:
            # One tool result per message maps onto the flat shape, OpenAI's `role: tool`, whatever role carried it
            # (Anthropic and Bedrock / Strands send tool results back in a `user` message).
            response = responses[0]
            message["role"] = "tool"
            message["tool_call_id"] = _name(response.get("id"))
            message["content"] = _as_text(
                block_text(response["response"] if "response" in response else response.get("result"))
            )
            if response.get("name"):
                message["name"] = _name(response["name"])
        else:
            # parallel tool results stay parts: one tool_call_id cannot hold them
            other = [*(other or ()), *responses]
    if other:
        message["parts"] = other
    return message


_PROVIDER_BLOCKS = frozenset({"tool_use", "tool_result", "tool-call", "tool-result"})


def block_text(value: Any) -> Any:
    """A tool result made only of text content blocks (Anthropic `{"type": "text", "text"}`, Bedrock / Strands
    `{"text"}`) as its text; any other value as it is. For tool spans' results and tool messages alike."""
    if type(value) is list and value:
        texts = []
        for block in value:
            if type(block) is not dict or not isinstance(block.get("text"), str):
                return value
            if len(block) != (2 if block.get("type") == "text" else 1):
                return value
            texts.append(block["text"])
        return "\n".join(texts)
    return value


def _provider_block(part: Mapping[str, Any]) -> str | dict[str, Any] | None:
    """A provider's own content block as text or as an OTel part: Bedrock Converse / Strands (`{"text": ...}`,
    `{"toolUse": ...}`, `{"toolResult": ...}`), Gemini (`{"function_call": ...}`, `{"function_response": ...}`) and
    Anthropic (`tool_use`, `tool_result`). None: not one of them."""
    kind = part.get("type")
    if kind == "tool-call":  # Vercel AI SDK
        arguments = part["input"] if "input" in part else part.get("args")
        return {"type": "tool_call", "id": part.get("toolCallId"), "name": part.get("toolName"), "arguments": arguments}
    if kind == "tool-result":
        return {
            "type": "tool_call_response",
            "id": part.get("toolCallId"),
            "name": part.get("toolName"),
            "response": _ai_tool_output(part),
        }
    if kind == "tool_use":  # Anthropic
        return {"type": "tool_call", "id": part.get("id"), "name": part.get("name"), "arguments": part.get("input")}
    if kind == "tool_result":
        return {"type": "tool_call_response", "id": part.get("tool_use_id"), "response": part.get("content")}
    if kind is None:
        text = part.get("text")
        if isinstance(text, str):
            return text
        call = part.get("function_call") or part.get("functionCall")  # Gemini
        if isinstance(call, dict):
            return {"type": "tool_call", "id": call.get("id"), "name": call.get("name"), "arguments": call.get("args")}
        response = part.get("function_response") or part.get("functionResponse")
        if isinstance(response, dict):
            return {
                "type": "tool_call_response",
                "id": response.get("id"),
                "name": response.get("name"),
                "response": response.get("response"),
            }
        use = part.get("toolUse")
        if isinstance(use, dict):
            return {
                "type": "tool_call",
                "id": use.get("toolUseId"),
                "name": use.get("name"),
                "arguments": use.get("input"),
            }
        result = part.get("toolResult")
        if isinstance(result, dict):
            return {"type": "tool_call_response", "id": result.get("toolUseId"), "response": result.get("content")}
    return None


def _ai_tool_output(part: Mapping[str, Any]) -> Any:
    """The value of an AI SDK tool result: `output` is `{type: text|json|error-text|error-json|content, value}`
    (v5+); `result` the value itself (v4)."""
    output = part.get("output")
    if isinstance(output, dict) and "type" in output and "value" in output:
        return output["value"]
    return output if "output" in part else part.get("result")


def run_prompt_messages(value: object) -> list[Message] | None:
    """A run's prompt recorded as one value, as messages: the Vercel AI SDK's `ai.prompt` (`{system?, prompt: text |
    messages}` or `{system?, messages}`) and Mastra's agent input (a text, a message, a list of texts or messages).
    None for any other shape (the caller keeps the raw value)."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if isinstance(value, list):
        if all(isinstance(item, str) for item in value):
            return [{"role": "user", "content": item} for item in value]
        return normalize_messages(value) if all(isinstance(item, dict) for item in value) else None
    if not isinstance(value, dict):
        return None
    if "role" in value:
        return [normalize_message(value)]
    if value.keys().isdisjoint(("system", "prompt", "messages")):
        return None
    messages: list[Message] = []
    system = value.get("system")
    if isinstance(system, str):
        messages.append({"role": "system", "content": system})
    elif system is not None:  # a system message, or a list of them (AI SDK 6)
        messages.extend(normalize_messages(system if isinstance(system, list) else [system]) or ())
    for key in ("prompt", "messages"):
        inner = value.get(key)
        if isinstance(inner, str):
            messages.append({"role": "user", "content": inner})
        elif isinstance(inner, list):
            messages.extend(normalize_messages(inner) or ())
    return messages


def normalize_message(raw: object) -> Message:
    """One message of any JSON shape above."""
    if type(raw) is dict and "lc" not in raw and "data" not in raw:
        # The common shapes first, without the general walk's calls and lists: one text part (OTel GenAI), or a
        # string content (OpenAI). They build what the general path below builds for them.
        role = raw.get("role")
        if role is None or type(role) is str:
            parts = raw.get("parts")
            if type(parts) is list:
                if len(parts) == 1:
                    part = parts[0]
                    if type(part) is dict and part.get("type") in _TEXT_PARTS:
                        content = part["content"] if "content" in part else part.get("text")
                        if type(content) is str:
                            return _with_extras({"role": role, "content": content}, raw)
            elif parts is None and "tool_calls" not in raw and "tool_call_id" not in raw:
                content = raw.get("content")
                if content is None or type(content) is str:
                    return _with_extras({"role": role, "content": content}, raw)
    if not isinstance(raw, dict):
        return {"role": None, "content": _as_text(raw)}
    if "lc" in raw or ("data" in raw and "type" in raw and isinstance(raw.get("data"), dict)):
        converted = unwrap_langchain(raw)
        if isinstance(converted, dict) and "role" in converted:
            return converted
    role = raw.get("role")
    parts = raw.get("parts")
    if isinstance(parts, list):
        message = _from_parts(role, parts)
    else:
        content = raw.get("content")
        if isinstance(content, list):
            # OpenAI multimodal content: a list of typed parts
            message = _from_parts(role, content)
        else:
            message = {"role": _name(role), "content": _as_text(content)}
        calls = raw.get("tool_calls")
        if isinstance(calls, list) and calls:
            message["tool_calls"] = [normalize_tool_call(c) for c in calls if isinstance(c, dict)]
        if raw.get("tool_call_id") is not None:
            message["tool_call_id"] = _name(raw["tool_call_id"])
    return _with_extras(message, raw)


def _with_extras(message: Message, raw: dict[str, Any]) -> Message:
    """The message's name and finish reason, from the raw message."""
    if raw.get("name") is not None and "name" not in message:
        message["name"] = _name(raw["name"])
    finish = raw.get("finish_reason")
    if finish:
        message["finish_reason"] = _name(finish)
    return message


def normalize_messages(value: object) -> list[Message] | None:
    """A JSON list of messages (already parsed); None when `value` is not a list (the caller keeps it raw)."""
    if isinstance(value, dict):
        # `{"messages": [...]}` (LangChain prompt values and request bodies)
        inner = value.get("messages")
        if isinstance(inner, list):
            value = inner
        else:
            return None
    if not isinstance(value, list):
        return None
    # LangChain batches are a list of conversations: one conversation is what a single call sent.
    if len(value) == 1 and isinstance(value[0], list):
        value = value[0]
    if type(value) is list:
        messages = _parts_messages(value)
        if messages is not None:
            return messages
    return [normalize_message(m) for m in value]


def _parts_messages(value: list[Any]) -> list[Message] | None:
    """The OTel GenAI shape, `[{role, parts: [text | tool_call parts], finish_reason?, name?}]`, in one loop: what
    `normalize_message` builds for each message, without its per-message and per-part calls. None as soon as any
    message or part is another shape (a LangChain serialisation, a role that is not text, a part that is not a text
    part of text or a plain tool call): the caller then takes the general walk over the whole list, and this
    loop's half-built messages are dropped (it changes nothing it was given).

    Ordered for the common case (a text role, one text part whose `content` is a string, a message of `role` and
    `parts` only): each test below that the common case passes costs one or two operations, and the rarer readings
    (`text` instead of `content`, the other text part types, a message's name and finish reason) run only when a
    cheaper test says they may apply."""
    out: list[Message] = []
    for raw in value:
        if type(raw) is not dict:
            return None
        parts = raw.get("parts")
        role = raw.get("role")
        if type(parts) is not list:
            return None
        if type(role) is str and len(raw) == 2:
            # `role` and `parts` only (no LangChain keys, name or finish reason); most have one text part
            if len(parts) == 1:
                part = parts[0]
                if type(part) is dict and part.get("type") == "text":
                    content = part.get("content")
                    if type(content) is str:
                        out.append({"role": role, "content": content})
                        continue
        elif (role is not None and type(role) is not str) or "lc" in raw or "data" in raw:
            return None
        text: str | None = None  # the one text part's content (most messages), or the texts joined below
        texts: list[str] | None = None
        calls: list[dict[str, Any]] | None = None
        for part in parts:
            if type(part) is not dict:
                return None
            kind = part.get("type")
            if type(kind) is not str:
                return None
            if kind in _TEXT_PARTS:
                content = part.get("content")
                if type(content) is not str:
                    if "content" in part:  # `content` there and not a string: the general walk's reading
                        return None
                    content = part.get("text")
                    if type(content) is not str:
                        return None
                if text is None:
                    text = content
                elif texts is None:
                    texts = [text, content]
                else:
                    texts.append(content)
            elif kind == "tool_call" and "function" not in part:
                call_id = part.get("id")
                name = part.get("name")
                if (call_id is not None and type(call_id) is not str) or (name is not None and type(name) is not str):
                    return None
                arguments = part["arguments"] if "arguments" in part else part.get("args")
                call = {"id": call_id, "name": name, "arguments": parse_json_maybe(arguments)}
                if calls is None:
                    calls = [call]
                else:
                    calls.append(call)
            else:
                return None
        if texts is not None:
            text = "\n".join(texts)  # two or more texts: never empty-joined to "" (`_from_parts`'s `or None`)
        message: Message = {"role": role, "content": text}
        if calls is not None:
            message["tool_calls"] = calls
        if role is None or len(raw) != 2:  # more than `role` and `parts`: a name or a finish reason may be there
            name = raw.get("name")  # `_with_extras`, inline
            if name is not None:
                message["name"] = _name(name)
            finish = raw.get("finish_reason")
            if finish:
                message["finish_reason"] = finish if type(finish) is str else _name(finish)
        out.append(message)
    return out


def message_list(raw: object) -> Any:
    """`normalize_messages(parse_json_maybe(raw))`, or the parsed value when it is not messages: what a builder puts
    for a message attribute. A JSON array in a string (the OTel GenAI attributes) is parsed as `parse_json_maybe`
    parses it (pydantic-core, then the stdlib for what it refuses, else the raw string) and goes straight to the
    one-loop path, without the calls between them; every other value takes those calls."""
    if type(raw) is str and raw[:1] == "[":
        try:
            parsed = _from_json(raw, allow_inf_nan=False)  # `values._decode`'s first step
        except (ValueError, RecursionError):
            parsed = parse_json_maybe(raw)  # the stdlib's reading, or the raw string: as parse_json_maybe reads it
        if type(parsed) is list:
            messages = _parts_messages(parsed)  # normalize_messages' first step for a list (a batch gives None)
            if messages is not None:
                return messages
    else:
        parsed = parse_json_maybe(raw)
    messages = normalize_messages(parsed)
    return messages if messages is not None else parsed


_from_json = pydantic_core.from_json


def system_message(instructions: object) -> Message | None:
    """`gen_ai.system_instructions` (a list of parts, or a string) as a leading system message."""
    if isinstance(instructions, str):
        return {"role": "system", "content": instructions}
    if isinstance(instructions, list) and instructions:
        return _from_parts("system", instructions)
    return None


def from_flattened(groups: Mapping[int, Mapping[str, Any]], prefix: str) -> list[Message]:
    """Messages from flattened attributes grouped by index: `{0: {"message.role": ..., ...}}`.

    `prefix` is `message.` for OpenInference and `` for Traceloop's legacy `gen_ai.prompt.{i}.*`.
    """
    messages: list[Message] = []
    role_key, content_key = prefix + "role", prefix + "content"
    calls_prefix, contents_prefix = prefix + "tool_calls.", prefix + "contents."
    for index in sorted(groups):
        fields = groups[index]
        message: Message = {"role": _name(fields.get(role_key)), "content": _as_text(fields.get(content_key))}
        calls: dict[int, dict[str, Any]] = {}
        contents: dict[int, dict[str, Any]] = {}
        for key, value in fields.items():
            if key.startswith(calls_prefix):
                number, _, rest = key[len(calls_prefix) :].partition(".")
                if number.isdigit():
                    # OpenInference: tool_call.id / tool_call.function.name|arguments; Traceloop: id / name / arguments
                    field = rest.removeprefix("tool_call.").removeprefix("function.")
                    calls.setdefault(int(number), {})[field] = value
            elif key.startswith(contents_prefix):
                number, _, rest = key[len(contents_prefix) :].partition(".")
                if number.isdigit():
                    contents.setdefault(int(number), {})[rest.removeprefix("message_content.")] = value
        if calls:
            message["tool_calls"] = [
                {
                    "id": _name(c.get("id")),
                    "name": _name(c.get("name")),
                    "arguments": parse_json_maybe(c.get("arguments")),
                }
                for _, c in sorted(calls.items())
            ]
        if contents:
            parts: list[Any] = []
            for _, c in sorted(contents.items()):
                kind = c.get("type")
                if kind == "text" and message["content"] is None:
                    message["content"] = _as_text(c.get("text"))
                elif kind == "text":
                    message["content"] = f"{message['content']}\n{c.get('text')}"
                elif kind == "image":
                    parts.append({"type": "uri", "modality": "image", "uri": c.get("image.image.url")})
                elif kind == "tool_use" or kind == "tool_call":
                    # OpenInference Anthropic repeats each tool call as a content block (`tool_call.id`,
                    # `tool_call.function.name|arguments`): a call, once, not a raw part.
                    _add_content_tool_call(message, c)
                else:
                    parts.append(c)
            if parts:
                message["parts"] = parts
        for source, target in ((prefix + "tool_call_id", "tool_call_id"), (prefix + "name", "name")):
            if fields.get(source) is not None:
                message[target] = _name(fields[source])
        finish = fields.get(prefix + "finish_reason")
        if finish:
            message["finish_reason"] = _name(finish)
        messages.append(message)
    return messages


def _add_content_tool_call(message: Message, content: Mapping[str, Any]) -> None:
    call = {key.removeprefix("tool_call.").removeprefix("function."): value for key, value in content.items()}
    calls = message.setdefault("tool_calls", [])
    if call.get("id") is not None and any(known["id"] == call["id"] for known in calls):
        return
    calls.append(
        {
            "id": _name(call.get("id")),
            "name": _name(call.get("name")),
            "arguments": parse_json_maybe(call.get("arguments")),
        }
    )


def unwrap_langchain(value: Any, depth: int = 0) -> Any:
    """LangChain's serialised objects as plain data: messages in the shared shape, other objects as their kwargs."""
    if depth > _MAX_DEPTH:
        return value
    if isinstance(value, dict):
        if value.get("lc") == 1 and value.get("type") == "constructor":
            ident = value.get("id")
            cls = ident[-1] if isinstance(ident, list) and ident else ""
            raw_kwargs = value.get("kwargs")
            kwargs: dict[str, Any] = raw_kwargs if isinstance(raw_kwargs, dict) else {}
            if isinstance(cls, str) and cls.endswith("Message"):
                return _langchain_message(kwargs, cls)
            return {k: unwrap_langchain(v, depth + 1) for k, v in kwargs.items()}
        data = value.get("data")
        if isinstance(data, dict) and isinstance(value.get("type"), str) and "content" in data:
            return _langchain_message(data, "")  # messages_to_dict: {"type": "ai", "data": {...}}
        return {k: unwrap_langchain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap_langchain(v, depth + 1) for v in value]
    return value


def _langchain_message(fields: Mapping[str, Any], cls: str) -> Message:
    kind = fields.get("type") or cls.removesuffix("MessageChunk").removesuffix("Message").lower()
    role = _LANGCHAIN_ROLES.get(str(kind), str(kind))  # always a string
    content = fields.get("content")
    message: Message = (
        _from_parts(role, content) if isinstance(content, list) else {"role": role, "content": _as_text(content)}
    )
    calls = fields.get("tool_calls")
    if isinstance(calls, list) and calls:
        message["tool_calls"] = [normalize_tool_call(c) for c in calls if isinstance(c, dict)]
    if fields.get("tool_call_id") is not None:
        message["tool_call_id"] = _name(fields["tool_call_id"])
    if fields.get("name") is not None:
        message["name"] = _name(fields["name"])
    return message
