"""prefactor-otel: an OpenTelemetry SpanExporter that ships agent traces to Prefactor."""

from __future__ import annotations

__version__ = "0.1.0"

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
