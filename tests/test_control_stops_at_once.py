"""Once the exporter knows a run was terminated, nothing more is sent into it -- not even what was already on its
way out, over real HTTP against the local server:

- the run is stopped in the planner before the application is told (before `is_terminated` turns true and the
  `on_terminate` callbacks run), on the answer path and on the poll path, so spans the application ends and
  flushes once it knows never reach the run;
- a plan split over several requests is planned again after an answer says its run is terminated: the later
  chunks no longer carry that run's items (and what the server stored before is counted delivered, not dropped).
"""

from __future__ import annotations

import threading
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

import prefactor_otel
from prefactor_otel import Termination
from prefactor_otel.devserver import DevServer
from tests.spans import processor_for, wait_for

AGENT = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "looper"}


def make(srv: DevServer, **options: Any) -> TracerProvider:
    provider = TracerProvider(resource=Resource.create({"service.name": "looper"}))
    processor = processor_for(srv, **{"schedule_delay_millis": 100, **options})
    provider.add_span_processor(processor)
    return provider


def live_run(srv: DevServer) -> str:
    """The id of the one active run, once its live root is on the server."""
    assert wait_for(lambda: srv.instances() and srv.spans(srv.instances()[0]["id"])), srv.snapshot()
    return str(srv.instances()[0]["id"])


def test_spans_ended_after_the_application_saw_the_termination_are_not_sent(srv: DevServer) -> None:
    provider = make(srv, control_poll_interval=0.2)
    tracer = provider.get_tracer("agent")
    flushed = threading.Event()

    def slow_callback(termination: Termination) -> None:
        flushed.wait(10)  # stands in for a callback (or a thread switch) slower than the application

    unsubscribe = prefactor_otel.on_terminate(slow_callback)
    try:
        with tracer.start_as_current_span("invoke_agent looper", attributes=AGENT):
            run_id = live_run(srv)
            srv.terminate(run_id, "operator stop")
            assert wait_for(prefactor_otel.is_terminated)  # the poll found it: the application knows
            spans_when_told = len(srv.spans(run_id))
            with tracer.start_as_current_span("cleanup after termination"):
                pass
            assert provider.force_flush(10_000)
            flushed.set()
        provider.shutdown()
    finally:
        flushed.set()
        unsubscribe()
    assert [s["payload"]["name"] for s in srv.spans(run_id)] == ["invoke_agent looper"]
    assert len(srv.spans(run_id)) == spans_when_told


def test_the_rest_of_a_plan_is_not_sent_once_an_answer_says_the_run_is_terminated(srv: DevServer) -> None:
    # The steps go out together at the flush (no timed batch before it), in a plan of 5 creates: 5 requests.
    provider = make(srv, control_poll_interval=0, max_items_per_request=1, schedule_delay_millis=60_000)
    tracer = provider.get_tracer("agent")
    with tracer.start_as_current_span("invoke_agent looper", attributes=AGENT):
        run_id = live_run(srv)
        srv.terminate(run_id, "operator stop")
        for index in range(5):
            with tracer.start_as_current_span(f"step {index}"):
                pass
        assert provider.force_flush(10_000)
        assert prefactor_otel.is_terminated()
    provider.shutdown()
    # The live root, and the one step whose answer said the run is terminated; the other four stay here.
    assert len(srv.spans(run_id)) == 2, [s["payload"]["name"] for s in srv.spans(run_id)]
