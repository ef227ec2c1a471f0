"""Typed payload fields per span type, filled through first-hit-wins field chains. Pure functions.

The chains are A6 of shared/design/semantic-conventions.md. Every attribute a chain uses is "consumed" and does
not appear again in `metadata`; so is a lower-priority attribute of the same chain that holds the very same value
(`gen_ai.system` next to an equal `gen_ai.provider.name`, Traceloop's `gen_ai.task.input` next to an equal
`traceloop.entity.input`). An attribute with a different value stays in `metadata`, so nothing is lost.

Layout (one name per meaning across all conventions):
- payload top level: typed fields (`model`, `provider`, `operation`, `params`, `tool_definitions`, `tool_name`,
  `tool_call_id`, `agent_name`, `query`-less identifiers, `session_id`, `user_id`, ...);
- `payload.inputs`: what went in (`messages`, `arguments`, `query`, `texts`, or the raw `value`);
- `result_payload.outputs`: what came out (`messages`, `result`, `documents`, or the raw `value`);
- result_payload top level: response facts (`response_model`, `response_id`, `finish_reasons`, `ttft_ms`, ...).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from opentelemetry.sdk.trace import Event, ReadableSpan

from prefactor_otel.mapping import conventions as c
from prefactor_otel.mapping.messages import (
    Message,
    from_flattened,
    normalize_message,
    normalize_messages,
    system_message,
    unwrap_langchain,
)
from prefactor_otel.mapping.values import json_safe, parse_json_loose, parse_json_maybe

# ---------------------------------------------------------------------------------------------- chains (A6)

MODEL = (
    "gen_ai.request.model",
    "llm.request.model_name",
    "llm.model_name",
    "embedding.model_name",
    "langfuse.observation.model.name",
    "mlflow.llm.model",
    "langsmith.metadata.ls_model_name",
    "model_name",  # pydantic-ai agent run
)
RESPONSE_MODEL = ("gen_ai.response.model", "llm.response.model_name")
PROVIDER = (
    "gen_ai.provider.name",
    "gen_ai.system",
    "llm.provider",
    "llm.system",
    "mlflow.llm.provider",
    "langsmith.metadata.ls_provider",
)
PROMPT_TOKENS = ("gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens", "llm.token_count.prompt")
COMPLETION_TOKENS = ("gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens", "llm.token_count.completion")
TOTAL_TOKENS = ("gen_ai.usage.total_tokens", "llm.usage.total_tokens", "llm.token_count.total")
AGGREGATED_PROMPT = ("gen_ai.aggregated_usage.input_tokens",)
AGGREGATED_COMPLETION = ("gen_ai.aggregated_usage.output_tokens",)
CACHE_READ_TOKENS = (
    "gen_ai.usage.cache_read.input_tokens",
    "gen_ai.usage.cache_read_input_tokens",
    "llm.token_count.prompt_details.cache_read",
)
CACHE_WRITE_TOKENS = (
    "gen_ai.usage.cache_creation.input_tokens",
    "gen_ai.usage.cache_creation_input_tokens",
    "llm.token_count.prompt_details.cache_write",
)
REASONING_TOKENS = (
    "gen_ai.usage.reasoning.output_tokens",
    "gen_ai.usage.reasoning_tokens",
    "llm.token_count.completion_details.reasoning",
)
USAGE_JSON = ("langfuse.observation.usage_details", "mlflow.chat.tokenUsage")
SESSION = (
    "gen_ai.conversation.id",
    "session.id",
    "traceloop.association.properties.session_id",
    "langsmith.trace.session_id",
    "langfuse.session.id",
    "gcp.vertex.agent.session_id",
)
USER = ("user.id", "enduser.id", "traceloop.association.properties.user_id", "langfuse.user.id")
TAGS = ("tag.tags", "langfuse.trace.tags", "langsmith.span.tags")
GENERIC_INPUT = (
    "input.value",
    "traceloop.entity.input",
    "gen_ai.task.input",
    "gen_ai.prompt",  # LangSmith: JSON of the run's inputs
    "mlflow.spanInputs",
    "langfuse.observation.input",
    "ai.prompt",
)
GENERIC_OUTPUT = (
    "output.value",
    "traceloop.entity.output",
    "gen_ai.task.output",
    "gen_ai.completion",  # LangSmith: JSON of the run's outputs
    "mlflow.spanOutputs",
    "langfuse.observation.output",
    "ai.response",
)
TOOL_NAME = ("gen_ai.tool.name", "tool.name", "traceloop.entity.name")
TOOL_CALL_ID = ("gen_ai.tool.call.id", "tool_call.id")
TOOL_ARGUMENTS = (
    "gen_ai.tool.call.arguments",
    "tool_arguments",  # pydantic-ai formats 1/2
    "gcp.vertex.agent.tool_call_args",
    *GENERIC_INPUT,
)
TOOL_RESULT = ("gen_ai.tool.call.result", "tool_response", "gcp.vertex.agent.tool_response", *GENERIC_OUTPUT)
AGENT_NAME = ("gen_ai.agent.name", "agent.name", "agent_name", "traceloop.entity.name")
# gen_ai.request.* -> params
REQUEST_PARAMS = (
    ("gen_ai.request.temperature", "temperature"),
    ("gen_ai.request.max_tokens", "max_tokens"),
    ("gen_ai.request.top_p", "top_p"),
    ("gen_ai.request.top_k", "top_k"),
    ("gen_ai.request.stop_sequences", "stop"),
    ("gen_ai.request.seed", "seed"),
    ("gen_ai.request.frequency_penalty", "frequency_penalty"),
    ("gen_ai.request.presence_penalty", "presence_penalty"),
    ("gen_ai.request.choice.count", "n"),
    ("gen_ai.request.encoding_formats", "encoding_formats"),
    ("gen_ai.request.reasoning_effort", "reasoning_effort"),
    ("gen_ai.is_streaming", "stream"),
    ("llm.is_streaming", "stream"),
)
INVOCATION_PARAMS = (
    "llm.invocation_parameters",
    "embedding.invocation_parameters",
    "langfuse.observation.model.parameters",
)
UNKNOWN_MODEL = "unknown"
# Request-body keys that are not parameters (they have their own fields).
_NOT_PARAMS = frozenset({"model", "messages", "input", "tools", "functions", "prompt", "_type", "responses"})
_TTFT_EVENTS = frozenset(
    {"First Token Stream Event", "gen_ai.content.completion.chunk", "llm.content.completion.chunk", "first_token"}
)

# Flattened attribute families, grouped by index: prefix -> {index: {rest: value}}.
FAMILIES = (
    "llm.input_messages.",
    "llm.output_messages.",
    "gen_ai.prompt.",
    "gen_ai.completion.",
    "retrieval.documents.",
    "reranker.output_documents.",
    "reranker.input_documents.",
    "embedding.embeddings.",
    "llm.tools.",
    "llm.request.functions.",
    "llm.prompts.",
)


class Context:
    """One span's (redacted) attributes and events, what the chains consumed, and lazily grouped flattened
    families."""

    __slots__ = ("_families", "attributes", "consumed", "events", "invalid_counts", "name")

    def __init__(self, attributes: dict[str, object], events: Sequence[Event] = (), name: str = "") -> None:
        self.attributes = attributes
        self.events = events  # the span's events, read once by the caller (each read of span.events copies them)
        self.name = name  # the span's name, redacted: builders that derive a field from it read this, not span.name
        self.consumed: set[str] = set()
        self.invalid_counts: list[str] = []  # numeric attributes a count chain skipped (NaN, negative, ...)
        self._families: dict[str, dict[int, dict[str, str]]] | None = None

    def first(self, keys: Sequence[str]) -> tuple[str, object] | None:
        """First present, non-empty attribute of the chain; later duplicates of its value are consumed too."""
        attributes = self.attributes
        if attributes.keys().isdisjoint(keys):
            return None  # most chains miss on most spans: one C-level check instead of a Python loop
        for index, key in enumerate(keys):
            value = attributes.get(key)
            if value is None or value == "":
                continue
            self.consumed.add(key)
            rest = keys[index + 1 :]
            if rest and not attributes.keys().isdisjoint(rest):
                for other in rest:
                    if other in attributes and attributes[other] == value:
                        self.consumed.add(other)
            return key, value
        return None

    def value(self, keys: Sequence[str]) -> Any:
        hit = self.first(keys)
        return json_safe(hit[1]) if hit is not None else None

    def parse(self, key: str, value: object) -> Any:
        return parse_json_loose(value) if key.startswith("mlflow.") else parse_json_maybe(value)

    def first_json(self, keys: Sequence[str]) -> tuple[str, Any] | None:
        hit = self.first(keys)
        return (hit[0], self.parse(*hit)) if hit is not None else None

    def number(self, keys: Sequence[str]) -> int | None:
        """First attribute of the chain that is a count. A number that is not one (NaN, infinite, negative,
        fractional) is skipped, left in metadata as it came and named in `invalid_counts`: one bad count must not
        cost the span its other typed fields."""
        attributes = self.attributes
        if attributes.keys().isdisjoint(keys):
            return None
        for key in keys:
            value = attributes.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                count = _count(value)
                if count is None:
                    self.invalid_counts.append(key)
                    continue
                self.consumed.add(key)
                return count
        return None

    def family(self, prefix: str) -> dict[int, dict[str, Any]] | None:
        """Consume and return one flattened family (`llm.input_messages.` -> {0: {"message.role": ...}})."""
        if self._families is None:
            self._families = _family_index(tuple(self.attributes))
        groups = self._families.get(prefix)
        if not groups:
            return None
        attributes = self.attributes
        out: dict[int, dict[str, Any]] = {}
        for index, fields in groups.items():
            entry: dict[str, Any] = {}
            for rest, key in fields.items():
                self.consumed.add(key)
                entry[rest] = json_safe(attributes[key])
            out[index] = entry
        return out

    def consume(self, *keys: str) -> None:
        for key in keys:
            if key in self.attributes:
                self.consumed.add(key)


def _family_index(keys: tuple[str, ...]) -> dict[str, dict[int, dict[str, str]]]:
    """Flattened families by attribute name alone: `{"llm.input_messages.": {0: {"message.role": key}}}`.

    Spans of one instrumentation share their attribute names, so the index is computed once per name set (a
    bounded cache) rather than by testing every name of every span against every family prefix.
    """
    cached = _FAMILY_INDEXES.get(keys)
    if cached is not None:
        return cached
    index: dict[str, dict[int, dict[str, str]]] = {}
    for key in keys:
        if key.startswith(FAMILIES):
            for family in FAMILIES:
                if key.startswith(family):
                    number, _, rest = key[len(family) :].partition(".")
                    if number.isdigit():
                        index.setdefault(family, {}).setdefault(int(number), {})[rest] = key
                    break
    if len(keys) <= _FAMILY_INDEX_MAX_NAMES:  # long flattened spans vary (one name set per message count): not kept
        if len(_FAMILY_INDEXES) >= _FAMILY_INDEX_CACHE_SIZE:
            _FAMILY_INDEXES.clear()
        _FAMILY_INDEXES[keys] = index
    return index


_FAMILY_INDEX_CACHE_SIZE = 128
_FAMILY_INDEX_MAX_NAMES = 64
_FAMILY_INDEXES: dict[tuple[str, ...], dict[str, dict[int, dict[str, str]]]] = {}


class Typed:
    """The typed parts of one span's payloads."""

    __slots__ = ("fields", "inputs", "outputs", "result")

    def __init__(self) -> None:
        self.fields: dict[str, Any] = {}  # payload top level
        self.inputs: dict[str, Any] = {}
        self.outputs: dict[str, Any] = {}
        self.result: dict[str, Any] = {}  # result_payload top level

    def put(self, target: dict[str, Any], name: str, value: Any) -> None:
        if value is not None and value != "" and value != [] and value != {}:
            target[name] = value


