"""`PlannedSource.before_send`: the hook where the sending thread waits for what a plan started under the state lock
(a journal's fsync), run once per plan after its items are encoded and before any of them reaches the server,
without the state lock; one that raises costs no item. Real spans, the real planner, the local server over HTTP."""

from __future__ import annotations

import threading
import time

from prefactor_otel.config.options import PrefactorConfig
from prefactor_otel.devserver import DevServer
from prefactor_otel.mapping import MappingOptions, map_span
from prefactor_otel.pipeline.delivery import Delivery, PlannedSource
from prefactor_otel.pipeline.pipeline import Pipeline
from prefactor_otel.pipeline.planner import Planner
from prefactor_otel.transport.client import BulkTransport
from tests.spans import agent_trace, make_provider

BULK = "/api/v1/bulk"


def _ready(srv: DevServer, traces: int = 2) -> tuple[Delivery, Planner]:
    """A delivery and a planner (the account's partition asked of the server) holding `traces` agent runs."""
    config = PrefactorConfig.load({}, api_url=srv.url, api_token=srv.token, export_timeout=10, spool=False)
    delivery = Delivery(BulkTransport(config, sdk_header="tests-before-send"), config)
    options = MappingOptions.from_config(config)
    pipeline = Pipeline(config, delivery, None, partition=None, redactor=options.redactor)
    planner = pipeline.ensure_planner(time.monotonic() + 10)
    assert planner is not None
    provider, collector = make_provider()
    for _ in range(traces):
        agent_trace(provider)
    planner.add([map_span(span, options) for span in collector.spans], now=0.0)
    return delivery, planner


def test_before_send_runs_after_each_plan_without_the_lock_and_before_its_items_reach_the_server() -> None:
    with DevServer() as srv:
        delivery, planner = _ready(srv)
        lock = threading.Lock()
        events: list[tuple[str, int, bool]] = []  # (hook, bulk requests the server had seen, state lock held)

        def seen() -> int:
            return sum(1 for request in srv.requests if request.path == BULK)

        source = PlannedSource(
            planner,
            lock,
            flush=True,
            on_change=lambda: events.append(("on_change", seen(), lock.locked())),
            before_send=lambda: events.append(("before_send", seen(), lock.locked())),
        )
        assert delivery.drain(source, time.monotonic() + 10)
        assert len(srv.spans()) == 8 and {i["status"] for i in srv.instances()} == {"complete"}
    waits = [event for event in events if event[0] == "before_send"]
    assert waits and all(not held for _, _, held in waits)  # the state lock is free while the hook waits
    assert all(held for name, _, held in events if name == "on_change")
    # Every plan that sends is followed by exactly one wait, before the server sees the plan's first request.
    for index, (name, requests, _) in enumerate(events):
        if name == "before_send":
            plan = events[index - 1]
            assert plan[0] == "on_change" and plan[1] == requests
    assert [name for name, _, _ in events].count("before_send") == len({r for _, r, _ in waits})


def test_a_before_send_that_raises_costs_no_item_and_is_counted() -> None:
    def broken() -> None:
        raise OSError("no space left on device")

    with DevServer() as srv:
        delivery, planner = _ready(srv, traces=1)
        source = PlannedSource(planner, threading.Lock(), flush=True, before_send=broken)
        assert delivery.drain(source, time.monotonic() + 10)
        assert len(srv.spans()) == 4 and [i["status"] for i in srv.instances()] == ["complete"]
    assert delivery.counters["before_send_errors"] >= 1
