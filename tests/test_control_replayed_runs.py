"""Control and the spool of a process that ended: when Prefactor terminated a run of another process whose items
this process replays from the shared spool, the replay drops that run's items (counted, logged), and this
process's callbacks and checks never hear of it; this process's own runs are told as before. Over real HTTP,
with a real spool left by a process killed with SIGKILL."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

import prefactor_otel
from prefactor_otel import Termination
from prefactor_otel.devserver import DevServer, Fault
from tests.spans import processor_for, server_options, wait_for

AGENT = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "looper"}
TOOL = {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "search"}

# The process that will die: a live run whose root reaches the server, then two batches of tool spans the server
# does not take (the test makes it answer 503): each export fails and spills its items to the spool. Then it
# waits to be killed.
DYING_PROCESS = textwrap.dedent(
    """
    import json, sys
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from prefactor_otel import PrefactorSpanProcessor

    options = json.loads(sys.argv[1])
    processor = PrefactorSpanProcessor(**options)
    provider = TracerProvider(resource=Resource.create({"service.name": "dying"}))
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("dying")
    root = tracer.start_span("invoke_agent dying", attributes={"gen_ai.operation.name": "invoke_agent"})
    processor.force_flush(10_000)
    print("live", flush=True)
    sys.stdin.readline()  # the server now refuses every bulk request
    context = trace.set_span_in_context(root)
    for batch in range(2):
        for n in range(5):
            attributes = {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": f"late-{batch}-{n}"}
            tracer.start_span(f"execute_tool late-{batch}-{n}", context=context, attributes=attributes).end()
        processor.force_flush(3_000)
    print("spooled", flush=True)
    sys.stdin.readline()  # killed here
    """
)


@pytest.fixture
def heard() -> Iterator[list[Termination]]:
    seen: list[Termination] = []
    unsubscribe = prefactor_otel.on_terminate(seen.append)
    yield seen
    unsubscribe()


def _active(srv: DevServer) -> list[dict[str, Any]]:
    return [instance for instance in srv.instances() if instance["status"] == "active"]


def _spool_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.name.endswith(".json"))


def _leave_a_spool_behind(srv: DevServer, spool_dir: Path) -> str:
    """Run the dying process until its items are on disk, kill it; returns its run's id."""
    options = {
        **server_options(srv),
        "spool_dir": str(spool_dir),
        "export_timeout": 1,
        "control_poll_interval": 0,
        "schedule_delay_millis": 100,
    }
    child = subprocess.Popen(
        [sys.executable, "-c", DYING_PROCESS, json.dumps(options)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        assert child.stdout.readline().strip() == "live"
        runs = wait_for(lambda: _active(srv))
        assert len(runs) == 1
        srv.add_fault(Fault(path="/api/v1/bulk", status=503, times=1_000_000))
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "spooled"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    srv.clear_faults()
    return str(runs[0]["id"])


def test_a_terminated_run_of_a_dead_process_is_dropped_from_the_replay_and_never_reaches_this_process(
    srv: DevServer, tmp_path: Path, heard: list[Termination], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="prefactor_otel")
    dead_run = _leave_a_spool_behind(srv, tmp_path)
    assert len(_spool_files(tmp_path)) >= 2  # one file per failed export: the second is replayed after the first
    srv.terminate(dead_run, "stopped by an operator")

    # This process: its own live run, terminated in Prefactor too; and the dead process's spool to replay.
    processor = processor_for(
        srv, spool_dir=str(tmp_path), control_poll_interval=0, schedule_delay_millis=100, export_timeout=5
    )
    provider = TracerProvider(resource=Resource.create({"service.name": "replayer"}))
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("replayer")
    with tracer.start_as_current_span("invoke_agent mine", attributes=AGENT) as root:
        mine = wait_for(lambda: [r for r in _active(srv) if r["id"] != dead_run])
        assert len(mine) == 1
        srv.terminate(mine[0]["id"], "mine is over")
        with tracer.start_as_current_span("execute_tool search", attributes=TOOL):
            pass
        wait_for(lambda: prefactor_otel.is_terminated() and not _spool_files(tmp_path))
        own_trace = root.get_span_context().trace_id
        assert prefactor_otel.is_terminated()  # this process's own run: as before
    assert processor.force_flush(10_000)
    stats = processor.exporter.stats()
    processor.shutdown()

    # Only this process's run reached its callbacks.
    assert [(t.instance_id, t.trace_id, t.reason) for t in heard] == [(mine[0]["id"], own_trace, "mine is over")]
    assert not any(prefactor_otel.is_terminated(t) for t in range(1, 4))  # no stray trace ids were recorded
    # The dead process's run: recorded apart, logged, counted; its spooled items after the answer were dropped.
    assert stats["control_terminations_not_ours"] == 1
    assert any("not a run of this process" in r.getMessage() for r in caplog.records)
    dead_spans = {s["payload"].get("name") for s in srv.spans() if s.get("agent_instance_id") == dead_run}
    assert not any(str(name).startswith("execute_tool late-1") for name in dead_spans)
    assert stats["dropped_by_reason"].get("run_terminated", 0) >= 5
    assert not _spool_files(tmp_path)  # nothing left to replay, nothing replayed forever
    assert trace.get_current_span() is trace.INVALID_SPAN
