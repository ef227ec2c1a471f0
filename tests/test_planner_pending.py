"""A run's pending spans without an object each (runs.py): the record in `pending`, its arrival in `arrived`, the rare
state -- sent as an orphan, replaced by a placeholder, a live create tried -- in side collections keyed by span id
that hold pending spans only. Held here: what leaves the queue takes its side state with it, so a span that comes
again after its create was rejected is planned afresh (its parent link, its whole payload), and a waiting span ages
from its own arrival. Real mapped spans; no server (the planner does no I/O)."""

from __future__ import annotations

import copy

from prefactor_otel.mapping import MappingOptions, map_span
from prefactor_otel.mapping.payload import SpanRecord
from prefactor_otel.pipeline.items import PlannedItem
from prefactor_otel.pipeline.planner import Planner
from prefactor_otel.pipeline.starts import LivePolicy, StartedSpan, live_mapper, read_start
from prefactor_otel.transport.outcomes import ItemOutcome
from tests.spans import agent_trace, make_provider, planner_for_tests

CREATE = "agent_spans/create"
REJECTED = ItemOutcome("error", "invalid_value", "no")


def _planner(**kw: object) -> Planner:
    return planner_for_tests(777, **kw)  # type: ignore[no-any-return]


def _records() -> dict[str, SpanRecord]:
    """invoke_agent -> chat, execute_tool -> db query, by name."""
    provider, collector = make_provider()
    agent_trace(provider)
    return {record.name: record for record in (map_span(span) for span in collector.spans)}


def _side_state_holds(planner: Planner) -> None:
    """Every open run: an arrival for each pending span and nothing else; side collections of pending spans only."""
    for trace in planner.runs.traces.values():
        assert set(trace.arrived) == set(trace.pending)
        for side in (trace.orphaned, trace.too_large, trace.attempted):
            assert set(side) <= set(trace.pending)


def _answer(
    items: list[PlannedItem], *, rejected: tuple[int, ...] = (), unanswered: tuple[int | str, ...] = ()
) -> dict[str, ItemOutcome]:
    """Every item a success, except the creates of the `rejected` spans; items of the `unanswered` spans or actions
    are left out (not processed)."""
    return {
        item.key: REJECTED if item.span_id in rejected and item.action == CREATE else ItemOutcome("success")
        for item in items
        if item.span_id not in unanswered and item.action not in unanswered
    }


def test_a_span_rejected_as_an_orphan_and_sent_again_keeps_its_parent_link() -> None:
    planner = _planner(max_wait_seconds=5.0)
    spans = _records()
    chat = spans["chat gpt-4o"]
    planner.add([copy.deepcopy(chat)], 0.0)
    items = planner.plan(6.0)  # waited past max_wait for its parent: sent as an orphan
    (orphan,) = [i for i in items if i.action == CREATE]
    assert orphan.body["details"]["payload"]["metadata"]["orphaned"] is True
    trace = planner.runs.traces[chat.trace_id]
    assert set(trace.orphaned) == {chat.span_id}
    _side_state_holds(planner)

    planner.apply(_answer(items, rejected=(chat.span_id,)), 6.0)
    assert planner.dropped["rejected:invalid_value"] == 1
    assert not trace.pending and not trace.orphaned and not trace.arrived  # it left with its flag

    # The whole trace comes again (a client's retry): the chat span is a child of its parent, not an orphan.
    planner.add([copy.deepcopy(record) for record in spans.values()], 7.0)
    _side_state_holds(planner)
    items = planner.plan(7.0)
    creates = {i.span_id: i for i in items if i.action == CREATE}
    again = creates[chat.span_id]
    root = creates[spans["invoke_agent support"].span_id]
    assert again.body["details"]["parent_span_id"] == root.body["details"]["id"]
    assert "orphaned" not in again.body["details"]["payload"]["metadata"]
    assert again.key != orphan.key  # the orphan's body had a key of its own
    assert planner.counters["spans_orphaned_age"] == 1
    planner.apply(_answer(items), 7.0)
    assert planner.open_traces == 0 and planner.queued_spans == 0


def test_a_placeholder_rejected_and_sent_again_is_sent_whole() -> None:
    planner = _planner()
    spans = _records()
    db = spans["db query"]
    planner.add([copy.deepcopy(record) for record in spans.values()], 0.0)
    items = planner.plan(0.0)
    big = next(i for i in items if i.span_id == db.span_id)
    assert planner.replace_with_placeholder(big.key, 9_000_000)
    assert not planner.replace_with_placeholder(big.key, 9_000_000)  # one already
    trace = planner.runs.traces[db.trace_id]
    # Everything but the big span and the run's finish (which waits for it) is delivered.
    planner.apply(_answer(items, unanswered=(db.span_id, "agent_instances/finish")), 0.0)
    _side_state_holds(planner)
    assert list(trace.pending) == [db.span_id] and trace.too_large == {db.span_id: 9_000_000}

    items = planner.plan(0.0)
    (placeholder,) = [i for i in items if i.action == CREATE]
    assert placeholder.body["details"]["payload"]["metadata"]["prefactor.too_large"] is True
    assert items[-1].action == "agent_instances/finish"
    planner.apply({placeholder.key: REJECTED}, 0.0)  # its finish is not answered: not processed
    assert not trace.pending and not trace.too_large and not trace.arrived

    planner.add([copy.deepcopy(db)], 1.0)  # the span again: no placeholder left over from the one rejected
    items = planner.plan(1.0)
    (whole,) = [i for i in items if i.action == CREATE]
    assert whole.key == big.key and whole.body == big.body
    planner.apply(_answer(items), 1.0)
    assert planner.open_traces == 0 and planner.counters["spans_replaced_too_large"] == 1


