"""Live runs on the local server: termination closes in-flight spans, later span answers carry `control`, the bulk
`agent_spans/finish` item a live exporter sends, and the one-frame view `prefactor-otel show --watch` prints."""

from __future__ import annotations

from typing import Any

import httpx

from prefactor_otel.devserver import DevServer, render_live
from prefactor_otel.devserver.timefmt import parse_timestamp

LLM = {
    "name": "agent:llm",
    "params_schema": {"type": "object", "properties": {"model": {"type": "string"}}},
    "result_schema": {"type": "object", "properties": {"tokens": {"type": "integer"}}},
}
CONTROL = {"terminate": True, "reason": "budget exceeded"}


def register(client: httpx.Client, srv: DevServer, *, start: bool = True) -> str:
    body = {
        "agent_id": srv.agent_id,
        "agent_version": {"name": "live-agent"},
        "agent_schema_version": {"span_type_schemas": [LLM]},
    }
    r = client.post("/api/v1/agent_instance/register", json=body)
    assert r.status_code == 200, r.text
    instance_id = str(r.json()["details"]["id"])
    if start:
        assert client.post(f"/api/v1/agent_instance/{instance_id}/start", json={}).status_code == 200
    return instance_id


def create(client: httpx.Client, instance_id: str, status: str, **details: Any) -> dict[str, Any]:
    body = {"agent_instance_id": instance_id, "schema_name": "agent:llm", "status": status, **details}
    r = client.post("/api/v1/agent_spans", json={"details": body})
    assert r.status_code == 200, r.text
    return dict(r.json()["details"])


def bulk(client: httpx.Client, *items: dict[str, Any]) -> dict[str, Any]:
    r = client.post("/api/v1/bulk", json={"items": list(items)})
    assert r.status_code == 200, r.text
    return dict(r.json()["outputs"])


def terminate(client: httpx.Client, instance_id: str, body: dict[str, Any]) -> httpx.Response:
    return client.post(f"/api/v1/agent_instance/{instance_id}/terminate", json=body)


# --------------------------------------------------------------------------- termination


def test_terminating_a_run_closes_its_in_flight_spans(client: httpx.Client, srv: DevServer) -> None:
    instance_id = register(client, srv)
    active = create(client, instance_id, "active")["id"]
    pending = create(client, instance_id, "pending")["id"]
    done = create(client, instance_id, "active")["id"]
    assert client.post(f"/api/v1/agent_spans/{done}/finish", json={"result_payload": {"tokens": 1}}).status_code == 200

    r = terminate(client, instance_id, {"reason": "budget exceeded"})
    assert r.status_code == 200, r.text
    counts = r.json()["details"]["span_counts"]
    assert counts["active"] == 0 and counts["pending"] == 0
    assert (counts["failed"], counts["cancelled"], counts["complete"], counts["finished"]) == (1, 1, 1, 3)

    spans = {s["id"]: s for s in srv.spans(instance_id)}
    terminated_at = parse_timestamp(r.json()["details"]["finished_at"])
    # An active span stopped from outside did not complete: `failed`; a pending one never ran: `cancelled`.
    assert spans[active]["status"] == "failed" and parse_timestamp(spans[active]["finished_at"]) == terminated_at
    assert spans[pending]["status"] == "cancelled" and parse_timestamp(spans[pending]["finished_at"]) == terminated_at
    assert spans[active]["result_payload"] is None
    assert spans[done]["status"] == "complete" and spans[done]["result_payload"] == {"tokens": 1}
    assert srv.findings() == []


def test_a_later_finish_of_a_span_the_termination_closed_answers_control(client: httpx.Client, srv: DevServer) -> None:
    instance_id = register(client, srv)
    active = create(client, instance_id, "active")["id"]
    done = create(client, instance_id, "active")["id"]
    assert client.post(f"/api/v1/agent_spans/{done}/finish", json={}).status_code == 200
    srv.terminate(instance_id, "budget exceeded")

    # REST: a success carrying control (the official clients read control only from successes); the span stays
    # as the termination closed it.
    r = client.post(
        f"/api/v1/agent_spans/{active}/finish", json={"status": "complete", "result_payload": {"tokens": 2}}
    )
    assert r.status_code == 200, r.text
    assert r.json()["control"] == CONTROL and r.json()["details"]["status"] == "failed"
    # Bulk, the flat item a live exporter sends: the same answer.
    finish = {"agent_span_id": active, "status": "complete", "timestamp": "2030-01-01T00:00:00Z"}
    outputs = bulk(client, {"_type": "agent_spans/finish", "idempotency_key": "finish-after-term-1", **finish})
    assert outputs["finish-after-term-1"]["status"] == "success"
    assert outputs["finish-after-term-1"]["control"] == CONTROL
    assert srv.spans(instance_id)[0]["status"] == "failed" and srv.spans(instance_id)[0]["result_payload"] is None

    # A span the client had already finished itself: finishing it again is the API's 409, still with control.
    r = client.post(f"/api/v1/agent_spans/{done}/finish", json={})
    assert r.status_code == 409 and r.json()["code"] == "invalid_action"
    assert r.json()["control"] == CONTROL


