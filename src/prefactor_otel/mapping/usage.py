"""Token usage: the usage chains of every convention as Prefactor's `token_usage`. Pure functions.

Called by map_span on the exporting thread; no state.
"""

from __future__ import annotations

from typing import Any

from prefactor_otel.mapping.chains import (
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
        return as_count(value)
    return None
