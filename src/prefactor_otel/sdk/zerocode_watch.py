"""One line on stderr when a zero-code run that asked for Prefactor loses OpenTelemetry's whole set-up.

With another OTel distro installed (opentelemetry-distro) and `OTEL_PYTHON_DISTRO` unset, `opentelemetry-instrument`
may run that distro instead of ours: it defaults metrics and logs to OTLP, whose exporters are usually not installed,
so the SDK's set-up raises after importing our exporter, `opentelemetry-instrument` logs two tracebacks ending in
"Requested component 'otlp_proto_grpc' not found ..." and the application runs on, exporting nothing, exit status 0.
Nothing of ours runs in that set-up except the import of our exporter's entry point (`prefactor_otel`'s
`__getattr__` calls `watch_set_up` then, only inside `opentelemetry-instrument`), so that is where the watch starts.

`watch_set_up` adds a filter to opentelemetry-instrument's own logger. When that logger reports "Failed to auto
initialize OpenTelemetry" in a run whose `OTEL_TRACES_EXPORTER` names prefactor and that has no tracer provider (a
failure after the SDK's set-up, in an instrumentor, loses no span and says nothing), the filter has the record
emitted as it would have been (through the same logger, once), then writes one line saying that Prefactor was asked for,
that nothing is exported, and what to do (`OTEL_PYTHON_DISTRO=prefactor`, or `prefactor-otel doctor`), so the line
comes after the traceback, where a reader looks. Every other record passes untouched; a run whose set-up succeeds
never sees the line. The standard library and the OTel API only (both loaded by then).

Threads: `watch_set_up` runs on the thread importing the exporter (opentelemetry-instrument's sitecustomize: the
main thread, before the application). The filter runs on whichever thread logs to that logger; its state (`_inside`,
`_said`) is set only by the set-up thread, which is the only one that logs the failure. No lock.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping

AUTO_INSTRUMENTATION = "opentelemetry.instrumentation.auto_instrumentation"  # its logger: opentelemetry-instrument's
_FAILED = "Failed to auto initialize OpenTelemetry"


def names_prefactor(traces_exporters: str | None) -> bool:
    """zerocode.names_prefactor without its OTel imports."""
    return "prefactor" in (name.strip() for name in (traces_exporters or "").split(","))


def failure_line(environ: Mapping[str, str]) -> str:
    """What the failing run says, fitted to what the user set (never a value other than the OTEL_* names)."""
    traces = environ.get("OTEL_TRACES_EXPORTER", "")
    distro = environ.get("OTEL_PYTHON_DISTRO")
    if distro == "prefactor":
        fix = "run `prefactor-otel doctor` with this environment to see which setting lost it"
    else:
        fix = (
            "set OTEL_PYTHON_DISTRO=prefactor (another OTel distro may have run: prefactor-otel needs none), "
            "or run `prefactor-otel doctor` with this environment to see why"
        )
    return (
        f"prefactor-otel: OTEL_TRACES_EXPORTER={traces} asks for Prefactor, but OpenTelemetry's set-up failed "
        f"(above), so no span is exported: {fix}"
    )


def _tracer_provider_installed() -> bool:
    """Whether a tracer provider was set (the API's proxy stands in until one is)."""
    from opentelemetry import trace  # loaded already: the set-up that just failed imported it

    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


class _SetUpFailureFilter(logging.Filter):
    """On opentelemetry-instrument's logger: the failure record first, then our line; all else untouched."""

    def __init__(self) -> None:
        super().__init__()
        self._inside = False  # re-emitting the failure record through the same logger: let it pass
        self._said = False

    def filter(self, record: logging.LogRecord) -> bool:
        if self._inside or self._said or not str(record.msg).startswith(_FAILED):
            return True
        if not names_prefactor(os.environ.get("OTEL_TRACES_EXPORTER")) or _tracer_provider_installed():
            return True  # not asked for, or a later step failed (an instrumentor) with the SDK set up: spans flow
        self._said = True
        self._inside = True
        try:
            logging.getLogger(record.name).handle(record)  # the traceback, exactly as it would have been logged
        finally:
            self._inside = False
        try:
            sys.stderr.write(failure_line(os.environ) + "\n")
            sys.stderr.flush()
        except (OSError, ValueError):  # no usable stderr: nothing to tell
            pass
        return False  # already emitted above


_filter: _SetUpFailureFilter | None = None


def watch_set_up() -> None:
    """Start watching opentelemetry-instrument's set-up (once per process; a no-op outside it)."""
    global _filter
    if _filter is not None or AUTO_INSTRUMENTATION not in sys.modules:
        return
    _filter = _SetUpFailureFilter()
    logging.getLogger(AUTO_INSTRUMENTATION).addFilter(_filter)
