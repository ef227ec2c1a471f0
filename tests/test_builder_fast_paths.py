"""The builders' OTel GenAI fast paths (mapping/builders/otel.py, the `_otel_*` functions of llm.py, tool.py,
agent.py and usage.py) and the one-loop message path (`messages._parts_messages`) build exactly what the general
paths build.

A fast path is taken when a span's attribute names allow it (decided once per name plan); the reference is the
same mapping with every fast path switched off (each layout says "not allowed", so every span takes the general
builder). Real SDK spans mapped by the real map_span: every recorded fixture, the benchmark workload's shapes, and
fuzzed spans whose names are the fast paths' own, the names left to later steps, names no builder reads, and names
that must send a span to the general path, with odd values (empty, None-like, bad counts, the "unknown" model,
non-string arrays, JSON of every message shape).
"""

from __future__ import annotations

import ast
import json
import math
import random
import re
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan

from prefactor_otel.mapping import MappingOptions, context, conventions, map_span, messages, usage
from prefactor_otel.mapping.builders import common, otel
from prefactor_otel.mapping.messages import message_list, normalize_message, normalize_messages
from prefactor_otel.mapping.values import parse_json_maybe
from tests.fixtures.semconv import replay
from tests.spans import make_provider

MAPPING = Path(__file__).resolve().parent.parent / "src" / "prefactor_otel" / "mapping"


def _record(span: ReadableSpan, options: MappingOptions) -> str:
    try:
        record = map_span(span, options)
    except Exception as exc:  # both paths must fail alike
        return f"{type(exc).__name__}: {exc}"
    return json.dumps([record.schema_name, record.payload, record.result_payload], sort_keys=False, default=repr)


def _fast_paths_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(context, "_PLANS", {})  # plans made with the fast paths on hold their layouts
    monkeypatch.setattr(otel, "llm_layout", lambda names: None)
    monkeypatch.setattr(otel, "tool_layout", lambda names: None)
    monkeypatch.setattr(otel, "agent_layout", lambda names: None)
    monkeypatch.setattr(usage, "_otel_counts", lambda names: None)
    monkeypatch.setattr(common, "_common_chains", lambda names: None)  # every chain walked, as without a plan


_OPTIONS = (
    MappingOptions(),
    MappingOptions(max_input_length=100, capture_outputs=False, redact_keys=("order_id",)),
)


def _compare(monkeypatch: pytest.MonkeyPatch, spans: list[ReadableSpan]) -> None:
    fast = [_record(span, opts) for opts in _OPTIONS for span in spans]
    fast_again = [_record(span, opts) for opts in _OPTIONS for span in spans]  # every layout now made
    with monkeypatch.context() as patch:
        _fast_paths_off(patch)
        general = [_record(span, opts) for opts in _OPTIONS for span in spans]
    for index, (a, b) in enumerate(zip(fast, general, strict=True)):
        assert a == b, spans[index % len(spans)].attributes
    assert fast_again == general


def _taken(spans: list[ReadableSpan]) -> dict[str, int]:
    """How many of these spans have names that allow their builder's fast path (and the usage fast path)."""
    layouts = {"chat": ("llm", otel.llm_layout), "execute_tool": ("tool", otel.tool_layout)}
    layouts["invoke_agent"] = ("agent", otel.agent_layout)
    taken: dict[str, int] = {}
    for span in spans:
        attributes = span.attributes or {}
        names = frozenset(attributes)
        operation = attributes.get("gen_ai.operation.name")
        chosen = layouts.get(operation) if isinstance(operation, str) else None
        if chosen is not None and chosen[1](names) is not None:
            taken[chosen[0]] = taken.get(chosen[0], 0) + 1
        if usage._otel_counts(names) is not None:
            taken["usage"] = taken.get("usage", 0) + 1
    return taken


def test_every_recorded_span_maps_the_same_with_and_without_the_fast_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    spans: list[ReadableSpan] = []
    for path in sorted(replay.HERE.glob("*.json")):
        spans.extend(replay.load(path.name))
    assert len(spans) > 50
    _compare(monkeypatch, spans)


