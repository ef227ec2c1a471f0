"""What the mapping still gets wrong on the recorded agent frameworks of issue 13 (see README.md beside this file).
Every test here fails today; the docstring of each says what the mapping gives instead."""

from __future__ import annotations

from typing import Any

from prefactor_otel.mapping import SpanRecord
from tests.fixtures.semconv.checks import map_all, provider
from tests.test_semconv_agent_frameworks import run_langgraph

SYSTEM = {"role": "system", "content": "You are a weather bot."}
QUESTION = {"role": "user", "content": "Weather in Paris?"}
OPENAI_TOOL_CALL = {"id": "call_weather_1", "name": "get_weather", "arguments": {"city": "Paris"}}
WEATHER_PARAMETERS = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def _live(run: Any) -> dict[str, list[SpanRecord]]:
    tracer_provider, collector = provider()
    run(tracer_provider)
    return map_all(collector.spans)


# ------------------------------------------------------------------------ agent spans lose their conversation


def test_langgraph_agent_messages_from_its_input_and_output_value() -> None:
    """LangChain 1.x agent through OpenInference (live), `weather_agent` (AGENT): input.value is
    {"messages": [the question]}, output.value the whole state with the answer last. Today: inputs.value and
    outputs.value hold them as they are, no inputs.messages / outputs.messages."""
    (agent,) = _live(run_langgraph)["weather_agent"]
    assert agent.payload["inputs"]["messages"] == [QUESTION]
    assert agent.result_payload["outputs"]["messages"][-1]["content"] == "echo: sunny in Paris"


# -------------------------------------------------------------- tool results and tool calls in their own shapes


# ------------------------------------------------------------------------------------ DSPy tools (OpenInference)
