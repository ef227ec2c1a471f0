"""Token accounting users can trust: over a framework's run, the `token_usage` of the spans not marked `aggregated`
adds up to exactly the tokens the fake model server handed out (the usage in its answers, counted by its ledger).

Here for the recordings and live runs where that holds today. Where it does not yet, the same property is in
tests/pending/tokens_13.py. DSPy's OpenInference spans carry
no usage at all, so no mapping can find its tokens: tests/test_semconv_agent_frameworks.py checks that none are
invented for it instead."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from openinference.instrumentation.openai import OpenAIInstrumentor as OpenInferenceOpenAI
from opentelemetry.instrumentation.openai import OpenAIInstrumentor as TraceloopOpenAI
from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor as OpenAIV2
from opentelemetry.sdk.trace import TracerProvider

from prefactor_otel.mapping import map_span
from tests.fixtures.semconv.checks import check_record, provider, tokens_counted
from tests.fixtures.semconv.fake_openai import FakeOpenAI, TokenLedger, openai_workload
from tests.fixtures.semconv.replay import load, served_tokens
from tests.test_semconv_agent_frameworks import run_ag2, run_langgraph
from tests.test_semconv_anthropic import run_openinference, run_own_spans

RECORDED_WHERE_IT_HOLDS = [
    "adk.json",
    "adk_legacy.json",
    "openai_agents_openinference.json",
    "strands_attributes.json",
    "strands_events.json",
    "strands_legacy.json",
]


def _openai_run(instrumentor: Any) -> Callable[[TracerProvider], TokenLedger]:
    def run(tracer_provider: TracerProvider) -> TokenLedger:
        instrumentor.instrument(tracer_provider=tracer_provider)
        try:
            with FakeOpenAI() as fake:
                openai_workload(fake.base_url)
        finally:
            instrumentor.uninstrument()
        return fake.served

    return run


LIVE_WHERE_IT_HOLDS: dict[str, Callable[[TracerProvider], TokenLedger]] = {
    "ag2": run_ag2,
    "anthropic-own-spans": run_own_spans,
    "anthropic-openinference": run_openinference,
    "langgraph-openinference": run_langgraph,
    "openai-v2": _openai_run(OpenAIV2()),
    "openai-openinference": _openai_run(OpenInferenceOpenAI()),
    "openai-traceloop": _openai_run(TraceloopOpenAI()),
}


@pytest.mark.parametrize("fixture", RECORDED_WHERE_IT_HOLDS)
def test_recorded_run_tokens_equal_what_the_model_served(fixture: str) -> None:
    records = [map_span(span) for span in load(fixture)]
    for record in records:
        check_record(record)
    served = served_tokens(fixture)
    assert served["prompt_tokens"] > 0
    assert tokens_counted(records) == served


@pytest.mark.parametrize("name", sorted(LIVE_WHERE_IT_HOLDS))
def test_live_run_tokens_equal_what_the_model_served(name: str) -> None:
    tracer_provider, collector = provider()
    ledger = LIVE_WHERE_IT_HOLDS[name](tracer_provider)
    records = [map_span(span) for span in collector.spans]
    for record in records:
        check_record(record)
    served = ledger.as_dict()
    assert served["calls"] >= 2
    assert tokens_counted(records) == {k: served[k] for k in ("prompt_tokens", "completion_tokens")}
