"""Fast paths of the llm, tool and agent builders for spans that carry only OTel GenAI names. Pure functions.

A span's attribute names decide, once per name set (the span's `NamePlan`), whether its builder may take the fast
path: every name is either one the fast path reads by its OTel GenAI name (the first name of its chain; for the
provider, `gen_ai.provider.name` and `gen_ai.system`), one the fast path leaves to later steps that read it through
the chains as before (usage, session, user, tags, `gen_ai.operation.name`), or one that no builder reads at all
(`_neutral`: in no chain, read by no builder by name, in no flattened family, as `server.address` or
`gen_ai.server.time_to_first_token`). Then each chain the builder walks has only those names there, so the walk
reduces to reading them: the fast path reads them directly, with the walk's rules on values (None and "" are no
hit, an equal later duplicate is consumed; the same JSON parsing and message shapes; the same put rules and field
order), and leaves every value shape it does not expect to the general builder, deciding so before it writes
anything into the span's Context or Typed. A span with events takes the general builder (conversations and
first-token times are read from events there).

`tests/test_builder_fast_paths.py` maps every recorded span and fuzzed OTel GenAI spans with the fast paths and
with them switched off and compares the records, and checks that every attribute name the builders read by name is
in `READ_NAMES`.

Called from map_span on the exporting thread; no state (the layouts live on the shared name plans, context.py).
"""

from __future__ import annotations

from typing import Any

from prefactor_otel.mapping import chains
from prefactor_otel.mapping.values import json_safe


def _chain_names() -> frozenset[str]:
    """Every name in a chain of chains.py (tuples of names, the request parameters' (name, field) pairs, sets and
    the event tables): read by some builder through a chain."""
    names: set[str] = set()
    for value in vars(chains).values():
        if isinstance(value, (tuple, frozenset, set, dict)):
            for item in value:
                if isinstance(item, str):
                    names.add(item)
                elif isinstance(item, tuple) and item and isinstance(item[0], str):
                    names.add(item[0])
    return frozenset(names)


# Attribute names the builders, usage.py and context.py read by name rather than through a chain (the test checks
# this list against the string constants of those modules).
_LITERAL_NAMES = frozenset(
    {
        "ai.operationId",
        "ai.telemetry.functionId",
        "gcp.vertex.agent.llm_request",
        "gcp.vertex.agent.llm_response",
        "gen_ai.conversation.id",
        "gen_ai.operation.name",
        "gen_ai.response.model",
        "input.mime_type",
        "input.value",
        "llm.model_name",
        "llm.prompts",
        "operation.name",
        "output.mime_type",
        "output.value",
        "resource.name",
        "tool.parameters",
    }
)
READ_NAMES = _chain_names() | _LITERAL_NAMES


def _neutral(name: str) -> bool:
    """A name no builder reads: in no chain, read by no builder by name, in no flattened family (the only names the
    builders find by prefix). It goes to metadata whatever the builder does, whichever convention it belongs to
    (`gen_ai.server.time_to_first_token`, `server.address`)."""
    return name not in READ_NAMES and not name.startswith(chains.FAMILIES)


# Names left to the steps after the builder, which read them through their chains as before: the operation
# (payload.py), session / user / tags (common_fields), token usage (usage.py).
_LATER = frozenset(
    {
        "gen_ai.operation.name",
        *chains.SESSION,
        *chains.USER,
        *chains.TAGS,
        *chains.PROMPT_TOKENS,
        *chains.COMPLETION_TOKENS,
        *chains.TOTAL_TOKENS,
        *chains.CACHE_READ_TOKENS,
        *chains.CACHE_WRITE_TOKENS,
        *chains.REASONING_TOKENS,
        *chains.AGGREGATED_PROMPT,
        *chains.AGGREGATED_COMPLETION,
        *chains.USAGE_JSON,
    }
)

MODEL = chains.MODEL[0]
PROVIDER = chains.PROVIDER[0]
SYSTEM = chains.PROVIDER[1]  # the older name of the provider, often beside gen_ai.provider.name
RESPONSE_MODEL = chains.RESPONSE_MODEL[0]
RESPONSE_ID = chains.RESPONSE_ID[0]
FINISH_REASONS = chains.FINISH_REASONS[0]
INPUT_MESSAGES = chains.INPUT_MESSAGES[0]
SYSTEM_INSTRUCTIONS = chains.SYSTEM_INSTRUCTIONS[0]
OUTPUT_MESSAGES = chains.OUTPUT_MESSAGES[0]
# The OTel GenAI request parameters, in REQUEST_PARAMS order (the order the general builder fills them in): the
# `gen_ai.*` ones each name a field no other `gen_ai.*` parameter names.
PARAMS = tuple((key, name) for key, name in chains.REQUEST_PARAMS if key.startswith("gen_ai."))

_LLM_NAMES = frozenset(
    {
        MODEL,
        PROVIDER,
        SYSTEM,
        RESPONSE_MODEL,
        RESPONSE_ID,
        FINISH_REASONS,
        INPUT_MESSAGES,
        SYSTEM_INSTRUCTIONS,
        OUTPUT_MESSAGES,
        *(key for key, _ in PARAMS),
    }
)


