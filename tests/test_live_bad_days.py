"""Live runs (PrefactorSpanProcessor) on a bad day: a fork while live spans are open, an exit with no shutdown()
call, SIGKILL with live spans active on the server, pool workers, a hostile server while spans start, and two
processes sharing one spool through an outage. Real processes, a real local server on 127.0.0.1; the autouse
fixture in conftest.py fails any test whose server saw a strict-mode finding.

Outer limits (`guard_s`, `wait_for`) only stop a hang; nothing here asserts how long something took.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

from prefactor_otel.devserver import DevServer, Fault
from tests.spans import exporter_for, processor_for
from tests.spans import wait_for as poll_until

ROOT = str(Path(__file__).resolve().parent.parent)
AGENT = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "helper"}
needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def wait_for(condition: Callable[[], Any], limit_s: float = 15.0) -> Any:
    return poll_until(condition, limit_s)


def statuses(srv: DevServer) -> dict[str, str]:
    return {span["payload"]["name"]: span["status"] for span in srv.spans()}


def _env(srv: DevServer, **extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": ROOT, **srv.env(), **extra}


def _reap(pid: int, limit_s: float = 60.0) -> int | None:
    """The exit code of a forked child; None (and the child killed) if it is still running after the limit."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return None


# ---------------------------------------------------------------------------------------------------------- fork


@needs_fork
def test_a_fork_inside_open_live_spans_leaves_them_to_the_parent_and_the_child_runs_its_own(tmp_path: Path) -> None:
    """The child's spans under the parent's live agent span make a run of the child's own (its top span a local
    root there, the OTel parent id in its payload), which the child finishes; it never finishes or re-creates the
    parent's live spans or run; a root the child starts is another live run of its own."""
    with DevServer() as srv:
        provider = TracerProvider(resource=Resource.create({"service.name": "fork-live"}))
        processor = processor_for(srv, spool_dir=str(tmp_path), finish_grace_seconds=0)
        provider.add_span_processor(processor)
        tracer = provider.get_tracer("fork")
        root = tracer.start_span("root")
        agent = tracer.start_span("invoke_agent helper", context=trace.set_span_in_context(root), attributes=AGENT)
        assert wait_for(lambda: statuses(srv) == {"root": "active", "invoke_agent helper": "active"})
        with trace.use_span(agent):
            pid = os.fork()
            if pid == 0:  # the child: work under the parent's agent span, then a run of its own
                code = 1
                try:
                    with tracer.start_as_current_span("invoke_agent child", attributes=AGENT):
                        with tracer.start_as_current_span("child step"):
                            pass
                    with tracer.start_as_current_span(
                        "child root", context=trace.set_span_in_context(trace.INVALID_SPAN)
                    ):
                        with tracer.start_as_current_span("invoke_agent child run", attributes=AGENT):
                            pass
                    provider.shutdown()
                    stats = processor.exporter.stats()
                    code = 0 if stats["spans_dropped"] == 0 and stats["spans_exported"] == 4 else 2
                    if code:
                        (tmp_path / "child-stats.txt").write_text(repr(stats))
                finally:
                    os._exit(code)
        child_code = _reap(pid)
        stats_file = tmp_path / "child-stats.txt"
        assert child_code == 0, stats_file.read_text() if stats_file.exists() else child_code
        runs = {i["id"]: i for i in srv.instances()}
        spans = {s["payload"]["name"]: s for s in srv.spans()}
        parent_run = spans["root"]["agent_instance_id"]
        assert runs[parent_run]["status"] == "active"  # the child did not finish the parent's run
        assert spans["root"]["status"] == "active" and spans["invoke_agent helper"]["status"] == "active"
        forked_run = spans["invoke_agent child"]["agent_instance_id"]
        assert forked_run != parent_run and runs[forked_run]["status"] == "complete"
        assert spans["invoke_agent child"]["parent_span_id"] is None
        helper_otel_id = spans["invoke_agent helper"]["payload"]["span_id"]
        assert spans["invoke_agent child"]["payload"]["parent_span_id"] == helper_otel_id
        assert "orphaned" not in spans["invoke_agent child"]["payload"]["metadata"]
        assert spans["child step"]["parent_span_id"] == spans["invoke_agent child"]["id"]
        assert {spans[n]["status"] for n in ("invoke_agent child", "child step")} == {"complete"}
        child_run = spans["child root"]["agent_instance_id"]
        assert child_run not in (parent_run, forked_run) and runs[child_run]["status"] == "complete"
        assert spans["invoke_agent child run"]["parent_span_id"] == spans["child root"]["id"]
        agent.end()
        root.end()
        assert provider.force_flush(10_000)
        assert {i["id"]: i["status"] for i in srv.instances()}[parent_run] == "complete"
        assert set(statuses(srv).values()) == {"complete"}
        assert len(srv.spans()) == 6  # nothing created twice
        assert processor.exporter.stats()["spans_dropped"] == 0
        provider.shutdown()


