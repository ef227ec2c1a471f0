"""Span writes: `agent_spans/create` and `agent_spans/finish`, with the span state machine and `control` answers.

`SpanActions` is a part of the `Store` (store.py): it holds the account's records (`Account`, state.py), whose
spans and per-run span counts it changes, and the findings (findings.py) its schema checks report to.
Threads: each action runs inside `Store.execute`, on a request thread or the test thread, with the account's RLock
(`Account.lock`) held; it guards the spans and the per-instance span counts these change.
"""

from __future__ import annotations

from prefactor_otel.devserver.findings import Findings
from prefactor_otel.devserver.model import FINISH_STATUSES, SPAN_STATUSES, _Instance, _Span
from prefactor_otel.devserver.state import Account
from prefactor_otel.devserver.timefmt import format_timestamp, now_us
from prefactor_otel.devserver.validation import ApiError, JsonDict, _check_fields, _invalid, _opt_obj, _opt_time


class SpanActions:
    """Creating spans and finishing them."""

    def __init__(self, account: Account, findings: Findings) -> None:
        self._account = account
        self._findings = findings

    def create(self, params: JsonDict) -> JsonDict:
        _check_fields(params, ("details",), required=("details",))
        details = params["details"]
        if not isinstance(details, dict):
            raise _invalid("details", "must be a JSON object")
        _check_fields(
            details,
            (
                "agent_instance_id",
                "schema_name",
                "status",
                "payload",
                "result_payload",
                "id",
                "parent_span_id",
                "started_at",
                "finished_at",
                "sensitive_encoding",
            ),
            # `payload` defaults to {} as in prefactor-http's CreateAgentSpanRequest (the flat bulk form omits it).
            required=("agent_instance_id", "schema_name", "status"),
            where="details.",
        )
        instance_id = self._account.check_id("agent_instance_id", details["agent_instance_id"])
        span_id = details.get("id")
        if span_id is not None:
            self._account.check_id("id", span_id)
        parent_id = details.get("parent_span_id")
        if parent_id is not None:
            self._account.check_id("parent_span_id", parent_id)
        schema_name = details["schema_name"]
        if not isinstance(schema_name, str) or not schema_name:
            raise _invalid("schema_name", "must be a non-empty string")
        status = details["status"]
        if status not in SPAN_STATUSES:
            raise _invalid("status", f"must be one of {', '.join(SPAN_STATUSES)}")
        payload = details.get("payload", {})
        if not isinstance(payload, dict):
            raise _invalid("payload", "must be a JSON object")
        result_payload = _opt_obj(details, "result_payload")
        if result_payload is not None and status not in FINISH_STATUSES:
            raise _invalid("result_payload", "is only allowed when status is complete, failed or cancelled")
        sensitive = details.get("sensitive_encoding")
        if sensitive is not None and not isinstance(sensitive, bool):
            raise _invalid("sensitive_encoding", "must be a boolean")
        started = _opt_time(details, "started_at")
        finished = _opt_time(details, "finished_at")
        now = now_us()
        if status in ("complete", "failed"):
            if finished is None:
                raise _invalid("finished_at", f"is required when status is {status}")
            if started is None:
                started = finished
        elif status == "cancelled":
            finished = now if finished is None else finished
            started = finished if started is None else started
        elif finished is not None:
            raise _invalid("finished_at", f"must be empty while the span is {status}")
        elif status == "pending" and started is not None:
            raise _invalid("started_at", "must be empty while the span is pending")
        elif status == "active" and started is None:
            started = now
        if started is not None and finished is not None and finished < started:
            raise _invalid("finished_at", "is before started_at")

        instance = self._account.instances.get(instance_id)
        if instance is None:
            raise ApiError(404, "not_found", "agent instance not found")
        # `pending` is accepted: prefactor-core queues the run's start but POSTs span creates at once
        # (SpanManager.start), so the real API must take spans before the start lands. `terminated` is accepted
        # with `control` in the answer: the official clients read `control` only from successful span answers
        # (prefactor_http AgentSpanClient.create), so that is how a create learns of termination. See
        # docs/local-server.md.
        if instance.status not in ("pending", "active", "terminated"):
            control = self._account.control(instance)
            raise ApiError(
                409,
                "invalid_action",
                f"cannot create spans in an instance that is {instance.status}",
                extra={"control": control} if control else None,
            )
        title = instance.schema_version.titles.get(schema_name)
        if title is None:
            raise _invalid("schema_name", "is not registered in this instance's agent schema version")
        if parent_id is not None:
            parent = self._account.spans.get(parent_id)
            if parent is None:
                raise ApiError(404, "not_found", "parent span not found", {"parent_span_id": ["not found"]})
            if parent.instance_id != instance_id:
                raise ApiError(
                    404,
                    "not_found",
                    "parent span not found in this agent instance",
                    {"parent_span_id": ["belongs to another agent instance"]},
                )
        if span_id is not None and span_id in self._account.spans:
            raise ApiError(409, "invalid_value", "id already exists", {"id": ["already exists"]})

        span_type = instance.schema_version.span_types[schema_name]
        self._findings.check_schema(
            payload, span_type["params_schema"], f"payload of a {schema_name} span", span_id=span_id
        )
        if result_payload is not None:
            what = f"result_payload of a {schema_name} span"
            self._findings.check_schema(result_payload, span_type["result_schema"], what, span_id=span_id)
        span_id = span_id or self._account.new_id(started if started is not None else now)
        data: JsonDict = {
            "type": "agent_span",
            "id": span_id,
            "account_id": self._account.account_id,
            "agent_id": self._account.agent_id,
            "agent_instance_id": instance_id,
            "parent_span_id": parent_id,
            "schema_name": schema_name,
            "schema_title": title,
            "status": status,
            "payload": payload,
            "result_payload": result_payload,
            "summary": None,
            "sensitive_encoding": bool(sensitive),
            "started_at": format_timestamp(started),
            "finished_at": format_timestamp(finished),
            "inserted_at": format_timestamp(now),
            "updated_at": format_timestamp(now),
        }
        self._account.spans[span_id] = _Span(data, instance_id, status, started, finished)
        instance.span_ids.append(span_id)
        instance.counts[status] += 1
        out: JsonDict = {"status": "success", "details": data}
        control = self._account.control(instance)
        if control:
            out["control"] = control
        return out

    def finish(self, params: JsonDict) -> JsonDict:
        _check_fields(
            params,
            ("agent_span_id", "status", "result_payload", "timestamp", "sensitive_encoding"),
            required=("agent_span_id",),
        )
        span_id = self._account.check_id("agent_span_id", params["agent_span_id"])
        status = params.get("status") or "complete"
        if status not in FINISH_STATUSES:
            raise _invalid("status", f"must be one of {', '.join(FINISH_STATUSES)}")
        result_payload = _opt_obj(params, "result_payload")
        sensitive = params.get("sensitive_encoding")
        if sensitive is not None and not isinstance(sensitive, bool):
            raise _invalid("sensitive_encoding", "must be a boolean")
        timestamp = _opt_time(params, "timestamp")
        span = self._account.spans.get(span_id)
        if span is None:
            raise ApiError(404, "not_found", "agent span not found")
        instance = self._account.instances[span.instance_id]
        if instance.status not in ("pending", "active", "terminated"):
            raise ApiError(409, "invalid_action", f"the span's agent instance is {instance.status}")
        control = self._account.control(instance)
        conflict = {"control": control} if control else None  # a 409 in a terminated run says so too
        if span_id in instance.closed_by_termination:
            # The termination closed it while the client still ran it: the client's finish is how it learns that
            # the run was stopped, so it succeeds with `control` (the only answer the official clients read) and
            # the span stays as the termination left it. docs/local-server.md.
            self._check_result_payload(instance, span_id, span.data["schema_name"], result_payload)
            return {"status": "success", "details": span.data, "control": control}
        if span.status in FINISH_STATUSES:
            raise ApiError(409, "invalid_action", f"span is already {span.status}", extra=conflict)
        if status == "cancelled" and span.status != "pending":
            raise ApiError(409, "invalid_action", "only a pending span can be cancelled", extra=conflict)
        if status != "cancelled" and span.status != "active":
            raise ApiError(409, "invalid_action", f"only an active span can finish as {status}", extra=conflict)
        self._check_result_payload(instance, span_id, span.data["schema_name"], result_payload)
        now = now_us()
        finished = now if timestamp is None else timestamp
        started = finished if status == "cancelled" else span.started_us
        if started is not None and finished < started:
            raise _invalid("timestamp", "is before the span started")
        data = {
            **span.data,
            "status": status,
            "result_payload": result_payload,
            "started_at": format_timestamp(started),
            "finished_at": format_timestamp(finished),
            "updated_at": format_timestamp(now),
        }
        if sensitive is not None:
            data["sensitive_encoding"] = sensitive
        instance.counts[span.status] -= 1
        instance.counts[status] += 1
        self._account.spans[span_id] = _Span(data, span.instance_id, status, started, finished)
        out: JsonDict = {"status": "success", "details": data}
        if control:
            out["control"] = control
        return out

    def _check_result_payload(
        self, instance: _Instance, span_id: str, schema_name: str, result_payload: JsonDict | None
    ) -> None:
        if result_payload is not None:
            span_type = instance.schema_version.span_types.get(schema_name, {})
            what = f"result_payload of a {schema_name} span"
            self._findings.check_schema(result_payload, span_type.get("result_schema"), what, span_id=span_id)
