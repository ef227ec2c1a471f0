"""Pydantic v2 models of the Prefactor HTTP API.

The response models mirror `prefactor_http.models` 0.4.3 (tests/test_conformance_models.py compares the field
sets, so drift is caught) and tolerate fields they do not know (the live API adds some), so a newer server is not
a contract error. Fields the official models require but older servers lacked (`agent_deployment_id`) are
optional here: the exporter reads none of them.
The request models describe exactly what this exporter sends; they forbid unknown fields so a typo in our own
code fails in tests, not on the wire.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator
from typing_extensions import NotRequired, TypedDict  # pydantic needs these on Python < 3.12

SpanStatus = Literal["pending", "active", "complete", "failed", "cancelled"]
# `terminated` is server-set (external termination); the seed predates it but live responses carry it.
InstanceStatus = Literal["pending", "active", "complete", "failed", "cancelled", "terminated"]
FinishStatus = Literal["complete", "failed", "cancelled"]
InstancePurpose = Literal["live", "smoke_test", "eval"]

IdempotencyKey = Annotated[str, Field(min_length=8, max_length=64)]

T = TypeVar("T")


class _Response(BaseModel):
    model_config = ConfigDict(extra="allow")


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --------------------------------------------------------------------------- responses


class AgentInstanceSpanCounts(_Response):
    # Defaults as in prefactor-http 0.4.3. The 0.4.3 wheel dropped `pending`; the docs still list it.
    total: int = 0
    pending: int = 0
    active: int = 0
    complete: int = 0
    failed: int = 0
    cancelled: int = 0
    finished: int = 0


class AgentInstance(_Response):
    type: Literal["agent_instance"]
    id: str
    account_id: str
    agent_id: str
    agent_version_id: str
    environment_id: str
    status: InstanceStatus
    inserted_at: datetime
    updated_at: datetime
    # Required by prefactor-http 0.4.3; optional here so an answer from an older server still parses.
    agent_deployment_id: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    termination_reason: str | None = None
    external_identifier: str | None = None
    span_counts: AgentInstanceSpanCounts | None = None
    purpose: InstancePurpose | None = None
    quality_payloads: dict[str, dict[str, Any]] | None = None
    quality_summaries: dict[str, str] | None = None


class AgentSpan(_Response):
    type: Literal["agent_span"]
    id: str
    account_id: str | None = None
    agent_id: str | None = None
    agent_instance_id: str
    parent_span_id: str | None = None
    schema_name: str
    schema_title: str | None = None
    status: SpanStatus
    payload: dict[str, Any] = Field(default_factory=dict)
    result_payload: dict[str, Any] | None = None
    summary: str | None = None
    started_at: datetime | None = None
    inserted_at: datetime | None = None
    updated_at: datetime | None = None
    finished_at: datetime | None = None


class ApiResponse(_Response, Generic[T]):
    status: str
    details: T


class ApiError(_Response):
    status: Literal["error"]
    code: str
    message: str = ""
    errors: dict[str, Any] | None = None


class BulkOutput(_Response):
    """One item's outcome: `success` plus the operation's response fields, or `error` with code and message."""

    # The seed validates this with a Python field validator; a Literal is the same rule checked in Rust, which
    # matters here: a response carries up to 500 of these.
    status: Literal["success", "error"]

    @property
    def is_success(self) -> bool:
        return self.status == "success"

    @property
    def code(self) -> str | None:
        return (self.model_extra or {}).get("code")

    @property
    def message(self) -> str | None:
        return (self.model_extra or {}).get("message")


class BulkResponse(_Response):
    status: str = "success"
    outputs: dict[str, BulkOutput]


class BulkOutputFields(TypedDict):
    """What the exporter reads of a BulkOutput, as a TypedDict: the same rules, validated about 2.5x faster
    than the model (a response carries up to 500 outputs, on the export hot path). Other fields are ignored."""

    status: Literal["success", "error"]
    code: NotRequired[Any]
    message: NotRequired[Any]
    control: NotRequired[Any]  # `{"terminate": true, "reason": ...}` when Prefactor terminated the item's run


class BulkResponseFields(TypedDict):
    outputs: dict[str, BulkOutputFields]


BULK_RESPONSE_FIELDS: TypeAdapter[BulkResponseFields] = TypeAdapter(BulkResponseFields)


class PfidGenerateDetails(_Response):
    pfids: list[str]


# --------------------------------------------------------------------------- requests


class SpanTypeSchemaForCreate(_Request):
    name: str
    params_schema: dict[str, Any]
    result_schema: dict[str, Any] | None = None
    title: str | None = None
    description: str | None = None
    template: str | None = None
    # prefactor-http's DataRisk (action_profile, params/result_data_categories); kept as a plain object here.
    data_risk: dict[str, Any] | None = None


class QualitySchemaForCreate(_Request):
    """A named schema for `record_quality` payloads (prefactor-http's QualitySchemaForCreate)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str
    schema_: dict[str, Any] = Field(alias="schema")
    title: str | None = None
    description: str | None = None
    template: str | None = None
    data_risk: dict[str, Any] | None = None


class AgentSchemaVersionForRegister(_Request):
    external_identifier: str | None = None
    span_schemas: dict[str, dict[str, Any]] | None = None
    span_result_schemas: dict[str, dict[str, Any]] | None = None
    span_type_schemas: list[SpanTypeSchemaForCreate] | None = None
    quality_schemas: list[QualitySchemaForCreate] | None = None


class RuntimeEnvironment(_Request):
    os: str | None = None
    runtime: str | None = None
    prefactor_sdk: list[str] | None = None
    agent_sdk: list[str] | None = None


class AgentVersionForRegister(_Request):
    name: str | None = None
    external_identifier: str | None = None
    description: str | None = None
    runtime_environment: RuntimeEnvironment | None = None


class RegisterAgentInstanceRequest(_Request):
    agent_id: str | None = None
    environment_id: str | None = None
    agent_version: AgentVersionForRegister
    agent_schema_version: AgentSchemaVersionForRegister
    id: str | None = None
    external_identifier: str | None = None
    update_current_version: bool | None = None
    purpose: InstancePurpose | None = None
    idempotency_key: IdempotencyKey | None = None


class StartInstanceRequest(_Request):
    timestamp: str | None = None
    idempotency_key: IdempotencyKey | None = None


class FinishInstanceRequest(_Request):
    status: FinishStatus | None = None
    timestamp: str | None = None
    idempotency_key: IdempotencyKey | None = None


class AgentSpanDetailsForCreate(_Request):
    agent_instance_id: str
    schema_name: str
    status: SpanStatus
    payload: dict[str, Any]
    result_payload: dict[str, Any] | None = None
    id: str | None = None
    parent_span_id: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    # prefactor-http sends its key here; this exporter sends it beside `details` (both are accepted).
    idempotency_key: IdempotencyKey | None = None


class CreateAgentSpanRequest(_Request):
    details: AgentSpanDetailsForCreate
    idempotency_key: IdempotencyKey | None = None


class FinishSpanRequest(_Request):
    status: FinishStatus | None = None
    result_payload: dict[str, Any] | None = None
    timestamp: str | None = None
    idempotency_key: IdempotencyKey | None = None


class AgentInstanceRecordQuality(_Request):
    """`POST /agent_instance/{id}/record_quality`: set (or, with a null payload, clear) one named payload."""

    name: str
    payload: dict[str, Any] | None = None
    idempotency_key: IdempotencyKey | None = None


class PfidGenerateRequest(_Request):
    count: int = Field(ge=1, le=1000)
    account_id: str | None = None


class BulkItem(BaseModel):
    """One bulk action: `_type`, a per-request-unique idempotency key, and the action's own fields."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    type: str = Field(alias="_type")
    idempotency_key: IdempotencyKey

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True)


class BulkRequest(BaseModel):
    items: Annotated[list[BulkItem], Field(min_length=1)]

    @model_validator(mode="after")
    def _unique_keys(self) -> BulkRequest:
        keys = [item.idempotency_key for item in self.items]
        if len(keys) != len(set(keys)):
            raise ValueError("idempotency keys must be unique within a bulk request")
        return self


# The five bulk `_type`s this exporter sends. `agent_instances/start|finish` are inferred from the REST names
# (no public source shows them in a bulk request); every one of them can also be sent as its REST call.
BULK_REGISTER = "agent_instances/register"
BULK_START = "agent_instances/start"
BULK_FINISH_INSTANCE = "agent_instances/finish"
BULK_CREATE_SPAN = "agent_spans/create"
BULK_FINISH_SPAN = "agent_spans/finish"
BULK_TYPES = (BULK_REGISTER, BULK_START, BULK_FINISH_INSTANCE, BULK_CREATE_SPAN, BULK_FINISH_SPAN)
