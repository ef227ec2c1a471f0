"""The planner's hand-built shortcuts equal what they stand for: the ended span create (`ended_span_create_item`, its
times formatted in place) equals the general `span_create_item`, a new `RunState` holds its declared defaults, the
creation order is breadth first, and the last plan's items are found by key. No server: pure functions and the
planner alone."""

from __future__ import annotations

import dataclasses
import gc
import json
import random
from typing import Any

import pytest

from prefactor_otel.mapping.payload import SpanRecord
from prefactor_otel.mapping.values import iso_from_ns
from prefactor_otel.pipeline import items as items_module
from prefactor_otel.pipeline.items import ended_span_create_item, span_create_item
from prefactor_otel.pipeline.runs import SHARED_EMPTY, RunState, own
from prefactor_otel.transport.outcomes import SUCCESS, ItemOutcome
from tests.spans import planner_for_tests

PARTITION = 4242
TRACE = 0x0AF7651916CD43DD8448EB211C80319C


def _record(span_id: int, parent: int | None, start_ns: int, end_ns: int, status: str = "complete") -> SpanRecord:
    payload = {"span_id": f"{span_id:016x}", "name": f"step {span_id}", "metadata": {}}
    return SpanRecord(
        TRACE, span_id, parent, False, f"step {span_id}", "prefactor:span", status,  # type: ignore[arg-type]
        start_ns, end_ns, payload, {"outputs": {}}, None, {},
    )  # fmt: skip


def _wire(item: dict[str, Any]) -> str:
    return json.dumps(item)  # key order included: the wire's field order


def test_ended_span_create_equals_the_general_create_on_edge_and_random_times() -> None:
    rng = random.Random(22)
    second = 1_000_000_000
    edges = [
        0,
        1,
        999_999,
        1_000_000,
        second - 1,
        second,
        1_767_225_599_999_999_999,  # 2025-12-31T23:59:59.999
        1_767_225_600_000_000_000,  # the next year's first instant
        -1,  # before 1970: floor division, as iso_from_ns
        -second - 1,
    ]
    times = edges + [rng.randrange(0, 4_000_000_000 * second) for _ in range(400)]  # more seconds than cached
    for index, start in enumerate(times):
        end = start + rng.choice([0, 1, 999_999, second, 7 * second + 123_456_789])
        parent = None if index % 3 == 0 else rng.getrandbits(64)
        status = "failed" if index % 5 == 0 else "complete"
        record = _record(rng.getrandbits(64), parent, start, end, status)
        parent_id = None if parent is None else f"parent-{parent}"
        fast = ended_span_create_item(record, "instance-1", f"span-{index}", parent_id)
        general = span_create_item(
            record,
            "instance-1",
            f"span-{index}",
            parent_id,
            record.payload,
            record.result_payload,
            orphan=False,
            placeholder=False,
        )
        assert _wire(fast) == _wire(general)
        assert fast["details"]["started_at"] == iso_from_ns(start)
        assert fast["details"]["finished_at"] == iso_from_ns(end)


def test_second_texts_stay_bounded() -> None:
    for second in range(3 * items_module._SECONDS_KEPT):
        record = _record(1, None, second * 1_000_000_000, second * 1_000_000_000 + 5)
        ended_span_create_item(record, "instance-1", "span-1", None)
        assert len(items_module._SECOND_TEXTS) <= items_module._SECONDS_KEPT


def test_a_new_run_holds_its_declared_defaults_and_no_dict_of_its_own() -> None:
    first, second = RunState(1, "instance-1", None, None), RunState(2, "instance-2", {"a": 1}, {})
    assert first.trace_id == 1 and first.instance_id == "instance-1" and first.register_item is None
    assert second.register_item == {"a": 1} and second.start_item == {}
    side = 0
    for spec in dataclasses.fields(RunState):
        if spec.name in ("trace_id", "instance_id", "register_item", "start_item"):
            continue
        if spec.default_factory is not dataclasses.MISSING:
            # A side collection: the shared empty until the run writes it (runs.own).
            assert spec.default_factory() is SHARED_EMPTY, spec.name
            assert getattr(first, spec.name) is SHARED_EMPTY is getattr(second, spec.name), spec.name
            side += 1
        else:
            assert spec.default is not dataclasses.MISSING, spec.name
            assert getattr(first, spec.name) == spec.default and type(getattr(first, spec.name)) is type(
                spec.default
            ), spec.name
    assert side == 12
    # What every run shares refuses any write (a write site that missed `own`, or a removal its truth did not guard,
    # fails here, not in production), finds nothing, and is falsy.
    for write in (
        lambda: SHARED_EMPTY.__setitem__(1, None),
        lambda: SHARED_EMPTY.setdefault(1, None),
        lambda: SHARED_EMPTY.update({1: None}),
        lambda: SHARED_EMPTY.pop(1, None),
        lambda: SHARED_EMPTY.clear(),
        lambda: SHARED_EMPTY.__delitem__(1),
    ):
        with pytest.raises((TypeError, AttributeError)):
            write()
    assert SHARED_EMPTY == {} and not SHARED_EMPTY and 1 not in SHARED_EMPTY and SHARED_EMPTY.get(1) is None
    own_dict = own(first.orphaned)
    assert own_dict == {} and own_dict is not SHARED_EMPTY and own(own_dict) is own_dict


