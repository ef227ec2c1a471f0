"""The planner's cost must not follow the process's history (issue 22: planning measured dearer late in a long
export): nothing it keeps grows with the runs it has finished beyond its stated bounds. Held on a long stream of
runs, each finished, some terminated, late spans of finished runs among them: after the bounds have filled, a
further stretch of as many runs leaves every structure the same size and the heap with no more objects. No server:
the planner alone (it does no I/O), driven as the sending thread drives it."""

from __future__ import annotations

import gc
from typing import Any

from prefactor_otel.mapping import values
from prefactor_otel.mapping.payload import SpanRecord
from prefactor_otel.model import ids
from prefactor_otel.pipeline import items as items_module
from prefactor_otel.pipeline import planner as planner_module
from prefactor_otel.pipeline import runs as runs_module
from prefactor_otel.pipeline.planner import Planner
from prefactor_otel.transport.outcomes import SUCCESS
from tests.spans import planner_for_tests

SECOND = 1_000_000_000
REMEMBERED = 1_000  # the bounds on closed runs remembered, lowered from 10,000 (the test's time)
RUNS_PER_STRETCH = 1_100  # more than the planner remembers of closed runs: the bounds fill in one stretch


def _run(number: int) -> list[SpanRecord]:
    """A run of two spans, child ended first, as the SDK ends them."""
    trace_id = (number + 1) * 0x9E3779B97F4A7C15
    start = 1_700_000_000 * SECOND + number * 1_000_000
    payload: dict[str, Any] = {"metadata": {}}
    child = SpanRecord(
        trace_id, 2, 1, False, "step", "prefactor:span", "complete", start + 1, start + SECOND, payload,
        {"outputs": {}}, None, {},
    )  # fmt: skip
    root = SpanRecord(
        trace_id, 1, None, False, "run", "prefactor:span", "complete", start, start + 2 * SECOND, payload,
        {"outputs": {}}, None, {},
    )  # fmt: skip
    return [child, root]


def _stretch(planner: Planner, first: int, now: float) -> float:
    """RUNS_PER_STRETCH runs, batches of 256 spans, every item answered success; one run in 100 terminated before
    its spans come, and a late span of an earlier (finished) run in every batch."""
    for batch_start in range(first, first + RUNS_PER_STRETCH, 128):
        now += 0.01
        batch: list[SpanRecord] = []
        for number in range(batch_start, batch_start + 128):
            if number % 100 == 7:
                planner.terminate(_run(number)[0].trace_id)
            batch.extend(_run(number))
        late = _run(batch_start - 300)[0] if batch_start >= 300 else None
        if late is not None:
            late.span_id = 3  # a span its finished run did not create: opens the trace's next run
            late.parent_is_remote = True
            batch.append(late)
        planner.add(batch, now)
        items = planner.plan(now)
        planner.apply({item.key: SUCCESS for item in items}, now)
        planner.take_run_changes()
        planner.take_live_span_changes()
    items = planner.plan(now, flush=True)
    planner.apply({item.key: SUCCESS for item in items}, now)
    planner.take_run_changes()
    planner.take_live_span_changes()
    assert planner.plan(now) == []  # and the runs due a look, kept lazily, are looked at
    return now


def _sizes(planner: Planner) -> dict[str, int]:
    runs = planner.runs
    return {
        "open runs": len(runs.traces),
        "finished": len(runs.finished),
        "terminated": len(runs.terminated),
        "own runs": len(runs.own_runs),
        "finished span sets": len(runs.finished_spans),
        "runs due a look": len(runs.with_pending),
        "queued": runs.queued,
        "runs opened again": len(planner._reopened),
        "last plan's items": len(planner._outcomes._items),
        "counter names": len(runs.counters) + len(runs.dropped) + len(runs.actions_dropped),
        "times cached": len(items_module._SECOND_TEXTS) + len(values._SECONDS),
        "id parts cached": len(ids._TOPS) + len(ids._PARTITIONS),
    }


def _objects() -> int:
    gc.collect()
    return len(gc.get_objects())


def test_nothing_the_planner_keeps_grows_with_its_history(monkeypatch: Any) -> None:
    monkeypatch.setattr(runs_module, "MAX_FINISHED_TRACES_REMEMBERED", REMEMBERED)
    monkeypatch.setattr(runs_module, "MAX_TERMINATED_TRACES_REMEMBERED", REMEMBERED)
    monkeypatch.setattr(planner_module, "MAX_FINISHED_TRACES_REMEMBERED", REMEMBERED)
    for late_spans_open_a_run in (False, True):
        planner = planner_for_tests(4242, run_part="part-1", late_spans_open_a_run=late_spans_open_a_run)
        now = _stretch(planner, 0, 0.0)
        filled, objects = _sizes(planner), _objects()
        assert filled["finished"] == filled["own runs"] == REMEMBERED  # the bounds have filled
        now = _stretch(planner, RUNS_PER_STRETCH, now)
        later, objects_later = _sizes(planner), _objects()
        flat = (
            "open runs",
            "finished",
            "own runs",
            "finished span sets",
            "runs due a look",
            "queued",
            "last plan's items",
        )
        assert {key: later[key] for key in flat} == {key: filled[key] for key in flat}, late_spans_open_a_run
        assert later["open runs"] == later["runs due a look"] == later["queued"] == 0
        # Bounded, not filled by two stretches (one run in 100 terminated or opened again; a few seconds of times):
        assert later["terminated"] <= REMEMBERED and later["runs opened again"] <= REMEMBERED
        assert later["times cached"] <= items_module._SECONDS_KEPT + values._SECONDS_KEPT
        assert later["id parts cached"] <= 2 * ids._CACHED_KEPT
        assert later["counter names"] <= 12
        assert planner.counters["spans_exported"] > 2 * RUNS_PER_STRETCH
        # The heap: no object kept per run beyond the bounds (one per run would be 1,100 more).
        assert objects_later - objects < 300, (objects, objects_later)
