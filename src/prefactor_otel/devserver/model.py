"""The dev server's vocabulary (action names, statuses) and the records the store keeps.

Plain data: the records are created and changed only by store actions, under the account's one RLock
(`Account.lock`, state.py); nothing here locks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prefactor_otel.devserver.validation import JsonDict

REGISTER = "agent_instances/register"
START = "agent_instances/start"
FINISH_INSTANCE = "agent_instances/finish"
TERMINATE = "agent_instances/terminate"
RECORD_QUALITY = "agent_instances/record_quality"
CREATE_SPAN = "agent_spans/create"
FINISH_SPAN = "agent_spans/finish"

# What `POST /api/v1/bulk` executes. Terminate is REST-only: nothing shows it exists in bulk.
BULK_ACTIONS = frozenset({REGISTER, START, FINISH_INSTANCE, CREATE_SPAN, FINISH_SPAN, RECORD_QUALITY})
# Real Prefactor bulk types we do not serve: answered `not_implemented` rather than `invalid_action`,
# so a test can tell "the dev server lacks it" from "no such thing".
KNOWN_UNSERVED_BULK_TYPES = frozenset(
    {
        "agents/list",
        "agents/show",
        "agents/create",
        "agents/update",
        "environments/list",
        "environments/show",
        "environments/create",
        "environments/update",
        "agent_instances/list",
        "agent_instances/show",
        "agent_spans/list",
    }
)

SPAN_STATUSES = ("pending", "active", "complete", "failed", "cancelled")
FINISH_STATUSES = ("complete", "failed", "cancelled")
TERMINAL_INSTANCE = frozenset({"complete", "failed", "cancelled", "terminated"})
PURPOSES = ("live", "smoke_test", "eval")


@dataclass
class _KeyRecord:
    fingerprint: bytes
    status: int
    body: JsonDict


@dataclass
class _SchemaVersion:
    data: JsonDict
    titles: dict[str, str]
    quality: dict[str, JsonDict] = field(default_factory=dict)  # quality schema name -> its entry
    span_types: dict[str, JsonDict] = field(default_factory=dict)  # span type name -> its entry


@dataclass
class _Instance:
    id: str
    agent_version_id: str
    schema_version: _SchemaVersion
    environment_id: str
    external_identifier: str | None
    purpose: str
    inserted_us: int
    status: str = "pending"
    updated_us: int = 0
    started_us: int | None = None
    finished_us: int | None = None
    termination_reason: str | None = None
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPAN_STATUSES, 0))
    span_ids: list[str] = field(default_factory=list)
    quality_payloads: dict[str, JsonDict] = field(default_factory=dict)
    quality_summaries: dict[str, str] = field(default_factory=dict)
    # Spans the run's termination closed: a later finish of one answers success with `control`, not a conflict.
    closed_by_termination: set[str] = field(default_factory=set)


@dataclass
class _Span:
    # `data` is the API dict and is never mutated: a change builds a new dict, so a stored idempotent
    # response can share the old one and still replay exactly what was first answered.
    data: JsonDict
    instance_id: str
    status: str
    started_us: int | None
    finished_us: int | None
