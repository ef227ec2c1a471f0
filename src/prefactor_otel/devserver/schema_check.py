"""A small JSON Schema subset, enough for the dev server to notice a payload that breaks its registered schema.

Checked: `type` (one or a list), `required`, `properties`, `items`, `enum`. Everything else (formats, `$ref`,
combinators, numeric and length bounds) is ignored, so a violation found here is real but not every violation is
found. Pure functions, no state: callers (the store, under its lock) run them on any thread.
"""

from __future__ import annotations

from typing import Any

# Bounded so a hostile, deeply nested payload cannot make the server recurse without end.
_MAX_DEPTH = 32
_MAX_PROBLEMS = 10

_TYPE_CHECKS = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def violations(value: Any, schema: Any) -> list[str]:
    """Human-readable problems of `value` against `schema` (`path: message`), at most a handful; [] when none."""
    problems: list[str] = []
    _check(value, schema, "$", problems, 0)
    return problems[:_MAX_PROBLEMS]


def _check(value: Any, schema: Any, path: str, problems: list[str], depth: int) -> None:
    if not isinstance(schema, dict) or depth > _MAX_DEPTH or len(problems) >= _MAX_PROBLEMS:
        return
    expected = schema.get("type")
    if expected is not None:
        names = expected if isinstance(expected, list) else [expected]
        known = [n for n in names if n in _TYPE_CHECKS]
        if known and not any(_TYPE_CHECKS[n](value) for n in known):
            problems.append(f"{path}: expected {' or '.join(known)}, got {_type_name(value)}")
            return
    enum = schema.get("enum")
    if isinstance(enum, list) and value not in enum:
        problems.append(f"{path}: not one of the allowed values")
    if isinstance(value, dict):
        required = schema.get("required")
        if isinstance(required, list):
            for name in required:
                if isinstance(name, str) and name not in value:
                    problems.append(f"{path}.{name}: is required")
        properties = schema.get("properties")
        if isinstance(properties, dict):
            for name, sub in properties.items():
                if name in value:
                    _check(value[name], sub, f"{path}.{name}", problems, depth + 1)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            _check(item, schema["items"], f"{path}[{index}]", problems, depth + 1)


def _type_name(value: Any) -> str:
    for name in ("null", "boolean", "integer", "number", "string", "array", "object"):
        if _TYPE_CHECKS[name](value):
            return name
    return type(value).__name__
