"""The planner alone: real mapped spans in, ordered bulk items out, fake outcomes back. No server."""

from prefactor_otel.mapping import map_span
from prefactor_otel.transport.outcomes import ItemOutcome
from tests.spans import agent_trace, make_provider, planner_for_tests

PARTITION = 12345


def _planner(**kw):
    return planner_for_tests(PARTITION, **kw)


def _records():
    provider, collector = make_provider()
    agent_trace(provider)
    return [map_span(s) for s in collector.spans]  # children end first: db, chat? order as ended


def _ok(items):
    return {item.key: ItemOutcome("success") for item in items}


def test_one_trace_register_start_spans_parent_first_then_finish():
    planner = _planner()
    records = _records()
    planner.add(records, now=0.0)
    items = planner.plan(now=0.0)
    actions = [i.action for i in items]
    assert actions[:2] == ["agent_instances/register", "agent_instances/start"]
    assert actions[-1] == "agent_instances/finish"
    created = [i for i in items if i.action == "agent_spans/create"]
    assert len(created) == 4
    seen: set[str] = set()
    for item in created:
        parent = item.body["details"].get("parent_span_id")
        assert parent is None or parent in seen  # parents precede children
        seen.add(item.body["details"]["id"])
    planner.apply(_ok(items), now=0.0)
    assert planner.counters["spans_exported"] == 4
    assert planner.counters["instances_finished"] == 1
    assert planner.plan(now=1.0) == []
    assert planner.open_traces == 0


def test_child_before_parent_waits_then_gets_the_right_parent():
    planner = _planner()
    records = _records()
    root = next(r for r in records if r.is_local_root)
    children = [r for r in records if not r.is_local_root]
    planner.add(children, now=0.0)
    first = planner.plan(now=0.0)
    assert [i.action for i in first] == []  # nothing is ready: everyone waits for an ancestor
    planner.add([root], now=1.0)
    items = planner.plan(now=1.0)
    creates = [i for i in items if i.action == "agent_spans/create"]
    assert creates[0].span_id == root.span_id
    by_span = {i.span_id: i.body["details"] for i in creates}
    for r in children:
        assert by_span[r.span_id]["parent_span_id"] == by_span[r.parent_span_id]["id"]


def test_ids_and_keys_are_deterministic_across_planners():
    records = _records()
    a, b = _planner(), _planner()
    a.add(records, 0.0)
    b.add(records, 0.0)
    assert [i.body for i in a.plan(0.0)] == [i.body for i in b.plan(0.0)]


def test_unacknowledged_items_are_planned_again_identically():
    planner = _planner()
    planner.add(_records(), 0.0)
    items = planner.plan(0.0)
    # server processed only the first three, then stopped (error on none): rest not processed
    planner.apply({i.key: ItemOutcome("success") for i in items[:3]}, 0.0)
    again = planner.plan(0.0)
    assert [i.body for i in again] == [i.body for i in items[3:]]


def test_orphan_after_age_bound_keeps_otel_parent_in_payload():
    planner = _planner(max_wait_seconds=5.0)
    records = _records()
    child = next(r for r in records if r.name == "chat gpt-4o")
    planner.add([child], 0.0)
    assert planner.plan(1.0) == []
    items = planner.plan(6.0)
    create = next(i for i in items if i.action == "agent_spans/create")
    details = create.body["details"]
    assert "parent_span_id" not in details
    assert details["payload"]["parent_span_id"] == f"{child.parent_span_id:016x}"
    assert details["payload"]["metadata"]["orphaned"] is True
    assert planner.counters["spans_orphaned_age"] == 1


def test_orphan_at_count_bound():
    planner = _planner(max_waiting_spans=1)
    records = [r for r in _records() if r.name in ("chat gpt-4o", "execute_tool lookup")]
    planner.add(records, 0.0)
    assert planner.counters["spans_orphaned_count"] == 1


def test_shutdown_sends_waiting_children_as_orphans_and_finishes():
    planner = _planner()
    records = [r for r in _records() if not r.is_local_root]
    planner.add(records, 0.0)
    items = planner.plan(0.0, shutdown=True)
    creates = [i for i in items if i.action == "agent_spans/create"]
    assert len(creates) == 3
    assert items[-1].action == "agent_instances/finish"


