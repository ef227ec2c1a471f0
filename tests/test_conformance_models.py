"""Our API models and the dev server's answers against Prefactor's official Python models (prefactor-http).

Field sets are compared by wire name, both ways, so a field the official client gains (or we invent) fails here
instead of surfacing as a contract error against the real API. Deliberate differences are listed with a reason.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from prefactor_http.models import agent_instance as official_instance
from prefactor_http.models import agent_span as official_span
from prefactor_http.models import base as official_base
from prefactor_http.models import bulk as official_bulk
from pydantic import BaseModel

from prefactor_otel.devserver import DevServer
from prefactor_otel.model import http as models

# (ours, official, fields only ours has, fields only the official model has), each difference with its reason.
PAIRS: list[tuple[type[BaseModel], type[BaseModel], set[str], set[str]]] = [
    (models.AgentInstance, official_instance.AgentInstance, set(), set()),
    # `pending` is in the API documentation; the 0.4.3 wheel dropped it. We accept both.
    (models.AgentInstanceSpanCounts, official_instance.AgentInstanceSpanCounts, {"pending"}, set()),
    (models.AgentSpan, official_span.AgentSpan, set(), set()),
    (models.RegisterAgentInstanceRequest, official_instance.RegisterAgentInstanceRequest, set(), set()),
    (models.AgentVersionForRegister, official_instance.AgentVersionForRegister, set(), set()),
    (models.RuntimeEnvironment, official_instance.RuntimeEnvironment, set(), set()),
    (models.AgentSchemaVersionForRegister, official_instance.AgentSchemaVersionForRegister, set(), set()),
    (models.SpanTypeSchemaForCreate, official_instance.SpanTypeSchemaForCreate, set(), set()),
    (models.QualitySchemaForCreate, official_instance.QualitySchemaForCreate, set(), set()),
    # The official request model has no key; its endpoint adds `idempotency_key` to the body it sends.
    (models.AgentInstanceRecordQuality, official_instance.AgentInstanceRecordQuality, {"idempotency_key"}, set()),
    (models.StartInstanceRequest, official_instance.TimestampRequest, set(), set()),
    (models.FinishInstanceRequest, official_instance.FinishInstanceRequest, set(), set()),
    (models.FinishSpanRequest, official_span.FinishSpanRequest, set(), set()),
    # The official model is the `details` object of a span create.
    (models.AgentSpanDetailsForCreate, official_span.CreateAgentSpanRequest, set(), set()),
    (models.BulkItem, official_bulk.BulkItem, set(), set()),
    (models.BulkRequest, official_bulk.BulkRequest, set(), set()),
    (models.BulkResponse, official_bulk.BulkResponse, set(), set()),
    (models.BulkOutput, official_bulk.BulkOutput, set(), set()),
    (models.ApiResponse, official_base.ApiResponse, set(), set()),
    # Ours is the official DetailedApiError's field set (errors optional), used for every error answer.
    (models.ApiError, official_base.DetailedApiError, set(), set()),
]


def wire_names(model: type[BaseModel]) -> set[str]:
    return {info.alias or name for name, info in model.model_fields.items()}


@pytest.mark.parametrize("ours, official, only_ours, only_official", PAIRS, ids=[p[0].__name__ for p in PAIRS])
def test_our_models_have_the_official_field_sets(
    ours: type[BaseModel], official: type[BaseModel], only_ours: set[str], only_official: set[str]
) -> None:
    assert wire_names(ours) - wire_names(official) == only_ours
    assert wire_names(official) - wire_names(ours) == only_official


RESPONSE_MODELS = (models.AgentInstance, models.AgentInstanceSpanCounts, models.AgentSpan, models.BulkResponse)


def test_our_response_models_are_never_stricter_than_the_official_ones() -> None:
    # Ours may be more lenient on answers (older servers), never stricter than the official client. (Request
    # models may be stricter: they describe what this exporter sends.)
    for ours, official, _, _ in PAIRS:
        if ours not in RESPONSE_MODELS:
            continue
        official_required = {info.alias or n for n, info in official.model_fields.items() if info.is_required()}
        ours_required = {info.alias or n for n, info in ours.model_fields.items() if info.is_required()}
        assert ours_required <= official_required | {"idempotency_key"}, ours.__name__


def _register(client: httpx.Client, srv: DevServer) -> dict[str, Any]:
    body = {
        "agent_id": srv.agent_id,
        "agent_version": {"name": "a"},
        "agent_schema_version": {"span_type_schemas": [{"name": "t", "params_schema": {"type": "object"}}]},
    }
    answer = client.post("/api/v1/agent_instance/register", json=body)
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_dev_server_instances_parse_with_the_official_model_and_name_the_deployment() -> None:
    with DevServer() as srv, httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {srv.token}"}) as c:
        answer = _register(c, srv)
        parsed = official_base.ApiResponse[official_instance.AgentInstance].model_validate(answer)
        assert parsed.details.agent_deployment_id == srv.agent_deployment_id
        assert parsed.details.quality_payloads == {} and parsed.details.quality_summaries == {}
        ours = models.ApiResponse[models.AgentInstance].model_validate(answer)
        assert ours.details.agent_deployment_id == srv.agent_deployment_id
        # Every field the dev server renders is one the official model knows: the server invents nothing.
        invented = set(answer["details"]) - wire_names(official_instance.AgentInstance)
        assert invented == {"agent_schema_version_id"}
