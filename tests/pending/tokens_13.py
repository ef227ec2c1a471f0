"""The token-accounting property (tests/test_semconv_tokens.py) for the runs where it fails today (see README.md
beside this file): the `token_usage` of spans not marked `aggregated` must add up to what the fake model served."""

from __future__ import annotations

from prefactor_otel.mapping import map_span
from tests.fixtures.semconv.checks import provider, tokens_counted
from tests.test_semconv_anthropic import run_traceloop


def test_anthropic_traceloop_tokens_equal_what_the_model_served() -> None:
    """Today: one completion token too many (54 for 53 served), and not from the mapping: Traceloop 0.62 adds the
    `output_tokens` of a stream's message_start (1, as the real API sends) to message_delta's, which is already the
    cumulative count. Kept as a record of the upstream bug; the mapping cannot tell."""
    tracer_provider, collector = provider()
    served = run_traceloop(tracer_provider).as_dict()
    records = [map_span(span) for span in collector.spans]
    assert tokens_counted(records) == {k: served[k] for k in ("prompt_tokens", "completion_tokens")}