# ---------------------------------------------------------------------------------------------- helpers


def _has_langchain_serialisation(raw: object) -> bool:
    return isinstance(raw, str) and ('"lc": 1' in raw or '"lc":1' in raw or '"data": {' in raw)


_TRACELOOP_ENVELOPES = frozenset(
    {"traceloop.entity.input", "gen_ai.task.input", "traceloop.entity.output", "gen_ai.task.output"}
)


def _unwrap_envelope(key: str, parsed: Any, raw: object) -> Any:
    """Traceloop wraps entity I/O as {"inputs": x, "tags":..., "kwargs":...} / {"outputs": x, ...}."""
    if key in _TRACELOOP_ENVELOPES and isinstance(parsed, dict):
        for inner in ("inputs", "outputs", "output"):
            if inner in parsed:
                parsed = parsed[inner]
                break
    if _has_langchain_serialisation(raw):
        parsed = unwrap_langchain(parsed)
    return parsed


def _generic(ctx: Context, keys: Sequence[str]) -> tuple[str, Any] | None:
    hit = ctx.first(keys)
    if hit is None:
        return None
    key, raw = hit
    if key == "input.value":
        ctx.consume("input.mime_type")
    elif key == "output.value":
        ctx.consume("output.mime_type")
    return key, _unwrap_envelope(key, ctx.parse(key, raw), raw)


