"""otel:retriever: a retriever or reranker call. Pure functions, called from map_span on the exporting thread."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan

from prefactor_otel.mapping.builders.common import drop_raw_io, generic_value
from prefactor_otel.mapping.chains import (
    AI_RANKING,
    AI_RERANK_DOCUMENTS,
    DATA_SOURCE_ID,
    GENERIC_INPUT,
    GENERIC_OUTPUT,
    RERANKER_MODEL,
    RETRIEVAL_DOCUMENTS,
    RETRIEVAL_QUERY,
    RETRIEVAL_TOP_K,
)
from prefactor_otel.mapping.context import Context, Typed
from prefactor_otel.mapping.values import json_safe, parse_json_loose, parse_json_maybe


def retriever(ctx: Context, typed: Typed, span: ReadableSpan) -> None:
    if AI_RERANK_DOCUMENTS[0] in ctx.attributes or AI_RANKING[0] in ctx.attributes:
        _ai_rerank(ctx, typed)
        return
    docs: list[dict[str, Any]] | None = None
    for family in ("retrieval.documents.", "reranker.output_documents."):
        groups = ctx.family(family)
        if groups is not None:
            docs = [
                _document({k.removeprefix("document."): v for k, v in g.items()}) for _, g in sorted(groups.items())
            ]
            drop_raw_io(ctx, inputs=False, outputs=True)
            break
    if docs is None:
        hit = ctx.first_json(RETRIEVAL_DOCUMENTS)
        if hit is not None:
            docs = _documents_from_value(hit[1])
    output_value = None
    if docs is None:
        generic = generic_value(ctx, GENERIC_OUTPUT)
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
    query = ctx.value(RETRIEVAL_QUERY)
    if query is None:
        generic = generic_value(ctx, GENERIC_INPUT)
        if generic is not None:
            value = generic[1]
            query = value.get("query", value) if isinstance(value, dict) else value
    typed.put(typed.inputs, "query", query)
    typed.put(typed.fields, "top_k", ctx.value(RETRIEVAL_TOP_K))
    typed.put(typed.fields, "data_source_id", ctx.value(DATA_SOURCE_ID))
    typed.put(typed.fields, "model", ctx.value(RERANKER_MODEL))


def _ai_rerank(ctx: Context, typed: Typed) -> None:
    """The Vercel AI SDK's rerank: `ai.documents` (one JSON each) in, `ai.ranking` (`{index, relevanceScore}` each,
    on `doRerank`) out as the ranked documents. The SDK records no query."""
    documents: list[dict[str, Any]] = []
    hit = ctx.first(AI_RERANK_DOCUMENTS)
    for number, raw in enumerate(hit[1] if hit is not None and isinstance(hit[1], (list, tuple)) else ()):
        documents.append({"id": str(number), "content": parse_json_loose(raw)})
    typed.put(typed.inputs, "documents", documents)
    ranked: list[dict[str, Any]] = []
    hit = ctx.first(AI_RANKING)
    for raw in hit[1] if hit is not None and isinstance(hit[1], (list, tuple)) else ():
        entry = parse_json_loose(raw)
        index = entry.get("index") if isinstance(entry, dict) else None
        if not isinstance(index, int) or not isinstance(entry, dict):
            ranked.append({"id": None, "content": entry})
            continue
        content = documents[index]["content"] if 0 <= index < len(documents) else None
        doc: dict[str, Any] = {"id": str(index), "content": content}
        if isinstance(entry.get("relevanceScore"), (int, float)):
            doc["score"] = entry["relevanceScore"]
        ranked.append(doc)
    typed.put(typed.outputs, "documents", ranked)
    typed.put(typed.fields, "model", ctx.value(RERANKER_MODEL))


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
