"""The walk of a span's parsed sections for secret-named keys (`Redactor.redact_keys_in`, payload._typed) is skipped
only when redaction's pass over the span's attributes found nothing a key rule could mask there
(`Redactor.needs_key_walk`: the long-text gate's signal, mapping/redaction.py). Every test compares the record with
the one the walk gives (a redactor that cannot tell, as without google-re2: it walks) and checks that what the key
rules mask is masked: a key in another case, as a suffix, nested, in JSON inside a JSON string, written with a
`\\u` escape or the Kelvin sign, split across two strings, in a flattened family's name; and that the skip fails
open: no RE2 gate, a failed pass (RE2 out of memory), another dict redacted in between, events, user keys."""

from __future__ import annotations

import json
import math
import random
from typing import Any

import pytest

from prefactor_otel.mapping import MappingOptions, map_span
from prefactor_otel.mapping.prefilter import LongTextGate
from prefactor_otel.mapping.redaction import (
    _SECRET_KEY_SUFFIXES,
    _SECRET_KEYS,
    SECRET_KEY_SIGNAL,
    Redactor,
)
from prefactor_otel.mapping.secret_patterns import ALWAYS_RUN, PREFILTER_PATTERNS
from tests.spans import make_provider

pytestmark = pytest.mark.skipif(Redactor()._long_gate is None, reason="google-re2 is a test dependency")

FILLER = "please check the order status and the refund policy for this customer " * 3  # > 128 characters


def _walking() -> MappingOptions:
    """Options whose redactor cannot tell (as without google-re2): the walk always runs."""
    options = MappingOptions()
    options.redactor._tracks_keys = False
    return options


def _chat(attributes: dict[str, Any], events: list[tuple[str, dict[str, Any]]] = ()) -> Any:  # type: ignore[assignment]
    provider, collector = make_provider()
    tracer = provider.get_tracer("tests.section-keys")
    base = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o"}
    with tracer.start_as_current_span("chat gpt-4o", attributes={**base, **attributes}) as span:
        for name, event_attributes in events:
            span.add_event(name, event_attributes)
    return collector.spans[-1]


def _messages_with_call(arguments: Any) -> str:
    """OTel GenAI output messages: text, then a tool call with these arguments (long: the RE2 gate decides it)."""
    parts = [
        {"type": "text", "content": FILLER},
        {"type": "tool_call", "id": "call_1", "name": "lookup", "arguments": arguments},
    ]
    return json.dumps([{"role": "assistant", "parts": parts, "finish_reason": "tool_call"}])


def _same_as_walk(span: Any, options: MappingOptions | None = None) -> Any:
    record = map_span(span, options or MappingOptions())
    assert record == map_span(span, _walking())
    return record


def _skipped(span: Any) -> bool:
    """Whether the default mapping of this span skips the walk (what `needs_key_walk` answered)."""
    options = MappingOptions()
    answers: list[bool] = []
    redactor = options.redactor
    original = redactor.needs_key_walk

    def spy(attributes: Any) -> bool:
        answers.append(original(attributes))
        return answers[-1]

    redactor.needs_key_walk = spy  # type: ignore[method-assign]
    map_span(span, options)
    return answers == [False]


KEYED_ARGUMENTS = [
    {"api_key": "plain-value-1"},
    {"API-Key": "plain-value-1"},
    {"db_password_x": 1, "db_api_key": "plain-value-1"},
    {"outer": {"inner": [{"cookie": "plain-value-1"}]}},
    {"config.token": "plain-value-1"},
    {"credentials": {"user": "a", "pass": "plain-value-1"}},
    {"api_\u212aey": "plain-value-1"},  # the Kelvin sign lowers to k
]


@pytest.mark.parametrize("arguments", KEYED_ARGUMENTS, ids=lambda a: ascii(next(iter(a))))
def test_a_secret_named_key_in_long_message_json_is_masked_as_the_walk_masks_it(arguments: dict[str, Any]) -> None:
    for written in (arguments, json.dumps(arguments), json.dumps(arguments, ensure_ascii=False)):
        span = _chat({"gen_ai.output.messages": _messages_with_call(written)})
        record = _same_as_walk(span)
        assert "plain-value-1" not in json.dumps(record.result_payload), written
        assert not _skipped(span)


