"""`agent_instances/register`: validating and interning agent versions and schema versions, creating the run.

`Registration` is a part of the `Store` (store.py): it holds the account's records (`Account`, state.py), whose
runs, versions and external identifiers it changes, and the findings (findings.py) its checks report to.
Threads: `register` runs inside `Store.execute`, on a request thread or the test thread, with the account's RLock
(`Account.lock`) held; it guards the instances, versions and external identifiers this changes, and `_latest`.

`agent_schema_version` is required (422 without it), as prefactor-http's `RegisterAgentInstanceRequest` requires
it: docs/local-server.md. With `accept_known_schema` (DevServer(register_without_schema=True)), a register without
it is accepted once the agent has a schema version, and the run gets the agent's latest one (what the newer
TypeScript client's types allow): the exporter's schema-once saving can then be tested (docs/wire.md).
"""

from __future__ import annotations

import copy
from typing import Any

from prefactor_otel.devserver.findings import Findings
from prefactor_otel.devserver.model import PURPOSES, _Instance, _SchemaVersion
from prefactor_otel.devserver.state import Account
from prefactor_otel.devserver.timefmt import format_timestamp, now_us
from prefactor_otel.devserver.validation import (
    ApiError,
    JsonDict,
    _canonical,
    _check_fields,
    _drop_nones,
    _invalid,
    _opt_obj,
    _opt_str,
)


