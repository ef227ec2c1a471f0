"""What `opentelemetry-instrument` will do with an environment, simulated step by step without setting anything up.

`opentelemetry-instrument` (opentelemetry-instrumentation's sitecustomize) runs: the distro (the one
`OTEL_PYTHON_DISTRO` names, else the first installed), whose `configure()` may set environment defaults; then the
configurator (the one `OTEL_PYTHON_CONFIGURATOR` names, else the first installed; a name nobody has means none
runs), which for the SDK's configurator imports every exporter named in `OTEL_TRACES_EXPORTER`,
`OTEL_METRICS_EXPORTER` and `OTEL_LOGS_EXPORTER` (the `otlp` name resolved by the OTLP protocol variables) and
the id generator, before building any provider. One missing entry point raises there, the exception is logged
("Failed to auto initialize OpenTelemetry"), no provider is installed and the application runs on, exporting
nothing: the failure this module exists to predict. `OTEL_SDK_DISABLED=true` makes every tracer a no-op.

The simulation follows the same order over the same installed entry points (the same Python, so the same package
order). The distros known to change only environment variables (ours, zerocode.py, and opentelemetry-distro's) are
run for real on a copy of the environment, so their defaults are exactly those of the installed versions; another
distro's `configure()` is not run (it could set up exporters), and a note says so. The SDK's own helper resolves
the exporter names, on the same copy.

Each finding that is not `ok` has a stable `PF2xx` code (README, "Troubleshooting").

Threads: the doctor's main thread only. Running a distro swaps `os.environ`'s content for the copy and restores it
(`_environ_as`), which another thread would see: that is why `exporter.check()` never calls this module.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from importlib.util import find_spec

from prefactor_otel.transport.api_check import Finding

OTEL_SDK_DISABLED = "OTEL_SDK_DISABLED"
OTEL_TRACES_EXPORTER = "OTEL_TRACES_EXPORTER"
OTEL_PYTHON_DISTRO = "OTEL_PYTHON_DISTRO"
OTEL_PYTHON_CONFIGURATOR = "OTEL_PYTHON_CONFIGURATOR"
OTEL_PYTHON_ID_GENERATOR = "OTEL_PYTHON_ID_GENERATOR"
# signal -> (its variable, its entry point group)
SIGNALS = {
    "traces": ("OTEL_TRACES_EXPORTER", "opentelemetry_traces_exporter"),
    "metrics": ("OTEL_METRICS_EXPORTER", "opentelemetry_metrics_exporter"),
    "logs": ("OTEL_LOGS_EXPORTER", "opentelemetry_logs_exporter"),
}
OUR_DISTRO = "prefactor_otel.sdk.zerocode:PrefactorDistro"
OUR_CONFIGURATOR = "prefactor_otel.sdk.zerocode:PrefactorConfigurator"
# Distros whose configure() only sets environment defaults: safe to run on a copy of the environment.
ENVIRONMENT_ONLY_DISTROS = frozenset({OUR_DISTRO, "opentelemetry.distro:OpenTelemetryDistro"})
SDK_LOST = "opentelemetry-instrument fails before installing a tracer provider: no span is exported"


def _value(entry_point: EntryPoint) -> str:
    return entry_point.value.replace(" ", "")


def names_prefactor(traces: str | None) -> bool:
    """zerocode.names_prefactor, which cannot be imported without opentelemetry-instrumentation (PF204)."""
    return bool(traces) and "prefactor" in (name.strip() for name in (traces or "").split(","))


@contextmanager
def _environ_as(environ: Mapping[str, str]) -> Iterator[None]:
    """os.environ holds `environ` inside the block (the distros and the SDK helpers read os.environ only)."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@dataclass
class _Run:
    """The simulated run: the environment as the configurator will see it, and what decided it."""

    environ: dict[str, str]
    distro: str  # the distro entry point that runs, or "the SDK's default distro"