def _eligible(names: frozenset[str], handled: frozenset[str]) -> bool:
    return all(name in handled or name in _LATER or _neutral(name) for name in names)


def llm_layout(names: frozenset[str]) -> tuple[tuple[str, str], ...] | None:
    """For a name set the llm fast path can take: the request parameters it has, in REQUEST_PARAMS order; else
    None."""
    if not _eligible(names, _LLM_NAMES):
        return None
    return tuple(pair for pair in PARAMS if pair[0] in names)


def first_value(attributes: dict[str, object], consumed: set[str], key: str) -> Any:
    """`Context.value` of a chain whose only name there is `key`."""
    value = attributes.get(key)
    if value is None or value == "":
        return None
    consumed.add(key)
    return value if type(value) is str else json_safe(value)


def provider(attributes: dict[str, object], consumed: set[str]) -> Any:
    """`Context.value(PROVIDER)` when the chain's names there are `gen_ai.provider.name` and / or `gen_ai.system`:
    the first that is not empty, and the other consumed too when it holds the same value."""
    value = attributes.get(PROVIDER)
    if value is None or value == "":
        return first_value(attributes, consumed, SYSTEM)
    consumed.add(PROVIDER)
    if SYSTEM in attributes and attributes[SYSTEM] == value:
        consumed.add(SYSTEM)
    return value if type(value) is str else json_safe(value)


def put(target: dict[str, Any], name: str, value: Any) -> None:
    """`Typed.put`: a value, or a falsy value that is still one (0, False, an empty tuple)."""
    if value:  # most values: one truth test
        target[name] = value
    elif value is not None and value != "" and value != [] and value != {}:
        target[name] = value  # 0, False, an empty tuple


def put_fields(
    fields: dict[str, Any], attributes: dict[str, object], consumed: set[str], pairs: tuple[tuple[str, str], ...]
) -> None:
    """`put(fields, field, first_value(attributes, consumed, key))` for each (key, field), a string value inline
    (the two reduce to "a non-empty string is consumed and put"); any other value takes those functions."""
    for key, field in pairs:
        value = attributes.get(key)
        if type(value) is str:
            if value:
                consumed.add(key)
                fields[field] = value
        elif value is not None:
            put(fields, field, first_value(attributes, consumed, key))


def put_provider(fields: dict[str, Any], attributes: dict[str, object], consumed: set[str]) -> None:
    """`put(fields, "provider", provider(attributes, consumed))`, a non-empty string `gen_ai.provider.name` inline."""
    value = attributes.get(PROVIDER)
    if type(value) is str and value:
        consumed.add(PROVIDER)
        if SYSTEM in attributes and attributes[SYSTEM] == value:
            consumed.add(SYSTEM)
        fields["provider"] = value
    else:
        put(fields, "provider", provider(attributes, consumed))


TOOL_NAME = chains.TOOL_NAME[0]
TOOL_CALL_ID = chains.TOOL_CALL_ID[0]
TOOL_TYPE = chains.TOOL_TYPE[0]
TOOL_DESCRIPTION = chains.TOOL_DESCRIPTION[0]
TOOL_ARGUMENTS = chains.TOOL_ARGUMENTS[0]
TOOL_RESULT = chains.TOOL_RESULT[0]
_TOOL_NAMES = frozenset((TOOL_NAME, TOOL_CALL_ID, TOOL_TYPE, TOOL_DESCRIPTION, TOOL_ARGUMENTS, TOOL_RESULT))


def tool_layout(names: frozenset[str]) -> bool | None:
    """True for a name set the tool fast path can take, else None."""
    return True if _eligible(names, _TOOL_NAMES) else None


AGENT_NAME = chains.AGENT_NAME[0]
AGENT_ID = chains.AGENT_ID[0]
AGENT_DESCRIPTION = chains.AGENT_DESCRIPTION[0]
AGENT_VERSION = chains.AGENT_VERSION[0]
_AGENT_NAMES = frozenset(
    (AGENT_NAME, AGENT_ID, AGENT_DESCRIPTION, AGENT_VERSION, MODEL, PROVIDER, SYSTEM, *(key for key, _ in PARAMS))
)


def agent_layout(names: frozenset[str]) -> tuple[tuple[str, str], ...] | None:
    """For a name set the agent fast path can take (no conversation, no run prompt or answer, no generic value):
    the request parameters it has, in REQUEST_PARAMS order; else None."""
    if not _eligible(names, _AGENT_NAMES):
        return None
    return tuple(pair for pair in PARAMS if pair[0] in names)


def params(
    attributes: dict[str, object], consumed: set[str], params_there: tuple[tuple[str, str], ...]
) -> dict[str, Any] | None:
    """`request_params` of a span whose only parameters are these `gen_ai.*` ones (each its own field)."""
    found: dict[str, Any] = {}
    for key, name in params_there:
        consumed.add(key)
        value: Any = attributes[key]
        value_type = type(value)
        if value_type is float:
            if not -_INFINITY < value < _INFINITY:  # NaN and the infinities: json_safe's strings
                value = json_safe(value)
        elif value_type is not int and value_type is not str:
            value = json_safe(value)
        if value is not None and value != []:
            found[name] = value
    return found or None


_INFINITY = float("inf")
