"""Run state machine after registration: start, finish, terminate and record_quality.

`RunActions` is a part of the `Store` (store.py): it holds the account's records (`Account`, state.py), whose runs
(and their spans) it changes, and the findings (findings.py) its checks report to.
Threads: each action runs inside `Store.execute`, on a request thread or the test thread, with the account's RLock
(`Account.lock`) held; it guards the instances (and their spans: termination closes the in-flight ones) these change.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from prefactor_otel.devserver.findings import Findings
from prefactor_otel.devserver.model import FINISH_STATUSES, TERMINAL_INSTANCE, _Instance, _Span
from prefactor_otel.devserver.state import Account
from prefactor_otel.devserver.timefmt import format_timestamp, now_us
from prefactor_otel.devserver.validation import ApiError, JsonDict, _check_fields, _invalid, _opt_obj, _opt_time


class RunActions:
    """The transitions of one run (`pending` -> `active` -> finished or `terminated`)."""

    def __init__(self, account: Account, findings: Findings) -> None:
        self._account = account
        self._findings = findings

    def start(self, params: JsonDict) -> JsonDict:
        _check_fields(params, ("agent_instance_id", "timestamp"), required=("agent_instance_id",))
        timestamp = _opt_time(params, "timestamp")
        instance = self._account.instance_for(params)
        if instance.status != "pending":
            raise ApiError(409, "invalid_action", f"cannot start an instance that is {instance.status}")
        now = now_us()
        instance.status = "active"
        instance.started_us = now if timestamp is None else timestamp
        instance.updated_us = now
        return {"status": "success", "details": self._account.render_instance(instance)}

    def finish(self, params: JsonDict) -> JsonDict:
        _check_fields(params, ("agent_instance_id", "status", "timestamp"), required=("agent_instance_id",))
        status = params.get("status") or "complete"
        if status not in FINISH_STATUSES:
            raise _invalid("status", f"must be one of {', '.join(FINISH_STATUSES)}")
        timestamp = _opt_time(params, "timestamp")
        instance = self._account.instance_for(params)
        if instance.status in TERMINAL_INSTANCE:
            raise ApiError(409, "invalid_action", f"instance is already {instance.status}")
        now = now_us()
        finished = now if timestamp is None else timestamp
        if status == "cancelled":
            if instance.status != "pending":
                raise ApiError(409, "invalid_action", "only a pending instance can be cancelled")
            instance.started_us = finished
        else:
            if instance.status != "active":
                raise ApiError(409, "invalid_action", f"only an active instance can finish as {status}")
            if instance.started_us is not None and finished < instance.started_us:
                raise _invalid("timestamp", "is before the instance started")
            open_spans = instance.counts["active"] + instance.counts["pending"]
            if status == "complete" and open_spans:
                message = f"instance finished complete with {open_spans} span(s) still open"
                self._findings.find("finished_with_open_spans", message, agent_instance_id=instance.id)
        instance.status = status
        instance.finished_us = finished
        instance.updated_us = now
        return {"status": "success", "details": self._account.render_instance(instance)}

    def terminate(self, params: JsonDict) -> JsonDict:
        _check_fields(params, ("agent_instance_id", "reason"))
        reason = params.get("reason")
        if not isinstance(reason, str) or not reason.strip():
            raise ApiError(422, "required_value", "reason is required", {"reason": ["is required"]})
        instance = self._account.instance_for(params)
        if instance.status != "active":
            raise ApiError(409, "invalid_action", f"only an active instance can be terminated, not {instance.status}")
        now = now_us()
        instance.status = "terminated"
        instance.termination_reason = reason
        instance.finished_us = now
        instance.updated_us = now
        self._close_in_flight_spans(instance, now)
        return {"status": "success", "details": self._account.render_instance(instance)}

    def _close_in_flight_spans(self, instance: _Instance, at_us: int) -> None:
        """Termination "closes in-flight spans" (Prefactor's API documentation). Spans have no `terminated`
        state, so each takes the close its state machine allows: an `active` span becomes `failed` (stopped from
        outside, it did not complete), a `pending` one `cancelled` (it never ran), both finished at the
        termination. The reason stays on the run (`termination_reason`); no result payload is invented."""
        at = format_timestamp(at_us)  # formatted once: a run may hold many thousands of open spans
        for span_id in instance.span_ids:
            span = self._account.spans[span_id]
            if span.status == "active":
                status, started = "failed", span.started_us
            elif span.status == "pending":
                status, started = "cancelled", at_us
            else:
                continue
            # A client clock ahead of ours may have started the span "later": never finish before the start.
            finished = at_us if started is None else max(at_us, started)
            data = {
                **span.data,
                "status": status,
                "finished_at": at if finished == at_us else format_timestamp(finished),
                "updated_at": at,
            }
            if status == "cancelled":
                data["started_at"] = at
            instance.counts[span.status] -= 1
            instance.counts[status] += 1
            self._account.spans[span_id] = _Span(data, span.instance_id, status, started, finished)
            instance.closed_by_termination.add(span_id)

    def record_quality(self, params: JsonDict) -> JsonDict:
        # Sets one named payload, or clears it with a null payload; other names stay (the documented contract of
        # prefactor-http's AgentInstanceClient.record_quality). Allowed in any run status: evaluations of a run
        # usually come after it finished.
        _check_fields(params, ("agent_instance_id", "name", "payload"), required=("agent_instance_id", "name"))
        name = params["name"]
        if not isinstance(name, str) or not name:
            raise _invalid("name", "must be a non-empty string")
        payload = _opt_obj(params, "payload")
        instance = self._account.instance_for(params)
        entry = instance.schema_version.quality.get(name)
        if entry is None:
            raise _invalid("name", "is not a quality schema registered in this instance's agent schema version")
        if payload is None:
            instance.quality_payloads.pop(name, None)
            instance.quality_summaries.pop(name, None)
        else:
            self._findings.check_schema(
                payload, entry["schema"], f"quality payload {name!r}", agent_instance_id=instance.id
            )
            instance.quality_payloads[name] = payload
            template = entry.get("template")
            if template:
                instance.quality_summaries[name] = render_template(template, payload)
            else:
                instance.quality_summaries.pop(name, None)
        instance.updated_us = now_us()
        return {"status": "success", "details": self._account.render_instance(instance)}


_TEMPLATE_FIELD = re.compile(r"\{\{\s*([A-Za-z0-9_.]+)\s*\}\}")


def render_template(template: str, payload: Mapping[str, Any]) -> str:
    """`{{field}}` interpolation (dotted paths reach into objects); a missing field renders empty."""

    def value(match: re.Match[str]) -> str:
        current: Any = payload
        for part in match.group(1).split("."):
            current = current.get(part) if isinstance(current, Mapping) else None
        return "" if current is None else str(current)

    return _TEMPLATE_FIELD.sub(value, template)
