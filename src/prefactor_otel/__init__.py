"""prefactor-otel: an OpenTelemetry SpanExporter that ships agent traces to Prefactor.

The public names load on first use (PEP 562): `opentelemetry-instrument` imports `prefactor_otel.zerocode` and
`prefactor_otel.environment_variables` on every run, whichever exporter it sets up, and importing the exporter
(pydantic models, httpx) would add a quarter of a second to each of those runs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from prefactor_otel.api_check import CheckResult
    from prefactor_otel.config import ConfigError, PrefactorConfig
    from prefactor_otel.control import (
        PrefactorTerminatedError,
        Termination,
        is_terminated,
        on_terminate,
        raise_if_terminated,
        termination,
        termination_event,
        termination_reason,
        wait_for_termination,
    )
    from prefactor_otel.exporter import PrefactorSpanExporter
    from prefactor_otel.processor import PrefactorSpanProcessor

# public name -> the module that defines it
_MODULES = {
    "CheckResult": "prefactor_otel.api_check",
    "ConfigError": "prefactor_otel.config",
    "PrefactorConfig": "prefactor_otel.config",
    "PrefactorSpanExporter": "prefactor_otel.exporter",
    "PrefactorSpanProcessor": "prefactor_otel.processor",
    **{
        name: "prefactor_otel.control"
        for name in (
            "PrefactorTerminatedError",
            "Termination",
            "is_terminated",
            "on_terminate",
            "raise_if_terminated",
            "termination",
            "termination_event",
            "termination_reason",
            "wait_for_termination",
        )
    },
}

__all__ = [
    "CheckResult",
    "ConfigError",
    "PrefactorConfig",
    "PrefactorSpanExporter",
    "PrefactorSpanProcessor",
    "PrefactorTerminatedError",
    "Termination",
    "__version__",
    "is_terminated",
    "on_terminate",
    "raise_if_terminated",
    "termination",
    "termination_event",
    "termination_reason",
    "wait_for_termination",
]


def __getattr__(name: str) -> Any:
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module 'prefactor_otel' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_MODULES})
