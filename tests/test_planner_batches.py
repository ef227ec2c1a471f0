"""The planner's per-run shortcuts (issue 22): `add` and `start` do a run's checks once per run of consecutive spans
of it, `apply` looks a run up once per run of consecutive items. Held here to what the planner does span by span: a
batch added, started (or answered) in one call leaves the same state, plans the same items in the same order, and
counts the same, as its spans added (started, answered) one call each -- on batches whose runs interleave, with
duplicates, filtered spans, spans of finished and rejected runs, and answers that mix successes with failures. Real
mapped spans; no server (the planner does no I/O)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from contextlib import suppress
from typing import Any

from prefactor_otel.mapping import map_span
from prefactor_otel.mapping.payload import SpanRecord
from prefactor_otel.pipeline.items import PlannedItem
from prefactor_otel.pipeline.planner import Planner
from prefactor_otel.transport.outcomes import ItemOutcome
from tests.spans import agent_trace, make_provider, planner_for_tests


def _planner(**kw: Any) -> Planner:
    # The Planner's own default grace (2 s), not the shared factory's 0.
    return planner_for_tests(4242, run_part="part-1", **{"finish_grace_seconds": 2.0, **kw})  # type: ignore[no-any-return]


def _traces(count: int, *, fail_every: int = 0) -> list[list[SpanRecord]]:
    """`count` agent runs, each its spans in the order they ended (children first)."""
    out = []
    for n in range(count):
        provider, collector = make_provider()
        with suppress(RuntimeError):  # a failing run's tool raises through its spans, as an application's would
            agent_trace(provider, fail=bool(fail_every) and n % fail_every == 0)
        out.append([map_span(s) for s in collector.spans])
    return out


def _interleave(traces: list[list[SpanRecord]]) -> list[SpanRecord]:
    """Runs of one, two and three consecutive spans of a trace, alternating between traces."""
    queues = [list(t) for t in traces]
    out: list[SpanRecord] = []
    step = 0
    while any(queues):
        for queue in queues:
            take = 1 + step % 3
            out.extend(queue[:take])
            del queue[:take]
            step += 1
    return out


def _state(planner: Planner) -> tuple[Any, ...]:
    runs = planner.runs
    return (
        [
            (t.trace_id, sorted(t.pending), list(t.created), t.last_activity, t.last_end_ns)
            for t in runs.traces.values()
        ],
        list(runs.with_pending),
        runs.queued,
        dict(runs.counters),
        dict(runs.dropped),
        dict(runs.finished),
    )


def _view(items: list[PlannedItem]) -> list[tuple[Any, ...]]:
    return [(i.key, i.action, repr(i.body), i.trace_id, i.span_id) for i in items]


def _both(records: list[SpanRecord], now: float, **kw: Any) -> tuple[Planner, Planner]:
    """Two planners given the same records: one batch, and one span per call."""
    whole, single = _planner(**kw), _planner(**kw)
    whole.add(copy.deepcopy(records), now)
    for record in copy.deepcopy(records):
        single.add([record], now)
    return whole, single


def test_interleaved_runs_with_duplicates_add_as_span_by_span() -> None:
    traces = _traces(4)
    records = _interleave(traces)
    records.insert(3, records[1])  # a duplicate right after another run's span
    records.insert(7, records[6])  # and one right after itself
    for grace in (0.0, 6.0):
        whole, single = _both(records, 1.0, finish_grace_seconds=grace)
        assert _state(whole) == _state(single)
        assert whole.counters["spans_duplicate_ignored"] == 2
        assert _view(whole.plan(1.0)) == _view(single.plan(1.0))


def test_a_filter_between_a_runs_spans_adds_as_span_by_span() -> None:
    records = _interleave(_traces(3))
    whole, single = _both(records, 2.0, span_filter=lambda r: r.schema_name != "otel:span")
    assert _state(whole) == _state(single)
    assert _view(whole.plan(2.0, flush=True)) == _view(single.plan(2.0, flush=True))


def test_spans_of_finished_and_rejected_runs_among_others_add_as_span_by_span() -> None:
    traces = _traces(3)
    finished, rejected, fresh = traces
    pair = [_planner(finish_grace_seconds=0.0), _planner(finish_grace_seconds=0.0)]
    for planner in pair:
        planner.add(copy.deepcopy(finished + rejected), 0.0)
        items = planner.plan(0.0)
        outcomes = {i.key: ItemOutcome("success") for i in items if i.trace_id == finished[0].trace_id}
        register = next(i for i in items if i.trace_id == rejected[0].trace_id)
        outcomes[register.key] = ItemOutcome("error", "invalid_value", "no")
        planner.apply(outcomes, 0.0)
    # A batch: a late span of the finished run, fresh spans, a span of the rejected run, fresh again.
    batch = [finished[0], fresh[0], fresh[1], rejected[0], fresh[2], finished[1], *fresh[3:]]
    whole, single = pair
    whole.add(copy.deepcopy(batch), 1.0)
    for record in copy.deepcopy(batch):
        single.add([record], 1.0)
    assert _state(whole) == _state(single)
    assert whole.dropped["instance_already_finished"] == 2
    assert _view(whole.plan(1.0)) == _view(single.plan(1.0))


def _answer(items: list[PlannedItem]) -> dict[str, ItemOutcome]:
    """Successes, a span refused, one not processed, a register refused (its run's later items answered too)."""
    outcomes: dict[str, ItemOutcome] = {}
    registers = [i for i in items if i.action == "agent_instances/register"]
    creates = [i for i in items if i.action == "agent_spans/create"]
    for item in items:
        outcomes[item.key] = ItemOutcome("success")
    outcomes[creates[2].key] = ItemOutcome("error", "invalid_value", "bad span")
    outcomes[creates[5].key] = ItemOutcome("not_processed")
    outcomes[registers[-1].key] = ItemOutcome("error", "invalid_value", "bad run")
    return outcomes


def test_outcomes_applied_at_once_as_one_by_one() -> None:
    records = [r for t in _traces(5, fail_every=2) for r in t]
    for grace in (0.0, 6.0):
        whole, single = _both(records, 1.0, finish_grace_seconds=grace)
        items = whole.plan(1.0)
        assert _view(items) == _view(single.plan(1.0))
        outcomes = _answer(items)
        whole.apply(outcomes, 1.0)
        for key, outcome in outcomes.items():
            single.apply({key: outcome}, 1.0)
        assert _state(whole) == _state(single)
        assert whole.counters["spans_exported"] > 0 and whole.dropped["rejected:invalid_value"] == 1
        after: Callable[[Planner], list[tuple[Any, ...]]] = lambda p: _view(p.plan(20.0, shutdown=True))  # noqa: E731
        assert after(whole) == after(single)


def _start_state(planner: Planner) -> tuple[Any, ...]:
    runs = planner.runs
    return (
        _state(planner),
        [
            (t.trace_id, list(t.open), list(t.open_live), list(t.live), t.tracked, t.announce, t.first_start_ns)
            for t in runs.traces.values()
        ],
        list(runs.traces),
        planner.open_spans,
    )


def test_starts_of_interleaved_runs_open_as_span_by_span() -> None:
    """`start` does a run's checks once per run of consecutive started spans of it: held to one span per call, on
    starts whose runs interleave, with a span started twice, a span already ended, and spans of a finished run and
    of a rejected one among them; then the same ends and plans."""
    from prefactor_otel.mapping import MappingOptions
    from prefactor_otel.pipeline.starts import LivePolicy, live_mapper, read_start

    spans_of_runs = []
    for n in range(5):
        provider, collector = make_provider()
        with suppress(RuntimeError):
            agent_trace(provider, fail=n == 1)
        spans_of_runs.append(sorted(collector.spans, key=lambda s: s.start_time or 0))  # in the order they started
    finished, rejected, *fresh = spans_of_runs
    live = {"live_policy": LivePolicy("agent"), "map_started": live_mapper(MappingOptions())}
    pair = [_planner(finish_grace_seconds=0.0, **live), _planner(finish_grace_seconds=0.0, **live)]
    for planner in pair:
        planner.add([map_span(s) for s in finished + rejected], 0.0)
        items = planner.plan(0.0)
        outcomes = {i.key: ItemOutcome("success") for i in items if i.trace_id == finished[0].context.trace_id}
        register = next(i for i in items if i.trace_id == rejected[0].context.trace_id)
        outcomes[register.key] = ItemOutcome("error", "invalid_value", "no")
        planner.apply(outcomes, 0.0)
        planner.add([map_span(fresh[0][-1])], 0.5)  # a span that ended before its start is seen
    queues = [list(run) for run in fresh]
    order = [finished[0], rejected[0], rejected[1]]
    step = 0
    while any(queues):
        for queue in queues:
            take = 1 + step % 3
            order.extend(queue[:take])
            del queue[:take]
            step += 1
    order.insert(4, order[3])  # started twice, right after itself
    order.insert(9, rejected[2])  # the rejected run between two of another run's spans
    started = [s for s in map(read_start, order) if s is not None]
    whole, single = pair
    whole.start(started, 1.0)
    for one in started:
        single.start([one], 1.0)
    assert _start_state(whole) == _start_state(single)
    assert whole.open_spans > 0 and any(t.live for t in whole.runs.traces.values())
    assert _view(whole.plan(1.0)) == _view(single.plan(1.0))
    ended = [map_span(s) for run in fresh for s in run]
    for planner in pair:
        planner.add(copy.deepcopy(ended), 2.0)
    assert _start_state(whole) == _start_state(single)
    assert _view(whole.plan(2.0)) == _view(single.plan(2.0))