def instrument_findings(environ: Mapping[str, str]) -> list[Finding]:
    """Everything that would stop `opentelemetry-instrument` or lose spans with this environment."""
    findings: list[Finding] = []
    if environ.get(OTEL_SDK_DISABLED, "").lower().strip() == "true":
        findings.append(
            Finding(
                "problem",
                f"{OTEL_SDK_DISABLED}=true: every tracer is a no-op, no span is created or exported",
                "PF201",
                f"unset {OTEL_SDK_DISABLED}",
            )
        )
    traces = environ.get(OTEL_TRACES_EXPORTER, "").strip()
    if not traces:
        findings.append(
            Finding(
                "note",
                f"{OTEL_TRACES_EXPORTER} is not set: no zero-code export",
                "PF202",
                f"nothing when your code adds the exporter; for opentelemetry-instrument set "
                f"{OTEL_TRACES_EXPORTER}=prefactor",
            )
        )
        return findings
    named = names_prefactor(traces)
    if not named:
        if any(key.startswith("PREFACTOR_") and value.strip() for key, value in environ.items()):
            findings.append(
                Finding(
                    "problem",
                    f"{OTEL_TRACES_EXPORTER}={traces} does not name prefactor: spans will not reach Prefactor",
                    "PF203",
                    f"set {OTEL_TRACES_EXPORTER}=prefactor, or add it: {OTEL_TRACES_EXPORTER}={traces},prefactor",
                )
            )
        else:
            findings.append(Finding("info", f"{OTEL_TRACES_EXPORTER}={traces} does not name prefactor"))
    if find_spec("opentelemetry.instrumentation") is None:
        findings.append(
            Finding(
                "problem",
                "opentelemetry-instrumentation is missing (no opentelemetry-instrument)",
                "PF204",
                "pip install opentelemetry-instrumentation",
            )
        )
        return findings
    run = _simulate_distro(environ, named, findings)
    if run is None:
        return findings
    if _simulate_configurator(run, environ, named, findings):
        _simulate_sdk(run, environ, findings)
    return findings


def _simulate_distro(environ: Mapping[str, str], named: bool, findings: list[Finding]) -> _Run | None:
    # the module opts out of type checking (a file-level "# type: ignore"), so mypy sees none of its names
    from opentelemetry.instrumentation.distro import BaseDistro  # type: ignore[attr-defined]

    chosen_name = environ.get(OTEL_PYTHON_DISTRO)  # as opentelemetry-instrument: "" is a name nobody has
    installed = list(entry_points(group="opentelemetry_distro"))
    chosen: EntryPoint | None = None
    for entry_point in installed:
        if chosen_name is None or chosen_name == entry_point.name:
            try:
                loaded = entry_point.load()
            except Exception as exc:
                findings.append(
                    Finding(
                        "problem",
                        f"distro {entry_point.name!r} ({entry_point.value}) cannot be loaded: "
                        f"{type(exc).__name__}: {exc}; {SDK_LOST}",
                        "PF205",
                        f"fix or uninstall the package of that distro, or set {OTEL_PYTHON_DISTRO}=prefactor",
                    )
                )
                return None
            if isinstance(loaded, type) and issubclass(loaded, BaseDistro):
                chosen = entry_point
                break
    names = ", ".join(ep.name for ep in installed) or "none"
    if chosen_name is not None and chosen is None:
        findings.append(
            Finding(
                "problem",
                f"{OTEL_PYTHON_DISTRO}={chosen_name}: no installed distro has that name (installed: "
                f"{names}); opentelemetry-instrument runs the SDK's default distro",
                "PF206",
                f"set {OTEL_PYTHON_DISTRO}=prefactor",
            )
        )
    others = [ep.name for ep in installed if _value(ep) != OUR_DISTRO]
    if named and chosen_name is None and others:
        now = f"now {chosen.name!r}, listed first" if chosen is not None else "now none"
        findings.append(
            Finding(
                "problem",
                f"another OTel distro is installed ({', '.join(others)}): which one runs depends on "
                f"package order ({now})",
                "PF207",
                f"set {OTEL_PYTHON_DISTRO}=prefactor, or uninstall the other distro (prefactor-otel does not need it)",
            )
        )
    elif named and chosen is not None and _value(chosen) != OUR_DISTRO:
        findings.append(
            Finding(
                "note",
                f"{OTEL_PYTHON_DISTRO}={chosen_name}: the Prefactor distro does not run, its defaults "
                "(OTEL_METRICS_EXPORTER/OTEL_LOGS_EXPORTER none, OTEL_PYTHON_CONFIGURATOR prefactor) do not apply",
                "PF208",
                f"set {OTEL_PYTHON_DISTRO}=prefactor, unless you set those variables yourself",
            )
        )
    elif named and chosen is not None:
        findings.append(Finding("ok", "opentelemetry-instrument will use the Prefactor distro"))
    if chosen is None:
        return _Run(dict(environ), "the SDK's default distro")
    runs = chosen
    if _value(chosen) == OUR_DISTRO and not named and chosen_name is None:
        from prefactor_otel.sdk.zerocode import PrefactorDistro, next_other

        handover = next_other("opentelemetry_distro", PrefactorDistro)  # what ours hands over to (zerocode.py)
        runs = handover if handover is not None else chosen
    if _value(runs) not in ENVIRONMENT_ONLY_DISTROS:
        findings.append(
            Finding(
                "note",
                f"distro {runs.name!r} ({runs.value}) runs: what it sets up is not simulated",
                "PF209",
                f"nothing if that distro is wanted; else set {OTEL_PYTHON_DISTRO}=prefactor",
            )
        )
        return _Run(dict(environ), runs.name)
    copy = dict(environ)
    with _environ_as(copy):
        chosen.load()().configure()  # ours hands over itself, as it will under opentelemetry-instrument
        copy = dict(os.environ)
    return _Run(copy, runs.name)


