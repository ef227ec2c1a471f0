"""The real OpenTelemetry Collector (the project's `otelcol-prefactor`, built from collector/builder-config.yaml) in
front of real `prefactor-otel gateway` processes, on the configurations shipped in collector/, over real sockets:

- apps (OTLP/HTTP and OTLP/gRPC) -> Collector (collector/gateway.yaml) -> one gateway -> the local server: every
  span once, one run per trace, every run finished;
- apps -> Collector (collector/fleet-static.yaml: load balancing by trace id, static resolver) -> two gateway
  replicas, each on its own directory -> one local server: every span once, every run whole and finished, each
  trace's run built by one replica (`external_identifier` `otel:<trace>:<replica id>`), both replicas used;
- the OTel JS SDK's OTLP exporters (OTLP/JSON and protobuf over HTTP, tests/node_otlp/send.mjs on the pinned Node
  22) -> the same Collector and two replicas: the same three promises, and every span as the Node SDK recorded it;
- every shipped configuration passes the Collector's own `validate` (the Kubernetes DNS one is not run).

The Python client is the OpenTelemetry OTLP span exporter (HTTP; gRPC too for the single gateway); each trace is
sent in two requests (its children first, its root later, other traces between) so the Collector's batching and
routing must keep a trace together.
(A replica SIGKILLed mid-stream and restarted: tests/test_collector_sigkill.py; removed and added back to the
list: tests/test_collector_reroute.py.)
The binary is built once per machine (tests/collector_build.py); a failed build fails these tests, never skips.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from prefactor_otel.devserver import DevServer
from tests.collector_build import MANIFEST, CollectorBuildError, build_dir, collector_binary
from tests.collector_run import CONFIG_DIR, CollectorProcess, free_port
from tests.gateway_run import INGRESS_TOKEN, GatewayProcess
from tests.node_install import install_node_project
from tests.otlp_clients import NODE_OTLP_DIR, run_node_client
from tests.spans import wait_for
from tests.test_gateway_http import sdk_trace, trace_hex
from tests.test_gateway_process import SPANS_PER_TRACE, all_arrived, assert_delivered_once

TRACES = 40
NODE_TRACES = 12  # per Node process: each trace on one replica, both replicas used (all on one: 2 in 2**12)
STREAM_LIMIT = 2000  # traces one streaming client sends at most (a bound, never reached in a passing run)
ARRIVAL_LIMIT_S = 120.0


@pytest.fixture(scope="session")
def otelcol() -> Path:
    """The Collector binary, built when missing (once per machine, under a file lock)."""
    return collector_binary()


def to_gateway_env(**extra: str) -> dict[str, str]:
    return {"PREFACTOR_GATEWAY_INGRESS_TOKEN": INGRESS_TOKEN, "PREFACTOR_GATEWAY_INSECURE": "true", **extra}


def send_split(exporter: SpanExporter, traces: int) -> list[str]:
    """`traces` agent traces, each in two requests (children, then the root after the next trace's children)."""
    sent: list[str] = []
    held: list[ReadableSpan] = []
    for _ in range(traces):
        spans = sdk_trace()
        roots = [span for span in spans if span.parent is None]
        children = [span for span in spans if span.parent is not None]
        assert exporter.export(children) is SpanExportResult.SUCCESS
        if held:
            assert exporter.export(held) is SpanExportResult.SUCCESS
        held = roots
        sent.append(trace_hex(spans))
    assert exporter.export(held) is SpanExportResult.SUCCESS
    return sent


def replica_of_each_trace(srv: DevServer, traces: list[str], replicas: dict[str, str]) -> dict[str, str]:
    """trace -> the name of the replica whose id its run's external identifier carries (one run per trace is
    asserted before)."""
    by_id = {replica_id: name for name, replica_id in replicas.items()}
    instances = {str(i["id"]): i for i in srv.instances()}
    run_of: dict[str, str] = {}
    for span in srv.spans():
        run_of[str(span["payload"]["trace_id"])] = str(span["agent_instance_id"])
    found: dict[str, str] = {}
    for trace in traces:
        external = str(instances[run_of[trace]]["external_identifier"])
        prefix, _, replica_id = external.rpartition(":")
        assert prefix == f"otel:{trace}", f"run of trace {trace} is named {external!r}"
        assert replica_id in by_id, f"run of trace {trace} names replica {replica_id!r}, not one of {replicas}"
        found[trace] = by_id[replica_id]
    return found


# The Collector may deliver one trace's spans in two requests sent at once (two batches), so a replica can see the
# root before the last children: a run finished at once (the tests' usual grace 0) would drop them (docs/gateway.md,
# "Fleets"; the benchmark saw a few per 20,000 spans). A short grace takes them; the gateway's default is 15 s.
FLEET_GRACE = {"PREFACTOR_FINISH_GRACE_SECONDS": "3"}


@pytest.fixture
def replicas(srv: DevServer, tmp_path: Path) -> Iterator[dict[str, GatewayProcess]]:
    """Two gateway replicas, each on its own directory and on a gRPC port of its own kept across a restart."""
    started: dict[str, GatewayProcess] = {}
    try:
        for name in ("a", "b"):
            args = ["--grpc-port", str(free_port())]
            gateway = GatewayProcess(srv, tmp_path / f"gw-{name}", env=FLEET_GRACE, args=args)
            started[name] = gateway.start()
            gateway.wait_ready()
        yield started
    finally:
        for gateway in started.values():
            gateway.__exit__()


def replica_ids(replicas: dict[str, GatewayProcess]) -> dict[str, str]:
    return {name: (gw.directory / "replica-id").read_text().strip() for name, gw in replicas.items()}


def fleet_env(replicas: dict[str, GatewayProcess]) -> dict[str, str]:
    targets = ", ".join(gw.grpc_target for gw in replicas.values())
    return to_gateway_env(PREFACTOR_GATEWAY_REPLICAS=f"[{targets}]")


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_python_client_through_the_collector_to_one_gateway(
    otelcol: Path, srv: DevServer, tmp_path: Path, protocol: str
) -> None:
    with GatewayProcess(srv, tmp_path / "gw") as gateway:
        gateway.wait_ready()
        env = to_gateway_env(PREFACTOR_GATEWAY_ENDPOINT=gateway.grpc_target)
        with CollectorProcess("gateway.yaml", env, otelcol) as collector:
            exporter: SpanExporter = (
                GrpcSpanExporter(endpoint=collector.grpc_target, insecure=True)
                if protocol == "grpc"
                else OTLPSpanExporter(endpoint=collector.traces_url)
            )
            traces = send_split(exporter, TRACES)
            exporter.shutdown()
            assert wait_for(lambda: all_arrived(srv, traces), ARRIVAL_LIMIT_S), (
                f"collector:\n{collector.output()}\ngateway:\n{gateway.output()}"
            )
            assert collector.stop() == 0, collector.output()
        assert gateway.stop() == 0, gateway.output()
    assert_delivered_once(srv, traces)


def test_load_balanced_fleet_builds_each_trace_on_one_replica(
    otelcol: Path, srv: DevServer, replicas: dict[str, GatewayProcess]
) -> None:
    with CollectorProcess("fleet-static.yaml", fleet_env(replicas), otelcol) as collector:
        exporter = OTLPSpanExporter(endpoint=collector.traces_url)
        traces = send_split(exporter, TRACES)
        exporter.shutdown()
        assert wait_for(lambda: all_arrived(srv, traces), ARRIVAL_LIMIT_S), collector.output()
        assert collector.stop() == 0, collector.output()
    assert_delivered_once(srv, traces)  # every span once, one run per trace, every run finished
    owners = replica_of_each_trace(srv, traces, replica_ids(replicas))
    assert set(owners.values()) == {"a", "b"}, f"one replica took every trace: {owners}"
    for gateway in replicas.values():
        assert gateway.stop() == 0, gateway.output()


@pytest.fixture(scope="session")
def node() -> Path:
    return install_node_project(NODE_OTLP_DIR, node_major=22)


@pytest.mark.parametrize("protocol", ["json", "protobuf"])
def test_node_client_through_the_collector_to_two_replicas(
    otelcol: Path, node: Path, srv: DevServer, replicas: dict[str, GatewayProcess], protocol: str
) -> None:
    """The OTel JS SDK (tests/node_otlp/send.mjs) sends its agent traces over OTLP/HTTP to the Collector in front of
    two replicas: every span once with the fields the SDK recorded, every run whole and finished, each trace's run
    built by one replica, both replicas used."""
    with CollectorProcess("fleet-static.yaml", fleet_env(replicas), otelcol) as collector:
        report = run_node_client(
            node, collector.traces_url, protocol, service=f"node-fleet-{protocol}", traces=NODE_TRACES
        )
        assert report["results"] and all(result["code"] == 0 for result in report["results"]), report["results"]
        recorded = report["spans"]
        traces = sorted({span["trace_id"] for span in recorded})
        assert len(traces) == NODE_TRACES and len(recorded) == NODE_TRACES * SPANS_PER_TRACE
        assert wait_for(lambda: all_arrived(srv, traces), ARRIVAL_LIMIT_S), collector.output()
        assert collector.stop() == 0, collector.output()
    assert_delivered_once(srv, traces)  # every span once, one run per trace, every run finished
    arrived = {str(span["payload"]["span_id"]): span for span in srv.spans()}
    for span in recorded:  # as the Node SDK recorded it: its name, its parent, its status
        on_server = arrived[span["span_id"]]
        assert on_server["payload"]["name"] == span["name"]
        parent = span["parent_span_id"]
        assert on_server["parent_span_id"] == (arrived[parent]["id"] if parent else None), span["name"]
        assert on_server["status"] == ("failed" if span["status"]["code"] == 2 else "complete"), span["name"]
    owners = replica_of_each_trace(srv, traces, replica_ids(replicas))
    assert set(owners.values()) == {"a", "b"}, f"one replica took every trace: {owners}"
    for gateway in replicas.values():
        assert gateway.stop() == 0, gateway.output()


@pytest.mark.parametrize(
    "config", sorted(path.name for path in CONFIG_DIR.glob("*.yaml") if path.name != "builder-config.yaml")
)
def test_every_shipped_configuration_validates(otelcol: Path, config: str, tmp_path: Path) -> None:
    env = {
        **to_gateway_env(),
        "COLLECTOR_QUEUE_DIR": str(tmp_path / "queue"),
        "PREFACTOR_GATEWAY_ENDPOINT": "gateway.example.internal:4317",
        "PREFACTOR_GATEWAY_REPLICAS": "[gw-1.example.internal:4317, gw-2.example.internal:4317]",
        "PREFACTOR_GATEWAY_HEADLESS_SERVICE": "prefactor-gateway-headless.observability.svc.cluster.local",
    }
    done = subprocess.run(
        [str(otelcol), "validate", "--config", str(CONFIG_DIR / config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_build_that_cannot_run_fails_saying_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The build helper's own failures are clear errors (the tests that need the Collector then fail with them):
    a manifest without its builder line, and a machine without Go. Nothing half-built is left as the binary."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("PREFACTOR_COLLECTOR_BINARY", raising=False)
    manifest = tmp_path / "builder-config.yaml"
    manifest.write_text("dist:\n  name: otelcol-prefactor\n  output_path: ./_build\n")
    with pytest.raises(CollectorBuildError, match="no '# ocb: <module> <version>' line"):
        collector_binary(manifest)
    manifest.write_text(MANIFEST.read_text())
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(CollectorBuildError, match="needs Go"):
        collector_binary(manifest)
    assert not (build_dir(manifest) / "otelcol-prefactor").exists()
