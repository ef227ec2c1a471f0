"""Strict-mode findings: what the dev server accepts as the real API would, but records for tests to inspect."""

from __future__ import annotations

from typing import Any

import httpx

from prefactor_otel.devserver import DevServer
from prefactor_otel.devserver.schema_check import violations

LLM = {
    "name": "agent:llm",
    "params_schema": {"type": "object", "properties": {"model": {"type": "string"}}, "required": ["model"]},
    "result_schema": {"type": "object", "properties": {"tokens": {"type": "integer"}}},
}
QUALITY = {"name": "score", "schema": {"type": "object", "properties": {"value": {"type": "number"}}}}


def register(client: httpx.Client, srv: DevServer, **schema_extra: Any) -> str:
    body = {
        "agent_id": srv.agent_id,
        "agent_version": {"name": "a"},
        "agent_schema_version": {"span_type_schemas": [LLM], "quality_schemas": [QUALITY], **schema_extra},
    }
    r = client.post("/api/v1/agent_instance/register", json=body)
    assert r.status_code == 200, r.text
    instance_id = r.json()["details"]["id"]
    assert client.post(f"/api/v1/agent_instance/{instance_id}/start", json={}).status_code == 200
    return str(instance_id)


def span(client: httpx.Client, instance_id: str, **details: Any) -> httpx.Response:
    body = {"agent_instance_id": instance_id, "schema_name": "agent:llm", "status": "active", **details}
    return client.post("/api/v1/agent_spans", json={"details": body})


def rules(srv: DevServer) -> list[str]:
    return [f["rule"] for f in srv.findings()]


def test_a_clean_flow_has_no_findings(client: httpx.Client, srv: DevServer) -> None:
    instance_id = register(client, srv)
    span_id = span(client, instance_id, payload={"model": "m"}).json()["details"]["id"]
    client.post(f"/api/v1/agent_spans/{span_id}/finish", json={"result_payload": {"tokens": 3}})
    client.post(f"/api/v1/agent_instance/{instance_id}/record_quality", json={"name": "score", "payload": {"value": 1}})
    client.post(f"/api/v1/agent_instance/{instance_id}/finish", json={"status": "complete"})
    assert srv.findings() == []


def test_a_payload_breaking_its_registered_schema_is_stored_and_found(client: httpx.Client, srv: DevServer) -> None:
    instance_id = register(client, srv)
    r = span(client, instance_id, payload={"model": 42})
    assert r.status_code == 200, r.text  # whether the real API validates payloads is unknown: accept, as stored
    span_id = r.json()["details"]["id"]
    (finding,) = srv.findings()
    assert finding["rule"] == "schema_violation" and finding["action"] == "agent_spans/create"
    assert "$.model: expected string, got integer" in finding["message"] and finding["span_id"] is None
    client.post(f"/api/v1/agent_spans/{span_id}/finish", json={"result_payload": {"tokens": "many"}})
    r = client.post(
        f"/api/v1/agent_instance/{instance_id}/record_quality", json={"name": "score", "payload": {"value": "x"}}
    )
    assert r.status_code == 200
    assert rules(srv) == ["schema_violation"] * 3
    assert [f["action"] for f in srv.findings()][1:] == ["agent_spans/finish", "agent_instances/record_quality"]


def test_finishing_complete_with_an_open_span_is_found(client: httpx.Client, srv: DevServer) -> None:
    instance_id = register(client, srv)
    span(client, instance_id, payload={"model": "m"})
    r = client.post(f"/api/v1/agent_instance/{instance_id}/finish", json={"status": "complete"})
    assert r.status_code == 200
    (finding,) = srv.findings()
    assert finding["rule"] == "finished_with_open_spans" and finding["agent_instance_id"] == instance_id


def test_incomplete_data_risk_is_found_and_kept(client: httpx.Client, srv: DevServer) -> None:
    llm = {**LLM, "data_risk": {"action_profile": {"read_data": "allowed"}}}
    register(client, srv, span_type_schemas=[llm])
    assert rules(srv) == ["data_risk_incomplete"]
    (version,) = srv.snapshot()["schema_versions"]
    assert version["span_type_schemas"][0]["data_risk"] == {"action_profile": {"read_data": "allowed"}}
    assert version["quality_schemas"][0]["name"] == "score"


def test_unknown_fields_in_bulk_are_dropped_and_found(client: httpx.Client, srv: DevServer) -> None:
    instance_id = register(client, srv)
    item = {
        "_type": "agent_spans/create",
        "idempotency_key": "bulk-unknown-1",
        "details": {"agent_instance_id": instance_id, "schema_name": "agent:llm", "status": "active", "colour": 1},
    }
    r = client.post("/api/v1/bulk", json={"items": [item], "extra": True})
    assert r.status_code == 200 and r.json()["outputs"]["bulk-unknown-1"]["status"] == "success"
    found = {(f["action"], f["field"]) for f in srv.findings() if f["rule"] == "unknown_field"}
    assert found == {("bulk", "extra"), ("agent_spans/create", "details.colour")}


def test_findings_over_http_and_cleared(client: httpx.Client, srv: DevServer) -> None:
    instance_id = register(client, srv)
    span(client, instance_id, payload={"model": 1})
    assert client.get("/_dev/findings").json()["summaries"] == srv.findings() != []
    assert client.get("/_dev/snapshot").json()["findings"] == srv.findings()
    assert client.delete("/_dev/findings").status_code == 200
    assert srv.findings() == []


def test_schema_subset_checker() -> None:
    schema = {
        "type": "object",
        "required": ["a"],
        "properties": {"a": {"type": ["string", "null"]}, "b": {"type": "array", "items": {"enum": [1, 2]}}},
    }
    assert violations({"a": None, "b": [1, 2]}, schema) == []
    assert violations({"b": [3]}, schema) == ["$.a: is required", "$.b[0]: not one of the allowed values"]
    assert violations([], schema) == ["$: expected object, got array"]
    assert violations({"x": True}, {"type": "object", "properties": {"x": {"type": "integer"}}}) == [
        "$.x: expected integer, got boolean"
    ]
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(100):
        node["n"] = {}
        node = node["n"]
    nested_schema: dict[str, Any] = {"type": "object"}
    nested_schema["properties"] = {"n": nested_schema}
    assert violations(deep, nested_schema) == []  # bounded depth, no recursion error
