"""prefactor-otel: an OpenTelemetry SpanExporter that ships agent traces to Prefactor.

The public names load on first use (PEP 562): `opentelemetry-instrument` imports `prefactor_otel.sdk.zerocode` and
`prefactor_otel.config.environment_variables` on every run, whichever exporter it sets up, and importing the exporter
(pydantic models, httpx) would add a quarter of a second to each of those runs.
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Any

from prefactor_otel._version import __version__ as __version__

if TYPE_CHECKING:  # what type checkers and IDEs see (`X as X`: re-exported); at run time, __getattr__ below
    from prefactor_otel.config.options import PrefactorConfig as PrefactorConfig
    from prefactor_otel.config.values import ConfigError as ConfigError
    from prefactor_otel.control.terminations import PrefactorTerminatedError as PrefactorTerminatedError
    from prefactor_otel.control.terminations import Termination as Termination
    from prefactor_otel.control.terminations import is_terminated as is_terminated
    from prefactor_otel.control.terminations import on_terminate as on_terminate
    from prefactor_otel.control.terminations import raise_if_terminated as raise_if_terminated
    from prefactor_otel.control.terminations import termination as termination
    from prefactor_otel.control.terminations import termination_event as termination_event
    from prefactor_otel.control.terminations import termination_reason as termination_reason
    from prefactor_otel.control.terminations import wait_for_termination as wait_for_termination
    from prefactor_otel.sdk.exporter import PrefactorSpanExporter as PrefactorSpanExporter
    from prefactor_otel.sdk.processor import PrefactorSpanProcessor as PrefactorSpanProcessor
    from prefactor_otel.transport.api_check import CheckResult as CheckResult

# the module that defines each public name (imported on first use)
_EXPORTS: dict[str, tuple[str, ...]] = {
    "prefactor_otel.transport.api_check": ("CheckResult",),
    "prefactor_otel.config.options": ("PrefactorConfig",),
    "prefactor_otel.config.values": ("ConfigError",),
    "prefactor_otel.control.terminations": (
        "PrefactorTerminatedError",
        "Termination",
        "is_terminated",
        "on_terminate",
        "raise_if_terminated",
        "termination",
        "termination_event",
        "termination_reason",
        "wait_for_termination",
    ),
    "prefactor_otel.sdk.exporter": ("PrefactorSpanExporter",),
    "prefactor_otel.sdk.processor": ("PrefactorSpanProcessor",),
}
_MODULES = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted([*_MODULES, "__version__"])


def __getattr__(name: str) -> Any:
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module 'prefactor_otel' has no attribute {name!r}")
    if name == "PrefactorSpanExporter" and "opentelemetry.instrumentation.auto_instrumentation" in sys.modules:
        # opentelemetry-instrument is loading our exporter entry point: the one code of ours that runs even when
        # another distro's set-up then fails and loses every span; the watch says so in one line (zerocode_watch.py)
        from prefactor_otel.sdk.zerocode_watch import watch_set_up

        watch_set_up()
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_MODULES})