_CHAT = {
    "gen_ai.operation.name": "chat",
    "gen_ai.provider.name": "openai",
    "gen_ai.request.model": "gpt-4o",
    "gen_ai.request.temperature": 0.2,
    "gen_ai.request.max_tokens": 1024,
    "gen_ai.input.messages": json.dumps(
        [
            {"role": "system", "parts": [{"type": "text", "content": "be brief"}]},
            {"role": "user", "parts": [{"type": "text", "content": "where is my order?"}]},
        ]
    ),
    "server.address": "api.openai.com",
    "server.port": 443,
    "gen_ai.response.model": "gpt-4o-2024-08-06",
    "gen_ai.response.id": "chatcmpl-1",
    "gen_ai.response.finish_reasons": ("tool_call",),
    "gen_ai.output.messages": json.dumps(
        [
            {
                "role": "assistant",
                "parts": [
                    {"type": "text", "content": "let me look"},
                    {"type": "tool_call", "id": "call_1", "name": "lookup", "arguments": {"order_id": "A-1"}},
                ],
                "finish_reason": "tool_call",
            }
        ]
    ),
    "gen_ai.usage.input_tokens": 837,
    "gen_ai.usage.output_tokens": 281,
}
_TOOL = {
    "gen_ai.operation.name": "execute_tool",
    "gen_ai.tool.name": "lookup",
    "gen_ai.tool.call.id": "call_1",
    "gen_ai.tool.type": "function",
    "gen_ai.tool.description": "looks an order up",
    "gen_ai.tool.call.arguments": '{"order_id": "A-1"}',
    "gen_ai.tool.call.result": '{"status": "shipped"}',
}
_AGENT = {
    "gen_ai.operation.name": "invoke_agent",
    "gen_ai.agent.name": "support",
    "gen_ai.agent.id": "agent-7",
    "gen_ai.agent.description": "answers",
    "gen_ai.agent.version": "3",
    "gen_ai.conversation.id": "conv-1",
    "gen_ai.provider.name": "openai",
    "gen_ai.request.model": "gpt-4o",
    "gen_ai.request.seed": 7,
    "app.user.tier": "pro",
}
_SPAN_NAMES = {"chat": "chat gpt-4o", "execute_tool": "execute_tool lookup", "invoke_agent": "invoke_agent support"}

# Values a fast path must read exactly as the chains' walk reads them, or leave to the general path.
_ODD_VALUES: tuple[Any, ...] = (
    "",
    "unknown",
    "x",
    0,
    -3,
    7,
    2.5,
    float("nan"),
    float("inf"),
    True,
    ("stop",),
    ("stop", 3),
    (),
    (1, 2),
    ("a", "b"),
    "[]",
    '["stop"]',
    "{not json",
    '{"a": 1}',
    '"quoted"',
    '[{"type": "text", "text": "only"}]',
    '{"input_str": "x", "inputs": {"a": 1}, "kwargs": {"tool_call_id": "k"}}',
    '{"output": {"role": "tool", "content": "r", "tool_call_id": "c9"}}',
    '{"messages": [{"role": "user", "content": "hi"}]}',
    '[{"role": "user", "content": "plain"}]',
    '[{"role": "user", "parts": [{"type": "text", "content": "a"}, {"type": "text", "content": "b"}]}]',
    '[{"role": 3, "parts": [{"type": "text", "content": "a"}]}]',
    '[{"role": "assistant", "parts": [{"type": "tool_call", "id": 1, "name": "f", "arguments": "{}"}]}]',
    '[{"role": "assistant", "parts": [{"type": "tool_call", "id": "c", "arguments": "[1,"}], "finish_reason": 5}]',
    '[{"role": "user", "parts": [{"type": "tool_call_response", "id": "c", "response": "ok"}]}]',
    '[{"role": "user", "parts": [{"type": "text", "content": 5}], "name": "n"}]',
    '[{"lc": 1, "type": "constructor", "id": ["x", "AIMessage"], "kwargs": {"content": "a"}}]',
    '[[{"role": "user", "parts": [{"type": "text", "content": "batch"}]}]]',
    '[{"role": "user", "parts": []}, "text", null]',
    '{"lc": 1, "type": "constructor", "id": ["x", "ToolMessage"], "kwargs": {"content": "r"}}',
    '{"role": "tool", "content": "r", "tool_call_id": "c8"}',
    '{"type": "tool", "data": {"content": "y", "tool_call_id": "c7"}}',
    '{"status": "ok", "note": "\\"lc\\": 1"}',
    '[{"role": "user", "parts": [{"type": "text", "text": "via text"}]}]',
    '[{"role": "user", "parts": [{"type": "text", "content": null, "text": "t"}]}]',
    '[{"role": "assistant", "parts": [{"type": "text", "content": "a"}], "finish_reason": "stop", "name": 3}]',
    '[{"role": "u", "parts": [{"type": "input_text", "content": "i"}]}, {"parts": [{"type": "text", "content": 1}]}]',
    "[NaN]",
    '[{"role": "user", "parts": [{"type": "text", "content": "\\ud800"}]}]',
)
# Names the fast paths do not handle: each must send its span to the general path (or be read there as before).
_OTHER_NAMES = (
    "gen_ai.system",
    "llm.provider",
    "gen_ai.server.time_to_first_token",
    "gen_ai.system_instructions",
    "gen_ai.tool.definitions",
    "gen_ai.usage.prompt_tokens",
    "gen_ai.usage.total_tokens",
    "gen_ai.usage.cache_read.input_tokens",
    "llm.model_name",
    "input.value",
    "output.value",
    "tool.parameters",
    "session.id",
    "user.id",
    "ai.operationId",
    "llm.input_messages.0.message.role",
    "gen_ai.agent.system_prompt",
    "pydantic_ai.all_messages",
    "app.note",
)