class Registration:
    """The register action and the version bookkeeping behind it."""

    def __init__(self, account: Account, findings: Findings) -> None:
        self._account = account
        self._findings = findings
        self.accept_known_schema = False  # set once, before the server serves (DevServer)
        self._latest: _SchemaVersion | None = None  # the schema version the last register used

    def _known_schema(self) -> _SchemaVersion | None:
        """The agent's latest schema version (a restored store's last one until a register names one)."""
        if self._latest is not None:
            return self._latest
        return next(reversed(self._account.schema_versions.values()), None)

    def register(self, params: JsonDict) -> JsonDict:
        known = self._known_schema() if self.accept_known_schema else None
        _check_fields(
            params,
            (
                "agent_id",
                "environment_id",
                "agent_version",
                "agent_schema_version",
                "id",
                "external_identifier",
                "update_current_version",
                "purpose",
            ),
            required=("agent_version",) if known is not None else ("agent_version", "agent_schema_version"),
        )
        agent_id = params.get("agent_id")
        if agent_id is not None and self._account.check_id("agent_id", agent_id) != self._account.agent_id:
            raise ApiError(404, "not_found", "agent not found")
        environment_id = params.get("environment_id")
        if environment_id is None:
            environment_id = self._account.environment_id
        elif self._account.check_id("environment_id", environment_id) != self._account.environment_id:
            raise ApiError(404, "not_found", "environment not found")
        instance_id = params.get("id")
        if instance_id is not None:
            self._account.check_id("id", instance_id)
        purpose = params.get("purpose") or "live"
        if purpose not in PURPOSES:
            raise _invalid("purpose", f"must be one of {', '.join(PURPOSES)}")
        if params.get("update_current_version") is not None and not isinstance(params["update_current_version"], bool):
            raise _invalid("update_current_version", "must be a boolean")
        external_identifier = _opt_str(params, "external_identifier")
        version = self._validate_agent_version(params.get("agent_version"))
        schema = (
            None
            if params.get("agent_schema_version") is None
            else self._validate_schema_version(params.get("agent_schema_version"))
        )

        if instance_id is not None and instance_id in self._account.instances:
            raise ApiError(409, "invalid_value", "id already exists", {"id": ["already exists"]})
        if external_identifier is not None and external_identifier in self._account.external_ids:
            raise ApiError(
                409,
                "invalid_value",
                "external_identifier already used by another instance of this agent",
                {"external_identifier": ["already used"]},
            )

        now = now_us()
        version_id = self._intern_agent_version(version, now)
        if schema is not None:
            schema_version = self._intern_schema_version(schema, now)
        else:
            assert known is not None  # checked above
            schema_version = known
        self._latest = schema_version
        instance = _Instance(
            id=instance_id or self._account.new_id(now),
            agent_version_id=version_id,
            schema_version=schema_version,
            environment_id=environment_id,
            external_identifier=external_identifier,
            purpose=purpose,
            inserted_us=now,
            updated_us=now,
        )
        self._account.instances[instance.id] = instance
        if external_identifier is not None:
            self._account.external_ids[external_identifier] = instance.id
        return {"status": "success", "details": self._account.render_instance(instance)}

    def _validate_agent_version(self, value: object) -> JsonDict:
        if not isinstance(value, dict):
            raise _invalid("agent_version", "must be a JSON object")
        _check_fields(
            value, ("name", "external_identifier", "description", "runtime_environment"), where="agent_version."
        )
        for name in ("name", "external_identifier", "description"):
            _opt_str(value, name, "agent_version.")
        runtime = _opt_obj(value, "runtime_environment", "agent_version.")
        if runtime is not None:
            where = "agent_version.runtime_environment."
            _check_fields(runtime, ("os", "runtime", "prefactor_sdk", "agent_sdk"), where=where)
            for name in ("os", "runtime"):
                _opt_str(runtime, name, where)
            for name in ("prefactor_sdk", "agent_sdk"):
                entries = runtime.get(name)
                if entries is not None and (
                    not isinstance(entries, list) or not all(isinstance(e, str) for e in entries)
                ):
                    raise _invalid(where + name, "must be a list of strings")
        return value

    def _validate_schema_version(self, value: object) -> JsonDict:
        where = "agent_schema_version."
        if not isinstance(value, dict):
            raise _invalid("agent_schema_version", "must be a JSON object")
        _check_fields(
            value,
            ("external_identifier", "span_type_schemas", "span_schemas", "span_result_schemas", "quality_schemas"),
            where=where,
        )
        _opt_str(value, "external_identifier", where)
        for name in ("span_schemas", "span_result_schemas"):
            legacy = _opt_obj(value, name, where)
            if legacy is not None and not all(isinstance(v, dict) for v in legacy.values()):
                raise _invalid(where + name, "must map span type names to JSON schema objects")
        self._validate_quality_schemas(value.get("quality_schemas"), where + "quality_schemas")
        types = value.get("span_type_schemas")
        if types is None:
            return value
        texts = ("title", "description", "template", "result_template")
        fields = ("name", "params_schema", "result_schema", *texts, "data_risk")
        for at, entry in self._named_entries(types, where + "span_type_schemas", fields, "params_schema", "span type"):
            _opt_obj(entry, "result_schema", at)
            _opt_obj(entry, "data_risk", at)
            self._findings.check_data_risk(entry, at)
            for text in texts:
                _opt_str(entry, text, at)
        return value

    def _validate_quality_schemas(self, value: object, where: str) -> None:
        if value is None:
            return
        texts = ("title", "description", "template")
        fields = ("name", "schema", *texts, "data_risk")
        for at, entry in self._named_entries(value, where, fields, "schema", "quality schema"):
            _opt_obj(entry, "data_risk", at)
            self._findings.check_data_risk(entry, at)
            for text in texts:
                _opt_str(entry, text, at)

    @staticmethod
    def _named_entries(
        value: object, where: str, fields: tuple[str, ...], schema_field: str, kind: str
    ) -> list[tuple[str, dict[str, Any]]]:
        """A list of objects with a unique non-empty `name` and a JSON-object `schema_field`, checked;
        `(path prefix, entry)` for each, for the checks that differ."""
        if not isinstance(value, list):
            raise _invalid(where, "must be a list")
        names: set[str] = set()
        entries = []
        for index, entry in enumerate(value):
            at = f"{where}.{index}."
            if not isinstance(entry, dict):
                raise _invalid(at[:-1], "must be a JSON object")
            _check_fields(entry, fields, required=("name", schema_field), where=at)
            name = entry["name"]
            if not isinstance(name, str) or not name:
                raise _invalid(at + "name", "must be a non-empty string")
            if name in names:
                raise _invalid(at + "name", f"duplicates {kind} {name!r}")
            names.add(name)
            if not isinstance(entry[schema_field], dict):
                raise _invalid(at + schema_field, "must be a JSON object")
            entries.append((at, entry))
        return entries

    def _intern_agent_version(self, version: JsonDict, now: int) -> str:
        key = _canonical(_drop_nones(version))
        existing = self._account.agent_versions.get(key)
        if existing is not None:
            return str(existing["id"])
        data = {
            "type": "agent_version",
            "id": self._account.new_id(now),
            "account_id": self._account.account_id,
            "agent_id": self._account.agent_id,
            "name": version.get("name"),
            "external_identifier": version.get("external_identifier"),
            "description": version.get("description"),
            "runtime_environment": copy.deepcopy(version.get("runtime_environment")),
            "inserted_at": format_timestamp(now),
        }
        self._account.agent_versions[key] = data
        return str(data["id"])

    def _intern_schema_version(self, schema: JsonDict, now: int) -> _SchemaVersion:
        key = _canonical(_drop_nones(schema))
        existing = self._account.schema_versions.get(key)
        if existing is not None:
            return existing
        if schema.get("span_type_schemas") is not None:
            entries = [
                {
                    "name": e["name"],
                    "params_schema": e["params_schema"],
                    "result_schema": e.get("result_schema") or {},
                    "title": e.get("title") or e["name"],
                    "description": e.get("description"),
                    "template": e.get("template"),
                    "data_risk": e.get("data_risk"),
                }
                for e in schema["span_type_schemas"]
            ]
        else:
            # Legacy maps: only used when span_type_schemas is absent, as the real backend does.
            results = schema.get("span_result_schemas") or {}
            entries = [
                {
                    "name": name,
                    "params_schema": params_schema,
                    "result_schema": results.get(name, {}),
                    "title": name,
                    "description": None,
                    "template": None,
                    "data_risk": None,
                }
                for name, params_schema in (schema.get("span_schemas") or {}).items()
            ]
        quality = [
            {
                "name": q["name"],
                "schema": q["schema"],
                "title": q.get("title") or q["name"],
                "description": q.get("description"),
                "template": q.get("template"),
                "data_risk": q.get("data_risk"),
            }
            for q in schema.get("quality_schemas") or []
        ]
        data = {
            "type": "agent_schema_version",
            "id": self._account.new_id(now),
            "account_id": self._account.account_id,
            "agent_id": self._account.agent_id,
            "external_identifier": schema.get("external_identifier"),
            "span_type_schemas": copy.deepcopy(entries),
            "quality_schemas": copy.deepcopy(quality),
            "inserted_at": format_timestamp(now),
        }
        version = _SchemaVersion(
            data=data,
            titles={e["name"]: e["title"] for e in entries},
            quality={q["name"]: q for q in quality},
            span_types={e["name"]: e for e in entries},
        )
        self._account.schema_versions[key] = version
        return version
