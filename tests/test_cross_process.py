"""A trace that crosses two real processes (docs/cross-process.md).

Process A (an agent with its own PrefactorSpanProcessor) calls process B (a small HTTP server with its own
PrefactorSpanProcessor, extracting W3C `traceparent` with the OpenTelemetry propagator) on 127.0.0.1; both export
to one local server. Each process's part of the trace is a run of its own: no two parts share a run id, nothing is
refused, nothing stays `active`, the runs name their trace (`external_identifier`), B's top span records A's span
ids, and the page's run views show the parts together, B's part continuing A's span.

Then the run key alone, on the planner: today's ids without a part, the part's ids and trace name with one, a new
part of a trace after the first finished, and what stays dropped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import propagate
from prefactor_http.models import agent_instance as official_instance

from prefactor_otel.config.options import PrefactorConfig
from prefactor_otel.devserver import DevServer
from prefactor_otel.devserver.render import render_runs
from prefactor_otel.devserver.request_log import RequestLog
from prefactor_otel.devserver.runview import run_views
from prefactor_otel.mapping import SpanRecord, map_span
from prefactor_otel.model import ids
from prefactor_otel.pipeline.pipeline import Pipeline
from prefactor_otel.pipeline.planner import ForkOrigin, Planner
from prefactor_otel.transport.outcomes import ItemOutcome
from tests.spans import make_provider, planner_for_tests, wait_for

PRELUDE = """
import json, sys
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from prefactor_otel import PrefactorSpanProcessor

def provider_for(service):
    processor = PrefactorSpanProcessor()  # configured by the PREFACTOR_* variables the test sets
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(processor)
    return provider, processor

def say(**fields):
    print(json.dumps(fields), flush=True)
"""

# The agent: a root span, a client span calling B with `traceparent` injected. Modes: `same-ms` asks B to start
# its spans at the root's own start (the same millisecond: a run's id carries the millisecond its first span seen
# started, and that may be any span of the part); `twice` calls B a second time once the test says
# B's first part is over (a line on stdin).
SERVICE_A = """
b_url, mode = sys.argv[1], sys.argv[2]
provider, processor = provider_for("service-a")
tracer = provider.get_tracer("service-a")

def call_b(root, path):
    # `same-ms`: every span of A and B starts in the root's millisecond, whichever of them a process sees first.
    start = root.start_time if mode == "same-ms" else None
    with tracer.start_as_current_span("call tool service", kind=trace.SpanKind.CLIENT, start_time=start) as call:
        headers = {}
        propagate.inject(headers)
        if mode == "same-ms":
            headers["x-start-ns"] = str(root.start_time)
        if mode == "outlive":
            headers["x-outlive"] = "1"
        import urllib.request
        with urllib.request.urlopen(urllib.request.Request(b_url + path, headers=headers), timeout=30) as answer:
            answer.read()
    return call

attributes = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "planner"}
with tracer.start_as_current_span("invoke_agent planner", attributes=attributes) as root:
    calls = [call_b(root, "/work")]
    if mode == "twice":
        say(event="called once")
        sys.stdin.readline()
        calls.append(call_b(root, "/work"))
say(event="done", trace_id=f"{root.context.trace_id:032x}", root=f"{root.context.span_id:016x}",
    calls=[f"{c.context.span_id:016x}" for c in calls])
provider.shutdown()
say(event="stats", stats=processor.exporter.stats())
"""

# The tool service: for each request a server span continuing the caller's trace, with a child. `x-outlive`: it
# answers first, then waits for /release before its last child and its end (its work outlives A's root).
# A request's spans end on its handler thread after the answer: /quit first waits for every /work request's spans
# to have ended (`ended`), so the provider never shuts down under a span still running (on a busy machine the
# handler thread could be still waiting its turn when the provider shut down, and its spans were lost).
SERVICE_B = """
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

