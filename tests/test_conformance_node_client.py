"""The dev server judged by Prefactor's official Node client, `@prefactor/core` 0.2.9.

`tests/node_client/` is a small npm project (package.json and package-lock.json pin `@prefactor/core`, its peer
`zod` and a Node 22 binary, the client's declared engine). The session fixture installs it with `npm ci` when its
`node_modules` is missing or stale (tests/node_install.py), once per folder however many test workers
(pytest-xdist) start at once: they take turns under a file lock, and the first installs; without npm the tests
FAIL, saying to install Node.js. Each test starts a DevServer on 127.0.0.1 and runs one scenario of `driver.mjs`
with that Node 22 (a subprocess, bounded), which prints a JSON report of what the client saw: every HTTP exchange,
the values and errors its calls returned, and everything it logged. The tests assert on that report and on the
server's state, including that the client's requests leave no strict-mode finding.

Runs on the test thread only; each test owns its server (the `srv` fixture of conftest.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from prefactor_otel.devserver import DevServer
from tests.node_install import install_node_project

NODE_CLIENT_DIR = Path(__file__).parent / "node_client"
DRIVER = NODE_CLIENT_DIR / "driver.mjs"
# A safety limit against a hang only; no test asserts anything about time.
SCENARIO_LIMIT_S = 120.0
NODE_MAJOR = 22  # @prefactor/core 0.2.9 declares engines: node >= 22

Report = dict[str, Any]


def install_node_client(project: Path, search_path: str | None = None) -> Path:
    return install_node_project(project, search_path, node_major=NODE_MAJOR)


@pytest.fixture(scope="session")
def node() -> Path:
    return install_node_client(NODE_CLIENT_DIR)


def run_scenario(node: Path, srv: DevServer, scenario: str) -> Report:
    # The user's own PREFACTOR_* settings (e.g. PREFACTOR_RETRY_ON_STATUS_CODES, read by the client's createConfig)
    # must not change what the client does here.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFACTOR_")}
    env.update(srv.env(), PREFACTOR_LOG_LEVEL="debug")
    try:
        done = subprocess.run(
            [str(node), str(DRIVER), scenario],
            cwd=NODE_CLIENT_DIR,
            env=env,
            capture_output=True,
            text=True,
            timeout=SCENARIO_LIMIT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"driver scenario {scenario} did not finish; its stderr ends:\n{str(exc.stderr)[-4000:]}")
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        pytest.fail(
            f"driver scenario {scenario} exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
        )
    report: Report = json.loads(lines[-1])
    assert report["ok"], report.get("error")
    assert report["node_version"].startswith(f"v{NODE_MAJOR}.")
    assert srv.token not in lines[-1]
    return report


def logged(report: Report, *levels: str) -> list[str]:
    return [entry["text"] for entry in report["logs"] if entry["level"] in levels]


def answers(report: Report, method: str, pattern: str) -> list[int | str]:
    """Statuses (or network error codes) of the client's requests whose path matches `pattern`, in order."""
    return [
        r.get("status", r.get("error"))
        for r in report["requests"]
        if r["method"] == method and re.fullmatch(pattern, r["path"])
    ]


def spans_by_name(srv: DevServer) -> dict[str, dict[str, Any]]:
    # The client's own span name travels in the payload envelope (payload.name).
    return {s["payload"]["name"]: s for s in srv.spans()}


ID = "[0-9a-z]{32}"


# --------------------------------------------------------------------------- installation behaviour


def test_without_npm_the_install_fails_saying_to_install_node(tmp_path: Path) -> None:
    shutil.copy(NODE_CLIENT_DIR / "package.json", tmp_path / "package.json")
    with pytest.raises(pytest.fail.Exception, match=r"npm is not on PATH: install Node\.js"):
        install_node_client(tmp_path, search_path=str(tmp_path))


# --------------------------------------------------------------------------- the documented flow (HttpTransport)


