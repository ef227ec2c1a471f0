"""Fault injection, request limits and server hygiene of the dev server, over real HTTP."""

from __future__ import annotations

import gzip
import json
import socket
import threading
import time
from typing import Any

import httpx
import pytest

from prefactor_otel.devserver import DevServer, Fault


def register_items(srv: DevServer, key: str = "fault-reg-01") -> list[dict[str, Any]]:
    return [
        {
            "_type": "agent_instances/register",
            "idempotency_key": key,
            "id": srv.new_id(),
            "agent_id": srv.agent_id,
            "agent_version": {"name": "faulty"},
            "agent_schema_version": {"span_type_schemas": [{"name": "otel:span", "params_schema": {}}]},
        }
    ]


def test_status_fault_answers_without_processing(client: httpx.Client, srv: DevServer) -> None:
    srv.add_fault(Fault(status=503, retry_after="2"))
    items = register_items(srv)
    r = client.post("/api/v1/bulk", json={"items": items})
    assert r.status_code == 503 and r.headers["Retry-After"] == "2"
    assert r.json()["status"] == "error"
    assert srv.instances() == []
    r = client.post("/api/v1/bulk", json={"items": items})  # times=1: gone now
    assert r.status_code == 200 and len(srv.instances()) == 1


def test_status_fault_with_a_raw_body(client: httpx.Client, srv: DevServer) -> None:
    srv.add_fault(Fault(status=502, body="<html>Bad Gateway</html>"))
    r = client.post("/api/v1/bulk", json={"items": register_items(srv)})
    assert r.status_code == 502 and r.text == "<html>Bad Gateway</html>"
    assert r.headers["content-type"].startswith("text/html")
    assert srv.instances() == []


def test_drop_connection_sends_nothing_and_processes_nothing(client: httpx.Client, srv: DevServer) -> None:
    srv.add_fault(Fault(drop_connection=True))
    with pytest.raises(httpx.TransportError):
        client.post("/api/v1/bulk", json={"items": register_items(srv)})
    assert srv.instances() == []
    assert srv.requests[-1].status == 0
    assert client.get("/api/v1/ping").status_code == 200  # the client recovers on a new connection


def test_commit_then_fail_commits_and_the_retry_replays(client: httpx.Client, srv: DevServer) -> None:
    srv.add_fault(Fault(commit_then_fail=True))
    items = register_items(srv)
    r = client.post("/api/v1/bulk", json={"items": items})
    assert r.status_code == 500
    assert len(srv.instances()) == 1  # committed although the client saw a failure
    r = client.post("/api/v1/bulk", json={"items": items})
    assert r.status_code == 200
    assert r.json()["outputs"]["fault-reg-01"]["status"] == "success"
    assert len(srv.instances()) == 1


def test_commit_then_drop(client: httpx.Client, srv: DevServer) -> None:
    srv.add_fault(Fault(commit_then_fail=True, drop_connection=True))
    with pytest.raises(httpx.TransportError):
        client.post("/api/v1/bulk", json={"items": register_items(srv)})
    assert len(srv.instances()) == 1


def test_commit_then_fail_with_a_chosen_status(client: httpx.Client, srv: DevServer) -> None:
    srv.add_fault(Fault(commit_then_fail=True, status=504, retry_after="1"))
    r = client.post("/api/v1/bulk", json={"items": register_items(srv)})
    assert r.status_code == 504 and r.headers["Retry-After"] == "1"
    assert len(srv.instances()) == 1


def test_delay_fault(client: httpx.Client, srv: DevServer) -> None:
    srv.add_fault(Fault(path="/api/v1/ping", method="GET", delay_s=0.3))
    started = time.monotonic()
    assert client.get("/api/v1/ping").status_code == 200
    assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    client.get("/api/v1/ping")
    assert time.monotonic() - started < 0.3


def test_redirect_fault(client: httpx.Client, srv: DevServer) -> None:
    srv.add_fault(Fault(redirect_to="https://elsewhere.invalid/api/v1/bulk"))
    r = client.post("/api/v1/bulk", json={"items": register_items(srv)})
    assert r.status_code == 307 and r.headers["Location"] == "https://elsewhere.invalid/api/v1/bulk"
    assert srv.instances() == []
    srv.add_fault(Fault(redirect_to="/elsewhere", status=308))
    assert client.post("/api/v1/bulk", json={"items": register_items(srv)}).status_code == 308


def test_fault_times_and_matching(client: httpx.Client, srv: DevServer) -> None:
    srv.add_fault(Fault(status=429, times=2))
    assert client.get("/api/v1/ping").status_code == 200  # other path and method: untouched
    codes = [client.post("/api/v1/bulk", json={"items": register_items(srv)}).status_code for _ in range(3)]
    assert codes == [429, 429, 200]
    srv.add_fault(Fault(path="/api/v1/", method="*", status=500, times=-1))
    assert [client.get("/api/v1/ping").status_code for _ in range(4)] == [500] * 4
    srv.clear_faults()
    assert client.get("/api/v1/ping").status_code == 200


