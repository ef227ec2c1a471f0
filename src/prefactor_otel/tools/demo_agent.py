"""A small OTel-instrumented sample agent for `prefactor-otel demo`: no model, no network, GenAI spans.

It emits what an instrumented agent framework would: an `invoke_agent` span around `chat` (LLM) and
`execute_tool` spans carrying OTel GenAI semantic-convention attributes. `chat` and `call_tool` are shared with
the long-running agent of `demo --loop` (demo_loop.py), which paces them with its own `think`.

Threads: called on the caller's thread only; no state, no locks.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from opentelemetry.trace import Status, StatusCode, Tracer

WEATHER = {"Paris": "18°C, light rain", "Sydney": "24°C, sunny"}


class ToolFailed(RuntimeError):
    pass


def _brief_pause() -> None:
    time.sleep(0.01)


def chat(
    tracer: Tracer,
    model: str,
    messages: list[dict[str, Any]],
    reply: dict[str, Any],
    usage: tuple[int, int],
    think: Callable[[], object] = _brief_pause,
) -> dict[str, Any]:
    """One `chat` span: the "model" takes `think()` to answer `messages` with `reply`."""
    with tracer.start_as_current_span(
        f"chat {model}",
        attributes={
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": "demo",
            "gen_ai.request.model": model,
            "gen_ai.response.model": model,
            "gen_ai.input.messages": json.dumps(messages),
            "gen_ai.output.messages": json.dumps([reply]),
            "gen_ai.usage.input_tokens": usage[0],
            "gen_ai.usage.output_tokens": usage[1],
            "gen_ai.response.finish_reasons": [
                "tool_call" if reply.get("parts", [{}])[0].get("type") == "tool_call" else "stop"
            ],
        },
    ):
        think()
        return reply


def call_tool(
    tracer: Tracer, name: str, call_id: str, arguments: dict[str, Any], work: Callable[[], object] = lambda: None
) -> str:
    """One `execute_tool` span: the weather tool, taking `work()`; raises ToolFailed for an unknown city."""
    with tracer.start_as_current_span(
        f"execute_tool {name}",
        attributes={
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": name,
            "gen_ai.tool.call.id": call_id,
            "gen_ai.tool.call.arguments": json.dumps(arguments),
        },
    ) as span:
        work()
        city = arguments["city"]
        if city not in WEATHER:
            raise ToolFailed(f"no weather station for {city!r}")
        result = WEATHER[city]
        span.set_attribute("gen_ai.tool.call.result", result)
        return result


def run_agent(tracer: Tracer, question: str, city: str) -> str:
    """One agent run = one trace: plan with the model, call a tool, answer with the model."""
    with tracer.start_as_current_span(
        "invoke_agent weather-bot",
        attributes={
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.name": "weather-bot",
            "gen_ai.conversation.id": f"conv-{city.lower()}",
        },
    ) as agent_span:
        user = {"role": "user", "parts": [{"type": "text", "content": question}]}
        call = {
            "role": "assistant",
            "parts": [
                {"type": "tool_call", "id": f"call-{city.lower()}", "name": "get_weather", "arguments": {"city": city}}
            ],
        }
        chat(tracer, "demo-model-1", [user], call, (42, 9))
        try:
            weather = call_tool(tracer, "get_weather", f"call-{city.lower()}", {"city": city})
        except ToolFailed as exc:
            agent_span.record_exception(exc)
            agent_span.set_status(Status(StatusCode.ERROR, str(exc)))
            return f"Sorry: {exc}"
        text = f"{city}: {weather}"
        answer = {"role": "assistant", "parts": [{"type": "text", "content": text}]}
        tool_msg = {
            "role": "tool",
            "parts": [{"type": "tool_call_response", "id": f"call-{city.lower()}", "response": weather}],
        }
        chat(tracer, "demo-model-1", [user, call, tool_msg], answer, (71, 12))
        return text
