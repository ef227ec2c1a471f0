"""Span filters. Pure functions.

`carries_genai_convention` decides PREFACTOR_SPAN_FILTER=genai: does a span belong to some GenAI convention?
It looks at attribute names only (never values) and at the instrumentation scope, so it is cheap enough to run on
every span before mapping.
"""

from __future__ import annotations

from collections.abc import Mapping

from prefactor_otel.mapping.conventions import GENAI_KEY_PREFIXES

# Instrumentation scopes that only ever produce GenAI spans (their spans carry GenAI attributes too, but a span
# they start with content capture off may carry little else).
GENAI_SCOPE_PREFIXES = (
    "pydantic-ai",
    "pydantic_ai",
    "openinference.instrumentation",
    "opentelemetry.instrumentation.openai",  # Traceloop's openai and the official openai_v2
    "opentelemetry.instrumentation.anthropic",
    "opentelemetry.instrumentation.langchain",
    "opentelemetry.instrumentation.llamaindex",
    "opentelemetry.instrumentation.google_genai",
    "opentelemetry.instrumentation.vertexai",
    "opentelemetry.instrumentation.bedrock",
    "opentelemetry.instrumentation.mistralai",
    "opentelemetry.instrumentation.cohere",
    "opentelemetry.instrumentation.groq",
    "opentelemetry.instrumentation.ollama",
    "opentelemetry.util.genai",
    "langsmith",
    "langfuse",
    "mlflow",
    "traceloop",
    "gcp.vertex.agent",
)


def carries_genai_convention(attributes: Mapping[str, object] | None, scope_name: str | None) -> bool:
    """True for a span of any GenAI convention this package maps (attribute names or instrumentation scope)."""
    if scope_name and scope_name.startswith(GENAI_SCOPE_PREFIXES):
        return True
    if not attributes:
        return False
    return any(key.startswith(GENAI_KEY_PREFIXES) for key in attributes)