def _simulate_configurator(run: _Run, original: Mapping[str, str], named: bool, findings: list[Finding]) -> bool:
    """False when no SDK configurator runs (nothing more to simulate)."""
    from opentelemetry.sdk import _configuration as sdk_configuration

    environ = run.environ
    chosen_name = environ.get(OTEL_PYTHON_CONFIGURATOR)
    installed = list(entry_points(group="opentelemetry_configurator"))
    chosen = next((ep for ep in installed if chosen_name is None or chosen_name == ep.name), None)
    if chosen_name is None:
        by = "unset"
    elif original.get(OTEL_PYTHON_CONFIGURATOR) == chosen_name:
        by = "set by you"
    else:
        by = f"set by distro {run.distro!r}"
    if chosen is None:
        names = ", ".join(ep.name for ep in installed) or "none"
        setting = f"{OTEL_PYTHON_CONFIGURATOR}={chosen_name}" if chosen_name is not None else "no configurator"
        findings.append(
            Finding(
                "problem",
                f"{setting} ({by}): no installed configurator has that name (installed: {names}): "
                "nothing sets up the SDK, no span is exported",
                "PF210",
                f"set {OTEL_PYTHON_CONFIGURATOR}=prefactor, or unset it",
            )
        )
        return False
    effective = chosen
    if (
        _value(chosen) == OUR_CONFIGURATOR
        and not names_prefactor(environ.get(OTEL_TRACES_EXPORTER))
        and not chosen_name
    ):
        from prefactor_otel.sdk.zerocode import PrefactorConfigurator, next_other

        effective = next_other("opentelemetry_configurator", PrefactorConfigurator) or chosen
    competing = chosen_name is None and len(installed) > 1
    if named and _value(effective) != OUR_CONFIGURATOR:
        why = "listed first" if competing else f"{OTEL_PYTHON_CONFIGURATOR}={chosen_name}, {by}"
        findings.append(
            Finding(
                "problem",
                f"configurator {effective.name!r} runs ({why}), not Prefactor's: the exporter runs in "
                "a BatchSpanProcessor, without live spans, and runs finish only after "
                "PREFACTOR_FINISH_GRACE_SECONDS",
                "PF211",
                f"set {OTEL_PYTHON_DISTRO}=prefactor (or {OTEL_PYTHON_CONFIGURATOR}=prefactor)",
            )
        )
    elif named and competing:
        findings.append(
            Finding(
                "problem",
                f"{len(installed)} configurators are installed and {OTEL_PYTHON_CONFIGURATOR} is "
                "unset: which one runs depends on package order (now Prefactor's)",
                "PF212",
                f"set {OTEL_PYTHON_DISTRO}=prefactor",
            )
        )
    elif named:
        findings.append(Finding("ok", "opentelemetry-instrument will use the Prefactor configurator"))
    try:
        loaded = effective.load()
    except Exception as exc:
        findings.append(
            Finding(
                "problem",
                f"configurator {effective.name!r} cannot be loaded: {type(exc).__name__}: {exc}; {SDK_LOST}",
                "PF213",
                f"fix or uninstall the package of that configurator, or set {OTEL_PYTHON_CONFIGURATOR}=prefactor",
            )
        )
        return False
    if not (isinstance(loaded, type) and issubclass(loaded, sdk_configuration._OTelSDKConfigurator)):
        findings.append(
            Finding(
                "note",
                f"configurator {effective.name!r} ({effective.value}) is not the SDK's: what it sets up is "
                "not simulated",
                "PF214",
                f"nothing if that configurator is wanted; else set {OTEL_PYTHON_CONFIGURATOR}=prefactor",
            )
        )
        return False
    if _value(effective) == OUR_CONFIGURATOR and named:
        from prefactor_otel.sdk.zerocode import sdk_accepts_export_span_processor

        if not sdk_accepts_export_span_processor():
            findings.append(
                Finding(
                    "problem",
                    "opentelemetry-sdk < 1.40: zero-code runs put the exporter in a BatchSpanProcessor",
                    "PF215",
                    "pip install 'opentelemetry-sdk>=1.40'",
                )
            )
    return True


