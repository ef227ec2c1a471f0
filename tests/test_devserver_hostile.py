"""The DevServer's hostile fault modes, seen from a plain client (httpx) on 127.0.0.1."""

from __future__ import annotations

import socket
import time

import httpx
import pytest

from prefactor_otel.devserver import DevServer, Fault
from prefactor_otel.devserver.faults import FaultSet


def _post(srv: DevServer, **kw: object) -> httpx.Response:
    headers = {"Authorization": f"Bearer {srv.token}"}
    return httpx.post(srv.api_url + "/bulk", json={"items": []}, headers=headers, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "fields",
    [
        {"trickle_bytes_per_s": 0},
        {"trickle_bytes_per_s": "fast"},
        {"body_bytes": -1},
        {"endless_body": True, "body_bytes": 10},
        {"black_hole": True, "status": 503},
        {"endless_body": True, "drop_connection": True},
        {"trickle_headers": "no"},
    ],
)
def test_invalid_hostile_faults_are_refused_at_injection(fields: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Fault(**fields)  # type: ignore[arg-type]


def test_hostile_faults_round_trip_through_json() -> None:
    fault = Fault(trickle_bytes_per_s=3.5, trickle_headers=False, status=503)
    assert Fault.from_json(fault.to_json()) == fault


def test_a_body_of_n_bytes_and_the_bytes_written_are_counted() -> None:
    with DevServer() as srv:
        srv.add_fault(Fault(body_bytes=200_000, status=503))
        response = _post(srv, timeout=10)
        assert response.status_code == 503 and len(response.content) == 200_000
        # The server counts after each write returns and logs the request after the last one: the client can have
        # read it all a moment before (bounded wait, no timing assertion).
        deadline = time.monotonic() + 10
        while not (srv.requests and srv.fault_bytes_sent > 200_000) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert 200_000 < srv.fault_bytes_sent < 201_000  # the body and the head
        assert srv.requests[-1].status == 503


def test_a_trickled_answer_arrives_whole() -> None:
    with DevServer() as srv:
        srv.add_fault(Fault(status=429, body='{"a":1}', trickle_bytes_per_s=2000, retry_after="1"))
        response = _post(srv, timeout=10)
        assert response.status_code == 429 and response.json() == {"a": 1}
        assert response.headers["retry-after"] == "1"


def test_an_endless_body_keeps_coming_until_the_client_stops() -> None:
    with DevServer() as srv:
        srv.add_fault(Fault(endless_body=True))
        headers = {"Authorization": f"Bearer {srv.token}"}
        with httpx.stream("POST", srv.api_url + "/bulk", json={"items": []}, headers=headers, timeout=10) as r:
            received = 0
            for chunk in r.iter_raw():
                received += len(chunk)
                if received > 4 << 20:
                    break
        assert received > 4 << 20
        # The server still answers normally afterwards.
        assert _post(srv, timeout=10).status_code == 422


def test_a_black_hole_answers_nothing_and_ends_with_the_server() -> None:
    srv = DevServer().start()
    srv.add_fault(Fault(black_hole=True))
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
        sock.sendall(f"POST /api/v1/bulk HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {srv.token}\r\n".encode())
        sock.sendall(b"Content-Length: 5\r\n\r\n")
        sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            sock.recv(1)  # nothing comes
        srv.stop()
        sock.settimeout(10)
        assert sock.recv(1) == b""  # the stop closed it: no hang
    assert srv.requests[0].status == 0


def test_the_black_hole_check_draws_nothing_when_there_is_none() -> None:
    # Seeded chaos mixes (probability < 1) must keep their sequence of draws with the early check in place.
    plain, checked = FaultSet(seed=7), FaultSet(seed=7)
    for faults in (plain, checked):
        faults.add(Fault(status=503, probability=0.5, times=-1))
    picks_plain = [plain.take("POST", "/api/v1/bulk") is not None for _ in range(50)]
    picks_checked = []
    for _ in range(50):
        assert checked.take("POST", "/api/v1/bulk", before_body=True) is None
        picks_checked.append(checked.take("POST", "/api/v1/bulk") is not None)
    assert picks_checked == picks_plain
