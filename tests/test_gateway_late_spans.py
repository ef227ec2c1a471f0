"""A span that reaches the gateway after its run was finished opens the trace's next run; it is not dropped.

A real `prefactor-otel gateway` process (grace 0, as tests/gateway_run.py runs it: a run is finished as soon as its
root is in) in front of the local server, spans sent as OTLP/HTTP protobuf: a trace's root alone, its run finished,
then its children together with a retried copy of the root (a client whose acknowledgement was lost). The children
land in the trace's second run (`otel:<trace>:<replica>:1`), the top child with its OTel parent (the root, in the
first run) kept in its payload; the root is not sent again; both runs are finished, nothing is `active`; `/stats`
counts the reopened run and the ignored copy, and nothing dropped. The local server's run views list both runs of
the trace together (docs/gateway.md, "Late spans").
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from prefactor_otel.devserver import DevServer
from prefactor_otel.devserver.render import render_runs
from prefactor_otel.devserver.runview import run_views
from tests.gateway_run import GatewayProcess
from tests.spans import wait_for
from tests.test_gateway_core import stored_once
from tests.test_gateway_http import sdk_trace, trace_hex
from tests.test_gateway_stats import finished_runs, post, root_and_children, stats_of


@pytest.fixture
def gateway(srv: DevServer, tmp_path: Path) -> Iterator[GatewayProcess]:
    with GatewayProcess(srv, tmp_path / "gw") as process:
        process.wait_ready()
        yield process


def bulk_items(srv: DevServer) -> int:
    return sum(r.item_count or 0 for r in srv.requests if r.path == "/api/v1/bulk" and r.status == 200)


def test_a_late_child_lands_in_the_traces_next_run_and_a_retried_copy_is_not_sent_twice(
    srv: DevServer, gateway: GatewayProcess
) -> None:
    spans = sdk_trace()
    trace = trace_hex(spans)
    roots, children = root_and_children(spans)
    post(gateway, roots)
    assert wait_for(lambda: finished_runs(srv) == 1, 30), gateway.output()
    first_items = bulk_items(srv)
    assert first_items == 4  # register, start, the root, finish

    post(gateway, [*children, *roots])  # late children, and the root again (a client's retry)
    assert wait_for(lambda: finished_runs(srv) == 2 and len(srv.spans()) == len(spans), 30), gateway.output()
    view = stats_of(gateway.http_url)["pipelines"]["default.default"]
    assert view["runs_reopened_late"] == 1 and view["spans_duplicate_ignored"] == 1
    assert view["spans_accepted"] == len(spans) + 1 and view["spans_exported"] == len(spans)
    assert view["spans_dropped"] == 0 and view["dropped_by_reason"] == {}
    assert view["open_traces"] == 0 and view["spans_queued"] == 0
    # The copy of the root was not sent again: the second run is register, start, its spans, finish.
    assert bulk_items(srv) - first_items == 2 + len(children) + 1

    stored = stored_once(srv)  # every span on the server once
    instances = {instance["id"]: instance for instance in srv.instances()}
    assert len(instances) == 2 and all(i["finished_at"] is not None for i in instances.values())
    assert all(i["status"] == "complete" for i in instances.values())
    assert all(span["status"] != "active" for span in stored.values())
    by_name = {span["payload"]["name"]: span for span in stored.values()}
    root = by_name["invoke_agent support"]
    first = instances[root["agent_instance_id"]]
    second = instances[by_name["execute_tool lookup"]["agent_instance_id"]]
    replica = first["external_identifier"].split(":")[2]
    assert first["external_identifier"] == f"otel:{trace}:{replica}"
    assert second["external_identifier"] == f"otel:{trace}:{replica}:1"
    assert {span["agent_instance_id"] for name, span in by_name.items() if name != root["payload"]["name"]} == {
        second["id"]
    }
    # The children whose parent is the root are the second run's tops: no Prefactor parent (the root is in the
    # first run), their OTel parent kept; the grandchild is an ordinary child.
    for name in ("chat gpt-4o", "execute_tool lookup"):
        top = by_name[name]
        assert top["parent_span_id"] is None
        assert top["payload"]["parent_span_id"] == root["payload"]["span_id"]
        assert top["payload"]["metadata"]["prefactor.parent_in_earlier_run"] is True
        assert not top["payload"]["metadata"].get("orphaned")
    assert by_name["db query"]["parent_span_id"] == by_name["execute_tool lookup"]["id"]

    # The local server lists the two runs of the trace together, as a cross-process trace's parts (in the order of
    # their starts, which may share a millisecond).
    views = run_views(srv.snapshot())
    assert [v["trace_id"] for v in views] == [trace, trace]
    assert {v["id"] for v in views} == {first["id"], second["id"]}
    # The late run says which span of the earlier run it continues (the page and `show` print it), and comes after it.
    assert [v["id"] for v in views] == [first["id"], second["id"]]
    view = views[1]
    assert view["continues"] == [
        {
            "otel_span_id": root["payload"]["span_id"],
            "run_id": first["id"],
            "span_id": root["id"],
            "span_name": "invoke_agent support",
        }
    ]
    assert f"  continues invoke_agent support of run {first['id']}\n" in render_runs(srv.snapshot())