@needs_fork
def test_a_fork_right_after_a_live_root_started_knows_the_root_is_the_parents(tmp_path: Path) -> None:
    """The fork comes before the exporter's thread has read the root's start (a request handler that forks at
    once): the child still knows the root as its parent process's span, so its span under it is the local root of
    the child's own run at once, not a span waiting for a parent that never comes there (then orphaned)."""
    with DevServer() as srv:
        provider = TracerProvider(resource=Resource.create({"service.name": "fork-early"}))
        processor = processor_for(srv, spool=False, finish_grace_seconds=0)
        provider.add_span_processor(processor)
        tracer = provider.get_tracer("fork")
        with processor.exporter._send_lock:  # the sending thread cannot read the start before the fork
            root = tracer.start_span("root")
            with trace.use_span(root):
                pid = os.fork()
                if pid == 0:
                    code = 1
                    try:
                        with tracer.start_as_current_span("in the child"):
                            pass
                        provider.shutdown()
                        stats = processor.exporter.stats()
                        code = 0 if stats["spans_exported"] == 1 and stats["spans_orphaned"] == 0 else 2
                    finally:
                        os._exit(code)
        try:
            assert _reap(pid) == 0
            assert wait_for(lambda: statuses(srv) == {"root": "active", "in the child": "complete"})
            root.end()
            assert provider.force_flush(10_000)
            runs = {i["id"]: i["status"] for i in srv.instances()}
            assert len(runs) == 2 and set(runs.values()) == {"complete"}
            spans = {s["payload"]["name"]: s for s in srv.spans()}
            child = spans["in the child"]
            assert child["agent_instance_id"] != spans["root"]["agent_instance_id"]
            assert child["parent_span_id"] is None and "orphaned" not in child["payload"]["metadata"]
            assert child["payload"]["parent_span_id"] == spans["root"]["payload"]["span_id"]
        finally:
            provider.shutdown()


def _live_child(provider: TracerProvider, ready: Any, release: Any) -> None:
    """In a forked child: a live agent span, open until `release` is set. No export, no flush meanwhile: only the
    child's own sending thread can make it live."""
    with provider.get_tracer("child").start_as_current_span("invoke_agent child", attributes=AGENT):
        ready.set()
        release.wait(60)
    provider.force_flush(10_000)


@needs_fork
@pytest.mark.parametrize("how", ["os.fork", "multiprocessing"])
def test_a_forked_childs_live_span_is_active_on_the_server_while_it_runs(tmp_path: Path, how: str) -> None:
    """The child's sending thread starts at the fork, as the SDK's batch worker does: its live span reaches the
    server `active` while it runs, with no export from the child to start the thread."""
    import multiprocessing

    with DevServer() as srv:
        provider = TracerProvider(resource=Resource.create({"service.name": "fork-live-child"}))
        processor = processor_for(srv, spool_dir=str(tmp_path), finish_grace_seconds=0)
        provider.add_span_processor(processor)
        tracer = provider.get_tracer("fork")
        with tracer.start_as_current_span("root"):
            assert wait_for(lambda: statuses(srv) == {"root": "active"})
            context = multiprocessing.get_context("fork")
            ready, release = context.Event(), context.Event()
            if how == "os.fork":
                pid = os.fork()
                if pid == 0:
                    code = 1
                    try:
                        _live_child(provider, ready, release)
                        provider.shutdown()
                        code = 0
                    finally:
                        os._exit(code)
                child = None
            else:
                child = context.Process(target=_live_child, args=(provider, ready, release))
                child.start()
            try:
                assert ready.wait(15)
                assert wait_for(lambda: statuses(srv).get("invoke_agent child") == "active")
            finally:
                release.set()
                if child is None:
                    assert _reap(pid) == 0
                else:
                    child.join(60)
                    assert child.exitcode == 0
        assert provider.force_flush(10_000)
        assert statuses(srv) == {"root": "complete", "invoke_agent child": "complete"}
        assert {i["status"] for i in srv.instances()} == {"complete"}
        assert processor.exporter.stats()["spans_dropped"] == 0
        provider.shutdown()


