"""The token-accounting property (tests/test_semconv_tokens.py) for the runs where it fails today (see README.md
beside this file): the `token_usage` of spans not marked `aggregated` must add up to what the fake model served."""

from __future__ import annotations

from prefactor_otel.mapping import map_span
from tests.fixtures.semconv.checks import provider, tokens_counted
from tests.test_semconv_anthropic import run_traceloop


def test_anthropic_traceloop_tokens_equal_what_the_model_served() -> None:
    """Today: one completion token too many (54 for 53 served), and not from the mapping. Confirmed in
    opentelemetry-instrumentation-anthropic 0.62.4 (streaming.py, `_process_response_item`): on `message_delta` it
    adds the delta's `usage.output_tokens` to the one `message_start` carried (1 here, a small count on the real
    API), but the delta's count is already the stream's cumulative total (Anthropic's streaming docs). The span
    then carries only the inflated sum in gen_ai.usage.output_tokens; message_start's count is on no attribute
    or event, so no mapping can take it off. Kept here as the record of the upstream bug, not collected."""
    tracer_provider, collector = provider()
    served = run_traceloop(tracer_provider).as_dict()
    records = [map_span(span) for span in collector.spans]
    assert tokens_counted(records) == {k: served[k] for k in ("prompt_tokens", "completion_tokens")}
