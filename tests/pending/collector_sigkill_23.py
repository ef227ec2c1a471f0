"""PENDING (issue 23, part 3): a gateway replica SIGKILLed while a Python client streams through the real Collector
(collector/fleet-static.yaml, two replicas), restarted on the same directory and gRPC port: every trace the
Collector acknowledged should reach the local server whole, once, in one run, on its replica.

Kept out of the suite by its file name (run it by name:
`python -m pytest -q -n 0 tests/pending/collector_sigkill_23.py`) because it FAILS in about 2 runs of 3 on this
machine: after the restart some acknowledged traces are not all on the server within 120 s, while the Collector
logs no dropped data and no retry (only the gRPC reconnect warning). Not yet known whether the Collector's
per-replica OTLP exporter lost requests in flight at the kill, or the restarted replica lost or cannot finish a
trace it replayed: the next step is to print which spans of which traces are missing and which replica's ingress
log held them.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace.export import SpanExportResult

from prefactor_otel.devserver import DevServer
from tests.collector_run import CollectorProcess
from tests.gateway_run import GatewayProcess
from tests.spans import wait_for
from tests.test_collector import (  # noqa: F401 (fixtures)
    ARRIVAL_LIMIT_S,
    STREAM_LIMIT,
    fleet_env,
    otelcol,
    replica_ids,
    replica_of_each_trace,
    replicas,
)
from tests.test_gateway_http import sdk_trace, trace_hex
from tests.test_gateway_process import all_arrived, assert_delivered_once


class TraceStream:
    """A Python OTLP/HTTP client sending split traces to the Collector on its own thread until told to stop;
    `acknowledged` holds the traces whose every request the Collector answered with success."""

    def __init__(self, collector: CollectorProcess) -> None:
        self._exporter = OTLPSpanExporter(endpoint=collector.traces_url)
        self.acknowledged: list[str] = []
        self.failed: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TraceStream:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(120)
        assert not self._thread.is_alive()
        self._exporter.shutdown()

    def _run(self) -> None:
        for _ in range(STREAM_LIMIT):
            if self._stop.is_set():
                return
            spans = sdk_trace()
            children = [span for span in spans if span.parent is not None]
            roots = [span for span in spans if span.parent is None]
            ok = all(self._exporter.export(part) is SpanExportResult.SUCCESS for part in (children, roots))
            with self._lock:
                (self.acknowledged if ok else self.failed).append(trace_hex(spans))

    def count(self) -> int:
        with self._lock:
            return len(self.acknowledged)


def test_replica_sigkilled_and_restarted_mid_stream_loses_nothing_acknowledged(
    otelcol: Path,  # noqa: F811
    srv: DevServer,
    replicas: dict[str, GatewayProcess],  # noqa: F811
) -> None:
    """Replica `a` is SIGKILLed while a client streams through the Collector, then restarted on the same directory
    and gRPC port: the Collector's per-replica exporter retries what `a` did not acknowledge (its traces stay on
    `a`), `a`'s ingress log replays what it did; every acknowledged trace arrives whole, once, in one run."""
    ids_before = replica_ids(replicas)
    with CollectorProcess("fleet-static.yaml", fleet_env(replicas), otelcol) as collector:
        with TraceStream(collector) as stream:
            assert wait_for(lambda: stream.count() >= 30, 60), collector.output()
            killed = replicas["a"]
            assert killed.stop(signal.SIGKILL) == -signal.SIGKILL
            at_kill = stream.count()
            assert wait_for(lambda: stream.count() >= at_kill + 20, 60), collector.output()
            restarted = GatewayProcess(srv, killed.directory, args=killed.args)
            replicas["a"] = restarted.start()
            restarted.wait_ready()
            assert restarted.grpc_port == killed.grpc_port
            assert wait_for(lambda: stream.count() >= at_kill + 40, 60), collector.output()
        assert not stream.failed, f"the Collector refused {len(stream.failed)} traces:\n{collector.output()}"
        traces = stream.acknowledged
        assert wait_for(lambda: all_arrived(srv, traces), ARRIVAL_LIMIT_S), (
            f"collector:\n{collector.output()}\nrestarted a:\n{restarted.output()}"
        )
        assert collector.stop() == 0, collector.output()
    assert replica_ids(replicas) == ids_before  # the restart kept its replica id, so its run ids
    assert_delivered_once(srv, traces)
    owners = replica_of_each_trace(srv, traces, ids_before)
    assert set(owners.values()) == {"a", "b"}, f"one replica took every trace: {owners}"