def test_spans_created_after_termination_are_kept_and_finish_with_control(client: httpx.Client, srv: DevServer) -> None:
    instance_id = register(client, srv)
    srv.terminate(instance_id, "budget exceeded")
    late = create(client, instance_id, "active")
    assert late["status"] == "active"  # termination closed what was in flight then, not what comes after
    r = client.post(f"/api/v1/agent_spans/{late['id']}/finish", json={"status": "complete"})
    assert r.status_code == 200 and r.json()["control"] == CONTROL and r.json()["details"]["status"] == "complete"


def test_the_terminate_path_requires_a_reason_and_an_active_run(client: httpx.Client, srv: DevServer) -> None:
    pending = register(client, srv, start=False)
    active = register(client, srv)
    finished = register(client, srv)
    assert client.post(f"/api/v1/agent_instance/{finished}/finish", json={"status": "complete"}).status_code == 200

    for body in ({}, {"reason": "   "}, {"reason": None}, {"reason": 7}):
        r = terminate(client, active, body)
        assert r.status_code == 422 and r.json()["code"] == "required_value", (body, r.text)
    for run in (pending, finished):
        r = terminate(client, run, {"reason": "stop"})
        assert r.status_code == 409 and r.json()["code"] == "invalid_action", r.text
    assert terminate(client, srv.new_id(), {"reason": "stop"}).status_code == 404
    assert terminate(client, active, {"reason": "stop"}).status_code == 200
    r = terminate(client, active, {"reason": "stop again"})
    assert r.status_code == 409 and r.json()["code"] == "invalid_action"
    assert srv.instances()[1]["termination_reason"] == "stop"


# --------------------------------------------------------------------------- the bulk finish item


def test_bulk_finish_checks_the_result_schema_and_refuses_a_second_finish(client: httpx.Client, srv: DevServer) -> None:
    instance_id = register(client, srv)
    good = create(client, instance_id, "active")["id"]
    bad = create(client, instance_id, "active")["id"]
    outputs = bulk(
        client,
        {"_type": "agent_spans/finish", "idempotency_key": "finish-good-1", "agent_span_id": good,
         "status": "complete", "result_payload": {"tokens": 3}},
        {"_type": "agent_spans/finish", "idempotency_key": "finish-bad-01", "agent_span_id": bad,
         "status": "failed", "result_payload": {"tokens": "many"}},
    )  # fmt: skip
    assert outputs["finish-good-1"]["details"]["status"] == "complete"
    assert outputs["finish-good-1"]["details"]["result_payload"] == {"tokens": 3}
    assert outputs["finish-bad-01"]["details"]["status"] == "failed"  # accepted and stored, as the API would
    (finding,) = srv.findings()
    assert finding["rule"] == "schema_violation" and finding["action"] == "agent_spans/finish"
    assert finding["span_id"] == bad and "$.tokens: expected integer, got string" in finding["message"]

    again = {"_type": "agent_spans/finish", "idempotency_key": "finish-again1", "agent_span_id": good}
    answer = bulk(client, again)["finish-again1"]
    assert answer["status"] == "error" and answer["code"] == "invalid_action"
    r = client.post(f"/api/v1/agent_spans/{good}/finish", json={"status": "failed"})
    assert r.status_code == 409 and r.json()["code"] == "invalid_action"
    # Replaying the first finish under its own key is not a second finish: the first answer again.
    first = {"_type": "agent_spans/finish", "idempotency_key": "finish-good-1", "agent_span_id": good,
             "status": "complete", "result_payload": {"tokens": 3}}  # fmt: skip
    assert bulk(client, first)["finish-good-1"] == outputs["finish-good-1"]


def test_bulk_finish_of_a_run_with_an_active_span_is_found(client: httpx.Client, srv: DevServer) -> None:
    instance_id = register(client, srv)
    create(client, instance_id, "active")
    item = {"_type": "agent_instances/finish", "idempotency_key": "run-finish-01", "agent_instance_id": instance_id}
    assert bulk(client, {**item, "status": "complete"})["run-finish-01"]["status"] == "success"
    (finding,) = srv.findings()
    assert finding["rule"] == "finished_with_open_spans" and finding["agent_instance_id"] == instance_id


# --------------------------------------------------------------------------- one frame of `show --watch`


