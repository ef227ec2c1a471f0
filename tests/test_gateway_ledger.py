"""The gateway's finished-traces file (gateway/ledger.py) and the planner state it carries across a restart.

The file on disk, written and read back by real `SegmentLedger`s in a temporary directory: the finished traces and
the late traces' states round-trip; a file of the previous format (no `runs`) and one whose `runs` are damaged still
load their finished traces; the content is bounded (traces and span ids) as the planner's memory is; a file that
cannot be written refuses the late record (nothing counted, nothing marked carried). And the planner's side: a
state taken from one planner (`finished_trace_state`) and given to a fresh one (`restore_finished_trace`) makes the
fresh one treat the trace's spans as the first would: copies ignored, a new late span in the next run by number.
The end-to-end proof (a gateway SIGKILLed while a late run is held, then replayed) is tests/test_gateway_core_kill.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from prefactor_otel.gateway import ledger as ledger_module
from prefactor_otel.gateway.ledger import FINISHED_FILE, CarriedTrace, SegmentLedger
from tests.test_planner import _planner
from tests.test_planner_late_spans import (
    CREATE,
    PART,
    a_trace,
    actions,
    deliver,
    finished_first_run,
    gateway_planner,
)

KEY = "default.default"
X, Y, Z = 0x0F9C_F742_AE11_C36F_8EC3_6693_6E1B_6CE9, 0xAB << 100, 7


def written(directory: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((directory / FINISHED_FILE).read_text(encoding="utf-8"))
    return data


def test_finished_and_late_traces_round_trip(tmp_path: Path) -> None:
    first = SegmentLedger(tmp_path)
    assert first.load() == frozenset() and first.states_at_start == {}
    first.mark_done(KEY, [X, Y])
    # A record of X and Z: X is finished (late for it), Z is not; X's state is not carried yet.
    assert first.late_traces(KEY, [X, Z]) == ([X], [X])
    first.cover_late([(KEY, [X], {X: (2, [1, 5, 2**64 - 1])})])
    assert first.late_traces(KEY, [X]) == ([X], [])  # carried now: a second late record writes nothing
    data = written(tmp_path)
    assert data["finished"] == [[KEY, f"{X:032x}"], [KEY, f"{Y:032x}"]]
    assert [entry[:3] for entry in data["runs"]] == [[KEY, f"{X:032x}", 2]]

    second = SegmentLedger(tmp_path)
    assert second.load() == {(KEY, X), (KEY, Y)}
    assert second.states_at_start == {(KEY, X): (2, [1, 5, 2**64 - 1])}
    assert second.late_traces(KEY, [X, Y]) == ([X, Y], [Y])  # X's state is carried on from the file


def test_a_file_of_the_previous_format_and_damaged_states_still_load_the_finished_traces(tmp_path: Path) -> None:
    (tmp_path / FINISHED_FILE).write_text(json.dumps({"finished": [[KEY, f"{X:032x}"]]}), encoding="utf-8")
    old = SegmentLedger(tmp_path)
    assert old.load() == {(KEY, X)} and old.states_at_start == {}  # skipped on replay, as that gateway did

    damaged = {"finished": [[KEY, f"{X:032x}"], [KEY, f"{Y:032x}"]], "runs": [[KEY, f"{X:032x}", 0, "AAAA"]]}
    (tmp_path / FINISHED_FILE).write_text(json.dumps(damaged), encoding="utf-8")  # 3 bytes: no whole id
    ledger = SegmentLedger(tmp_path)
    assert ledger.load() == {(KEY, X), (KEY, Y)} and ledger.states_at_start == {}

    for runs in ([[KEY, f"{X:032x}", -1, ""]], [[KEY, f"{X:032x}", 0, "not base64!"]], "nonsense", [[KEY]]):
        (tmp_path / FINISHED_FILE).write_text(json.dumps({**damaged, "runs": runs}), encoding="utf-8")
        ledger = SegmentLedger(tmp_path)
        assert ledger.load() == {(KEY, X), (KEY, Y)} and ledger.states_at_start == {}

    # A state carried for a trace the file does not list finished is not one a replay would consult.
    state = CarriedTrace.of((0, [3]))
    stray = {"finished": [], "runs": [[KEY, f"{Z:032x}", 0, state.encoded]]}
    (tmp_path / FINISHED_FILE).write_text(json.dumps(stray), encoding="utf-8")
    ledger = SegmentLedger(tmp_path)
    assert ledger.load() == frozenset() and ledger.states_at_start == {}


def test_the_file_is_bounded_as_the_planner_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ledger_module, "MAX_FINISHED_TRACES_REMEMBERED", 3)
    monkeypatch.setattr(ledger_module, "MAX_FINISHED_SPANS_REMEMBERED", 5)
    ledger = SegmentLedger(tmp_path)
    ledger.load()
    traces = list(range(1, 7))
    ledger.mark_done(KEY, traces[:4])  # the oldest is forgotten: 3 listed
    ledger.cover_late([(KEY, traces[1:4], {t: (0, [t * 10 + 1, t * 10 + 2, t * 10 + 3]) for t in traces[1:4]})])
    data = written(tmp_path)
    assert [int(trace, 16) for _, trace in data["finished"]] == [2, 3, 4]
    # 3 late traces of 3 ids each, at most 5 ids: the newest one only carries its ids; the others are listed.
    assert [int(entry[1], 16) for entry in data["runs"]] == [4]
    assert SegmentLedger(tmp_path).load() == {(KEY, 2), (KEY, 3), (KEY, 4)}
    # Finishing more traces forgets the oldest late ones too: never listed, never carried.
    ledger.mark_done(KEY, traces[4:])
    ledger.cover_late([(KEY, [5], {5: (1, [51])})])
    data = written(tmp_path)
    assert [int(trace, 16) for _, trace in data["finished"]] == [4, 5, 6]
    assert [int(entry[1], 16) for entry in data["runs"]] == [4, 5]
    again = SegmentLedger(tmp_path)
    again.load()
    assert again.states_at_start == {(KEY, 4): (0, [41, 42, 43]), (KEY, 5): (1, [51])}


def test_a_file_that_cannot_be_written_refuses_the_late_record(tmp_path: Path) -> None:
    ledger = SegmentLedger(tmp_path)
    ledger.load()
    ledger.mark_done(KEY, [X])
    (tmp_path / f".tmp-{FINISHED_FILE}").mkdir()  # the atomic write's temporary file cannot be created
    with pytest.raises(OSError):
        ledger.cover_late([(KEY, [X], {X: (0, [1])})])
    assert ledger.late_traces(KEY, [X]) == ([X], [X])  # not marked carried: the next late record tries again
    assert not (tmp_path / FINISHED_FILE).exists()
    (tmp_path / f".tmp-{FINISHED_FILE}").rmdir()
    ledger.cover_late([(KEY, [X], {X: (0, [1])})])
    assert SegmentLedger(tmp_path).load() == {(KEY, X)}


def test_a_planners_state_carried_to_a_fresh_planner_keeps_copies_out_and_numbers_the_next_run() -> None:
    spans = a_trace()
    trace_id = spans["step"].trace_id
    live = gateway_planner()
    finished_first_run(live, spans)
    assert live.finished_trace_state(trace_id) == (
        0,
        sorted([spans["step"].span_id, spans["invoke_agent late"].span_id]),
    )
    live.add([spans["late tool"]], now=10.0)
    assert live.finished_trace_state(trace_id) is None  # a run of it is open (held)
    deliver(live, now=11.0)
    state = live.finished_trace_state(trace_id)
    assert state is not None and state[0] == 1 and spans["late tool"].span_id in state[1]

    # Through the file's encoding, as a restart gets it.
    carried = CarriedTrace.of(state)
    fresh = gateway_planner()
    assert fresh.restore_finished_trace(trace_id, *carried.state)
    assert not fresh.restore_finished_trace(trace_id, *carried.state)  # known now: nothing changed
    assert fresh.finished_trace_state(trace_id) == state
    fresh.add([spans["invoke_agent late"], spans["late tool"], spans["step"]], now=20.0)  # copies: ignored
    assert fresh.plan(now=30.0) == [] and fresh.open_traces == 0
    assert fresh.counters["spans_duplicate_ignored"] == 3 and fresh.counters["runs_reopened_late"] == 0
    fresh.add([spans["late query"]], now=40.0)  # late: the third run, as `live` would open it
    third = deliver(fresh, now=41.0)
    assert third[0].body["external_identifier"].endswith(f":{PART}:2")
    assert [item.span_id for item in third if item.action == CREATE] == [spans["late query"].span_id]
    assert actions(third)[-1] == "agent_instances/finish" and fresh.dropped == {}

    # The exporter's planner (late spans dropped) takes no such state.
    assert not _planner(run_part=PART).restore_finished_trace(trace_id, *state)
