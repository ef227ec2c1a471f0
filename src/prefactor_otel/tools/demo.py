"""`prefactor-otel demo`: run the sample agent (demo_agent.py) twice, export it, and show the runs as trees.

Without `PREFACTOR_API_URL` the runs go to an embedded local server and the trees come from its snapshot. With it,
they go to that API and are read back through the reads the real Prefactor serves (`GET /agent_instance` and
`GET /agent_spans`, paged), so what is printed is what the API holds; when the token cannot read (an agent's SDK
token cannot list runs in Prefactor) or the read fails, one line says so instead. Either way the demo ends with the
next step: the same settings for the user's own agent.

Which runs are the demo's: the trace ids of its root spans (collected by a span processor at their start) matched
against the `trace_id` each span payload carries; only runs started since the demo began are read.

The exporter runs in PrefactorSpanProcessor, as in the README's first example, so its start-up line says
`live spans agent`, not `none (not under PrefactorSpanProcessor)`.

Threads: the caller's thread runs the demo and the read-back; the processor's batch thread exports; the trace ids
are collected on the thread that starts each span (the caller's), a set guarded by the GIL's atomic `add`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from importlib.util import find_spec
from typing import Any

import httpx
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor

from prefactor_otel.devserver.timefmt import parse_timestamp

PAGE_SIZE = 100  # the API's largest page
MAX_INSTANCE_PAGES = 5  # from the newest end of the agent's run list: the demo's runs are among the last ones
MAX_SPAN_PAGES = 20
SINCE_SLACK_US = 60_000_000  # runs started up to a minute before the demo began are still looked at


class ReadBackError(Exception):
    """The runs could not be read back; the message is one line for the user (never the token)."""


class RootTraces(SpanProcessor):
    """Collects the trace id of every root span started: one trace = one agent run."""

    def __init__(self) -> None:
        self.trace_ids: set[str] = set()

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        if span.parent is None:
            self.trace_ids.add(format(span.get_span_context().trace_id, "032x"))

    def on_end(self, span: ReadableSpan) -> None:
        pass


# What the next step needs and `pip install .` does not bring: the README's zero-code install line names it too.
INSTRUMENT_INSTALL = (
    "  pip install opentelemetry-instrumentation    (provides opentelemetry-instrument; not installed here)"
)


def has_opentelemetry_instrument() -> bool:
    """Whether `opentelemetry-instrument` can run here: its package is importable by this Python."""
    try:
        return find_spec("opentelemetry.instrumentation.auto_instrumentation") is not None
    except ImportError:  # a parent package that is missing or hidden
        return False


def next_step(using_api: bool, instrument_installed: bool = True) -> str:
    """The demo's last lines: how to trace the user's own agent the same way (and what to install for it first,
    when opentelemetry-instrumentation is missing: a plain `pip install .` does not bring it)."""
    # OTEL_SERVICE_NAME names the agent: without it the run reads `unknown_service:python@unversioned`.
    command = (
        "  OTEL_TRACES_EXPORTER=prefactor OTEL_SERVICE_NAME=your-agent opentelemetry-instrument python your_agent.py"
    )
    install = [] if instrument_installed else [INSTRUMENT_INSTALL]
    if using_api:
        return "\n".join(
            [
                "Next step: trace your own agent the same way, with the same PREFACTOR_* settings:",
                *install,
                command,
                '  (README: "Use it")',
            ]
        )
    return "\n".join(
        [
            "Next step: trace your own agent the same way:",
            *install,
            "  prefactor-otel serve    (a local server that stays up: export the PREFACTOR_* settings it prints)",
            command,
            '  prefactor-otel show     (its runs; README: "Use it")',
        ]
    )


def run_demo() -> int:
    """The whole demo; 0 when every span was delivered."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

    from prefactor_otel.devserver import DevServer, render_runs
    from prefactor_otel.devserver.serve import new_token
    from prefactor_otel.devserver.timefmt import now_us
    from prefactor_otel.sdk.exporter import PrefactorSpanExporter
    from prefactor_otel.sdk.processor import PrefactorSpanProcessor
    from prefactor_otel.tools.demo_agent import run_agent

    server: DevServer | None = None
    api_url = os.environ.get("PREFACTOR_API_URL")
    if api_url:
        exporter = PrefactorSpanExporter()
        print(f"Exporting to {api_url} (from PREFACTOR_API_URL)")
    else:
        server = DevServer(token=new_token()).start()  # lives as long as the demo; nobody else needs its token
        print(f"No PREFACTOR_API_URL set: started the embedded local Prefactor-compatible server at {server.url}")
        exporter = PrefactorSpanExporter(
            api_url=server.url,
            api_token=server.token,
            agent_id=server.agent_id,
            environment_id=server.environment_id,
            finish_grace_seconds=0,
        )
    if not exporter.enabled:
        print(f"The exporter is disabled ({exporter.stats()['disabled_reason']}); nothing will be sent.")
    try:
        began_us = now_us()
        roots = RootTraces()
        provider = TracerProvider(resource=Resource.create({"service.name": "weather-bot", "service.version": "0.1.0"}))
        provider.add_span_processor(roots)
        # As the README's first example: live runs (the start-up line then says `live spans agent`, not `none`).
        provider.add_span_processor(PrefactorSpanProcessor(exporter))
        tracer = provider.get_tracer("prefactor_otel.demo_agent", "0.1.0")
        for question, city in (("What's the weather in Paris?", "Paris"), ("And on Mars?", "Mars")):
            print(f"agent run: {question!r} -> {run_agent(tracer, question, city)!r}")
        provider.shutdown()
        stats = exporter.stats()
        print(
            f"exported {stats['spans_exported']} span(s) in {stats['requests']} request(s), "
            f"dropped {stats['spans_dropped']}, instances finished {stats['instances_finished']}"
        )
        print()
        if server is not None:
            print(render_runs(server.snapshot()))
        elif exporter.enabled:
            print_read_back(roots.trace_ids, began_us)
        print(next_step(using_api=server is None, instrument_installed=has_opentelemetry_instrument()))
        ok = stats["spans_dropped"] == 0 and stats["spans_queued"] == 0 and exporter.enabled
        return 0 if ok else 1
    finally:
        if server is not None:
            server.stop()


