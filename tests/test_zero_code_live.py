"""Live runs and control with zero code: `opentelemetry-instrument python app.py` with only
`OTEL_TRACES_EXPORTER=prefactor` and PREFACTOR_* set (no OTEL_METRICS_EXPORTER / OTEL_LOGS_EXPORTER), and
opentelemetry-distro hidden, against a local server over real HTTP.

The applications are written as a user would: no set-up code; the control tests import prefactor_otel only for the
control API an agent calls (`on_terminate`, `raise_if_terminated`). Each application runs beside the test and waits
for its go-ahead at the steps the test observes (tests/instrumented.py), so what is checked is the order of
events, never a duration: "while the root is open" is while the application waits inside it, "right after
force_flush" is while it waits after its flush, before it ends.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from prefactor_otel.devserver import DevServer
from prefactor_otel.mapping.values import iso_from_ns
from tests.instrumented import InstrumentedApp, instrumented_env
from tests.spans import wait_for as poll_until

ZERO_CODE = {"OTEL_TRACES_EXPORTER": "prefactor"}

# The root stays open until the test has seen the run active; two agent spans live inside it, one succeeds with
# token usage and a late attribute, one fails.
LIVE_APP = """
from opentelemetry import trace

tracer = trace.get_tracer("zero-code-live")
with tracer.start_as_current_span("handle request") as root:
    say("root started", start_time_ns=root.start_time)
    helper_attributes = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "helper"}
    with tracer.start_as_current_span("invoke_agent helper", attributes=helper_attributes) as helper:
        say("helper started")
        wait_for_go("end helper")
        helper.set_attribute("gen_ai.usage.input_tokens", 7)
        helper.set_attribute("gen_ai.usage.output_tokens", 3)
        helper.set_attribute("app.answer_quality", "good")
        with tracer.start_as_current_span("chat m1", attributes={"gen_ai.operation.name": "chat"}):
            pass
    critic_attributes = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "critic"}
    try:
        with tracer.start_as_current_span("invoke_agent critic", attributes=critic_attributes):
            say("critic started")
            wait_for_go("fail critic")
            raise ValueError("the critic gave up")
    except ValueError:
        pass
    say("agents ended")
    wait_for_go("end root")
say("flushed", ok=trace.get_tracer_provider().force_flush(10_000))
wait_for_go("exit")
say("app done")
"""

# An agent loop stopped by Prefactor. With tool spans, each step is a span sent to Prefactor (whose answers can
# carry the termination); without, the loop sends nothing, so only the poll can tell it.
LOOP_APP = """
import sys
import threading
import time

import prefactor_otel
from opentelemetry import trace

TOOL_SPANS = {tool_spans}
heard = []
callback_fired = threading.Event()


def note(termination):
    heard.append({{"instance_id": termination.instance_id, "reason": termination.reason,
                  "source": termination.source}})
    callback_fired.set()


