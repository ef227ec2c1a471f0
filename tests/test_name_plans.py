"""Name plans (mapping/context.py) fail safe: a plan only spares the walk over names a span does not have, so with or
without one, and whatever state its cache is in, a span maps to the same record.

A plan says, per attribute-name set, which names of each chain are there; which of them *hits* is still decided by
the span's values. The failure modes: a name set never seen, a cache that is full, a span with more names than
plans are kept for (the whole chain is walked, as before plans), and a value the plan cannot know about (empty,
a bad count, a duplicate). Real SDK spans, mapped by the real map_span; the reference is the mapping with plans
switched off (every span then takes the no-plan walk).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider

from prefactor_otel.mapping import MappingOptions, context, map_span
from prefactor_otel.mapping.chains import MODEL, PROMPT_TOKENS
from prefactor_otel.mapping.messages import normalize_message, normalize_messages
from tests.fixtures.semconv import replay
from tests.spans import Collector, make_provider


def _span(
    provider: TracerProvider, collector: Collector, attributes: dict[str, Any], name: str = "chat m"
) -> ReadableSpan:
    with provider.get_tracer("tests.plans", "1.0").start_as_current_span(name, attributes=attributes):
        pass
    return collector.spans[-1]


def _record(span: ReadableSpan, options: MappingOptions | None = None) -> str:
    record = map_span(span, options or MappingOptions())
    return json.dumps([record.schema_name, record.payload, record.result_payload], sort_keys=False, default=str)


@pytest.fixture
def no_plans(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Plans off: every name set counts as too long to plan for, so every chain is walked whole."""
    monkeypatch.setattr(context, "_PLANS", {})
    monkeypatch.setattr(context, "_PLAN_MAX_NAMES", -1)
    yield


def _fixture_spans() -> list[ReadableSpan]:
    spans: list[ReadableSpan] = []
    for path in sorted(replay.HERE.glob("*.json")):
        spans.extend(replay.load(path.name))
    return spans


def test_every_recorded_span_maps_the_same_with_and_without_plans(monkeypatch: pytest.MonkeyPatch) -> None:
    spans = _fixture_spans()
    assert len(spans) > 50  # every recorded convention
    options = (MappingOptions(), MappingOptions(max_input_length=100, capture_outputs=False))
    planned = [_record(span, opts) for opts in options for span in spans]
    planned_again = [_record(span, opts) for opts in options for span in spans]  # every plan now seen before
    monkeypatch.setattr(context, "_PLANS", {})
    monkeypatch.setattr(context, "_PLAN_MAX_NAMES", -1)
    walked = [_record(span, opts) for opts in options for span in spans]
    assert context._PLANS == {}  # no plan was made: the no-plan walk really ran
    assert planned == walked
    assert planned_again == walked


def test_spans_of_one_name_set_share_a_plan_and_another_order_is_another_plan() -> None:
    provider, collector = make_provider()
    # `llm.provider` beside `gen_ai.provider.name`: another convention's name in a chain the builder walks, so the
    # general builder walks the chains
    # (the OTel GenAI fast path, builders/otel.py, reads the names directly and fills no chain memo)
    names = {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "gpt-4o",
        "gen_ai.provider.name": "openai",
        "llm.provider": "openai",
    }
    first = map_span(_span(provider, collector, names))
    plan = context._PLANS[tuple(names)]
    second = map_span(_span(provider, collector, {**names, "gen_ai.request.model": "gpt-4o-mini"}))
    assert context._PLANS[tuple(names)] is plan
    assert plan.chains[MODEL] == ("gen_ai.request.model",)
    assert first.payload["model"] == "gpt-4o" and second.payload["model"] == "gpt-4o-mini"
    reordered = dict(reversed(list(names.items())))
    third = map_span(_span(provider, collector, reordered))
    assert context._PLANS[tuple(reordered)] is not plan
    assert third.payload["model"] == "gpt-4o"


def test_an_empty_value_where_the_plan_has_the_name_is_skipped_as_the_walk_skips_it() -> None:
    provider, collector = make_provider()
    both = {"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o", "llm.model_name": "other"}
    assert map_span(_span(provider, collector, both)).payload["model"] == "gpt-4o"
    # Same names, so the same plan; the first name is empty now: the next one hits, the empty one stays in metadata.
    record = map_span(_span(provider, collector, {**both, "gen_ai.request.model": ""}))
    assert record.payload["model"] == "other"
    assert record.payload["metadata"]["gen_ai.request.model"] == ""
    # One name of the chain there (the plan's one-name path), empty: no model, kept as it came.
    alone = {"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o"}
    assert map_span(_span(provider, collector, alone)).payload["model"] == "gpt-4o"
    record = map_span(_span(provider, collector, {**alone, "gen_ai.request.model": ""}))
    assert "model" not in record.payload
    assert record.payload["metadata"]["gen_ai.request.model"] == ""


