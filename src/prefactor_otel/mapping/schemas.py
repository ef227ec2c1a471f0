"""The span types this exporter emits, registered with the agent schema version. Pure data.

Every schema name `classify` can return must be here (a test checks it). The schema version's external
identifier is a hash of this set, so an exporter release with new or changed schemas registers a new schema
version by itself.
"""

from __future__ import annotations

import hashlib
import json
from functools import cache
from typing import Any

from prefactor_otel.mapping import conventions
from prefactor_otel.models import AgentSchemaVersionForRegister, SpanTypeSchemaForCreate

_NULLABLE_OBJECT: dict[str, Any] = {"type": ["object", "null"]}
_TOKEN_USAGE: dict[str, Any] = {
    "type": ["object", "null"],
    "properties": {
        "prompt_tokens": {"type": ["integer", "null"]},
        "completion_tokens": {"type": ["integer", "null"]},
        "total_tokens": {"type": ["integer", "null"]},
    },
    "additionalProperties": True,
}
_ERROR: dict[str, Any] = {
    "type": ["object", "null"],
    "properties": {
        "error_type": {"type": "string"},
        "message": {"type": ["string", "null"]},
        "stacktrace": {"type": ["string", "null"]},
    },
    "additionalProperties": True,
}

# The envelope every span payload carries (architecture.md, "The mapping"). Permissive where conventions vary.
ENVELOPE_PARAMS_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "properties": {
        "span_id": {"type": "string", "pattern": "^[0-9a-f]{16}$"},
        "trace_id": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
        "parent_span_id": {"type": ["string", "null"]},
        "name": {"type": "string"},
        "kind": {"type": "string"},
        "status": {"type": "string", "enum": ["complete", "failed"]},
        "inputs": {"type": "object"},
        "metadata": {"type": "object"},
        "token_usage": _TOKEN_USAGE,
        "error": _ERROR,
        "events": {"type": "array", "items": {"type": "object"}},
        "links": {"type": "array", "items": {"type": "object"}},
    },
    "required": ["span_id", "trace_id", "name", "kind", "status", "inputs", "metadata"],
    "additionalProperties": True,
}

RESULT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "properties": {"outputs": {"type": "object"}, "token_usage": _TOKEN_USAGE, "error": _ERROR},
    "additionalProperties": True,
}

_TYPES: tuple[tuple[str, str, str, str], ...] = (
    (conventions.SPAN, "Span", "An OpenTelemetry span with no GenAI meaning.", "{{ name }}"),
    (
        conventions.LLM,
        "LLM call",
        "A model inference call (OTel GenAI chat / completion).",
        "{{ inputs.model }} {{ name }}{% if token_usage %} ({{ token_usage.prompt_tokens }} in, "
        "{{ token_usage.completion_tokens }} out){% endif %}",
    ),
    (conventions.TOOL, "Tool call", "A tool or function executed for an agent.", "{{ inputs.tool_name }}"),
    (conventions.AGENT, "Agent run", "An agent invocation and its steps.", "{{ inputs.agent_name }}"),
)


@cache
def span_type_schemas() -> tuple[SpanTypeSchemaForCreate, ...]:
    return tuple(
        SpanTypeSchemaForCreate(
            name=name,
            title=title,
            description=description,
            template=template,
            params_schema=ENVELOPE_PARAMS_SCHEMA,
            result_schema=RESULT_SCHEMA,
        )
        for name, title, description, template in _TYPES
    )


def schema_names() -> frozenset[str]:
    return frozenset(schema.name for schema in span_type_schemas())


@cache
def agent_schema_version() -> AgentSchemaVersionForRegister:
    schemas = list(span_type_schemas())
    canonical = json.dumps([s.model_dump() for s in schemas], sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:16]
    return AgentSchemaVersionForRegister(external_identifier=f"prefactor-otel-{digest}", span_type_schemas=schemas)
