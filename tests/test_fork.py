"""Pre-fork servers (gunicorn --preload style): the exporter is created in the parent, spans come from workers."""

from __future__ import annotations

import os
import sys

import pytest
from opentelemetry import trace as trace_api
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from prefactor_otel.devserver import DevServer
from tests.spans import agent_trace, exporter_for


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_spans_from_forked_workers_are_delivered():
    with DevServer(token="pf_fork_token") as srv:
        exporter = exporter_for(
            srv,
            finish_grace_seconds=0,
        )
        provider = TracerProvider(resource=Resource.create({"service.name": "prefork"}))
        provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=50))
        agent_trace(provider)  # the parent exports too, so its client and ticker exist before the fork
        provider.force_flush()
        assert exporter.stats()["spans_exported"] == 4
        children = []
        for _ in range(3):
            pid = os.fork()
            if pid == 0:  # worker
                code = 1
                try:
                    for _ in range(5):
                        agent_trace(provider)
                    provider.shutdown()
                    # a child starts with counters of its own, not its parent's
                    code = 0 if exporter.stats()["spans_exported"] == 20 else 2
                finally:
                    sys.stdout.flush()
                    os._exit(code)
            children.append(pid)
        codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in children]
        provider.shutdown()
        assert codes == [0, 0, 0]
        assert len(srv.spans()) == 4 + 3 * 5 * 4
        assert len(srv.instances()) == 1 + 15
        assert all(i["status"] == "complete" for i in srv.instances())


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_fork_inside_an_open_run_gives_the_child_a_run_of_its_own():
    """The child inherits the parent's open root span and its exporter. It is a process of its own: its spans make
    a run of its own (its top span a local root, the OTel parent id kept in its payload), which it finishes; it
    never sends its copy of the parent's spans nor touches the run the parent is still writing to."""
    with DevServer(token="pf_fork_token") as srv:
        exporter = exporter_for(srv, finish_grace_seconds=0, spool=False)
        provider = TracerProvider(resource=Resource.create({"service.name": "fork-open"}))
        provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=50))
        tracer = provider.get_tracer("fork")
        with tracer.start_as_current_span("invoke_agent parent", attributes={"gen_ai.operation.name": "invoke_agent"}):
            with tracer.start_as_current_span("before fork"):
                pass
            provider.force_flush()  # "before fork" waits for its parent, the open root
            pid = os.fork()
            if pid == 0:  # the child: its span, then it leaves the `with` (ending its root copy)
                with tracer.start_as_current_span("in the child"):
                    pass
            else:
                child_code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
                (child_run,) = srv.instances()  # the child's own, finished by the child
                assert child_run["status"] == "complete"
                with tracer.start_as_current_span("after the child left"):
                    pass
        if pid == 0:
            code = 1
            try:
                provider.shutdown()
                stats = exporter.stats()
                code = 0 if stats["spans_ignored_forked_copy"] == 1 and stats["spans_exported"] == 1 else 2
            finally:
                os._exit(code)
        provider.shutdown()
        assert child_code == 0
        runs = {i["id"]: i["status"] for i in srv.instances()}
        assert len(runs) == 2 and set(runs.values()) == {"complete"}
        spans = {s["payload"]["name"]: s for s in srv.spans()}
        assert sorted(spans) == ["after the child left", "before fork", "in the child", "invoke_agent parent"]
        parent_run = spans["invoke_agent parent"]["agent_instance_id"]
        assert {spans[n]["agent_instance_id"] for n in ("before fork", "after the child left")} == {parent_run}
        child = spans["in the child"]
        assert child["agent_instance_id"] == child_run["id"] != parent_run and child["parent_span_id"] is None
        assert child["payload"]["parent_span_id"] == spans["invoke_agent parent"]["payload"]["span_id"]
        assert exporter.stats()["spans_dropped"] == 0