@needs_fork
def test_a_forked_child_killed_with_its_live_span_open_leaves_nothing_active(tmp_path: Path) -> None:
    """SIGKILL while the child's live span (under the parent's live agent span) is active on the server: the
    parent finishes its own run as usual, nothing is refused, and the next process finishes the child's span and
    run `failed` from the child's journal."""
    with DevServer() as srv:
        provider = TracerProvider(resource=Resource.create({"service.name": "fork-killed"}))
        processor = processor_for(srv, spool_dir=str(tmp_path), finish_grace_seconds=0)
        provider.add_span_processor(processor)
        tracer = provider.get_tracer("fork")
        root = tracer.start_span("root")
        agent = tracer.start_span("invoke_agent helper", context=trace.set_span_in_context(root), attributes=AGENT)
        assert wait_for(lambda: statuses(srv) == {"root": "active", "invoke_agent helper": "active"})
        with trace.use_span(agent):
            pid = os.fork()
            if pid == 0:
                try:
                    with tracer.start_as_current_span("invoke_agent child", attributes=AGENT):
                        time.sleep(60)  # until killed
                finally:
                    os._exit(1)
        try:
            assert wait_for(lambda: statuses(srv).get("invoke_agent child") == "active")
        finally:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        agent.end()
        root.end()
        assert provider.force_flush(10_000)
        spans = {s["payload"]["name"]: s for s in srv.spans()}
        parent_run = spans["root"]["agent_instance_id"]
        assert {i["id"]: i["status"] for i in srv.instances()}[parent_run] == "complete"
        later = exporter_for(srv, spool_dir=str(tmp_path))  # the next process with this configuration
        later.shutdown()
        assert statuses(srv) == {"root": "complete", "invoke_agent helper": "complete", "invoke_agent child": "failed"}
        child = {s["payload"]["name"]: s for s in srv.spans()}["invoke_agent child"]
        assert child["result_payload"]["error"]["error_type"] == "SpanNotEnded"
        assert {i["status"] for i in srv.instances()} == {"complete", "failed"}
        assert later.stats()["instance_actions_dropped"] == {} and later.stats()["spans_dropped"] == 0
        assert processor.exporter.stats()["spans_dropped"] == 0
        assert processor.exporter.stats()["instance_actions_dropped"] == {}
        provider.shutdown()


# ---------------------------------------------------------------------------------------------------------- exit

EXIT_WITH_LIVE_SPANS = """
    import os
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from prefactor_otel import PrefactorSpanProcessor

    AGENT = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "helper"}
    processor_first = os.environ["PROCESSOR_FIRST"] == "1"
    if processor_first:
        processor = PrefactorSpanProcessor()  # its exporter's atexit hook runs after the provider's
    provider = TracerProvider(resource=Resource.create({"service.name": "exit-live"}))
    if not processor_first:
        processor = PrefactorSpanProcessor()  # its exporter's atexit hook runs first
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("exit")
    root = tracer.start_span("root")
    agent = tracer.start_span("invoke_agent helper", context=trace.set_span_in_context(root), attributes=AGENT)
    processor.exporter.force_flush(10_000)  # the run and both live spans are active on the server
    print("LIVE", flush=True)
    if os.environ["END_SPANS"] == "1":
        agent.end()
        root.end()  # every span ended, still within the finish grace period and the batch delay
    # no shutdown(): the interpreter exits
"""