provider, processor = provider_for("service-b")
tracer = provider.get_tracer("service-b")
release = threading.Event()
ended = []  # one Event per /work request, set once its spans have ended
ended_lock = threading.Lock()

class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def answer(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
        self.wfile.flush()

    def do_GET(self):
        if self.path == "/release":
            release.set()
            return self.answer()
        if self.path == "/quit":
            with ended_lock:
                work = list(ended)
            for done in work:
                done.wait(60)  # a bound against a hang: the assertions then name what is missing
            self.answer()
            threading.Thread(target=server.shutdown).start()
            return
        done = threading.Event()
        with ended_lock:
            ended.append(done)
        carrier = {name.lower(): value for name, value in self.headers.items()}
        context = propagate.extract(carrier)
        start = int(carrier["x-start-ns"]) if "x-start-ns" in carrier else None
        span = tracer.start_span("handle tool request", context=context, kind=trace.SpanKind.SERVER, start_time=start)
        with trace.use_span(span, end_on_exit=False):
            with tracer.start_as_current_span("lookup", start_time=start):
                pass
            self.answer()
            if carrier.get("x-outlive") == "1":
                release.wait(60)
                with tracer.start_as_current_span("after the answer"):
                    pass
        span.end()
        done.set()

server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
say(port=server.server_address[1])
server.serve_forever()
provider.shutdown()
say(event="stats", stats=processor.exporter.stats())
"""


class Service:
    """A Python process running one of the services above, its stdout read line by line as JSON."""

    def __init__(self, tmp_path: Path, name: str, source: str, env: dict[str, str], *args: str) -> None:
        script = tmp_path / f"{name}.py"
        script.write_text(textwrap.dedent(PRELUDE) + textwrap.dedent(source))
        self.stderr_path = tmp_path / f"{name}.stderr"
        with self.stderr_path.open("w") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, str(script), *args],
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
            )

    def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, f"the service ended early: {self.stderr_path.read_text()[-3000:]}"
        return dict(json.loads(line))

    def write(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def wait(self) -> int:
        try:
            return self.proc.wait(timeout=60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _env(srv: DevServer) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PREFACTOR_"))}
    src = str(Path(__file__).resolve().parent.parent / "src")
    env.update(srv.env(), PYTHONPATH=os.pathsep.join([src, env.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    env["PREFACTOR_SPOOL"] = "false"  # nothing may wait on disk: what arrived is all there is
    env["OTEL_BSP_SCHEDULE_DELAY"] = "200"  # ended spans leave within 0.2 s, not 5 s: a shorter test, same path
    # Without a spool, what is not delivered within the exit budget is lost, and a busy machine can use 5 s (the
    # default) before the last request. The budget is not under test here and a delivered exit ends at once.
    env["PREFACTOR_SHUTDOWN_TIMEOUT"] = "60"
    return env


def _get(url: str) -> None:
    with urllib.request.urlopen(url, timeout=30) as answer:
        answer.read()


def _finished(srv: DevServer, count: int) -> bool:
    instances = srv.instances()
    return len(instances) == count and all(i["status"] == "complete" for i in instances)


def _cross(tmp_path: Path, mode: str) -> dict[str, Any]:
    """Run A calling B in `mode`; everything the assertions need."""
    rejected: list[str] = []

    def listen(entry: RequestLog) -> None:
        if entry.status >= 400 or (entry.detail and "rejected" in entry.detail):
            rejected.append(f"{entry.method} {entry.path} -> {entry.status} {entry.detail}")

    with DevServer(on_request=listen) as srv:
        env = _env(srv)
        service_b = Service(tmp_path, "service_b", SERVICE_B, env)
        try:
            port = service_b.read()["port"]
            b_url = f"http://127.0.0.1:{port}"
            service_a = Service(tmp_path, "service_a", SERVICE_A, env, b_url, mode)
            try:
                if mode == "twice":
                    assert service_a.read()["event"] == "called once"
                    # B's first part is over (its run finished) before A calls it again in the same trace.
                    assert wait_for(lambda: any(i["status"] == "complete" for i in srv.instances()), 30)
                    service_a.write("go on")
                done = service_a.read()
                stats_a = service_a.read()["stats"]
                assert service_a.wait() == 0, service_a.stderr_path.read_text()[-3000:]
            finally:
                service_a.stop()
            if mode == "outlive":
                # A has ended and its run is finished; B's span is still running, then ends.
                assert wait_for(lambda: any(i["status"] == "complete" for i in srv.instances()), 30)
                _get(b_url + "/release")
            _get(b_url + "/quit")
            stats_b = service_b.read()["stats"]
            assert service_b.wait() == 0, service_b.stderr_path.read_text()[-3000:]
        finally:
            service_b.stop()
        runs = 3 if mode == "twice" else 2
        wait_for(lambda: _finished(srv, runs), 10)
        return {
            "done": done,
            "stats": (stats_a, stats_b),
            "rejected": rejected,
            "instances": srv.instances(),
            "spans": srv.spans(),
            "snapshot": srv.snapshot(),
            "findings": srv.findings(),
        }


def _check(result: dict[str, Any], mode: str) -> None:
    done, spans, instances = result["done"], result["spans"], result["instances"]
    trace_hex = done["trace_id"]
    b_names = ["handle tool request", "lookup"] + (["after the answer"] if mode == "outlive" else [])
    calls = 2 if mode == "twice" else 1
    expected = sorted(["invoke_agent planner"] + ["call tool service", *b_names] * calls)

    # Every span exactly once, nothing refused, nothing left active, every run finished.
    assert sorted(s["payload"]["name"] for s in spans) == expected
    assert len({s["id"] for s in spans}) == len(spans)
    assert result["rejected"] == []
    assert result["findings"] == []
    for stats in result["stats"]:
        assert stats["spans_dropped"] == 0 and stats["instance_actions_dropped"] == {}, stats
    assert all(s["status"] == "complete" for s in spans)
    assert len(instances) == 1 + calls and all(i["status"] == "complete" for i in instances)

    # One run per part, each naming the trace it is part of.
    parts = {i["id"]: i for i in instances}
    assert len(parts) == 1 + calls
    for instance in instances:
        name = instance["external_identifier"]
        assert name.startswith(f"otel:{trace_hex}:"), name
    assert len({i["external_identifier"] for i in instances}) == len(instances)

    # A's run holds A's spans; each B run's top span records the A span it continues.
    by_run: dict[str, list[dict[str, Any]]] = {}
    for span in spans:
        by_run.setdefault(span["agent_instance_id"], []).append(span)
    (run_a,) = [run for run, own in by_run.items() if any(s["payload"]["name"] == "invoke_agent planner" for s in own)]
    assert sorted(s["payload"]["name"] for s in by_run[run_a]) == sorted(
        ["invoke_agent planner"] + ["call tool service"] * calls
    )
    b_runs = [run for run in by_run if run != run_a]
    assert len(b_runs) == calls
    continued = []
    for run in b_runs:
        assert sorted(s["payload"]["name"] for s in by_run[run]) == sorted(b_names)
        (top,) = [s for s in by_run[run] if s["payload"]["name"] == "handle tool request"]
        assert top["parent_span_id"] is None  # a local root: its parent is another run's span
        assert top["payload"]["trace_id"] == trace_hex
        assert top["payload"]["metadata"]["otel.parent.is_remote"] is True
        continued.append(top["payload"]["parent_span_id"])
    assert sorted(continued) == sorted(done["calls"])
    # A span whose parent is in its own process says nothing of the kind.
    assert all("otel.parent.is_remote" not in s["payload"]["metadata"] for s in by_run[run_a])

    # The page's data: the parts of the trace listed together, each B part continuing A's call span.
    views = run_views(result["snapshot"])
    assert [v["trace_id"] for v in views] == [trace_hex] * len(views)
    view_a = next(v for v in views if v["id"] == run_a)
    assert view_a["continues"] == []
    for view in views:
        if view["id"] == run_a:
            continue
        (link,) = view["continues"]
        assert link["run_id"] == run_a and link["span_name"] == "call tool service"
        assert link["otel_span_id"] in done["calls"]
    # ... and `prefactor-otel show` says so too.
    assert render_runs(result["snapshot"]).count(f"  continues call tool service of run {run_a}\n") == calls


def test_an_http_hop_makes_two_joined_runs(tmp_path: Path) -> None:
    _check(_cross(tmp_path, "hop"), "hop")


def test_a_hop_in_the_same_millisecond_never_shares_a_run_id(tmp_path: Path) -> None:
    """B's top span starts in the very millisecond A's root started: before each part had its own run key, both
    derived the same run id, and whichever finished first closed it under the other's live span."""
    result = _cross(tmp_path, "same-ms")
    _check(result, "same-ms")
    started = {s["payload"]["name"]: s["started_at"] for s in result["spans"]}
    assert started["invoke_agent planner"][:23] == started["handle tool request"][:23]  # the same millisecond


def test_b_ending_after_a_finishes_its_own_run(tmp_path: Path) -> None:
    """B answers, A's root ends and A's run is finished; B's work goes on, then ends: its run is its own."""
    result = _cross(tmp_path, "outlive")
    _check(result, "outlive")
    run_of = {s["payload"]["name"]: s["agent_instance_id"] for s in result["spans"]}
    finished = {i["id"]: i["finished_at"] for i in result["instances"]}
    assert finished[run_of["after the answer"]] > finished[run_of["invoke_agent planner"]]


def test_a_second_call_after_the_first_part_finished_opens_a_new_part(tmp_path: Path) -> None:
    """A calls B twice in one trace, the second time after B's first part is finished: the second call is a new
    part of the trace (a run of its own), not spans dropped as late spans of a finished run."""
    _check(_cross(tmp_path, "twice"), "twice")


# --------------------------------------------------------------------------- the run key, planner alone

PARTITION = 4242
REMOTE_PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
TRACE = 0x0AF7651916CD43DD8448EB211C80319C


def _planner(**options: Any) -> Planner:
    return planner_for_tests(PARTITION, **options)  # type: ignore[no-any-return]


def _part_records(start_ns: int | None = None) -> list[SpanRecord]:
    """A called service's part: its top span continuing REMOTE_PARENT, one child; ended child first."""
    provider, collector = make_provider("service-b")
    tracer = provider.get_tracer("b")
    context = propagate.extract({"traceparent": REMOTE_PARENT})
    with tracer.start_as_current_span("handle tool request", context=context, start_time=start_ns):
        with tracer.start_as_current_span("lookup", start_time=start_ns):
            pass
    return [map_span(s) for s in collector.spans]


def _run(planner: Planner, records: list[SpanRecord]) -> list[Any]:
    planner.add(records, now=0.0)
    items = planner.plan(now=0.0, flush=True)
    planner.apply({item.key: ItemOutcome("success") for item in items}, now=0.0)
    return items


def _register(items: list[Any]) -> dict[str, Any]:
    (register,) = [i.body for i in items if i.action == "agent_instances/register"]
    return dict(register)


def test_without_a_part_the_run_ids_are_todays() -> None:
    records = _part_records()
    register = _register(_run(_planner(), records))
    first = records[0].start_time_ns  # the first span the planner saw
    assert register["id"] == ids.instance_pfid(PARTITION, "agent", TRACE, first)
    assert "external_identifier" not in register


def test_a_part_keys_the_run_and_names_its_trace() -> None:
    records = _part_records()
    register = _register(_run(_planner(run_part="00aa"), records))
    first = records[0].start_time_ns  # the first span this part saw
    assert register["id"] == ids.instance_pfid(PARTITION, "agent\x1fpart\x1f00aa", TRACE, first)
    assert register["external_identifier"] == f"otel:{TRACE:032x}:00aa"
    # what Prefactor's own Python client models the register as takes it
    fields = {k: v for k, v in register.items() if k != "_type"}
    assert (
        official_instance.RegisterAgentInstanceRequest.model_validate(fields).external_identifier
        == (register["external_identifier"])
    )
    # the same part (a retry, a replay, a gateway replica restarted with its id) derives the same run
    assert _register(_run(_planner(run_part="00aa"), _part_records(records[0].start_time_ns)))["id"] == register["id"]


def test_two_parts_of_a_trace_in_the_same_millisecond_get_two_runs() -> None:
    start = 1_700_000_000_123_000_000
    a = _register(_run(_planner(run_part="aa"), _part_records(start)))
    b = _register(_run(_planner(run_part="bb"), _part_records(start + 999_999)))
    assert ids.timestamp_of(a["id"]) == ids.timestamp_of(b["id"])
    assert a["id"] != b["id"] and a["external_identifier"] != b["external_identifier"]
    # without parts, as before: one id for both (the collision the parts remove)
    assert (
        _register(_run(_planner(), _part_records(start)))["id"]
        == (_register(_run(_planner(), _part_records(start + 999_999)))["id"])
    )


def test_a_new_part_after_the_first_finished_is_a_run_of_its_own_without_a_part_it_is_dropped() -> None:
    planner = _planner(run_part="cc")
    first = _register(_run(planner, _part_records()))
    assert planner.open_traces == 0  # finished
    second_items = _run(planner, _part_records())  # the child comes first in the batch, as it ended first
    second = _register(second_items)
    assert second["id"] != first["id"] and second["external_identifier"] == f"otel:{TRACE:032x}:cc:1"
    assert [i.action for i in second_items].count("agent_spans/create") == 2
    assert planner.dropped == {}
    third = _register(_run(planner, _part_records()))
    assert third["external_identifier"] == f"otel:{TRACE:032x}:cc:2"

    whole = _planner()  # no part: a finished run stays finished, its later spans are late
    _run(whole, _part_records())
    assert [i.action for i in _run(whole, _part_records())] == []
    assert whole.dropped == {"instance_already_finished": 2}


def test_a_late_span_of_the_same_part_or_of_a_terminated_run_is_still_dropped() -> None:
    planner = _planner(run_part="dd")
    records = _part_records()
    _run(planner, records)
    child = next(r for r in records if not r.is_local_root)
    assert _run(planner, [child]) == []  # its parent is this process's: a late span, not a new part
    assert planner.dropped == {"instance_already_finished": 1}
    planner.terminate(TRACE)
    assert _run(planner, _part_records()) == []  # terminated in Prefactor: nothing more of it
    assert planner.dropped["run_terminated"] == 2


def test_a_forked_childs_planner_needs_a_part_of_its_own() -> None:
    with pytest.raises(ValueError, match="run part"):
        _planner(fork_origin=ForkOrigin({TRACE: {1}}))
    _planner(fork_origin=ForkOrigin({TRACE: {1}}), run_part="ee")


@pytest.mark.parametrize("bad", ["", " ", "a b", "x" * 65, "tab\there", "é", "unit\x1fsep"])
def test_a_run_part_that_a_key_and_a_name_cannot_carry_is_refused_at_construction(bad: str) -> None:
    with pytest.raises(ValueError, match="run_part"):
        _planner(run_part=bad)
    config = PrefactorConfig.load({}, api_url="http://127.0.0.1:9", api_token="pf_x", spool=False)
    with pytest.raises(ValueError, match="run_part"):
        Pipeline(config, None, None, partition=PARTITION, redactor=None, run_part=bad)  # type: ignore[arg-type]
    _planner(run_part="replica-7:eu/west")  # a gateway replica's id as it may come


# --------------------------------------------------------------------------- run views, by hand


def _instance(run: str, second: int, name: str | None) -> dict[str, Any]:
    started = f"2026-01-01T00:00:{second:02d}.000000Z"
    return {"id": run, "status": "complete", "started_at": started, "finished_at": started, "external_identifier": name}


def _span(run: str, span: str, trace: str, parent: str | None, *, remote: bool = False) -> dict[str, Any]:
    metadata = {"otel.parent.is_remote": True} if remote else {}
    payload = {
        "name": f"span {span}",
        "trace_id": trace,
        "span_id": span,
        "parent_span_id": parent,
        "metadata": metadata,
    }
    return {
        "id": f"pf-{span}",
        "agent_instance_id": run,
        "parent_span_id": None,
        "status": "complete",
        "payload": payload,
    }


def test_run_views_list_the_parts_of_a_trace_together_oldest_part_first() -> None:
    t1, t2, t3 = "1" * 32, "2" * 32, "3" * 32
    snapshot = {
        "instances": [
            _instance("a1", 1, f"otel:{t1}:aaaa"),  # trace 1: the caller's part ...
            _instance("solo", 2, None),  # another trace, between the parts in time
            _instance("b1", 3, f"otel:{t1}:bbbb"),  # ... and the callee's
            _instance("c1", 4, f"otel:{t1}:cccc:1"),  # ... and a second call's part elsewhere
            _instance("x2", 5, None),  # a run without a name: its trace from its spans
        ],
        "spans": [
            _span("a1", "a" * 16, t1, None),
            _span("solo", "5" * 16, t3, None),
            _span("b1", "b" * 16, t1, "a" * 16, remote=True),
            _span("c1", "c" * 16, t1, "9" * 16, remote=True),  # its parent is in no run here
            _span("x2", "e" * 16, t2, "f" * 16, remote=True),
        ],
    }
    views = run_views(snapshot)
    # newest first, trace 1's parts together where its newest (c1, :04) is, oldest part first
    assert [v["id"] for v in views] == ["x2", "a1", "b1", "c1", "solo"]
    assert [v["trace_id"] for v in views] == [t2, t1, t1, t1, t3]
    by_id = {v["id"]: v for v in views}
    assert by_id["a1"]["continues"] == []
    assert by_id["b1"]["continues"] == [
        {"otel_span_id": "a" * 16, "run_id": "a1", "span_id": "pf-" + "a" * 16, "span_name": "span " + "a" * 16}
    ]
    assert by_id["c1"]["continues"] == [{"otel_span_id": "9" * 16, "run_id": None, "span_id": None, "span_name": None}]
    assert "continues span 9999999999999999 of trace" in render_runs(snapshot)


def test_a_part_is_listed_after_the_part_it_continues_whatever_the_clocks_say() -> None:
    """Parts of one trace started in the same second, or the callee's host clock behind the caller's: the caller's
    part still comes first, and a part calling nothing held here keeps its place by time."""
    t1 = "1" * 32
    snapshot = {
        "instances": [
            _instance("callee", 1, f"otel:{t1}:bbbb"),  # its clock says it started first
            _instance("caller", 2, f"otel:{t1}:aaaa"),
            _instance("nested", 2, f"otel:{t1}:cccc"),  # called by the callee, same second as the caller
            _instance("other", 3, f"otel:{t1}:dddd"),  # continues a span held nowhere
        ],
        "spans": [
            _span("caller", "a" * 16, t1, None),
            _span("callee", "b" * 16, t1, "a" * 16, remote=True),
            _span("nested", "c" * 16, t1, "b" * 16, remote=True),
            _span("other", "d" * 16, t1, "9" * 16, remote=True),
        ],
    }
    assert [v["id"] for v in run_views(snapshot)] == ["caller", "callee", "nested", "other"]
