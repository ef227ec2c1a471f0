"""An acknowledged request is durable: a gateway in a process of its own (tests/gateway_core_child.py) accepts
requests and says which spans each acknowledgement covered, and is SIGKILLed mid-stream -- with the server up, and
with the server answering 503 so the spans sit in the ingress log and the spool. A second gateway on the same
directory (this test's process) replays them: every acknowledged span reaches the server exactly once, every run is
finished (nothing stays `active`). While the first gateway lives, a second one on its directory refuses to start."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from prefactor_otel.devserver import DevServer
from prefactor_otel.devserver.faults import Fault
from prefactor_otel.durability.ingress_log import IngressLogLocked
from prefactor_otel.gateway.ledger import FINISHED_FILE
from prefactor_otel.gateway.service import Gateway
from prefactor_otel.gateway.settings import GatewaySettings
from tests.spans import wait_for
from tests.test_gateway_core import stored_once

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def started() -> Iterator[list[Gateway]]:
    gateways: list[Gateway] = []
    yield gateways
    for gateway in gateways:
        gateway.shutdown(5)


def environment(srv: DevServer, directory: Path) -> dict[str, str]:
    return {
        **srv.env(),
        "PREFACTOR_GATEWAY_DIR": str(directory),
        "PREFACTOR_GATEWAY_TOKENS": "ingress-kill",
        "PREFACTOR_FINISH_GRACE_SECONDS": "0.3",
        "PREFACTOR_MAX_WAIT_SECONDS": "1",
        "PREFACTOR_EXPORT_TIMEOUT": "2",
        "PREFACTOR_LOG_LEVEL": "error",
    }


class Child:
    """The first gateway's process and what it said."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        path = os.pathsep.join([str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")])
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.gateway_core_child", *args],
            cwd=ROOT,
            env={**os.environ, **env, "PYTHONPATH": path},
            stdout=subprocess.PIPE,
            text=True,
        )
        self.acked: set[tuple[str, str]] = set()
        self.acknowledgements = 0

    def read(self) -> dict[str, object] | None:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            return None
        message: dict[str, object] = json.loads(line)
        if "acked" in message:
            self.acknowledgements += 1
            self.acked |= {(trace, span) for trace, span in message["acked"]}  # type: ignore[attr-defined]
        return message

    def kill_after(self, acknowledgements: int) -> None:
        for _ in range(acknowledgements * 10):
            if self.acknowledgements >= acknowledgements:
                break
            assert self.read() is not None, "the gateway process ended early"
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(60)
        while self.read() is not None:  # what it printed before it died
            pass


def run_over_again(srv: DevServer, directory: Path, env: dict[str, str], started: list[Gateway]) -> Gateway:
    gateway = Gateway(GatewaySettings.load(env))
    gateway.start()
    started.append(gateway)
    assert gateway.wait_ready(60), gateway.not_ready_reason()
    return gateway


def everything_arrived(srv: DevServer, acked: set[tuple[str, str]]) -> bool:
    stored = {(span["payload"]["trace_id"], span["payload"]["span_id"]) for span in srv.spans()}
    instances = srv.instances()
    return acked <= stored and bool(instances) and all(instance["finished_at"] is not None for instance in instances)


def check_exactly_once(srv: DevServer, acked: set[tuple[str, str]]) -> None:
    stored = stored_once(srv)  # no span twice
    assert acked <= set(stored)
    traces = {trace for trace, _ in stored}
    assert len(srv.instances()) == len(traces)  # one run per trace
    for span in stored.values():
        assert span["status"] != "active"
    for instance in srv.instances():
        assert instance["status"] != "active" and instance["finished_at"] is not None


def test_a_gateway_killed_mid_stream_loses_nothing_it_acknowledged(
    srv: DevServer, tmp_path: Path, started: list[Gateway]
) -> None:
    env = environment(srv, tmp_path / "gw")
    child = Child(env)
    assert child.read() == {"ready": True}
    # A second gateway on the same directory refuses to start while the first lives.
    with pytest.raises(IngressLogLocked, match="one gateway per directory"):
        Gateway(GatewaySettings.load(env)).start()
    child.kill_after(25)
    assert child.acked
    gateway = run_over_again(srv, tmp_path / "gw", env, started)
    assert wait_for(lambda: everything_arrived(srv, child.acked), 60)
    check_exactly_once(srv, child.acked)
    assert gateway.stats()["spans_replayed"] > 0  # the last run was open at the kill (its root held back)
    assert wait_for(lambda: gateway.stats()["log_segments"] == 0, 30)  # all done: the log is retired