def _worker_trace(n: int) -> int:
    from opentelemetry import trace

    tracer = trace.get_tracer("pool")
    with tracer.start_as_current_span(f"invoke_agent task-{n}", attributes={"gen_ai.operation.name": "invoke_agent"}):
        with tracer.start_as_current_span("step"):
            pass
    return n


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_multiprocessing_pool_workers_deliver_and_finish_their_runs_when_they_end():
    """Pool workers end with os._exit(): no atexit, no provider shutdown. Their last spans sit in the batch
    processor's queue (5 s schedule); the exporter flushes and finishes them through multiprocessing's finalizers."""
    import multiprocessing

    from opentelemetry import trace

    with DevServer(token="pf_pool_token") as srv:
        exporter = exporter_for(srv, finish_grace_seconds=0, spool=False)
        provider = TracerProvider(resource=Resource.create({"service.name": "pool"}))
        provider.add_span_processor(BatchSpanProcessor(exporter))  # the default 5 s schedule delay
        previous = trace._TRACER_PROVIDER
        trace._TRACER_PROVIDER = provider  # what trace.set_tracer_provider does, once per process
        try:
            pool = multiprocessing.get_context("fork").Pool(2)
            assert sorted(pool.map(_worker_trace, range(6))) == list(range(6))
            pool.close()
            pool.join()  # the workers exit normally
        finally:
            trace._TRACER_PROVIDER = previous
        provider.shutdown()
        instances = srv.instances()
        assert len(instances) == 6 and all(i["status"] == "complete" for i in instances)
        assert len(srv.spans()) == 12


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_child_keeps_its_own_spans_even_when_their_start_time_is_before_the_fork():
    import time

    with DevServer(token="pf_fork_token") as srv:
        exporter = exporter_for(srv, finish_grace_seconds=0, spool=False)
        provider = TracerProvider(resource=Resource.create({"service.name": "fork-backdated"}))
        provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=50))
        tracer = provider.get_tracer("fork")
        started_before_fork = time.time_ns()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                span = tracer.start_span("backdated", start_time=started_before_fork)  # a trace of its own
                span.end()
                provider.shutdown()
                stats = exporter.stats()
                code = 0 if stats["spans_exported"] == 1 and stats["spans_ignored_forked_copy"] == 0 else 2
            finally:
                os._exit(code)
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
        provider.shutdown()
        assert [s["payload"]["name"] for s in srv.spans()] == ["backdated"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_child_span_under_the_parents_open_span_is_kept_when_the_parent_finishes_its_run_first(tmp_path):
    """The span current at the fork is the parent's and still open: the child's span under it must not wait in
    the child for a parent that never comes there (then be refused by a run the parent has finished meanwhile). The
    child's part of the trace is a run of the child's own; its top span keeps the OTel parent id in its payload."""
    go_r, go_w = os.pipe()
    with DevServer(token="pf_fork_token") as srv:
        exporter = exporter_for(srv, finish_grace_seconds=0, spool=False)
        provider = TracerProvider(resource=Resource.create({"service.name": "fork-waiting"}))
        provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=50))
        tracer = provider.get_tracer("fork")
        root = tracer.start_span("invoke_agent parent", attributes={"gen_ai.operation.name": "invoke_agent"})
        with trace_api.use_span(root):
            with tracer.start_as_current_span("before fork"):
                pass
            provider.force_flush()  # "before fork" waits in the planner for its parent, the open root
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    with tracer.start_as_current_span("in the child"):
                        pass
                    provider.force_flush()
                    os.read(go_r, 1)  # the parent has finished its run by now
                    provider.shutdown()
                    stats = exporter.stats()
                    code = 0 if stats["spans_dropped"] == 0 and stats["spans_exported"] == 1 else 2
                    if code:
                        (tmp_path / "child-stats.txt").write_text(repr(stats))
                finally:
                    os._exit(code)
        root.end()
        provider.force_flush()
        os.write(go_w, b"x")
        child_code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        provider.shutdown()
        os.close(go_r)
        os.close(go_w)
        stats_file = tmp_path / "child-stats.txt"
        assert child_code == 0, stats_file.read_text() if stats_file.exists() else child_code
        spans = {s["payload"]["name"]: s for s in srv.spans()}
        assert sorted(spans) == ["before fork", "in the child", "invoke_agent parent"]
        runs = {i["id"]: i["status"] for i in srv.instances()}
        assert set(runs.values()) == {"complete"}
        child_run = spans["in the child"]["agent_instance_id"]
        assert child_run != spans["invoke_agent parent"]["agent_instance_id"]
        assert spans["in the child"]["parent_span_id"] is None
        assert spans["in the child"]["payload"]["parent_span_id"] == spans["invoke_agent parent"]["payload"]["span_id"]
        assert exporter.stats()["spans_dropped"] == 0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_child_learns_the_parents_spans_from_the_copies_it_ends():
    """Forked under root > middle > current, the child ends its copies of current and middle (never sent), which
    tells it that root is its parent process's span too: its span under root is a local root of its own run, not
    a span waiting for a parent that never comes there and then orphaned."""
    with DevServer(token="pf_fork_token") as srv:
        exporter = exporter_for(srv, finish_grace_seconds=0, spool=False)
        provider = TracerProvider(resource=Resource.create({"service.name": "fork-copies"}))
        provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=50))
        tracer = provider.get_tracer("fork")
        root = tracer.start_span("root")
        middle = tracer.start_span("middle", context=trace_api.set_span_in_context(root))
        current = tracer.start_span("current", context=trace_api.set_span_in_context(middle))
        with trace_api.use_span(current):
            pid = os.fork()
        if pid == 0:
            code = 1
            try:
                current.end()
                middle.end()
                provider.force_flush()  # the copies are exported (and ignored) before the child's span ends
                with trace_api.use_span(root), tracer.start_as_current_span("in the child"):
                    pass
                provider.shutdown()
                stats = exporter.stats()
                ok = stats["spans_ignored_forked_copy"] == 2 and stats["spans_exported"] == 1
                code = 0 if ok and stats["spans_orphaned"] == 0 else 2
            finally:
                os._exit(code)
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
        current.end()
        middle.end()
        root.end()
        provider.shutdown()
        spans = {s["payload"]["name"]: s for s in srv.spans()}
        assert sorted(spans) == ["current", "in the child", "middle", "root"]
        child = spans["in the child"]
        assert child["parent_span_id"] is None and "orphaned" not in child["payload"]["metadata"]
        assert child["agent_instance_id"] != spans["root"]["agent_instance_id"]
        assert {i["status"] for i in srv.instances()} == {"complete"}


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.parametrize("set_up", ["exporter alone", "processor"])
def test_a_childs_later_work_in_a_trace_open_at_the_fork_is_kept_after_its_run_there_finished(tmp_path, set_up):
    """A pool worker forked inside a span runs several tasks of that trace, its run finishing in between (every
    span of the first task ended and was flushed): a later task is a new run of the child's, never a drop."""
    from prefactor_otel import PrefactorSpanProcessor

    with DevServer(token="pf_fork_token") as srv:
        if set_up == "processor":
            processor = PrefactorSpanProcessor(exporter_for(srv, spool=False), schedule_delay_millis=50)
            exporter = processor.exporter
        else:
            exporter = exporter_for(srv, spool=False)
            processor = BatchSpanProcessor(exporter, schedule_delay_millis=50)
        provider = TracerProvider(resource=Resource.create({"service.name": "fork-tasks"}))
        provider.add_span_processor(processor)
        tracer = provider.get_tracer("fork")
        with tracer.start_as_current_span("invoke_agent parent", attributes={"gen_ai.operation.name": "invoke_agent"}):
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    for task in range(3):
                        with tracer.start_as_current_span(f"task-{task}"), tracer.start_as_current_span("step"):
                            pass
                        provider.force_flush()  # the task's run is over, and finished
                    provider.shutdown()
                    stats = exporter.stats()
                    code = 0 if stats["spans_dropped"] == 0 and stats["spans_exported"] == 6 else 2
                    if code:
                        (tmp_path / "child-stats.txt").write_text(repr(stats))
                finally:
                    os._exit(code)
            child_code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        provider.shutdown()
        stats_file = tmp_path / "child-stats.txt"
        assert child_code == 0, stats_file.read_text() if stats_file.exists() else child_code
        spans = srv.spans()
        assert len(spans) == 7 and {s["status"] for s in spans} == {"complete"}
        runs = {i["id"]: i["status"] for i in srv.instances()}
        assert len(runs) == 4 and set(runs.values()) == {"complete"}
        tasks = [s for s in spans if s["payload"]["name"].startswith("task-")]
        assert len({s["agent_instance_id"] for s in tasks}) == 3
        assert all(s["parent_span_id"] is None for s in tasks)