@pytest.mark.parametrize("processor_first", ["1", "0"])
@pytest.mark.parametrize("end_spans", ["1", "0"])
def test_an_exit_with_no_shutdown_call_finishes_the_live_spans_and_the_run(
    processor_first: str, end_spans: str
) -> None:
    with DevServer() as srv:
        env = _env(
            srv,
            PROCESSOR_FIRST=processor_first,
            END_SPANS=end_spans,
            PREFACTOR_SPOOL="false",
            PREFACTOR_SHUTDOWN_TIMEOUT="10",
        )
        done = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(EXIT_WITH_LIVE_SPANS)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert "LIVE" in done.stdout
        (run,) = srv.instances()
        spans = {s["payload"]["name"]: s for s in srv.spans()}
        if end_spans == "1":
            assert run["status"] == "complete"
            assert {s["status"] for s in spans.values()} == {"complete"}
        else:
            assert run["status"] == "failed"
            assert {s["status"] for s in spans.values()} == {"failed"}
            assert {s["result_payload"]["error"]["error_type"] for s in spans.values()} == {"SpanNotEnded"}
        assert set(spans) == {"root", "invoke_agent helper"}


EXIT_INTO_A_BLACK_HOLE = """
    import sys
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from prefactor_otel import PrefactorSpanProcessor

    AGENT = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "helper"}
    provider = TracerProvider()
    processor = PrefactorSpanProcessor()
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("exit")
    root = tracer.start_span("root")
    agent = tracer.start_span("invoke_agent helper", context=trace.set_span_in_context(root), attributes=AGENT)
    print("STARTED", flush=True)
    sys.stdin.readline()  # the test's go-ahead: the sending thread read the starts, their creates are in the black hole
    # no shutdown(), spans open: the interpreter exits
"""


def test_an_exit_into_a_black_hole_keeps_its_live_spans_on_disk_and_the_next_process_finishes_them(
    tmp_path: Path,
) -> None:
    with DevServer() as srv:
        srv.add_fault(Fault(black_hole=True, times=-1))
        env = _env(
            srv,
            PREFACTOR_SPOOL_DIR=str(tmp_path),
            PREFACTOR_SHUTDOWN_TIMEOUT="2",
            PREFACTOR_EXPORT_TIMEOUT="2",
        )
        app = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(EXIT_INTO_A_BLACK_HOLE)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert wait_for(lambda: [r for r in srv.requests if r.path == "/api/v1/bulk"]), "nothing in the hole"
            out, err = app.communicate("go\n", timeout=60)  # guard only: the exit budget is 2 s
        finally:
            if app.poll() is None:
                app.kill()
                app.communicate()
        assert app.returncode == 0, err
        assert "STARTED" in out
        assert srv.spans() == []  # nothing got through
        srv.clear_faults()
        later = exporter_for(srv, spool_dir=str(tmp_path))
        later.shutdown()
        (run,) = srv.instances()
        assert run["status"] == "failed"
        spans = {s["payload"]["name"]: s for s in srv.spans()}
        assert {name: span["status"] for name, span in spans.items()} == {
            "root": "failed",
            "invoke_agent helper": "failed",
        }
        assert {span["result_payload"]["error"]["error_type"] for span in spans.values()} == {"SpanNotEnded"}
        assert later.stats()["spans_dropped"] == 0 and later.stats()["instance_actions_dropped"] == {}


# ---------------------------------------------------------------------------------------------------------- kill

KILLED_WITH_LIVE_SPANS = """
    import os, time
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from prefactor_otel import PrefactorSpanProcessor

    AGENT = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "helper"}
    provider = TracerProvider()
    processor = PrefactorSpanProcessor()
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("killed")
    root = tracer.start_span("root")
    with trace.use_span(root):
        agent = tracer.start_span("invoke_agent helper", attributes=AGENT)
        if os.environ["ENDED_STEP"] == "1":
            with trace.use_span(agent):
                with tracer.start_as_current_span("step done"):
                    pass
    processor.force_flush(10_000)  # the run, its live spans (active) and the ended step are on the server
    print("RUNNING", flush=True)
    time.sleep(60)
"""


