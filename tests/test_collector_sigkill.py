"""A gateway replica SIGKILLed while a Python client streams through the real Collector (collector/fleet-static.yaml
as shipped, two replicas), then restarted on the same directory and gRPC port: every trace the Collector
acknowledged reaches the local server whole, once, in one run, built by its replica.

The Collector's per-replica OTLP exporter retries what the killed replica did not acknowledge (the trace stays on
its replica: the list is unchanged), and the restarted replica replays its ingress log (what it did acknowledge).
Each trace is sent in two requests, its children and then its root, so after the restart the two may reach the
replica in either order: each failed request is retried on its own back-off, up to 1.5 x the exporter's
`max_interval` apart. The replicas therefore run with the gateway's default finish grace (15 s: how long a run
stays open after its root for spans that come later), as in production, not the tests' usual 0: with 0, a root
retried before its children finishes the run at once and the children that follow are dropped
(`instance_already_finished`), the one failure this test used to show (docs/gateway.md, "Fleets").

When a trace is not whole the failure says, per trace: which spans are missing or doubled, which replica built
it, whether the killed replica's ingress log held its spans at the kill (a copy of its directory taken at once),
and the Collector's own counters (sent, failed, per-replica outcomes).
"""

from __future__ import annotations

import shutil
import signal
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace.export import SpanExportResult

from prefactor_otel.devserver import DevServer
from prefactor_otel.durability.ingress_log import IngressLog
from prefactor_otel.gateway.otlp import OtlpDecodeError, decode_spans, parse_protobuf
from prefactor_otel.gateway.settings import GATEWAY_FINISH_GRACE_S
from tests.collector_run import CollectorProcess, free_port
from tests.gateway_run import GatewayProcess
from tests.spans import wait_for
from tests.test_collector import (
    ARRIVAL_LIMIT_S,
    STREAM_LIMIT,
    fleet_env,
    otelcol,  # noqa: F401 (the session fixture)
    replica_ids,
    replica_of_each_trace,
)
from tests.test_gateway_http import sdk_trace, trace_hex
from tests.test_gateway_process import SPANS_PER_TRACE, all_arrived, assert_delivered_once

# The gateway's default: how long a run stays open after its root, for spans retried after it.
PRODUCTION_GRACE = {"PREFACTOR_FINISH_GRACE_SECONDS": str(GATEWAY_FINISH_GRACE_S)}


@pytest.fixture
def replicas(srv: DevServer, tmp_path: Path) -> Iterator[dict[str, GatewayProcess]]:
    """Two gateway replicas with the gateway's default finish grace, each on its own directory and gRPC port (kept
    across a restart)."""
    started: dict[str, GatewayProcess] = {}
    try:
        for name in ("a", "b"):
            args = ["--grpc-port", str(free_port())]
            gateway = GatewayProcess(srv, tmp_path / f"gw-{name}", env=PRODUCTION_GRACE, args=args)
            started[name] = gateway.start()
            gateway.wait_ready()
        yield started
    finally:
        for gateway in started.values():
            gateway.__exit__()


class TraceStream:
    """A Python OTLP/HTTP client sending split traces (children, then root) to the Collector on its own thread until
    told to stop; `acknowledged` holds the traces whose every request the Collector answered with success."""

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


def logged_spans(directory: Path) -> dict[str, set[str]]:
    """trace -> the span ids an ingress log (a copy of a replica's `<dir>/log`) holds."""
    log = IngressLog(directory, max_bytes=1 << 40, segment_bytes=1 << 30)
    log.open()
    found: dict[str, set[str]] = {}
    try:
        for record in log.replay():
            try:
                decoded = decode_spans(parse_protobuf(record.data))
            except OtlpDecodeError:
                continue
            for span in decoded.spans:
                assert span.context is not None
                found.setdefault(f"{span.context.trace_id:032x}", set()).add(f"{span.context.span_id:016x}")
    finally:
        log.close()
    return found


