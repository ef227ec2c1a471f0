"""Live runs (PrefactorSpanProcessor): a run shows while it runs, live spans go active then finished, and a run is
finished as soon as its last span has ended -- over real HTTP against the local server."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Status, StatusCode

from prefactor_otel import PrefactorSpanProcessor
from prefactor_otel.devserver import DevServer
from prefactor_otel.mapping.values import iso_from_ns
from tests.spans import processor_for, wait_for

AGENT = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "helper"}
CHAT = {"gen_ai.operation.name": "chat", "gen_ai.request.model": "m1"}


@pytest.fixture
def live(srv: DevServer) -> Iterator[tuple[TracerProvider, PrefactorSpanProcessor]]:
    yield from _live(srv)


def _live(srv: DevServer, **options: Any) -> Iterator[tuple[TracerProvider, PrefactorSpanProcessor]]:
    provider = TracerProvider(resource=Resource.create({"service.name": "live-agent"}))
    processor = processor_for(srv, **options)
    provider.add_span_processor(processor)
    yield provider, processor
    provider.shutdown()


def spans_by_name(srv: DevServer) -> dict[str, dict[str, Any]]:
    return {span["payload"]["name"]: span for span in srv.spans()}


def test_a_run_shows_active_with_its_roots_start_while_the_root_is_open(
    srv: DevServer, live: tuple[TracerProvider, PrefactorSpanProcessor]
) -> None:
    provider, _ = live
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("handle request") as root:
        with tracer.start_as_current_span("prepare"):
            pass
        # The batch processor waits 5 s before exporting ended spans: what shows now came from the starts.
        instances = wait_for(lambda: [i for i in srv.instances() if i["status"] == "active"])
        assert len(instances) == 1
        assert instances[0]["started_at"][:23] == iso_from_ns(root.start_time)[:23]  # type: ignore[index, arg-type]
        root_span = wait_for(lambda: spans_by_name(srv).get("handle request"))
        assert root_span["status"] == "active"
        assert "prepare" not in spans_by_name(srv)  # not live: sent when it has ended, in a batch


def test_a_live_agent_span_is_active_then_complete_with_what_it_learned_at_its_end(
    srv: DevServer, live: tuple[TracerProvider, PrefactorSpanProcessor]
) -> None:
    provider, _ = live
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("root"):
        with tracer.start_as_current_span("invoke_agent helper", attributes=AGENT) as agent:
            seen = wait_for(lambda: spans_by_name(srv).get("invoke_agent helper"))
            assert seen["status"] == "active"
            assert seen["finished_at"] is None
            agent.set_attribute("gen_ai.usage.input_tokens", 7)
            agent.set_attribute("gen_ai.usage.output_tokens", 3)
            agent.set_attribute("app.answer_quality", "good")
            with tracer.start_as_current_span("chat m1", attributes=CHAT):
                pass
    assert provider.force_flush(10_000)
    spans = spans_by_name(srv)
    agent_span = spans["invoke_agent helper"]
    assert agent_span["status"] == "complete"
    assert agent_span["finished_at"] is not None
    result = agent_span["result_payload"]
    assert result["token_usage"]["prompt_tokens"] == 7
    assert result["params_at_end"]["metadata"] == {"app.answer_quality": "good"}
    assert result["params_at_end"]["token_usage"]["completion_tokens"] == 3
    # The child's parent link is intact: its parent existed (active) before it.
    assert spans["chat m1"]["parent_span_id"] == agent_span["id"]
    assert spans["chat m1"]["status"] == "complete"


def test_a_failing_live_span_finishes_failed_with_its_error(
    srv: DevServer, live: tuple[TracerProvider, PrefactorSpanProcessor]
) -> None:
    provider, _ = live
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("root"):
        try:
            with tracer.start_as_current_span("invoke_agent helper", attributes=AGENT):
                wait_for(lambda: spans_by_name(srv).get("invoke_agent helper"))
                raise ValueError("the agent gave up")
        except ValueError:
            pass
    assert provider.force_flush(10_000)
    agent_span = spans_by_name(srv)["invoke_agent helper"]
    assert agent_span["status"] == "failed"
    assert agent_span["result_payload"]["error"]["error_type"] == "ValueError"
    assert [i["status"] for i in srv.instances()] == ["complete"]


def test_force_flush_finishes_the_run_at_once_without_the_grace_period(
    srv: DevServer, live: tuple[TracerProvider, PrefactorSpanProcessor]
) -> None:
    provider, processor = live
    assert processor.exporter._config.finish_grace_seconds == 6.0  # the default: a timer would keep it active
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("root"):
        with tracer.start_as_current_span("invoke_agent helper", attributes=AGENT):
            with tracer.start_as_current_span("chat m1", attributes=CHAT):
                pass
    assert provider.force_flush(10_000)
    assert [i["status"] for i in srv.instances()] == ["complete"]
    assert {s["status"] for s in srv.spans()} == {"complete"}


def test_a_run_is_not_finished_while_a_span_started_in_it_is_still_open(
    srv: DevServer, live: tuple[TracerProvider, PrefactorSpanProcessor]
) -> None:
    provider, _ = live
    tracer = provider.get_tracer("t")
    root = tracer.start_span("root")
    from opentelemetry import trace

    with trace.use_span(root):
        background = tracer.start_span("background task")  # outlives the root, as async work does
    root.end()
    assert provider.force_flush(10_000)
    assert [i["status"] for i in srv.instances()] == ["active"]
    background.end()
    assert provider.force_flush(10_000)
    assert [i["status"] for i in srv.instances()] == ["complete"]
    assert spans_by_name(srv)["background task"]["status"] == "complete"


def test_the_ancestors_of_a_live_span_go_live_so_its_parent_exists(
    srv: DevServer, live: tuple[TracerProvider, PrefactorSpanProcessor]
) -> None:
    provider, _ = live
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("root"):
        with tracer.start_as_current_span("workflow step"):  # not an agent span: live only as an ancestor
            with tracer.start_as_current_span("invoke_agent helper", attributes=AGENT):
                seen = wait_for(lambda: spans_by_name(srv).get("invoke_agent helper"))
                step = spans_by_name(srv)["workflow step"]
                assert step["status"] == "active"
                assert seen["parent_span_id"] == step["id"]
                assert "orphaned" not in seen["payload"]["metadata"]
    assert provider.force_flush(10_000)
    assert {s["status"] for s in srv.spans()} == {"complete"}


@pytest.mark.parametrize(("mode", "live_names"), [("none", set()), ("all", {"root", "prepare", "chat m1"})])
def test_the_live_spans_setting_decides_which_spans_go_live(srv: DevServer, mode: str, live_names: set[str]) -> None:
    for provider, _processor in _live(srv, live_spans=mode):
        tracer = provider.get_tracer("t")
        with tracer.start_as_current_span("root"):
            with tracer.start_as_current_span("prepare"):
                with tracer.start_as_current_span("chat m1", attributes=CHAT):
                    # The run is registered at the root's start in every mode.
                    assert wait_for(lambda: srv.instances())
                    if live_names:
                        wait_for(lambda: len(srv.spans()) == len(live_names))
                    else:
                        time.sleep(0.8)  # time for a live create to arrive, were one sent
                    assert {s["payload"]["name"] for s in srv.spans()} == live_names
                    assert [i["status"] for i in srv.instances()] == ["active"]
        assert provider.force_flush(10_000)
        assert {s["payload"]["name"]: s["status"] for s in srv.spans()} == dict.fromkeys(
            ("root", "prepare", "chat m1"), "complete"
        )


def test_shutdown_finishes_a_live_span_that_never_ended_as_failed(srv: DevServer) -> None:
    provider = TracerProvider(resource=Resource.create({"service.name": "live-agent"}))
    processor = processor_for(srv)
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("t")
    root = tracer.start_span("root")
    wait_for(lambda: srv.spans())
    provider.shutdown()  # the application ends without ending its root span
    (span,) = srv.spans()
    assert span["status"] == "failed"
    assert span["result_payload"]["error"]["error_type"] == "SpanNotEnded"
    assert [i["status"] for i in srv.instances()] == ["failed"]
    root.end()


def test_started_span_records_are_bounded_and_drops_are_counted(srv: DevServer) -> None:
    for provider, processor in _live(srv, max_queued_spans=5, live_spans="none"):
        tracer = provider.get_tracer("t")
        # Hold the sender so the start queue is not emptied while the spans start.
        with processor.exporter._send_lock:
            spans = [tracer.start_span(f"s{i}") for i in range(12)]
        for index, span in enumerate(spans):
            span.end()
            if index % 5 == 4:
                assert provider.force_flush(10_000)  # ended spans in exports of at most 5: none dropped
        assert provider.force_flush(10_000)
        stats = processor.exporter.stats()
        assert stats["starts_dropped"] == 12 - 5
        assert stats["spans_exported"] == 12  # their ends still came, as without starts
        assert {i["status"] for i in srv.instances()} == {"complete"}


def test_a_span_that_never_ends_does_not_pin_memory(srv: DevServer) -> None:
    for provider, processor in _live(srv, max_queued_spans=10, live_spans="none"):
        tracer = provider.get_tracer("t")
        leaked = []
        for batch in range(3):
            leaked.extend(tracer.start_span(f"never ends {batch}-{i}") for i in range(8))
            assert processor.exporter.force_flush(10_000)
        planner = processor.exporter._pipeline.planner  # type: ignore[union-attr]
        assert planner is not None
        assert planner.open_spans <= 10
        assert processor.exporter.stats()["open_spans_forgotten"] == 24 - 10
        for span in leaked:
            span.end()


def test_spans_of_an_unsampled_trace_leave_no_record(srv: DevServer) -> None:
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    provider = TracerProvider(sampler=ALWAYS_OFF)
    processor = processor_for(srv)
    provider.add_span_processor(processor)
    with provider.get_tracer("t").start_as_current_span("root", attributes=AGENT):
        pass
    assert provider.force_flush(10_000)
    assert srv.instances() == []
    provider.shutdown()


def test_a_status_set_on_a_live_root_reaches_its_run(
    srv: DevServer, live: tuple[TracerProvider, PrefactorSpanProcessor]
) -> None:
    provider, _ = live
    with provider.get_tracer("t").start_as_current_span("root") as root:
        wait_for(lambda: srv.spans())
        root.set_status(Status(StatusCode.ERROR, "bad input"))
    assert provider.force_flush(10_000)
    assert [i["status"] for i in srv.instances()] == ["failed"]
    assert srv.spans()[0]["status"] == "failed"


def test_a_span_gone_before_its_start_was_read_still_lands_through_its_end(srv: DevServer) -> None:
    """The start queue holds weak references (a strong one kept every span alive until the sending thread read it,
    which cost the application's garbage collector): a span exported and freed before its start was read is
    delivered from its end alone, as without starts."""
    import gc

    # A short export timeout lets the blocked export give up (and the SDK let the span go) at once; it also bounds
    # force_flush, so a busy machine's slower answers could not land within it. The delivery that is checked is
    # the shutdown's, with a budget of its own. The batch worker never wakes on its own (schedule delay): only the
    # test thread exports, so no other thread's frame can still hold the batch when the span is let go.
    options: dict[str, Any] = {"export_timeout": 0.5, "shutdown_timeout": 60, "schedule_delay_millis": 600_000}
    for provider, processor in _live(srv, live_spans="none", **options):
        tracer = provider.get_tracer("t")
        exporter = processor.exporter
        with exporter._send_lock:  # the sending thread cannot read the start meanwhile
            span = tracer.start_span("short root")
            span.end()
            provider.force_flush(2_000)  # the batch export cannot send: its records wait, the span is let go
            del span
            gc.collect()
            assert len(exporter._starts) == 1 and exporter._starts[0]() is None
        provider.shutdown()
        assert [s["payload"]["name"] for s in srv.spans()] == ["short root"]
        assert [i["status"] for i in srv.instances()] == ["complete"]
        assert exporter.stats()["spans_dropped"] == 0


def test_the_application_can_read_its_runs_prefactor_id(
    srv: DevServer, live: tuple[TracerProvider, PrefactorSpanProcessor]
) -> None:
    provider, processor = live
    assert processor.run_id() is None  # outside any span
    with provider.get_tracer("t").start_as_current_span("root") as root:
        run_id = wait_for(processor.run_id)
        assert run_id == wait_for(lambda: srv.instances())[0]["id"]
        assert processor.run_id(root.get_span_context().trace_id) == run_id
    assert processor.run_id(root.get_span_context().trace_id) == run_id  # until the run is finished
    assert provider.force_flush(10_000)
    assert processor.run_id(root.get_span_context().trace_id) is None


def test_every_run_of_a_process_registers_one_agent_version_whatever_it_has_seen(
    srv: DevServer, live: tuple[TracerProvider, PrefactorSpanProcessor]
) -> None:
    """Prefactor makes an agent version per combination of version details: the details must not depend on what the
    exporter happened to have seen when a run registered (the first run registers at its root's start, before any
    span -- or any instrumentation scope -- has reached it)."""
    from prefactor_otel.mapping.resource import installed_instrumentations

    provider, processor = live
    agent = provider.get_tracer("my.agent.framework", "1.0")
    llm = provider.get_tracer("opentelemetry.instrumentation.openai_v2", "2.4b0")
    with agent.start_as_current_span("invoke_agent first", attributes=AGENT):
        wait_for(lambda: srv.instances())  # registered live: nothing has ended yet
        with llm.start_as_current_span("chat m1", attributes=CHAT):
            pass
    processor.force_flush()
    with agent.start_as_current_span("invoke_agent second", attributes=AGENT):
        with llm.start_as_current_span("chat m1", attributes=CHAT):
            pass
    processor.force_flush()
    assert sorted(i["status"] for i in srv.instances()) == ["complete", "complete"]
    versions = srv.snapshot()["agent_versions"]
    assert len(versions) == 1, versions
    assert versions[0]["runtime_environment"]["agent_sdk"] == list(installed_instrumentations())
