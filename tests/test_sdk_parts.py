"""The exporter's parts alone, without a PrefactorSpanExporter: its exit budget (sdk/exit_budget.py), its run control
(sdk/run_control.py) and its finisher thread (sdk/finisher.py), built from real parts against the local server."""

from __future__ import annotations

import threading
import time
from typing import Any

from prefactor_otel.config.options import PrefactorConfig
from prefactor_otel.control.terminations import SOURCE_RESPONSE, Termination, TerminationRegistry
from prefactor_otel.devserver import DevServer
from prefactor_otel.mapping import map_span
from prefactor_otel.mapping.options import MappingOptions
from prefactor_otel.model import ids
from prefactor_otel.model.http import BULK_CREATE_SPAN
from prefactor_otel.pipeline.delivery import Delivery
from prefactor_otel.pipeline.items import PlannedItem
from prefactor_otel.pipeline.pipeline import Pipeline
from prefactor_otel.sdk.exit_budget import ExitBudget
from prefactor_otel.sdk.finisher import Finisher
from prefactor_otel.sdk.run_control import RunControl
from prefactor_otel.transport.client import BulkTransport
from tests.spans import agent_trace, make_provider, server_options, wait_for


def _pipeline(srv: DevServer, **options: Any) -> tuple[PrefactorConfig, Delivery, Pipeline]:
    """A pipeline of one process as the exporter builds it (no spool), with the recorded spans of one agent run
    added, mapped as `export` maps them."""
    given = {**server_options(srv), **options}
    environ = given.pop("environ")
    config = PrefactorConfig.load(environ, **given)
    delivery = Delivery(BulkTransport(config, sdk_header="tests"), config)
    assert config.agent_id is not None
    pipeline = Pipeline(config, delivery, None, partition=ids.extract_partition(config.agent_id), redactor=None)
    provider, collector = make_provider()
    agent_trace(provider)
    mapping = MappingOptions.from_config(config)
    pipeline.add(map_span(span, mapping) for span in collector.spans)
    return config, delivery, pipeline


def _no_cap(_at: float) -> None:
    pass


def test_exit_budget_caps_the_client_once_and_every_deadline_after_the_exit_began():
    caps: list[float] = []
    budget = ExitBudget(2.0, caps.append)
    before = time.monotonic()
    assert not budget.started
    assert budget.deadline(60) >= before + 60  # no exit yet: the caller's own deadline
    assert caps == []
    budget.begin()
    budget.begin()  # the atexit hook and the finisher may both notice the exit
    assert budget.started and len(caps) == 1
    exit_at = caps[0]
    assert before + 2.0 <= exit_at
    assert budget.deadline(60) == exit_at  # no deadline passes the exit budget
    assert budget.deadline(0) <= exit_at


def test_run_control_stops_a_run_opened_here_before_the_application_hears_of_it():
    with DevServer() as srv:
        _config, delivery, pipeline = _pipeline(srv, finish_grace_seconds=60)  # the run stays open after a drain
        assert pipeline.drain(time.monotonic() + 10)
        assert pipeline.planner is not None
        [(instance_id, trace_id)] = pipeline.planner.active_runs()
        registry = TerminationRegistry()
        runs_open_when_told: list[list[tuple[str, int]]] = []

        def told(_termination: Termination) -> None:
            assert pipeline.planner is not None
            runs_open_when_told.append(pipeline.planner.active_runs())

        registry.add_callback(told)
        control = RunControl(pipeline, delivery, None, registry, ExitBudget(1.0, _no_cap), export_timeout=5)
        # An answer to a spooled item (trace id 0) of this run: its trace is found through the planner.
        item = PlannedItem("key", BULK_CREATE_SPAN, {"_type": BULK_CREATE_SPAN, "agent_instance_id": instance_id}, 0)
        control.on_terminate_answer(item, "stopped by the operator")
        assert registry.for_trace(trace_id) == Termination(instance_id, trace_id, "stopped by the operator", "response")
        assert runs_open_when_told == [[]]  # stopped in the planner first
        assert delivery.counters["control_terminations_not_ours"] == 0
        pipeline.close()


def test_run_control_records_a_run_not_opened_here_apart_from_the_application():
    with DevServer() as srv:
        _config, delivery, pipeline = _pipeline(srv)
        registry = TerminationRegistry()
        heard: list[Termination] = []
        registry.add_callback(heard.append)
        control = RunControl(pipeline, delivery, None, registry, ExitBudget(1.0, _no_cap), export_timeout=5)
        other_run = srv.new_id()  # a run of a process that ended, replayed from its spool
        item = PlannedItem("key", BULK_CREATE_SPAN, {"_type": BULK_CREATE_SPAN, "agent_instance_id": other_run}, 0)
        control.on_terminate_answer(item, "stopped by the operator")
        control.on_terminate_answer(item, "stopped by the operator")  # counted once
        assert registry.run_terminated(other_run)
        assert registry.for_instance(other_run) is None and heard == []
        assert registry.counters[f"terminations_not_ours:{SOURCE_RESPONSE}"] == 1
        assert delivery.counters["control_terminations_not_ours"] == 1
        pipeline.close()


def test_the_finisher_alone_delivers_and_finishes_a_run_no_export_call_sends():
    with DevServer() as srv:
        config, delivery, pipeline = _pipeline(srv, finish_grace_seconds=0)
        budget = ExitBudget(config.shutdown_timeout, _no_cap)
        control = RunControl(pipeline, delivery, None, TerminationRegistry(), budget, export_timeout=5)
        send_lock = threading.Lock()
        finisher = Finisher(pipeline, send_lock, budget, control, None, export_timeout=5, keep_alive=None)
        finisher.ensure_running()
        [run] = wait_for(lambda: [i for i in srv.instances() if i["status"] == "complete"])
        assert len(srv.spans(run["id"])) == 4
        finisher.stop()
        finisher.join(time.monotonic() + 10)
        with send_lock:  # the finisher holds it only while sending; it has stopped
            assert not pipeline.has_due_work(time.monotonic())
        pipeline.close()