@pytest.mark.parametrize("ended_step", ["1", "0"], ids=["a step ended", "nothing ended"])
def test_the_live_spans_of_a_killed_process_are_finished_failed_before_its_run(tmp_path: Path, ended_step: str) -> None:
    ended = {"step done": "complete"} if ended_step == "1" else {}
    with DevServer() as srv:
        app = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(KILLED_WITH_LIVE_SPANS)],
            env=_env(srv, PREFACTOR_SPOOL_DIR=str(tmp_path), ENDED_STEP=ended_step),
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert app.stdout is not None
            assert app.stdout.readline().strip() == "RUNNING"
        finally:
            app.kill()  # SIGKILL: no atexit, no shutdown
            app.wait(10)
        assert statuses(srv) == {"root": "active", "invoke_agent helper": "active", **ended}
        later = exporter_for(srv, spool_dir=str(tmp_path))  # the next process with this configuration
        later.shutdown()
        (run,) = srv.instances()
        assert run["status"] == "failed"
        spans = {s["payload"]["name"]: s for s in srv.spans()}
        assert statuses(srv) == {"root": "failed", "invoke_agent helper": "failed", **ended}
        for name in ("root", "invoke_agent helper"):
            assert spans[name]["result_payload"]["error"]["error_type"] == "SpanNotEnded"
            assert spans[name]["finished_at"] >= spans[name]["started_at"]
        assert run["finished_at"] >= max(s["finished_at"] for s in spans.values())
        assert later.stats()["instance_actions_dropped"] == {}
        assert later.stats()["spans_dropped"] == 0
        assert not list(tmp_path.glob("runs-*.journal"))


# ---------------------------------------------------------------------------------------------------------- pool


def _pool_task(n: int) -> int:
    tracer = trace.get_tracer("pool")
    with tracer.start_as_current_span(f"task-{n}"):
        with tracer.start_as_current_span(f"invoke_agent task-{n}", attributes=AGENT):
            with tracer.start_as_current_span("step"):
                pass
    return n


@needs_fork
def test_pool_workers_using_the_processor_finish_their_runs_when_they_end() -> None:
    import multiprocessing

    with DevServer() as srv:
        provider = TracerProvider(resource=Resource.create({"service.name": "pool-live"}))
        provider.add_span_processor(processor_for(srv, spool=False))  # the default 5 s batch delay
        previous = trace._TRACER_PROVIDER
        trace._TRACER_PROVIDER = provider  # what trace.set_tracer_provider does, once per process
        try:
            pool = multiprocessing.get_context("fork").Pool(2)
            assert sorted(pool.map(_pool_task, range(6))) == list(range(6))
            pool.close()
            pool.join()  # the workers exit normally (os._exit after multiprocessing's finalizers)
        finally:
            trace._TRACER_PROVIDER = previous
        runs = srv.instances()
        assert len(runs) == 6 and {i["status"] for i in runs} == {"complete"}
        assert len(srv.spans()) == 18 and set(statuses(srv).values()) == {"complete"}
        provider.shutdown()


def _stuck_pool_task(n: int) -> int:
    tracer = trace.get_tracer("pool")
    with tracer.start_as_current_span(f"stuck task-{n}"):
        with tracer.start_as_current_span(f"invoke_agent stuck-{n}", attributes=AGENT):
            trace.get_tracer_provider().force_flush(10_000)  # type: ignore[attr-defined]  # both live on the server
            time.sleep(60)  # until the pool is terminated
    return n


@needs_fork
def test_terminated_pool_workers_leave_no_live_span_or_run_active(tmp_path: Path) -> None:
    """`Pool.terminate()` (SIGTERM: no finalizer runs) while each worker has a live run open: the next process
    finishes the workers' live spans and runs, failed, from their journals."""
    import multiprocessing

    with DevServer() as srv:
        provider = TracerProvider(resource=Resource.create({"service.name": "pool-terminated"}))
        provider.add_span_processor(processor_for(srv, spool_dir=str(tmp_path)))
        previous = trace._TRACER_PROVIDER
        trace._TRACER_PROVIDER = provider
        try:
            pool = multiprocessing.get_context("fork").Pool(2)
            pool.map_async(_stuck_pool_task, range(2), chunksize=1)
            assert wait_for(lambda: len(srv.spans()) == 4 and len(srv.instances()) == 2, limit_s=30)
            pool.terminate()
            pool.join()
        finally:
            trace._TRACER_PROVIDER = previous
        assert set(statuses(srv).values()) == {"active"}
        later = exporter_for(srv, spool_dir=str(tmp_path))  # the next process with this configuration
        later.shutdown()
        assert [i["status"] for i in srv.instances()] == ["failed", "failed"]
        assert set(statuses(srv).values()) == {"failed"}
        assert later.stats()["spans_dropped"] == 0 and later.stats()["instance_actions_dropped"] == {}
        provider.shutdown()


