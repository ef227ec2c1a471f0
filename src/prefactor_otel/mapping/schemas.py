"""The span types this exporter emits, registered with the agent schema version. Pure data.

Every schema name `classify` can return has an entry here (a test checks it), with a JSON Schema for the payload
(`params_schema`) and the result payload (`result_schema`) that names every field the mapping can emit (builders/,
usage.py), a title, a description and a Liquid template for the one-line summary. The schemas are permissive
where conventions vary (message parts, tool arguments, raw values are free-form) and exact where the mapping
decides (ids, status, token counts, the message shape). The schema version's external identifier is a hash of this
set, so an exporter release with new or changed schemas registers a new schema version by itself.
"""

from __future__ import annotations

import copy
import hashlib
import json
from functools import cache
from typing import Any

from prefactor_otel.mapping import conventions as c
from prefactor_otel.model.http import AgentSchemaVersionForRegister, SpanTypeSchemaForCreate

JsonSchema = dict[str, Any]

# Compact on purpose: the whole set travels with every agent-instance registration.
_STRING = {"type": "string"}
_NULLABLE_STRING = {"type": ["string", "null"]}
_ANY: JsonSchema = {}  # free-form JSON: tool arguments, raw values, message parts
_OBJECT = {"type": "object"}
_ARRAY = {"type": "array"}

# Every count is optional: a count the span did not carry is absent (or null), never an invented 0. Detail counts
# (cache_read_tokens, cache_write_tokens, reasoning_tokens) may stand alone. `aggregated: true` marks usage that is
# not a model call's own (a run's sum, a copy): readers summing a trace skip it (usage.py).
_OPTIONAL_COUNT = {"type": ["integer", "null"], "minimum": 0}
_TOKEN_USAGE: JsonSchema = {
    "type": ["object", "null"],
    "properties": {
        "prompt_tokens": _OPTIONAL_COUNT,
        "completion_tokens": _OPTIONAL_COUNT,
        "total_tokens": _OPTIONAL_COUNT,
        "cache_read_tokens": _OPTIONAL_COUNT,
        "cache_write_tokens": _OPTIONAL_COUNT,
        "reasoning_tokens": _OPTIONAL_COUNT,
        "aggregated": {"type": "boolean"},
    },
}
_ERROR: JsonSchema = {"type": ["object", "null"], "properties": {"error_type": _STRING}, "required": ["error_type"]}
# One message, the same shape for every convention.
MESSAGE: JsonSchema = {
    "type": "object",
    "properties": {
        "role": _NULLABLE_STRING,
        "content": _NULLABLE_STRING,
        "tool_calls": {"type": "array", "items": {"type": "object", "required": ["name", "arguments"]}},
    },
    "required": ["role", "content"],
}
# A list of messages, or the raw value when a convention's value did not parse as messages.
_MESSAGES: JsonSchema = {"items": MESSAGE}
_DOCUMENTS: JsonSchema = {
    "type": "array",
    "items": {"type": "object", "properties": {"score": {"type": ["number", "null"]}}, "required": ["content"]},
}

_NULLABLE_OBJECT = {"type": ["object", "null"]}
# Fields every payload may carry (the envelope, payload.py), plus the common typed fields. Token usage is
# described in full where it is the point of the span type (LLM, agent, embedding), by type elsewhere.
_ENVELOPE_PROPERTIES: dict[str, JsonSchema] = {
    "span_id": _STRING,
    "trace_id": _STRING,
    "parent_span_id": _NULLABLE_STRING,
    "name": _STRING,
    "kind": _STRING,
    "status": {"enum": ["active", "complete", "failed"]},  # "active": a live span, created at its start
    "operation": _STRING,
    "session_id": _ANY,
    "user_id": _ANY,
    "tags": _ARRAY,
    "metadata": _OBJECT,
    "token_usage": _NULLABLE_OBJECT,
    "error": _NULLABLE_OBJECT,
    "events": _ARRAY,
    "links": _ARRAY,
}
# `params_at_end`: of a live span (created at its start), the payload fields that changed or appeared after it
# started (attributes set later, events, usage), sent with its finish (docs/live-runs.md).
_RESULT_PROPERTIES: dict[str, JsonSchema] = {
    "token_usage": _NULLABLE_OBJECT,
    "error": _NULLABLE_OBJECT,
    "params_at_end": _OBJECT,
}
_GENERIC_VALUE = {"value": _ANY}


def _params_schema(typed: dict[str, JsonSchema], inputs: dict[str, JsonSchema]) -> JsonSchema:
    properties = copy.deepcopy(_ENVELOPE_PROPERTIES)
    properties.update(typed)
    properties["inputs"] = {"type": "object", "properties": inputs} if inputs else _OBJECT
    return {
        "type": "object",
        "properties": properties,
        "required": ["span_id", "trace_id", "name", "kind", "status", "inputs", "metadata"],
    }


def _result_schema(typed: dict[str, JsonSchema], outputs: dict[str, JsonSchema]) -> JsonSchema:
    properties = copy.deepcopy(_RESULT_PROPERTIES)
    properties.update(typed)
    properties["outputs"] = {"type": "object", "properties": outputs} if outputs else _OBJECT
    return {"type": "object", "properties": properties, "required": ["outputs"]}


