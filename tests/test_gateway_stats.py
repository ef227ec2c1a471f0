"""The gateway never loses an acknowledged span silently: drops are said in its log and shown on `GET /stats`, and
its Retry-After stays inside the finish grace.

- A real `prefactor-otel gateway` process (grace 0, as tests/gateway_run.py runs it) in front of the local server,
  configured with an agent id the server does not know: the server refuses each trace's run, so its spans, which
  the gateway acknowledged, are dropped (`instance_rejected:register_not_found`), and the gateway says so on stderr
  (route, agent, count, reason, what to do; never the token) and counts them on `/stats`. A second refused trace
  within the minute is not said again at once (one line per reason per interval) but is said at shutdown. (A span
  that comes after its run was finished is not dropped: it opens the trace's next run,
  tests/test_gateway_late_spans.py.)
- `/stats` needs an ingress token when the gateway has any (401 otherwise), shows only the token's route (two
  routes, two accounts), and is open on a loopback gateway without tokens; `/healthz` and `/readyz` stay open.
- Retry-After through the real HTTP front end: a full queue (the server swallows the first bulk request, so the
  worker is stuck in delivery) would ask for 4 s or more; with a 6 s grace the gateway sends 2 s, and counts the cap.
  The gRPC front end's RetryInfo says the same 2 s.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan

from prefactor_otel.devserver import DevServer
from prefactor_otel.devserver.faults import Fault
from prefactor_otel.gateway.grpc_service import build_server
from prefactor_otel.gateway.http_app import OtlpHttpApp
from prefactor_otel.gateway.service import Gateway
from prefactor_otel.model import ids
from tests.gateway_run import INGRESS_TOKEN, GatewayProcess, bearer
from tests.spans import wait_for
from tests.test_gateway_core import settings_for, start, traced
from tests.test_gateway_core_routes import second, two_routes
from tests.test_gateway_http import PROTOBUF, request_bytes, sdk_trace
from tests.test_gateway_http_app import AppServer
from tests.test_gateway_process import EXPORT, retry_info_of

REFUSED = "instance_rejected:register_not_found"
__all__ = ["second"]  # the second account's server: a fixture of test_gateway_core_routes, used here


def root_and_children(spans: list[ReadableSpan]) -> tuple[list[ReadableSpan], list[ReadableSpan]]:
    roots = [span for span in spans if span.parent is None]
    return roots, [span for span in spans if span.parent is not None]


def finished_runs(srv: DevServer) -> int:
    return sum(1 for instance in srv.instances() if instance["finished_at"] is not None)


def post(gateway: GatewayProcess, spans: list[ReadableSpan]) -> None:
    answer = httpx.post(gateway.traces_url, content=request_bytes(spans), headers={**PROTOBUF, **bearer()})
    assert answer.status_code == 200, answer.text


def send_refused(gateway: GatewayProcess) -> int:
    """A whole trace, acknowledged; the server will refuse its run (`refused_gateway`). Returns how many spans."""
    spans = sdk_trace()
    post(gateway, spans)
    return len(spans)


def stats_of(base_url: str, token: str | None = INGRESS_TOKEN) -> dict[str, Any]:
    answer = httpx.get(base_url + "/stats", headers=bearer(token) if token else {}, timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/json"
    view: dict[str, Any] = answer.json()
    return view


def dropped_refused(view: dict[str, Any], key: str = "default.default") -> int:
    return int(view["pipelines"][key]["dropped_by_reason"].get(REFUSED, 0))


@pytest.fixture
def gateway(srv: DevServer, tmp_path: Path) -> Iterator[GatewayProcess]:
    with GatewayProcess(srv, tmp_path / "gw") as process:
        process.wait_ready()
        yield process


@pytest.fixture
def refused_gateway(srv: DevServer, tmp_path: Path) -> Iterator[GatewayProcess]:
    """A gateway whose agent id is well formed, in the server's account partition, but unknown to the server."""
    partition = ids.extract_partition(srv.env()["PREFACTOR_AGENT_ID"])
    assert partition is not None
    unknown = ids.instance_pfid(partition, "an agent the server does not have", 1, 1)
    with GatewayProcess(srv, tmp_path / "gw", env={"PREFACTOR_AGENT_ID": unknown}) as process:
        process.wait_ready()
        yield process