# ---------------------------------------------------------------------------------------------------------- hostile


@pytest.mark.parametrize(
    "fault",
    [
        {"black_hole": True},
        {"trickle_bytes_per_s": 50},  # the real answer, committed, arriving too slowly
        {"endless_body": True},
    ],
    ids=["black hole", "trickle", "endless body"],
)
def test_a_hostile_server_never_blocks_span_starts_and_live_runs_recover_after_it(
    tmp_path: Path, fault: dict[str, Any]
) -> None:
    with DevServer() as srv:
        srv.add_fault(Fault(times=-1, **fault))
        processor = processor_for(
            srv, spool_dir=str(tmp_path), max_queued_spans=300, export_timeout=2, finish_grace_seconds=0
        )
        provider = TracerProvider(resource=Resource.create({"service.name": "hostile-live"}))
        provider.add_span_processor(processor)
        tracer = provider.get_tracer("hostile")
        steps = 0
        app_done = threading.Event()

        def application() -> None:
            nonlocal steps
            for n in range(2000):
                with tracer.start_as_current_span(f"run {n}"):
                    with tracer.start_as_current_span("invoke_agent helper", attributes=AGENT):
                        pass
                steps += 1
            app_done.set()

        app = threading.Thread(target=application)
        app.start()
        assert app_done.wait(60), f"the application's loop blocked after {steps} steps"  # guard only
        app.join()
        exporter = processor.exporter
        stats = exporter.stats()
        assert len(exporter._starts) <= 300  # the start queue holds at most max_queued_spans
        planner = exporter._pipeline.planner  # type: ignore[union-attr]
        assert planner is None or planner.open_spans <= 300
        srv.clear_faults()
        assert wait_for(lambda: provider.force_flush(30_000), limit_s=120)
        provider.shutdown()
        stats = exporter.stats()
        assert stats["starts_dropped"] > 0  # what did not fit was counted, never a wait on the application
        # Once the server is back, every run that reached it is finished (failed: a span whose end the batch
        # queue dropped was finished SpanNotEnded) and no span is left active; no finish came before its create
        # (the server would have refused it: counted as finish_rejected) and no run finish was refused.
        sent_runs = srv.instances()
        assert sent_runs and {i["status"] for i in sent_runs} <= {"complete", "failed"}
        assert set(statuses(srv).values()) <= {"complete", "failed"}
        assert not [reason for reason in stats["dropped_by_reason"] if reason.startswith("finish_rejected")]
        assert stats["instance_actions_dropped"] == {}


def test_a_run_whose_root_started_before_the_processor_is_finished_no_earlier_than_it_started(
    srv: DevServer,
) -> None:
    """An instrumentation set up late: the root started before the processor was added, so the run is known
    from a live child only; nothing has ended at shutdown. The run's finish must not be dated before its start
    (the API refuses that, and the run would stay active)."""
    provider = TracerProvider(resource=Resource.create({"service.name": "late-processor"}))
    tracer = provider.get_tracer("late")
    root = tracer.start_span("root started before the processor")
    processor = processor_for(srv, spool=False, max_wait_seconds=0)
    provider.add_span_processor(processor)
    agent = tracer.start_span("invoke_agent helper", context=trace.set_span_in_context(root), attributes=AGENT)
    assert wait_for(lambda: srv.spans())
    provider.shutdown()  # the application ends before its spans do
    assert [i["status"] for i in srv.instances()] == ["failed"]
    assert statuses(srv) == {"invoke_agent helper": "failed"}
    assert processor.exporter.stats()["instance_actions_dropped"] == {}
    agent.end()
    root.end()


# ---------------------------------------------------------------------------------------------------------- spool

