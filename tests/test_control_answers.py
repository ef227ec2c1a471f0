"""Control in answers, over real HTTP against the local server: `control` in bulk and REST span answers becomes
the outcome's `terminate` and reaches the delivery hook, for every item, live or spooled alike."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace.export import SpanExportResult

from prefactor_otel import PrefactorConfig
from prefactor_otel.devserver import DevServer, Fault
from prefactor_otel.model.http import BULK_CREATE_SPAN, BULK_REGISTER, BULK_START
from prefactor_otel.pipeline.delivery import Delivery, SpooledSource
from prefactor_otel.pipeline.items import PlannedItem
from prefactor_otel.transport.client import BulkTransport
from prefactor_otel.transport.wire import encode_item, instance_id_of
from tests.spans import agent_trace, exporter_for, make_provider

TOKEN = "pf_control_token_secret"


def _config(srv: DevServer) -> PrefactorConfig:
    return PrefactorConfig.load({}, api_url=srv.url, api_token=srv.token, export_timeout=5)


def _spooled_run(srv: DevServer, spool_dir: Path) -> list[dict[str, Any]]:
    """The wire items of one agent run, as the exporter wrote them to its spool while the server was unreachable."""
    provider, collector = make_provider()
    agent_trace(provider)
    srv.add_fault(Fault(drop_connection=True, times=-1))
    exporter = exporter_for(srv, spool_dir=str(spool_dir), export_timeout=1)
    assert exporter.export(collector.spans) is SpanExportResult.FAILURE
    exporter.shutdown(timeout_millis=500)
    srv.clear_faults()
    items: list[dict[str, Any]] = []
    for path in sorted(spool_dir.iterdir()):
        if path.name[0].isdigit() and path.suffix == ".json":
            items += json.loads(path.read_bytes())["items"]
    return items


def _started_then_terminated(srv: DevServer, delivery: Delivery, items: list[dict[str, Any]]) -> str:
    """Register and start the run, then terminate it as an operator would; its id."""
    opening = [item for item in items if item["_type"] in (BULK_REGISTER, BULK_START)]
    assert delivery.drain(SpooledSource(opening), time.monotonic() + 10)
    instance_id = instance_id_of(opening[0])
    assert instance_id is not None
    srv.terminate(instance_id, "stopped by the operator")
    return instance_id


def test_bulk_answers_in_a_terminated_run_reach_the_hook_per_item_with_the_reason(tmp_path):
    with DevServer(token=TOKEN) as srv:
        items = _spooled_run(srv, tmp_path)
        creates = [item for item in items if item["_type"] == BULK_CREATE_SPAN]
        config = _config(srv)
        transport = BulkTransport(config, sdk_header="tests")
        delivery = Delivery(transport, config)
        heard: list[tuple[str, str | None, str | None]] = []
        delivery.on_terminate = lambda item, reason: heard.append((item.key, instance_id_of(item.body), reason))
        # Before the run is terminated, answers carry no control.
        first = creates[0]
        result = transport.send_bulk([encode_item(first)], [first["idempotency_key"]], time.monotonic() + 10)
        assert result.error is None  # (in a run not registered yet the create fails; what matters: no control)
        assert not result.outcomes[first["idempotency_key"]].terminate
        instance_id = _started_then_terminated(srv, delivery, items)
        source = SpooledSource(creates)
        assert delivery.drain(source, time.monotonic() + 10)
        transport.close()
        assert heard == [(c["idempotency_key"], instance_id, "stopped by the operator") for c in creates]
        assert delivery.counters["control_terminate_answers"] == len(creates)
        assert len(srv.spans(instance_id)) == len(creates)  # the server took them (with control in its answers)


def test_the_rest_fallback_reads_control_from_the_span_answer(tmp_path):
    with DevServer(token=TOKEN) as srv:
        items = _spooled_run(srv, tmp_path)
        config = _config(srv)
        transport = BulkTransport(config, sdk_header="tests")
        delivery = Delivery(transport, config)
        instance_id = _started_then_terminated(srv, delivery, items)
        root = next(item for item in items if item["_type"] == BULK_CREATE_SPAN)
        outcome = transport.send_rest(root, time.monotonic() + 10).outcomes[root["idempotency_key"]]
        assert outcome.status == "success" and outcome.terminate
        assert outcome.terminate_reason == "stopped by the operator"
        # The same through delivery, for an action sent as its REST call.
        delivery.rest_only.add(BULK_CREATE_SPAN)
        heard: list[PlannedItem] = []
        delivery.on_terminate = lambda item, reason: heard.append(item)
        srv.clear_requests()
        rest = [item for item in items if item["_type"] == BULK_CREATE_SPAN][1:]
        assert delivery.drain(SpooledSource(rest), time.monotonic() + 10)
        transport.close()
        assert [item.key for item in heard] == [item["idempotency_key"] for item in rest]
        assert {(r.method, r.path) for r in srv.requests} == {("POST", "/api/v1/agent_spans")}
        assert len(srv.spans(instance_id)) == 1 + len(rest)


def test_a_hook_that_raises_is_counted_and_delivery_goes_on(tmp_path):
    with DevServer(token=TOKEN) as srv:
        items = _spooled_run(srv, tmp_path)
        config = _config(srv)
        transport = BulkTransport(config, sdk_header="tests")
        delivery = Delivery(transport, config)
        instance_id = _started_then_terminated(srv, delivery, items)

        def broken(item: PlannedItem, reason: str | None) -> None:
            raise RuntimeError("wiring bug")

        delivery.on_terminate = broken
        creates = [item for item in items if item["_type"] == BULK_CREATE_SPAN]
        assert delivery.drain(SpooledSource(creates), time.monotonic() + 10)
        transport.close()
        assert delivery.counters["control_hook_errors"] == len(creates)
        assert len(srv.spans(instance_id)) == len(creates)
