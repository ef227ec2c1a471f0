"""`prefactor-otel doctor`: check a set-up without sending any span, and report every problem, not the first.

Four groups of checks, all run: the configuration (every PREFACTOR_* value, each bad one named: `PF1xx`), what
`opentelemetry-instrument` will do with this environment (instrument_check.py: `PF2xx`), API access with this
configuration (api_check.py, the same code as `PrefactorSpanExporter.check()`: `PF3xx`) and what waits in the
spool for delivery (spool_report.py: `PF4xx`). A check that needs something an earlier one found broken says it
was skipped and why. Each finding that is not `ok` prints its stable code, and under it what to do (its `fix`:
every finding with a code has one, a test walks them); the README's "Troubleshooting" section lists every code.
The exit status is 1 when any finding is a problem (a PF401 note is not: spans waiting is no
misconfiguration). The token is never printed (the configuration is described masked).

Threads: the CLI's main thread only (instrument_check swaps os.environ's content while it simulates a distro).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Mapping
from importlib.metadata import PackageNotFoundError, entry_points, version

from prefactor_otel.config.options import OPTIONS, PrefactorConfig
from prefactor_otel.config.values import ConfigError
from prefactor_otel.tools.instrument_check import instrument_findings
from prefactor_otel.tools.spool_report import spool_findings
from prefactor_otel.transport.api_check import CHECK_FAILED, Finding, check_api


def run_doctor(
    environ: Mapping[str, str] | None = None,
    write: Callable[[str], None] = print,
    *,
    quiet: bool = False,
    as_json: bool = False,
    api: bool = True,
) -> int:
    """Run every check on `environ` (default: os.environ), write one line per finding; 1 if any is a problem.

    `quiet`: write only what needs attention (problems and notes, with their fixes) and the summary line.
    `as_json`: write one JSON document instead (`{"problems": N, "findings": [{level, code, text, fix}]}`), for a
    script or a CI step; the token is in no finding, so in no output. `api=False`: skip the API checks (no request
    is sent), for a place that cannot reach the API (an image build), said as an `info` line. The exit status is
    the same in every form."""
    env = dict(os.environ if environ is None else environ)
    findings: list[Finding] = []

    def emit(found: list[Finding]) -> None:
        for finding in found:
            if as_json or (quiet and finding.level not in ("problem", "note")):
                continue
            for line in finding.lines():
                write(line)
        findings.extend(found)

    config, config_findings = config_check(env)
    emit(config_findings)
    emit(entry_point_check())
    emit(instrument_findings(env))
    with contextlib.suppress(PackageNotFoundError):
        emit(
            [
                Finding(
                    "info",
                    f"opentelemetry-sdk {version('opentelemetry-sdk')}, prefactor-otel {version('prefactor-otel')}",
                )
            ]
        )
    if api:
        emit(api_findings(config, config_findings))
    else:
        emit([Finding("info", "API checks skipped (--no-api): the token and the ids were not checked")])
    emit(spool_findings(config))
    problems = sum(1 for f in findings if f.level == "problem")
    if as_json:
        found = [{"level": f.level, "code": f.code, "text": f.text, "fix": f.fix} for f in findings]
        write(json.dumps({"problems": problems, "findings": found}, indent=2))
    else:
        write(f"{problems} problem(s) found" if problems else "no problem found")
    return 1 if problems else 0


_PF101_FIX = "correct the variable named (README, Configuration, lists every value it takes)"


def config_check(environ: Mapping[str, str]) -> tuple[PrefactorConfig | None, list[Finding]]:
    """The configuration, or None with one finding per bad variable (PrefactorConfig.load stops at the first)."""
    findings: list[Finding] = []
    for option in OPTIONS.values():
        raw = environ.get(option.env)
        if raw is None or raw.strip() == "":
            continue
        try:
            option.parse(option.env, raw)
        except ConfigError as exc:
            findings.append(Finding("problem", f"configuration: {exc}", "PF101", _PF101_FIX))
    try:
        config = PrefactorConfig.load(environ)
    except ConfigError as exc:
        text = f"configuration: {exc}"
        if all(f.text != text for f in findings):
            findings.append(Finding("problem", text, "PF101", _PF101_FIX))
        config = None
    if config is not None:
        findings.append(Finding("ok", f"configuration: {config.describe()}"))
        if not config.enabled:
            findings.append(
                Finding(
                    "note",
                    "PREFACTOR_ENABLED is false: the exporter sends nothing",
                    "PF103",
                    "unset PREFACTOR_ENABLED (or set it to true) to send spans",
                )
            )
    has_token = bool(config.api_token) if config is not None else bool(environ.get("PREFACTOR_API_TOKEN", "").strip())
    findings.append(
        Finding("ok", f"{config.token_source if config is not None else 'PREFACTOR_API_TOKEN'} is set")
        if has_token
        else Finding(
            "problem",
            "PREFACTOR_API_TOKEN is missing: the exporter sends nothing",
            "PF102",
            "set PREFACTOR_API_TOKEN (or OTEL_EXPORTER_PREFACTOR_API_TOKEN) to your API token; for the local server, "
            "the token `prefactor-otel serve` prints",
        )
    )
    return config, findings


def entry_point_check() -> list[Finding]:
    """Our traces exporter entry point, which OTEL_TRACES_EXPORTER=prefactor loads."""
    from prefactor_otel.sdk.exporter import PrefactorSpanExporter

    text = "entry point opentelemetry_traces_exporter:prefactor resolves to PrefactorSpanExporter"
    found = list(entry_points(group="opentelemetry_traces_exporter", name="prefactor"))
    try:
        ok = bool(found) and found[0].load() is PrefactorSpanExporter
    except Exception:
        ok = False
    if ok:
        return [Finding("ok", text)]
    return [
        Finding(
            "problem",
            f"not true: {text}",
            "PF104",
            "reinstall prefactor-otel (pip install . in its clone, or the wheel); another package may register "
            "the name prefactor",
        )
    ]


def api_findings(config: PrefactorConfig | None, config_findings: list[Finding]) -> list[Finding]:
    """API checks with this configuration, through the exporter's own HTTP layer; skipped when they cannot run."""
    if config is None:
        why = "the configuration has problems (above)"
    elif not config.api_token:
        why = "no API token"
    else:
        why = ""
    if why:
        return [Finding("note", f"API checks skipped: {why}", CHECK_FAILED, "fix the problems above first")]
    assert config is not None
    from prefactor_otel.sdk.exporter import SDK_HEADER
    from prefactor_otel.transport.client import BulkTransport

    try:
        transport = BulkTransport(config, sdk_header=SDK_HEADER)
    except Exception as exc:
        return [
            Finding(
                "problem",
                f"API checks skipped: cannot create the HTTP client ({exc})",
                CHECK_FAILED,
                "fix the TLS or proxy setting the message names (PREFACTOR_CA_BUNDLE, HTTPS_PROXY, ...)",
            )
        ]
    try:
        return check_api(config, transport)
    finally:
        transport.close()
