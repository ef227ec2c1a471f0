"""The Collector killed (SIGKILL) with acknowledged spans still queued, on collector/fleet-static-durable.yaml as
shipped (the load-balancing exporter's queue on disk, fsynced, through the file_storage extension), restarted on
the same queue directory: everything it acknowledged reaches the local server whole, once, one run per trace.

Replica `a` is down while the client sends, so every trace routed to it can only wait in the Collector's queue
when the Collector is killed; `a` comes back, then the Collector, which sends what it had queued. (With
collector/fleet-static.yaml the same kill loses those traces: its queues are in memory; collector/README.md.)
"""

from __future__ import annotations

import signal
from pathlib import Path

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace.export import SpanExportResult

from prefactor_otel.devserver import DevServer
from tests.collector_run import CollectorProcess
from tests.gateway_run import GatewayProcess
from tests.spans import wait_for
from tests.test_collector import (
    ARRIVAL_LIMIT_S,
    FLEET_GRACE,
    TRACES,
    fleet_env,
    otelcol,  # noqa: F401 (the session fixture)
    replica_ids,
    replica_of_each_trace,
    replicas,  # noqa: F401 (fixture)
)
from tests.test_gateway_http import sdk_trace, trace_hex
from tests.test_gateway_process import all_arrived, assert_delivered_once


def test_collector_killed_with_a_persistent_queue_sends_what_it_acknowledged_after_its_restart(
    otelcol: Path,  # noqa: F811
    srv: DevServer,
    replicas: dict[str, GatewayProcess],  # noqa: F811
    tmp_path: Path,
) -> None:
    ids = replica_ids(replicas)
    env = {**fleet_env(replicas), "COLLECTOR_QUEUE_DIR": str(tmp_path / "collector-queue")}
    down = replicas["a"]
    assert down.stop(signal.SIGKILL) == -signal.SIGKILL
    with CollectorProcess("fleet-static-durable.yaml", env, otelcol) as collector:
        exporter = OTLPSpanExporter(endpoint=collector.traces_url)
        traces = []
        for _ in range(TRACES):
            spans = sdk_trace()
            assert exporter.export(spans) is SpanExportResult.SUCCESS  # acknowledged: on the Collector's disk
            traces.append(trace_hex(spans))
        exporter.shutdown()
        assert collector.kill() == -signal.SIGKILL
        first_output = collector.output()
    assert not all_arrived(srv, traces)  # a's traces were only in the Collector's queue
    restarted = GatewayProcess(srv, down.directory, env=FLEET_GRACE, args=down.args)
    replicas["a"] = restarted.start()
    restarted.wait_ready()
    with CollectorProcess("fleet-static-durable.yaml", env, otelcol) as collector:
        assert wait_for(lambda: all_arrived(srv, traces), ARRIVAL_LIMIT_S), (
            f"before the kill:\n{first_output}\nafter the restart:\n{collector.output()}"
        )
        assert collector.stop() == 0, collector.output()
    assert_delivered_once(srv, traces)  # every span once, one run per trace, every run finished
    owners = replica_of_each_trace(srv, traces, ids)
    assert set(owners.values()) == {"a", "b"}, f"one replica took every trace: {owners}"