def test_fault_json_round_trip_and_validation() -> None:
    fault = Fault(path="/api/v1/agent_spans", method="post", times=-1, status=503, retry_after="1", delay_s=0.5)
    assert fault.method == "POST"
    assert Fault.from_json(fault.to_json()) == fault
    assert Fault.from_dict(json.loads(json.dumps(Fault().to_dict()))) == Fault()
    for bad in ({"times": 0}, {"status": 99}, {"unknown": 1}, {"path": "api"}, {"delay_s": -1}):
        with pytest.raises(ValueError):
            Fault.from_dict(bad)


def test_faults_can_be_injected_over_http(client: httpx.Client, srv: DevServer) -> None:
    r = client.post("/_dev/faults", json=Fault(status=503, times=-1).to_dict())
    assert r.status_code == 200
    assert client.get("/_dev/faults").json()["summaries"][0]["status"] == 503
    assert client.post("/api/v1/bulk", json={"items": register_items(srv)}).status_code == 503
    assert client.get("/_dev/snapshot").status_code == 200  # /_dev is never faulted
    assert client.delete("/_dev/faults").status_code == 200
    assert client.post("/api/v1/bulk", json={"items": register_items(srv)}).status_code == 200
    r = client.post("/_dev/faults", json={"times": 0})
    assert r.status_code == 422 and r.json()["code"] == "invalid_value"


# --------------------------------------------------------------------------- limits and parsing


def test_oversized_body_is_413_without_processing() -> None:
    with (
        DevServer(max_body_bytes=2_000) as small,
        httpx.Client(base_url=small.url, headers={"Authorization": f"Bearer {small.token}"}) as c,
    ):
        big = register_items(small)
        big[0]["agent_version"]["description"] = "x" * 5_000
        r = c.post("/api/v1/bulk", json={"items": big})
        assert r.status_code == 413 and r.json()["status"] == "error"
        assert small.instances() == []
        assert small.requests[-1].status == 413
        assert c.post("/api/v1/bulk", json={"items": register_items(small)}).status_code == 200


def test_non_json_body_is_bad_request(client: httpx.Client, srv: DevServer) -> None:
    r = client.post("/api/v1/bulk", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["code"] == "bad_request"
    r = client.post("/api/v1/agent_spans", content=b'{"details": NaN}')
    assert r.status_code == 400 and r.json()["code"] == "bad_request"
    r = client.post("/api/v1/agent_instance/register", json=["a", "list"])
    assert r.status_code == 400 and r.json()["code"] == "bad_request"
    assert srv.instances() == []


def test_gzip_and_chunked_bodies_are_accepted(client: httpx.Client, srv: DevServer) -> None:
    raw = json.dumps({"items": register_items(srv, "gzip-key-001")}).encode()
    r = client.post("/api/v1/bulk", content=gzip.compress(raw), headers={"Content-Encoding": "gzip"})
    assert r.status_code == 200, r.text
    chunked = json.dumps({"items": register_items(srv, "chunk-key-01")}).encode()
    r = client.post("/api/v1/bulk", content=iter([chunked[:50], chunked[50:]]))
    assert r.status_code == 200, r.text
    assert len(srv.instances()) == 2


# --------------------------------------------------------------------------- hygiene


def test_silent_and_no_traceback_on_client_disconnect(
    srv: DevServer, client: httpx.Client, capfd: pytest.CaptureFixture[str]
) -> None:
    client.get("/api/v1/ping")
    host, port = "127.0.0.1", srv.port
    for payload in (
        b'POST /api/v1/bulk HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n{"items"',  # body cut short
        b"GET /api/v1/pi",  # request line cut short
        b"",  # connect and hang up
    ):
        with socket.create_connection((host, port)) as sock:
            sock.sendall(payload)
    with socket.create_connection((host, port)) as sock:  # sends, never reads the answer
        request = f"GET /api/v1/ping HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {srv.token}\r\n\r\n"
        sock.sendall(request.encode())
    time.sleep(0.2)
    assert client.get("/api/v1/ping").status_code == 200
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_concurrent_requests_are_all_recorded(client: httpx.Client, srv: DevServer) -> None:
    client.post("/api/v1/bulk", json={"items": register_items(srv)})
    instance_id = srv.instances()[0]["id"]
    client.post(f"/api/v1/agent_instance/{instance_id}/start", json={})

    def worker(n: int) -> None:
        with httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {srv.token}"}) as c:
            for i in range(25):
                details = {
                    "agent_instance_id": instance_id,
                    "schema_name": "otel:span",
                    "status": "active",
                    "payload": {"n": n, "i": i},
                }
                assert c.post("/api/v1/agent_spans", json={"details": details}).status_code == 200

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(srv.spans()) == 200 and len({s["id"] for s in srv.spans()}) == 200
    assert srv.instances()[0]["span_counts"]["active"] == 200


def test_stop_closes_the_port(srv: DevServer) -> None:
    port = srv.port
    with httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {srv.token}"}) as c:
        assert c.get("/api/v1/ping").status_code == 200  # leaves a keep-alive connection open
        srv.stop()
        with pytest.raises(httpx.TransportError):
            c.get("/api/v1/ping")
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    srv.stop()  # idempotent