def _drop_raw_io(ctx: Context, *, inputs: bool, outputs: bool) -> None:
    # OpenInference LLM / embedding spans repeat the whole request and response in input.value / output.value;
    # once the structured attributes are mapped, the raw copies are redundant (and can be large).
    if inputs:
        ctx.consume("input.value", "input.mime_type")
    if outputs:
        ctx.consume("output.value", "output.mime_type")


def _as_list(value: Any) -> list[Any] | None:
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def _tags(ctx: Context) -> list[Any] | None:
    hit = ctx.first(TAGS)
    if hit is None:
        return None
    value = parse_json_maybe(hit[1])
    if isinstance(value, str):
        return [t.strip() for t in value.split(",") if t.strip()]
    return _as_list(value)


def _messages_from_response(value: Any) -> list[Message] | None:
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


def _input_messages(ctx: Context) -> list[Message] | Any:
    """Input messages through the chain; a raw value when only an unparseable fallback exists."""
    system = None
    hit = ctx.first_json(("gen_ai.system_instructions",))
    if hit is not None:
        system = system_message(hit[1])
    messages: list[Message] | None = None
    raw_fallback: Any = None
    hit = ctx.first_json(("gen_ai.input.messages",))
    if hit is not None:
        messages = normalize_messages(hit[1])
        if messages is None:
            raw_fallback = hit[1]
    if messages is None and raw_fallback is None:
        groups = ctx.family("llm.input_messages.")
        if groups is not None:
            messages = from_flattened(groups, "message.")
            _drop_raw_io(ctx, inputs=True, outputs=False)
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
        generic = _generic(ctx, GENERIC_INPUT)
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


