"""One wall-clock deadline per request, a cap on the answer's size, and the last attempt inside the budget.

Every test talks to a real DevServer on 127.0.0.1 whose hostile fault modes play the misbehaving server. Calls
run in a thread joined with a generous guard, so a regression fails the test instead of hanging the suite; the
assertions are about behaviour (the call returned, what was delivered, what the server counted), never timings.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace.export import SpanExportResult

from prefactor_otel.config.options import PrefactorConfig
from prefactor_otel.devserver import DevServer
from prefactor_otel.devserver.faults import Fault
from prefactor_otel.transport import client as transport_module
from prefactor_otel.transport.answers import MAX_RESPONSE_BYTES
from prefactor_otel.transport.client import BulkTransport, encode_item
from prefactor_otel.transport.netdeadline import install_deadline_backend
from tests.spans import agent_trace, exporter_for, make_provider

GUARD_S = 30.0  # only stops a hang; the export timeouts below are 1-2 s
# What a server can have written beyond what the client read: loopback socket buffers on both sides.
SOCKET_BUFFERS = 16 * 1024 * 1024


def _run(call: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(call()), daemon=True)
    thread.start()
    return thread, out


def _finished(srv: DevServer, thread: threading.Thread) -> bool:
    thread.join(GUARD_S)
    alive = thread.is_alive()
    if alive:
        srv.stop()  # ends the hostile answer, so the stuck call ends too (after the test failed)
        thread.join(GUARD_S)
    return not alive


def _export_against(srv: DevServer, **options: Any) -> tuple[Any, bool, list[Any]]:
    provider, collector = make_provider()
    agent_trace(provider)
    exporter = exporter_for(srv, spool=False, **options)
    thread, out = _run(lambda: exporter.export(collector.spans))
    return exporter, _finished(srv, thread), out


@pytest.mark.parametrize("trickle_headers", [True, False], ids=["headers", "body"])
def test_a_trickled_answer_ends_within_the_export_timeout(trickle_headers: bool) -> None:
    # 2 bytes a second: every socket read gets a byte well within its timeout, so only a wall-clock deadline
    # ends the request (before, export(timeout 1 s) took as long as the server liked).
    body = '{"status":"error","code":"unexpected","message":"' + "x" * 200 + '"}'
    fault = Fault(status=503, body=body, trickle_bytes_per_s=2, trickle_headers=trickle_headers, times=-1)
    with DevServer() as srv:
        srv.add_fault(fault)
        exporter, finished, out = _export_against(srv, export_timeout=1)
        assert finished, "export() outlived its timeout by far"
        assert out == [SpanExportResult.FAILURE]
        stats = exporter.stats()
        assert stats["spans_exported"] == 0 and stats["spans_queued"] == 4  # kept for later, not lost
        assert stats["requests_by_outcome"].get("connection_error", 0) >= 1  # a timeout, not an answer
        assert srv.spans() == []


@pytest.mark.parametrize(
    "fault", [Fault(endless_body=True, times=-1), Fault(body_bytes=1 << 30, times=-1)], ids=["endless", "1GB"]
)
def test_an_oversized_answer_is_read_up_to_the_cap_and_counted(fault: Fault) -> None:
    with DevServer() as srv:
        srv.add_fault(fault)
        exporter, finished, out = _export_against(srv, export_timeout=2)
        assert finished
        assert out == [SpanExportResult.FAILURE]
        attempts = len([r for r in srv.requests if r.path.endswith("/bulk")])
        assert attempts >= 1
        # The server cannot have written much more than the client read (before: gigabytes in seconds).
        assert srv.fault_bytes_sent <= attempts * (MAX_RESPONSE_BYTES + SOCKET_BUFFERS)
        stats = exporter.stats()
        assert stats["requests_by_outcome"]["response_too_large"] == attempts
        assert stats["contract_errors"] >= attempts
        assert stats["spans_queued"] == 4


def _transport(srv: DevServer, client: httpx.Client | None = None) -> BulkTransport:
    config = PrefactorConfig.load(environ={}, api_url=srv.url, api_token=srv.token, agent_id=srv.agent_id)
    return BulkTransport(config, sdk_header="prefactor-otel-tests", client=client)


def _register_item(srv: DevServer) -> tuple[bytes, str]:
    # Whether the server accepts it does not matter here: only that its per-item answer arrives.
    key = "deadline-test-register-0001"
    item = {"_type": "agent_instances/register", "idempotency_key": key, "agent_id": srv.agent_id}
    return encode_item(item), key


@pytest.mark.parametrize("body_mb", [0, 48], ids=["waiting-for-headers", "blocked-writing-the-body"])
def test_cap_deadline_ends_a_request_in_flight(body_mb: int) -> None:
    # The black hole reads the headers and nothing else: a small request then waits for an answer, a large one
    # (beyond the socket buffers) blocks while writing its body.
    with DevServer() as srv:
        srv.add_fault(Fault(black_hole=True, times=-1))
        transport = _transport(srv)
        encoded, key = _register_item(srv)
        if body_mb:
            encoded = encoded[:-1] + b',"pad":"' + b"x" * (body_mb << 20) + b'"}'
        thread, out = _run(lambda: transport.send_bulk([encoded], [key], time.monotonic() + 120))
        for _ in range(200):  # bounded: until the request is in the black hole
            if srv.requests:
                break
            time.sleep(0.05)
        assert srv.requests, "the request never reached the server"
        transport.cap_deadline(time.monotonic() + 0.5)  # as the exporter does when the process starts exiting
        assert _finished(srv, thread), "the request ignored the lowered deadline"
        assert out[0].error == "timeout"
        assert out[0].outcomes == {}
        transport.close()


def test_a_5xx_burst_at_the_end_of_the_budget_still_gets_its_last_attempt(monkeypatch: pytest.MonkeyPatch) -> None:
    # The worst jitter each time: waits of 0.5, 1 and 2 s after the three failures; the last does not fit in the
    # 2.5 s budget. Before, the request gave up there with a second left; now it waits what it can and tries.
    monkeypatch.setattr(transport_module, "BACKOFF_BASE_S", 0.25)
    monkeypatch.setattr(transport_module.random, "uniform", lambda low, high: high)
    with DevServer() as srv:
        srv.add_fault(Fault(status=503, times=3))
        transport = _transport(srv)
        encoded, key = _register_item(srv)
        result = transport.send_bulk([encoded], [key], time.monotonic() + 2.5)
        assert [r.status for r in srv.requests] == [503, 503, 503, 200]
        assert result.error is None and list(result.outcomes) == [key]  # the server's per-item answer arrived
        transport.close()


def test_a_retry_after_longer_than_the_budget_still_gets_a_last_attempt() -> None:
    with DevServer() as srv:
        srv.add_fault(Fault(status=503, retry_after="30", times=1))
        transport = _transport(srv)
        encoded, key = _register_item(srv)
        result = transport.send_bulk([encoded], [key], time.monotonic() + 2)
        assert [r.status for r in srv.requests] == [503, 200]
        assert result.error is None and list(result.outcomes) == [key]  # the server's per-item answer arrived
        transport.close()


def test_generate_pfid_obeys_the_deadline_and_the_size_cap() -> None:
    with DevServer() as srv:
        transport = _transport(srv)
        assert transport.generate_pfid(time.monotonic() + 5) is not None
        srv.add_fault(Fault(path="/api/v1/pfid", status=200, body="{}", trickle_bytes_per_s=2, times=1))
        thread, out = _run(lambda: transport.generate_pfid(time.monotonic() + 1))
        assert _finished(srv, thread)
        assert out == [None]
        srv.add_fault(Fault(path="/api/v1/pfid", endless_body=True, times=1))
        assert transport.generate_pfid(time.monotonic() + 5) is None
        assert transport.counters["response_too_large"] == 1
        assert srv.fault_bytes_sent <= MAX_RESPONSE_BYTES + SOCKET_BUFFERS + 1024
        transport.close()


def test_a_caller_supplied_client_still_gets_the_body_deadline() -> None:
    # Not our network layer: the deadline is checked between body chunks (headers arrive at once here).
    fault = Fault(status=503, body="x" * 400, trickle_bytes_per_s=5, trickle_headers=False, times=-1)
    with DevServer() as srv, httpx.Client(timeout=5) as client:
        srv.add_fault(fault)
        transport = _transport(srv, client)
        encoded, key = _register_item(srv)
        thread, out = _run(lambda: transport.send_bulk([encoded], [key], time.monotonic() + 1))
        assert _finished(srv, thread)
        assert out[0].error == "timeout"


def test_the_network_layer_is_optional() -> None:
    # The one function that touches httpx internals declines what it does not recognise; the caller then
    # keeps the per-operation timeouts and the between-chunk checks (the test above).
    assert install_deadline_backend(httpx.MockTransport(lambda request: httpx.Response(200))) is None  # type: ignore[arg-type]
    assert install_deadline_backend(httpx.HTTPTransport()) is not None


def test_without_the_network_layer_the_body_deadline_still_holds(monkeypatch: pytest.MonkeyPatch) -> None:
    # As with an httpx whose internals moved: the client we build falls back to per-operation timeouts.
    monkeypatch.setattr(transport_module, "install_deadline_backend", lambda transport: None)
    fault = Fault(status=503, body="x" * 400, trickle_bytes_per_s=5, trickle_headers=False, times=-1)
    with DevServer() as srv:
        srv.add_fault(fault)
        transport = _transport(srv)
        assert transport._network is None
        encoded, key = _register_item(srv)
        thread, out = _run(lambda: transport.send_bulk([encoded], [key], time.monotonic() + 1))
        assert _finished(srv, thread)
        assert out[0].error == "timeout"
        transport.close()
