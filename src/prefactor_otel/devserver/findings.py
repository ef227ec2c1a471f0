"""Strict-mode findings: what the dev server accepts as the real API would but a stricter server would refuse.

Threads: any request thread or the test thread. `_find` and the readers take the store's RLock (`_lock`), which
guards the findings list; `_finding_context` is entered with `_lock` held (by `Store.execute`), so
`_current_action` belongs to the one action running. docs/local-server.md lists the rules.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

from prefactor_otel.devserver.schema_check import violations
from prefactor_otel.devserver.state import StoreState
from prefactor_otel.devserver.validation import JsonDict, _copy, _field_sink

_DATA_RISK_KEYS = ("action_profile", "params_data_categories", "result_data_categories")
MAX_FINDINGS = 1000  # a runaway client must not grow the server without bound


class Findings(StoreState):
    """Recording and reading findings, and the checks that produce them (schemas, data_risk)."""

    @contextlib.contextmanager
    def _finding_context(self, action: str) -> Iterator[None]:
        # Called with `_lock` held: `_current_action` belongs to the one action running.
        previous = getattr(_field_sink, "report", None)
        self._current_action = action
        _field_sink.report = self._unknown_field
        try:
            yield
        finally:
            _field_sink.report = previous

    def _unknown_field(self, name: str) -> None:
        self._find("unknown_field", f"unknown field {name} (dropped)", name)

    def _find(self, rule: str, message: str, field_name: str | None = None, **context: Any) -> None:
        finding: JsonDict = {"rule": rule, "action": self._current_action, "message": message}
        if field_name is not None:
            finding["field"] = field_name
        finding.update(context)
        with self._lock:
            if len(self._findings) < MAX_FINDINGS:
                self._findings.append(finding)
                self.revision += 1

    def findings(self) -> list[JsonDict]:
        """Strict-mode findings so far, oldest first: what a stricter server would have refused (see the module
        docstring). Copies."""
        with self._lock:
            return _copy(self._findings)

    def clear_findings(self) -> None:
        with self._lock:
            self._findings.clear()
            self.revision += 1

    def _check_schema(self, value: Any, schema: Any, what: str, **context: Any) -> None:
        problems = violations(value, schema)
        if problems:
            self._find("schema_violation", f"{what} breaks its registered schema: {'; '.join(problems)}", **context)

    def _check_data_risk(self, entry: Mapping[str, Any], at: str) -> None:
        risk = entry.get("data_risk")
        if isinstance(risk, dict):
            missing = [
                k for k in ("action_profile", "params_data_categories", "result_data_categories") if k not in risk
            ]
            if missing:
                message = f"{at}data_risk lacks {', '.join(missing)} (prefactor-http's DataRisk requires all three)"
                self._find("data_risk_incomplete", message, at + "data_risk")