def _name(span: dict[str, Any]) -> str:
    payload = span["payload"]
    return str(payload.get("name", "?")) if isinstance(payload, dict) else "?"


def delivery_report(
    srv: DevServer, traces: list[str], replicas: dict[str, str], at_kill: dict[str, set[str]], collector_metrics: str
) -> str:
    """What is wrong with each trace that did not arrive whole (for a failure message)."""
    by_id = {replica_id: name for name, replica_id in replicas.items()}
    instances = {str(i["id"]): i for i in srv.instances()}
    spans_of: dict[str, list[dict[str, Any]]] = {}
    for span in srv.spans():
        spans_of.setdefault(str(span["payload"]["trace_id"]), []).append(span)
    lines: list[str] = []
    for trace in traces:
        mine = spans_of.get(trace, [])
        counts = Counter(str(span["payload"]["span_id"]) for span in mine)
        doubled = [span_id for span_id, n in counts.items() if n > 1]
        runs = {str(span["agent_instance_id"]) for span in mine}
        unfinished = [run for run in runs if instances[run]["finished_at"] is None]
        active = [_name(span) for span in mine if span["status"] in ("active", "pending")]
        if len(counts) == SPANS_PER_TRACE and not doubled and len(runs) == 1 and not unfinished and not active:
            continue
        owners = sorted(by_id.get(str(instances[run]["external_identifier"]).rpartition(":")[2], "?") for run in runs)
        lines.append(
            f"trace {trace}: {len(mine)} span(s) on the server {sorted(_name(span) for span in mine)}, doubled "
            f"{doubled}, runs {len(runs)} on {owners}, unfinished runs {len(unfinished)}, active spans {active}; "
            f"in a's ingress log at the kill: {len(at_kill.get(trace, set()))} span(s)"
        )
    wanted = (
        "otelcol_receiver_accepted_spans",
        "otelcol_exporter_sent_spans",
        "otelcol_exporter_send_failed_spans",
        "otelcol_exporter_enqueue_failed_spans",
        "otelcol_loadbalancer_backend_outcome",
    )
    metrics = [line for line in collector_metrics.splitlines() if line.startswith(wanted)]
    return "\n".join([f"{len(lines)} trace(s) not whole:", *lines[:40], "collector metrics:", *metrics])


def test_replica_sigkilled_and_restarted_mid_stream_loses_nothing_acknowledged(
    otelcol: Path,  # noqa: F811
    srv: DevServer,
    replicas: dict[str, GatewayProcess],
    tmp_path: Path,
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
            at_kill_dir = tmp_path / "a-at-kill"
            shutil.copytree(killed.directory / "log", at_kill_dir)
            at_kill = stream.count()
            assert wait_for(lambda: stream.count() >= at_kill + 20, 60), collector.output()
            restarted = GatewayProcess(srv, killed.directory, env=PRODUCTION_GRACE, args=killed.args)
            replicas["a"] = restarted.start()
            restarted.wait_ready()
            assert restarted.grpc_port == killed.grpc_port
            assert wait_for(lambda: stream.count() >= at_kill + 40, 60), collector.output()
        assert not stream.failed, f"the Collector refused {len(stream.failed)} traces:\n{collector.output()}"
        traces = stream.acknowledged
        if not wait_for(lambda: all_arrived(srv, traces), ARRIVAL_LIMIT_S):
            metrics = httpx.get(collector.metrics_url, timeout=10).text
            report = delivery_report(srv, traces, replica_ids(replicas), logged_spans(at_kill_dir), metrics)
            raise AssertionError(f"{report}\ncollector:\n{collector.output()}\nrestarted a:\n{restarted.output()}")
        assert collector.stop() == 0, collector.output()
    assert replica_ids(replicas) == ids_before  # the restart kept its replica id, so its run ids
    assert_delivered_once(srv, traces)
    owners = replica_of_each_trace(srv, traces, ids_before)
    assert set(owners.values()) == {"a", "b"}, f"one replica took every trace: {owners}"
