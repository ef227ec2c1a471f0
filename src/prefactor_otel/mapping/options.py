"""MappingOptions: what the mapping may capture, how long strings may be, and what it must redact.

Frozen and built once per exporter (`MappingOptions.from_config(config)`), then passed to every `map_span` call.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prefactor_otel.mapping.redaction import RedactCallback, Redactor

if TYPE_CHECKING:
    from prefactor_otel.config.options import PrefactorConfig

DEFAULT_MAX_LENGTH = 100_000  # UTF-8 bytes per string in inputs / outputs; 0 = no limit


@dataclass(frozen=True, slots=True)
class MappingOptions:
    """Content controls for the mapping.

    - `capture_inputs` / `capture_outputs`: send inputs (messages sent, tool arguments, queries) and outputs
      (messages received, tool results, documents). Off: they are dropped, not moved to metadata.
    - `max_input_length` / `max_output_length`: UTF-8 bytes per string in inputs / outputs (0 = no limit).
    - `redact_defaults`: the built-in secret rules (keys such as `authorization`, values such as `sk-...`).
    - `redact_patterns`: extra regular expressions; matches are replaced by `[REDACTED:user_pattern_N]`.
    - `redact_keys`: extra attribute / JSON key names whose string values are masked.
    - `redact_callback`: `(path, value) -> value`, called on every string value last; if it raises, the value
      is masked.
    """

    capture_inputs: bool = True
    capture_outputs: bool = True
    max_input_length: int = DEFAULT_MAX_LENGTH
    max_output_length: int = DEFAULT_MAX_LENGTH
    redact_defaults: bool = True
    redact_patterns: tuple[str, ...] = ()
    redact_keys: tuple[str, ...] = ()
    redact_callback: RedactCallback | None = None
    redactor: Redactor = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Compile once; an invalid user pattern raises re.error here, at configuration time.
        redactor = Redactor(
            defaults=self.redact_defaults,
            patterns=self.redact_patterns,
            keys=self.redact_keys,
            callback=self.redact_callback,
        )
        object.__setattr__(self, "redactor", redactor)

    @classmethod
    def from_config(cls, config: PrefactorConfig) -> MappingOptions:
        """Options from a PrefactorConfig. Raises ConfigError (naming the variable) for an unusable callback."""
        from prefactor_otel.config.values import ConfigError

        callback = config.redact_callback
        if isinstance(callback, str):
            callback = resolve_callback(callback)
        elif callback is not None and not callable(callback):
            raise ConfigError("PREFACTOR_REDACT_CALLBACK: expected a callable or 'module:function'")
        return cls(
            capture_inputs=config.capture_inputs,
            capture_outputs=config.capture_outputs,
            max_input_length=config.max_input_length,
            max_output_length=config.max_output_length,
            redact_defaults=config.redact_defaults,
            redact_patterns=tuple(config.redact_patterns),
            redact_keys=tuple(config.redact_keys),
            redact_callback=callback,
        )


def resolve_callback(spec: str) -> RedactCallback:
    """`package.module:function` -> the function. Raises ConfigError when it cannot be imported."""
    from prefactor_otel.config.values import ConfigError

    module_name, _, attribute = spec.partition(":")
    try:
        target: object = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
    except Exception as exc:  # ImportError, AttributeError, or anything the module raises on import
        # Fail closed: without the user's redaction the exporter must not send, so this is a config error.
        raise ConfigError(f"PREFACTOR_REDACT_CALLBACK: cannot load {spec!r} ({type(exc).__name__})") from None
    if not callable(target):
        raise ConfigError(f"PREFACTOR_REDACT_CALLBACK: {spec!r} is not callable")
    return target


DEFAULT_OPTIONS = MappingOptions()
