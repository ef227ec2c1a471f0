"""The local server refuses other hosts and other origins on every route (issue 19, item 1: DNS rebinding).

A DNS-rebinding page (its own name resolved to 127.0.0.1 after it loaded) sends requests whose `Host` is its own
name; a page on another origin that posts to the server sends its own `Origin` (or, from an older browser, only
`Sec-Fetch-Site: cross-site`). Both are refused on every route, token or not, with a JSON answer saying why;
local clients (the exporter, the official clients, curl, the page's own same-origin fetches) send neither and pass.
The real-browser side of the same guard is in tests/test_web_page.py.
"""

from __future__ import annotations

import httpx
import pytest

from prefactor_otel.devserver import DevServer
from tests.spans import agent_trace, exporter_for, make_provider
from tests.test_devserver import register

REBIND = "rebind.attacker.example"


def _headers(srv: DevServer, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {srv.token}", **extra}


def _active_run(srv: DevServer, client: httpx.Client) -> str:
    return register(client, srv)


def _status(srv: DevServer, run_id: str) -> str:
    (run,) = [run for run in srv.instances() if run["id"] == run_id]
    return str(run["status"])


ROUTES = [
    ("GET", "/_dev/runs", None),
    ("GET", "/_dev/snapshot", None),
    ("GET", "/_dev/faults", None),
    ("POST", "/_dev/faults", {"status": 500}),
    ("DELETE", "/_dev/findings", None),
    ("GET", "/api/v1/ping", None),
    ("GET", "/api/v1/agent_instance", None),
    ("POST", "/api/v1/bulk", {"items": []}),
    ("GET", "/", None),
    ("GET", "/app.js", None),
]


@pytest.mark.parametrize("host", [REBIND, f"{REBIND}:8787", "192.168.1.20", "127.0.0.1.attacker.example"])
@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
def test_every_route_refuses_a_host_that_is_not_loopback_or_the_bound_host(
    srv: DevServer, host: str, method: str, path: str, body: object
) -> None:
    response = httpx.request(method, srv.url + path, json=body, headers=_headers(srv, Host=host), timeout=10)
    assert response.status_code == 403, (method, path, response.text)
    if path.startswith(("/api", "/_dev")):
        error = response.json()
        assert error["status"] == "error" and error["code"] == "forbidden_host"
        assert "DNS rebinding" in error["message"] and host in error["message"]
    else:
        assert "DNS rebinding" in response.text
    assert srv.faults.list() == []  # the refused POST /_dev/faults changed nothing


def test_a_rebinding_host_cannot_terminate_a_run_or_read_its_prompts(srv: DevServer, client: httpx.Client) -> None:
    run_id = _active_run(srv, client)
    refused = httpx.post(
        f"{srv.url}/api/v1/agent_instance/{run_id}/terminate",
        json={"reason": "rebound"},
        headers=_headers(srv, Host=f"{REBIND}:{srv.port}"),
        timeout=10,
    )
    assert refused.status_code == 403 and refused.json()["code"] == "forbidden_host"
    assert _status(srv, run_id) == "active"
    refused = httpx.post(
        f"{srv.url}/_dev/terminate",
        json={"agent_instance_id": run_id, "reason": "rebound"},
        headers=_headers(srv, Host=REBIND),
        timeout=10,
    )
    assert refused.status_code == 403
    assert _status(srv, run_id) == "active"
    # the refusals are in the request log, as every request is
    assert [(r.method, r.status) for r in srv.requests[-2:]] == [("POST", 403), ("POST", 403)]


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "localhost", "LOCALHOST.", "[::1]", "[::1]:8787", "app.localhost", "{ip}:{port}"]
)
def test_loopback_names_and_the_bound_address_with_or_without_port_are_served(srv: DevServer, host: str) -> None:
    host = host.format(ip=srv.host, port=srv.port)
    response = httpx.get(srv.url + "/_dev/runs", headers=_headers(srv, Host=host), timeout=10)
    assert response.status_code == 200, response.text


