"""Strict-mode findings: what the dev server accepts as the real API would but a stricter server would refuse.

`Findings` owns the list of findings and the name of the action they are charged to; the store's action parts
(registration.py, instance_actions.py, span_actions.py) report through it (`find`, `check_schema`,
`check_data_risk`), and the store reads and clears it.
Threads: any request thread or the test thread. It shares the account's RLock (`Account.lock`, state.py), which
guards the findings list and the account's revision: `find` and the readers take it; `context` and `begin` are
called with it held (by `Store.execute` and `Store.bulk`), so `_current_action` belongs to the one action running.
docs/local-server.md lists the rules.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

from prefactor_otel.devserver.schema_check import violations
from prefactor_otel.devserver.state import Account
from prefactor_otel.devserver.validation import JsonDict, _copy, _field_sink

_DATA_RISK_KEYS = ("action_profile", "params_data_categories", "result_data_categories")
MAX_FINDINGS = 1000  # a runaway client must not grow the server without bound


class Findings:
    """Recording and reading findings, and the checks that produce them (schemas, data_risk)."""

    def __init__(self, account: Account) -> None:
        self._account = account  # for its lock and revision
        self._entries: list[JsonDict] = []
        self._current_action = ""

    def begin(self, action: str) -> None:
        """Charge the findings that follow to `action`. Called with the account's lock held."""
        self._current_action = action

    @contextlib.contextmanager
    def context(self, action: str) -> Iterator[None]:
        """`begin(action)`, and unknown fields dropped by the shared field checks become findings while inside.
        Entered with the account's lock held: `_current_action` belongs to the one action running."""
        previous = getattr(_field_sink, "report", None)
        self._current_action = action
        _field_sink.report = self._unknown_field
        try:
            yield
        finally:
            _field_sink.report = previous

    def _unknown_field(self, name: str) -> None:
        self.find("unknown_field", f"unknown field {name} (dropped)", name)

    def find(self, rule: str, message: str, field_name: str | None = None, **context: Any) -> None:
        finding: JsonDict = {"rule": rule, "action": self._current_action, "message": message}
        if field_name is not None:
            finding["field"] = field_name
        finding.update(context)
        with self._account.lock:
            if len(self._entries) < MAX_FINDINGS:
                self._entries.append(finding)
                self._account.revision += 1

    def read(self) -> list[JsonDict]:
        """Strict-mode findings so far, oldest first (copies)."""
        with self._account.lock:
            return _copy(self._entries)

    def clear(self) -> None:
        with self._account.lock:
            self._entries.clear()
            self._account.revision += 1

    def entries(self) -> list[JsonDict]:
        """The findings themselves, in a new list (for a snapshot or a dump); the caller holds the account's lock
        and copies deeper if it lets them out."""
        return list(self._entries)

    def restore(self, entries: list[JsonDict]) -> None:
        """Replace the findings (persist.py loading a saved state, before anyone else sees the store)."""
        with self._account.lock:
            self._entries = list(entries)

    def check_schema(self, value: Any, schema: Any, what: str, **context: Any) -> None:
        problems = violations(value, schema)
        if problems:
            self.find("schema_violation", f"{what} breaks its registered schema: {'; '.join(problems)}", **context)

    def check_data_risk(self, entry: Mapping[str, Any], at: str) -> None:
        risk = entry.get("data_risk")
        if isinstance(risk, dict):
            missing = [
                k for k in ("action_profile", "params_data_categories", "result_data_categories") if k not in risk
            ]
            if missing:
                message = f"{at}data_risk lacks {', '.join(missing)} (prefactor-http's DataRisk requires all three)"
                self.find("data_risk_incomplete", message, at + "data_risk")