def test_a_gateway_killed_while_the_server_is_down_delivers_everything_after_restart(
    srv: DevServer, tmp_path: Path, started: list[Gateway]
) -> None:
    srv.add_fault(Fault(status=503, times=-1))
    env = environment(srv, tmp_path / "gw")
    child = Child(env)
    assert child.read() == {"ready": True}
    child.kill_after(12)
    assert child.acked and srv.spans() == []
    spool = tmp_path / "gw" / "spool" / "default.default"
    assert any(spool.glob("*.json")) or any((tmp_path / "gw" / "log").glob("seg-*.log"))
    srv.clear_faults()
    gateway = run_over_again(srv, tmp_path / "gw", env, started)
    assert wait_for(lambda: everything_arrived(srv, child.acked), 90)
    check_exactly_once(srv, child.acked)
    stats = gateway.stats()
    assert stats["spans_replayed"] > 0
    assert not stats["pipelines"]["default.default"]["dropped_by_reason"]


def carried(directory: Path) -> dict[str, int]:
    """The late traces the finished-traces file carries: trace id -> how many times a run of it was opened again."""
    try:
        data = json.loads((directory / FINISHED_FILE).read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return {}
    return {trace: runs_opened for _, trace, runs_opened, _ in data.get("runs", [])}


def runs_of(srv: DevServer, trace: str) -> dict[str, dict[str, Any]]:
    """The trace's runs on the server, by their external identifier's suffix after the replica ("" for the first)."""
    runs = {}
    for instance in srv.instances():
        name = instance["external_identifier"].split(":")
        if name[1] == trace:
            runs[":".join(name[3:])] = instance
    return runs


def test_a_replay_after_a_late_spans_run_was_finished_sends_nothing_twice(
    srv: DevServer, tmp_path: Path, started: list[Gateway]
) -> None:
    """The late span opened X's second run, which was finished before the kill; it sits in a segment kept for another
    trace (Y, whose root never comes). The finished-traces file carries X (a run opened again once, the span ids of
    both runs), so the replay gives the planner that state, then the late span: a copy of a span X's runs created,
    ignored. Without it the late span would open yet another run of X (under the first run's name)."""
    env = {
        **environment(srv, tmp_path / "gw"),
        "PREFACTOR_GATEWAY_SEGMENT_BYTES": "64",
        "PREFACTOR_MAX_WAIT_SECONDS": "60",
    }
    child = Child(env, "late")
    said = child.read()
    assert said is not None and set(said) == {"x", "y", "carried_at_ack"}
    assert said["carried_at_ack"] == [said["x"]]  # X's state was in the file before its late span was acknowledged
    # X's state moved on when its second run was done: the file is written again at once.
    assert wait_for(lambda: carried(tmp_path / "gw") == {said["x"]: 1}, 30)
    child.kill_after(0)
    gateway = run_over_again(srv, tmp_path / "gw", {**env, "PREFACTOR_MAX_WAIT_SECONDS": "1"}, started)
    assert wait_for(lambda: len(srv.instances()) == 3 and all(i["finished_at"] for i in srv.instances()), 60)
    stats = gateway.stats()
    pipeline = stats["pipelines"]["default.default"]
    assert stats["spans_skipped_finished"] == 0 and stats["spans_replayed"] == 2
    assert pipeline["spans_duplicate_ignored"] == 1 and pipeline["runs_reopened_late"] == 0
    gateway.shutdown(10)
    assert not gateway.stats()["pipelines"]["default.default"][
        "dropped_by_reason"
    ]  # everything it holds is sent now: no other run of X can come later
    assert len(srv.instances()) == 3
    stored = stored_once(srv)
    assert {span["payload"]["name"] for span in stored.values()} == {
        "invoke_agent x",
        "step",
        "late tool",
        "waits for y",
    }
    assert set(runs_of(srv, said["x"])) == {"", "1"}
    runs_of_x = {span["agent_instance_id"] for (trace, _), span in stored.items() if trace == said["x"]}
    assert len(runs_of_x) == 2


def test_a_gateway_killed_while_a_late_spans_run_is_held_loses_nothing_it_acknowledged(
    srv: DevServer, tmp_path: Path, started: list[Gateway]
) -> None:
    """A run opened for a late span is held until quiet for the grace period (5 s here), then sent whole: killed
    before that, the gateway has sent nothing of it. The late span was acknowledged only once the finished-traces
    file carried X's state (no run opened again, the span ids of its first run), so the restart replays it: X's
    second run `:1`, registered, the late span in it, finished. The retried copy of `step` in the same request (its
    first run delivered it) is ignored again on replay: on the server once."""
    env = {
        **environment(srv, tmp_path / "gw"),
        "PREFACTOR_GATEWAY_SEGMENT_BYTES": "64",
        "PREFACTOR_MAX_WAIT_SECONDS": "60",
        "PREFACTOR_FINISH_GRACE_SECONDS": "5",
    }
    child = Child(env, "late-held")
    said = child.read()
    assert said is not None and set(said) == {"x", "y", "carried_at_ack"}
    assert said["carried_at_ack"] == [said["x"]]  # X's state was in the file before its late span was acknowledged
    assert carried(tmp_path / "gw") == {said["x"]: 0}  # written before the late span was acknowledged
    child.kill_after(0)
    assert [i["external_identifier"].count(":") for i in srv.instances()] == [2]  # X's first run alone
    first_x = {span["payload"]["span_id"] for span in srv.spans()}
    gateway = run_over_again(srv, tmp_path / "gw", {**env, "PREFACTOR_MAX_WAIT_SECONDS": "1"}, started)
    assert wait_for(lambda: len(srv.instances()) == 3 and all(i["finished_at"] for i in srv.instances()), 60)
    stats = gateway.stats()
    pipeline = stats["pipelines"]["default.default"]
    assert stats["spans_skipped_finished"] == 0 and stats["spans_replayed"] == 3
    assert pipeline["runs_reopened_late"] == 1 and pipeline["spans_duplicate_ignored"] == 1
    gateway.shutdown(10)
    assert not gateway.stats()["pipelines"]["default.default"]["dropped_by_reason"]
    assert len(srv.instances()) == 3 and all(i["status"] == "complete" for i in srv.instances())
    stored = stored_once(srv)  # the copy of `step` was not sent twice
    by_name = {span["payload"]["name"]: span for span in stored.values()}
    assert set(by_name) == {"invoke_agent x", "step", "late tool", "waits for y"}
    assert all(span["status"] != "active" for span in stored.values())
    runs = runs_of(srv, said["x"])
    assert set(runs) == {"", "1"} and all(run["finished_at"] for run in runs.values())
    assert by_name["late tool"]["agent_instance_id"] == runs["1"]["id"]
    assert by_name["step"]["agent_instance_id"] == runs[""]["id"]
    assert {by_name["step"]["payload"]["span_id"], by_name["invoke_agent x"]["payload"]["span_id"]} == first_x
    # The late run's top: its parent, X's root, is in the first run (kept in its payload, said in its metadata).
    late = by_name["late tool"]
    assert late["parent_span_id"] is None
    assert late["payload"]["parent_span_id"] == by_name["invoke_agent x"]["payload"]["span_id"]
    assert late["payload"]["metadata"]["prefactor.parent_in_earlier_run"] is True
    # Once done again, X's segment retired: nothing is left in the log, and the file no longer carries X.
    assert gateway.stats()["log_segments"] == 0
    assert carried(tmp_path / "gw") == {}


def test_two_gateways_killed_in_turn_while_the_server_is_down_lose_nothing(
    srv: DevServer, tmp_path: Path, started: list[Gateway]
) -> None:
    """The second gateway replays the first's log into its spool, takes requests of its own, and is killed too."""
    srv.add_fault(Fault(status=503, times=-1))
    env = environment(srv, tmp_path / "gw")
    first = Child(env)
    assert first.read() == {"ready": True}
    first.kill_after(8)
    second = Child(env)
    assert second.read() == {"ready": True}  # after its replay of the first's log
    second.kill_after(8)
    acked = first.acked | second.acked
    assert len(acked) > len(first.acked) and srv.spans() == []
    srv.clear_faults()
    run_over_again(srv, tmp_path / "gw", env, started)
    assert wait_for(lambda: everything_arrived(srv, acked), 90)
    check_exactly_once(srv, acked)
