"""A gateway replica removed from the Collector's load-balancing list while traces are open, then added back: the
real Collector (collector/fleet-static.yaml as shipped, its replica list overridden by a second configuration
file and re-read on SIGHUP, as a resolver change would) in front of two real gateway replicas and the local server.

While replica `a` is removed, the rest of a trace it had begun goes to `b`: that trace is split over two replicas.
The cross-process rules then hold (docs/cross-process.md, docs/gateway.md "Run identity"): each replica's part is a
run of its own, named `otel:<trace>:<replica id>`, the two never collide (different run ids), no span is lost or
sent twice, and both runs finish (`a`'s part has no root: its children are sent as orphans after
PREFACTOR_MAX_WAIT_SECONDS and the run is finished without its root). Once `a` is back in the list, new traces are
spread over both replicas again, each whole on one.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult

from prefactor_otel.devserver import DevServer
from tests.collector_run import CollectorProcess, free_port
from tests.gateway_run import GatewayProcess
from tests.spans import wait_for
from tests.test_collector import (
    ARRIVAL_LIMIT_S,
    TRACES,
    otelcol,  # noqa: F401 (the session fixture)
    replica_ids,
    replica_of_each_trace,
    send_split,
    to_gateway_env,
)
from tests.test_gateway_http import sdk_trace, trace_hex
from tests.test_gateway_process import SPANS_PER_TRACE, all_arrived, assert_delivered_once

# A part without its root: its children wait this long for their parent before being sent as orphans. It must
# stay above the time the test takes to send the roots after the children: a part finished before its root comes
# drops the root (`instance_already_finished`), as in production.
REPLICA_ENV = {"PREFACTOR_MAX_WAIT_SECONDS": "30"}


def write_replicas(path: Path, targets: list[str]) -> None:
    path.write_text(
        f"exporters:\n  load_balancing:\n    resolver:\n      static:\n        hostnames: [{', '.join(targets)}]\n"
    )


def parts_on_server(srv: DevServer) -> dict[str, dict[str, list[dict[str, object]]]]:
    """trace -> run id -> its spans; asserts every span is on the server once."""
    found: dict[str, dict[str, list[dict[str, object]]]] = defaultdict(lambda: defaultdict(list))
    seen: set[tuple[str, str]] = set()
    for span in srv.spans():
        payload = span["payload"]
        key = (str(payload["trace_id"]), str(payload["span_id"]))
        assert key not in seen, f"span {key} is on the server twice"
        seen.add(key)
        found[key[0]][str(span["agent_instance_id"])].append(span)
    return found


def describe(srv: DevServer, traces: list[str]) -> str:
    parts = parts_on_server(srv)
    instances = {str(i["id"]): i for i in srv.instances()}
    return "\n".join(
        f"{t}: "
        + ", ".join(
            f"{instances[r]['external_identifier']} {len(s)} spans {instances[r]['status']}"
            for r, s in parts.get(t, {}).items()
        )
        for t in traces
    )


def split_traces_finished(srv: DevServer, traces: list[str]) -> bool:
    parts = parts_on_server(srv)
    instances = {str(i["id"]): i for i in srv.instances()}
    for trace in traces:
        runs = parts.get(trace, {})
        if sum(len(spans) for spans in runs.values()) != SPANS_PER_TRACE:
            return False
        if any(instances[run]["finished_at"] is None for run in runs):
            return False
    return True


def test_replica_removed_and_added_back_while_traces_are_open(
    otelcol: Path,  # noqa: F811
    srv: DevServer,
    tmp_path: Path,
) -> None:
    replicas: dict[str, GatewayProcess] = {}
    try:
        for name in ("a", "b"):
            gateway = GatewayProcess(
                srv, tmp_path / f"gw-{name}", env=REPLICA_ENV, args=["--grpc-port", str(free_port())]
            )
            replicas[name] = gateway.start()
            gateway.wait_ready()
        ids = replica_ids(replicas)
        targets = {name: gw.grpc_target for name, gw in replicas.items()}
        override = tmp_path / "replicas.yaml"
        write_replicas(override, [targets["a"], targets["b"]])
        env = to_gateway_env(PREFACTOR_GATEWAY_REPLICAS=f"[{targets['a']}, {targets['b']}]")
        with CollectorProcess("fleet-static.yaml", env, otelcol, overrides=[override]) as collector:
            exporter = OTLPSpanExporter(endpoint=collector.traces_url)
            # Open traces: their children go out now, their roots only after `a` is removed.
            open_traces: list[tuple[str, list[ReadableSpan]]] = []
            for _ in range(TRACES):
                spans = sdk_trace()
                children = [span for span in spans if span.parent is not None]
                assert exporter.export(children) is SpanExportResult.SUCCESS
                open_traces.append((trace_hex(spans), [span for span in spans if span.parent is None]))
            opened = [trace for trace, _ in open_traces]
            # No wait for the children to reach the server: they wait there for their root (REPLICA_ENV). The
            # reload drains the old pipeline into the old list first.
            write_replicas(override, [targets["b"]])  # `a` removed
            collector.reload()
            for _, roots in open_traces:
                assert exporter.export(roots) is SpanExportResult.SUCCESS
            assert wait_for(lambda: split_traces_finished(srv, opened), ARRIVAL_LIMIT_S), (
                f"{collector.output()}\nparts: {describe(srv, opened)}"
            )

            write_replicas(override, [targets["a"], targets["b"]])  # `a` added back
            collector.reload()
            later = send_split(exporter, TRACES)
            exporter.shutdown()
            assert wait_for(lambda: all_arrived(srv, later), ARRIVAL_LIMIT_S), collector.output()
            assert collector.stop() == 0, collector.output()

        # The open traces: every span once, every run finished, nothing active; a split trace is two runs, one per
        # replica, each named by its replica, never the same run.
        parts = parts_on_server(srv)
        instances = {str(i["id"]): i for i in srv.instances()}
        split = 0
        for trace in opened:
            runs = parts[trace]
            assert sum(len(spans) for spans in runs.values()) == SPANS_PER_TRACE
            named = {str(instances[run]["external_identifier"]) for run in runs}
            assert len(named) == len(runs), f"trace {trace}: two runs share a name {named}"
            assert named <= {f"otel:{trace}:{ids['a']}", f"otel:{trace}:{ids['b']}"}, named
            for run, spans in runs.items():
                assert instances[run]["status"] != "active" and instances[run]["finished_at"] is not None
                assert all(span["status"] not in ("active", "pending") for span in spans)
            root_runs = [
                run for run, spans in runs.items() if any(s["payload"]["parent_span_id"] is None for s in spans)
            ]
            assert len(root_runs) == 1 and instances[root_runs[0]]["external_identifier"] == f"otel:{trace}:{ids['b']}"
            split += len(runs) == 2
        assert split > 0, "no open trace had begun on the removed replica"
        # After `a` came back: whole traces again, spread over both replicas.
        assert_delivered_once(srv, later)
        owners = replica_of_each_trace(srv, later, ids)
        assert set(owners.values()) == {"a", "b"}, f"the re-added replica took no trace: {owners}"
    finally:
        for gateway in replicas.values():
            gateway.__exit__()
