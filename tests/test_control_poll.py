"""The slow path of control, over real HTTP against the local server: the poller finds terminated runs, and stops
quietly for good when the token may not read them; the poll interval setting."""

from __future__ import annotations

import logging
import time
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace.export import SpanExportResult

from prefactor_otel import ConfigError, PrefactorConfig
from prefactor_otel.control.poll import InstancePoller
from prefactor_otel.control.terminations import Termination, TerminationRegistry
from prefactor_otel.devserver import DevServer, Fault
from prefactor_otel.transport.client import BulkTransport
from tests.spans import agent_trace, exporter_for, make_provider
from tests.test_devserver import register

TOKEN = "pf_control_token_secret"


def _config(srv: DevServer) -> PrefactorConfig:
    return PrefactorConfig.load({}, api_url=srv.url, api_token=srv.token, export_timeout=5)


def _active_run(srv: DevServer) -> tuple[Any, str, int]:
    """An exporter whose run stays active (its finish waits out a long grace period); the run's id and trace."""
    provider, collector = make_provider()
    agent_trace(provider)
    exporter = exporter_for(srv, spool=False, finish_grace_seconds=600)
    assert exporter.export(collector.spans) is SpanExportResult.SUCCESS
    (instance,) = srv.instances()
    assert instance["status"] == "active"
    return exporter, instance["id"], collector.spans[0].context.trace_id


def _gets(srv: DevServer) -> int:
    return sum(1 for r in srv.requests if r.method == "GET" and r.path.startswith("/api/v1/agent_instance/"))


def _poll_until(poller: InstancePoller, runs: list[tuple[str, int | None]], done: Any) -> None:
    for _ in range(500):  # bounded: 500 x 20 ms at most
        poller.poll(runs, time.monotonic() + 5)
        if done():
            return
        time.sleep(0.02)


def test_the_poller_records_a_run_found_terminated_with_its_reason_and_then_leaves_it_alone():
    with DevServer(token=TOKEN) as srv:
        exporter, instance_id, trace_id = _active_run(srv)
        registry = TerminationRegistry()
        transport = BulkTransport(_config(srv), sdk_header="tests")
        poller = InstancePoller(transport, registry, interval_s=0.2)
        runs = [(instance_id, trace_id)]
        poller.poll(runs, time.monotonic() + 5)
        assert _gets(srv) == 0  # a run is first polled one interval after it is first seen
        _poll_until(poller, runs, lambda: _gets(srv) >= 1)
        assert registry.for_instance(instance_id) is None  # active: nothing to record
        srv.terminate(instance_id, "policy: spend limit")
        _poll_until(poller, runs, lambda: registry.for_trace(trace_id) is not None)
        assert registry.for_trace(trace_id) == Termination(instance_id, trace_id, "policy: spend limit", "poll")
        polled = _gets(srv)
        time.sleep(0.3)  # longer than the interval
        poller.poll(runs, time.monotonic() + 5)
        assert _gets(srv) == polled  # terminated: never polled again
        transport.close()
        exporter.shutdown()


def test_a_token_that_may_not_read_runs_stops_polling_for_good_logged_once(caplog):
    with DevServer(token=TOKEN) as srv:
        exporter, instance_id, trace_id = _active_run(srv)
        srv.add_fault(Fault(path="/api/v1/agent_instance/", method="GET", status=403, times=-1))
        transport = BulkTransport(_config(srv), sdk_header="tests")
        poller = InstancePoller(transport, TerminationRegistry(), interval_s=0.1)
        runs = [(instance_id, trace_id)]
        with caplog.at_level(logging.DEBUG, logger="prefactor_otel"):
            _poll_until(poller, runs, lambda: poller.stopped)
            time.sleep(0.2)
            poller.poll(runs, time.monotonic() + 5)
        assert poller.stopped and _gets(srv) == 1
        warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) == 1 and "403" in warnings[0].getMessage()
        assert TOKEN not in caplog.text
        assert not transport.auth_failed  # the exporter's writes are not stopped by a read it may not make
        transport.close()
        exporter.shutdown()
        assert exporter.stats()["instances_finished"] == 1