def print_read_back(trace_ids: set[str], since_us: int) -> None:
    from prefactor_otel.config.options import PrefactorConfig
    from prefactor_otel.config.values import ConfigError
    from prefactor_otel.devserver import render_runs

    try:
        config = PrefactorConfig.load()
    except ConfigError as exc:  # the exporter said it was disabled: it could not have sent anything either
        print(f"cannot read the runs back: {exc}")
        return
    try:
        snapshot = read_runs_back(
            config.api_base,
            config.api_token.get(),
            config.agent_id,
            trace_ids,
            since_us=since_us,
            timeout=config.export_timeout,
        )
    except ReadBackError as exc:
        print(f"cannot read the runs back from {config.api_base}: {exc}")
        return
    print(f"The demo's runs, read back from {config.api_base}:")
    print(render_runs(snapshot))


def read_runs_back(
    api_base: str,
    token: str,
    agent_id: str | None,
    trace_ids: set[str],
    *,
    since_us: int,
    timeout: float = 10.0,
) -> dict[str, Any]:
    """The runs of `trace_ids` as a snapshot-shaped dict (`instances`, `spans`), read through the API's lists.

    Reads the newest end of the agent's run list (the list's order is oldest first unless sorted, and the sorting
    parameter is not reliably accepted: the last pages are read instead), then each recent run's spans.
    Raises ReadBackError with one line for the user."""
    if not agent_id:
        raise ReadBackError("PREFACTOR_AGENT_ID is not set, and listing runs needs the agent id")
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=api_base, headers=headers, timeout=timeout) as client:
        recent = [
            row
            for row in _newest_instances(client, agent_id, since_us - SINCE_SLACK_US)
            if (_micros(row.get("started_at")) or _micros(row.get("inserted_at")) or 0) >= since_us - SINCE_SLACK_US
        ]
        instances: list[Mapping[str, Any]] = []
        spans: list[Mapping[str, Any]] = []
        for row in recent:
            own = _pages(client, "/agent_spans", {"agent_instance_id": str(row.get("id"))}, MAX_SPAN_PAGES)
            if not trace_ids or any(_trace_id(s) in trace_ids for s in own):
                instances.append(row)
                spans.extend(own)
    if not instances:
        raise ReadBackError("none of the demo's runs is listed there (yet)")
    return {"instances": instances, "spans": spans, "agent_versions": []}


def _newest_instances(client: httpx.Client, agent_id: str, since_us: int) -> list[Mapping[str, Any]]:
    query = {"agent_id": agent_id}
    first = _get(client, "/agent_instance", {**query, "pagination[offset]": "0", "pagination[page_size]": "1"})
    total = (first.get("pagination") or {}).get("item_count")
    if not isinstance(total, int):  # no pagination block: read from the start, as far as the bound allows
        return _pages(client, "/agent_instance", query, MAX_INSTANCE_PAGES)
    rows: list[Mapping[str, Any]] = []
    offset = total
    for _ in range(MAX_INSTANCE_PAGES):
        if offset <= 0:
            break
        offset = max(0, offset - PAGE_SIZE)
        window = {**query, "pagination[offset]": str(offset), "pagination[page_size]": str(PAGE_SIZE)}
        page = [r for r in _get(client, "/agent_instance", window).get("summaries") or [] if isinstance(r, Mapping)]
        rows.extend(page)
        times = [_micros(r.get("started_at")) or _micros(r.get("inserted_at")) or 0 for r in page]
        if times and max(times) < since_us:
            break  # this page is all older than the demo: so are the pages before it
    return rows


def _pages(client: httpx.Client, path: str, query: Mapping[str, str], max_pages: int) -> list[Mapping[str, Any]]:
    rows: list[Mapping[str, Any]] = []
    offset: object = 0
    for _ in range(max_pages):
        body = _get(client, path, {**query, "pagination[offset]": str(offset), "pagination[page_size]": str(PAGE_SIZE)})
        rows.extend(r for r in body.get("summaries") or [] if isinstance(r, Mapping))
        offset = (body.get("pagination") or {}).get("next_page_offset")
        if not isinstance(offset, int):
            break
    return rows


def _get(client: httpx.Client, path: str, query: Mapping[str, str]) -> Mapping[str, Any]:
    try:
        response = client.get(path, params=dict(query))
    except httpx.HTTPError as exc:
        raise ReadBackError(f"GET {path} failed: {type(exc).__name__}: {exc}") from None
    if response.status_code in (401, 403):
        raise ReadBackError(
            f"GET {path} answered HTTP {response.status_code}: this token cannot read runs "
            "(in Prefactor, reading runs needs an account token; the agent's token can only write)"
        )
    if response.status_code != 200:
        raise ReadBackError(f"GET {path} answered HTTP {response.status_code}")
    try:
        body = response.json()
    except ValueError:
        raise ReadBackError(f"GET {path} answered something that is not JSON") from None
    if not isinstance(body, Mapping):
        raise ReadBackError(f"GET {path} answered JSON that is not an object")
    return body


def _trace_id(span: Mapping[str, Any]) -> object:
    payload = span.get("payload")
    return payload.get("trace_id") if isinstance(payload, Mapping) else None


def _micros(value: object) -> int | None:
    try:
        return parse_timestamp(value)
    except ValueError:
        return None