def test_the_live_frame_shows_active_runs_and_in_flight_spans_with_elapsed_time(
    client: httpx.Client, srv: DevServer
) -> None:
    live = register(client, srv)
    finished = register(client, srv)
    assert client.post(f"/api/v1/agent_instance/{finished}/finish", json={"status": "complete"}).status_code == 200
    started = "2020-01-01T00:00:00.000000Z"
    parent = create(client, live, "active", started_at=started, payload={"name": "plan trip"})["id"]
    child = create(client, live, "active", started_at=started, parent_span_id=parent, payload={"name": "chat gpt"})
    create(client, live, "pending", payload={"name": "later tool"})
    closed = create(client, live, "active", started_at=started, payload={"name": "done already"})["id"]
    assert client.post(f"/api/v1/agent_spans/{closed}/finish", json={}).status_code == 200
    now = parse_timestamp("2020-01-01T00:00:02.500000Z")

    frame = render_live(srv.snapshot(), now_us=now)
    assert live in frame and finished not in frame
    assert "1 finished run not shown" in frame
    lines = frame.splitlines()
    plan = next(line for line in lines if "plan trip" in line)
    chat = next(line for line in lines if "chat gpt" in line)
    assert "active" in plan and "2.5 s" in plan
    assert "active" in chat and "2.5 s" in chat and lines.index(chat) == lines.index(plan) + 1
    assert chat.index("agent:llm") > plan.index("agent:llm")  # the child is drawn under its parent
    assert "pending" in next(line for line in lines if "later tool" in line)
    assert all("[in flight]" in line for line in (plan, chat, next(x for x in lines if "later tool" in x)))
    done = next(line for line in lines if "done already" in line)  # finished: shown as the run grows, not in flight
    assert "complete" in done and "[in flight]" not in done
    assert "3 spans in flight" in frame and "4 spans  0 errors" in frame

    assert client.post(f"/api/v1/agent_spans/{child['id']}/finish", json={}).status_code == 200
    assert client.post(f"/api/v1/agent_spans/{parent}/finish", json={}).status_code == 200
    frame = render_live(srv.snapshot(), now_us=now)
    plan = next(line for line in frame.splitlines() if "plan trip" in line)
    # A finished span whose spans below all finished is one line: its child is counted, not drawn.
    assert "[in flight]" not in plan and "[1 finished span below]" in plan and "chat gpt" not in frame
    assert "later tool" in frame and "1 span in flight" in frame

    srv.terminate(live, "stop")
    frame = render_live(srv.snapshot(), now_us=now)
    assert "no live agent runs" in frame and "2 finished runs not shown" in frame


def test_the_live_frame_folds_finished_work_and_keeps_the_last_finished_steps(
    client: httpx.Client, srv: DevServer
) -> None:
    from prefactor_otel.devserver.render import LIVE_FINISHED_SHOWN

    run = register(client, srv)
    root = create(client, run, "active", payload={"name": "long agent"})["id"]
    steps = LIVE_FINISHED_SHOWN + 4
    for i in range(steps):  # each step a finished span with a finished model call under it
        asked = {"name": f"step {i:02d}", "inputs": {"messages": [{"role": "user", "content": f"question {i}"}]}}
        step = create(client, run, "active", parent_span_id=root, payload=asked)["id"]
        call = create(client, run, "active", parent_span_id=step, payload={"name": f"call {i:02d}"})["id"]
        for span in (call, step):
            assert client.post(f"/api/v1/agent_spans/{span}/finish", json={}).status_code == 200
    now = {"name": "step now", "inputs": {"messages": [{"role": "user", "content": "question now"}]}}
    create(client, run, "active", parent_span_id=root, payload=now)

    lines = render_live(srv.snapshot(), now_us=parse_timestamp("2999-01-01T00:00:00Z") or 0).splitlines()
    assert f"{2 * steps + 2} spans  0 errors" in lines[1]  # the totals count every span, shown or not
    assert "2 spans in flight" in lines[0]
    shown = [line for line in lines if "step " in line]
    # The last LIVE_FINISHED_SHOWN finished steps, each one line with what ran under it counted, then the step in
    # flight; the earlier ones stand as one line where they were.
    assert [line.split("step ")[1].split()[0] for line in shown] == [f"{i:02d}" for i in range(4, steps)] + ["now"]
    assert all("complete" in line and line.endswith("[1 finished span below]") for line in shown[:-1])
    assert shown[-1].endswith("[in flight]") and "call " not in "\n".join(lines)
    # What a finished step was asked is for `show`; the step in flight shows what it works on.
    assert [line.strip(" │") for line in lines if "> " in line] == ["> user: question now"]
    (stand_in,) = [line for line in lines if "not shown" in line and "earlier" in line]
    assert "… 4 earlier finished spans" in stand_in and lines.index(stand_in) < lines.index(shown[0])
