"""The dev server's state as plain JSON, so `prefactor-otel serve` can keep it across restarts.

`dump(store, token)` turns everything a client may reference again into one versioned dict
(`{"format": 1, ...}`): the token, the account/agent/environment/deployment ids and partition, agent and schema
versions, runs, spans, idempotency keys (with the exact answer each one replays) and findings. `load(data)` builds
a `Store` holding the same, or raises `StateFormatError` saying what is wrong. Writing the dict to disk (atomic,
locked, periodic) is state_file.py's job; the store's action modules know nothing of either.

Threads: `dump` takes the store's RLock (`store.account.lock`) only for a shallow copy, so it sees one consistent
state and request threads wait for microseconds per run, not for the encoding: every container the store changes in
place (the dicts of runs, spans and keys, a run's counts, span ids and quality maps) is copied; the dicts inside
them are shared, which is safe because the store never mutates those (a span change, a finish or a termination,
builds a new `_Span` with a new `data` dict: the same rule that lets an idempotent answer share a span's dict,
model.py). `as_text` then turns the copy into JSON text outside the lock. `load` builds a store nobody else sees.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, NamedTuple

from prefactor_otel.devserver.model import _Instance, _KeyRecord, _SchemaVersion, _Span
from prefactor_otel.devserver.store import Store
from prefactor_otel.devserver.validation import JsonDict
from prefactor_otel.model import ids

FORMAT = 1


class StateFormatError(ValueError):
    """The data is not a state this version can load (not ours, another format, or damaged)."""


class Loaded(NamedTuple):
    token: str
    store: Store


def as_text(dumped: JsonDict) -> str:
    """`dump`'s dict as compact JSON text; call it without the store's lock (see the module docstring)."""
    return json.dumps(dumped, separators=(",", ":"), ensure_ascii=False)


def dump(store: Store, token: str) -> JsonDict:
    """Everything a client may reference again, as one JSON-ready dict (`load` reverses it)."""
    account = store.account
    with account.lock:
        schema_ids = {id(version): version.data["id"] for version in account.schema_versions.values()}
        return {
            "format": FORMAT,
            "token": token,
            "account": {
                "account_id": store.account_id,
                "agent_id": store.agent_id,
                "environment_id": store.environment_id,
                "agent_deployment_id": store.agent_deployment_id,
                "partition": store.partition,
                "created_us": account.created_us,
            },
            # The keys are the canonical content the versions are interned by (registration.py).
            "agent_versions": [{"key": key, "data": data} for key, data in account.agent_versions.items()],
            "schema_versions": [{"key": key, "data": v.data} for key, v in account.schema_versions.items()],
            "instances": [_dump_instance(i, schema_ids[id(i.schema_version)]) for i in account.instances.values()],
            "spans": [_fields_of(span) for span in account.spans.values()],
            "idempotency_keys": [
                {"key": key, "fingerprint": record.fingerprint.hex(), "status": record.status, "body": record.body}
                for key, record in account.keys.items()
            ],
            "findings": store.saved_findings(),
        }


def _fields_of(span: _Span) -> JsonDict:
    # Not dataclasses.asdict: that deep-copies every payload, under the lock; the span's dicts are never mutated.
    return {spec.name: getattr(span, spec.name) for spec in dataclasses.fields(_Span)}


def _dump_instance(instance: _Instance, schema_version_id: str) -> JsonDict:
    # Every field, so a field added to _Instance is kept without touching this module; only the two that are
    # not JSON change form (the schema version becomes its id, the set a sorted list).
    out: JsonDict = {}
    for spec in dataclasses.fields(_Instance):
        value = getattr(instance, spec.name)
        if spec.name == "schema_version":
            out["schema_version_id"] = schema_version_id
        elif isinstance(value, set):
            out[spec.name] = sorted(value)
        elif isinstance(value, (dict, list)):
            out[spec.name] = type(value)(value)  # changed in place by the actions: copied while locked
        else:
            out[spec.name] = value
    return out


def load(data: object) -> Loaded:
    """A store (and the token) from `dump`'s dict. Raises `StateFormatError` naming what is wrong."""
    if not isinstance(data, dict) or "format" not in data or "account" not in data:
        raise StateFormatError("not a prefactor-otel local server state (no format/account fields)")
    if data["format"] != FORMAT:
        raise StateFormatError(f"state format {data['format']!r}; this prefactor-otel reads format {FORMAT} only")
    try:
        return _load(data)
    except StateFormatError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise StateFormatError(f"damaged state ({type(exc).__name__}: {exc})") from None


def _load(data: dict[str, Any]) -> Loaded:
    token = data["token"]
    if not isinstance(token, str) or not token.strip() or token != token.strip():
        raise StateFormatError("damaged state (token is not a non-empty string)")
    account = data["account"]
    partition = int(account["partition"])
    for name in ("account_id", "agent_id", "environment_id", "agent_deployment_id"):
        value = account[name]
        if not ids.is_pfid(value) or ids.extract_partition(value) != partition:
            raise StateFormatError(f"damaged state ({name} is not a PFID in partition {partition})")
    store = Store(
        account_id=account["account_id"],
        agent_id=account["agent_id"],
        environment_id=account["environment_id"],
        partition=partition,
        agent_deployment_id=account["agent_deployment_id"],
    )
    records = store.account
    with records.lock:
        records.created_us = int(account["created_us"])
        records.agent_versions = {entry["key"]: dict(entry["data"]) for entry in data["agent_versions"]}
        by_id: dict[str, _SchemaVersion] = {}
        for entry in data["schema_versions"]:
            version = _schema_version(entry["data"])
            records.schema_versions[entry["key"]] = version
            by_id[version.data["id"]] = version
        for row in data["instances"]:
            instance = _load_instance(row, by_id)
            records.instances[instance.id] = instance
            if instance.external_identifier is not None:
                records.external_ids[instance.external_identifier] = instance.id
        for row in data["spans"]:
            span = _Span(**row)
            records.spans[span.data["id"]] = span
        for row in data["idempotency_keys"]:
            record = _KeyRecord(bytes.fromhex(row["fingerprint"]), int(row["status"]), row["body"])
            records.keys[row["key"]] = record
        store.restore_findings(list(data["findings"]))
    return Loaded(token, store)


def _schema_version(data: JsonDict) -> _SchemaVersion:
    # titles/quality/span_types are views of the entries registration.py stored in `data`: rebuilt, not stored.
    entries = data["span_type_schemas"]
    quality = data["quality_schemas"]
    return _SchemaVersion(
        data=data,
        titles={e["name"]: e["title"] for e in entries},
        quality={q["name"]: q for q in quality},
        span_types={e["name"]: e for e in entries},
    )


def _load_instance(row: JsonDict, schema_versions: dict[str, _SchemaVersion]) -> _Instance:
    fields = dict(row)
    schema_version_id = fields.pop("schema_version_id")
    if schema_version_id not in schema_versions:
        raise StateFormatError(f"damaged state (run {fields.get('id')} names an unknown schema version)")
    fields["schema_version"] = schema_versions[schema_version_id]
    fields["closed_by_termination"] = set(fields.get("closed_by_termination", ()))
    known = {spec.name for spec in dataclasses.fields(_Instance)}
    unknown = set(fields) - known
    if unknown:
        raise StateFormatError(f"damaged state (unknown run fields {', '.join(sorted(unknown))})")
    return _Instance(**fields)