def test_a_span_dropped_after_it_was_acknowledged_is_said_in_the_log_and_counted_on_stats(
    refused_gateway: GatewayProcess,
) -> None:
    gateway = refused_gateway
    refused = send_refused(gateway)
    said = gateway.wait_line(lambda line: "dropped" in line and REFUSED in line, 30, stream="stderr")
    assert said is not None, gateway.output()
    assert f"Prefactor gateway: dropped {refused} span(s) of route default agent default since " in said
    assert "check the agent id" in said  # what to do about it

    view = stats_of(gateway.http_url)
    pipeline = view["pipelines"]["default.default"]
    assert dropped_refused(view) == refused == pipeline["spans_dropped"]
    assert pipeline["spans_accepted"] == refused and pipeline["spans_exported"] == 0
    assert pipeline["spans_queued"] == 0
    assert view["spans_accepted"] == refused and view["drop_log_lines"] == 1
    assert view["retry_after_max_s"] == 1  # grace 0: the least a Retry-After can say
    assert view["log_bytes"] >= 0 and view["replica_id"]

    # More refused spans within the minute: counted at once, not said again until the interval is over or the
    # gateway stops -- then they are, with the time the line covers from.
    more = send_refused(gateway)
    assert wait_for(lambda: dropped_refused(stats_of(gateway.http_url)) == refused + more, 30)
    assert stats_of(gateway.http_url)["drop_log_lines"] == 1
    assert gateway.stop(signal.SIGTERM) == 0
    lines = [line for line in gateway.stderr if "dropped" in line and REFUSED in line]
    assert len(lines) == 2 and f"dropped {more} span(s) of route default agent default since " in lines[1], lines
    assert INGRESS_TOKEN not in gateway.output()


def test_stats_needs_an_ingress_token_and_health_stays_open(gateway: GatewayProcess) -> None:
    for headers in ({}, bearer("not-a-token"), {"Authorization": INGRESS_TOKEN}):
        refused = httpx.get(gateway.http_url + "/stats", headers=headers, timeout=10)
        assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
        assert "default" not in refused.text  # it names no route
    assert httpx.post(gateway.http_url + "/stats", headers=bearer(), timeout=10).status_code == 405
    head = httpx.head(gateway.http_url + "/stats", headers=bearer(), timeout=10)
    assert head.status_code == 200 and head.content == b""
    assert httpx.get(gateway.http_url + "/healthz", timeout=10).status_code == 200
    assert httpx.get(gateway.http_url + "/readyz", timeout=10).status_code == 200
    assert stats_of(gateway.http_url)["requests_unauthenticated"] == 3


def test_stats_is_open_on_a_loopback_gateway_without_tokens(srv: DevServer, tmp_path: Path) -> None:
    with GatewayProcess(srv, tmp_path / "gw", tokens=None) as gateway:
        gateway.wait_ready()
        view = stats_of(gateway.http_url, token=None)
        assert list(view["pipelines"]) == ["default.default"] and view["ready"] is True
        assert gateway.stop() == 0


def test_stats_shows_only_the_tokens_route(
    srv: DevServer,
    second: DevServer,
    tmp_path: Path,
) -> None:
    settings, _side = two_routes(srv, second, tmp_path)
    gateway = Gateway(settings)
    gateway.start()
    try:
        assert gateway.wait_ready(30)
        app = OtlpHttpApp(gateway, max_request_bytes=1 << 20)
        with AppServer(app) as server:
            base = f"http://127.0.0.1:{server.port}"
            assert set(stats_of(base, "ingress-a2")["pipelines"]) == {"team-a.main", "team-a.side"}
            assert set(stats_of(base, "ingress-b")["pipelines"]) == {"team-b.alpha"}
            assert httpx.get(base + "/stats", timeout=10).status_code == 401
        app.close()
    finally:
        gateway.shutdown(5)


def test_retry_after_stays_inside_the_finish_grace(srv: DevServer, tmp_path: Path) -> None:
    # The server swallows the first bulk request: the worker waits out its deadline while the queue fills, and has
    # measured no rate yet (100 spans/s assumed), so the backlog of more than 360 spans would ask for 4 s or more.
    srv.add_fault(Fault(black_hole=True, times=1))
    started: list[Gateway] = []
    gateway = start(
        started, settings_for(srv, tmp_path, queue_max_spans=400, export_timeout=30, finish_grace_seconds=6)
    )
    try:
        assert gateway.max_retry_after_s == 2  # a third of the grace
        app = OtlpHttpApp(gateway, max_request_bytes=1 << 20)
        with AppServer(app) as server, httpx.Client(timeout=30) as client:
            refused = None
            for _ in range(40):
                spans = traced(runs=10)  # 40 spans
                answer = client.post(
                    server.traces_url,
                    content=request_bytes(spans),
                    headers={**PROTOBUF, "Authorization": "Bearer ingress-1"},
                )
                if answer.status_code != 200:
                    refused = answer
                    break
            assert refused is not None and refused.status_code == 429, refused
            assert refused.headers["retry-after"] == "2"
            view = stats_of(f"http://127.0.0.1:{server.port}", "ingress-1")
            assert view["retry_after_max_s"] == 2 and view["retry_after_capped"] >= 1
            assert view["overloaded_429"] == 1
        app.close()

        grpc_server, port = build_server(gateway, host="127.0.0.1", port=0, max_request_bytes=1 << 20)
        grpc_server.start()
        try:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                export = channel.unary_unary(EXPORT, request_serializer=None, response_deserializer=None)
                with pytest.raises(grpc.RpcError) as pushed_back:
                    export(
                        request_bytes(traced(runs=10)), metadata=(("authorization", "Bearer ingress-1"),), timeout=30
                    )
            assert pushed_back.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert retry_info_of(pushed_back.value).retry_delay.seconds == 2
        finally:
            grpc_server.stop(grace=None)
    finally:
        gateway.shutdown(5)