_NUMBER = {"type": "number"}
_MODEL_FIELDS: dict[str, JsonSchema] = {
    "token_usage": _TOKEN_USAGE,
    "model": _STRING,  # the model requested
    "provider": _STRING,
    "params": {  # request parameters (temperature, max_tokens, top_p, top_k, stop, seed, stream, ...)
        "type": "object",
        "properties": {"temperature": _NUMBER, "max_tokens": _NUMBER, "top_p": _NUMBER, "stream": {"type": "boolean"}},
    },
}

# name -> (title, description, Liquid template, params typed fields, inputs, result typed fields, outputs)
_TYPES: dict[
    str,
    tuple[str, str, str, dict[str, JsonSchema], dict[str, JsonSchema], dict[str, JsonSchema], dict[str, JsonSchema]],
] = {
    c.LLM: (
        "LLM call",
        "A model call: model, parameters, messages, token usage.",
        "{{ model | default: name }}{% if token_usage.prompt_tokens %} · {{ token_usage.prompt_tokens }} in{% endif %}"
        "{% if token_usage.completion_tokens %} · {{ token_usage.completion_tokens }} out{% endif %}",
        {
            **_MODEL_FIELDS,
            # {type, name, description, parameters} each; a value that is no list stays as it came
            "tool_definitions": {"items": {"properties": {"name": _NULLABLE_STRING}}},
        },
        {"messages": _MESSAGES},
        {
            "response_model": _STRING,
            "response_id": _STRING,
            "finish_reasons": _ARRAY,
            "ttft_ms": _NUMBER,  # time to first token, ms after the span start
        },
        {"messages": _MESSAGES, **_GENERIC_VALUE},
    ),
    c.TOOL: (
        "Tool call",
        "A tool executed for an agent: name, call id, arguments, result.",
        "{{ tool_name | default: name }}",
        {
            "tool_name": _STRING,
            "tool_call_id": _STRING,
            "tool_type": _STRING,
            "tool_description": _STRING,
        },
        {},
        {},
        {},
    ),
    c.AGENT: (
        "Agent run",
        "An agent invocation: agent, conversation, messages, result, usage of the run.",
        "{{ agent_name | default: name }}"
        "{% if token_usage.total_tokens %} · {{ token_usage.total_tokens }} tokens{% endif %}",
        {
            "agent_name": _STRING,
            "agent_id": _STRING,
            "agent_description": _STRING,
            "conversation_id": {"type": ["string", "integer"]},
            **_MODEL_FIELDS,  # usage (of the run: aggregated), model, provider, request parameters
        },
        {"messages": _MESSAGES, **_GENERIC_VALUE},
        {"response_model": _STRING, "response_id": _STRING, "finish_reasons": _ARRAY},
        {"messages": _MESSAGES, "result": _ANY, **_GENERIC_VALUE},
    ),
    c.RETRIEVER: (
        "Retrieval",
        "A retriever or reranker call: query and documents.",
        "{{ name }}{% if inputs.query %}: {{ inputs.query | truncate: 80 }}{% endif %}",
        {"top_k": {"type": ["integer", "number"]}, "data_source_id": _STRING, "model": _STRING},
        {"query": _ANY, "documents": _DOCUMENTS},
        {},
        {"documents": _DOCUMENTS, **_GENERIC_VALUE},
    ),
    c.EMBEDDING: (
        "Embedding",
        "An embeddings call: model, input texts, dimension.",
        "{{ model | default: name }}{% if inputs.texts %} · {{ inputs.texts.size }} inputs{% endif %}",
        dict(_MODEL_FIELDS),
        {"texts": _ARRAY},
        {
            "response_model": _STRING,
            "dimension_count": {"type": "integer"},
            "vector_count": {"type": "integer"},
        },
        {},
    ),
    c.CHAIN: (
        "Chain step",
        "A workflow, task, chain, prompt or guardrail step.",
        "{{ name }}",
        {"entity_name": _STRING},
        {},
        {},
        {},
    ),
    c.SPAN: (
        "Span",
        "An OpenTelemetry span with no GenAI type.",
        "{{ name }}",
        {"entity_name": _STRING},
        {},
        {},
        {},
    ),
}

# Kept for readers of the generic envelope (the OTel-only schema of earlier versions).
ENVELOPE_PARAMS_SCHEMA: JsonSchema = _params_schema({}, {})
RESULT_SCHEMA: JsonSchema = _result_schema({}, {})


@cache
def span_type_schemas() -> tuple[SpanTypeSchemaForCreate, ...]:
    schemas = []
    for name in c.ALL_SCHEMAS:
        title, description, template, typed, inputs, result_typed, outputs = _TYPES[name]
        schemas.append(
            SpanTypeSchemaForCreate(
                name=name,
                title=title,
                description=description,
                template=template,
                params_schema=_params_schema(typed, inputs),
                result_schema=_result_schema(result_typed, outputs),
            )
        )
    return tuple(schemas)


@cache
def schema_names() -> frozenset[str]:
    return frozenset(schema.name for schema in span_type_schemas())


@cache
def agent_schema_version() -> AgentSchemaVersionForRegister:
    schemas = list(span_type_schemas())
    canonical = json.dumps([s.model_dump() for s in schemas], sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:16]
    return AgentSchemaVersionForRegister(external_identifier=f"prefactor-otel-{digest}", span_type_schemas=schemas)