def test_a_key_written_with_unicode_escapes_is_masked() -> None:
    # `\u0070assword` is `password` once parsed: the raw text never spells the word.
    messages = _messages_with_call({"x": 1}).replace('"x"', '"\\u0061pi_key"').replace("1}", '"plain-value-1"}')
    assert json.loads(messages)[0]["parts"][1]["arguments"] == {"api_key": "plain-value-1"}
    span = _chat({"gen_ai.output.messages": messages})
    record = _same_as_walk(span)
    assert "plain-value-1" not in json.dumps(record.result_payload)
    assert not _skipped(span)


def test_a_key_in_json_inside_a_json_string_is_masked() -> None:
    inner = json.dumps({"session": {"Auth": "plain-value-1"}})
    span = _chat({"gen_ai.output.messages": _messages_with_call(json.dumps(inner))})
    _same_as_walk(span)
    assert not _skipped(span)


def test_ordinary_long_messages_skip_the_walk_with_the_same_record() -> None:
    for arguments in (
        {"order_id": "A-1", "max_tokens": 5, "tokens": "x", "keys": ["a"]},
        {"passage": "authority", "author": "tokenizer"},
    ):
        span = _chat({"gen_ai.output.messages": _messages_with_call(arguments)})
        _same_as_walk(span)
        assert _skipped(span)


def test_a_key_split_across_two_strings_gives_the_walks_record() -> None:
    head = json.dumps([{"role": "user", "content": FILLER}])[:-1] + ', {"api_'
    tail = 'key": "plain-value-1"}]' + " " * 130
    span = _chat({"gen_ai.input.messages": head, "gen_ai.output.messages": tail})
    _same_as_walk(span)


def test_short_json_strings_are_walked() -> None:
    # Tool arguments are short: no RE2 pass decides them, and a quote is enough to walk.
    span = _chat({"gen_ai.input.messages": json.dumps([{"role": "user", "content": "hi"}])})
    _same_as_walk(span)
    assert not _skipped(span)
    provider, collector = make_provider()
    tracer = provider.get_tracer("tests.section-keys")
    with tracer.start_as_current_span(
        "execute_tool lookup",
        attributes={
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": "lookup",
            "gen_ai.tool.call.arguments": '{"Api-Key": "plain-value-1"}',
        },
    ):
        pass
    record = _same_as_walk(collector.spans[-1])
    assert "plain-value-1" not in json.dumps(record.payload)


def test_secret_named_attributes_and_flattened_families_walk() -> None:
    family = "llm.input_messages.0.message.tool_calls.0.tool_call.function"
    spans = [
        _chat({f"{family}.name": "lookup", f"{family}.password": "plain-value-1"}),
        _chat({"llm.input_messages.0.message.role": "user", "llm.input_messages.0.message.api_key": math.nan}),
        _chat({"gen_ai.request.api_key": "plain-value-1", "gen_ai.output.messages": _messages_with_call({})}),
    ]
    for span in spans:
        _same_as_walk(span)
        assert not _skipped(span)


def test_events_are_always_walked() -> None:
    span = _chat(
        {"gen_ai.output.messages": _messages_with_call({"a": 1})},
        [("gen_ai.client.inference.operation.details", {"gen_ai.input.messages": _messages_with_call({"a": 1})})],
    )
    _same_as_walk(span)
    assert not _skipped(span)


class _FailingRe2:
    """google-re2's interface, whose set answers as one out of memory does (no match at all)."""

    class Set:
        @staticmethod
        def SearchSet(options: object) -> Any:
            class _Set:
                def Add(self, pattern: str) -> int:
                    return 0

                def Compile(self) -> bool:
                    return True

                def Match(self, text: bytes) -> None:
                    return None

            return _Set()

    @staticmethod
    def Options() -> object:
        return object()


def test_without_the_gate_or_with_a_failed_pass_the_walk_runs_and_masks() -> None:
    span = _chat({"gen_ai.output.messages": _messages_with_call({"api_key": "plain-value-1"})})
    clean = _chat({"gen_ai.output.messages": _messages_with_call({"order": "plain-value-1"})})
    no_gate = MappingOptions()
    no_gate.redactor._long_gate = None  # as without google-re2
    no_gate.redactor._tracks_keys = False  # what the Redactor decides without the gate
    assert Redactor(prefilter=False)._tracks_keys is False
    failing = MappingOptions()
    failing.redactor._long_gate = LongTextGate(_FailingRe2(), PREFILTER_PATTERNS, ALWAYS_RUN, {SECRET_KEY_SIGNAL: "x"})
    for options in (no_gate, failing):
        record = map_span(span, options)
        assert record == map_span(span, _walking())
        assert "plain-value-1" not in json.dumps(record.result_payload)
        assert map_span(clean, options) == map_span(clean, _walking())
    redactor = failing.redactor
    attributes = dict(clean.attributes)
    redactor.redact_owned(attributes, "attributes", [])
    assert redactor.needs_key_walk(attributes)


