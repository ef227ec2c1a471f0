"""otel:chain and otel:span: workflows, tasks, prompts, guardrails, convention spans of no specific type.

Pure functions, called from map_span on the exporting thread; no state.
"""

from __future__ import annotations

from opentelemetry.sdk.trace import ReadableSpan

from prefactor_otel.mapping.builders.common import generic_value
from prefactor_otel.mapping.chains import ENTITY_NAME, GENERIC_INPUT, GENERIC_OUTPUT
from prefactor_otel.mapping.context import Context, Typed


def generic(ctx: Context, typed: Typed, span: ReadableSpan) -> None:
    """Chains, workflows, tasks, prompts, guardrails, and convention spans of no specific type."""
    generic_in = generic_value(ctx, GENERIC_INPUT)
    if generic_in is not None:
        typed.put(typed.inputs, "value", generic_in[1])
    generic_out = generic_value(ctx, GENERIC_OUTPUT)
    if generic_out is not None:
        typed.put(typed.outputs, "value", generic_out[1])
    if "traceloop.entity.name" in ctx.attributes:
        typed.put(typed.fields, "entity_name", ctx.value(ENTITY_NAME))