def test_other_poll_failures_are_swallowed_and_the_run_is_polled_again():
    with DevServer(token=TOKEN) as srv:
        exporter, instance_id, trace_id = _active_run(srv)
        srv.terminate(instance_id, "halt")
        srv.add_fault(Fault(path="/api/v1/agent_instance/", method="GET", status=500, times=1))
        srv.add_fault(Fault(path="/api/v1/agent_instance/", method="GET", body_bytes=10, times=1))
        registry = TerminationRegistry()
        transport = BulkTransport(_config(srv), sdk_header="tests")
        poller = InstancePoller(transport, registry, interval_s=0.1)
        runs = [(instance_id, trace_id)]
        _poll_until(poller, runs, lambda: registry.for_trace(trace_id) is not None)
        assert registry.for_trace(trace_id) is not None and not poller.stopped
        assert poller.counters["control_poll_failures"] == 2
        transport.close()
        exporter.shutdown()


def test_an_interval_of_zero_polls_nothing():
    with DevServer(token=TOKEN) as srv:
        transport = BulkTransport(_config(srv), sdk_header="tests")
        poller = InstancePoller(transport, TerminationRegistry(), interval_s=0)
        poller.poll([(srv.new_id(), 1)], time.monotonic() + 5)
        assert poller.stopped and _gets(srv) == 0
        transport.close()


def test_the_poll_interval_setting():
    assert PrefactorConfig.load({}).control_poll_interval == 30.0  # as Prefactor's own SDKs
    assert PrefactorConfig.load({"PREFACTOR_CONTROL_POLL_INTERVAL": "0"}).control_poll_interval == 0.0
    assert PrefactorConfig.load({}, control_poll_interval=5).control_poll_interval == 5.0
    for bad in ("-1", "soon", "nan", "0.001"):
        with pytest.raises(ConfigError, match="PREFACTOR_CONTROL_POLL_INTERVAL"):
            PrefactorConfig.load({"PREFACTOR_CONTROL_POLL_INTERVAL": bad})


def test_the_poll_schedule_polls_a_quiet_run_sooner_and_never_later_than_the_interval():
    with DevServer(token=TOKEN) as srv:
        transport = BulkTransport(_config(srv), sdk_header="tests")
        poller = InstancePoller(transport, TerminationRegistry(), interval_s=30)
        # Sending (quiet under 5 s): its answers carry `control`, so the interval, as Prefactor's SDKs.
        assert [poller.gap(quiet) for quiet in (0, 1, 4.9)] == [30, 30, 30]
        # Quiet: every 5 s for the first 20 s, then a quarter of the quiet time, up to the interval.
        assert [poller.gap(quiet) for quiet in (5, 20, 40, 100, 120, 3600)] == [5, 5, 10, 25, 30, 30]
        # An interval shorter than the quiet gap is kept as it is.
        fast = InstancePoller(transport, TerminationRegistry(), interval_s=0.2)
        assert {fast.gap(quiet) for quiet in (0, 1, 60)} == {0.2}
        transport.close()


def test_a_quiet_run_is_polled_before_the_interval_and_a_busy_one_is_not():
    with (
        DevServer(token=TOKEN) as srv,
        httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {srv.token}"}, timeout=10) as client,
    ):
        exporter, quiet_id, quiet_trace = _active_run(srv)
        busy_id = register(client, srv)
        transport = BulkTransport(_config(srv), sdk_header="tests")
        registry = TerminationRegistry()
        poller = InstancePoller(transport, registry, interval_s=30)
        runs = [(quiet_id, quiet_trace), (busy_id, 7)]
        srv.terminate(quiet_id, "quiet stop")
        srv.terminate(busy_id, "busy stop")
        went_quiet = time.monotonic() - 10  # quiet for 10 s already: polled 5 s after it was first seen
        for _ in range(750):  # bounded: 750 x 20 ms, half the interval
            poller.poll(runs, time.monotonic() + 5, {quiet_id: went_quiet, busy_id: time.monotonic()})
            if registry.for_instance(quiet_id) is not None:
                break
            time.sleep(0.02)
        assert registry.for_instance(quiet_id) == Termination(quiet_id, quiet_trace, "quiet stop", "poll")
        assert registry.for_instance(busy_id) is None  # busy: its answers tell it; polled at the interval only
        assert [r.path for r in srv.requests if r.method == "GET"] == [f"/api/v1/agent_instance/{quiet_id}"]
        assert poller.counters["control_polls_early"] == 1
        transport.close()
        exporter.shutdown()
