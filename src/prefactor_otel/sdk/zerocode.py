"""Zero-code set-up: the distro and configurator `opentelemetry-instrument` loads for `OTEL_TRACES_EXPORTER=prefactor`.

`opentelemetry-instrument` (package opentelemetry-instrumentation) runs, before the application: the first
`opentelemetry_distro` entry point (or the one `OTEL_PYTHON_DISTRO` names), then the first `opentelemetry_configurator`
(or the one `OTEL_PYTHON_CONFIGURATOR` names), which builds the SDK's providers from the `OTEL_*` environment. This
package declares both, named `prefactor` (entry_points.txt), so installing prefactor-otel with
opentelemetry-instrumentation is enough:

- When `OTEL_TRACES_EXPORTER` names `prefactor`, `PrefactorDistro` defaults `OTEL_METRICS_EXPORTER` and
  `OTEL_LOGS_EXPORTER` to `none` (a user's value is kept) and `OTEL_PYTHON_CONFIGURATOR` to `prefactor`, so that
  `PrefactorConfigurator` builds the SDK even when another configurator (opentelemetry-distro's) is installed.
  `PrefactorConfigurator` is the SDK's own configurator, except that a `PrefactorSpanExporter` goes into a
  `PrefactorSpanProcessor`; every other listed exporter still gets its `BatchSpanProcessor`.
- When it does not name `prefactor` and no `OTEL_PYTHON_DISTRO` / `OTEL_PYTHON_CONFIGURATOR` chose us by name, both
  hand over to the next installed distro / configurator (the one that would have run without prefactor-otel), so
  installing this package changes nothing for such runs.

Which distro comes first when two are installed is the order Python lists installed packages in, which nothing
defines: with opentelemetry-distro installed too, only `OTEL_PYTHON_DISTRO=prefactor` makes our set-up certain
(README, "Zero code"); `prefactor-otel doctor` says so.

Threads: `opentelemetry-instrument`'s sitecustomize calls these once, on the main thread, before the application
starts. No shared state, no lock; the only effect besides the SDK's providers is on `os.environ` (setdefault).
"""

from __future__ import annotations

import inspect
import logging
import os
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from opentelemetry.environment_variables import OTEL_LOGS_EXPORTER, OTEL_METRICS_EXPORTER, OTEL_TRACES_EXPORTER
from opentelemetry.instrumentation.distro import BaseDistro  # type: ignore[attr-defined]  # distro.py opts out of mypy
from opentelemetry.instrumentation.environment_variables import OTEL_PYTHON_CONFIGURATOR, OTEL_PYTHON_DISTRO
from opentelemetry.sdk import _configuration as sdk_configuration
from opentelemetry.sdk.trace import SpanProcessor
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

ENTRY_POINT_NAME = "prefactor"  # our name in opentelemetry_traces_exporter, _distro and _configurator

_logger = logging.getLogger(__name__)


def names_prefactor(traces_exporters: str | None) -> bool:
    """True when an `OTEL_TRACES_EXPORTER` value lists our exporter (comma-separated, as the SDK splits it)."""
    if not traces_exporters:
        return False
    return ENTRY_POINT_NAME in (name.strip() for name in traces_exporters.split(","))


def next_other(group: str, ours: type) -> EntryPoint | None:
    """The first entry point of `group` that is not `ours`: what `opentelemetry-instrument` would load next."""
    own = f"{ours.__module__}:{ours.__qualname__}"
    for entry_point in entry_points(group=group):
        if entry_point.value.replace(" ", "") != own:
            return entry_point
    return None


def export_span_processor(span_exporter: SpanExporter) -> SpanProcessor:
    """The processor the configurator puts each traces exporter in: ours for ours, the SDK's default otherwise."""
    # Imported here: this module is loaded by every `opentelemetry-instrument` run, also those without our exporter
    # (the exporter's import costs ~0.2 s); a run that built our exporter has imported it already.
    from prefactor_otel.sdk.exporter import PrefactorSpanExporter
    from prefactor_otel.sdk.processor import PrefactorSpanProcessor

    if isinstance(span_exporter, PrefactorSpanExporter):
        return PrefactorSpanProcessor(span_exporter)
    return BatchSpanProcessor(span_exporter)


def sdk_accepts_export_span_processor() -> bool:
    """opentelemetry-sdk 1.40+ lets a configurator choose the processor of each exporter; older SDKs do not."""
    return "export_span_processor" in inspect.signature(sdk_configuration._initialize_components).parameters


class PrefactorDistro(BaseDistro):  # type: ignore[misc]  # BaseDistro is Any to mypy: its module opts out of typing
    """Defaults for a run that exports to Prefactor; hands over to another installed distro otherwise."""

    _handover: BaseDistro | None = None

    def _configure(self, **kwargs: Any) -> None:
        if names_prefactor(os.environ.get(OTEL_TRACES_EXPORTER)):
            # Unset means no exporter to the SDK already; `none` also holds when another configurator runs
            # (opentelemetry-distro's would otherwise be handed OTLP defaults its user never installed).
            os.environ.setdefault(OTEL_METRICS_EXPORTER, "none")
            os.environ.setdefault(OTEL_LOGS_EXPORTER, "none")
            os.environ.setdefault(OTEL_PYTHON_CONFIGURATOR, ENTRY_POINT_NAME)
            return
        if os.environ.get(OTEL_PYTHON_DISTRO):
            return  # the user chose this distro by name: it sets nothing, as the SDK's default distro
        other = next_other("opentelemetry_distro", PrefactorDistro)
        if other is None:
            return
        distro = other.load()()
        if isinstance(distro, BaseDistro):
            _logger.debug("OTEL_TRACES_EXPORTER does not name prefactor: distro %s configures this run", other.name)
            self._handover = distro
            distro.configure(**kwargs)

    def load_instrumentor(self, entry_point: EntryPoint, **kwargs: Any) -> None:
        if self._handover is not None:
            self._handover.load_instrumentor(entry_point, **kwargs)
        else:
            super().load_instrumentor(entry_point, **kwargs)


class PrefactorConfigurator(sdk_configuration._OTelSDKConfigurator):
    """The SDK's configurator (OTEL_* environment), with a PrefactorSpanProcessor for the Prefactor exporter."""

    def _configure(self, **kwargs: Any) -> None:
        named = names_prefactor(os.environ.get(OTEL_TRACES_EXPORTER))
        if not named and not os.environ.get(OTEL_PYTHON_CONFIGURATOR):
            other = next_other("opentelemetry_configurator", PrefactorConfigurator)
            if other is not None:
                _logger.debug("OTEL_TRACES_EXPORTER does not name prefactor: configurator %s runs", other.name)
                other.load()().configure(**kwargs)
                return
        if named and sdk_accepts_export_span_processor():
            # Only for a run that names us: `export_span_processor` imports the exporter to recognise it (~0.2 s),
            # which a run of other exporters must not pay (the SDK gives each its BatchSpanProcessor, as without us).
            kwargs.setdefault("export_span_processor", export_span_processor)
        elif named:
            _logger.warning(
                "this opentelemetry-sdk cannot choose span processors (1.40+ can): the Prefactor exporter runs in "
                "a BatchSpanProcessor, without PrefactorSpanProcessor"
            )
        super()._configure(**kwargs)  # type: ignore[no-untyped-call]  # the SDK's configurator is unannotated