SPOOL_PROCESS = """
    import os, sys, time
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from prefactor_otel import PrefactorSpanProcessor

    AGENT = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "helper"}
    name = sys.argv[1]
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    processor = PrefactorSpanProcessor(schedule_delay_millis=50)
    provider.add_span_processor(processor)
    tracer = provider.get_tracer(name)
    for n in range(3):  # finished runs
        with tracer.start_as_current_span(f"{name} run {n}"):
            with tracer.start_as_current_span(f"{name} agent {n}", attributes=AGENT):
                pass
    root = tracer.start_span(f"{name} open run")  # still running when the process ends
    agent = tracer.start_span(f"{name} open agent", context=trace.set_span_in_context(root), attributes=AGENT)
    processor.force_flush(5_000)  # the outage: everything goes to the spool
    print("SPOOLED", flush=True)
    if os.environ["HOW"] == "exit":
        sys.exit(0)  # an exit with no shutdown() call, spans still open
    time.sleep(60)
"""


@pytest.mark.parametrize("how", ["exit", "kill"])
def test_two_processes_on_one_spool_through_an_outage_replay_creates_before_finishes(tmp_path: Path, how: str) -> None:
    with DevServer() as srv:
        srv.add_fault(Fault(status=503, times=-1))
        env = _env(srv, PREFACTOR_SPOOL_DIR=str(tmp_path), HOW=how, PREFACTOR_SHUTDOWN_TIMEOUT="5")
        script = textwrap.dedent(SPOOL_PROCESS)
        apps = [
            subprocess.Popen([sys.executable, "-c", script, name], env=env, stdout=subprocess.PIPE, text=True)
            for name in ("a", "b")
        ]
        try:
            for app in apps:
                assert app.stdout is not None and app.stdout.readline().strip() == "SPOOLED"
            if how == "kill":
                for app in apps:
                    app.kill()
            for app in apps:
                app.wait(60)
        finally:
            for app in apps:
                app.kill()
        assert srv.instances() == []  # the outage: nothing arrived
        srv.clear_faults()
        later = exporter_for(srv, spool_dir=str(tmp_path))  # one of them restarts
        later.shutdown()
        runs = srv.instances()
        assert len(runs) == 8
        by_name = {s["payload"]["name"]: s for s in srv.spans()}
        assert len(by_name) == 16 == len(srv.spans())  # nothing duplicated
        for name in ("a", "b"):
            open_run = by_name[f"{name} open run"]["agent_instance_id"]
            assert by_name[f"{name} open run"]["status"] == "failed"
            assert by_name[f"{name} open agent"]["status"] == "failed"
            assert {i["status"] for i in runs if i["id"] == open_run} == {"failed"}
        assert sorted(i["status"] for i in runs) == ["complete"] * 6 + ["failed"] * 2
        assert later.stats()["instance_actions_dropped"] == {}
        assert later.stats()["spans_dropped"] == 0


# ---------------------------------------------------------------------------------------------------------- odd spans


def test_live_spans_an_instrumentation_ends_before_they_started_still_finish_and_so_does_their_run(
    srv: DevServer,
) -> None:
    """Instrumentations that pass their own clock readings (`end(end_time=...)`) can end a span before its start.
    A live span's finish and its run's finish must still be accepted: never dated before what they finish."""
    provider = TracerProvider(resource=Resource.create({"service.name": "odd-clock"}))
    processor = processor_for(srv, spool=False)
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("odd")
    root = tracer.start_span("root")
    agent = tracer.start_span("invoke_agent helper", context=trace.set_span_in_context(root), attributes=AGENT)
    assert wait_for(lambda: len(srv.spans()) == 2)  # both active on the server
    agent.end(end_time=agent.start_time - 1_000_000_000)  # type: ignore[operator]
    root.end(end_time=root.start_time - 1_000_000_000)  # type: ignore[operator]
    assert provider.force_flush(10_000)
    assert [i["status"] for i in srv.instances()] == ["complete"]
    assert statuses(srv) == {"root": "complete", "invoke_agent helper": "complete"}
    stats = processor.exporter.stats()
    assert stats["spans_dropped"] == 0 and stats["instance_actions_dropped"] == {}
    provider.shutdown()
