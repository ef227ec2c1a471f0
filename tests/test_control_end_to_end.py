"""Control reaches the application: a run terminated in Prefactor (here: the local server) fires the callbacks,
`raise_if_terminated()` raises in the agent's context, and the exporter adds no more spans to that run -- through
a span answer (the fast path) and through polling (the slow path), over real HTTP."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

import prefactor_otel
from prefactor_otel import PrefactorSpanProcessor, PrefactorTerminatedError, Termination
from prefactor_otel.devserver import DevServer
from tests.spans import processor_for, wait_for

AGENT = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "looper"}
TOOL = {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "search"}


def make(srv: DevServer, **options: Any) -> tuple[TracerProvider, PrefactorSpanProcessor]:
    provider = TracerProvider(resource=Resource.create({"service.name": "looper"}))
    processor = processor_for(srv, schedule_delay_millis=100, **options)
    provider.add_span_processor(processor)
    return provider, processor


@pytest.fixture
def heard() -> Iterator[list[Termination]]:
    seen: list[Termination] = []
    unsubscribe = prefactor_otel.on_terminate(seen.append)
    yield seen
    unsubscribe()


def active_runs(srv: DevServer) -> list[dict[str, Any]]:
    """Runs the server shows active. Not merely shown: register and start are separate items, and a run read
    between them is still `pending`, which cannot be terminated."""
    return [instance for instance in srv.instances() if instance["status"] == "active"]


def run_agent_loop(provider: TracerProvider, srv: DevServer, terminate: Callable[[str], None]) -> dict[str, Any]:
    """An agent loop that runs tool steps until Prefactor stops it; returns what it saw."""
    tracer = provider.get_tracer("agent")
    outcome: dict[str, Any] = {"steps": 0}
    with tracer.start_as_current_span("invoke_agent looper", attributes=AGENT):
        instance = wait_for(lambda: active_runs(srv))
        terminate(instance[0]["id"])
        try:
            for _ in range(400):  # bounded: the loop must end by termination well before this
                with tracer.start_as_current_span("execute_tool search", attributes=TOOL):
                    prefactor_otel.raise_if_terminated()
                    outcome["steps"] += 1
                time.sleep(0.025)
        except PrefactorTerminatedError as exc:
            outcome["error"] = exc
            outcome["is_terminated"] = prefactor_otel.is_terminated()
            outcome["reason"] = prefactor_otel.termination_reason()
    return outcome


def test_a_span_answer_carrying_control_stops_the_agent_loop(srv: DevServer, heard: list[Termination]) -> None:
    provider, processor = make(srv, control_poll_interval=0)  # no polling: only span answers can tell
    outcome = run_agent_loop(provider, srv, lambda run_id: srv.terminate(run_id, "budget exceeded"))
    error = outcome["error"]
    assert isinstance(error, PrefactorTerminatedError)
    assert error.reason == "budget exceeded"
    assert "budget exceeded" in str(error)
    assert outcome["is_terminated"] is True and outcome["reason"] == "budget exceeded"
    assert [(t.reason, t.source) for t in heard] == [("budget exceeded", "response")]
    run_id = srv.instances()[0]["id"]
    assert heard[0].instance_id == run_id
    stats = processor.exporter.stats()
    assert stats["control_terminate_answers"] >= 1
    assert stats["runs_terminated"] == 1
    # The exporter stops adding spans to the run: what the loop did after hearing of it is dropped, counted.
    spans_at_termination = len(srv.spans(run_id))
    provider.force_flush(10_000)
    provider.shutdown()
    assert len(srv.spans(run_id)) == spans_at_termination
    assert processor.exporter.stats()["dropped_by_reason"].get("run_terminated", 0) >= 1
    assert srv.instances()[0]["status"] == "terminated"


def test_polling_finds_a_run_terminated_while_it_sends_nothing(srv: DevServer, heard: list[Termination]) -> None:
    provider, processor = make(srv, control_poll_interval=0.2)
    tracer = provider.get_tracer("agent")
    fired = threading.Event()
    unsubscribe = prefactor_otel.on_terminate(lambda termination: fired.set())
    try:
        with tracer.start_as_current_span("invoke_agent looper", attributes=AGENT):
            run_id = wait_for(lambda: active_runs(srv))[0]["id"]
            event = prefactor_otel.termination_event()
            assert not event.is_set()
            srv.terminate(run_id, "operator stop")
            # Nothing is sent in this run meanwhile: only the poll can tell.
            assert event.wait(10)
            assert fired.is_set()
            with pytest.raises(PrefactorTerminatedError, match="operator stop"):
                prefactor_otel.raise_if_terminated()
    finally:
        unsubscribe()
    assert [(t.instance_id, t.reason, t.source) for t in heard] == [(run_id, "operator stop", "poll")]
    assert processor.exporter.stats()["control_polls"] >= 1
    provider.shutdown()
    assert srv.instances()[0]["status"] == "terminated"


def test_an_asyncio_agent_can_wait_for_termination(srv: DevServer) -> None:
    import asyncio

    provider, _processor = make(srv, control_poll_interval=0.2)
    tracer = provider.get_tracer("agent")

    async def agent() -> Termination | None:
        with tracer.start_as_current_span("invoke_agent looper", attributes=AGENT):
            run_id = await asyncio.to_thread(lambda: wait_for(lambda: active_runs(srv))[0]["id"])
            srv.terminate(run_id, "async stop")
            return await prefactor_otel.wait_for_termination(timeout=10)

    termination = asyncio.run(agent())
    assert termination is not None and termination.reason == "async stop"
    provider.shutdown()


def test_other_runs_go_on_after_one_is_terminated(srv: DevServer) -> None:
    provider, processor = make(srv, control_poll_interval=0)
    tracer = provider.get_tracer("agent")
    with tracer.start_as_current_span("invoke_agent first", attributes=AGENT):
        first = wait_for(lambda: active_runs(srv))[0]["id"]
        srv.terminate(first, "only this one")
        for _ in range(200):  # bounded
            with tracer.start_as_current_span("execute_tool search", attributes=TOOL):
                pass
            provider.force_flush(10_000)
            if prefactor_otel.is_terminated():
                break
            time.sleep(0.02)
        assert prefactor_otel.is_terminated()
    with tracer.start_as_current_span("invoke_agent second", attributes=AGENT):
        with tracer.start_as_current_span("execute_tool search", attributes=TOOL):
            assert not prefactor_otel.is_terminated()
    assert provider.force_flush(10_000)
    statuses = {i["id"]: i["status"] for i in srv.instances()}
    assert statuses.pop(first) == "terminated"
    assert list(statuses.values()) == ["complete"]
    assert processor.exporter.stats()["runs_terminated"] == 1
    provider.shutdown()


def test_an_idle_run_is_stopped_within_the_quiet_poll_bound_at_the_default_interval(
    srv: DevServer, heard: list[Termination]
) -> None:
    """The default interval (30 s) polls a sending run; a run that sends nothing (an agent waiting on a slow model
    or a person) is polled after 5 s of quiet (docs/control.md). Bounded by 15 s: well under the interval."""
    provider, processor = make(srv)
    assert processor.exporter._config.control_poll_interval == 30.0
    tracer = provider.get_tracer("agent")
    with tracer.start_as_current_span("invoke_agent looper", attributes=AGENT):
        run_id = wait_for(lambda: active_runs(srv))[0]["id"]
        event = prefactor_otel.termination_event()
        srv.terminate(run_id, "idle too long")
        assert event.wait(15)  # a bounded wait, not a measure of speed: the schedule is what is tested
        assert prefactor_otel.termination_reason() == "idle too long"
    assert [(t.instance_id, t.source) for t in heard] == [(run_id, "poll")]
    assert processor.exporter.stats()["control_polls"] >= 1
    provider.shutdown()
