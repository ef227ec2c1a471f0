"""Typed payload fields per span type: the span type's builder, then the fields every type shares. Pure functions.

Where things live (mapping/README.md says how to add a convention):
- mapping/chains.py: the attribute chains, first hit wins (which attribute of which convention fills which field);
- mapping/builders/<type>.py: one builder per span type, reading the chains into `Typed`;
- mapping/usage.py: token usage; mapping/context.py: `Context` (a span's attributes, what was consumed) and `Typed`.

Layout of what the builders fill (one name per meaning across all conventions):
- payload top level: typed fields (`model`, `provider`, `operation`, `params`, `tool_definitions`, `tool_name`,
  `tool_call_id`, `agent_name`, `session_id`, `user_id`, ...);
- `payload.inputs`: what went in (`messages`, `arguments`, `query`, `texts`, or the raw `value`);
- `result_payload.outputs`: what came out (`messages`, `result`, `documents`, or the raw `value`);
- result_payload top level: response facts (`response_model`, `response_id`, `finish_reasons`, `ttft_ms`, ...).

Called from map_span on the exporting thread; no state.
"""

from __future__ import annotations

from collections.abc import Callable

from opentelemetry.sdk.trace import ReadableSpan

from prefactor_otel.mapping import conventions as c
from prefactor_otel.mapping.builders.agent import agent
from prefactor_otel.mapping.builders.common import ai_sdk_envelope, common_fields
from prefactor_otel.mapping.builders.embedding import embedding
from prefactor_otel.mapping.builders.generic import generic
from prefactor_otel.mapping.builders.llm import llm
from prefactor_otel.mapping.builders.retriever import retriever
from prefactor_otel.mapping.builders.tool import tool
from prefactor_otel.mapping.context import Context, Typed
from prefactor_otel.mapping.usage import token_usage

__all__ = ["BUILDERS", "Context", "Typed", "build", "token_usage"]

Builder = Callable[[Context, Typed, ReadableSpan], None]

BUILDERS: dict[str, Builder] = {
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
    common_fields(ctx, typed, classification.operation)
    if classification.convention == c.VERCEL_AI:
        ai_sdk_envelope(ctx)
    return typed
