"""A strict, local, Prefactor-compatible API server for tests, demos and offline development.

It serves the part of the Prefactor API an exporter uses (ping, agent instance register/start/finish/
terminate, span create/finish, lists, PFID generation, bulk) over real HTTP on 127.0.0.1, validating like a
strict server would: bearer auth, PFIDs in the account partition, parents in the same instance, state
machines, idempotent replay, stop-at-first-error bulk, body limits. Faults can be injected (delays, status
codes, dropped connections, commit-then-fail, redirects) to exercise an exporter's retry logic, and hostile
answers (trickled, endless, huge, never) to exercise its wall-clock and size bounds.

    with DevServer() as srv:
        ...point the exporter at srv.url with srv.token and srv.agent_id...
        assert srv.spans()
        print(render_runs(srv.snapshot()))

Dev-only endpoints (token-protected): `GET /_dev/snapshot`, `GET /_dev/runs` (the runs as views, runview.py),
`GET|POST|DELETE /_dev/faults`, `POST /_dev/terminate` (also `DevServer.terminate`), `GET|DELETE /_dev/findings`
(also `DevServer.findings()`: what the server accepted as the real API would but a stricter server would refuse).
How each answer was decided: docs/local-server.md.
"""

from __future__ import annotations

from prefactor_otel.devserver.faults import Fault
from prefactor_otel.devserver.render import render_live, render_runs
from prefactor_otel.devserver.request_log import RequestLog
from prefactor_otel.devserver.runview import run_views
from prefactor_otel.devserver.serve import serve
from prefactor_otel.devserver.server import DEFAULT_PORT, DEFAULT_TOKEN, DevServer
from prefactor_otel.devserver.store import ApiError, Store

__all__ = [
    "DEFAULT_PORT",
    "DEFAULT_TOKEN",
    "ApiError",
    "DevServer",
    "Fault",
    "RequestLog",
    "Store",
    "render_live",
    "render_runs",
    "run_views",
    "serve",
]
