"""`prefactor-otel gateway` as a process: stopped with SIGTERM mid-stream, killed with SIGKILL and restarted on the
same directory, pushed into its bounds, refused at start-up; and the command line's own promises.

Everything runs over real sockets against a real local server: clients stream OTLP requests (each request one
agent trace of 4 spans, with ids of its own) and record the traces the gateway acknowledged (200); afterwards the
server must hold every span of every acknowledged trace exactly once, in one run per trace, every run finished and
nothing left `active`, whatever happened to the gateway in between.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import pytest
from google.rpc.error_details_pb2 import RetryInfo
from google.rpc.status_pb2 import Status
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult

from prefactor_otel.devserver import DevServer
from prefactor_otel.devserver.faults import Fault
from tests.gateway_run import INGRESS_TOKEN, GatewayProcess, bearer, gateway_env
from tests.held_door import HeldDoor
from tests.spans import wait_for
from tests.test_gateway_http import PROTOBUF, request_bytes, sdk_trace, trace_hex

STREAM_LIMIT = 3000  # requests one streaming client sends at most (a bound, never reached in a passing run)
SPANS_PER_TRACE = 4
EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
AUTH = (("authorization", f"Bearer {INGRESS_TOKEN}"),)


class Stream:
    """A client sending one trace per request on its own thread, over OTLP/HTTP or OTLP/gRPC, until the gateway
    stops answering OK (or until told to stop); `acknowledged` holds the traces answered OK."""

    def __init__(self, gateway: GatewayProcess, protocol: str = "http") -> None:
        self._gateway = gateway
        self.acknowledged: list[str] = []
        self.answers: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run_grpc if protocol == "grpc" else self._run_http, daemon=True)

    def __enter__(self) -> Stream:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(60)

    def _taken(self, answer: str, trace: str | None) -> None:
        with self._lock:
            self.answers[answer] += 1
            if trace is not None:
                self.acknowledged.append(trace)

    def _run_http(self) -> None:
        with httpx.Client(timeout=30) as client:
            for _ in range(STREAM_LIMIT):
                if self._stop.is_set():
                    return
                spans = sdk_trace()
                body = request_bytes(spans)
                try:
                    answer = client.post(self._gateway.traces_url, content=body, headers={**PROTOBUF, **bearer()})
                except httpx.HTTPError as exc:  # the gateway is gone (killed, or its listener closed)
                    self._taken(type(exc).__name__, None)
                    return
                self._taken(str(answer.status_code), trace_hex(spans) if answer.status_code == 200 else None)
                if answer.status_code == 503:
                    return  # stopping: nothing more will be taken

    def _run_grpc(self) -> None:
        with grpc.insecure_channel(self._gateway.grpc_target) as channel:
            export = channel.unary_unary(EXPORT, request_serializer=None, response_deserializer=None)
            for _ in range(STREAM_LIMIT):
                if self._stop.is_set():
                    return
                spans = sdk_trace()
                try:
                    export(request_bytes(spans), metadata=AUTH, timeout=30)
                except grpc.RpcError as error:  # UNAVAILABLE: stopping, or the gateway is gone
                    self._taken(error.code().name, None)
                    return
                self._taken("OK", trace_hex(spans))

    def count(self) -> int:
        with self._lock:
            return len(self.acknowledged)

    def join(self) -> None:
        self._thread.join(60)
        assert not self._thread.is_alive()


def assert_delivered_once(srv: DevServer, traces: list[str]) -> None:
    """Every span of each trace on the server exactly once, one run per trace, everything finished."""
    spans_by_trace: dict[str, list[dict[str, object]]] = {}
    seen: set[tuple[str, str]] = set()
    for span in srv.spans():
        payload = span["payload"]
        key = (str(payload["trace_id"]), str(payload["span_id"]))
        assert key not in seen, f"span {key} is on the server twice"
        seen.add(key)
        spans_by_trace.setdefault(key[0], []).append(span)
    instances = {str(instance["id"]): instance for instance in srv.instances()}
    for trace in traces:
        mine = spans_by_trace.get(trace, [])
        assert len(mine) == SPANS_PER_TRACE, f"trace {trace}: {len(mine)} of {SPANS_PER_TRACE} spans"
        runs = {str(span["agent_instance_id"]) for span in mine}
        assert len(runs) == 1, f"trace {trace} is in {len(runs)} runs"
        assert all(span["status"] not in ("active", "pending") for span in mine)
        run = instances[runs.pop()]
        assert run["status"] != "active" and run["finished_at"] is not None


def all_arrived(srv: DevServer, traces: list[str]) -> bool:
    try:
        assert_delivered_once(srv, traces)
    except AssertionError:
        return False
    return True


@pytest.mark.parametrize("server", ["up", "refusing"])
def test_sigterm_mid_stream_exits_0_and_the_next_start_delivers_the_rest(
    srv: DevServer, tmp_path: Path, server: str
) -> None:
    """SIGTERM while two clients stream, one over OTLP/HTTP, one over OTLP/gRPC: the gateway stops accepting (503 /
    UNAVAILABLE, or its listeners are closed), lets the requests in flight finish, delivers or spools what it
    acknowledged, and exits 0. With the server refusing everything at that moment, nothing can be delivered before
    the exit: the next start on the same directory delivers it, every span once."""
    directory = tmp_path / "gw"
    with GatewayProcess(srv, directory, env={"PREFACTOR_SHUTDOWN_TIMEOUT": "3"}) as gateway:
        gateway.wait_ready()
        with Stream(gateway, "http") as over_http, Stream(gateway, "grpc") as over_grpc:
            assert wait_for(lambda: over_http.count() >= 15 and over_grpc.count() >= 15, 60), gateway.output()
            if server == "refusing":
                srv.add_fault(Fault(status=503, times=-1))
            assert gateway.stop(signal.SIGTERM) == 0, gateway.output()
            over_http.join()
            over_grpc.join()
        assert "stopped (SIGTERM)" in gateway.output()
    acknowledged = over_http.acknowledged + over_grpc.acknowledged
    if server == "up":
        assert wait_for(lambda: all_arrived(srv, acknowledged), 30), gateway.output()
    srv.clear_faults()
    with GatewayProcess(srv, directory) as again:
        again.wait_ready()
        assert wait_for(lambda: all_arrived(srv, acknowledged), 60), again.output()
        assert again.stop() == 0
    assert_delivered_once(srv, acknowledged)


def test_sigint_stops_it_as_sigterm_does(srv: DevServer, tmp_path: Path) -> None:
    with GatewayProcess(srv, tmp_path / "gw") as gateway:
        gateway.wait_ready()
        spans = sdk_trace()
        answer = httpx.post(gateway.traces_url, content=request_bytes(spans), headers={**PROTOBUF, **bearer()})
        assert answer.status_code == 200
        assert gateway.stop(signal.SIGINT) == 0, gateway.output()
        assert "stopped (SIGINT)" in gateway.output() and "Traceback" not in gateway.output()
    assert_delivered_once(srv, [trace_hex(spans)])


@pytest.mark.parametrize("server", ["up", "refusing"])
def test_sigkill_and_restart_on_the_same_directory_delivers_every_acknowledged_span_once(
    srv: DevServer, tmp_path: Path, server: str
) -> None:
    directory = tmp_path / "gw"
    if server == "refusing":
        srv.add_fault(Fault(status=503, times=-1))
    with GatewayProcess(srv, directory) as gateway:
        gateway.wait_ready()
        with Stream(gateway, "http") as over_http, Stream(gateway, "grpc") as over_grpc:
            assert wait_for(lambda: over_http.count() >= 15 and over_grpc.count() >= 15, 60), gateway.output()
            assert gateway.stop(signal.SIGKILL) == -signal.SIGKILL
            over_http.join()
            over_grpc.join()
    acknowledged = over_http.acknowledged + over_grpc.acknowledged
    srv.clear_faults()
    with GatewayProcess(srv, directory) as again:
        again.wait_ready()
        assert wait_for(lambda: all_arrived(srv, acknowledged), 60), again.output()
        assert again.stop() == 0, again.output()
    assert_delivered_once(srv, acknowledged)


def retry_info_of(error: grpc.RpcError) -> RetryInfo:
    """The RetryInfo of a pushed-back RPC, read from both places clients read it, which must agree: the status
    details (`grpc-status-details-bin`: the Collector's Go exporter) and `google.rpc.retryinfo-bin` (the Python
    SDK's exporter)."""
    trailing = dict(error.trailing_metadata())  # type: ignore[attr-defined]
    status = Status()
    status.ParseFromString(trailing["grpc-status-details-bin"])
    assert status.code == error.code().value[0] and status.message  # type: ignore[attr-defined]
    assert [detail.type_url for detail in status.details] == ["type.googleapis.com/google.rpc.RetryInfo"]
    in_status = RetryInfo()
    status.details[0].Unpack(in_status)
    alone = RetryInfo()
    alone.ParseFromString(trailing["google.rpc.retryinfo-bin"])
    assert alone == in_status
    return alone


def test_readyz_and_requests_answer_503_while_the_ingress_log_is_replayed(srv: DevServer, tmp_path: Path) -> None:
    """Killed with acknowledged spans the server refused: the next start replays them before it is ready. The
    replay's first request is held at a door in front of the server until the test has looked, so the replay is
    visibly under way: /readyz says so (503), a request is answered 503 with a Retry-After (gRPC: UNAVAILABLE
    with a RetryInfo); then the door opens, the gateway is ready and everything arrives."""
    directory = tmp_path / "gw"
    srv.add_fault(Fault(status=503, times=-1))
    with GatewayProcess(srv, directory) as gateway:
        gateway.wait_ready()
        with Stream(gateway) as stream:
            assert wait_for(lambda: stream.count() >= 5, 60), gateway.output()
            gateway.stop(signal.SIGKILL)
            stream.join()
    srv.clear_faults()
    # Held by the test, not delayed by the server: a delay ran out on a busy machine before the checks were done.
    # The gateway's own deadline for that request is made longer than any hold, for the same reason.
    with (
        HeldDoor(srv.url, b"POST /api/v1/bulk") as door,
        GatewayProcess(srv, directory, env={"PREFACTOR_API_URL": door.url, "PREFACTOR_EXPORT_TIMEOUT": "300"}) as again,
    ):
        assert door.holding.wait(60), again.output()
        ready = httpx.get(again.http_url + "/readyz", timeout=10)
        assert ready.status_code == 503 and "replaying" in ready.text
        refused = httpx.post(
            again.traces_url, content=request_bytes(sdk_trace()), headers={**PROTOBUF, **bearer()}, timeout=10
        )
        assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1
        with grpc.insecure_channel(again.grpc_target) as channel:
            export = channel.unary_unary(EXPORT, request_serializer=None, response_deserializer=None)
            with pytest.raises(grpc.RpcError) as unavailable:
                export(request_bytes(sdk_trace()), metadata=AUTH, timeout=10)
        assert unavailable.value.code() == grpc.StatusCode.UNAVAILABLE
        assert retry_info_of(unavailable.value).retry_delay.seconds >= 1
        assert httpx.get(again.http_url + "/healthz", timeout=10).status_code == 200  # alive all the while
        door.open()
        again.wait_ready()
        assert wait_for(lambda: all_arrived(srv, list(stream.acknowledged)), 60), again.output()
        assert again.stop() == 0


@pytest.fixture
def slow_gateway(srv: DevServer, tmp_path: Path) -> Iterator[GatewayProcess]:
    """A gateway whose queue holds 8 spans (two requests), in front of a server that takes 2 s for each of its
    next 2 bulk requests: the gateway's worker is stuck in delivery, so its queue fills. The clients pushed back
    then are few (4), so they all get in well within an OTel exporter's 6 attempts."""
    srv.add_fault(Fault(delay_s=2.0, times=2))
    # The gateway's own grace (15 s), not the tests' 0: the Retry-After cap is a third of it (5 s). At grace 0 the
    # cap is 1 s, and the OTel exporters' 6 attempts would span about 5 s of push-back, less than this stall.
    env = {"PREFACTOR_GATEWAY_MAX_QUEUED_SPANS": "8", "PREFACTOR_FINISH_GRACE_SECONDS": "15"}
    with GatewayProcess(srv, tmp_path / "gw", env=env) as gateway:
        gateway.wait_ready()
        yield gateway
        assert gateway.stop() == 0, gateway.output()


def fill_over_http(gateway: GatewayProcess) -> tuple[list[str], httpx.Response]:
    """Requests one after another until the gateway pushes one back: the traces it took, and the push-back."""
    taken: list[str] = []
    with httpx.Client(timeout=30) as client:
        for _ in range(20):
            spans = sdk_trace()
            answer = client.post(gateway.traces_url, content=request_bytes(spans), headers={**PROTOBUF, **bearer()})
            if answer.status_code != 200:
                return taken, answer
            taken.append(trace_hex(spans))
    raise AssertionError(f"20 requests and no push-back:\n{gateway.output()}")


def test_a_full_queue_answers_429_with_retry_after_and_the_http_exporter_gets_everything_in(
    srv: DevServer, slow_gateway: GatewayProcess, caplog: pytest.LogCaptureFixture
) -> None:
    taken, pushed_back = fill_over_http(slow_gateway)
    assert pushed_back.status_code == 429, pushed_back.text
    assert pushed_back.headers["retry-after"].isdigit() and int(pushed_back.headers["retry-after"]) >= 1

    # While the queue is full, the OTel exporter, several at once: pushed back, each retries and gets in.
    traces = [sdk_trace() for _ in range(4)]

    def export(spans: list[ReadableSpan]) -> SpanExportResult:
        exporter = HttpSpanExporter(endpoint=slow_gateway.traces_url, headers=bearer(), timeout=60)
        try:
            return exporter.export(spans)
        finally:
            exporter.shutdown()

    with caplog.at_level("WARNING"), ThreadPoolExecutor(len(traces)) as pool:
        results = list(pool.map(export, traces))
    assert results == [SpanExportResult.SUCCESS] * len(traces), slow_gateway.output()
    assert any("Too Many Requests" in record.getMessage() for record in caplog.records)  # pushed back, retried
    acknowledged = taken + [trace_hex(spans) for spans in traces]
    assert wait_for(lambda: all_arrived(srv, acknowledged), 60), slow_gateway.output()


def test_a_full_queue_answers_resource_exhausted_with_retry_info_and_the_grpc_exporter_gets_everything_in(
    srv: DevServer, slow_gateway: GatewayProcess, caplog: pytest.LogCaptureFixture
) -> None:
    auth = AUTH
    # First by hand, to read the answer: fill the queue, then one more is pushed back with a RetryInfo.
    pushed_back = None
    taken: list[str] = []
    with grpc.insecure_channel(slow_gateway.grpc_target) as channel:
        export = channel.unary_unary(EXPORT, request_serializer=None, response_deserializer=None)
        for _ in range(20):
            spans = sdk_trace()
            try:
                export(request_bytes(spans), metadata=auth, timeout=30)
                taken.append(trace_hex(spans))
            except grpc.RpcError as error:
                pushed_back = error
                break
    assert pushed_back is not None, slow_gateway.output()
    assert pushed_back.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    retry_info = retry_info_of(pushed_back)
    assert retry_info.retry_delay.seconds >= 1 and retry_info.retry_delay.nanos == 0

    # While the queue is full, the OTel exporter, several at once: pushed back, each retries after the delay the
    # RetryInfo says (the exporter's log shows a whole number of seconds: its own backoff would have jitter).
    traces = [sdk_trace() for _ in range(4)]

    def export_with_sdk(spans: list[ReadableSpan]) -> SpanExportResult:
        exporter = GrpcSpanExporter(endpoint=slow_gateway.grpc_target, insecure=True, headers=auth, timeout=60)
        try:
            return exporter.export(spans)
        finally:
            exporter.shutdown()

    with caplog.at_level("WARNING"), ThreadPoolExecutor(len(traces)) as pool:
        results = list(pool.map(export_with_sdk, traces))
    assert results == [SpanExportResult.SUCCESS] * len(traces), slow_gateway.output()
    retries = [r.getMessage() for r in caplog.records if "RESOURCE_EXHAUSTED" in r.getMessage()]
    assert retries and all(re.search(r"retrying in \d+\.00s", message) for message in retries), retries
    acknowledged = taken + [trace_hex(spans) for spans in traces]
    assert wait_for(lambda: all_arrived(srv, acknowledged), 60), slow_gateway.output()


def test_a_full_ingress_log_answers_503_with_retry_after(srv: DevServer, tmp_path: Path) -> None:
    """The ingress log's cap reached (the server is unreachable for now, so nothing acknowledged can be retired):
    503 with a Retry-After, and what was acknowledged arrives once the server is back."""
    srv.add_fault(Fault(delay_s=5.0, times=1))
    env = {"PREFACTOR_GATEWAY_LOG_MAX_BYTES": "16384", "PREFACTOR_GATEWAY_SEGMENT_BYTES": "4096"}
    with GatewayProcess(srv, tmp_path / "gw", env=env) as gateway:
        gateway.wait_ready()
        acknowledged: list[str] = []
        full = None
        with httpx.Client(timeout=30) as client:
            for _ in range(100):
                spans = sdk_trace()
                answer = client.post(gateway.traces_url, content=request_bytes(spans), headers={**PROTOBUF, **bearer()})
                if answer.status_code == 200:
                    acknowledged.append(trace_hex(spans))
                    continue
                full = answer
                break
        assert full is not None and full.status_code == 503, gateway.output()
        assert full.headers["retry-after"].isdigit() and int(full.headers["retry-after"]) >= 1
        assert wait_for(lambda: all_arrived(srv, acknowledged), 60), gateway.output()
        assert gateway.stop() == 0


# ------------------------------------------------------------------ the command line


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "prefactor_otel", *args],
        env=env if env is not None else gateway_env(None),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_a_non_loopback_address_without_ingress_tokens_refuses_to_start(srv: DevServer, tmp_path: Path) -> None:
    done = run_cli("gateway", "--host", "0.0.0.0", "--dir", str(tmp_path / "gw"), env=gateway_env(srv))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("prefactor-otel gateway: ")
    assert "PREFACTOR_GATEWAY_TOKENS" in lines[0]
    assert srv.token not in done.stderr + done.stdout