def _dicts_of(run: RunState) -> dict[str, int]:
    """The dicts a run holds of its own (not the shared empty), by field, with their entries; and every dict
    reachable from the run is one of its fields or its register or start item: nothing else."""
    own_dicts = {
        name: len(value)
        for name in RunState.__slots__
        if type(value := getattr(run, name)) is dict and name not in ("register_item", "start_item")
    }
    reachable = [ref for ref in gc.get_referents(run) if isinstance(ref, dict) and ref is not SHARED_EMPTY]
    assert len(reachable) == len(own_dicts) + (run.register_item is not None) + (type(run.start_item) is dict)
    return own_dicts


def test_an_open_run_holds_only_the_dicts_it_needs() -> None:
    # Fed the common way (a bare exporter: ended spans, delivered, the run open through its finish grace): while
    # its spans are queued it holds its queue and their arrivals; once they are delivered, what it created and its
    # spans' Prefactor ids (its queue given back with the outcomes) and nothing else, however many runs are open.
    second = 1_000_000_000
    planner = planner_for_tests(PARTITION, run_part="p1", finish_grace_seconds=60.0)
    runs = 50
    records = []
    for number in range(runs):
        trace = TRACE + number
        start = 1_700_000_000 * second + number
        for span_id, parent in ((3, 2), (2, 1), (1, None)):
            record = _record(span_id, parent, start + span_id, start + 10 * second - span_id)
            record.trace_id = trace
            records.append(record)
    planner.add(records, 0.0)
    for run in planner.runs.traces.values():
        assert _dicts_of(run) == {"pending": 3, "arrived": 3}
    items = planner.plan(0.0)
    planner.apply({item.key: SUCCESS for item in items}, 0.0)
    assert planner.open_traces == runs and planner.counters["spans_exported"] == 3 * runs
    for run in planner.runs.traces.values():
        assert run.register_item is None and run.start_item is None  # dropped once delivered
        assert _dicts_of(run) == {"created": 3, "span_ids": 3}
    assert not planner.plan(1.0)  # nothing due: the runs wait out their grace
    # A late child of a delivered span joins its run: a queue again, then gone again once delivered.
    late = _record(4, 1, 1_700_000_000 * second + 4, 1_700_000_000 * second + 5)
    planner.add([late], 2.0)
    run = planner.runs.traces[TRACE]
    assert _dicts_of(run) == {"created": 3, "span_ids": 3, "pending": 1, "arrived": 1}
    items = planner.plan(2.0)
    assert [item.span_id for item in items] == [4]
    assert items[0].body["details"]["parent_span_id"] == run.span_ids[1]
    planner.apply({item.key: SUCCESS for item in items}, 2.0)
    assert _dicts_of(run) == {"created": 4, "span_ids": 4}
    # A queue emptied another way (a span the server rejected) is given back at the next plan.
    planner.add([_record(5, 1, 1_700_000_000 * second + 6, 1_700_000_000 * second + 7)], 3.0)
    items = planner.plan(3.0)
    planner.apply({items[0].key: ItemOutcome("error", "invalid")}, 3.0)
    assert planner.dropped["rejected:invalid"] == 1 and not run.pending and type(run.pending) is dict
    assert not planner.plan(4.0)
    assert _dicts_of(run) == {"created": 4, "span_ids": 5}
    # At the end of their grace every run is finished and forgotten.
    planner.apply({item.key: SUCCESS for item in planner.plan(100.0)}, 100.0)
    assert planner.open_traces == 0 and planner.counters["instances_finished"] == runs


def test_creation_order_is_breadth_first_in_queue_order() -> None:
    # root -> a, b; a -> a1, a2; b -> b1; ended (and added) children first, as the SDK ends them.
    second = 1_000_000_000
    root, a, b, a1, a2, b1 = 1, 2, 3, 4, 5, 6
    spans = [(a1, a), (b1, b), (a2, a), (a, root), (b, root), (root, None)]
    records = [_record(span, parent, 1_700_000_000 * second + span, 1_700_000_001 * second) for span, parent in spans]
    planner = planner_for_tests(PARTITION, run_part="p1")
    planner.add(records, 0.0)
    items = planner.plan(0.0)
    creates = [item.span_id for item in items if item.action == "agent_spans/create"]
    assert creates == [root, a, b, a1, a2, b1]
    planner.apply({item.key: SUCCESS for item in items}, 0.0)
    assert planner.counters["spans_exported"] == 6 and planner.queued_spans == 0 and planner.open_traces == 0


