"""otel:embedding: an embeddings call. Pure functions, called from map_span on the exporting thread; no state."""

from __future__ import annotations

from typing import Any

from opentelemetry.sdk.trace import ReadableSpan

from prefactor_otel.mapping.builders.common import as_list, drop_raw_io, generic_value, model_fields, request_params
from prefactor_otel.mapping.chains import (
    AI_EMBED_VALUES,
    AI_EMBED_VECTORS,
    EMBEDDING_DIMENSION,
    GENERIC_INPUT,
    INPUT_MESSAGES,
)
from prefactor_otel.mapping.context import Context, Typed
from prefactor_otel.mapping.messages import normalize_messages
from prefactor_otel.mapping.values import parse_json_loose


def embedding(ctx: Context, typed: Typed, span: ReadableSpan) -> None:
    model_fields(ctx, typed)
    typed.put(typed.fields, "params", request_params(ctx, typed))
    texts: list[Any] | None = None
    vectors = 0
    dimension = ctx.number(EMBEDDING_DIMENSION)
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
        drop_raw_io(ctx, inputs=bool(texts), outputs=True)
    if not texts:
        groups = ctx.family("gen_ai.prompt.")  # Traceloop legacy: one prompt per input text
        if groups is not None:
            texts = [g.get("content") for _, g in sorted(groups.items())]
    if not texts:
        hit = ctx.first_json(INPUT_MESSAGES)  # Traceloop 0.62: inputs as user text messages
        if hit is not None:
            messages = normalize_messages(hit[1])
            texts = [m.get("content") for m in messages] if messages is not None else as_list(hit[1])
    if not texts and ctx.has_any(_AI_EMBED_KEYS):
        texts, vectors, dimension = _ai_embed(ctx, vectors, dimension)
    if not texts:
        generic = generic_value(ctx, GENERIC_INPUT)
        if generic is not None:
            value = generic[1]
            texts = as_list(value.get("input", value) if isinstance(value, dict) else value)
    typed.put(typed.inputs, "texts", texts)
    typed.put(typed.result, "dimension_count", dimension)
    if vectors:
        typed.put(typed.result, "vector_count", vectors)


def _ai_embed(ctx: Context, vectors: int, dimension: int | None) -> tuple[list[Any] | None, int, int | None]:
    """The Vercel AI SDK's values (`ai.values`, one JSON each; `ai.value` on `ai.embed`) and vectors (the same)."""
    texts: list[Any] | None = None
    hit = ctx.first(AI_EMBED_VALUES)
    if hit is not None:
        raw = hit[1] if isinstance(hit[1], (list, tuple)) else [hit[1]]
        texts = [parse_json_loose(value) for value in raw]
    hit = ctx.first(AI_EMBED_VECTORS)
    if hit is not None:
        raw = hit[1] if isinstance(hit[1], (list, tuple)) else [hit[1]]
        for value in raw:
            vector = parse_json_loose(value)
            if isinstance(vector, list):
                vectors += 1  # counted, not sent (as above)
                dimension = dimension or len(vector)
    return texts, vectors, dimension


_AI_EMBED_KEYS = frozenset((*AI_EMBED_VALUES, *AI_EMBED_VECTORS))