def _output_messages(ctx: Context) -> list[Message] | Any:
    hit = ctx.first_json(("gen_ai.output.messages",))
    if hit is not None:
        messages = normalize_messages(hit[1])
        return messages if messages is not None else hit[1]
    groups = ctx.family("llm.output_messages.")
    if groups is not None:
        _drop_raw_io(ctx, inputs=False, outputs=True)
        return from_flattened(groups, "message.")
    groups = ctx.family("gen_ai.completion.")
    if groups is not None:
        return from_flattened(groups, "")
    generic = _generic(ctx, GENERIC_OUTPUT)
    if generic is not None:
        messages = _messages_from_response(generic[1])
        return messages if messages is not None else generic[1]
    return None


def _params(ctx: Context, typed: Typed) -> dict[str, Any] | None:
    params: dict[str, Any] = {}
    attributes = ctx.attributes
    for key, name in REQUEST_PARAMS:
        if key in attributes and name not in params:
            ctx.consumed.add(key)
            value = json_safe(attributes[key])
            if value is not None and value != []:
                params[name] = value
    hit = ctx.first_json(INVOCATION_PARAMS)
    if hit is not None and isinstance(hit[1], dict):
        invocation = hit[1]
        for name, value in invocation.items():
            if name not in _NOT_PARAMS and name not in params and value is not None:
                params[name] = value
        # OpenInference names the model only in the response; a failed call has it in its request only.
        if "model" not in typed.fields and isinstance(invocation.get("model"), str):
            typed.fields["model"] = invocation["model"]
    return params or None