def _fuzzed_spans(count: int, seed: int) -> list[ReadableSpan]:
    rng = random.Random(seed)
    provider, collector = make_provider()
    tracer = provider.get_tracer("tests.fast_paths", "1.0")
    bases = {"chat": _CHAT, "execute_tool": _TOOL, "invoke_agent": _AGENT}
    for _ in range(count):
        operation = rng.choice(list(bases))
        attributes = dict(bases[operation])
        for key in list(attributes):
            roll = rng.random()
            if roll < 0.12:
                del attributes[key]
            elif roll < 0.30 and key != "gen_ai.operation.name":
                attributes[key] = rng.choice(_ODD_VALUES)
        if rng.random() < 0.25:
            attributes[rng.choice(_OTHER_NAMES)] = rng.choice(("x", 3, '{"a": 1}', "[1]"))
        if operation == "chat" and rng.random() < 0.2:
            attributes["gen_ai.system_instructions"] = rng.choice(
                ("be brief", '[{"type": "text", "content": "be brief"}]', "", '["x"]', "[]", 4)
            )
        if operation != "execute_tool" and rng.random() < 0.3:  # the older provider name: equal, other or empty
            attributes["gen_ai.system"] = rng.choice((attributes.get("gen_ai.provider.name", "openai"), "other", ""))
        name = _SPAN_NAMES[operation] if rng.random() < 0.8 else rng.choice(("x.run", "agent run", ""))
        with tracer.start_as_current_span(name, attributes=attributes) as span:
            if rng.random() < 0.1:
                span.add_event("gen_ai.choice", {"message": "from an event"})
    return list(collector.spans)


