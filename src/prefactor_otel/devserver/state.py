"""The dev server's account records: what one account holds, its ids, and how a run renders.

`Account` is the data every part of a `Store` (store.py) works on: the seeded ids, the runs, spans, agent and schema
versions, external identifiers and idempotency keys, and the revision a state writer watches. It has no API action
of its own; the parts that do hold it (registration.py, instance_actions.py, span_actions.py, reads.py, agents.py,
and findings.py for its lock and revision), and persist.py dumps and restores its tables.
Threads: the server's request threads and the test thread call in concurrently; one RLock (`lock`) guards every
table here and `revision`, and the findings (findings.py) share it. The methods that read tables (`instance_for`,
`render_instance`, `control`) expect the caller to hold `lock` (the actions run under it); the ids are set once.
"""

from __future__ import annotations

import re
import secrets
import threading

from prefactor_otel.devserver.model import _Instance, _KeyRecord, _SchemaVersion, _Span
from prefactor_otel.devserver.timefmt import format_timestamp, now_us
from prefactor_otel.devserver.validation import ApiError, JsonDict, _copy, _invalid
from prefactor_otel.model import ids

# Same language as ids.is_pfid (first character carries 3 bits); the tests hold the two together.
_PFID_RE = re.compile(r"^[0-7][0-9abcdefghjkmnpqrstvwxyz]{31}$")


class Account:
    """One account's records (seeded agent and environment, runs, spans, keys, versions), guarded by `lock`."""

    def __init__(
        self,
        *,
        account_id: str,
        agent_id: str,
        environment_id: str,
        partition: int,
        agent_deployment_id: str | None = None,
    ) -> None:
        self.account_id = account_id
        self.agent_id = agent_id
        self.environment_id = environment_id
        self.partition = partition
        self._partition_chars = ids.encode(0, partition, 0)[10:16]
        # The seeded agent deployed into the seeded environment: prefactor-http 0.4.3 requires its id on every
        # agent instance (AgentInstance.agent_deployment_id) and fails to parse an answer without it.
        self.agent_deployment_id = agent_deployment_id or self.new_id()
        self.created_us = now_us()
        self.lock = threading.RLock()
        self.instances: dict[str, _Instance] = {}
        self.spans: dict[str, _Span] = {}
        self.keys: dict[str, _KeyRecord] = {}  # idempotency key -> the answer it replays
        self.agent_versions: dict[str, JsonDict] = {}  # content fingerprint -> version
        self.schema_versions: dict[str, _SchemaVersion] = {}  # content fingerprint -> version
        self.external_ids: dict[str, str] = {}  # instance external_identifier -> instance id
        # Bumped (under `lock`) by every committed change, findings included: a state writer saves when it moved.
        self.revision = 0

    # ------------------------------------------------------------------ ids

    def new_id(self, at_us: int | None = None) -> str:
        millis = (now_us() if at_us is None else at_us) // 1000
        return ids.encode(max(0, min(millis, ids.MAX_TIMESTAMP)), self.partition, secrets.randbits(80))

    def check_id(self, name: str, value: object) -> str:
        """`value` if it is a canonical PFID in this account's partition; else the API's 422."""
        # Fast path, hot in bulk: a canonical PFID's partition is exactly its characters 10-15, so a
        # regex match plus one slice comparison equals is_pfid() + extract_partition() without decoding.
        if isinstance(value, str) and _PFID_RE.match(value) and value[10:16] == self._partition_chars:
            return value
        if not ids.is_pfid(value):
            raise _invalid(name, "must be a canonical PFID (32 lowercase Crockford base32 characters)")
        assert isinstance(value, str)
        if ids.extract_partition(value) != self.partition:
            raise _invalid(name, "is not in this account's PFID partition")
        return value

    # ------------------------------------------------------------------ runs (caller holds `lock`)

    def instance_for(self, params: JsonDict, name: str = "agent_instance_id") -> _Instance:
        instance_id = self.check_id(name, params.get(name))
        instance = self.instances.get(instance_id)
        if instance is None:
            raise ApiError(404, "not_found", "agent instance not found")
        return instance

    def render_instance(self, instance: _Instance) -> JsonDict:
        counts = instance.counts
        finished = counts["complete"] + counts["failed"] + counts["cancelled"]
        return {
            "type": "agent_instance",
            "id": instance.id,
            "account_id": self.account_id,
            "agent_id": self.agent_id,
            "agent_version_id": instance.agent_version_id,
            "agent_schema_version_id": instance.schema_version.data["id"],
            "environment_id": instance.environment_id,
            "agent_deployment_id": self.agent_deployment_id,
            "status": instance.status,
            "inserted_at": format_timestamp(instance.inserted_us),
            "updated_at": format_timestamp(instance.updated_us),
            "started_at": format_timestamp(instance.started_us),
            "finished_at": format_timestamp(instance.finished_us),
            "span_counts": {"total": sum(counts.values()), **counts, "finished": finished},
            "external_identifier": instance.external_identifier,
            "purpose": instance.purpose,
            "termination_reason": instance.termination_reason,
            "quality_payloads": _copy(instance.quality_payloads),
            "quality_summaries": dict(instance.quality_summaries),
        }

    @staticmethod
    def control(instance: _Instance) -> JsonDict | None:
        """The `control` a span answer in this run carries, if any (a terminated run says so)."""
        if instance.status == "terminated":
            return {"terminate": True, "reason": instance.termination_reason}
        return None
