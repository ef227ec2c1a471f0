"""The dev server's bulk endpoint and idempotency rules, over real HTTP."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from prefactor_otel.devserver import DevServer
from prefactor_otel.model import http as models

T0 = "2024-01-01T00:00:00.000Z"
T1 = "2024-01-01T00:00:01.000Z"
T2 = "2024-01-01T00:00:02.000Z"


def register_item(srv: DevServer, key: str, instance_id: str) -> dict[str, Any]:
    return {
        "_type": "agent_instances/register",
        "idempotency_key": key,
        "agent_id": srv.agent_id,
        "environment_id": srv.environment_id,
        "id": instance_id,
        "agent_version": {"name": "bulk-agent", "external_identifier": "1.0"},
        "agent_schema_version": {
            "external_identifier": "s1",
            "span_type_schemas": [{"name": "otel:span", "params_schema": {"type": "object"}}],
        },
        "purpose": "live",
        "update_current_version": True,
    }


def start_item(key: str, instance_id: str) -> dict[str, Any]:
    return {"_type": "agent_instances/start", "idempotency_key": key, "agent_instance_id": instance_id, "timestamp": T0}


def finish_item(key: str, instance_id: str, status: str = "complete") -> dict[str, Any]:
    return {
        "_type": "agent_instances/finish",
        "idempotency_key": key,
        "agent_instance_id": instance_id,
        "status": status,
        "timestamp": T2,
    }


def span_item(key: str, instance_id: str, span_id: str, parent: str | None = None, **extra: Any) -> dict[str, Any]:
    details = {
        "agent_instance_id": instance_id,
        "schema_name": "otel:span",
        "status": "complete",
        "payload": {"name": key},
        "result_payload": {"outputs": None},
        "id": span_id,
        "parent_span_id": parent,
        "started_at": T0,
        "finished_at": T1,
        **extra,
    }
    return {"_type": "agent_spans/create", "idempotency_key": key, "details": details}


def bulk(client: httpx.Client, items: list[dict[str, Any]]) -> dict[str, Any]:
    r = client.post("/api/v1/bulk", json={"items": items})
    assert r.status_code == 200, r.text
    body = models.BulkResponse.model_validate(r.json())
    assert body.status == "success"
    return r.json()["outputs"]


def started_instance(client: httpx.Client, srv: DevServer) -> str:
    instance_id = srv.new_id()
    outputs = bulk(client, [register_item(srv, "reg-00000001", instance_id), start_item("start-0000001", instance_id)])
    assert all(o["status"] == "success" for o in outputs.values())
    return instance_id


def test_bulk_runs_all_five_types_in_order(client: httpx.Client, srv: DevServer) -> None:
    instance_id, parent, child, open_span = srv.new_id(), srv.new_id(), srv.new_id(), srv.new_id()
    items = [
        register_item(srv, "k-register", instance_id),
        start_item("k-start-01", instance_id),
        span_item("k-parent-1", instance_id, parent),
        span_item("k-child-01", instance_id, child, parent=parent),
        span_item("k-open-001", instance_id, open_span, status="active", finished_at=None, result_payload=None),
        {
            "_type": "agent_spans/finish",
            "idempotency_key": "k-finish-span",
            "agent_span_id": open_span,
            "status": "complete",
            "result_payload": {"outputs": 1},
            "timestamp": T2,
        },
        finish_item("k-finish-01", instance_id),
    ]
    outputs = bulk(client, items)
    assert list(outputs) == [item["idempotency_key"] for item in items]
    assert all(o["status"] == "success" for o in outputs.values())
    assert outputs["k-register"]["details"]["id"] == instance_id
    assert outputs["k-child-01"]["details"]["parent_span_id"] == parent
    assert outputs["k-finish-span"]["details"]["status"] == "complete"
    assert outputs["k-finish-01"]["details"]["status"] == "complete"
    assert srv.instances()[0]["span_counts"]["complete"] == 3


def test_bulk_stops_at_the_first_error(client: httpx.Client, srv: DevServer) -> None:
    instance_id = started_instance(client, srv)
    good, bad, after = srv.new_id(), srv.new_id(), srv.new_id()
    items = [
        span_item("item-good-1", instance_id, good),
        span_item("item-bad-01", instance_id, bad, parent=srv.new_id()),  # parent does not exist
        span_item("item-after1", instance_id, after),
    ]
    outputs = bulk(client, items)
    assert outputs["item-good-1"]["status"] == "success"
    assert outputs["item-bad-01"]["status"] == "error" and outputs["item-bad-01"]["code"] == "not_found"
    assert "item-after1" not in outputs
    assert [s["id"] for s in srv.spans()] == [good]


def test_child_before_parent_in_one_request_fails_at_the_child(client: httpx.Client, srv: DevServer) -> None:
    instance_id = started_instance(client, srv)
    parent, child = srv.new_id(), srv.new_id()
    outputs = bulk(
        client,
        [span_item("child-key-1", instance_id, child, parent=parent), span_item("parent-key1", instance_id, parent)],
    )
    assert outputs["child-key-1"]["code"] == "not_found" and "parent-key1" not in outputs


@pytest.mark.parametrize(
    ("kind", "code"), [("agents/list", "not_implemented"), ("agent_instances/explode", "invalid_action")]
)
def test_unknown_type_errors_that_item_and_stops(client: httpx.Client, srv: DevServer, kind: str, code: str) -> None:
    instance_id = srv.new_id()
    items = [
        {"_type": kind, "idempotency_key": "unknown-type-1"},
        register_item(srv, "reg-after-unknown", instance_id),
    ]
    outputs = bulk(client, items)
    assert outputs == {"unknown-type-1": outputs["unknown-type-1"]}
    assert outputs["unknown-type-1"]["status"] == "error" and outputs["unknown-type-1"]["code"] == code
    assert srv.instances() == []


@pytest.mark.parametrize(
    "body",
    [
        [],
        {"items": []},
        {"items": "nope"},
        {},
        {"items": [{"idempotency_key": "no-type-key"}]},
        {"items": [{"_type": "agent_instances/start", "idempotency_key": "short"}]},
        {"items": [{"_type": "agent_instances/start", "idempotency_key": "k" * 65}]},
        {"items": [{"_type": "agent_instances/start"}]},
        {"items": ["not an object"]},
        {"items": [{"_type": "agent_instances/start", "idempotency_key": 12345678}]},
    ],
)
def test_bulk_request_validation(client: httpx.Client, srv: DevServer, body: Any) -> None:
    r = client.post("/api/v1/bulk", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["status"] == "error" and r.json()["code"] == "validation_errors"
    assert "errors" in r.json()


def test_duplicate_keys_reject_the_whole_request_before_processing(client: httpx.Client, srv: DevServer) -> None:
    first, second = srv.new_id(), srv.new_id()
    r = client.post(
        "/api/v1/bulk",
        json={"items": [register_item(srv, "same-key-01", first), register_item(srv, "same-key-01", second)]},
    )
    assert r.status_code == 422 and r.json()["code"] == "validation_errors"
    assert srv.instances() == []


def test_bulk_item_ids_are_checked(client: httpx.Client, srv: DevServer) -> None:
    outputs = bulk(client, [register_item(srv, "bad-id-key-1", "0123")])
    assert outputs["bad-id-key-1"]["code"] == "invalid_value"


# --------------------------------------------------------------------------- idempotency


def test_same_key_same_content_replays_without_duplicating(client: httpx.Client, srv: DevServer) -> None:
    instance_id = started_instance(client, srv)
    item = span_item("replay-key-01", instance_id, srv.new_id())
    first = bulk(client, [item])
    again = bulk(client, [item])
    assert again == first
    assert len(srv.spans()) == 1


def test_replay_returns_the_original_response_after_state_moved_on(client: httpx.Client, srv: DevServer) -> None:
    instance_id = srv.new_id()
    reg = register_item(srv, "reg-moved-on", instance_id)
    original = bulk(client, [reg])["reg-moved-on"]
    assert original["details"]["status"] == "pending"
    bulk(client, [start_item("start-moved", instance_id), finish_item("finish-moved", instance_id)])
    replayed = bulk(client, [reg, start_item("start-moved", instance_id)])
    assert replayed["reg-moved-on"] == original
    assert replayed["start-moved"]["details"]["status"] == "active"
    assert srv.instances()[0]["status"] == "complete" and len(srv.instances()) == 1


def test_same_key_different_content_is_rejected(client: httpx.Client, srv: DevServer) -> None:
    instance_id = started_instance(client, srv)
    bulk(client, [span_item("conflict-key", instance_id, srv.new_id())])
    outputs = bulk(
        client,
        [span_item("conflict-key", instance_id, srv.new_id()), span_item("later-key1", instance_id, srv.new_id())],
    )
    assert outputs["conflict-key"]["code"] == "idempotency_key_already_used"
    assert "later-key1" not in outputs
    r = client.post(f"/api/v1/agent_instance/{instance_id}/finish", json={"idempotency_key": "conflict-key"})
    assert r.status_code == 409 and r.json()["code"] == "idempotency_key_already_used"
    assert len(srv.spans()) == 1 and srv.instances()[0]["status"] == "active"


def test_keys_are_shared_between_rest_and_bulk(client: httpx.Client, srv: DevServer) -> None:
    instance_id = started_instance(client, srv)
    item = span_item("shared-key-1", instance_id, srv.new_id())
    rest = client.post("/api/v1/agent_spans", json={"details": item["details"], "idempotency_key": "shared-key-1"})
    assert rest.status_code == 200
    outputs = bulk(client, [item])
    assert outputs["shared-key-1"] == rest.json()
    r = client.post(
        f"/api/v1/agent_instance/{instance_id}/start", json={"timestamp": T0, "idempotency_key": "start-0000001"}
    )
    assert r.status_code == 200 and r.json()["details"]["status"] == "active"  # replay of the bulk start
    assert len(srv.spans()) == 1


def test_explicit_nulls_equal_omitted_fields_for_replay(client: httpx.Client, srv: DevServer) -> None:
    instance_id = srv.new_id()
    reg = register_item(srv, "reg-null-eq", instance_id)
    bulk(client, [reg])
    r = client.post(
        f"/api/v1/agent_instance/{instance_id}/start", json={"timestamp": None, "idempotency_key": "start-null"}
    )
    assert r.status_code == 200
    r2 = client.post(f"/api/v1/agent_instance/{instance_id}/start", json={"idempotency_key": "start-null"})
    assert r2.status_code == 200 and r2.json() == r.json()


def test_rejected_request_does_not_burn_its_key(client: httpx.Client, srv: DevServer) -> None:
    instance_id = started_instance(client, srv)
    parent, child = srv.new_id(), srv.new_id()
    outputs = bulk(client, [span_item("child-wait-1", instance_id, child, parent=parent)])
    assert outputs["child-wait-1"]["code"] == "not_found"
    outputs = bulk(
        client,
        [span_item("parent-key-1", instance_id, parent), span_item("child-wait-1", instance_id, child, parent=parent)],
    )
    assert outputs["child-wait-1"]["status"] == "success"


def test_rest_idempotency_key_header_is_honoured(client: httpx.Client, srv: DevServer) -> None:
    instance_id = started_instance(client, srv)
    body = {"details": span_item("unused-key", instance_id, srv.new_id())["details"]}
    headers = {"Idempotency-Key": "header-key-01"}
    first = client.post("/api/v1/agent_spans", json=body, headers=headers)
    second = client.post("/api/v1/agent_spans", json=body, headers=headers)
    assert first.status_code == second.status_code == 200 and first.json() == second.json()
    assert len(srv.spans()) == 1
    r = client.post("/api/v1/agent_spans", json={**body, "idempotency_key": "short"})
    assert r.status_code == 422 and r.json()["code"] == "validation_errors"


def test_request_log_counts_bulk_items(client: httpx.Client, srv: DevServer) -> None:
    instance_id = started_instance(client, srv)
    bulk(client, [span_item(f"count-key-{i}", instance_id, srv.new_id()) for i in range(3)])
    log = [entry for entry in srv.requests if entry.path == "/api/v1/bulk"]
    assert [entry.item_count for entry in log] == [2, 3]
    assert all(entry.status == 200 and entry.method == "POST" and entry.request_bytes > 100 for entry in log)
