"""The dev server's REST API rules, each proven over real HTTP on 127.0.0.1 with httpx."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from prefactor_otel.devserver import DevServer
from prefactor_otel.model import http as models
from prefactor_otel.model import ids

SCHEMAS = [
    {"name": "otel:agent", "params_schema": {"type": "object"}, "title": "Agent"},
    {"name": "otel:llm", "params_schema": {"type": "object"}},
]


def register_body(srv: DevServer, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "agent_id": srv.agent_id,
        "agent_version": {"name": "demo-agent", "external_identifier": "1.0.0"},
        "agent_schema_version": {"external_identifier": "schemas-1", "span_type_schemas": SCHEMAS},
    }
    body.update(overrides)
    return body


def register(client: httpx.Client, srv: DevServer, *, start: bool = True, **overrides: Any) -> str:
    r = client.post("/api/v1/agent_instance/register", json=register_body(srv, **overrides))
    assert r.status_code == 200, r.text
    instance_id = r.json()["details"]["id"]
    if start:
        r = client.post(f"/api/v1/agent_instance/{instance_id}/start", json={"timestamp": "2024-01-01T00:00:00.000Z"})
        assert r.status_code == 200, r.text
    return instance_id


def span_details(instance_id: str, **overrides: Any) -> dict[str, Any]:
    details: dict[str, Any] = {
        "agent_instance_id": instance_id,
        "schema_name": "otel:llm",
        "status": "complete",
        "payload": {"name": "chat"},
        "result_payload": {"outputs": {"text": "hi"}},
        "started_at": "2024-01-01T00:00:01.000Z",
        "finished_at": "2024-01-01T00:00:02.000Z",
    }
    details.update(overrides)
    return {k: v for k, v in details.items() if v is not None}


def create_span(client: httpx.Client, instance_id: str, **overrides: Any) -> httpx.Response:
    return client.post("/api/v1/agent_spans", json={"details": span_details(instance_id, **overrides)})


def assert_error(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["status"] == "error" and body["code"] == code, body
    assert isinstance(body["message"], str)
    return body


# --------------------------------------------------------------------------- basics and auth


def test_ping(client: httpx.Client) -> None:
    r = client.get("/api/v1/ping")
    assert r.status_code == 200
    assert r.json() == {"status": "success", "details": {"token_type": "api"}}


def test_url_has_no_api_suffix_and_ids_share_the_partition(srv: DevServer) -> None:
    assert srv.url.startswith("http://127.0.0.1:") and not srv.url.endswith("/api/v1")
    for pfid in (srv.account_id, srv.agent_id, srv.environment_id):
        assert ids.is_pfid(pfid) and ids.extract_partition(pfid) == srv.partition


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/v1/ping"),
        ("POST", "/api/v1/bulk"),
        ("POST", "/api/v1/agent_instance/register"),
        ("GET", "/api/v1/agent_spans"),
        ("GET", "/_dev/snapshot"),
        ("DELETE", "/_dev/faults"),
    ],
)
def test_missing_token_is_not_authenticated(srv: DevServer, method: str, path: str) -> None:
    r = httpx.request(method, srv.url + path, json={})
    assert_error(r, 401, "not_authenticated")
    r = httpx.request(method, srv.url + path, json={}, headers={"Authorization": "Basic abc"})
    assert_error(r, 401, "not_authenticated")


def test_wrong_token_is_bad_authtoken_and_never_echoed(srv: DevServer) -> None:
    wrong = "pf_wrong_token_value_123"
    r = httpx.get(srv.url + "/api/v1/ping", headers={"Authorization": f"Bearer {wrong}"})
    assert_error(r, 401, "bad_authtoken")
    assert wrong not in r.text and srv.token not in r.text
    r = httpx.get(srv.url + "/_dev/snapshot", headers={"Authorization": f"Bearer {wrong}"})
    assert_error(r, 401, "bad_authtoken")
    assert srv.instances() == []


def test_token_never_appears_in_responses_snapshot_log_or_repr(client: httpx.Client, srv: DevServer) -> None:
    texts = []
    instance_id = register(client, srv)
    texts.append(client.get(f"/api/v1/agent_instance/{instance_id}").text)
    texts.append(create_span(client, instance_id).text)
    texts.append(client.get("/api/v1/agent_spans", params={"agent_instance_id": instance_id}).text)
    texts.append(client.get("/api/v1/nope").text)
    texts.append(client.post("/api/v1/bulk", json={"items": []}).text)
    texts.append(client.get("/_dev/snapshot").text)
    texts += [json.dumps(srv.snapshot()), repr(srv), str(srv), repr(srv.requests), repr(srv.store.__dict__)]
    assert all(srv.token not in text for text in texts)


def test_unknown_endpoint_is_not_found(client: httpx.Client) -> None:
    assert_error(client.get("/api/v1/agents_typo"), 404, "not_found")


# --------------------------------------------------------------------------- ids


@pytest.mark.parametrize("bad", ["not-a-pfid", "0" * 31, "8" + "0" * 31, "UPPER"])
def test_client_ids_must_be_canonical_pfids(client: httpx.Client, srv: DevServer, bad: str) -> None:
    if bad == "UPPER":
        bad = srv.new_id().upper()
    r = client.post("/api/v1/agent_instance/register", json=register_body(srv, id=bad))
    assert_error(r, 422, "invalid_value")
    assert srv.instances() == []


def test_client_ids_must_be_in_the_account_partition(client: httpx.Client, srv: DevServer) -> None:
    other = ids.encode(1_700_000_000_000, (srv.partition + 1) % (ids.MAX_PARTITION + 1), 42)
    r = client.post("/api/v1/agent_instance/register", json=register_body(srv, id=other))
    body = assert_error(r, 422, "invalid_value")
    assert "partition" in body["message"]
    instance_id = register(client, srv)
    assert_error(create_span(client, instance_id, id=other), 422, "invalid_value")
    assert_error(create_span(client, instance_id, parent_span_id=other), 422, "invalid_value")
    r = client.post(f"/api/v1/agent_spans/{other}/finish", json={})
    assert_error(r, 422, "invalid_value")
    assert srv.spans() == []


def test_reusing_an_instance_id_is_a_conflict(client: httpx.Client, srv: DevServer) -> None:
    chosen = srv.new_id()
    r1 = client.post(
        "/api/v1/agent_instance/register", json=register_body(srv, id=chosen, idempotency_key="key-one-0001")
    )
    assert r1.status_code == 200 and r1.json()["details"]["id"] == chosen
    r2 = client.post(
        "/api/v1/agent_instance/register", json=register_body(srv, id=chosen, idempotency_key="key-two-0002")
    )
    assert_error(r2, 409, "invalid_value")
    assert_error(
        client.post("/api/v1/agent_instance/register", json=register_body(srv, id=chosen)), 409, "invalid_value"
    )
    assert len(srv.instances()) == 1


def test_reusing_a_span_id_is_a_conflict(client: httpx.Client, srv: DevServer) -> None:
    instance_id = register(client, srv)
    span_id = srv.new_id()
    assert create_span(client, instance_id, id=span_id).status_code == 200
    assert_error(create_span(client, instance_id, id=span_id), 409, "invalid_value")
    assert len(srv.spans()) == 1


def test_pfid_generate_returns_ids_in_the_partition(client: httpx.Client, srv: DevServer) -> None:
    r = client.post("/api/v1/pfid/generate", json={"count": 5})
    assert r.status_code == 200
    pfids = r.json()["details"]["pfids"]
    assert len(set(pfids)) == 5
    assert all(ids.is_pfid(p) and ids.extract_partition(p) == srv.partition for p in pfids)
    assert_error(client.post("/api/v1/pfid/generate", json={"count": 0}), 422, "invalid_value")


def test_seeded_ids_define_the_partition() -> None:
    agent = ids.encode(1_700_000_000_000, 777, 1)
    env = ids.encode(1_700_000_000_000, 777, 2)
    with DevServer(agent_id=agent, environment_id=env) as seeded:
        assert (seeded.partition, seeded.agent_id, seeded.environment_id) == (777, agent, env)
        assert ids.extract_partition(seeded.account_id) == 777
    with pytest.raises(ValueError):
        DevServer(agent_id=agent, environment_id=ids.encode(1, 778, 2))
    with pytest.raises(ValueError):
        DevServer(agent_id="nope")


def test_two_servers_are_independent(srv: DevServer, client: httpx.Client) -> None:
    with DevServer(token="other_token_xyz") as other:
        assert other.url != srv.url and other.agent_id != srv.agent_id
        register(client, srv)
        assert len(srv.instances()) == 1 and other.instances() == []
        r = httpx.get(other.url + "/api/v1/ping", headers={"Authorization": f"Bearer {srv.token}"})
        assert_error(r, 401, "bad_authtoken")


# --------------------------------------------------------------------------- instances


def test_register_returns_a_pending_instance_and_versions(client: httpx.Client, srv: DevServer) -> None:
    r = client.post("/api/v1/agent_instance/register", json=register_body(srv, purpose="eval"))
    assert r.status_code == 200
    details = r.json()["details"]
    instance = models.AgentInstance.model_validate(details)
    assert instance.status == "pending" and details["purpose"] == "eval"
    assert details["environment_id"] == srv.environment_id and details["account_id"] == srv.account_id
    assert details["span_counts"] == dict.fromkeys(
        ("total", "pending", "active", "complete", "failed", "cancelled", "finished"), 0
    )
    snap = srv.snapshot()
    assert [v["name"] for v in snap["agent_versions"]] == ["demo-agent"]
    assert snap["agent_versions"][0]["id"] == details["agent_version_id"]
    assert [s["name"] for s in snap["schema_versions"][0]["span_type_schemas"]] == ["otel:agent", "otel:llm"]


def test_versions_are_deduplicated_by_content(client: httpx.Client, srv: DevServer) -> None:
    register(client, srv, start=False)
    register(client, srv, start=False)
    register(client, srv, start=False, agent_version={"name": "demo-agent", "external_identifier": "2.0.0"})
    snap = srv.snapshot()
    assert len(snap["agent_versions"]) == 2 and len(snap["schema_versions"]) == 1
    assert len({i["agent_version_id"] for i in snap["instances"]}) == 2


def test_register_unknown_agent_or_environment_is_not_found(client: httpx.Client, srv: DevServer) -> None:
    r = client.post("/api/v1/agent_instance/register", json=register_body(srv, agent_id=srv.new_id()))
    assert assert_error(r, 404, "not_found")["message"] == "agent not found"
    r = client.post("/api/v1/agent_instance/register", json=register_body(srv, environment_id=srv.new_id()))
    assert_error(r, 404, "not_found")


def test_register_drops_unknown_fields_as_a_finding_and_rejects_missing_ones(
    client: httpx.Client, srv: DevServer
) -> None:
    r = client.post("/api/v1/agent_instance/register", json=register_body(srv, agnet_id="typo"))
    assert r.status_code == 200, r.text  # Prefactor drops unknown fields without an error
    assert [(f["rule"], f["field"], f["action"]) for f in srv.findings()] == [
        ("unknown_field", "agnet_id", "agent_instances/register")
    ]
    body = register_body(srv)
    del body["agent_schema_version"]
    assert_error(client.post("/api/v1/agent_instance/register", json=body), 422, "validation_errors")


def test_instance_state_machine(client: httpx.Client, srv: DevServer) -> None:
    instance_id = register(client, srv, start=False)
    base = f"/api/v1/agent_instance/{instance_id}"
    assert_error(client.post(base + "/finish", json={"status": "complete"}), 409, "invalid_action")
    r = client.post(base + "/start", json={"timestamp": "2024-01-01T00:00:00.000Z"})
    assert r.json()["details"]["status"] == "active"
    assert r.json()["details"]["started_at"] == "2024-01-01T00:00:00.000000Z"
    assert_error(client.post(base + "/start", json={}), 409, "invalid_action")
    assert_error(client.post(base + "/finish", json={"status": "cancelled"}), 409, "invalid_action")
    r = client.post(base + "/finish", json={"status": "failed", "timestamp": "2024-01-01T00:00:05+00:00"})
    assert r.json()["details"]["status"] == "failed"
    assert r.json()["details"]["finished_at"] == "2024-01-01T00:00:05.000000Z"
    assert_error(client.post(base + "/finish", json={}), 409, "invalid_action")
    assert_error(client.post(base + "/start", json={}), 409, "invalid_action")


def test_finish_defaults_to_complete_and_cancel_only_from_pending(client: httpx.Client, srv: DevServer) -> None:
    active = register(client, srv)
    r = client.post(f"/api/v1/agent_instance/{active}/finish", json={})
    assert r.json()["details"]["status"] == "complete"
    pending = register(client, srv, start=False)
    r = client.post(f"/api/v1/agent_instance/{pending}/finish", json={"status": "cancelled"})
    details = r.json()["details"]
    assert details["status"] == "cancelled" and details["started_at"] == details["finished_at"]
    assert_error(client.post(f"/api/v1/agent_instance/{pending}/finish", json={}), 409, "invalid_action")


def test_instance_finish_before_start_time_is_invalid(client: httpx.Client, srv: DevServer) -> None:
    instance_id = register(client, srv)
    r = client.post(f"/api/v1/agent_instance/{instance_id}/finish", json={"timestamp": "2023-12-31T23:59:59Z"})
    assert_error(r, 422, "invalid_value")


def test_get_and_list_instances(client: httpx.Client, srv: DevServer) -> None:
    first = register(client, srv)
    second = register(client, srv, start=False)
    r = client.get(f"/api/v1/agent_instance/{first}")
    assert r.json()["details"]["id"] == first
    assert_error(client.get(f"/api/v1/agent_instance/{srv.new_id()}"), 404, "not_found")
    r = client.get("/api/v1/agent_instance", params={"agent_id": srv.agent_id})
    body = r.json()
    assert [row["id"] for row in body["summaries"]] == [first, second]
    assert body["pagination"]["item_count"] == 2
    r = client.get("/api/v1/agent_instance", params={"agent_id": srv.agent_id, "pagination[page_size]": 1})
    assert [row["id"] for row in r.json()["summaries"]] == [first]
    assert r.json()["pagination"]["next_page_offset"] == 1
    assert r.json()["pagination"]["page_index"] == 1  # one-based, as prefactor-http's PaginationOutput says
    params = {"agent_id": srv.agent_id, "pagination[page_size]": 1, "pagination[offset]": 1}
    assert client.get("/api/v1/agent_instance", params=params).json()["pagination"]["page_index"] == 2
    assert [i["id"] for i in srv.instances()] == [first, second]


def test_terminate_sets_status_and_control_signal(client: httpx.Client, srv: DevServer) -> None:
    instance_id = register(client, srv)
    open_span = srv.new_id()
    r = create_span(client, instance_id, id=open_span, status="active", finished_at=None, result_payload=None)
    assert r.status_code == 200 and "control" not in r.json()
    assert_error(client.post(f"/api/v1/agent_instance/{instance_id}/terminate", json={}), 422, "required_value")
    r = client.post(f"/api/v1/agent_instance/{instance_id}/terminate", json={"reason": "budget exceeded"})
    assert r.json()["details"]["status"] == "terminated"
    assert r.json()["details"]["termination_reason"] == "budget exceeded"
    r = client.post(f"/api/v1/agent_spans/{open_span}/finish", json={"status": "complete"})
    assert r.status_code == 200
    assert r.json()["control"] == {"terminate": True, "reason": "budget exceeded"}
    # A span create in the terminated run succeeds and carries `control`: the official clients read `control`
    # only from successful answers (docs/local-server.md).
    r = create_span(client, instance_id)
    assert r.status_code == 200, r.text
    assert r.json()["control"] == {"terminate": True, "reason": "budget exceeded"}
    r = client.post(f"/api/v1/agent_instance/{instance_id}/terminate", json={"reason": "again"})
    assert_error(r, 409, "invalid_action")
    assert_error(client.post(f"/api/v1/agent_instance/{instance_id}/finish", json={}), 409, "invalid_action")


def test_only_active_instances_can_be_terminated(client: httpx.Client, srv: DevServer) -> None:
    pending = register(client, srv, start=False)
    r = client.post(f"/api/v1/agent_instance/{pending}/terminate", json={"reason": "x"})
    assert_error(r, 409, "invalid_action")


# --------------------------------------------------------------------------- spans


def test_span_create_returns_a_valid_agent_span(client: httpx.Client, srv: DevServer) -> None:
    instance_id = register(client, srv)
    r = create_span(client, instance_id, schema_name="otel:agent")
    assert r.status_code == 200, r.text
    details = r.json()["details"]
    span = models.AgentSpan.model_validate(details)
    assert span.status == "complete" and details["schema_title"] == "Agent"
    assert details["agent_id"] == srv.agent_id and details["account_id"] == srv.account_id
    assert details["started_at"] == "2024-01-01T00:00:01.000000Z"
    assert details["result_payload"] == {"outputs": {"text": "hi"}}
    r = create_span(client, instance_id, schema_name="otel:llm")
    assert r.json()["details"]["schema_title"] == "otel:llm"  # no title registered: the name
    counts = client.get(f"/api/v1/agent_instance/{instance_id}").json()["details"]["span_counts"]
    assert counts["total"] == 2 and counts["complete"] == 2 and counts["finished"] == 2
    assert [s["id"] for s in srv.spans(instance_id)] == [s["id"] for s in srv.spans()]


def test_span_create_accepts_key_inside_or_beside_details(client: httpx.Client, srv: DevServer) -> None:
    instance_id = register(client, srv)
    inner = {"details": {**span_details(instance_id), "idempotency_key": "inner-key-0001"}}
    assert client.post("/api/v1/agent_spans", json=inner).status_code == 200
    assert client.post("/api/v1/agent_spans", json=inner).status_code == 200
    outer = {"details": span_details(instance_id), "idempotency_key": "inner-key-0001"}
    assert client.post("/api/v1/agent_spans", json=outer).status_code == 200
    assert len(srv.spans()) == 1
    both = {"details": {**span_details(instance_id), "idempotency_key": "aaaaaaaa1"}, "idempotency_key": "bbbbbbbb2"}
    assert_error(client.post("/api/v1/agent_spans", json=both), 422, "validation_errors")


def test_span_create_needs_an_existing_unfinished_instance(client: httpx.Client, srv: DevServer) -> None:
    assert_error(create_span(client, srv.new_id()), 404, "not_found")
    finished = register(client, srv)
    client.post(f"/api/v1/agent_instance/{finished}/finish", json={"status": "complete"})
    assert_error(create_span(client, finished), 409, "invalid_action")
    assert srv.spans() == []


def test_spans_of_a_pending_instance_are_accepted_and_can_finish(client: httpx.Client, srv: DevServer) -> None:
    # prefactor-core queues the run's start but creates spans at once: they may arrive first.
    pending = register(client, srv, start=False)
    active = srv.new_id()
    r = create_span(client, pending, id=active, status="active", finished_at=None, result_payload=None)
    assert r.status_code == 200, r.text
    assert create_span(client, pending).status_code == 200
    r = client.post(f"/api/v1/agent_spans/{active}/finish", json={"status": "complete"})
    assert r.status_code == 200, r.text
    assert client.get(f"/api/v1/agent_instance/{pending}").json()["details"]["status"] == "pending"
    assert client.post(f"/api/v1/agent_instance/{pending}/start", json={}).status_code == 200


def test_span_create_payload_defaults_to_an_empty_object(client: httpx.Client, srv: DevServer) -> None:
    instance_id = register(client, srv)
    details = {"agent_instance_id": instance_id, "schema_name": "otel:llm", "status": "active"}
    r = client.post("/api/v1/agent_spans", json={"details": details})
    assert r.status_code == 200, r.text
    assert r.json()["details"]["payload"] == {}


def test_parent_must_exist_in_the_same_instance(client: httpx.Client, srv: DevServer) -> None:
    first = register(client, srv)
    second = register(client, srv)
    assert_error(create_span(client, first, parent_span_id=srv.new_id()), 404, "not_found")
    parent = create_span(client, first).json()["details"]["id"]
    body = assert_error(create_span(client, second, parent_span_id=parent), 404, "not_found")
    assert "another agent instance" in json.dumps(body)
    child = create_span(client, first, parent_span_id=parent)
    assert child.status_code == 200 and child.json()["details"]["parent_span_id"] == parent


def test_schema_name_must_be_registered(client: httpx.Client, srv: DevServer) -> None:
    instance_id = register(client, srv)
    body = assert_error(create_span(client, instance_id, schema_name="otel:unknown"), 422, "invalid_value")
    assert "schema_name" in body["errors"]


@pytest.mark.parametrize(
    "overrides",
    [
        {"status": "done"},
        {"payload": ["not", "an", "object"]},
        {"payload": "text"},
        {"result_payload": [1]},
        {"status": "active", "finished_at": None, "result_payload": {"x": 1}},
        {"status": "pending", "started_at": None, "finished_at": None, "result_payload": {"x": 1}},
        {"status": "active", "result_payload": None},  # finished_at on an active span
        {"finished_at": None},  # complete needs finished_at
        {"started_at": "2024-01-01T00:00:03.000Z"},  # finished before started
        {"started_at": "2024-01-01T00:00:01"},  # no time zone
        {"finished_at": "yesterday"},
        {"started_at": "2024-13-01T00:00:00Z"},
    ],
)
def test_span_create_field_rules(client: httpx.Client, srv: DevServer, overrides: dict[str, Any]) -> None:
    instance_id = register(client, srv)
    details = span_details(instance_id)
    details.update(overrides)
    details = {k: v for k, v in details.items() if v is not None}
    r = client.post("/api/v1/agent_spans", json={"details": details})
    assert_error(r, 422, "invalid_value")
    assert srv.spans() == []


def test_span_create_drops_unknown_fields_as_a_finding_and_rejects_missing_ones(
    client: httpx.Client, srv: DevServer
) -> None:
    instance_id = register(client, srv)
    r = create_span(client, instance_id, parent_id="typo")
    assert r.status_code == 200 and "parent_id" not in r.json()["details"]
    assert [f["field"] for f in srv.findings()] == ["details.parent_id"]
    details = span_details(instance_id)
    del details["schema_name"]
    assert_error(client.post("/api/v1/agent_spans", json={"details": details}), 422, "validation_errors")


def test_timestamps_are_normalised_to_utc_microseconds(client: httpx.Client, srv: DevServer) -> None:
    instance_id = register(client, srv)
    r = create_span(
        client,
        instance_id,
        started_at="2024-01-01T02:00:01.123456789+02:00",
        finished_at="2024-01-01T00:00:01.9999Z",
    )
    details = r.json()["details"]
    assert details["started_at"] == "2024-01-01T00:00:01.123456Z"  # nanoseconds truncated to the API's µs
    assert details["finished_at"] == "2024-01-01T00:00:01.999900Z"
    for key in ("inserted_at", "updated_at"):
        assert details[key].endswith("Z") and len(details[key]) == len("2024-01-01T00:00:01.999999Z")


def test_span_finish_state_machine(client: httpx.Client, srv: DevServer) -> None:
    instance_id = register(client, srv)
    active = create_span(client, instance_id, status="active", finished_at=None, result_payload=None)
    span_id = active.json()["details"]["id"]
    r = client.post(
        f"/api/v1/agent_spans/{span_id}/finish",
        json={"status": "failed", "result_payload": {"error": "boom"}, "timestamp": "2024-01-01T00:00:04Z"},
    )
    details = r.json()["details"]
    assert details["status"] == "failed" and details["result_payload"] == {"error": "boom"}
    assert details["finished_at"] == "2024-01-01T00:00:04.000000Z"
    assert_error(client.post(f"/api/v1/agent_spans/{span_id}/finish", json={}), 409, "invalid_action")

    pending = create_span(
        client, instance_id, status="pending", started_at=None, finished_at=None, result_payload=None
    ).json()["details"]["id"]
    r = client.post(f"/api/v1/agent_spans/{pending}/finish", json={"status": "complete"})
    assert_error(r, 409, "invalid_action")
    r = client.post(f"/api/v1/agent_spans/{pending}/finish", json={"status": "cancelled"})
    assert r.json()["details"]["status"] == "cancelled"

    other = create_span(client, instance_id, status="active", finished_at=None, result_payload=None)
    r = client.post(f"/api/v1/agent_spans/{other.json()['details']['id']}/finish", json={"status": "cancelled"})
    assert_error(r, 409, "invalid_action")
    assert_error(client.post(f"/api/v1/agent_spans/{srv.new_id()}/finish", json={}), 404, "not_found")
    counts = srv.instances()[0]["span_counts"]
    assert (counts["active"], counts["failed"], counts["cancelled"], counts["total"]) == (1, 1, 1, 3)


def test_list_spans_by_instance(client: httpx.Client, srv: DevServer) -> None:
    first = register(client, srv)
    second = register(client, srv)
    a = create_span(client, first).json()["details"]["id"]
    create_span(client, second)
    r = client.get("/api/v1/agent_spans", params={"agent_instance_id": first})
    assert [row["id"] for row in r.json()["summaries"]] == [a]
    r = client.get("/api/v1/agent_spans", params={"agent_id": srv.agent_id})
    assert r.json()["pagination"]["item_count"] == 2


def test_returned_dicts_are_copies(client: httpx.Client, srv: DevServer) -> None:
    instance_id = register(client, srv)
    create_span(client, instance_id)
    srv.spans()[0]["payload"]["name"] = "mutated"
    assert srv.spans()[0]["payload"]["name"] == "chat"


def test_dev_snapshot_endpoint_matches_python_api(client: httpx.Client, srv: DevServer) -> None:
    instance_id = register(client, srv)
    create_span(client, instance_id)
    r = client.get("/_dev/snapshot")
    assert r.status_code == 200
    assert r.json() == srv.snapshot()
    assert set(r.json()) == {"instances", "spans", "schema_versions", "agent_versions", "findings"}


def test_fast_id_check_agrees_with_ids_is_pfid(srv: DevServer) -> None:
    # The store checks ids with a regex + slice fast path; it must accept exactly what ids.is_pfid accepts
    # in the account partition.
    good = srv.new_id()
    candidates = [good, good.upper(), good[:-1], good + "0", "8" + good[1:], good[:5] + "u" + good[6:]]
    candidates += [ids.encode(t, p, r) for t, p, r in [(0, srv.partition, 0), (1, srv.partition ^ 1, 5)]]
    candidates += [ids.encode(ids.MAX_TIMESTAMP, srv.partition, ids.MAX_RANDOMNESS)]
    for value in candidates:
        expected = ids.is_pfid(value) and ids.extract_partition(value) == srv.partition
        try:
            srv.store.account.check_id("id", value)
            accepted = True
        except Exception:
            accepted = False
        assert accepted == expected, value
