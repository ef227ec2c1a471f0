"""Shutdown and interpreter exit on a bad day: another thread mid-request, set-up order, exits with no shutdown().

Budgets are measured by benchmarks/hostile.py; these tests assert what happened (delivered, spooled, finished),
with outer guards only so that a regression shows up as a failure instead of a hang.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

from prefactor_otel.devserver import DevServer, Fault
from tests.spans import agent_trace, exporter_for, make_provider
from tests.test_delivery_chaos import add_chaos

TOKEN = "pf_exit_token"
ROOT = str(Path(__file__).resolve().parent.parent)


def _run(script: str, env: dict[str, str], guard_s: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        env={**os.environ, "PYTHONPATH": ROOT, **env},
        capture_output=True,
        text=True,
        timeout=guard_s,
    )


def test_shutdown_while_another_thread_is_mid_request_keeps_the_runs_on_disk(tmp_path, caplog):
    provider, collector = make_provider()
    for _ in range(3):
        agent_trace(provider)
    roots = [s for s in collector.spans if s.parent is None]
    # One whole run, and two runs still open (their roots have not ended): their spans wait for their parent.
    spans = [s for s in collector.spans if s.context.trace_id == roots[0].context.trace_id or s.parent is not None]
    with DevServer(token=TOKEN) as srv:
        # Every bulk request hangs for 2 s and then loses its connection: the exporting thread holds the send
        # lock through its whole export budget.
        srv.add_fault(Fault(delay_s=2.0, drop_connection=True, times=-1))
        exporter = exporter_for(srv, spool_dir=str(tmp_path), export_timeout=30)
        exporting = threading.Thread(target=exporter.export, args=(spans,))
        exporting.start()
        threading.Event().wait(0.5)  # the request is in flight: the server holds it for 2 s before dropping it
        assert exporting.is_alive() and not srv.requests
        caplog.set_level("WARNING", logger="prefactor_otel")
        exporter.shutdown(timeout_millis=1000)
        exporting.join(60)
        # one line says what was left on disk and that the next start re-sends it
        kept = [r.getMessage() for r in caplog.records if "kept in the spool" in r.getMessage()]
        assert len(kept) == 1 and str(tmp_path) in kept[0] and "re-sends them" in kept[0]
        srv.clear_faults()
        later = exporter_for(srv, spool_dir=str(tmp_path))  # the next process with this configuration
        later.shutdown()
        instances = srv.instances()
        # Nothing was lost and no run is left active: the open runs were spooled with their waiting spans and
        # their finish, and the next process delivered them.
        assert len(instances) == 3 and all(i["status"] == "complete" for i in instances)
        assert len(srv.spans()) == 10 and len({s["id"] for s in srv.spans()}) == 10


EXIT_WITHOUT_SHUTDOWN = """
    import os
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from prefactor_otel import PrefactorSpanExporter
    from tests.test_delivery_chaos import _trace

    exporter = PrefactorSpanExporter(finish_grace_seconds=0, {kwargs})
    if os.environ.get("EXPORTER_FIRST") != "1":
        raise SystemExit("set EXPORTER_FIRST")
    provider = TracerProvider(resource=Resource.create({{"service.name": "exit"}}))  # created after the exporter
    provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=20_000, schedule_delay_millis=50))
    tracer = provider.get_tracer("exit")
    for n in range({traces}):
        _trace(tracer, n)
    print("ENDED", flush=True)
    # no shutdown(): the TracerProvider's atexit hook runs first (it was registered last), then the exporter's
"""


def test_exit_budget_holds_when_the_exporter_was_created_before_the_provider():
    with DevServer(token=TOKEN) as srv:
        srv.add_fault(Fault(delay_s=40.0, times=-1))  # a backend that answers far too slowly
        script = EXIT_WITHOUT_SHUTDOWN.format(kwargs="export_timeout=30, shutdown_timeout=1, spool=False", traces=5)
        # Without an exit budget the final exports wait 30 s each: the guard stops the test instead of a hang.
        done = _run(script, {**srv.env(), "EXPORTER_FIRST": "1"}, guard_s=25.0)
        assert done.returncode == 0, done.stderr
        assert "ENDED" in done.stdout


def test_chaos_through_an_exit_with_no_shutdown_call_finishes_every_run():
    with DevServer(token=TOKEN) as srv:
        add_chaos(srv, seed=20261129, slow=False)
        script = EXIT_WITHOUT_SHUTDOWN.format(
            kwargs="export_timeout=60, shutdown_timeout=60, max_items_per_request=200, spool=False", traces=200
        )
        done = _run(script, {**srv.env(), "EXPORTER_FIRST": "1"}, guard_s=120.0)
        assert done.returncode == 0, done.stderr
        instances = srv.instances()
        assert len(instances) == 200 and all(i["status"] == "complete" for i in instances)
        stored = srv.spans()
        assert (
            len(stored) == 2000 and len({(s["payload"]["trace_id"], s["payload"]["span_id"]) for s in stored}) == 2000
        )


KILLED_MID_RUN = """
    import time
    from prefactor_otel import PrefactorSpanExporter
    from tests.spans import agent_trace, make_provider

    provider, collector = make_provider()
    agent_trace(provider)
    # max_wait 0: the steps go at once, as orphans; the grace period keeps the run, whose root has not come, open
    # (a run without its root is finished after max_wait + grace idle: docs/live-runs.md)
    exporter = PrefactorSpanExporter(finish_grace_seconds=600, max_wait_seconds=0)
    # everything but the root: the run is registered, started and has its steps, and is still going
    exporter.export([s for s in collector.spans if s.parent is not None])
    print("RUNNING", exporter.stats()["spans_exported"], flush=True)
    time.sleep(60)
"""


def test_a_run_left_active_by_a_killed_process_is_finished_by_the_next_one(tmp_path):
    with DevServer(token=TOKEN) as srv:
        env = {**srv.env(), "PREFACTOR_SPOOL_DIR": str(tmp_path)}
        app = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(KILLED_MID_RUN)],
            env={**os.environ, "PYTHONPATH": ROOT, **env},
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert app.stdout is not None
            assert app.stdout.readline().split() == ["RUNNING", "3"]
        finally:
            app.kill()  # SIGKILL: no atexit, no shutdown
            app.wait(10)
        assert [i["status"] for i in srv.instances()] == ["active"]
        later = exporter_for(srv, spool_dir=str(tmp_path))  # the next process with this configuration
        later.shutdown()
        (instance,) = srv.instances()
        assert instance["status"] == "failed" and instance["finished_at"] is not None
        assert later.stats()["instance_actions_dropped"] == {}
        assert not list(tmp_path.glob("runs-*.journal"))  # the dead process's journal was taken and removed
