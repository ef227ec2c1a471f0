"""What a builder works on: one span's attributes and what the chains consumed (Context), and what it fills (Typed).

Pure, per span: a Context and a Typed live for one map_span call on the exporting thread. The only shared state is
the bounded cache of name plans (`_PLANS`: a span's attribute names -> which names of each chain are there, and its
flattened-family index, and each fast builder's layout, builders/otel.py): a plain dict, read and filled without a
lock, as are each plan's own chain and layout dicts (a lost insert costs one recomputation; `clear()` and item
assignment are atomic under the GIL, and a plan's entries depend only on its names, so two threads computing one
store equal values).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from opentelemetry.sdk.trace import Event

from prefactor_otel.mapping.chains import FAMILIES
from prefactor_otel.mapping.values import json_safe, parse_json_loose, parse_json_maybe, parse_json_value

Chain = tuple[str, ...]  # attribute names, first hit wins (chains.py)


class NamePlan:
    """What a span's attribute names alone decide, shared by every span with the same names in the same order
    (spans of one instrumentation): for each chain, the names of it that are there, in chain order; the flattened
    families. Which of those names *hits* still depends on the span's values (None and "" are skipped, counts are
    checked): the plan only spares the walk over names that are not there, so it can never pick another key than
    the walk over the whole chain would."""

    __slots__ = ("_families", "_ordered", "anys", "chains", "layouts", "names")

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = frozenset(names)
        self.chains: dict[Chain, Chain] = {}  # chain -> its names that are there
        self.anys: dict[frozenset[str], bool] = {}  # a set of names -> whether the span has any of them
        # What a name-plan decision made once says of these names, by its key (`layout`): the fast builders' layouts
        # (builders/otel.py: "llm", "tool", "agent"), token usage's counts ("usage"), the common chains ("common").
        self.layouts: dict[str, Any] = {}
        self._families: dict[str, dict[int, dict[str, str]]] | None = None
        self._ordered = names

    def present(self, keys: Chain) -> Chain:
        """The names of `keys` the span has, in chain order (remembered for the module's chains)."""
        names = self.names
        found = tuple([key for key in keys if key in names])
        if len(self.chains) < _PLAN_CHAINS_LIMIT:  # the chains are module constants: a bound only against misuse
            self.chains[keys] = found
        return found

    def has_any(self, keys: frozenset[str]) -> bool:
        found = not self.names.isdisjoint(keys)
        if len(self.anys) < _PLAN_CHAINS_LIMIT:
            self.anys[keys] = found
        return found

    def families(self) -> dict[str, dict[int, dict[str, str]]]:
        if self._families is None:
            self._families = family_index(self._ordered)
        return self._families


class Context:
    """One span's (redacted) attributes and events, what the chains consumed, and lazily grouped flattened
    families."""

    __slots__ = (
        "_anys",
        "_chains",
        "_families",
        "_plan",
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
        # The span's events as the SDK holds them, read once by the caller (each read of span.events copies them):
        # for their timestamps only. Their content is NOT redacted: builders read `event_records` for content.
        self.events = events
        self.event_records = event_records  # (name, attributes) of each event, redacted
        self.event_conversation: Any = None  # the messages found in event_records, once parsed (conversation.py)
        self.name = name  # the span's name, redacted: builders that derive a field from it read this, not span.name
        self.consumed: set[str] = set()
        self.invalid_counts: list[str] = []  # numeric attributes a count chain skipped (NaN, negative, ...)
        self._families: dict[str, dict[int, dict[str, str]]] | None = None
        # The plan of these attribute names (None for a span with more names than plans are kept for: the chains
        # are then walked whole, as before plans). The builders never add or remove an attribute, so the names the
        # plan was made for stay the span's names for the Context's life.
        plan = _PLANS.get(tuple(attributes))  # `name_plan`, its common case inline (once per GenAI span)
        if plan is None:
            plan = name_plan(attributes)
        self._plan = plan
        self._chains = plan.chains if plan is not None else None
        self._anys = plan.anys if plan is not None else None

    def _present(self, keys: Chain) -> Chain:
        """The names of the chain the span has, in chain order; without a plan, the whole chain (the walk reads
        None for a name that is not there, and skips it)."""
        chains = self._chains
        if chains is None:
            return () if self.attributes.keys().isdisjoint(keys) else keys
        present = chains.get(keys)
        if present is None:
            present = self._plan.present(keys)  # type: ignore[union-attr]
        return present

    def layout(self, builder: str, make: Callable[[frozenset[str]], Any]) -> Any:
        """What `make` says of the span's attribute names (a builder's fast-path layout, builders/otel.py: None when
        the names do not allow the fast path), made once per name plan. None for a span without a plan."""
        plan = self._plan
        if plan is None:
            return None
        layouts = plan.layouts
        found = layouts.get(builder, _NOT_MADE)
        if found is _NOT_MADE:
            found = make(plan.names)
            if len(layouts) < _PLAN_CHAINS_LIMIT:  # the builders are a handful of constants: a bound against misuse
                layouts[builder] = found
        return found

    def has_any(self, keys: frozenset[str]) -> bool:
        """Whether the span has any of these names (a builder's test before a group of chains)."""
        anys = self._anys
        if anys is None:
            return not self.attributes.keys().isdisjoint(keys)
        found = anys.get(keys)
        if found is None:
            found = self._plan.has_any(keys)  # type: ignore[union-attr]
        return found

    def present(self, keys: Chain) -> Chain:
        """The names of the chain the span has, in chain order (for a builder that reads every one of them)."""
        if self._chains is None:
            attributes = self.attributes
            return tuple([key for key in keys if key in attributes])
        return self._present(keys)

    def first(self, keys: Chain) -> tuple[str, object] | None:
        """First present, non-empty attribute of the chain; later duplicates of its value are consumed too."""
        chains = self._chains
        if chains is not None:
            present = chains.get(keys)
            if present is None:
                present = self._plan.present(keys)  # type: ignore[union-attr]
            if not present:
                return None  # most chains miss on most spans: one dict lookup, whatever the chain's length
            if len(present) == 1:  # most hits: one name of the chain there, no later duplicate to look for
                key = present[0]
                value = self.attributes.get(key)
                if value is None or value == "":
                    return None
                self.consumed.add(key)
                return key, value
        elif self.attributes.keys().isdisjoint(keys):
            return None  # no plan: one C-level check instead of a Python loop
        else:
            present = keys
        attributes = self.attributes
        for index, key in enumerate(present):
            value = attributes.get(key)
            if value is None or value == "":
                continue
            self.consumed.add(key)
            if index + 1 < len(present):
                for other in present[index + 1 :]:
                    if other in attributes and attributes[other] == value:
                        self.consumed.add(other)
            return key, value
        return None

    def value(self, keys: Chain) -> Any:
        """The JSON-safe value of the chain's first hit, or None."""
        chains = self._chains
        if chains is not None:
            present = chains.get(keys)
            if present is not None and len(present) < 2:  # `first`'s two common cases, without its call
                if not present:
                    return None
                key = present[0]
                value = self.attributes.get(key)
                if value is None or value == "":
                    return None
                self.consumed.add(key)
                return value if type(value) is str else json_safe(value)
        hit = self.first(keys)
        if hit is None:
            return None
        value = hit[1]
        return value if type(value) is str else json_safe(value)

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

    def first_json(self, keys: Chain) -> tuple[str, Any] | None:
        hit = self.first(keys)
        return (hit[0], self.parse(*hit)) if hit is not None else None

    def number(self, keys: Chain) -> int | None:
        """First attribute of the chain that is a count. A number that is not one (NaN, infinite, negative,
        fractional) is skipped, left in metadata as it came and named in `invalid_counts`: one bad count must not
        cost the span its other typed fields."""
        chains = self._chains
        present: Chain | None = chains.get(keys) if chains is not None else None  # `_present`, without its call
        if present is None:
            present = self._present(keys)
        if not present:
            return None
        attributes = self.attributes
        for key in present:
            value = attributes.get(key)
            if type(value) is int and value >= 0:  # a count, as `as_count` says for an int (a bool is not one)
                self.consumed.add(key)
                return value
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                count = as_count(value)
                if count is None:
                    self.invalid_counts.append(key)
                    continue
                self.consumed.add(key)
                return count
        return None

    def consume_equal(self, keys: Chain, count: int) -> None:
        """Consume the attributes of a count chain that hold this same count (equal duplicates under another
        convention's name); a differing one stays in metadata."""
        attributes = self.attributes
        for key in self._present(keys):
            value = attributes.get(key)
            if value == count and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.consumed.add(key)

    def has_families(self) -> bool:
        """Whether the span has any flattened family (`llm.input_messages.0.message.role`, ...)."""
        if self._families is None:
            plan = self._plan
            self._families = plan.families() if plan is not None else family_index(tuple(self.attributes))
        return bool(self._families)

    def family(self, prefix: str) -> dict[int, dict[str, Any]] | None:
        """Consume and return one flattened family (`llm.input_messages.` -> {0: {"message.role": ...}})."""
        if self._families is None:
            plan = self._plan
            self._families = plan.families() if plan is not None else family_index(tuple(self.attributes))
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


def name_plan(attributes: Mapping[str, object]) -> NamePlan | None:
    """The plan of a span's attribute names: looked up by the names in their order, made on first sight. A span
    with more than `_PLAN_MAX_NAMES` names gets none (flattened spans vary: one name set per message count)."""
    names = tuple(attributes)
    plan = _PLANS.get(names)
    if plan is not None:
        return plan
    if len(names) > _PLAN_MAX_NAMES:
        return None
    plan = NamePlan(names)
    if len(_PLANS) >= _PLAN_CACHE_SIZE:
        _PLANS.clear()  # more shapes than any set of instrumentations makes: start over rather than grow
    _PLANS[names] = plan
    return plan


_NOT_MADE = object()  # a layout not made yet (a made one may be None)
_PLAN_CACHE_SIZE = 128  # plans of 64 names at most, each a few KB once its chains are filled: <= ~1 MB
_PLAN_MAX_NAMES = 64
_PLAN_CHAINS_LIMIT = 512
_PLANS: dict[tuple[str, ...], NamePlan] = {}


def family_index(keys: tuple[str, ...]) -> dict[str, dict[int, dict[str, str]]]:
    """Flattened families by attribute name alone: `{"llm.input_messages.": {0: {"message.role": key}}}`.

    Spans of one instrumentation share their attribute names, so a plan computes this once for its names rather
    than testing every name of every span against every family prefix.
    """
    index: dict[str, dict[int, dict[str, str]]] = {}
    for key in keys:
        if key.startswith(FAMILIES):
            for family in FAMILIES:
                if key.startswith(family):
                    number, _, rest = key[len(family) :].partition(".")
                    if number.isdigit():
                        index.setdefault(family, {}).setdefault(int(number), {})[rest] = key
                    break
    return index


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