def test_a_server_bound_to_another_address_also_answers_its_own_name() -> None:
    with DevServer(host="localhost") as named:
        response = httpx.get(named.url + "/api/v1/ping", headers=_headers(named), timeout=10)
        assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "origin", ["http://evil.example", "http://127.0.0.1:1", "https://127.0.0.1:{port}", "null", "http://localhost"]
)
@pytest.mark.parametrize(("method", "path"), [("POST", "/terminate"), ("POST", "/_dev/terminate"), ("GET", "/runs")])
def test_a_request_from_another_origin_is_refused_whatever_its_token(
    srv: DevServer, client: httpx.Client, origin: str, method: str, path: str
) -> None:
    run_id = _active_run(srv, client)
    origin = origin.format(port=srv.port)
    url, body = {
        "/terminate": (f"/api/v1/agent_instance/{run_id}/terminate", {"reason": "cross-origin"}),
        "/_dev/terminate": ("/_dev/terminate", {"agent_instance_id": run_id, "reason": "cross-origin"}),
        "/runs": ("/_dev/runs", None),
    }[path]
    response = client.request(method, url, json=body, headers={"Origin": origin})
    assert response.status_code == 403, response.text
    error = response.json()
    assert error["code"] == "forbidden_origin" and origin in error["message"]
    assert _status(srv, run_id) == "active"


@pytest.mark.parametrize("site", ["cross-site", "same-site"])
def test_a_state_change_without_origin_but_marked_cross_site_is_refused(
    srv: DevServer, client: httpx.Client, site: str
) -> None:
    run_id = _active_run(srv, client)
    response = client.post(
        f"/api/v1/agent_instance/{run_id}/terminate", json={"reason": "x"}, headers={"Sec-Fetch-Site": site}
    )
    assert response.status_code == 403 and response.json()["code"] == "forbidden_origin", response.text
    assert _status(srv, run_id) == "active"
    # a cross-site navigation to the page (a link the user clicks) still loads it
    assert httpx.get(srv.url + "/", headers={"Sec-Fetch-Site": site}, timeout=10).status_code == 200


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}"])
def test_the_servers_own_origin_may_change_state(srv: DevServer, client: httpx.Client, host: str) -> None:
    run_id = _active_run(srv, client)
    host = host.format(port=srv.port)
    response = client.post(
        f"/api/v1/agent_instance/{run_id}/terminate",
        json={"reason": "from the page"},
        headers={"Host": host, "Origin": f"http://{host}", "Sec-Fetch-Site": "same-origin"},
    )
    assert response.status_code == 200, response.text
    assert _status(srv, run_id) == "terminated"


def test_the_exporter_still_delivers(srv: DevServer) -> None:
    provider, _ = make_provider()
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    provider.add_span_processor(SimpleSpanProcessor(exporter_for(srv)))
    agent_trace(provider)
    provider.shutdown()
    assert len(srv.instances()) == 1 and srv.spans()
    assert all(r.status < 400 for r in srv.requests)


def test_a_name_the_user_allows_is_answered_and_only_that_one() -> None:
    # what `serve --allow-host host.docker.internal` is for: an app in a container reaching the host's server
    with DevServer(allowed_hosts=["Host.Docker.Internal"]) as allowing:
        allowed = httpx.get(
            allowing.url + "/_dev/runs", headers=_headers(allowing, Host="host.docker.internal:8787"), timeout=10
        )
        assert allowed.status_code == 200, allowed.text
        other = httpx.get(allowing.url + "/_dev/runs", headers=_headers(allowing, Host=REBIND), timeout=10)
        assert other.status_code == 403 and "--allow-host" in other.json()["message"]
    with pytest.raises(ValueError, match="host name"):
        DevServer(allowed_hosts=["http://evil.example/"])