def _tool_definition(raw: Any) -> Any:
    """One tool definition as `{type, name, description, parameters}` (the OTel GenAI shape); OpenAI's
    `{"type": "function", "function": {...}}` and OpenInference's `tool.*` fields are flattened into it."""
    if not isinstance(raw, dict):
        return raw
    function = raw.get("function")
    source = function if isinstance(function, dict) else raw
    name = source.get("name", source.get("tool.name"))
    definition = {
        "type": raw.get("type", "function"),
        "name": name if name is None or isinstance(name, str) else str(name),
        "description": source.get("description", source.get("tool.description")),
        "parameters": parse_json_maybe(source.get("parameters", source.get("tool.parameters"))),
    }
    return {k: v for k, v in definition.items() if v is not None}


def _tool_definitions(ctx: Context) -> Any:
    hit = ctx.first_json(("gen_ai.tool.definitions", "mlflow.chat.tools"))
    if hit is not None:
        return [_tool_definition(d) for d in hit[1]] if isinstance(hit[1], list) else hit[1]
    for family in ("llm.tools.", "llm.request.functions."):
        groups = ctx.family(family)
        if groups is not None:
            definitions = []
            for _, fields in sorted(groups.items()):
                schema = fields.get("tool.json_schema")
                definitions.append(_tool_definition(parse_json_maybe(schema) if schema is not None else fields))
            return definitions
    return None


def _finish_reasons(ctx: Context, output_messages: Any) -> list[Any] | None:
    hit = ctx.first(("gen_ai.response.finish_reasons", "llm.finish_reason"))
    if hit is not None:
        return _as_list(json_safe(hit[1]))
    if isinstance(output_messages, list):
        reasons = [m["finish_reason"] for m in output_messages if isinstance(m, dict) and m.get("finish_reason")]
        return reasons or None
    return None


def _ttft_ms(ctx: Context, span: ReadableSpan) -> float | None:
    start = span.start_time
    if start is None:
        return None
    for event in ctx.events:
        if event.name in _TTFT_EVENTS:
            return round((event.timestamp - start) / 1e6, 3)
    hit = ctx.first(("langfuse.observation.completion_start_time",))
    if hit is not None and isinstance(hit[1], str):
        try:
            first = datetime.fromisoformat(hit[1].strip('"').replace("Z", "+00:00")).timestamp() * 1e9
        except ValueError:
            return None
        return round((first - start) / 1e6, 3)
    return None


def _strip_prefix(name: str, prefix: str, suffix: str) -> str | None:
    if name.startswith(prefix):
        return name[len(prefix) :] or None
    if name.endswith(suffix):
        return name[: -len(suffix)] or None
    return None


# ---------------------------------------------------------------------------------------------- per type


def _common(ctx: Context, typed: Typed, operation: str | None) -> None:
    typed.put(typed.fields, "operation", operation)
    typed.put(typed.fields, "session_id", ctx.value(SESSION))
    typed.put(typed.fields, "user_id", ctx.value(USER))
    typed.put(typed.fields, "tags", _tags(ctx))


def _model_fields(ctx: Context, typed: Typed) -> None:
    hit = ctx.first(MODEL)
    if hit is not None and hit[1] == UNKNOWN_MODEL:
        # Traceloop's placeholder for a model without a name: not a model, left in metadata as it came.
        ctx.consumed.discard(hit[0])
        ctx.consumed.discard("gen_ai.response.model")
        hit = None
    model = json_safe(hit[1]) if hit is not None else None
    typed.put(typed.fields, "model", model)
    typed.put(typed.fields, "provider", ctx.value(PROVIDER))
    response_model = ctx.value(RESPONSE_MODEL) if ctx.attributes.get("gen_ai.response.model") != UNKNOWN_MODEL else None
    if response_model is None and hit is not None and hit[0] == "llm.model_name":
        response_model = model  # OpenInference's llm.model_name is the model the response named
    typed.put(typed.result, "response_model", response_model)