def test_outcomes_of_an_earlier_plan_are_void_and_keys_find_their_items() -> None:
    second = 1_000_000_000
    planner = planner_for_tests(PARTITION, run_part="p1", finish_grace_seconds=60.0)
    root = _record(1, None, 1_700_000_000 * second, 1_700_000_002 * second)
    child = _record(2, 1, 1_700_000_000 * second + 5, 1_700_000_001 * second)
    planner.add([child, root], 0.0)
    first = planner.plan(0.0)
    again = planner.plan(0.0)  # nothing answered: the same items, planned again
    assert [item.body for item in again] == [item.body for item in first]
    planner.apply({"no-such-key": SUCCESS, **{item.key: SUCCESS for item in reversed(again)}}, 0.0)
    assert planner.counters["spans_exported"] == 2 and planner.queued_spans == 0


def test_planned_items_carry_their_wire_bytes_and_a_register_its_dict() -> None:
    # A span create in flight is one item and its bytes: its two dicts die as it is planned (items.wire_data).
    from prefactor_otel.transport.wire import encode_item

    second = 1_000_000_000
    planner = planner_for_tests(PARTITION, run_part="p1")
    root = _record(1, None, 1_700_000_000 * second, 1_700_000_002 * second)
    child = _record(2, 1, 1_700_000_000 * second + 5, 1_700_000_001 * second, status="failed")
    planner.add([child, root], 0.0)
    items = planner.plan(0.0)
    actions = [item.action for item in items]
    assert actions == [
        "agent_instances/register",
        "agent_instances/start",
        "agent_spans/create",
        "agent_spans/create",
        "agent_instances/finish",
    ]
    for item in items:
        if item.action == "agent_instances/register":
            assert type(item.data) is dict and item.body is item.data  # the schema set is sent once: a dict
            continue
        assert type(item.data) is bytes
        body = item.body
        assert body["_type"] == item.action and body["idempotency_key"] == item.key
        assert encode_item(body) == item.data  # what the send path would have written
    creates = [item.body for item in items if item.action == "agent_spans/create"]
    assert [c["details"]["status"] for c in creates] == ["complete", "failed"]
    assert creates[1]["details"]["parent_span_id"] == creates[0]["details"]["id"]
    assert creates[0]["details"]["payload"] == root.payload  # the record's payload, as it was mapped


def test_an_item_the_encoder_refuses_stays_a_dict_for_the_send_path_to_report() -> None:
    refused = {"_type": "agent_spans/create", "idempotency_key": "k", "details": {"payload": object()}}
    assert items_module.wire_data(refused) is refused
    fine = {"_type": "agent_spans/create", "idempotency_key": "k", "details": {"payload": {"a": [1, 2.5, None]}}}
    data = items_module.wire_data(fine)
    assert type(data) is bytes and json.loads(data) == fine


def test_records_and_planned_items_in_flight_are_not_containers_the_collector_counts() -> None:
    # CPython starts a young collection every 700 containers allocated net, whichever thread allocates them; a
    # batch in flight holds a record and an item per span (docs/wire.md, "Containers in flight").
    import gc

    from prefactor_otel.pipeline.items import PlannedItem

    second = 1_000_000_000
    planner = planner_for_tests(PARTITION, run_part="p1")
    planner.add([_record(1, None, 1_700_000_000 * second, 1_700_000_001 * second)], 0.0)
    item = next(i for i in planner.plan(0.0) if i.action == "agent_spans/create")
    shared: dict[str, object] = {}
    enabled = gc.isenabled()
    gc.disable()
    try:
        before = gc.get_count()[0]
        records = [  # as the mapping hands them over: payloads encoded (bytes), the Resource's attributes shared
            SpanRecord(
                TRACE,
                span,
                1,
                False,
                "step",
                "prefactor:span",
                "complete",
                second,
                2 * second,
                b"{}",
                b"{}",
                None,
                shared,
            )
            for span in range(2, 5002)
        ]
        items = [PlannedItem(item.key, item.action, item.data, item.trace_id, span) for span in range(5000)]
        grown = gc.get_count()[0] - before
    finally:
        if enabled:
            gc.enable()
    assert len(records) == len(items) == 5000 and grown <= 10  # the two lists, and no record or item
    assert not gc.is_tracked(records[0]) and not gc.is_tracked(items[0])
