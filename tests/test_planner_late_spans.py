"""The planner with `late_spans_open_a_run` (the gateway's): a span that comes after its run was finished opens the
trace's next run of the part instead of being dropped, sent whole once quiet for the grace period; a retried copy of
a span a finished run already created is ignored, never a second copy. Real mapped spans in, ordered bulk items out,
outcomes back; no server (the gateway's end-to-end test over real sockets: tests/test_gateway_late_spans.py)."""

from __future__ import annotations

import pytest
from opentelemetry import trace as trace_api

from prefactor_otel.mapping import SpanRecord, map_span
from prefactor_otel.pipeline import runs as runs_module
from prefactor_otel.pipeline.items import PlannedItem
from prefactor_otel.pipeline.planner import Planner
from prefactor_otel.pipeline.runs import EarlierSpans
from tests.spans import make_provider
from tests.test_planner import _iso, _ok, _planner

PART = "r1"
REGISTER, CREATE, FINISH = "agent_instances/register", "agent_spans/create", "agent_instances/finish"


def gateway_planner(**kw: object) -> Planner:
    """As a gateway's pipeline builds it: a part (the replica id), late spans open a run, grace 1 s."""
    return _planner(run_part=PART, late_spans_open_a_run=True, finish_grace_seconds=1.0, **kw)


def as_gateway(records: list[SpanRecord]) -> list[SpanRecord]:
    """A gateway makes every parent an ordinary one (it receives every service of the trace): targets.map_spans."""
    for record in records:
        record.parent_is_remote = False
    return records


def a_trace() -> dict[str, SpanRecord]:
    """root -> (step, late tool -> late query): the root and `step` end first; `late tool` and its child later."""
    provider, collector = make_provider()
    tracer = provider.get_tracer("late")
    root = tracer.start_span("invoke_agent late", attributes={"gen_ai.operation.name": "invoke_agent"})
    inside = trace_api.set_span_in_context(root)
    tracer.start_span("step", context=inside).end()
    tool = tracer.start_span("late tool", context=inside)
    tracer.start_span("late query", context=trace_api.set_span_in_context(tool)).end()
    tool.end()
    root.end()
    return {record.name: record for record in as_gateway([map_span(s) for s in collector.spans])}


def deliver(planner: Planner, now: float) -> list[PlannedItem]:
    items = planner.plan(now=now)
    planner.apply(_ok(items), now=now)
    return items


def actions(items: list[PlannedItem]) -> list[str]:
    return [item.action for item in items]


def finished_first_run(planner: Planner, spans: dict[str, SpanRecord]) -> list[PlannedItem]:
    """The root and `step` arrive, are delivered, and the run is finished after the grace period."""
    planner.add([spans["step"], spans["invoke_agent late"]], now=0.0)
    first = deliver(planner, now=0.0)
    first += deliver(planner, now=1.0)
    assert actions(first).count(CREATE) == 2 and actions(first)[-1] == FINISH
    assert planner.open_traces == 0
    return first


def test_a_late_child_opens_the_traces_next_run_and_a_retried_copy_is_not_sent_again() -> None:
    planner = gateway_planner()
    spans = a_trace()
    first = finished_first_run(planner, spans)
    # After the run was finished: the late child (its parent, the root, is in the first run), and a client's retry
    # of `step`, which the first run created (its acknowledgement was lost, say).
    planner.add([spans["step"], spans["late tool"]], now=10.0)
    # Held while more of it may come (the grace period, 1 s here), with nothing due for the background ticker...
    assert planner.plan(now=10.9) == [] and not planner.has_due_work(10.9)
    assert planner.has_due_work(11.0)
    # ... then sent whole: the child is the new run's top (not held max_wait_seconds for its parent, which is in the
    # first run), finished at once, at its end, with its status.
    second = deliver(planner, now=11.0)
    assert actions(second) == [REGISTER, "agent_instances/start", CREATE, FINISH]
    register = second[0].body
    trace_hex = f"{spans['step'].trace_id:032x}"
    assert register["external_identifier"] == f"otel:{trace_hex}:{PART}:1"
    assert register["id"] != first[0].body["id"]
    create = second[2]
    assert create.span_id == spans["late tool"].span_id
    assert create.body["details"].get("parent_span_id") is None  # the top of its run: its parent is in another
    payload = create.body["details"]["payload"]
    assert payload["parent_span_id"] == f"{spans['invoke_agent late'].span_id:016x}"  # the OTel parent, kept
    assert payload["trace_id"] == trace_hex
    assert payload["metadata"]["prefactor.parent_in_earlier_run"] is True
    assert planner.counters["runs_reopened_late"] == 1 and planner.counters["spans_duplicate_ignored"] == 1
    assert planner.dropped == {}
    finish = second[3].body
    assert finish["status"] == "complete" and finish["timestamp"] == _iso(spans["late tool"].end_time_ns)
    assert planner.open_traces == 0 and planner.counters["instances_finished"] == 2


def test_a_held_late_run_is_sent_at_once_on_flush_and_more_late_spans_extend_its_quiet_time() -> None:
    planner = gateway_planner()
    spans = a_trace()
    finished_first_run(planner, spans)
    planner.add([spans["late query"]], now=10.0)
    planner.add([spans["late tool"]], now=10.8)  # activity: quiet from here on
    assert planner.plan(now=11.5) == []
    assert actions(deliver(planner, now=11.8)) == [REGISTER, "agent_instances/start", CREATE, CREATE, FINISH]
    other = gateway_planner()
    finished_first_run(other, spans)
    other.add([spans["late tool"]], now=10.0)
    assert actions(other.plan(now=10.0, flush=True)) == [REGISTER, "agent_instances/start", CREATE, FINISH]