def test_another_dict_redacted_in_between_or_user_keys_make_it_walk() -> None:
    redactor = Redactor()
    first = {"gen_ai.output.messages": _messages_with_call({"a": 1})}
    second = dict(first)
    redactor.redact_owned(first, "attributes", [])
    redactor.redact_owned(second, "attributes", [])
    assert redactor.needs_key_walk(first)  # the slot holds the other dict: walk
    assert not redactor.needs_key_walk(second)
    assert redactor.needs_key_walk(second)  # read once
    with_keys = Redactor(keys=["order"])
    with_keys.redact_owned(first, "attributes", [])
    assert with_keys.needs_key_walk(first)
    nothing = Redactor(defaults=False)
    assert not nothing.needs_key_walk(first)  # no key rule: nothing to walk for
    span = _chat({"gen_ai.output.messages": _messages_with_call({"order": "plain-value-1"})})
    record = map_span(span, MappingOptions(redact_keys=("order",)))
    assert "plain-value-1" not in json.dumps(record.result_payload)


def _secret_key(key: str) -> bool:
    return Redactor().key_rule(key) is not None


def _keys_in(value: Any, depth: int = 0) -> list[str]:
    """Every object key in parsed JSON, and in JSON inside its strings (what builders may parse)."""
    if depth > 8:
        return []
    if isinstance(value, dict):
        return [*value, *(key for item in value.values() for key in _keys_in(item, depth + 1))]
    if isinstance(value, list):
        return [key for item in value for key in _keys_in(item, depth + 1)]
    if isinstance(value, str) and value[:1] in "{[":
        try:
            return _keys_in(json.loads(value), depth + 1)
        except ValueError:
            return []
    return []


def test_the_signal_reports_every_long_text_whose_json_holds_a_secret_named_key() -> None:
    # Ground truth: parse the text (and JSON in its strings) and ask the key rule of every key.
    gate = Redactor()._long_gate
    assert gate is not None
    rng = random.Random(22)
    words = [*_SECRET_KEYS, *(f"x{suffix}" for suffix in _SECRET_KEY_SUFFIXES), "order", "tokens", "max_tokens"]
    words += ["keys", "passage", "author", "oauth", "secretary", "api", "cookies", "tokenizer"]
    for _ in range(600):  # bounded
        word = rng.choice(words)
        word = "".join(c.upper() if rng.random() < 0.3 else c for c in word)
        if rng.random() < 0.3:
            word = word.replace("_", "-")
        if rng.random() < 0.2:
            word = "a.b." + word
        if rng.random() < 0.1:
            word = word.replace("k", "\u212a")
        value: Any = {word: "v", "n": [1, {"deeper": {word: "w"} if rng.random() < 0.5 else 2}]}
        for _ in range(rng.randrange(3)):
            value = {"wrapped": json.dumps(value, ensure_ascii=rng.random() < 0.5)}
        text = json.dumps([{"content": FILLER}, value], ensure_ascii=rng.random() < 0.5)
        if rng.random() < 0.1:  # a letter written as an escape
            text = text.replace(f'"{word[0]}', f'"\\u{ord(word[0]):04x}', 1)
        truth = any(_secret_key(key) for key in _keys_in(json.loads(text)))
        names = gate.select(text)
        assert names is not None
        if truth:
            assert SECRET_KEY_SIGNAL in names, text
        assert not gate.may_match(text) or names - {SECRET_KEY_SIGNAL}, text  # the signal is no rule


def test_the_signal_stays_quiet_on_ordinary_messages() -> None:
    gate = Redactor()._long_gate
    assert gate is not None
    rng = random.Random(3)
    text = json.dumps(
        [{"role": "user", "parts": [{"type": "text", "content": FILLER * rng.randrange(1, 5)}]}, {"max_tokens": 5}]
    )
    assert gate.select(text) == frozenset()