def test_fuzzed_otel_genai_spans_map_the_same_with_and_without_the_fast_paths(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spans = _fuzzed_spans(1500, seed=22)
    _compare(monkeypatch, spans)
    taken = _taken(spans)
    assert taken.get("llm", 0) > 50 and taken.get("tool", 0) > 100 and taken.get("agent", 0) > 100
    assert taken.get("usage", 0) > 100


def test_the_layouts_decide_by_the_names_alone() -> None:
    chat = frozenset(_CHAT)
    assert otel.llm_layout(chat) == (
        ("gen_ai.request.temperature", "temperature"),
        ("gen_ai.request.max_tokens", "max_tokens"),
    )
    assert otel.tool_layout(frozenset(_TOOL)) is True
    assert otel.agent_layout(frozenset(_AGENT)) == (("gen_ai.request.seed", "seed"),)
    # A name of another convention, a second name of a chain the builder walks, or a name a builder reads by name
    # sends the span to the general path; a name no builder reads does not.
    for other in ("llm.provider", "llm.model_name", "input.value", "gen_ai.agent.system_prompt", "ai.prompt"):
        assert otel.llm_layout(chat | {other}) is None, other
    unread = {"deployment.environment", "gen_ai.server.time_to_first_token", "gen_ai.openai.api_base", "llm.headers"}
    assert otel.llm_layout(chat | unread | {"gen_ai.system"}) is not None  # gen_ai.system: read with the provider
    assert otel.tool_layout(frozenset(_TOOL) | {"tool.parameters"}) is None
    assert otel.agent_layout(frozenset(_AGENT) | {"gen_ai.input.messages"}) is None
    assert usage._otel_counts(chat) == ("gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens", None)
    assert usage._otel_counts(chat | {"gen_ai.usage.prompt_tokens"}) is None
    assert usage._otel_counts(chat | {"gcp.vertex.agent.llm_request"}) is None


def test_a_span_without_a_plan_takes_the_general_path(monkeypatch: pytest.MonkeyPatch) -> None:
    provider, collector = make_provider()
    attributes = {**_CHAT, **{f"app.extra.{index}": index for index in range(70)}}  # more names than plans keep
    with provider.get_tracer("tests.fast_paths").start_as_current_span("chat gpt-4o", attributes=attributes):
        pass
    span = collector.spans[-1]
    _compare(monkeypatch, [span])
    assert context.name_plan(span.attributes or {}) is None
    record = map_span(span, MappingOptions())
    assert record.payload["model"] == "gpt-4o" and record.payload["params"] == {"temperature": 0.2, "max_tokens": 1024}


def test_the_layouts_of_a_plan_are_bounded() -> None:
    plan = context.NamePlan(("gen_ai.request.model",))
    ctx = context.Context({"gen_ai.request.model": "m"})
    ctx._plan = plan
    for index in range(context._PLAN_CHAINS_LIMIT + 50):
        ctx.layout(f"builder {index}", lambda names: names)
    assert len(plan.layouts) == context._PLAN_CHAINS_LIMIT


_ATTRIBUTE_LIKE = re.compile(r"^[a-z][a-z0-9_]*(\.[A-Za-z0-9_]+)+$")
# Dotted string constants of the builders that are not attribute names: keys inside flattened families and parsed
# values, span-name suffixes, and names of events (read from events, not attributes).
_NOT_ATTRIBUTE_NAMES = frozenset(
    {
        "message.role",
        "message.content",
        "prompt.text",
        "image.image.url",
        "tool.json_schema",
        "tool.name",
        "tool.description",
        "tool.parameters",
        "gen_ai.tool.message",
        "document.content",
        "document.id",
        "document.score",
        "document.metadata",
        "embedding.text",
        "embedding.vector",
        "ai.embed",  # values of ai.operationId
        "ai.embedMany",
    }
)


def test_every_name_the_builders_read_by_name_is_in_read_names() -> None:
    """A builder that reads an attribute by its name (not through a chain) must have it in READ_NAMES, or a fast
    path could take a span carrying it for one no builder reads."""
    modules = [*sorted((MAPPING / "builders").glob("*.py")), MAPPING / "usage.py", MAPPING / "context.py"]
    unknown = set()
    for path in modules:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and _ATTRIBUTE_LIKE.match(node.value):
                name = node.value
                if otel._neutral(name) and name not in _NOT_ATTRIBUTE_NAMES:
                    unknown.add((path.name, name))  # read by name, yet a fast path would call it unread
    assert unknown == set()


def _fuzzed_messages(rng: random.Random) -> Any:
    def part() -> Any:
        if rng.random() < 0.05:
            return rng.choice(("text", 3, None, ["x"]))
        found: dict[str, Any] = {}
        kind = rng.choice(
            ("text", "input_text", "output_text", "tool_call", "tool_call_response", "reasoning", None, 5)
        )
        if kind is not None or rng.random() < 0.5:
            found["type"] = kind
        for key, values in (
            ("content", ("hi", "", None, 5, ["a"])),
            ("text", ("t", "", 3)),
            ("id", ("c1", None, 7)),
            ("name", ("f", None, 2.5)),
            ("arguments", ('{"a": 1}', {"b": [1, 2.5, {"c": None}]}, "[1,", None)),
            ("args", ({"x": 1},)),
            ("function", ({"name": "g", "arguments": "{}"}, "nf")),
            ("response", ("r", [{"type": "text", "text": "x"}])),
        ):
            if rng.random() < 0.3:
                found[key] = rng.choice(values)
        return found

    def message() -> Any:
        if rng.random() < 0.03:
            return rng.choice(("s", 1, None, ["x"]))
        found: dict[str, Any] = {}
        if rng.random() < 0.9:
            found["role"] = rng.choice(("user", "assistant", "system", None, 3, ""))
        if rng.random() < 0.9:
            found["parts"] = [part() for _ in range(rng.randint(0, 4))] if rng.random() < 0.95 else "parts"
        for key, values in (
            ("finish_reason", ("stop", "", None, 3)),
            ("name", ("bob", None, 7)),
            ("content", ("c",)),
            ("lc", (1,)),
            ("data", ({"content": "y"},)),
            ("type", ("human",)),
        ):
            if rng.random() < 0.1:
                found[key] = rng.choice(values)
        return found

    return [message() for _ in range(rng.randint(1, 4))]


def _outcome(function: Any, value: Any) -> str:
    try:
        return json.dumps(function(value), default=repr)
    except Exception as exc:
        return type(exc).__name__


def test_the_one_loop_message_path_builds_what_normalize_message_builds() -> None:
    rng = random.Random(7)
    taken = 0
    for _ in range(20_000):
        value = _fuzzed_messages(rng)
        if rng.random() < 0.05:
            value = [value]  # a LangChain batch of one conversation: that conversation
        conversation = value[0] if len(value) == 1 and isinstance(value[0], list) else value
        one_by_one = _outcome(lambda v: [normalize_message(m) for m in v], conversation)
        assert _outcome(normalize_messages, value) == one_by_one, value
        taken += messages._parts_messages(value) is not None
    assert taken > 500  # the one-loop path really ran


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            [{"role": "assistant", "parts": [{"type": "text", "content": "a"}, {"type": "text", "content": "b"}]}],
            [{"role": "assistant", "content": "a\nb"}],
        ),
        ([{"role": "user", "parts": []}], [{"role": "user", "content": None}]),
        (
            [
                {
                    "role": "assistant",
                    "parts": [{"type": "tool_call", "id": "c", "name": "f", "arguments": '{"x": 1}'}],
                    "finish_reason": "tool_call",
                    "name": 4,
                }
            ],
            [
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [{"id": "c", "name": "f", "arguments": {"x": 1}}],
                    "name": "4",
                    "finish_reason": "tool_call",
                }
            ],
        ),
        (
            [{"role": "assistant", "parts": [{"type": "tool_call", "arguments": {"n": math.inf}}]}],
            [
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [{"id": None, "name": None, "arguments": {"n": "Infinity"}}],
                }
            ],
        ),
    ],
)
def test_the_one_loop_message_path_on_chosen_shapes(raw: Any, expected: Any) -> None:
    assert messages._parts_messages(raw) == expected
    assert [normalize_message(m) for m in raw] == expected