def test_finish_waits_for_grace_period():
    planner = _planner(finish_grace_seconds=2.0)
    planner.add(_records(), 0.0)
    items = planner.plan(0.0)
    assert items[-1].action != "agent_instances/finish"
    planner.apply(_ok(items), 0.0)
    assert planner.plan(1.0) == []
    assert planner.has_due_work(2.5)
    later = planner.plan(2.5)
    assert [i.action for i in later] == ["agent_instances/finish"]
    assert later[0].body["status"] == "complete"


def test_failed_root_finishes_failed():
    provider, collector = make_provider()
    tracer = provider.get_tracer("t")
    try:
        with tracer.start_as_current_span("root"):
            raise ValueError("x")
    except ValueError:
        pass
    planner = _planner()
    planner.add([map_span(s) for s in collector.spans], 0.0)
    items = planner.plan(0.0)
    assert items[-1].body["status"] == "failed"


def test_rejected_register_drops_the_trace_counted():
    planner = _planner()
    planner.add(_records(), 0.0)
    items = planner.plan(0.0)
    planner.apply({items[0].key: ItemOutcome("error", "invalid_value", "bad")}, 0.0)
    assert sum(planner.dropped.values()) == 4
    assert planner.plan(0.0) == []


def test_span_error_is_dropped_with_reason_and_others_continue():
    planner = _planner()
    planner.add(_records(), 0.0)
    items = planner.plan(0.0)
    outcomes = _ok(items[:2])
    bad = items[2]
    outcomes[bad.key] = ItemOutcome("error", "invalid_value", "nope")
    planner.apply(outcomes, 0.0)
    assert planner.dropped["rejected:invalid_value"] == 1
    again = planner.plan(0.0)
    assert bad.key not in {i.key for i in again}


def test_already_used_key_counts_as_delivered():
    planner = _planner()
    planner.add(_records(), 0.0)
    items = planner.plan(0.0)
    outcomes = {i.key: ItemOutcome("error", "idempotency_key_already_used") for i in items}
    planner.apply(outcomes, 0.0)
    assert planner.counters["spans_exported"] == 4
    assert not planner.dropped


def test_queue_bound_drops_oldest_counted():
    planner = _planner(max_queued_spans=2, max_waiting_spans=1)
    planner.add(_records(), 0.0)
    assert planner.queued_spans == 2
    assert planner.dropped["queue_full"] == 2


def test_late_span_after_finish_is_dropped_counted():
    planner = _planner()
    records = _records()
    planner.add(records, 0.0)
    planner.apply(_ok(planner.plan(0.0)), 0.0)
    planner.add([records[0]], 1.0)
    assert planner.dropped["instance_already_finished"] == 1


def test_count_bound_only_counts_spans_that_really_wait():
    # parent and children arrive together: nobody waits, so a tiny bound orphans no one
    planner = _planner(max_waiting_spans=1)
    planner.add(_records(), 0.0)
    assert not any(k.startswith("spans_orphaned") for k in planner.counters)


def _genai_only(record):
    return record.schema_name != "otel:span"


def test_span_filter_keeps_genai_spans_and_their_ancestors():
    provider, collector = make_provider()
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("http request"):  # plain, but an ancestor of an LLM call
        with tracer.start_as_current_span("db query"):  # plain leaf: filtered out
            pass
        with tracer.start_as_current_span("chat", attributes={"gen_ai.operation.name": "chat"}):
            pass
    planner = _planner(span_filter=_genai_only)
    planner.add([map_span(s) for s in collector.spans], 0.0)
    items = planner.plan(0.0)
    names = [i.body["details"]["payload"]["name"] for i in items if i.action == "agent_spans/create"]
    assert names == ["http request", "chat"]
    assert items[-1].action == "agent_instances/finish"
    assert planner.counters["spans_filtered_out"] == 1


