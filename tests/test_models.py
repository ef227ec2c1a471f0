"""The API models: what the exporter sends fits the request models; answers are parsed strictly."""

import pytest
from pydantic import ValidationError

from prefactor_otel.mapping import agent_schema_version, agent_version_from_resource, map_span
from prefactor_otel.model import http as models
from prefactor_otel.pipeline.planner import Planner
from tests.spans import agent_trace, make_provider

REQUEST_MODEL = {
    models.BULK_REGISTER: models.RegisterAgentInstanceRequest,
    models.BULK_START: models.StartInstanceRequest,
    models.BULK_FINISH_INSTANCE: models.FinishInstanceRequest,
    models.BULK_CREATE_SPAN: models.CreateAgentSpanRequest,
}
PATH_PARAMS = {"agent_instance_id", "agent_span_id"}


def test_every_planned_item_fits_its_request_model():
    provider, collector = make_provider()
    agent_trace(provider)
    planner = Planner(
        partition=3,
        agent_key="a",
        agent_id=models_agent_id(),
        environment_id=None,
        purpose="eval",
        agent_version_for=lambda r: agent_version_from_resource(r, sdk_version="0").model_dump(exclude_none=True),
        schema_version=agent_schema_version(),
        finish_grace_seconds=0,
    )
    planner.add([map_span(s) for s in collector.spans], 0.0)
    items = planner.plan(0.0)
    assert {i.action for i in items} == set(REQUEST_MODEL)
    request = models.BulkRequest.model_validate({"items": [i.body for i in items]})
    assert len(request.items) == len(items)
    for item in items:
        fields = {k: v for k, v in item.body.items() if k not in ("_type", *PATH_PARAMS)}
        REQUEST_MODEL[item.action].model_validate(fields)  # extra="forbid": a typo fails here


def models_agent_id() -> str:
    from prefactor_otel.model.ids import encode

    return encode(1_700_000_000_000, 3, 1)


def test_bulk_request_rules():
    with pytest.raises(ValidationError):
        models.BulkRequest.model_validate({"items": []})
    dup = {"_type": "t", "idempotency_key": "12345678"}
    with pytest.raises(ValidationError):
        models.BulkRequest.model_validate({"items": [dup, dup]})
    with pytest.raises(ValidationError):
        models.BulkItem.model_validate({"_type": "t", "idempotency_key": "short"})
    with pytest.raises(ValidationError):
        models.BulkItem.model_validate({"_type": "t", "idempotency_key": "x" * 65})
    item = models.BulkItem.model_validate({"_type": "agents/list", "idempotency_key": "12345678", "extra": 1})
    assert item.to_wire() == {"_type": "agents/list", "idempotency_key": "12345678", "extra": 1}


def test_bulk_response_parsing():
    ok = models.BulkResponse.model_validate_json(
        '{"status":"success","outputs":{"k":{"status":"success","details":{"id":"x"}},'
        '"e":{"status":"error","code":"not_found","message":"nope"}}}'
    )
    assert ok.outputs["k"].is_success and ok.outputs["e"].code == "not_found"
    for bad in ('{"outputs": []}', '{"outputs":{"k":{"status":"weird"}}}', "<html>", '{"status":"success"}'):
        with pytest.raises(ValidationError):
            models.BulkResponse.model_validate_json(bad)


def test_response_models_tolerate_newer_fields_and_terminated():
    instance = {
        "type": "agent_instance",
        "id": "i",
        "account_id": "a",
        "agent_id": "g",
        "agent_version_id": "v",
        "environment_id": "e",
        "status": "terminated",
        "inserted_at": "2026-01-01T00:00:00Z",
        "updated_at": "2026-01-01T00:00:00.123+00:00",
        "risk_score": 3,
        "span_counts": {"total": 1, "active": 0, "complete": 1, "failed": 0, "cancelled": 0, "finished": 1},
    }
    parsed = models.ApiResponse[models.AgentInstance].model_validate({"status": "success", "details": instance})
    assert parsed.details.status == "terminated" and parsed.details.span_counts.pending == 0
    with pytest.raises(ValidationError):
        models.AgentInstance.model_validate({**instance, "status": "exploded"})