def test_an_otel_genai_chat_span_takes_the_fast_path_and_walks_no_chain() -> None:
    provider, collector = make_provider()
    names = {"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o", "gen_ai.provider.name": "openai"}
    with provider.get_tracer("tests.fast_paths").start_as_current_span("chat gpt-4o", attributes=names):
        pass
    record = map_span(collector.spans[-1], MappingOptions())
    plan = context._PLANS[tuple(names)]
    assert plan.layouts["llm"] == () and plan.layouts["usage"] == (None, None, None)
    assert plan.chains == {}  # the fast path read the names directly: no chain was walked
    assert record.payload["model"] == "gpt-4o" and record.payload["provider"] == "openai"
    assert record.payload["operation"] == "chat" and "gen_ai.request.model" not in record.payload["metadata"]


def test_the_kind_names_shortcut_of_classify_decides_as_the_five_lookups() -> None:
    """classify skips the five span-kind lookups when none of their names is there (one C-level test): a span's
    classification is the same with one of those names added with a value the lookups skip (None), which sends it
    through the lookups."""
    spans: list[ReadableSpan] = []
    for path in sorted(replay.HERE.glob("*.json")):
        spans.extend(replay.load(path.name))
    spans.extend(_fuzzed_spans(600, seed=6))
    checked = 0
    for span in spans:
        attributes = dict(span.attributes or {})
        if conventions.genai_attribute_convention(attributes) is None:
            continue
        shortcut = conventions.classify(attributes, span.name)
        for kind_name in sorted(conventions._KIND_NAMES - attributes.keys()):
            walked = conventions.classify({**attributes, kind_name: None}, span.name)
            assert walked == shortcut, (kind_name, attributes)
        checked += attributes.keys().isdisjoint(conventions._KIND_NAMES)
    assert checked > 500