def llm(ctx: Context, typed: Typed, span: ReadableSpan) -> None:
    _model_fields(ctx, typed)
    typed.put(typed.fields, "params", _params(ctx, typed))
    typed.put(typed.fields, "tool_definitions", _tool_definitions(ctx))
    typed.put(typed.inputs, "messages", _input_messages(ctx))
    output = _output_messages(ctx)
    typed.put(typed.outputs, "messages", output)
    typed.put(typed.result, "finish_reasons", _finish_reasons(ctx, output))
    typed.put(typed.result, "response_id", ctx.value(("gen_ai.response.id",)))
    typed.put(typed.result, "ttft_ms", _ttft_ms(ctx, span))


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


def tool(ctx: Context, typed: Typed, span: ReadableSpan) -> None:
    name = ctx.value(TOOL_NAME) or _strip_prefix(ctx.name, "execute_tool ", ".tool")
    typed.put(typed.fields, "tool_name", name)
    typed.put(typed.fields, "tool_call_id", ctx.value(TOOL_CALL_ID))
    typed.put(typed.fields, "tool_type", ctx.value(("gen_ai.tool.type",)))
    typed.put(typed.fields, "tool_description", ctx.value(("gen_ai.tool.description", "tool.description")))
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
        arguments = _unwrap_envelope(key, ctx.parse(key, raw), raw)
        typed.put(typed.inputs, "arguments", _unwrap_tool_arguments(arguments, typed))
    hit = ctx.first(TOOL_RESULT)
    if hit is not None:
        key, raw = hit
        if key == "output.value":
            ctx.consume("output.mime_type")
        result = _unwrap_envelope(key, ctx.parse(key, raw), raw)
        typed.put(typed.outputs, "result", _unwrap_tool_result(result, typed))


def agent(ctx: Context, typed: Typed, span: ReadableSpan) -> None:
    name = ctx.value(AGENT_NAME) or _strip_prefix(ctx.name, "invoke_agent ", ".agent") or ctx.name
    typed.put(typed.fields, "agent_name", name)
    typed.put(typed.fields, "agent_id", ctx.value(("gen_ai.agent.id", "graph.node.id")))
    typed.put(typed.fields, "agent_description", ctx.value(("gen_ai.agent.description",)))
    typed.put(typed.fields, "agent_version", ctx.value(("gen_ai.agent.version",)))
    conversation = ctx.attributes.get("gen_ai.conversation.id")
    if conversation is not None:
        typed.put(typed.fields, "conversation_id", json_safe(conversation))
    typed.put(typed.fields, "model", ctx.value(MODEL))
    typed.put(typed.fields, "provider", ctx.value(PROVIDER))
    # pydantic-ai: the whole conversation of the run (A6 puts it with the inputs), the final output separately.
    hit = ctx.first_json(("pydantic_ai.all_messages",))
    if hit is not None:
        system = None
        instructions = ctx.first_json(("gen_ai.system_instructions",))
        if instructions is not None:
            system = system_message(instructions[1])
        messages = normalize_messages(hit[1])
        if messages is not None and system is not None:
            messages = [system, *messages]
        typed.put(typed.inputs, "messages", messages if messages is not None else hit[1])
    else:
        generic = _generic(ctx, GENERIC_INPUT)
        if generic is not None:
            typed.put(typed.inputs, "value", generic[1])
        instructions = ctx.first_json(("gen_ai.system_instructions",))
        if instructions is not None:
            typed.put(typed.inputs, "system_instructions", instructions[1])
    hit = ctx.first_json(("final_result",))
    if hit is not None:
        typed.put(typed.outputs, "result", hit[1])
    else:
        generic = _generic(ctx, GENERIC_OUTPUT)
        if generic is not None:
            typed.put(typed.outputs, "value", generic[1])