def test_span_filter_reparents_a_span_that_outlived_its_filtered_parent():
    provider, collector = make_provider()
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("invoke_agent", attributes={"gen_ai.operation.name": "invoke_agent"}):
        middle = tracer.start_span("background task")  # plain, ends before its child (async work)
        from opentelemetry import trace as trace_api

        with trace_api.use_span(middle, end_on_exit=False):
            late = tracer.start_span("chat late", attributes={"gen_ai.operation.name": "chat"})
        middle.end()
        late.end()
    spans = {s.name: s for s in collector.spans}
    records = [map_span(spans[n]) for n in ("background task", "chat late", "invoke_agent")]
    planner = _planner(span_filter=_genai_only)
    planner.add(records, 0.0)
    creates = {
        i.body["details"]["payload"]["name"]: i.body["details"]
        for i in planner.plan(0.0)
        if i.action == "agent_spans/create"
    }
    assert set(creates) == {"invoke_agent", "chat late"}
    late_details = creates["chat late"]
    assert late_details["parent_span_id"] == creates["invoke_agent"]["id"]  # nearest exported ancestor
    meta = late_details["payload"]["metadata"]
    assert meta["prefactor.reparented_from"] == f"{spans['background task'].context.span_id:016x}"
    assert planner.counters["spans_reparented"] == 1


def test_span_filter_trace_with_nothing_to_export_registers_nothing():
    provider, collector = make_provider()
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("healthcheck"):
        pass
    planner = _planner(span_filter=_genai_only)
    planner.add([map_span(s) for s in collector.spans], 0.0)
    assert planner.plan(0.0) == []
    assert planner.open_traces == 0


def _chain_records():
    """root -> child -> grandchild, mapped; OTel ends (and the exporter receives) the grandchild first."""
    provider, collector = make_provider()
    tracer = provider.get_tracer("chain")
    with tracer.start_as_current_span("root"):
        with tracer.start_as_current_span("child"):
            with tracer.start_as_current_span("grandchild"):
                pass
    by_name = {s.name: map_span(s) for s in collector.spans}
    return by_name["root"], by_name["child"], by_name["grandchild"]


def test_a_timed_out_chain_is_orphaned_at_its_top_so_the_grandchild_keeps_its_parent():
    planner = _planner(max_wait_seconds=30.0)
    _root, child, grandchild = _chain_records()
    planner.add([grandchild], now=0.0)  # arrives first, and ages first
    planner.add([child], now=20.0)
    items = planner.plan(now=31.0)  # the grandchild has waited 31 s, its parent 11 s; the root never came
    creates = {i.span_id: i.body["details"] for i in items if i.action == "agent_spans/create"}
    assert set(creates) == {child.span_id, grandchild.span_id}
    assert "parent_span_id" not in creates[child.span_id]  # the top of the chain is the orphan ...
    assert creates[grandchild.span_id]["parent_span_id"] == creates[child.span_id]["id"]  # ... its child keeps it
    assert planner.counters["spans_orphaned_age"] == 1


def test_shutdown_and_the_count_bound_also_orphan_only_the_tops():
    _root, child, grandchild = _chain_records()
    planner = _planner()
    planner.add([grandchild, child], now=0.0)
    items = planner.plan(now=0.0, shutdown=True)
    creates = {i.span_id: i.body["details"] for i in items if i.action == "agent_spans/create"}
    assert creates[grandchild.span_id]["parent_span_id"] == creates[child.span_id]["id"]
    bounded = _planner(max_waiting_spans=1)
    bounded.add([grandchild], now=0.0)
    bounded.add([child], now=1.0)  # two waiting, bound 1: one chain top is released, the chain stays linked
    creates = {i.span_id: i.body["details"] for i in bounded.plan(now=1.0) if i.action == "agent_spans/create"}
    assert creates[grandchild.span_id]["parent_span_id"] == creates[child.span_id]["id"]
    assert bounded.counters["spans_orphaned_count"] == 1


def test_a_long_lived_run_remembers_a_bounded_number_of_span_ids(monkeypatch):
    from prefactor_otel.pipeline import runs as runs_module

    monkeypatch.setattr(runs_module, "MAX_SPANS_REMEMBERED_PER_TRACE", 50, raising=False)
    provider, collector = make_provider()
    tracer = provider.get_tracer("long")
    with tracer.start_as_current_span("root") as root:
        for n in range(300):
            with tracer.start_as_current_span(f"step {n}"):
                pass
    records = [map_span(s) for s in collector.spans]  # the root ends last, as in a run that lasts for hours
    planner = _planner(max_wait_seconds=0.0, finish_grace_seconds=1000.0)
    for n, record in enumerate(records[:-1]):
        planner.add([record], now=float(n))
        planner.apply(_ok(planner.plan(now=float(n))), now=float(n))
    trace = planner.runs.traces[root.get_span_context().trace_id]
    assert len(trace.created) <= 50 and len(trace.span_ids) <= 50
    planner.add(records[-1:], now=400.0)
    planner.apply(_ok(planner.plan(now=400.0, flush=True)), now=400.0)
    assert planner.counters["spans_exported"] == 301 and planner.counters["instances_finished"] == 1