def test_documented_flow_nested_spans_failure_and_token_usage(node: Path, srv: DevServer) -> None:
    report = run_scenario(node, srv, "core_flow")

    assert logged(report, "warn", "error") == []
    assert all(r.get("status") == 200 for r in report["requests"]), report["requests"]
    assert report["thrown"]["error"] == {"name": "TypeError", "message": "tool exploded"}
    assert answers(report, "POST", f"/api/v1/agent_spans/{ID}/finish") == [200]  # the agent span, created active
    (instance,) = srv.instances()
    assert instance["status"] == "complete"
    # The Node client never sends environment_id: the run lands in the token's (here the seeded) environment.
    assert instance["environment_id"] == srv.environment_id and instance["agent_deployment_id"]

    spans = spans_by_name(srv)
    assert set(spans) == {"support-agent", "plan", "lookup", "broken-tool", "chat"}
    agent, plan, lookup, broken, chat = (spans[n] for n in ("support-agent", "plan", "lookup", "broken-tool", "chat"))
    assert (agent["schema_name"], agent["status"], agent["parent_span_id"]) == ("agent", "complete", None)
    assert agent["result_payload"] == {"answer": "done"} and agent["schema_title"] == "Agent run"
    assert (plan["schema_name"], plan["parent_span_id"], plan["result_payload"]) == (
        "llm",
        agent["id"],
        {"response": "planned"},
    )
    # The tool ended before its parent: the client held it until the parent's create answered, and created it in a
    # parent that was already complete.
    assert (lookup["schema_name"], lookup["parent_span_id"], lookup["status"]) == ("tool", plan["id"], "complete")
    assert lookup["payload"]["inputs"] == {"q": 1} and lookup["result_payload"] == {"hits": 2}
    assert (broken["status"], broken["parent_span_id"]) == ("failed", agent["id"])
    assert broken["result_payload"]["error_type"] == "TypeError"
    assert broken["result_payload"]["message"] == "tool exploded"
    assert broken["payload"]["error"]["message"] == "tool exploded"
    assert chat["payload"]["token_usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    assert {s["payload"]["trace_id"] for s in spans.values()} == {agent["payload"]["trace_id"]}
    assert all(s["finished_at"] is not None for s in spans.values())
    assert srv.findings() == []


def test_short_run_the_agent_span_is_created_final_and_its_finish_is_swallowed(node: Path, srv: DevServer) -> None:
    report = run_scenario(node, srv, "core_flow_short_run")

    # The client treats a 409 `invalid_action` on a span finish as "already finished" (isAlreadyFinishedError);
    # any other answer would be logged as an error.
    assert answers(report, "POST", f"/api/v1/agent_spans/{ID}/finish") == [409]
    assert logged(report, "warn", "error") == []
    (instance,) = srv.instances()
    assert instance["status"] == "complete"
    spans = spans_by_name(srv)
    assert spans["quick-agent"]["status"] == "complete"
    assert spans["quick-agent"]["result_payload"] == {"answer": "quick"}
    assert spans["quick-tool"]["parent_span_id"] == spans["quick-agent"]["id"]
    assert srv.findings() == []


def test_spans_without_a_schema_are_refused_and_the_client_says_so(node: Path, srv: DevServer) -> None:
    report = run_scenario(node, srv, "no_schema")

    assert answers(report, "POST", "/api/v1/agent_instance/register") == [422]
    errors = logged(report, "error")
    assert any("Error registering agent" in e and "agent_schema_version is required" in e for e in errors), errors
    assert any("Error sending span" in e for e in errors), errors
    assert srv.instances() == [] and srv.spans() == []
    assert srv.findings() == []


# --------------------------------------------------------------------------- the public HTTP classes


def test_every_call_of_the_http_clients_and_their_typed_errors(node: Path, srv: DevServer) -> None:
    seen = run_scenario(node, srv, "http_clients")["seen"]

    instance_id = seen["register"]["id"]
    assert seen["register"] == {"id": instance_id, "status": "pending", "replayed_id": instance_id}
    # The start's timestamp is kept (milliseconds as sent, rendered with microseconds).
    assert seen["start"]["status"] == "active"
    assert seen["start"]["started_at"] == seen["start"]["sent"].replace("Z", "000Z")
    create = seen["create"]
    assert create["parent_status"] == "active" and create["child_status"] == "complete"
    assert create["child_parent_span_id"] == create["parent_id"]
    # The key travels beside `details`, as the client's AgentSpanCreatePayload puts it: replay, then reuse.
    assert seen["create_replayed_id"] == create["parent_id"]
    assert seen["create_key_reused"]["error"]["code"] == "idempotency_key_already_used"
    assert seen["finish_span"] == {"ok": True} and seen["finish_span_again"] == {"ok": True}

    def error(name: str) -> tuple[str, int, str]:
        found = seen[name]["error"]
        return found["name"], found["status"], found["code"]

    assert error("finish_unknown_span") == ("HttpClientError", 404, "not_found")
    assert error("create_unregistered_type") == ("HttpClientError", 422, "invalid_value")
    assert seen["finish"]["value"]["status"] == "failed"
    assert error("finish_again") == ("HttpClientError", 409, "invalid_action")
    assert error("start_unknown") == ("HttpClientError", 404, "not_found")
    assert seen["cancel"] == {"ok": True, "value": "cancelled"}
    assert error("bad_token") == ("HttpClientError", 401, "bad_authtoken")

    by_id = {i["id"]: i for i in srv.instances()}
    assert by_id[instance_id]["status"] == "failed" and len(by_id) == 2
    parent = next(s for s in srv.spans(instance_id) if s["id"] == create["parent_id"])
    assert parent["status"] == "complete" and parent["result_payload"] == {"answer": 42}
    assert srv.findings() == []


def test_the_client_retry_policy_meets_the_injected_faults(node: Path, srv: DevServer) -> None:
    report = run_scenario(node, srv, "retries")
    seen = report["seen"]

    assert answers(report, "POST", "/api/v1/agent_instance/register") == [503, 429, 200]
    start_answers = answers(report, "POST", f"/api/v1/agent_instance/{ID}/start")
    assert len(start_answers) == 2 and start_answers[-1] == 200 and isinstance(start_answers[0], str)
    assert answers(report, "POST", f"/api/v1/agent_instance/{ID}/finish") == [500] * 4  # 1 + maxRetries
    assert seen["register"]["ok"] and seen["start"] == {"ok": True, "value": "active"}
    assert seen["finish"]["error"]["status"] == 500 and seen["finish"]["error"]["retryable"] is True
    (instance,) = srv.instances()
    assert instance["status"] == "active"  # the faults answered without processing the finish
    assert srv.findings() == []


# --------------------------------------------------------------------------- termination


def test_termination_reaches_the_client_where_it_reads_answers(node: Path, srv: DevServer) -> None:
    seen = run_scenario(node, srv, "termination")["seen"]

    assert seen["terminate"] == "terminated"
    # AgentSpanClient.create hands the whole answer to its caller: `control` is there.
    assert seen["create"] == {
        "status": "success",
        "span_status": "complete",
        "control": {"terminate": True, "reason": "budget exceeded"},
    }
    assert seen["finish_span"] == {"ok": True}  # AgentSpanClient.finish returns nothing: control is dropped
    assert seen["read"] == {"status": "terminated", "termination_reason": "budget exceeded"}
    assert seen["finish"]["error"]["status"] == 409 and seen["finish"]["error"]["code"] == "invalid_action"
    (instance,) = srv.instances()
    assert instance["status"] == "terminated" and instance["termination_reason"] == "budget exceeded"
    # The span active at the termination was closed by it (failed; its later finish answers 200 with control and
    # changes nothing, docs/local-server.md); the span created complete afterwards stays as sent.
    assert sorted(s["status"] for s in srv.spans()) == ["complete", "failed"]
    assert srv.findings() == []


def test_documented_flow_in_a_run_terminated_half_way(node: Path, srv: DevServer) -> None:
    report = run_scenario(node, srv, "core_flow_terminated")

    (instance,) = srv.instances()
    assert instance["id"] == report["instance_id"]
    assert instance["status"] == "terminated" and instance["termination_reason"] == "stopped by operator"
    spans = spans_by_name(srv)
    # The client has no termination handling: it carries on, its spans are stored, its finishes succeed ...
    assert spans["late-tool"]["status"] == "complete"
    assert spans["late-tool"]["parent_span_id"] == spans["support-agent"]["id"]
    assert spans["support-agent"]["status"] == "failed"  # in flight at the termination, which closed it
    # ... and only the run's finish (409) shows, as one logged error.
    assert answers(report, "POST", f"/api/v1/agent_instance/{ID}/finish") == [409]
    (error,) = logged(report, "warn", "error")
    assert "Error finishing agent instance" in error and "instance is already terminated" in error
    assert srv.findings() == []