def test_a_none_value_where_the_plan_has_the_name_is_skipped() -> None:
    # The SDK drops None attribute values; a Context can still be handed one (the gateway's decoded spans).
    seen = context.Context({"gen_ai.request.model": "gpt-4o", "llm.model_name": "other"})
    assert seen.first(MODEL) == ("gen_ai.request.model", "gpt-4o")
    ctx = context.Context({"gen_ai.request.model": None, "llm.model_name": "other"})
    assert ctx.first(MODEL) == ("llm.model_name", "other")
    assert ctx.consumed == {"llm.model_name"}
    alone = context.Context({"gen_ai.request.model": None})
    assert alone.first(MODEL) is None and alone.value(MODEL) is None and not alone.consumed


def test_a_bad_count_where_the_plan_has_the_name_falls_to_the_next_count() -> None:
    provider, collector = make_provider()
    counts = {"gen_ai.operation.name": "chat", "gen_ai.usage.input_tokens": 12, "gen_ai.usage.prompt_tokens": 12}
    record = map_span(_span(provider, collector, counts))
    assert record.payload["token_usage"] == {"prompt_tokens": 12}
    assert "gen_ai.usage.prompt_tokens" not in record.payload["metadata"]  # an equal duplicate is consumed
    for bad in (-1, math.nan, 1.5):
        record = map_span(_span(provider, collector, {**counts, "gen_ai.usage.input_tokens": bad}))
        assert record.payload["token_usage"] == {"prompt_tokens": 12}
        assert record.payload["metadata"]["prefactor.invalid_counts"] == ["gen_ai.usage.input_tokens"]
    ctx = context.Context({"gen_ai.usage.input_tokens": True})  # a bool is not a count
    assert ctx.number(PROMPT_TOKENS) is None and not ctx.consumed


def test_a_differing_duplicate_stays_in_metadata_and_an_equal_one_is_consumed() -> None:
    provider, collector = make_provider()
    names = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.system": "openai"}
    record = map_span(_span(provider, collector, names))
    assert record.payload["provider"] == "openai" and "gen_ai.system" not in record.payload["metadata"]
    record = map_span(_span(provider, collector, {**names, "gen_ai.system": "azure"}))
    assert record.payload["provider"] == "openai" and record.payload["metadata"]["gen_ai.system"] == "azure"


