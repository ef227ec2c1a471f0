"""API access checks a user can run before any span is sent: ping, agent id, environment id.

One implementation for `prefactor-otel doctor` and for `PrefactorSpanExporter.check()` (and the processor's): the
requests go through a `BulkTransport`, the exporter's own HTTP layer, so the TLS, proxy, client and timeout settings
are those the exporter sends with. Nothing here raises: every failure becomes a `Finding`.

Each finding that is not `ok` carries a stable code (`PF3xx` here; `PF1xx` configuration and `PF2xx`
OpenTelemetry set-up in the doctor's modules), printed by the doctor and listed with its fix in the README's
"Troubleshooting" section (a test checks that every code is there). The token is never part of a finding: only
the host, paths, ids and HTTP statuses are.

Threads: called on the caller's thread (the doctor's main thread, or any application thread for `check()`); no
shared state and no lock here. `BulkTransport.get` may run beside the exporter's sender and poller: the httpx
client is thread-safe and the transport's deadline is per call (client.py).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import httpx

from prefactor_otel.config.options import PrefactorConfig
from prefactor_otel.model import ids
from prefactor_otel.transport.client import BulkTransport

Level = Literal["ok", "problem", "note", "info"]
_MARKS: dict[Level, str] = {"ok": "[ok]", "problem": "[!!]", "note": "[..]", "info": "[--]"}

CHECK_FAILED = "PF300"  # the checks could not run at all (disabled exporter, invalid configuration, no token)


@dataclass(frozen=True)
class Finding:
    """One line of a check: `problem` fails it, `note` is worth reading (could not check, fragile), `ok` and `info`
    are facts. `code` is stable (README, Troubleshooting) and empty for `ok`/`info` lines. Each level has its own
    mark (`info` is `[--]`, not the note's `[..]`: a fact must not read as something to look into)."""

    level: Level
    text: str
    code: str = ""
    fix: str = ""  # what to do about it: every finding with a code has one (tests/test_doctor.py walks them)

    def line(self) -> str:
        return f"{_MARKS[self.level]} {self.code + ' ' if self.code else ''}{self.text}"

    def lines(self) -> list[str]:
        """The finding's line, then its fix, indented under it."""
        return [self.line(), f"     fix: {self.fix}"] if self.fix else [self.line()]


@dataclass(frozen=True)
class CheckResult:
    """What `PrefactorSpanExporter.check()` found: `ok` (also the result's truth value) when nothing is a problem.
    `problems` and `notes` are the findings' lines (code first); `findings` has them all, `ok` ones included."""

    ok: bool
    problems: tuple[str, ...]
    notes: tuple[str, ...]
    endpoint: str
    findings: tuple[Finding, ...]

    @classmethod
    def of(cls, findings: Iterable[Finding], endpoint: str) -> CheckResult:
        found = tuple(findings)
        problems = tuple(f.line() for f in found if f.level == "problem")
        notes = tuple(f.line() for f in found if f.level == "note")
        return cls(ok=not problems, problems=problems, notes=notes, endpoint=endpoint, findings=found)

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        head = f"Prefactor check of {self.endpoint}: " + ("ok" if self.ok else f"{len(self.problems)} problem(s)")
        return "\n".join([head, *(line for f in self.findings for line in f.lines())])


def check_exporter(
    config: PrefactorConfig, transport: BulkTransport | None, not_sending: str | None, timeout: float | None
) -> CheckResult:
    """`PrefactorSpanExporter.check()`: a problem when the exporter sends nothing (`not_sending` says why), else
    the API checks with its transport. Never raises."""
    endpoint = config.api_base
    try:
        if not_sending is not None or transport is None:
            why = not_sending or "it has no HTTP client"
            fix = "see the exporter's first warning or error (its configuration); a shut-down exporter checks nothing"
            found = Finding("problem", f"the exporter sends nothing: {why}", CHECK_FAILED, fix)
            return CheckResult.of([found], endpoint)
        return CheckResult.of(check_api(config, transport, timeout), endpoint)
    except Exception as exc:  # a check must never raise into the application
        failed = Finding("problem", f"the check failed: {type(exc).__name__}", CHECK_FAILED, "run the check again")
        return CheckResult.of([failed], endpoint)


def check_api(config: PrefactorConfig, transport: BulkTransport, timeout: float | None = None) -> list[Finding]:
    """Ping, then the agent and environment ids, all within `timeout` seconds (default: PREFACTOR_EXPORT_TIMEOUT)."""
    deadline = time.monotonic() + (config.export_timeout if timeout is None else max(0.0, timeout))
    base = config.api_base
    host = httpx.URL(base).netloc.decode("ascii", "replace")
    status, answer = _get(transport, "/ping", deadline)
    if status is None:
        return [
            Finding("problem", f"GET {base}/ping failed: {answer}", "PF301", _reach_fix(answer)),
            Finding("note", "agent and environment ids not checked: the API could not be reached", "PF302", _FIRST),
        ]
    if status in (401, 403):
        return [
            Finding(
                "problem",
                f"GET {base}/ping -> HTTP {status}: {host} rejects the token in {config.token_source}",
                "PF303",
                f"set {config.token_source} to a valid, active token of that server (the local server's is the one "
                "`prefactor-otel serve` prints)",
            ),
            Finding("note", "agent and environment ids not checked: the token was rejected", "PF302", _FIRST),
        ]
    if status != 200:  # e.g. a wrong path in PREFACTOR_API_URL: a 404 for an id would then prove nothing
        return [
            Finding(
                "problem",
                f"GET {base}/ping -> HTTP {status}{_message(answer)}",
                "PF304",
                "check PREFACTOR_API_URL (the base URL, without /api/v1) and the server's state",
            ),
            Finding("note", f"agent and environment ids not checked: the ping answered HTTP {status}", "PF302", _FIRST),
        ]
    findings = [Finding("ok", f"GET {base}/ping -> HTTP 200")]
    findings.append(_check_agent(config, transport, deadline))
    findings.extend(_check_environment(config, transport, deadline))
    return findings


def _check_agent(config: PrefactorConfig, transport: BulkTransport, deadline: float) -> Finding:
    agent_id = config.agent_id
    if not agent_id:
        return Finding(
            "note",
            "PREFACTOR_AGENT_ID is not set: runs register only with a deployment token (bound to one agent)",
            "PF310",
            "nothing with an agent deployment token; with an account token set PREFACTOR_AGENT_ID",
        )
    status, answer = _get(transport, f"/agent/{agent_id}", deadline)
    if status == 200:
        return Finding("ok", f"agent id {agent_id} exists")
    if status == 404:
        return Finding(
            "problem",
            f"agent id {agent_id} does not exist (an id of another account or server? a local server started with "
            "--memory or --reset mints new ids)",
            "PF311",
            "use the agent id the server prints (`prefactor-otel serve`) or one of your account's agents",
        )
    if status in (401, 403):
        return Finding(
            "note",
            f"agent id {agent_id} not checked: this token may not read agents (HTTP {status}); not a sign "
            "the id is wrong",
            "PF312",
            "nothing: the id was not checked (ingestion tokens often cannot read agents)",
        )
    why = answer if status is None else f"HTTP {status}{_message(answer)}"
    return Finding("note", f"agent id {agent_id} not checked: {why}", "PF313", "run the doctor again later")


def _check_environment(config: PrefactorConfig, transport: BulkTransport, deadline: float) -> list[Finding]:
    environment_id, agent_id = config.environment_id, config.agent_id
    if not environment_id:
        return []
    findings: list[Finding] = []
    same_kind = bool(agent_id) and ids.is_pfid(agent_id) and ids.is_pfid(environment_id)
    if same_kind and ids.extract_partition(str(agent_id)) != ids.extract_partition(environment_id):
        # Every id of an account shares its PFID partition (an inference: the API does not say it verbatim).
        findings.append(
            Finding(
                "note",
                f"environment id {environment_id} and agent id {agent_id} have different PFID partitions: "
                "they look like ids of two different accounts",
                "PF314",
                "take the agent id and the environment id from the same account",
            )
        )
    status, answer = _get(transport, f"/environment/{environment_id}", deadline)
    if status == 200:
        findings.append(Finding("ok", f"environment id {environment_id} exists"))
    elif status == 404 and "environment" in _message(answer).lower():
        findings.append(
            Finding(
                "problem",
                f"environment id {environment_id} does not exist{_message(answer)}",
                "PF315",
                "set PREFACTOR_ENVIRONMENT_ID to an environment of your account (or unset it with a deployment token)",
            )
        )
    elif status in (401, 403):
        findings.append(
            Finding(
                "note",
                f"environment id {environment_id} not checked: this token may not read environments "
                f"(HTTP {status}); not a sign the id is wrong",
                "PF316",
                "nothing: the id was not checked with this token",
            )
        )
    else:
        # A 404 that does not name the environment is a server without environment reads (the local server).
        why = answer if status is None else f"the server offers no environment read (HTTP {status}{_message(answer)})"
        findings.append(
            Finding(
                "note", f"environment id {environment_id} not checked: {why}", "PF317", "nothing: it was not checked"
            )
        )
    return findings


_FIRST = "see the problem above: once it is fixed, these are checked too"


def _reach_fix(why: str) -> str:
    """What to do when the API could not be reached, by the cause `_get` names."""
    if "connection refused" in why:
        return (
            "is the server running? For the local one: `prefactor-otel serve`; else check the host and port in "
            "PREFACTOR_API_URL"
        )
    if "name not resolved" in why:
        return "fix the host name in PREFACTOR_API_URL"
    if "TLS" in why:
        return "set PREFACTOR_CA_BUNDLE to the CA that signed the server's certificate (or check the URL's host)"
    if "timed out" in why:
        return "check the network and the proxy (HTTPS_PROXY, NO_PROXY), or raise PREFACTOR_EXPORT_TIMEOUT"
    if "proxy" in why:
        return "set that proxy variable to http://host:port, https://host:port or socks5://host:port, or unset it"
    return "check PREFACTOR_API_URL and the network, then run the doctor again"


def _get(transport: BulkTransport, path: str, deadline: float) -> tuple[int | None, str]:
    """(status, answer text), or (None, why no answer came: the host and the cause). Never raises."""
    try:
        # The transport's own read: same client, headers, TLS and deadline as the exporter's requests.
        read = transport.get(path, deadline)
    except RuntimeError as exc:  # httpx: the client was closed (the exporter was shut down)
        return None, f"the HTTP client is closed ({exc})"
    except Exception as exc:
        return None, type(exc).__name__
    if read.status is None:
        return None, read.error or "no answer"
    return read.status, read.body.decode("utf-8", "replace")


def _message(answer: str) -> str:
    """`: <message>` of a Prefactor error body, or "" (never the whole body: a proxy's HTML page says nothing)."""
    try:
        body = json.loads(answer)
    except ValueError:
        return ""
    message = body.get("message") if isinstance(body, dict) else None
    return f": {str(message)[:200]}" if message else ""
