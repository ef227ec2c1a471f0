"""Token usage: the usage chains of every convention as Prefactor's `token_usage`. Pure functions.

Called by map_span on the exporting thread; no state.
"""

from __future__ import annotations

from typing import Any

from prefactor_otel.mapping import conventions as c
from prefactor_otel.mapping.chains import (
    ADK_LLM_REQUEST,
    AGGREGATED_COMPLETION,
    AGGREGATED_PROMPT,
    CACHE_READ_TOKENS,
    CACHE_WRITE_TOKENS,
    COMPLETION_TOKENS,
    PROMPT_TOKENS,
    REASONING_TOKENS,
    TOTAL_TOKENS,
    USAGE_JSON,
)
from prefactor_otel.mapping.context import Context, as_count


def token_usage(ctx: Context, schema_name: str) -> dict[str, Any] | None:
    """Prefactor's token_usage names: prompt_tokens / completion_tokens / total_tokens, plus detail counts.

    A count the span does not carry is absent, never 0 (an embedding has no completion tokens; a stream without
    usage has no counts at all); `total_tokens` is derived only from both of the others. Usage with only detail
    counts (cache, reasoning) is kept.

    `aggregated: true` marks usage that is not a model call's own: only model-call spans (`otel:llm`,
    `otel:embedding`) count tokens. Usage on any other span type is the sum of the model calls beneath it (an
    OTel GenAI `invoke_agent` span, pydantic-ai's run, a workflow) or a copy of one (a usage-recording span beside
    the model call). So is the usage of a model-call span wrapping the real one (ADK's legacy `call_llm` around
    its `generate_content` span). Summing the non-aggregated usage of a trace counts every model call once.
    """
    counts = ctx.layout("usage", _otel_counts)
    if counts is not None:
        # The OTel GenAI counts alone (`_otel_counts`): each count chain has at most its first name there, so the
        # chains' walk is that name's value. Taken when every count there is a plain int >= 0 (checked before
        # anything is consumed); any other count (a float, a bool, a negative, a string) goes to the general path
        # below, whose rules decide.
        attributes = ctx.attributes
        prompt_key, completion_key, total_key = counts
        prompt_count = attributes.get(prompt_key) if prompt_key is not None else None
        completion_count = attributes.get(completion_key) if completion_key is not None else None
        total_count = attributes.get(total_key) if total_key is not None else None
        if (
            (prompt_count is None or (type(prompt_count) is int and prompt_count >= 0))
            and (completion_count is None or (type(completion_count) is int and completion_count >= 0))
            and (total_count is None or (type(total_count) is int and total_count >= 0))
        ):
            if prompt_count is None and completion_count is None and total_count is None:
                return None  # no count there (tool and agent spans mostly)
            consumed = ctx.consumed
            counted: dict[str, Any] = {}
            if prompt_count is not None:
                consumed.add(prompt_key)  # not None: its value is there
                counted["prompt_tokens"] = prompt_count
            if completion_count is not None:
                consumed.add(completion_key)
                counted["completion_tokens"] = completion_count
            if total_count is not None:
                consumed.add(total_key)
                counted["total_tokens"] = total_count
            elif prompt_count is not None and completion_count is not None:
                counted["total_tokens"] = prompt_count + completion_count
            if schema_name not in _MODEL_CALLS:
                counted["aggregated"] = True
            return counted
    if not ctx.has_any(_USAGE_KEYS):
        return None  # tool, agent and chain spans mostly carry no usage at all
    prompt = ctx.number(PROMPT_TOKENS)
    completion = ctx.number(COMPLETION_TOKENS)
    total = ctx.number(TOTAL_TOKENS)
    aggregated = schema_name not in _MODEL_CALLS or _wraps_the_model_call(ctx)
    if prompt is None and completion is None and total is None:
        hit = ctx.first_json(USAGE_JSON)
        if hit is not None and isinstance(hit[1], dict):
            usage = hit[1]
            prompt = _int(usage.get("input", usage.get("input_tokens")))
            completion = _int(usage.get("output", usage.get("output_tokens")))
            total = _int(usage.get("total", usage.get("total_tokens")))
        else:
            # pydantic-ai's agent run: usage of the whole run, summed over its model calls.
            prompt = ctx.number(AGGREGATED_PROMPT)
            completion = ctx.number(AGGREGATED_COMPLETION)
            aggregated = aggregated or prompt is not None or completion is not None
    if ctx.has_any(_LATER_COUNT_KEYS):
        # A count under a lower-priority name may duplicate the one used (Strands and Traceloop write
        # prompt_tokens beside input_tokens): equal duplicates are consumed, not left in metadata.
        for keys, count in ((PROMPT_TOKENS, prompt), (COMPLETION_TOKENS, completion), (TOTAL_TOKENS, total)):
            if count is not None:
                ctx.consume_equal(keys, count)
    usage_out: dict[str, Any] = {}
    if prompt is not None:
        usage_out["prompt_tokens"] = prompt
    if completion is not None:
        usage_out["completion_tokens"] = completion
    if total is not None:
        usage_out["total_tokens"] = total
    elif prompt is not None and completion is not None:
        usage_out["total_tokens"] = prompt + completion
    details = _DETAILS if ctx.has_any(_DETAIL_KEYS) else ()  # most spans carry none
    for name, keys in details:
        value = ctx.number(keys)
        if value is not None:
            usage_out[name] = value
            if ctx.has_any(_AI_DETAIL_KEYS):
                ctx.consume_equal(keys, value)  # the AI SDK writes each detail count twice (v5 and v6 names)
    if not usage_out:
        return None
    if aggregated:
        usage_out["aggregated"] = True
    return usage_out