def test_a_full_cache_starts_over_and_maps_as_before(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(context, "_PLANS", {})
    limit = context._PLAN_CACHE_SIZE
    provider, collector = make_provider()
    base = {"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o"}
    kept = _span(provider, collector, base)
    expected = _record(kept)
    for index in range(limit - 1):  # fill the cache with name sets never seen before
        map_span(_span(provider, collector, {**base, f"app.field_{index}": index}))
    assert len(context._PLANS) == limit
    record = map_span(_span(provider, collector, {**base, "app.one_more": 1}))  # full: cleared, then this one
    assert len(context._PLANS) == 1
    assert record.payload["model"] == "gpt-4o" and record.payload["metadata"]["app.one_more"] == 1
    assert _record(kept) == expected  # a name set seen before the clear: planned again, same record


def test_a_span_with_more_names_than_plans_are_kept_for_is_walked_whole() -> None:
    provider, collector = make_provider()
    many = {f"app.field_{index}": index for index in range(context._PLAN_MAX_NAMES + 1)}
    attributes = {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "gpt-4o",
        "gen_ai.system": "openai",
        "gen_ai.request.temperature": 0.2,
        "gen_ai.usage.input_tokens": 3,
        **many,
    }
    before = dict(context._PLANS)
    record = map_span(_span(provider, collector, attributes))
    assert tuple(attributes) not in context._PLANS and context._PLANS.keys() == before.keys()
    assert record.payload["model"] == "gpt-4o" and record.payload["provider"] == "openai"
    assert record.payload["params"] == {"temperature": 0.2}  # a builder that reads every name of a chain there
    assert record.payload["token_usage"] == {"prompt_tokens": 3}
    assert record.payload["metadata"]["app.field_0"] == 0
    assert "prefactor.mapping_error" not in record.payload["metadata"]


def test_the_chain_memo_of_a_plan_is_bounded() -> None:
    plan = context.NamePlan(("a", "b"))
    for index in range(context._PLAN_CHAINS_LIMIT + 10):
        assert plan.present((f"x{index}", "b", "a")) == ("b", "a")
    assert len(plan.chains) == context._PLAN_CHAINS_LIMIT


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # The fast shapes: what the general walk gives them.
        (
            {"role": "user", "parts": [{"type": "text", "content": "hi"}], "name": "bob", "finish_reason": "stop"},
            {"role": "user", "content": "hi", "name": "bob", "finish_reason": "stop"},
        ),
        ({"role": "user", "parts": [{"type": "input_text", "text": "hi"}]}, {"role": "user", "content": "hi"}),
        ({"parts": [{"type": "text", "content": ""}]}, {"role": None, "content": ""}),
        ({"role": "assistant", "content": "ok"}, {"role": "assistant", "content": "ok"}),
        ({"role": "assistant", "content": None, "name": 7}, {"role": "assistant", "content": None, "name": "7"}),
        # Shapes the fast path must leave to the general walk.
        ({"role": 3, "content": "x"}, {"role": "3", "content": "x"}),
        (
            {"role": "user", "parts": [{"type": "text", "content": 5}]},
            {"role": "user", "content": None, "parts": [{"type": "text", "content": 5}]},
        ),
        (
            {"role": "user", "parts": [{"type": "text", "content": "a"}, {"type": "text", "content": "b"}]},
            {"role": "user", "content": "a\nb"},
        ),
        ({"role": "user", "content": {"k": 1}}, {"role": "user", "content": '{"k":1}'}),
        (
            {"role": "assistant", "content": "x", "tool_calls": [{"id": 1, "name": "f", "arguments": "{}"}]},
            {"role": "assistant", "content": "x", "tool_calls": [{"id": "1", "name": "f", "arguments": {}}]},
        ),
        (
            {"role": "tool", "content": "r", "tool_call_id": "c1"},
            {"role": "tool", "content": "r", "tool_call_id": "c1"},
        ),
        (
            {"lc": 1, "type": "constructor", "id": ["x", "HumanMessage"], "kwargs": {"content": "hey"}},
            {"role": "user", "content": "hey"},
        ),
        (
            {"role": "user", "parts": [{"type": "text", "content": "x"}], "data": {"content": "y"}, "type": "human"},
            {"role": "", "content": "y"},  # LangChain's {"type", "data"} serialisation, read as such
        ),
    ],
)
def test_message_shapes_normalise_alike_on_the_fast_path_and_the_general_walk(raw: Any, expected: Any) -> None:
    assert normalize_message(raw) == expected
    assert normalize_messages([raw]) == [expected]


def test_the_plain_names_set_is_bounded_with_the_name_cache_and_never_hides_a_genai_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from prefactor_otel.mapping import conventions

    monkeypatch.setattr(conventions, "_KEY_CONVENTIONS", {})
    monkeypatch.setattr(conventions, "_PLAIN_NAMES", set())
    plain = {"http.route": "/x", "db.system.name": "redis"}
    assert conventions.genai_attribute_convention(plain) is None  # looked up name by name, then remembered
    assert sorted(conventions._PLAIN_NAMES) == ["db.system.name", "http.route"]
    assert conventions.genai_attribute_convention(plain) is None  # answered by the set
    # Known plain names beside one GenAI name: the set does not answer, the name does.
    assert conventions.genai_attribute_convention({**plain, "gen_ai.system": "openai"}) == conventions.GEN_AI
    assert conventions.classify({**plain, "gen_ai.operation.name": "chat"}).schema_name == conventions.LLM
    assert "gen_ai.system" not in conventions._PLAIN_NAMES
    limit = conventions._KEY_CONVENTIONS_LIMIT
    for number in range(limit + 5):
        assert conventions.genai_attribute_convention({f"app.field_{number}": 1}) is None
        assert len(conventions._PLAIN_NAMES) <= len(conventions._KEY_CONVENTIONS) <= limit
    assert conventions.genai_attribute_convention({**plain, "llm.model_name": "m"}) == conventions.OPENINFERENCE
