"""Classify a span into a Prefactor span type. Pure functions.

This is the generic level: the OTel GenAI `gen_ai.operation.name` decides, with a tool fallback for
instrumentations that name tools without an operation. The fuller priority list of
shared/design/semantic-conventions.md (OpenInference, Traceloop, LangSmith...) extends `classify`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

SPAN = "otel:span"
LLM = "otel:llm"
TOOL = "otel:tool"
AGENT = "otel:agent"

_OPERATION_TO_SCHEMA = {
    "chat": LLM,
    "text_completion": LLM,
    "generate_content": LLM,
    "completion": LLM,  # older conventions
    "generate": LLM,
    "execute_tool": TOOL,
    "invoke_agent": AGENT,
    "create_agent": AGENT,
}


@dataclass(frozen=True, slots=True)
class Classification:
    schema_name: str
    convention: str | None  # which convention decided, None for the generic fallback
    operation: str | None


def classify(attributes: Mapping[str, object]) -> Classification:
    operation = attributes.get("gen_ai.operation.name")
    if isinstance(operation, str):
        schema = _OPERATION_TO_SCHEMA.get(operation.strip().lower())
        if schema is not None:
            return Classification(schema, "gen_ai", operation)
    if "gen_ai.tool.name" in attributes or "gen_ai.tool.call.id" in attributes:
        return Classification(TOOL, "gen_ai", operation if isinstance(operation, str) else None)
    return Classification(SPAN, None, operation if isinstance(operation, str) else None)
