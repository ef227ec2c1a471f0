"""The dev server's in-memory, thread-safe account state and the API actions that change it.

Everything here is HTTP-free: an action takes its parameters in one canonical form (REST path parameters
become fields, exactly as a bulk item carries them) and returns `(http_status, body)`. That single form is
what makes REST and bulk share idempotency keys, and what the server and the tests both drive.

Strictness is the point: the server rejects what a careful real server could reject (ids outside the
account partition, unregistered span types, illegal state transitions), so an exporter that passes here has no
slack to rely on. Where the real API is documented or inferred to accept something (unknown fields, which
Prefactor drops) or its behaviour is unknown (a payload breaking its registered schema, a run finished
`complete` with open spans, an incomplete `data_risk`), the server answers as the API would and records a
**strict-mode finding** instead (`Store.findings()`, `DevServer.findings()`, `GET /_dev/findings`), for tests to
inspect. docs/local-server.md lists which rule is which.

This module is the dispatch: `Store.execute` (one action, atomically, with idempotent replay) and `Store.bulk`
(`POST /api/v1/bulk`). `Store` is composed of parts, one concept a module, each built here and called through its
few public methods: `Account` (state.py: the records, ids and the lock), `Findings` (findings.py), `Registration`
(registration.py), `RunActions` (instance_actions.py: start/finish/terminate/record_quality), `SpanActions`
(span_actions.py), `Reads` (reads.py: gets, lists, pages, inspection) and `AgentReads` (agents.py); validation.py
and model.py hold the shared checks, errors and records. `Store`'s own methods are its public API, the one the
server, persist.py and the tests use; `account` is its records, for persist.py and the state writer.

Threads: the server's request threads and the test thread call in concurrently; one RLock (`Account.lock`) guards
all state, findings included: `execute` holds it around the idempotency check and the action, the reads take it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from prefactor_otel.devserver.agents import AgentReads
from prefactor_otel.devserver.findings import MAX_FINDINGS, Findings
from prefactor_otel.devserver.instance_actions import RunActions, render_template
from prefactor_otel.devserver.model import (
    BULK_ACTIONS,
    CREATE_SPAN,
    FINISH_INSTANCE,
    FINISH_SPAN,
    FINISH_STATUSES,
    KNOWN_UNSERVED_BULK_TYPES,
    PURPOSES,
    RECORD_QUALITY,
    REGISTER,
    SPAN_STATUSES,
    START,
    TERMINAL_INSTANCE,
    TERMINATE,
    _KeyRecord,
)
from prefactor_otel.devserver.reads import MAX_PAGE_SIZE, Reads
from prefactor_otel.devserver.registration import Registration
from prefactor_otel.devserver.span_actions import SpanActions
from prefactor_otel.devserver.state import Account
from prefactor_otel.devserver.validation import (
    IDEMPOTENCY_KEY_MAX,
    IDEMPOTENCY_KEY_MIN,
    ApiError,
    JsonDict,
    Outcome,
    error_body,
    fingerprint,
    validate_idempotency_key,
)

# The names the server and older callers import from here (the store was one module before).
__all__ = [
    "BULK_ACTIONS",
    "CREATE_SPAN",
    "FINISH_INSTANCE",
    "FINISH_SPAN",
    "FINISH_STATUSES",
    "IDEMPOTENCY_KEY_MAX",
    "IDEMPOTENCY_KEY_MIN",
    "KNOWN_UNSERVED_BULK_TYPES",
    "MAX_FINDINGS",
    "MAX_PAGE_SIZE",
    "PURPOSES",
    "RECORD_QUALITY",
    "REGISTER",
    "SPAN_STATUSES",
    "START",
    "TERMINAL_INSTANCE",
    "TERMINATE",
    "ApiError",
    "JsonDict",
    "Outcome",
    "Store",
    "error_body",
    "fingerprint",
    "render_template",
    "validate_idempotency_key",
]


class Store:
    """One account (seeded agent and environment) and everything registered under it."""

    def __init__(
        self,
        *,
        account_id: str,
        agent_id: str,
        environment_id: str,
        partition: int,
        bulk_actions: frozenset[str] | None = None,
        agent_deployment_id: str | None = None,
    ) -> None:
        # A subset of BULK_ACTIONS emulates a server whose bulk endpoint lacks some `_type`s (the inferred
        # `agent_instances/start|finish`), so the exporter's REST fallback can be tested.
        self.bulk_actions = BULK_ACTIONS if bulk_actions is None else frozenset(bulk_actions) & BULK_ACTIONS
        self.account = Account(
            account_id=account_id,
            agent_id=agent_id,
            environment_id=environment_id,
            partition=partition,
            agent_deployment_id=agent_deployment_id,
        )
        self._findings = Findings(self.account)
        self._reads = Reads(self.account, self._findings)
        self._agents = AgentReads(self.account)
        registration = self.registration = Registration(self.account, self._findings)
        runs = RunActions(self.account, self._findings)
        spans = SpanActions(self.account, self._findings)
        self._actions: dict[str, Callable[[JsonDict], JsonDict]] = {
            REGISTER: registration.register,
            START: runs.start,
            FINISH_INSTANCE: runs.finish,
            TERMINATE: runs.terminate,
            CREATE_SPAN: spans.create,
            FINISH_SPAN: spans.finish,
            RECORD_QUALITY: runs.record_quality,
        }

    # ------------------------------------------------------------------ the account

    @property
    def account_id(self) -> str:
        return self.account.account_id

    @property
    def agent_id(self) -> str:
        return self.account.agent_id

    @property
    def environment_id(self) -> str:
        return self.account.environment_id

    @property
    def partition(self) -> int:
        return self.account.partition

    @property
    def agent_deployment_id(self) -> str:
        return self.account.agent_deployment_id

    @property
    def revision(self) -> int:
        """Bumped by every committed change, findings included; read it under `account.lock` to pair it with a
        dump (state_file.py)."""
        return self.account.revision

    def new_id(self, at_us: int | None = None) -> str:
        return self.account.new_id(at_us)

    # ------------------------------------------------------------------ actions

    def execute(self, action: str, params: JsonDict, idempotency_key: str | None = None) -> Outcome:
        """Run one action atomically, with idempotent replay. Only successes are remembered under their key:
        a rejected request committed nothing, so the same key may be used again once it is fixed."""
        handler = self._actions.get(action)
        if handler is None:
            return 404, error_body("not_found", f"unknown action {action}")
        try:
            params, idempotency_key = self._normalise(action, params, idempotency_key)
        except ApiError as exc:
            return exc.status, exc.body()
        digest = fingerprint(action, params) if idempotency_key is not None else b""
        with self.account.lock, self._findings.context(action):
            if idempotency_key is not None:
                record = self.account.keys.get(idempotency_key)
                if record is not None:
                    if record.fingerprint == digest:
                        return record.status, record.body
                    return 409, error_body(
                        "idempotency_key_already_used",
                        "idempotency key already used for a different request",
                        {"idempotency_key": ["already used for a different request"]},
                    )
            try:
                body = handler(params)
            except ApiError as exc:
                return exc.status, exc.body()
            if idempotency_key is not None:
                self.account.keys[idempotency_key] = _KeyRecord(digest, 200, body)
            self.account.revision += 1
            return 200, body

    @staticmethod
    def _normalise(action: str, params: JsonDict, key: str | None) -> tuple[JsonDict, str | None]:
        # Python SDKs put a span create's key inside `details`, TS beside it: accept both, agree or fail.
        if action != CREATE_SPAN:
            return params, key
        if "details" not in params and params:
            # The flat bulk form prefactor-http's BulkClient docstring shows (`agent_spans/create` with the
            # span's fields beside `_type`) is the same create: the fields are the details.
            params = {"details": params}
        details = params.get("details")
        if not isinstance(details, dict) or "idempotency_key" not in details:
            return params, key
        inner = details["idempotency_key"]
        details = {k: v for k, v in details.items() if k != "idempotency_key"}
        params = {**params, "details": details}
        if inner is None:
            return params, key
        inner = validate_idempotency_key(inner, "details.idempotency_key")
        if key is not None and inner != key:
            raise ApiError(
                422,
                "validation_errors",
                "details.idempotency_key differs from idempotency_key",
                {"details.idempotency_key": ["differs from idempotency_key"]},
            )
        return params, inner

    def bulk(self, body: object) -> tuple[int, JsonDict, int | None]:
        """`POST /api/v1/bulk`: returns (status, body, item count or None)."""
        if not isinstance(body, dict):
            return 422, error_body("validation_errors", "body must be a JSON object", {"body": ["not an object"]}), None
        items = body.get("items")
        count = len(items) if isinstance(items, list) else None
        with self.account.lock:
            self._findings.begin("bulk")
            for name in sorted(set(body) - {"items"}):
                self._findings.find("unknown_field", f"unknown field {name} (dropped)", name)
        if not isinstance(items, list) or not items:
            return 422, error_body("validation_errors", "items must be a non-empty list", {"items": ["empty"]}), count
        item_errors: dict[str, dict[str, list[str]]] = {}
        seen: set[str] = set()
        for index, item in enumerate(items):
            problems: dict[str, list[str]] = {}
            if not isinstance(item, dict):
                item_errors[str(index)] = {"item": ["must be an object"]}
                continue
            if not isinstance(item.get("_type"), str) or not item["_type"]:
                problems["_type"] = ["is required and must be a string"]
            key = item.get("idempotency_key")
            if not isinstance(key, str) or not IDEMPOTENCY_KEY_MIN <= len(key) <= IDEMPOTENCY_KEY_MAX:
                problems["idempotency_key"] = [
                    f"is required, a string of {IDEMPOTENCY_KEY_MIN}-{IDEMPOTENCY_KEY_MAX} characters"
                ]
            elif key in seen:
                problems["idempotency_key"] = ["must be unique within the request"]
            else:
                seen.add(key)
            if problems:
                item_errors[str(index)] = problems
        if item_errors:
            first = next(iter(item_errors))
            message = f"invalid item {first}: " + "; ".join(
                f"{name} {msgs[0]}" for name, msgs in item_errors[first].items()
            )
            return 422, error_body("validation_errors", message, {"items": item_errors}), count

        outputs: dict[str, JsonDict] = {}
        for item in items:
            kind, key = item["_type"], item["idempotency_key"]
            if kind not in self.bulk_actions:
                if kind in KNOWN_UNSERVED_BULK_TYPES:
                    outputs[key] = error_body("not_implemented", f"_type {kind} is not served by the dev server")
                else:
                    outputs[key] = error_body("invalid_action", f"unknown _type {kind}")
                break
            # `method`/`path` are what the TS CLI adds to items; the server dispatches on `_type` only.
            params = {k: v for k, v in item.items() if k not in ("_type", "idempotency_key", "method", "path")}
            status, out = self.execute(kind, params, key)
            outputs[key] = out
            if status >= 400:
                break
        return 200, {"status": "success", "outputs": outputs}, count

    # ------------------------------------------------------------------ findings

    def findings(self) -> list[JsonDict]:
        """Strict-mode findings so far, oldest first: what a stricter server would have refused (see the module
        docstring). Copies."""
        return self._findings.read()

    def clear_findings(self) -> None:
        self._findings.clear()

    # ------------------------------------------------------------------ reads (reads.py, agents.py)

    def get_instance(self, instance_id: str) -> Outcome:
        return self._reads.get_instance(instance_id)

    def get_span(self, span_id: str) -> Outcome:
        return self._reads.get_span(span_id)

    def list_instances(self, query: Mapping[str, str]) -> Outcome:
        return self._reads.list_instances(query)

    def list_spans(self, query: Mapping[str, str]) -> Outcome:
        return self._reads.list_spans(query)

    def generate_pfids(self, body: object) -> Outcome:
        return self._reads.generate_pfids(body)

    def instances(self) -> list[JsonDict]:
        return self._reads.instances()

    def spans(self, instance_id: str | None = None) -> list[JsonDict]:
        return self._reads.spans(instance_id)

    def snapshot(self) -> JsonDict:
        return self._reads.snapshot()

    def counts(self) -> tuple[int, int]:
        """(instances, spans) without copying anything: cheap enough to poll."""
        return self._reads.counts()

    def get_agent(self, agent_id: str) -> Outcome:
        return self._agents.get_agent(agent_id)

    def show_agent(self, query: Mapping[str, str]) -> Outcome:
        return self._agents.show_agent(query)

    def list_agents(self, query: Mapping[str, str]) -> Outcome:
        return self._agents.list_agents(query)

    def get_environment(self, environment_id: str) -> Outcome:
        return self._agents.get_environment(environment_id)

    # ------------------------------------------------------------------ persistence (persist.py)

    def restore_findings(self, entries: list[JsonDict]) -> None:
        """Replace the findings with saved ones (persist.py, loading a store nobody else sees yet)."""
        self._findings.restore(entries)

    def saved_findings(self) -> list[JsonDict]:
        """The findings as persist.py dumps them: a new list of the entries; call it under `account.lock`."""
        return self._findings.entries()