# -------------------------------------------------------------------------- a run whose root never comes


def _run_with_a_failed_step():
    """root -> (step ok, step failed): the root completes, one step failed."""
    from opentelemetry.trace import Status, StatusCode

    provider, collector = make_provider()
    tracer = provider.get_tracer("rootless")
    with tracer.start_as_current_span("root"):
        with tracer.start_as_current_span("step ok"):
            pass
        with tracer.start_as_current_span("step failed") as failed:
            failed.set_status(Status(StatusCode.ERROR, "tool broke"))
    by_name = {s.name: map_span(s) for s in collector.spans}
    return by_name["root"], by_name["step ok"], by_name["step failed"]


def _deliver(planner, now):
    items = planner.plan(now=now)
    planner.apply(_ok(items), now=now)
    return items


def test_a_run_whose_root_never_comes_is_finished_after_max_wait_plus_grace_at_its_last_span_failed():
    planner = _planner(max_wait_seconds=5.0, finish_grace_seconds=1.0)
    _root, ok, failed = _run_with_a_failed_step()
    planner.add([ok, failed], now=0.0)  # the root is lost (a full queue), or in a service that never exports
    assert _deliver(planner, now=1.0) == []  # the steps wait for their parent
    creates = _deliver(planner, now=5.0)  # max_wait_seconds: sent as orphans
    assert {i.span_id for i in creates if i.action == "agent_spans/create"} == {ok.span_id, failed.span_id}
    assert "agent_instances/finish" not in [i.action for i in creates] and planner.open_traces == 1
    assert not planner.has_due_work(5.9) and planner.plan(now=5.9) == []  # idle 5.9 s < 5 + 1
    assert planner.has_due_work(6.0)
    (finish,) = planner.plan(now=6.0)
    assert finish.action == "agent_instances/finish"
    assert finish.body["status"] == "failed"  # a span of it failed
    assert finish.body["timestamp"] == _iso(max(ok.end_time_ns, failed.end_time_ns))  # its last span
    assert planner.counters["runs_finished_without_root"] == 1
    planner.apply(_ok([finish]), now=6.0)
    assert planner.open_traces == 0 and planner.counters["instances_finished"] == 1
    assert planner.counters["runs_finished_without_root"] == 1


def test_a_run_without_root_and_without_failures_is_finished_complete():
    planner = _planner(max_wait_seconds=1.0, finish_grace_seconds=1.0)
    _root, ok, _failed = _run_with_a_failed_step()
    planner.add([ok], now=0.0)
    _deliver(planner, now=1.0)
    (finish,) = planner.plan(now=2.0)
    assert finish.body["status"] == "complete"


def test_a_run_whose_root_came_is_finished_by_its_root_unaffected_by_the_rule():
    planner = _planner(max_wait_seconds=5.0, finish_grace_seconds=1.0)
    root, ok, failed = _run_with_a_failed_step()
    planner.add([ok, failed, root], now=0.0)
    items = _deliver(planner, now=0.0)
    assert [i.action for i in items].count("agent_spans/create") == 3
    assert "agent_instances/finish" not in [i.action for i in items]  # not before the grace period
    (finish,) = planner.plan(now=1.0)  # root in + the grace period, not max_wait + grace
    assert finish.body["status"] == "complete"  # the root's status, though a step failed
    assert finish.body["timestamp"] == _iso(root.end_time_ns)
    assert planner.counters["runs_finished_without_root"] == 0


def test_a_rootless_run_still_receiving_spans_is_not_finished():
    planner = _planner(max_wait_seconds=2.0, finish_grace_seconds=1.0)
    _root, ok, failed = _run_with_a_failed_step()
    planner.add([ok], now=0.0)
    _deliver(planner, now=2.0)  # orphaned, delivered
    planner.add([failed], now=2.5)  # activity: the run is not idle
    items = _deliver(planner, now=4.5)  # the new step is orphaned in turn; idle only 2 s
    assert [i.action for i in items] == ["agent_spans/create"]
    assert planner.plan(now=5.4) == []
    (finish,) = planner.plan(now=5.5)
    assert finish.action == "agent_instances/finish"


