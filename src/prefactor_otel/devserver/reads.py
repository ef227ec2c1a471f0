"""Reads of runs and spans: REST gets and lists with their pages, PFID generation, and the Python inspection API.

`Reads` is a part of the `Store` (store.py): it holds the account's records (`Account`, state.py) it reads, and the
findings (findings.py) a snapshot includes; it changes neither.
Threads: request threads and the test thread; each read takes the account's RLock (`Account.lock`) while it looks
at state and copies what it returns, so a caller never sees (or changes) the live records.
"""

from __future__ import annotations

from collections.abc import Mapping

from prefactor_otel.devserver.findings import Findings
from prefactor_otel.devserver.state import Account
from prefactor_otel.devserver.timefmt import now_us
from prefactor_otel.devserver.validation import ApiError, JsonDict, Outcome, _check_fields, _copy, error_body

MAX_PAGE_SIZE = 100


class Reads:
    """Gets, lists and snapshots of instances and spans."""

    def __init__(self, account: Account, findings: Findings) -> None:
        self._account = account
        self._findings = findings

    def get_instance(self, instance_id: str) -> Outcome:
        with self._account.lock:
            instance = self._account.instances.get(instance_id)
            if instance is None:
                return 404, error_body("not_found", "agent instance not found")
            return 200, {"status": "success", "details": self._account.render_instance(instance)}

    def get_span(self, span_id: str) -> Outcome:
        with self._account.lock:
            span = self._account.spans.get(span_id)
            if span is None:
                return 404, error_body("not_found", "agent span not found")
            return 200, {"status": "success", "details": span.data}

    def list_instances(self, query: Mapping[str, str]) -> Outcome:
        agent_id = query.get("agent_id")
        if not agent_id:
            return 422, error_body("validation_errors", "agent_id is required", {"agent_id": ["is required"]})
        version_id = query.get("agent_version_id")
        with self._account.lock:
            rows = [
                self._account.render_instance(i)
                for i in self._account.instances.values()
                if agent_id == self._account.agent_id and (version_id is None or i.agent_version_id == version_id)
            ]
        return _page(rows, query, ("id", "status", "started_at", "finished_at", "inserted_at"))

    def list_spans(self, query: Mapping[str, str]) -> Outcome:
        instance_id = query.get("agent_instance_id")
        agent_id = query.get("agent_id")
        with self._account.lock:
            if agent_id is not None and agent_id != self._account.agent_id:
                rows: list[JsonDict] = []
            elif instance_id is not None:
                instance = self._account.instances.get(instance_id)
                rows = [self._account.spans[s].data for s in instance.span_ids] if instance else []
            else:
                rows = [s.data for s in self._account.spans.values()]
        return _page(rows, query, ("id", "status", "started_at", "finished_at", "inserted_at", "schema_name"))

    def generate_pfids(self, body: object) -> Outcome:
        if not isinstance(body, dict):
            return 400, error_body("bad_request", "body must be a JSON object")
        try:
            _check_fields(body, ("count", "account_id", "idempotency_key"), required=("count",))
        except ApiError as exc:
            return exc.status, exc.body()
        count = body["count"]
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 1000:
            return 422, error_body("invalid_value", "count must be an integer 1-1000", {"count": ["1-1000"]})
        account_id = body.get("account_id")
        if account_id is not None and account_id != self._account.account_id:
            return 404, error_body("not_found", "account not found")
        now = now_us()
        return 200, {"status": "success", "details": {"pfids": [self._account.new_id(now) for _ in range(count)]}}

    # ------------------------------------------------------------------ inspection (Python API)

    def instances(self) -> list[JsonDict]:
        with self._account.lock:
            rows = [self._account.render_instance(i) for i in self._account.instances.values()]
        return rows

    def spans(self, instance_id: str | None = None) -> list[JsonDict]:
        with self._account.lock:
            if instance_id is None:
                rows = [s.data for s in self._account.spans.values()]
            else:
                instance = self._account.instances.get(instance_id)
                rows = [self._account.spans[s].data for s in instance.span_ids] if instance else []
            # Copy under the lock: callers may mutate what they get, the store must not notice.
            return _copy(rows)

    def snapshot(self) -> JsonDict:
        with self._account.lock:
            return _copy(
                {
                    "instances": [self._account.render_instance(i) for i in self._account.instances.values()],
                    "spans": [s.data for s in self._account.spans.values()],
                    "schema_versions": [v.data for v in self._account.schema_versions.values()],
                    "agent_versions": list(self._account.agent_versions.values()),
                    "findings": self._findings.entries(),
                }
            )

    def counts(self) -> tuple[int, int]:
        """(instances, spans) without copying anything: cheap enough to poll."""
        with self._account.lock:
            return len(self._account.instances), len(self._account.spans)


def _sorted(rows: list[JsonDict], field_name: str, descending: bool) -> list[JsonDict]:
    # Nulls last in both directions; our ISO strings share one format, so they sort as their instants.
    present = [r for r in rows if r.get(field_name) is not None]
    missing = [r for r in rows if r.get(field_name) is None]
    return sorted(present, key=lambda r: r[field_name], reverse=descending) + missing


def _page(rows: list[JsonDict], query: Mapping[str, str], sortable: tuple[str, ...]) -> Outcome:
    try:
        offset = int(query.get("pagination[offset]", "0"))
        size = int(query.get("pagination[page_size]", str(MAX_PAGE_SIZE)))
    except ValueError:
        return 422, error_body("invalid_value", "pagination values must be integers")
    if offset < 0 or not 1 <= size <= MAX_PAGE_SIZE:
        return 422, error_body("invalid_value", f"pagination[page_size] must be 1-{MAX_PAGE_SIZE}, offset >= 0")
    sorting: JsonDict | None = None
    raw = query.get("sorting") or query.get("sorting[field]")
    if raw:
        descending = raw.startswith("-") or query.get("sorting[direction]", "asc").lower() == "desc"
        field_name = raw.lstrip("-")
        if field_name not in sortable:
            return 422, error_body("invalid_value", f"cannot sort by {field_name}", {"sorting": ["invalid"]})
        rows = _sorted(rows, field_name, descending)
        sorting = {"field": field_name, "direction": "desc" if descending else "asc"}
    total = len(rows)
    chosen = rows[offset : offset + size]
    pagination = {
        "item_count": total,
        "item_start": offset + 1 if chosen else 0,
        "item_end": offset + len(chosen),
        "next_page_offset": offset + size if offset + size < total else None,
        "page_count": (total + size - 1) // size,
        "page_index": offset // size + 1,  # one-based, as prefactor-http's PaginationOutput documents
        "page_offset": offset,
        "page_size": size,
        "previous_page_offset": max(0, offset - size) if offset > 0 else None,
    }
    return 200, {
        "status": "success",
        "summaries": _copy(chosen),
        "pagination": pagination,
        "sorting": sorting,
    }
