"""How the options are shown to people: documentation generated from `OPTIONS`, and the settings a repr shows.

- `option_docs` / `with_option_docs`: one entry per option (its doc, variable, alias and default), appended to the
  docstrings of `PrefactorConfig` (here, at import: `help(PrefactorConfig)` shows them; the package's `__init__`
  imports the exporter, which imports this module, so any import of prefactor_otel sets it),
  `PrefactorSpanExporter.__init__` and `PrefactorSpanProcessor.__init__`, so no documentation can drift from
  `OPTIONS`.
- `given_settings`: what the user set, masked (the token as its length, a URL without user info or query), for the
  repr of an exporter whose configuration was refused: the values meant, not the defaults it fell back to.

Pure functions, no state, no locks; called where an exporter is built and at import.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import re
from collections.abc import Mapping
from typing import Any

from prefactor_otel.config.options import OPTIONS, PrefactorConfig, Secret, alias_of


def _default_text(name: str) -> str:
    value = {f.name: f for f in dataclasses.fields(PrefactorConfig)}[name].default
    if name == "api_token":
        return "unset (the exporter is off)"
    if value is None or value == ():
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def option_docs(indent: str = "    ") -> str:
    """One entry per option: `name`: its doc, its environment variable (and alias), its default. Appended to the
    docstrings of PrefactorConfig, PrefactorSpanExporter.__init__ and PrefactorSpanProcessor.__init__, so the
    documentation cannot drift from OPTIONS."""
    lines = []
    for name, option in OPTIONS.items():
        lines.append(f"{indent}{name}: {option.doc}.")
        default = _default_text(name)
        lines.append(f"{indent}    Environment: {option.env} (or {alias_of(option.env)}). Default: {default}.")
    return "\n".join(lines)


def with_option_docs(docstring: str | None) -> str:
    """`docstring` followed by `option_docs()`, indentation made consistent (what help() shows)."""
    return f"{inspect.cleandoc(docstring or '')}\n\nOptions:\n{option_docs()}\n"


PrefactorConfig.__doc__ = (
    "The exporter's settings: keyword arguments > OTEL_EXPORTER_PREFACTOR_* > PREFACTOR_* environment variables > "
    "defaults.\n\nBuild it with `PrefactorConfig.load(environ, **keywords)` (checks every value, raises ConfigError "
    "naming the variable); pass it as `PrefactorSpanExporter(config=...)`. Frozen; `replace(**changes)` gives a "
    "checked copy. The token is a `Secret` and never shows in repr.\n\nFields:\n" + option_docs()
)


def _shown(name: str, raw: object) -> str:
    """A value as repr may show it: the token as its length, a URL without user info or query."""
    if name == "api_token":
        text = raw.get() if isinstance(raw, Secret) else str(raw)
        return f"set ({len(text.strip())} chars)" if text.strip() else "empty"
    if callable(raw) and not isinstance(raw, str):
        return getattr(raw, "__qualname__", type(raw).__name__)
    text = str(raw).strip()
    if name == "api_url":
        text = re.sub(r"(?<=//)[^/?#]*@", "***@", text)  # user info
        text = re.sub(r"[?#].*", "?***", text)  # a query or fragment may carry a secret too
    return repr(text) if isinstance(raw, str) else repr(raw)


def given_settings(environ: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None) -> str:
    """What the user set (keywords and environment), masked as `_shown`, for a repr after a ConfigError: the values
    that were meant, not the defaults a disabled exporter falls back to. Never raises."""
    env = os.environ if environ is None else environ
    given = overrides or {}
    parts = []
    for name, option in OPTIONS.items():
        try:
            if given.get(name) is not None:
                parts.append(f"{name}={_shown(name, given[name])}")
                continue
            for variable in (alias_of(option.env), option.env):  # the alias first, as load() reads them
                raw_env = env.get(variable)
                if raw_env is not None and raw_env.strip():
                    parts.append(f"{name}={_shown(name, raw_env)}")
                    break
        except Exception:  # a repr must never fail: an odd value is shown by its type
            parts.append(f"{name}=<{type(given.get(name)).__name__}>")
    return ", ".join(parts) if parts else "nothing"