def _message_list_reference(raw: object) -> Any:
    parsed = parse_json_maybe(raw)
    found = normalize_messages(parsed)
    return found if found is not None else parsed


def test_message_list_reads_what_parse_json_maybe_and_normalize_messages_read() -> None:
    rng = random.Random(11)
    values: list[Any] = [
        *_ODD_VALUES,
        "[",
        "[1,",
        "[NaN, Infinity]",
        '["\\ud800"]',
        "[" * 5000 + "]" * 5000,  # past the parsers' nesting limits
        "[1e999]",
        '[{"role": "user", "content": 123456789012345678901234567890}]',
        '{"messages": [{"role": "user", "parts": [{"type": "text", "content": "wrapped"}]}]}',
        None,
        ("a", "b"),
        3,
    ]
    for _ in range(3000):
        values.append(json.dumps(_fuzzed_messages(rng)))
    for value in values:
        assert _outcome(message_list, value) == _outcome(_message_list_reference, value), value


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ([{"role": "user", "parts": [{"type": "text", "content": "hi"}]}], [{"role": "user", "content": "hi"}]),
        ([{"role": "user", "parts": [{"type": "text", "content": None}]}], None),  # content there, not text
        ([{"role": "user", "parts": [{"type": "text", "text": "t"}]}], [{"role": "user", "content": "t"}]),
        ([{"role": 3, "parts": [{"type": "text", "content": "x"}]}], None),
        ([{"role": "user", "lc": 1}], None),
        ([{"parts": [{"type": "text", "content": "x"}], "data": 1}], None),
        (
            [{"parts": [{"type": "text", "content": "x"}], "finish_reason": "stop"}],
            [{"role": None, "content": "x", "finish_reason": "stop"}],
        ),
    ],
)
def test_the_one_text_part_shortcut_on_chosen_shapes(raw: Any, expected: Any) -> None:
    """`_parts_messages`' first test (a text role, `role` and `parts` only, one text part of string content) and
    what it leaves to the loop after it."""
    assert messages._parts_messages(raw) == expected
    if expected is not None:
        assert [normalize_message(m) for m in raw] == expected


def test_common_fields_read_only_the_chains_whose_names_are_there() -> None:
    """The session / user / tags decision made once per name plan (`_common_chains`), with its failure modes: a
    span without a plan reads every chain, and one whose names include none reads nothing."""
    assert common._common_chains(frozenset({"gen_ai.conversation.id", "app.x"})) == (True, False, False)
    assert common._common_chains(frozenset({"user.id", "tag.tags"})) == (False, True, True)
    assert common._common_chains(frozenset({"app.x"})) is common._NONE_THERE
    provider, collector = make_provider()
    tracer = provider.get_tracer("tests.fast_paths")
    many = {f"app.extra.{index}": index for index in range(70)}  # more names than plans are kept for
    for attributes in (
        {**_AGENT, "user.id": "u1", "tag.tags": "a, b"},
        {**_AGENT, **many, "user.id": "u1"},
        {
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": "m",
            "session.id": "s1",
            "gen_ai.conversation.id": "",
        },
    ):
        with tracer.start_as_current_span("s", attributes=attributes):
            pass
    agent, unplanned, chat = (map_span(span, MappingOptions()).payload for span in collector.spans[-3:])
    assert (agent["session_id"], agent["user_id"], agent["tags"]) == ("conv-1", "u1", ["a", "b"])
    assert (unplanned["session_id"], unplanned["user_id"]) == ("conv-1", "u1") and "tags" not in unplanned
    assert chat["session_id"] == "s1" and "user_id" not in chat