def _otel_counts(names: frozenset[str]) -> tuple[str | None, str | None, str | None] | None:
    """For a name set whose only names token_usage reads are OTel GenAI counts (`gen_ai.usage.input_tokens`,
    `output_tokens`, `total_tokens`, the first name of their chains), the prompt, completion and total names it has;
    else None. Then no other count, detail, usage JSON or aggregated name is there, nor the names that make usage a
    wrapper's copy (`_wraps_the_model_call`)."""
    if not names.isdisjoint(_USAGE_OTHER_NAMES):
        return None
    prompt, completion, total = PROMPT_TOKENS[0], COMPLETION_TOKENS[0], TOTAL_TOKENS[0]
    return (
        prompt if prompt in names else None,
        completion if completion in names else None,
        total if total in names else None,
    )


def _wraps_the_model_call(ctx: Context) -> bool:
    """Google ADK's `call_llm` span (its legacy telemetry: the request and response JSON, no operation name) runs
    the model call as a `generate_content` child span that carries the same usage: its copy is not counted."""
    attributes = ctx.attributes
    if ADK_LLM_REQUEST[0] in attributes and "gen_ai.operation.name" not in attributes:
        return True
    # The Vercel AI SDK's `ai.embed` / `ai.embedMany` span runs the provider call as its `doEmbed` child, which
    # carries the same usage.
    return attributes.get("ai.operationId") in _AI_EMBED_CALLS


_AI_EMBED_CALLS = frozenset(("ai.embed", "ai.embedMany"))
_DETAILS = (
    ("cache_read_tokens", CACHE_READ_TOKENS),
    ("cache_write_tokens", CACHE_WRITE_TOKENS),
    ("reasoning_tokens", REASONING_TOKENS),
)
_DETAIL_KEYS = frozenset((*CACHE_READ_TOKENS, *CACHE_WRITE_TOKENS, *REASONING_TOKENS))


_MODEL_CALLS = frozenset((c.LLM, c.EMBEDDING))
_AI_DETAIL_KEYS = frozenset(
    key for key in (*CACHE_READ_TOKENS, *CACHE_WRITE_TOKENS, *REASONING_TOKENS) if key[:3] == "ai."
)
_LATER_COUNT_KEYS = frozenset((*PROMPT_TOKENS[1:], *COMPLETION_TOKENS[1:], *TOTAL_TOKENS[1:]))
_USAGE_KEYS = frozenset(
    (
        *PROMPT_TOKENS,
        *COMPLETION_TOKENS,
        *TOTAL_TOKENS,
        *USAGE_JSON,
        *AGGREGATED_PROMPT,
        *AGGREGATED_COMPLETION,
        *CACHE_READ_TOKENS,
        *CACHE_WRITE_TOKENS,
        *REASONING_TOKENS,
    )
)


# Every name token_usage reads but the three OTel GenAI counts `_otel_counts` reads directly.
_USAGE_OTHER_NAMES = frozenset(
    (_USAGE_KEYS | {ADK_LLM_REQUEST[0], "ai.operationId"}) - {PROMPT_TOKENS[0], COMPLETION_TOKENS[0], TOTAL_TOKENS[0]}
)


def _int(value: object) -> int | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return as_count(value)
    return None