def _document(raw: Mapping[str, Any], content_key: str = "content") -> dict[str, Any]:
    doc: dict[str, Any] = {"id": raw.get("id"), "content": raw.get(content_key)}
    if raw.get("score") is not None:
        doc["score"] = raw["score"]
    metadata = raw.get("metadata")
    if metadata is not None:
        doc["metadata"] = parse_json_maybe(metadata)
    return doc


def _documents_from_value(value: Any) -> list[dict[str, Any]] | None:
    if isinstance(value, dict):
        value = value.get("documents", value.get("output"))
    if not isinstance(value, list):
        return None
    docs = []
    for item in value:
        if isinstance(item, dict):
            content_key = "page_content" if "page_content" in item else "content"
            docs.append(_document(item, content_key))
        else:
            docs.append({"id": None, "content": json_safe(item)})
    return docs


def retriever(ctx: Context, typed: Typed, span: ReadableSpan) -> None:
    docs: list[dict[str, Any]] | None = None
    for family in ("retrieval.documents.", "reranker.output_documents."):
        groups = ctx.family(family)
        if groups is not None:
            docs = [
                _document({k.removeprefix("document."): v for k, v in g.items()}) for _, g in sorted(groups.items())
            ]
            _drop_raw_io(ctx, inputs=False, outputs=True)
            break
    if docs is None:
        hit = ctx.first_json(("gen_ai.retrieval.documents",))
        if hit is not None:
            docs = _documents_from_value(hit[1])
    output_value = None
    if docs is None:
        generic = _generic(ctx, GENERIC_OUTPUT)
        if generic is not None:
            docs = _documents_from_value(generic[1])
            if docs is None:
                output_value = generic[1]
    typed.put(typed.outputs, "documents", docs)
    typed.put(typed.outputs, "value", output_value)
    reranker_inputs = ctx.family("reranker.input_documents.")
    if reranker_inputs is not None:
        typed.put(
            typed.inputs,
            "documents",
            [
                _document({k.removeprefix("document."): v for k, v in g.items()})
                for _, g in sorted(reranker_inputs.items())
            ],
        )
    query = ctx.value(("gen_ai.retrieval.query.text", "reranker.query"))
    if query is None:
        generic = _generic(ctx, GENERIC_INPUT)
        if generic is not None:
            value = generic[1]
            query = value.get("query", value) if isinstance(value, dict) else value
    typed.put(typed.inputs, "query", query)
    typed.put(typed.fields, "top_k", ctx.value(("gen_ai.request.top_k", "reranker.top_k", "gen_ai.retrieval.top_k")))
    typed.put(typed.fields, "data_source_id", ctx.value(("gen_ai.data_source.id",)))
    typed.put(typed.fields, "model", ctx.value(("reranker.model_name",)))


def embedding(ctx: Context, typed: Typed, span: ReadableSpan) -> None:
    _model_fields(ctx, typed)
    typed.put(typed.fields, "params", _params(ctx, typed))
    texts: list[Any] | None = None
    vectors = 0
    dimension = ctx.number(("gen_ai.embeddings.dimension.count",))
    groups = ctx.family("embedding.embeddings.")
    if groups is not None:
        texts = []
        for _, g in sorted(groups.items()):
            if "embedding.text" in g:
                texts.append(g["embedding.text"])
            vector = g.get("embedding.vector")
            if isinstance(vector, list):
                vectors += 1  # the vectors themselves are bulk numbers nobody reads in a trace: counted, not sent
                dimension = dimension or len(vector)
        _drop_raw_io(ctx, inputs=bool(texts), outputs=True)
    if not texts:
        groups = ctx.family("gen_ai.prompt.")  # Traceloop legacy: one prompt per input text
        if groups is not None:
            texts = [g.get("content") for _, g in sorted(groups.items())]
    if not texts:
        hit = ctx.first_json(("gen_ai.input.messages",))  # Traceloop 0.62: inputs as user text messages
        if hit is not None:
            messages = normalize_messages(hit[1])
            texts = [m.get("content") for m in messages] if messages is not None else _as_list(hit[1])
    if not texts:
        generic = _generic(ctx, GENERIC_INPUT)
        if generic is not None:
            value = generic[1]
            texts = _as_list(value.get("input", value) if isinstance(value, dict) else value)
    typed.put(typed.inputs, "texts", texts)
    typed.put(typed.result, "dimension_count", dimension)
    if vectors:
        typed.put(typed.result, "vector_count", vectors)


