"""What a builder works on: one span's attributes and what the chains consumed (Context), and what it fills (Typed).

Pure, per span: a Context and a Typed live for one map_span call on the exporting thread. The only shared state is
the bounded cache of flattened-family indexes (`_FAMILY_INDEXES`): a plain dict, read and replaced without a lock
(a lost insert costs one recomputation; `clear()` and item assignment are atomic under the GIL).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.sdk.trace import Event

from prefactor_otel.mapping.chains import FAMILIES
from prefactor_otel.mapping.values import json_safe, parse_json_loose, parse_json_maybe, parse_json_value


class Context:
    """One span's (redacted) attributes and events, what the chains consumed, and lazily grouped flattened
    families."""

    __slots__ = (
        "_families",
        "_keys",
        "attributes",
        "consumed",
        "event_conversation",
        "event_records",
        "events",
        "invalid_counts",
        "name",
    )

    def __init__(
        self,
        attributes: dict[str, object],
        events: Sequence[Event] = (),
        name: str = "",
        event_records: Sequence[tuple[str, Mapping[str, object]]] = (),
    ) -> None:
        self.attributes = attributes
        self._keys = attributes.keys()  # one view for every chain's disjointness test (a live view: never stale)
        # The span's events as the SDK holds them, read once by the caller (each read of span.events copies them):
        # for their timestamps only. Their content is NOT redacted: builders read `event_records` for content.
        self.events = events
        self.event_records = event_records  # (name, attributes) of each event, redacted
        self.event_conversation: Any = None  # the messages found in event_records, once parsed (conversation.py)
        self.name = name  # the span's name, redacted: builders that derive a field from it read this, not span.name
        self.consumed: set[str] = set()
        self.invalid_counts: list[str] = []  # numeric attributes a count chain skipped (NaN, negative, ...)
        self._families: dict[str, dict[int, dict[str, str]]] | None = None

    def first(self, keys: Sequence[str]) -> tuple[str, object] | None:
        """First present, non-empty attribute of the chain; later duplicates of its value are consumed too."""
        if self._keys.isdisjoint(keys):
            return None  # most chains miss on most spans: one C-level check instead of a Python loop
        attributes = self.attributes
        for index, key in enumerate(keys):
            value = attributes.get(key)
            if value is None or value == "":
                continue
            self.consumed.add(key)
            rest = keys[index + 1 :]
            if rest and not self._keys.isdisjoint(rest):
                for other in rest:
                    if other in attributes and attributes[other] == value:
                        self.consumed.add(other)
            return key, value
        return None

    def value(self, keys: Sequence[str]) -> Any:
        hit = self.first(keys)
        return json_safe(hit[1]) if hit is not None else None

    def parse(self, key: str, value: object) -> Any:
        # MLflow writes JSON-encoded scalars ('"some text"'); so does OpenInference when it says the value is JSON
        # (DSPy's tool result `"sunny in Paris"` with output.mime_type application/json): decode those too.
        if key.startswith("mlflow."):
            return parse_json_loose(value)
        if key in _ALWAYS_JSON:
            return parse_json_value(value)
        mime_key = _MIME_TYPES.get(key)
        if mime_key is not None and self.attributes.get(mime_key) == "application/json":
            return parse_json_loose(value)
        return parse_json_maybe(value)

    def first_json(self, keys: Sequence[str]) -> tuple[str, Any] | None:
        hit = self.first(keys)
        return (hit[0], self.parse(*hit)) if hit is not None else None

    def number(self, keys: Sequence[str]) -> int | None:
        """First attribute of the chain that is a count. A number that is not one (NaN, infinite, negative,
        fractional) is skipped, left in metadata as it came and named in `invalid_counts`: one bad count must not
        cost the span its other typed fields."""
        if self._keys.isdisjoint(keys):
            return None
        attributes = self.attributes
        for key in keys:
            value = attributes.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                count = as_count(value)
                if count is None:
                    self.invalid_counts.append(key)
                    continue
                self.consumed.add(key)
                return count
        return None

    def consume_equal(self, keys: Sequence[str], count: int) -> None:
        """Consume the attributes of a count chain that hold this same count (equal duplicates under another
        convention's name); a differing one stays in metadata."""
        attributes = self.attributes
        for key in keys:
            value = attributes.get(key)
            if value == count and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.consumed.add(key)

    def family(self, prefix: str) -> dict[int, dict[str, Any]] | None:
        """Consume and return one flattened family (`llm.input_messages.` -> {0: {"message.role": ...}})."""
        if self._families is None:
            self._families = _family_index(tuple(self.attributes))
        groups = self._families.get(prefix)
        if not groups:
            return None
        attributes = self.attributes
        out: dict[int, dict[str, Any]] = {}
        for index, fields in groups.items():
            entry: dict[str, Any] = {}
            for rest, key in fields.items():
                self.consumed.add(key)
                entry[rest] = json_safe(attributes[key])
            out[index] = entry
        return out

    def consume(self, *keys: str) -> None:
        for key in keys:
            if key in self.attributes:
                self.consumed.add(key)


_MIME_TYPES = {"input.value": "input.mime_type", "output.value": "output.mime_type"}  # OpenInference
# The Vercel AI SDK writes `JSON.stringify` of a tool's input and output: a string result is '"sunny"'.
_ALWAYS_JSON = frozenset(("ai.toolCall.args", "ai.toolCall.result"))


def _family_index(keys: tuple[str, ...]) -> dict[str, dict[int, dict[str, str]]]:
    """Flattened families by attribute name alone: `{"llm.input_messages.": {0: {"message.role": key}}}`.

    Spans of one instrumentation share their attribute names, so the index is computed once per name set (a
    bounded cache) rather than by testing every name of every span against every family prefix.
    """
    cached = _FAMILY_INDEXES.get(keys)
    if cached is not None:
        return cached
    index: dict[str, dict[int, dict[str, str]]] = {}
    for key in keys:
        if key.startswith(FAMILIES):
            for family in FAMILIES:
                if key.startswith(family):
                    number, _, rest = key[len(family) :].partition(".")
                    if number.isdigit():
                        index.setdefault(family, {}).setdefault(int(number), {})[rest] = key
                    break
    if len(keys) <= _FAMILY_INDEX_MAX_NAMES:  # long flattened spans vary (one name set per message count): not kept
        if len(_FAMILY_INDEXES) >= _FAMILY_INDEX_CACHE_SIZE:
            _FAMILY_INDEXES.clear()
        _FAMILY_INDEXES[keys] = index
    return index


_FAMILY_INDEX_CACHE_SIZE = 128
_FAMILY_INDEX_MAX_NAMES = 64
_FAMILY_INDEXES: dict[tuple[str, ...], dict[str, dict[int, dict[str, str]]]] = {}


class Typed:
    """The typed parts of one span's payloads."""

    __slots__ = ("fields", "inputs", "outputs", "result")

    def __init__(self) -> None:
        self.fields: dict[str, Any] = {}  # payload top level
        self.inputs: dict[str, Any] = {}
        self.outputs: dict[str, Any] = {}
        self.result: dict[str, Any] = {}  # result_payload top level

    def put(self, target: dict[str, Any], name: str, value: Any) -> None:
        if value:  # most values: one truth test, no empty list and dict built to compare with
            target[name] = value
        elif value is not None and value != "" and value != [] and value != {}:
            target[name] = value  # a falsy value that is still a value: 0, False, an empty tuple


def as_count(value: float) -> int | None:
    """`value` as a token count, or None when it cannot be one: NaN, infinite, negative or fractional."""
    if type(value) is int:
        return value if value >= 0 else None
    if isinstance(value, float):
        # is_integer() is False for NaN and the infinities: int() of those raises.
        return int(value) if value.is_integer() and value >= 0 else None
    return int(value) if value >= 0 else None  # an int subclass
