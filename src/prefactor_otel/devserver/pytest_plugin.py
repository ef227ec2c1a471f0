"""pytest fixture `prefactor_server`: a started `DevServer` per test, stopped afterwards.

Installing prefactor-otel registers this module as a pytest plugin (entry point `pytest11`), so the fixture is
available in any test without an import; `pytest_plugins = ["prefactor_otel.devserver.pytest_plugin"]` in a
conftest.py does the same where plugins are not auto-loaded (`PYTEST_DISABLE_PLUGIN_AUTOLOAD`).

The server runs in the test's process, on 127.0.0.1 and a free port, on a thread of its own; each test gets a
fresh one with its own token, agent, environment and no data. The fixture holds no state of its own.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from prefactor_otel.devserver.server import DevServer


@pytest.fixture
def prefactor_server() -> Iterator[DevServer]:
    """A running local Prefactor-compatible API for this test (a `DevServer`), stopped after it.

    Point your agent at it:

    - `.env()`: the `PREFACTOR_*` variables to use it (`PREFACTOR_API_URL`, `PREFACTOR_API_TOKEN`,
      `PREFACTOR_AGENT_ID`, `PREFACTOR_ENVIRONMENT_ID`): set them with `monkeypatch.setenv`, pass them as
      `PrefactorSpanProcessor(environ=...)`, or add them to a subprocess's environment.
    - `.url`: the base URL (`http://127.0.0.1:<port>`, what `PREFACTOR_API_URL` takes); `.api_url`: the same with
      `/api/v1`, for direct HTTP calls.
    - `.token`: the bearer token it accepts (`pf_test_token`); `.agent_id`, `.environment_id`: its agent and
      environment.

    See what arrived (as the API would show it):

    - `.instances()`: the agent runs (AgentInstance dicts: `id`, `status`, `started_at`, `finished_at`, ...).
    - `.spans(instance_id=None)`: the agent spans, of one run or all (`payload["name"]`, `schema_name`,
      `status`, `parent_span_id`, `result_payload`, ...).
    - `.snapshot()`: everything at once (instances, spans, agent versions); `render_runs(snapshot)` from
      `prefactor_otel.devserver` prints it as trees.

    Act on it:

    - `.terminate(instance_id, reason)`: terminate a run as an operator would in Prefactor (its in-flight spans
      close; later span answers carry `control`, which `prefactor_otel.raise_if_terminated()` turns into an error).
    - `.add_fault(Fault(...))`: make chosen requests slow, fail, drop or misbehave (`prefactor_otel.devserver.Fault`),
      to test how your agent behaves when Prefactor is unwell; `.clear_faults()` removes them.
    """
    with DevServer() as server:
        yield server