prefactor_otel.on_terminate(note)
tracer = trace.get_tracer("zero-code-looper")
tool_attributes = {{"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "search"}}
agent_attributes = {{"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "looper"}}
with tracer.start_as_current_span("invoke_agent looper", attributes=agent_attributes):
    say("agent started")
    try:
        for step in range(3000):  # bounded: termination ends it long before
            if TOOL_SPANS:
                with tracer.start_as_current_span("execute_tool search", attributes=tool_attributes):
                    prefactor_otel.raise_if_terminated()
            else:
                prefactor_otel.raise_if_terminated()
            time.sleep(0.02)
        say("loop ran out")
        sys.exit(1)
    except prefactor_otel.PrefactorTerminatedError as exc:
        # The callback runs on the exporter's thread, possibly just after the check saw the termination.
        say("terminated", reason=exc.reason, steps=step, callback_fired=callback_fired.wait(10), heard=heard)
    wait_for_go("carry on")
    # The run is over in Prefactor: nothing this trace does from now on may be added to it.
    for _ in range(3):
        with tracer.start_as_current_span("execute_tool after termination", attributes=tool_attributes):
            pass
say("flushed", ok=trace.get_tracer_provider().force_flush(10_000))
wait_for_go("exit")
say("app done")
"""


def wait_for(condition: Callable[[], Any], limit_s: float = 30.0) -> Any:
    return poll_until(condition, limit_s)


def spans_by_name(srv: DevServer) -> dict[str, dict[str, Any]]:
    return {span["payload"]["name"]: span for span in srv.spans()}


def live_span(srv: DevServer, name: str) -> dict[str, Any] | None:
    return spans_by_name(srv).get(name)


def end_cleanly(app: InstrumentedApp, token: str) -> None:
    app.go("exit")
    app.expect("app done")
    assert app.wait() == 0, app.stderr()
    stderr = app.stderr()
    assert "Traceback" not in stderr and "Failed to auto initialize" not in stderr, stderr
    assert token not in "".join(app.stdout) + stderr


def test_a_live_run_shows_while_its_root_is_open_and_is_finished_right_after_force_flush(
    tmp_path: Path, srv: DevServer
) -> None:
    # A finish grace far beyond the test: only force_flush can finish the run while the application waits (with
    # the default 6 s a slow machine could let the grace timer do it, and the test could not fail).
    env = instrumented_env(
        tmp_path, srv, "without-opentelemetry-distro", PREFACTOR_FINISH_GRACE_SECONDS="600", **ZERO_CODE
    )
    with InstrumentedApp(tmp_path, LIVE_APP, env) as app:
        root_start_ns = app.expect("root started")["start_time_ns"]
        app.expect("helper started")
        # The root is open: the run shows active, started at the root's start; the agent span is live.
        helper = wait_for(lambda: live_span(srv, "invoke_agent helper"))
        assert helper is not None, srv.snapshot()
        assert helper["status"] == "active" and helper["finished_at"] is None
        (run,) = srv.instances()
        assert run["status"] == "active"
        assert run["started_at"][:23] == iso_from_ns(root_start_ns)[:23]
        root = spans_by_name(srv)["handle request"]
        assert root["status"] == "active"
        assert helper["parent_span_id"] == root["id"]

        app.go("end helper")
        app.expect("critic started")
        critic = wait_for(lambda: live_span(srv, "invoke_agent critic"))
        assert critic is not None and critic["status"] == "active"
        app.go("fail critic")
        app.expect("agents ended")
        assert [i["status"] for i in srv.instances()] == ["active"]  # its root is still open

        app.go("end root")
        assert app.expect("flushed")["ok"] is True
        # Right after the flush, while the application still waits (no exit-time flush, no grace period):
        assert app.running()
        assert [i["status"] for i in srv.instances()] == ["complete"]
        spans = spans_by_name(srv)
        assert {name: span["status"] for name, span in spans.items()} == {
            "handle request": "complete",
            "invoke_agent helper": "complete",
            "chat m1": "complete",
            "invoke_agent critic": "failed",
        }
        assert len(srv.spans()) == 4  # each live span was finished, not created again
        helper = spans["invoke_agent helper"]
        assert helper["finished_at"] is not None
        result = helper["result_payload"]
        assert result["token_usage"]["prompt_tokens"] == 7
        assert result["params_at_end"]["metadata"] == {"app.answer_quality": "good"}
        assert spans["chat m1"]["parent_span_id"] == helper["id"]
        assert spans["invoke_agent critic"]["result_payload"]["error"]["error_type"] == "ValueError"
        end_cleanly(app, srv.token)
    assert len(srv.spans()) == 4 and [i["status"] for i in srv.instances()] == ["complete"]  # exit changed nothing


def terminate_from_the_command_line(srv: DevServer, run_id: str, reason: str) -> None:
    """`prefactor-otel terminate`, as an operator would (the API's terminate call, not the dev endpoint)."""
    proc = subprocess.run(
        [sys.executable, "-m", "prefactor_otel", "terminate", run_id, "--reason", reason],
        env={"PATH": "/usr/bin:/bin", "PREFACTOR_API_URL": srv.url, "PREFACTOR_API_TOKEN": srv.token},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(
    ("path", "env_extra"),
    [
        # No polling: only the answers to the steps' tool spans (sent in the SDK's 5 s batches) can tell.
        ("response", {"PREFACTOR_CONTROL_POLL_INTERVAL": "0"}),
        # The loop sends nothing after its live root: only the poll can tell.
        ("poll", {"PREFACTOR_CONTROL_POLL_INTERVAL": "0.5"}),
    ],
)
def test_a_terminated_run_stops_the_agent_loop_and_gets_no_more_spans(
    tmp_path: Path, srv: DevServer, path: str, env_extra: dict[str, str]
) -> None:
    env = instrumented_env(tmp_path, srv, "without-opentelemetry-distro", **ZERO_CODE, **env_extra)
    source = LOOP_APP.format(tool_spans=path == "response")
    with InstrumentedApp(tmp_path, source, env) as app:
        app.expect("agent started")
        active = wait_for(lambda: [i["id"] for i in srv.instances() if i["status"] == "active"])
        assert active, f"no active run while the agent's root is open: {srv.snapshot()}"
        (run_id,) = active
        assert wait_for(lambda: live_span(srv, "invoke_agent looper")), srv.snapshot()
        if path == "response":
            srv.terminate(run_id, "budget exceeded")
        else:
            terminate_from_the_command_line(srv, run_id, "budget exceeded")
        spans_at_termination = len(srv.spans(run_id))

        stopped = app.expect("terminated")
        assert stopped["reason"] == "budget exceeded"
        assert stopped["callback_fired"] is True
        assert stopped["heard"] == [{"instance_id": run_id, "reason": "budget exceeded", "source": path}]
        # What the server holds of the run once the application knows: from now on the exporter adds nothing.
        spans_when_told = len(srv.spans(run_id))
        if path == "poll":
            assert spans_when_told == spans_at_termination == 1  # the live root, nothing since

        app.go("carry on")
        assert app.expect("flushed")["ok"] is True
        assert len(srv.spans(run_id)) == spans_when_told
        assert "execute_tool after termination" not in spans_by_name(srv)
        end_cleanly(app, srv.token)
    # The exit-time shutdown added nothing either, and the run stays as the operator left it.
    assert len(srv.spans(run_id)) == spans_when_told
    (run,) = srv.instances()
    assert run["status"] == "terminated" and run["termination_reason"] == "budget exceeded"


def test_what_opentelemetry_instrument_loads_on_every_run_does_not_import_the_exporter() -> None:
    """`opentelemetry-instrument` loads our distro, configurator and environment-variable module on every run,
    whichever exporter it sets up: none of them may pull in the exporter, httpx or pydantic (~0.2 s per run)."""
    import subprocess
    import sys

    probe = (
        "import sys, prefactor_otel.sdk.zerocode, prefactor_otel.config.environment_variables\n"
        "from importlib.metadata import entry_points\n"
        "for group in ('opentelemetry_distro', 'opentelemetry_configurator', 'opentelemetry_environment_variables'):\n"
        "    [ep.load() for ep in entry_points(group=group, name='prefactor')]\n"
        "print(sorted(m for m in ('prefactor_otel.sdk.exporter', 'httpx', 'pydantic') if m in sys.modules))\n"
        "import prefactor_otel\n"
        "print(prefactor_otel.PrefactorSpanExporter.__name__, prefactor_otel.is_terminated())\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.splitlines() == ["[]", "PrefactorSpanExporter False"]