def test_a_second_gateway_on_the_same_directory_refuses_to_start(srv: DevServer, tmp_path: Path) -> None:
    with GatewayProcess(srv, tmp_path / "gw") as first:
        first.wait_ready()
        second = GatewayProcess(srv, tmp_path / "gw").start(expect_listening=False)
        assert second.wait_exit() == 2
        assert second.wait_line(lambda line: "cannot start" in line, 10, stream="stderr"), second.output()
        assert second.wait_line(lambda line: "listening" in line, 1) is None  # it never listened
        assert httpx.get(first.http_url + "/readyz", timeout=10).status_code == 200  # the first is unharmed
        assert first.stop() == 0


def test_a_port_in_use_is_a_clear_error(srv: DevServer, tmp_path: Path) -> None:
    with GatewayProcess(srv, tmp_path / "one") as first:
        first.wait_ready()
        done = run_cli(
            "gateway",
            "--http-port",
            str(first.http_port),
            "--grpc-port",
            "0",
            "--dir",
            str(tmp_path / "two"),
            env=gateway_env(srv, PREFACTOR_GATEWAY_TOKENS=INGRESS_TOKEN),
        )
        assert done.returncode == 2
        assert "cannot listen" in done.stderr and str(first.http_port) in done.stderr
        assert first.stop() == 0