def test_a_late_childs_own_children_stay_its_children() -> None:
    planner = gateway_planner()
    spans = a_trace()
    finished_first_run(planner, spans)
    planner.add([spans["late query"], spans["late tool"]], now=10.0)  # the grandchild first, as it ended first
    creates = {item.span_id: item for item in deliver(planner, now=11.0) if item.action == CREATE}
    tool, query = creates[spans["late tool"].span_id], creates[spans["late query"].span_id]
    assert tool.body["details"].get("parent_span_id") is None
    assert query.body["details"]["parent_span_id"] == tool.body["details"]["id"]  # an ordinary child
    assert "prefactor.parent_in_earlier_run" not in query.body["details"]["payload"]["metadata"]
    assert planner.counters["runs_reopened_late"] == 1


def test_retried_copies_alone_open_nothing_even_while_a_later_run_is_open() -> None:
    planner = gateway_planner()
    spans = a_trace()
    finished_first_run(planner, spans)
    planner.add([spans["step"], spans["invoke_agent late"]], now=5.0)  # copies only: no new run
    assert planner.plan(now=5.0) == [] and planner.open_traces == 0
    assert planner.counters["spans_duplicate_ignored"] == 2 and planner.counters["runs_reopened_late"] == 0
    planner.add([spans["late tool"]], now=10.0)
    assert planner.open_traces == 1
    planner.add([spans["step"], spans["late tool"]], now=10.5)  # the first run's and the open run's spans again
    assert planner.counters["spans_duplicate_ignored"] == 4
    second = deliver(planner, now=11.5)
    assert actions(second).count(CREATE) == 1 and planner.open_traces == 0  # the second run, finished
    # Then a third late span: the third run (`:2`); copies of both earlier runs' spans are still ignored.
    planner.add([spans["invoke_agent late"], spans["late tool"], spans["late query"]], now=20.0)
    third = deliver(planner, now=21.0)
    assert third[0].body["external_identifier"].endswith(f":{PART}:2")
    assert [item.span_id for item in third if item.action == CREATE] == [spans["late query"].span_id]
    assert planner.counters["spans_duplicate_ignored"] == 6 and planner.counters["runs_reopened_late"] == 2
    assert planner.dropped == {}


def test_a_late_span_whose_parent_is_in_no_earlier_run_waits_for_it_as_any_child_does() -> None:
    """Its parent may be on its way (late too, reordered): the span waits for it, then is its child, the parent the
    new run's top."""
    planner = gateway_planner(max_wait_seconds=5.0)
    spans = a_trace()
    finished_first_run(planner, spans)
    planner.add([spans["late query"]], now=10.0)  # its parent `late tool` is in no run here (yet)
    assert deliver(planner, now=11.0) == []  # it waits for it
    planner.add([spans["late tool"]], now=11.0)
    creates = [item for item in deliver(planner, now=12.0) if item.action == CREATE]
    assert [item.span_id for item in creates] == [spans["late tool"].span_id, spans["late query"].span_id]
    assert creates[0].body["details"].get("parent_span_id") is None  # its parent, the root, is in the first run
    assert creates[1].body["details"]["parent_span_id"] == creates[0].body["details"]["id"]
    assert planner.dropped == {} and planner.counters["runs_reopened_late"] == 1
    # A parent that never comes: after max_wait_seconds the span goes as an orphan, as any child's would.
    lone = gateway_planner(max_wait_seconds=5.0)
    finished_first_run(lone, spans)
    lone.add([spans["late query"]], now=10.0)
    assert deliver(lone, now=14.9) == []
    (create,) = [item for item in deliver(lone, now=15.0) if item.action == CREATE]
    assert create.body["details"]["payload"]["metadata"]["orphaned"] is True and lone.dropped == {}


def test_without_the_option_or_for_a_terminated_run_a_late_span_is_still_dropped() -> None:
    spans = a_trace()
    exporter = _planner(run_part=PART, finish_grace_seconds=1.0)  # the exporter keeps today's rule
    finished_first_run(exporter, spans)
    exporter.add([spans["late tool"]], now=10.0)
    assert exporter.plan(now=10.0) == [] and exporter.dropped == {"instance_already_finished": 1}

    planner = gateway_planner()
    finished_first_run(planner, spans)
    planner.terminate(spans["step"].trace_id)  # terminated in Prefactor: nothing more of it, copies or not
    planner.add([spans["late tool"], spans["step"]], now=10.0)
    assert planner.plan(now=10.0) == [] and planner.dropped == {"run_terminated": 2}

    with pytest.raises(ValueError, match="run part"):
        _planner(late_spans_open_a_run=True)  # the new run could have no id of its own


def test_the_span_ids_kept_are_bounded_and_a_forgotten_trace_drops_as_before(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runs_module, "MAX_FINISHED_SPANS_REMEMBERED", 3)
    planner = gateway_planner()
    older, newer = a_trace(), a_trace()
    finished_first_run(planner, older)
    finished_first_run(planner, newer)  # 2 + 2 ids > 3: the older trace's are forgotten
    assert list(planner.runs.finished_spans) == [newer["step"].trace_id]
    planner.add([older["late tool"], newer["late tool"]], now=10.0)
    created = [item.span_id for item in deliver(planner, now=11.0) if item.action == CREATE]
    assert created == [newer["late tool"].span_id]
    assert planner.dropped == {"instance_already_finished": 1}  # a copy or a late span: no longer known


def test_earlier_spans_is_a_sorted_set_of_64_bit_ids() -> None:
    ids = EarlierSpans([2**64 - 1, 5, 5, 1])
    assert len(ids) == 3 and 5 in ids and 2**64 - 1 in ids and 4 not in ids and 0 not in ids and "5" not in ids
    joined = ids.joined([7, 1])
    assert len(joined) == 4 and 7 in joined and 7 not in ids