def generic(ctx: Context, typed: Typed, span: ReadableSpan) -> None:
    """Chains, workflows, tasks, prompts, guardrails, and convention spans of no specific type."""
    generic_in = _generic(ctx, GENERIC_INPUT)
    if generic_in is not None:
        typed.put(typed.inputs, "value", generic_in[1])
    generic_out = _generic(ctx, GENERIC_OUTPUT)
    if generic_out is not None:
        typed.put(typed.outputs, "value", generic_out[1])
    if "traceloop.entity.name" in ctx.attributes:
        typed.put(typed.fields, "entity_name", ctx.value(("traceloop.entity.name",)))


BUILDERS = {
    c.LLM: llm,
    c.TOOL: tool,
    c.AGENT: agent,
    c.RETRIEVER: retriever,
    c.EMBEDDING: embedding,
    c.CHAIN: generic,
    c.SPAN: generic,
}


def build(ctx: Context, classification: c.Classification, span: ReadableSpan) -> Typed:
    typed = Typed()
    BUILDERS[classification.schema_name](ctx, typed, span)
    _common(ctx, typed, classification.operation)
    return typed


# ---------------------------------------------------------------------------------------------- token usage


def token_usage(ctx: Context) -> dict[str, Any] | None:
    """Prefactor's token_usage names: prompt_tokens / completion_tokens / total_tokens, plus detail counts."""
    if ctx.attributes.keys().isdisjoint(_USAGE_KEYS):
        return None  # tool, agent and chain spans mostly carry no usage at all
    prompt = ctx.number(PROMPT_TOKENS)
    completion = ctx.number(COMPLETION_TOKENS)
    total = ctx.number(TOTAL_TOKENS)
    aggregated = False
    if prompt is None and completion is None and total is None:
        hit = ctx.first_json(USAGE_JSON)
        if hit is not None and isinstance(hit[1], dict):
            usage = hit[1]
            prompt = _int(usage.get("input", usage.get("input_tokens")))
            completion = _int(usage.get("output", usage.get("output_tokens")))
            total = _int(usage.get("total", usage.get("total_tokens")))
        else:
            # pydantic-ai's agent run: usage of the whole run, summed over its model calls. Flagged so readers
            # do not add the children's usage a second time.
            prompt = ctx.number(AGGREGATED_PROMPT)
            completion = ctx.number(AGGREGATED_COMPLETION)
            aggregated = prompt is not None or completion is not None
    if prompt is None and completion is None and total is None:
        return None
    usage_out: dict[str, Any] = {
        "prompt_tokens": prompt or 0,
        "completion_tokens": completion or 0,
        "total_tokens": total if total is not None else (prompt or 0) + (completion or 0),
    }
    for name, keys in (
        ("cache_read_tokens", CACHE_READ_TOKENS),
        ("cache_write_tokens", CACHE_WRITE_TOKENS),
        ("reasoning_tokens", REASONING_TOKENS),
    ):
        value = ctx.number(keys)
        if value is not None:
            usage_out[name] = value
    if aggregated:
        usage_out["aggregated"] = True
    return usage_out


_USAGE_KEYS = frozenset(
    (
        *PROMPT_TOKENS,
        *COMPLETION_TOKENS,
        *TOTAL_TOKENS,
        *USAGE_JSON,
        *AGGREGATED_PROMPT,
        *AGGREGATED_COMPLETION,
    )
)


def _int(value: object) -> int | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _count(value)
    return None


def _count(value: float) -> int | None:
    """`value` as a token count, or None when it cannot be one: NaN, infinite, negative or fractional."""
    if type(value) is int:
        return value if value >= 0 else None
    if isinstance(value, float):
        # is_integer() is False for NaN and the infinities: int() of those raises.
        return int(value) if value.is_integer() and value >= 0 else None
    return int(value) if value >= 0 else None  # an int subclass