def _simulate_sdk(run: _Run, original: Mapping[str, str], findings: list[Finding]) -> None:
    """What the SDK's configurator imports before building a provider: any failure loses every span."""
    from opentelemetry.sdk import _configuration as sdk_configuration

    environ = run.environ
    lost = False
    resolved: dict[str, list[str]] = {}
    for signal, (variable, group) in SIGNALS.items():
        value = environ.get(variable, "")
        origin = "" if original.get(variable) == value or not value else f", the default of distro {run.distro!r}"
        try:
            with _environ_as(environ):
                names = sdk_configuration._get_exporter_names(signal)  # type: ignore[arg-type]
        except Exception as exc:  # e.g. an unsupported OTLP protocol
            fix = f"correct {variable} or the OTLP protocol variable the message names (or set {variable}=none)"
            findings.append(Finding("problem", f"{variable}={value}{origin}: {exc}; {SDK_LOST}", "PF216", fix))
            lost = True
            continue
        resolved[signal] = names
        for name in names:
            found = list(entry_points(group=group, name=name))
            fix = (
                f"set {variable}=none, or install the package providing it"
                if signal != "traces"
                else "remove it from the list, or install the package providing it"
            )
            if not found:
                findings.append(
                    Finding(
                        "problem",
                        f"{variable}={value}{origin}: exporter {name!r} is not installed (no "
                        f"{group} entry point): {SDK_LOST}",
                        "PF217",
                        fix,
                    )
                )
                lost = True
                continue
            try:
                found[0].load()
            except Exception as exc:
                findings.append(
                    Finding(
                        "problem",
                        f"{variable}={value}{origin}: exporter {name!r} cannot be loaded: "
                        f"{type(exc).__name__}: {exc}; {SDK_LOST}",
                        "PF218",
                        fix,
                    )
                )
                lost = True
    generator = environ.get(OTEL_PYTHON_ID_GENERATOR, "random").strip()
    if not list(entry_points(group="opentelemetry_id_generator", name=generator)):
        findings.append(
            Finding(
                "problem",
                f"{OTEL_PYTHON_ID_GENERATOR}={generator}: no such id generator installed; {SDK_LOST}",
                "PF219",
                f"unset {OTEL_PYTHON_ID_GENERATOR} (default random), or install the package providing it",
            )
        )
        lost = True
    if not lost:
        summary = "; ".join(f"{signal}: {', '.join(names) or 'none'}" for signal, names in resolved.items())
        findings.append(Finding("ok", f"opentelemetry-instrument will set up the SDK with {summary}"))