def test_without_the_gateway_extra_the_command_says_how_to_install_it(srv: DevServer, tmp_path: Path) -> None:
    """grpcio missing (a package on the path that fails to import as a missing module does)."""
    shadow = tmp_path / "shadow" / "grpc"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text('raise ModuleNotFoundError("No module named \'grpc\'", name="grpc")\n')
    env = gateway_env(srv)
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path / "shadow"), env.get("PYTHONPATH", "")])
    done = run_cli("gateway", "--dir", str(tmp_path / "gw"), env=env)
    assert done.returncode == 2
    assert "pip install 'prefactor-otel[gateway]'" in done.stderr
    assert "Traceback" not in done.stderr


def test_importing_the_command_line_loads_neither_grpc_nor_uvicorn() -> None:
    code = (
        "import sys; import prefactor_otel.tools.cli as cli; cli._package_version(); "
        "print(sorted(m for m in ('grpc', 'uvicorn', 'opentelemetry.proto') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], env=gateway_env(None), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_gateway_help_names_its_flags() -> None:
    done = run_cli("gateway", "--help")
    assert done.returncode == 0
    for flag in ("--host", "--http-port", "--grpc-port", "--routes", "--dir", "PREFACTOR_GATEWAY_TOKENS"):
        assert flag in done.stdout


def test_the_routes_file_given_by_flag_keeps_each_token_in_its_own_account(srv: DevServer, tmp_path: Path) -> None:
    """`--routes FILE`, two routes, each its own account (one local server each): each client's spans reach its
    own account only, and a client naming the other route's agent gets those spans refused, written nowhere."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    from tests.spans import Collector, agent_trace

    def trace_for(agent: str | None) -> list[ReadableSpan]:
        attributes = {"service.name": "routed"} | ({"prefactor.agent": agent} if agent else {})
        collector = Collector()
        provider = TracerProvider(resource=Resource(attributes))
        provider.add_span_processor(SimpleSpanProcessor(collector))
        agent_trace(provider)
        return list(collector.spans)

    with DevServer() as other:
        routes = {
            "routes": [
                {
                    "name": "team-a",
                    "ingress_tokens_env": ["TEAM_A_INGRESS"],
                    "api_url": srv.url,
                    "api_token_env": "TEAM_A_PREFACTOR_TOKEN",
                    "environment_id": srv.environment_id,
                    "agents": {"support": srv.agent_id},
                    "default_agent": "support",
                },
                {
                    "name": "team-b",
                    "ingress_tokens_env": ["TEAM_B_INGRESS"],
                    "api_url": other.url,
                    "api_token_env": "TEAM_B_PREFACTOR_TOKEN",
                    "environment_id": other.environment_id,
                    "agents": {"billing": other.agent_id},
                    "default_agent": "billing",
                },
            ]
        }
        routes_file = tmp_path / "routes.json"
        routes_file.write_text(json.dumps(routes))
        env = {
            "TEAM_A_INGRESS": "ingress-team-a",
            "TEAM_A_PREFACTOR_TOKEN": srv.token,
            "TEAM_B_INGRESS": "ingress-team-b",
            "TEAM_B_PREFACTOR_TOKEN": other.token,
        }
        with GatewayProcess(None, tmp_path / "gw", tokens=None, env=env, args=["--routes", str(routes_file)]) as gw:
            gw.wait_ready()
            team_a = trace_for(None)
            answer = httpx.post(
                gw.traces_url,
                content=request_bytes(team_a),
                headers={**PROTOBUF, **bearer("ingress-team-a")},
                timeout=30,
            )
            assert answer.status_code == 200
            team_b = trace_for("billing")
            exporter = GrpcSpanExporter(
                endpoint=gw.grpc_target, insecure=True, headers=(("authorization", "Bearer ingress-team-b"),)
            )
            assert exporter.export(team_b) is SpanExportResult.SUCCESS
            exporter.shutdown()
            intruder = trace_for("billing")  # team A's token naming team B's agent
            refused = httpx.post(
                gw.traces_url,
                content=request_bytes(intruder),
                headers={**PROTOBUF, **bearer("ingress-team-a")},
                timeout=30,
            )
            assert refused.status_code == 200
            response = ExportTraceServiceResponse()
            response.ParseFromString(refused.content)
            assert response.partial_success.rejected_spans == SPANS_PER_TRACE
            assert "billing" in response.partial_success.error_message

            assert wait_for(lambda: all_arrived(srv, [trace_hex(team_a)]), 30), gw.output()
            assert wait_for(lambda: all_arrived(other, [trace_hex(team_b)]), 30), gw.output()
            assert gw.stop() == 0
        on_a = {span["payload"]["trace_id"] for span in srv.spans()}
        on_b = {span["payload"]["trace_id"] for span in other.spans()}
        assert on_a == {trace_hex(team_a)} and on_b == {trace_hex(team_b)}
        assert srv.token not in gw.output() and other.token not in gw.output()
