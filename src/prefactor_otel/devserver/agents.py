"""`/api/v1/agent…` reads: the one seeded agent, as prefactor-http's AgentClient reads it; and
`GET /api/v1/environment/{id}`, the seeded environment (the API has environment CRUD; only the read is served,
with an inferred field set: no official client reads environments).

`AgentReads` is a part of the `Store` (store.py): it holds the account's records (`Account`, state.py) and reads
the seeded ids and the runs.
Threads: request threads and the test thread; each read takes the account's RLock (`Account.lock`) while it counts
runs.
"""

from __future__ import annotations

from collections.abc import Mapping

from prefactor_otel.devserver.model import TERMINAL_INSTANCE
from prefactor_otel.devserver.reads import _page
from prefactor_otel.devserver.state import Account
from prefactor_otel.devserver.timefmt import format_timestamp
from prefactor_otel.devserver.validation import JsonDict, Outcome, error_body


class AgentReads:
    """The seeded agent: show, get and list (writes are answered 501 by the server)."""

    def __init__(self, account: Account) -> None:
        self._account = account

    def _render_agent(self, *, summary: bool, counts: bool) -> JsonDict:
        # The one seeded agent, read-only: every available action is off because the dev server serves no
        # agent writes. Field sets follow prefactor-http's Agent / AgentSummary.
        created = format_timestamp(self._account.created_us)
        agent: JsonDict = {
            "type": "agent",
            "id": self._account.agent_id,
            "name": "dev-server agent",
            "description": None,
            "external_identifier": None,
            "status": "active",
            "owner_person_id": None,
            "team_id": None,
            "available_actions": {"update": False, "retire": False, "reinstate": False, "delete": False},
            "inserted_at": created,
            "updated_at": created,
        }
        if summary:
            return agent
        agent["risk_profile_id"] = None
        if counts:
            by_status = dict.fromkeys(("pending", "active", "complete", "failed", "cancelled", "terminated"), 0)
            for instance in self._account.instances.values():
                by_status[instance.status] += 1
            finished = sum(by_status[s] for s in TERMINAL_INSTANCE)
            agent["instance_counts"] = {"total": len(self._account.instances), **by_status, "finished": finished}
        return agent

    def get_agent(self, agent_id: str) -> Outcome:
        with self._account.lock:
            if agent_id != self._account.agent_id:
                return 404, error_body("not_found", "agent not found")
            return 200, {"status": "success", "details": self._render_agent(summary=False, counts=True)}

    def show_agent(self, query: Mapping[str, str]) -> Outcome:
        agent_id, external = query.get("agent_id"), query.get("external_identifier")
        if (agent_id is None) == (external is None):
            message = "give exactly one of agent_id and external_identifier"
            return 422, error_body("validation_errors", message, {"agent_id": [message]})
        if agent_id != self._account.agent_id:  # the seeded agent has no external identifier
            return 404, error_body("not_found", "agent not found")
        counts = query.get("include_counts") == "true"
        with self._account.lock:
            return 200, {"status": "success", "details": self._render_agent(summary=False, counts=counts)}

    def list_agents(self, query: Mapping[str, str]) -> Outcome:
        with self._account.lock:
            rows = [self._render_agent(summary=True, counts=False)]
        # Filters on team/owner/risk profile match nothing but "no value": the seeded agent has none.
        if any(query.get(name) not in (None, "", "null") for name in ("team_id", "owner_person_id", "risk_profile_id")):
            rows = []
        return _page(rows, query, ("id", "name", "inserted_at"))

    def get_environment(self, environment_id: str) -> Outcome:
        with self._account.lock:
            if environment_id != self._account.environment_id:
                return 404, error_body("not_found", "environment not found")
            created = format_timestamp(self._account.created_us)
            environment: JsonDict = {
                "type": "environment",
                "id": self._account.environment_id,
                "account_id": self._account.account_id,
                "name": "dev-server environment",
                "inserted_at": created,
                "updated_at": created,
            }
            return 200, {"status": "success", "details": environment}