def test_a_waiting_span_ages_from_its_own_arrival() -> None:
    planner = _planner(max_wait_seconds=5.0)
    spans = _records()
    chat, tool = spans["chat gpt-4o"], spans["execute_tool lookup"]
    planner.add([copy.deepcopy(chat)], 0.0)
    planner.add([copy.deepcopy(tool)], 4.0)  # the same run, waiting for the same parent, later
    trace = planner.runs.traces[chat.trace_id]
    assert trace.arrived == {chat.span_id: 0.0, tool.span_id: 4.0}
    assert planner.has_due_work(5.5)  # the chat span has waited its max

    items = planner.plan(6.0)
    assert [i.span_id for i in items if i.action == CREATE] == [chat.span_id]  # the tool span waits on
    assert set(trace.orphaned) == {chat.span_id}
    planner.apply(_answer(items), 6.0)
    _side_state_holds(planner)
    assert list(trace.pending) == [tool.span_id] and not trace.orphaned

    assert [i for i in planner.plan(8.0) if i.action == CREATE] == []
    items = planner.plan(9.5)
    assert [i.span_id for i in items if i.action == CREATE] == [tool.span_id]
    assert planner.counters["spans_orphaned_age"] == 2


def test_the_queue_bound_drops_the_earliest_arrivals() -> None:
    planner = _planner(max_queued_spans=2, max_waiting_spans=2, max_wait_seconds=60.0)
    spans = _records()
    planner.add([copy.deepcopy(spans["db query"])], 0.0)
    planner.add([copy.deepcopy(spans["chat gpt-4o"])], 1.0)
    planner.add([copy.deepcopy(spans["execute_tool lookup"])], 2.0)  # one too many: the earliest goes
    trace = planner.runs.traces[spans["db query"].trace_id]
    assert planner.dropped["queue_full"] == 1
    assert list(trace.pending) == [spans["chat gpt-4o"].span_id, spans["execute_tool lookup"].span_id]
    assert trace.arrived == {spans["chat gpt-4o"].span_id: 1.0, spans["execute_tool lookup"].span_id: 2.0}
    _side_state_holds(planner)


def _started_and_ended() -> tuple[list[StartedSpan], dict[str, SpanRecord]]:
    """The agent trace's spans as started (in start order) and as ended (mapped, by name)."""
    provider, collector = make_provider()
    agent_trace(provider)
    spans = sorted(collector.spans, key=lambda span: span.start_time or 0)
    started = [read_start(span) for span in spans]
    assert all(s is not None for s in started)
    return [s for s in started if s is not None], {span.name: map_span(span) for span in spans}


def _open_side_state_holds(planner: Planner) -> None:
    for trace in planner.runs.traces.values():
        assert set(trace.open_live) <= set(trace.open)


def test_open_spans_gone_live_leave_the_side_state_when_they_end_or_are_forgotten() -> None:
    live = {"live_policy": LivePolicy("all"), "map_started": live_mapper(MappingOptions())}
    planner = _planner(**live)
    started, ended = _started_and_ended()
    planner.start(started, 0.0)
    trace = planner.runs.traces[started[0].trace_id]
    assert set(trace.open) == set(trace.open_live) == {s.span_id for s in started}
    items = planner.plan(0.0)
    assert sum(1 for i in items if i.action == CREATE) == 4  # all created active
    planner.apply(_answer(items), 0.0)
    planner.add([copy.deepcopy(ended["chat gpt-4o"])], 1.0)
    _open_side_state_holds(planner)
    assert ended["chat gpt-4o"].span_id not in trace.open_live
    planner.add([copy.deepcopy(r) for name, r in ended.items() if name != "chat gpt-4o"], 2.0)
    assert not trace.open and not trace.open_live
    items = planner.plan(2.0)
    assert sum(1 for i in items if i.action == "agent_spans/finish") == 4
    planner.apply(_answer(items), 2.0)
    assert planner.open_traces == 0

    bounded = _planner(max_open_spans=2, **live)
    bounded.start(started, 0.0)  # two too many: the oldest two are forgotten, counted
    trace = bounded.runs.traces[started[0].trace_id]
    assert bounded.counters["open_spans_forgotten"] == 2
    assert set(trace.open) == set(trace.open_live) == {s.span_id for s in started[2:]}
    _open_side_state_holds(bounded)
