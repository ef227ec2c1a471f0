"""The pipeline stands without the SDK exporter: what a gateway decoding OTLP will do.

Spans are built as a decoder builds them (`ReadableSpan` objects with their ids, parents, resource, status and
times; no TracerProvider, no SpanProcessor, no SpanExporter), mapped with the mapping's public `map_span`, and fed to
a `Pipeline` built from its parts (config, a Delivery over a BulkTransport, no spool), which plans and delivers them
to the local server over real HTTP. The assertions read what the server holds: the runs, their spans, parent links,
finishes and statuses.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, TraceFlags
from opentelemetry.trace.status import Status, StatusCode

from prefactor_otel.config.options import PrefactorConfig
from prefactor_otel.devserver import DevServer
from prefactor_otel.mapping import MappingOptions, SpanRecord, map_span
from prefactor_otel.pipeline.delivery import Delivery
from prefactor_otel.pipeline.pipeline import Pipeline
from prefactor_otel.transport.client import BulkTransport

RESOURCE = Resource({"service.name": "gateway-fed", "service.version": "3"})
SCOPE = InstrumentationScope("decoded.from.otlp", "1.0")
T0 = 1_700_000_000_000_000_000  # ns


def decoded(
    trace_id: int,
    span_id: int,
    parent_id: int | None,
    name: str,
    start_ms: int,
    end_ms: int,
    attributes: dict[str, object] | None = None,
    *,
    error: str | None = None,
    remote_parent: bool = False,
) -> ReadableSpan:
    """A span as an OTLP decoder rebuilds it: plain data, nothing of an SDK pipeline."""
    context = SpanContext(trace_id, span_id, is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    parent = (
        SpanContext(trace_id, parent_id, is_remote=remote_parent, trace_flags=TraceFlags(TraceFlags.SAMPLED))
        if parent_id is not None
        else None
    )
    return ReadableSpan(
        name=name,
        context=context,
        parent=parent,
        resource=RESOURCE,
        attributes=attributes or {},
        kind=SpanKind.INTERNAL,
        status=Status(StatusCode.ERROR, error) if error is not None else Status(StatusCode.OK),
        start_time=T0 + start_ms * 1_000_000,
        end_time=T0 + end_ms * 1_000_000,
        instrumentation_scope=SCOPE,
    )


def standalone(srv: DevServer) -> tuple[Pipeline, MappingOptions]:
    """A pipeline from its parts, as the exporter builds it and a gateway will (no spool here), and the mapping
    options of the same configuration."""
    config = PrefactorConfig.load({}, api_url=srv.url, api_token=srv.token, export_timeout=10, spool=False)
    options = MappingOptions.from_config(config)
    delivery = Delivery(BulkTransport(config, sdk_header="tests-gateway"), config)
    return Pipeline(config, delivery, None, partition=None, redactor=options.redactor), options


def records(spans: Iterable[ReadableSpan], options: MappingOptions) -> list[SpanRecord]:
    return [map_span(span, options) for span in spans]


def figures(pipeline: Pipeline) -> tuple[Counter[str], Counter[str], Counter[str], int, int]:
    counters, dropped, actions_dropped = Counter[str](), Counter[str](), Counter[str]()
    queued, open_runs = pipeline.collect(counters, dropped, actions_dropped)
    return counters, dropped, actions_dropped, queued, open_runs


# An agent run: invoke_agent -> chat, execute_tool -> db query; and a second run whose tool fails.
AGENT = 0xA1
FAILING = 0xB2


def agent_run() -> list[ReadableSpan]:
    return [
        decoded(
            AGENT,
            0x11,
            None,
            "invoke_agent support",
            0,
            90,
            {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "support"},
        ),
        decoded(
            AGENT,
            0x12,
            0x11,
            "chat gpt-4o",
            5,
            40,
            {
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": "gpt-4o",
                "gen_ai.usage.input_tokens": 12,
                "gen_ai.usage.output_tokens": 5,
            },
        ),
        decoded(
            AGENT,
            0x13,
            0x11,
            "execute_tool lookup",
            45,
            80,
            {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "lookup"},
        ),
        decoded(AGENT, 0x14, 0x13, "db query", 50, 70),
    ]


def failing_run() -> list[ReadableSpan]:
    return [
        decoded(  # the run's status is its root's: the error went up through it
            FAILING,
            0x21,
            None,
            "invoke_agent failing",
            100,
            160,
            {"gen_ai.operation.name": "invoke_agent"},
            error="ValueError: the tool exploded",
        ),
        decoded(
            FAILING,
            0x22,
            0x21,
            "execute_tool boom",
            110,
            150,
            {"gen_ai.tool.name": "boom"},
            error="ValueError: the tool exploded",
        ),
    ]


def by_otel_id(srv: DevServer) -> dict[tuple[str, str], dict[str, object]]:
    stored: dict[tuple[str, str], dict[str, object]] = {}
    for span in srv.spans():
        payload = span["payload"]
        key = (payload["trace_id"], payload["span_id"])
        assert key not in stored  # every span exactly once
        stored[key] = span
    return stored


def test_decoded_spans_become_runs_and_spans_on_the_server_without_the_sdk_exporter(srv: DevServer) -> None:
    pipeline, options = standalone(srv)
    agent, failing = agent_run(), failing_run()
    # As an OTLP batch may bring them: children before their parents, the runs interleaved, the roots last.
    pipeline.add(records([agent[3], failing[1], agent[1], agent[2]], options))
    assert pipeline.drain(time.monotonic() + 10)
    assert srv.spans() == []  # they wait for their parents: nothing of a run before its root has ended
    counters, dropped, _actions, queued, open_runs = figures(pipeline)
    assert queued == 4 and open_runs == 2 and not dropped

    pipeline.add(records([agent[0], failing[0]], options))
    assert pipeline.drain(time.monotonic() + 10, flush=True)

    instances = {instance["id"]: instance for instance in srv.instances()}
    assert len(instances) == 2
    stored = by_otel_id(srv)
    assert len(stored) == 6
    run_status = {}
    for span in [*agent, *failing]:
        assert span.context is not None
        trace_hex, span_hex = f"{span.context.trace_id:032x}", f"{span.context.span_id:016x}"
        mine = stored[(trace_hex, span_hex)]
        if span.parent is None:
            assert mine["parent_span_id"] is None
            run_status[span.name] = instances[str(mine["agent_instance_id"])]["status"]
        else:
            parent = stored[(trace_hex, f"{span.parent.span_id:016x}")]
            assert mine["parent_span_id"] == parent["id"]  # the tree as the spans said it
            assert mine["agent_instance_id"] == parent["agent_instance_id"]
        assert mine["status"] == ("failed" if span.status.status_code is StatusCode.ERROR else "complete")
        assert mine["started_at"] is not None and mine["finished_at"] is not None
    assert run_status == {"invoke_agent support": "complete", "invoke_agent failing": "failed"}
    assert all(instance["finished_at"] is not None for instance in instances.values())

    counters, dropped, actions_dropped, queued, open_runs = figures(pipeline)
    assert counters["spans_exported"] == 6 and counters["instances_finished"] == 2
    assert queued == 0 and open_runs == 0 and not dropped and not actions_dropped
    pipeline.close()


def test_a_child_whose_parent_never_comes_is_sent_as_an_orphan_when_the_pipeline_shuts_down(srv: DevServer) -> None:
    pipeline, options = standalone(srv)
    agent = agent_run()
    pipeline.add(records(agent[1:], options))  # the root never arrives (its process died, or its batch was lost)
    assert pipeline.drain(time.monotonic() + 10, shutdown=True)

    stored = by_otel_id(srv)
    assert len(stored) == 3  # kept: a span is never dropped for a missing parent
    trace_hex = f"{AGENT:032x}"
    for child in ("0000000000000012", "0000000000000013"):
        orphan = stored[(trace_hex, child)]
        assert orphan["parent_span_id"] is None
        payload = orphan["payload"]
        assert isinstance(payload, dict) and payload["metadata"]["orphaned"] is True
    grandchild = stored[(trace_hex, "0000000000000014")]
    assert grandchild["parent_span_id"] == stored[(trace_hex, "0000000000000013")]["id"]  # the chain below stays
    (instance,) = srv.instances()
    assert instance["status"] == "complete" and instance["finished_at"] is not None
    counters, dropped, _actions, queued, open_runs = figures(pipeline)
    assert counters["spans_orphaned_shutdown"] == 2 and counters["spans_exported"] == 3
    assert queued == 0 and open_runs == 0 and not dropped
    pipeline.close()


def test_the_pipeline_and_the_mapping_import_nothing_of_the_sdk_face() -> None:
    """What a gateway imports to use the pipeline pulls in neither our exporter nor the SDK's export module."""
    probe = (
        "import sys\n"
        "import prefactor_otel.pipeline.pipeline, prefactor_otel.pipeline.backlog, prefactor_otel.mapping\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('prefactor_otel.sdk')"
        " or m == 'opentelemetry.sdk.trace.export')\n"
        "print(loaded)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "[]"


def test_an_item_the_encoder_refuses_is_reported_and_the_rest_of_its_run_delivered(srv: DevServer) -> None:
    # Planned items carry their bytes (pipeline/items.py, wire_data); one the encoder refuses stays a dict, and the
    # send path reports it as before: dropped, counted, and nothing else of the run lost with it.
    pipeline, options = standalone(srv)
    mapped = records(agent_run(), options)
    leaf = mapped[3]  # the db query: no span hangs under it
    leaf.payload = {"value": object()}  # what no encoder writes (the mapping never makes one)
    pipeline.add(mapped)
    assert pipeline.drain(time.monotonic() + 10, flush=True)
    stored = by_otel_id(srv)
    assert sorted(span_hex for _, span_hex in stored) == ["0000000000000011", "0000000000000012", "0000000000000013"]
    counters, dropped, _actions, queued, open_runs = figures(pipeline)
    assert dict(dropped) == {"rejected:unencodable": 1} and counters["spans_exported"] == 3
    assert queued == 0 and open_runs == 0
    assert [i["status"] for i in srv.instances()] == ["complete"]
    pipeline.close()