def test_the_root_coming_after_the_run_was_finished_without_it_opens_a_new_run_of_the_part():
    planner = _planner(max_wait_seconds=1.0, finish_grace_seconds=1.0, run_part="p1")
    root, ok, failed = _run_with_a_failed_step()
    planner.add([ok, failed], now=0.0)
    _deliver(planner, now=1.0)
    first = _deliver(planner, now=2.0)
    assert [i.action for i in first] == ["agent_instances/finish"]
    planner.add([root], now=60.0)  # a root that lasted longer than the planner waited: kept, in a run of its own
    items = _deliver(planner, now=60.0)
    actions = [i.action for i in items]
    assert actions[:2] == ["agent_instances/register", "agent_instances/start"]
    assert items[0].body["external_identifier"].endswith(":p1:1")
    assert "agent_spans/create" in actions
    assert planner.dropped["instance_already_finished"] == 0
    assert planner.plan(now=61.0)[-1].action == "agent_instances/finish"  # its root is in: the usual rule
    # Without a run part a new run could have no id of its own: the late root is dropped, counted.
    whole = _planner(max_wait_seconds=1.0, finish_grace_seconds=1.0)
    whole.add([ok, failed], now=0.0)
    _deliver(whole, now=1.0)
    _deliver(whole, now=2.0)
    whole.add([root], now=60.0)
    assert whole.plan(now=60.0) == [] and whole.dropped["instance_already_finished"] == 1


def test_a_run_whose_root_is_known_to_be_running_is_not_finished_by_the_rule():
    """With span starts (PrefactorSpanProcessor) an open root is running, not lost: its run waits for it."""
    from prefactor_otel.pipeline.starts import read_start

    provider, collector = make_provider()
    tracer = provider.get_tracer("rootless")
    root = tracer.start_span("root")
    from opentelemetry import trace as trace_api

    with tracer.start_as_current_span("step", context=trace_api.set_span_in_context(root)):
        pass
    planner = _planner(max_wait_seconds=1.0, finish_grace_seconds=1.0)
    started = read_start(root)  # type: ignore[arg-type]
    assert started is not None
    planner.start([started], now=0.0)
    planner.add([map_span(s) for s in collector.spans], now=0.0)
    _deliver(planner, now=0.0)  # the run is announced: its root started
    assert "agent_spans/create" in [i.action for i in _deliver(planner, now=1.0)]  # the step, as an orphan
    assert [i.action for i in planner.plan(now=100.0)] == []
    assert planner.counters["runs_finished_without_root"] == 0
    root.end()


def _iso(ns):
    from prefactor_otel.pipeline.items import finish_item

    return finish_item("x", "complete", ns)["timestamp"]


def test_live_payloads_decode_as_the_stdlib_decodes_them():
    # LiveSpans parses encoded payloads with pydantic-core: the same dicts, types and key order as `as_dict`.
    import math
    import random
    import struct

    from prefactor_otel.mapping.values import RawJson, as_dict
    from prefactor_otel.pipeline.planner_live import decoded
    from prefactor_otel.transport.wire import encode_json

    rng = random.Random(3)
    floats = [struct.unpack("d", rng.getrandbits(64).to_bytes(8, "little"))[0] for _ in range(2_000)]
    payloads = [
        {"inputs": {"text": 'é ü 😀 \u2028 \x00 \\ "q"'}, "n": [0, -1, 2**63, -(2**70), 10**30], "b": [True, None]},
        {"f": [f for f in floats if math.isfinite(f)] + [0.1, -0.0, 1e-320, 1.7976931348623157e308]},
        {"deep": {"a": [{"b": {"c": []}}, {}]}, "": "", "z": 1, "a": 2},
        {},
    ]
    for payload in payloads:
        encoded = encode_json(payload)
        expected, got = as_dict(encoded), decoded(encoded)
        assert got == expected and list(got) == list(expected)
        assert [type(v) for v in got.values()] == [type(v) for v in expected.values()]
        assert repr(got) == repr(expected)  # -0.0, floats' digits, nested types alike
    assert decoded(RawJson(b"[1, 2]")) == as_dict(RawJson(b"[1, 2]")) == {}
    assert decoded(RawJson(b'{"a": NaN}'))["a"] != decoded(RawJson(b'{"a": NaN}'))["a"]  # NaN, as json.loads gives
    assert decoded({"x": 1}) == {"x": 1}
