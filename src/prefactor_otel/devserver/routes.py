"""The routes of a `DevServer`: which store call or `/_dev` test endpoint a request's method and path mean.

`route` maps `/api/v1/...` onto the store (`_rest` turns a REST call into the store's canonical action form, with its
idempotency key) and `/_dev/...` onto the test API of the server (the same store's snapshot, runs and findings, and
its fault set); it is given the two parts it needs, answers (status, JSON body) and knows nothing of HTTP: reading,
auth, faults and sending are the request handler's (handler.py), which calls `route` once the request is
authenticated and its body parsed.
Threads: the request threads, concurrently; these functions hold no state and take no lock of their own: the store
takes its own RLock, the fault set its own lock.
"""

from __future__ import annotations

from typing import Any

from prefactor_otel.devserver import store as st
from prefactor_otel.devserver.faults import Fault, FaultSet
from prefactor_otel.devserver.store import ApiError, JsonDict, Store, error_body

API = "/api/v1"


def route(
    store: Store,
    faults: FaultSet,
    method: str,
    path: str,
    query: dict[str, str],
    body: Any,
    header_key: str | None,
) -> tuple[int, JsonDict]:
    """One authenticated request to `store` (and, under `/_dev`, to `faults`), its body already parsed:
    `header_key` is its Idempotency-Key header, if any."""
    if path.startswith("/_dev/"):
        return _route_dev(store, faults, method, path, body)
    if not path.startswith(API + "/"):
        return 404, error_body("not_found", "no such endpoint")
    parts = path[len(API) + 1 :].split("/")

    def not_allowed() -> tuple[int, JsonDict]:
        return 405, error_body("bad_request", f"method {method} not allowed on {path}")

    head = parts[0]
    if head == "ping" and len(parts) == 1:
        return (200, {"status": "success", "details": {"token_type": "api"}}) if method == "GET" else not_allowed()
    if head == "bulk" and len(parts) == 1:
        if method != "POST":
            return not_allowed()
        status, out, _ = store.bulk(body)
        return status, out
    if head == "pfid" and parts[1:] == ["generate"]:
        return store.generate_pfids(body) if method == "POST" else not_allowed()
    if head == "agent_instance":
        if len(parts) == 1:
            return store.list_instances(query) if method == "GET" else not_allowed()
        if parts[1:] == ["register"]:
            return _rest(store, st.REGISTER, body, {}, header_key) if method == "POST" else not_allowed()
        if len(parts) == 2:
            return store.get_instance(parts[1]) if method == "GET" else not_allowed()
        if len(parts) == 3 and parts[2] in _INSTANCE_ACTIONS:
            if method != "POST":
                return not_allowed()
            action = _INSTANCE_ACTIONS[parts[2]]
            return _rest(store, action, body, {"agent_instance_id": parts[1]}, header_key)
    if head == "agent":
        return _route_agent(store, method, parts[1:], query)
    if head == "environment" and len(parts) == 2:
        return store.get_environment(parts[1]) if method == "GET" else not_allowed()
    if head == "agent_spans":
        if len(parts) == 1:
            if method == "GET":
                return store.list_spans(query)
            if method == "POST":
                return _rest(store, st.CREATE_SPAN, body, {}, header_key)
            return not_allowed()
        if len(parts) == 2:
            return store.get_span(parts[1]) if method == "GET" else not_allowed()
        if len(parts) == 3 and parts[2] == "finish":
            if method != "POST":
                return not_allowed()
            return _rest(store, st.FINISH_SPAN, body, {"agent_span_id": parts[1]}, header_key)
    return 404, error_body("not_found", "no such endpoint")


def _route_dev(store: Store, faults: FaultSet, method: str, path: str, body: Any) -> tuple[int, JsonDict]:
    if path == "/_dev/snapshot" and method == "GET":
        return 200, store.snapshot()
    if path == "/_dev/runs" and method == "GET":
        from prefactor_otel.devserver.runview import run_views  # here: keeps this branch the whole change

        return 200, {"runs": run_views(store.snapshot())}
    if path == "/_dev/findings":
        if method == "GET":
            return 200, {"status": "success", "summaries": store.findings()}
        if method == "DELETE":
            store.clear_findings()
            return 200, {"status": "success"}
    if path == "/_dev/terminate" and method == "POST":
        # What an operator does in Prefactor's UI (an account-token action no SDK calls), for scripts and
        # demos: `{"agent_instance_id": ..., "reason": ...}`.
        if not isinstance(body, dict):
            return 400, error_body("bad_request", "body must be a JSON object")
        return store.execute(st.TERMINATE, body)
    if path == "/_dev/faults":
        if method == "GET":
            return 200, {"status": "success", "summaries": [f.to_dict() for f in faults.list()]}
        if method == "POST":
            try:
                fault = Fault.from_dict(body)
            except (TypeError, ValueError) as exc:
                return 422, error_body("invalid_value", str(exc))
            faults.add(fault)
            return 200, {"status": "success", "details": fault.to_dict()}
        if method == "DELETE":
            faults.clear()
            return 200, {"status": "success"}
    return 404, error_body("not_found", "no such dev endpoint")


_INSTANCE_ACTIONS = {
    "start": st.START,
    "finish": st.FINISH_INSTANCE,
    "terminate": st.TERMINATE,
    "record_quality": st.RECORD_QUALITY,
}


def _route_agent(store: Store, method: str, rest: list[str], query: dict[str, str]) -> tuple[int, JsonDict]:
    """`/api/v1/agent…`: the reads prefactor-http's AgentClient offers. Its writes (create, update, retire,
    reinstate, delete) answer 501 `not_implemented`, distinguishable from "no such endpoint" and "not found"."""
    if method == "GET":
        if not rest:
            return store.list_agents(query)
        if rest == ["show"]:
            return store.show_agent(query)
        if len(rest) == 1:
            return store.get_agent(rest[0])
        return 404, error_body("not_found", "no such endpoint")
    if (method == "POST" and (not rest or (len(rest) == 2 and rest[1] in ("retire", "reinstate")))) or (
        method in ("PUT", "DELETE") and len(rest) == 1
    ):
        return 501, error_body("not_implemented", "the dev server serves agents read-only (the seeded agent)")
    return 405, error_body("bad_request", f"method {method} not allowed")


def _rest(
    store: Store, action: str, body: Any, path_params: dict[str, str], header_key: str | None
) -> tuple[int, JsonDict]:
    """A REST call in the canonical action form: path parameters become fields, the key comes out."""
    if not isinstance(body, dict):
        return 400, error_body("bad_request", "body must be a JSON object")
    params = dict(body)
    try:
        key = params.pop("idempotency_key", None)
        if key is None:
            key = header_key
        elif header_key is not None and header_key != key:
            raise ApiError(
                422,
                "validation_errors",
                "Idempotency-Key header differs from the body's idempotency_key",
                {"idempotency_key": ["differs from the Idempotency-Key header"]},
            )
        if key is not None:
            st.validate_idempotency_key(key)
        for name, value in path_params.items():
            if name in params:
                raise ApiError(422, "validation_errors", f"unknown field {name}", {name: ["unknown field"]})
            params[name] = value
    except ApiError as exc:
        return exc.status, exc.body()
    return store.execute(action, params, key)
