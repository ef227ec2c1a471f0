"""PrefactorConfig: keyword arguments override PREFACTOR_* environment variables override defaults.

Auto-configuration builds the exporter with no arguments, so everything must be reachable from the
environment. An invalid value raises one `ConfigError` naming the variable; the exporter turns that into one
log line and a disabled exporter, so the host application never dies of a typo.

Each value goes through its option's parser in values.py, which holds `ConfigError` and the safety rules
for PREFACTOR_API_URL and PREFACTOR_API_TOKEN; `PrefactorConfig.__post_init__` applies those rules to the finished
config, so a config built directly or changed with `replace()` passes them too.

**Aliases.** Every `PREFACTOR_X` is also read as `OTEL_EXPORTER_PREFACTOR_X` (`alias_of`), the naming of the OTLP
exporter's `OTEL_EXPORTER_OTLP_*`; environment_variables.py registers the aliases with `opentelemetry-instrument`,
which turns each into a flag (`--exporter_prefactor_api_token`). Precedence: keyword argument >
`OTEL_EXPORTER_PREFACTOR_X` > `PREFACTOR_X` > default. The alias wins because `opentelemetry-instrument` sets it
from a command-line flag, and a flag typed for one run is expected to beat the environment it runs in. Both set to
different values: one warning naming both variables (never the values). An error names the variable (or keyword)
the value came from.

`OPTIONS` is the one list of options: the exporter's and processor's keyword parameters, their docstrings and
the `PrefactorConfig` field docs (generated in text.py) and the README's configuration table are checked
against it (tests/test_options.py).

Called from whichever thread builds the exporter (usually the main thread, once); no shared state, no locks.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prefactor_otel._logging import logger
from prefactor_otel.config.values import (
    API_PREFIX,
    ConfigError,
    check_token,
    is_loopback_host,
    parse_api_url,
    parse_bool,
    parse_callback_spec,
    parse_compression,
    parse_live_spans,
    parse_name_list,
    parse_pfid,
    parse_poll_interval,
    parse_purpose,
    parse_regex_list,
    parse_span_filter,
    parse_text,
    parse_token,
    parse_url,
    positive_number,
)

DEFAULT_API_URL = "https://app.prefactorai.com"
NATIVE_PREFIX = "PREFACTOR_"
ALIAS_PREFIX = "OTEL_EXPORTER_PREFACTOR_"


class Secret:
    """A string that never shows itself in repr/str/logs."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')" if self._value else "Secret('')"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class _Option:
    env: str
    parse: Callable[[str, str], Any]
    doc: str


# field name -> (environment variable, parser, documentation). The README's configuration table is this.
OPTIONS: dict[str, _Option] = {
    "api_url": _Option("PREFACTOR_API_URL", parse_url, "Prefactor API base URL (paths live under /api/v1)"),
    "api_token": _Option(
        "PREFACTOR_API_TOKEN", parse_token, "API token (Bearer; printable ASCII). Without it the exporter is off"
    ),
    "agent_id": _Option("PREFACTOR_AGENT_ID", parse_pfid, "agent the runs belong to (omit with a deployment token)"),
    "environment_id": _Option("PREFACTOR_ENVIRONMENT_ID", parse_pfid, "environment for the runs (account token)"),
    "agent_name": _Option("PREFACTOR_AGENT_NAME", parse_text, "agent version name (default: service.name)"),
    "agent_identifier": _Option(
        "PREFACTOR_AGENT_IDENTIFIER", parse_text, "agent version identifier (default: service.version)"
    ),
    "purpose": _Option("PREFACTOR_INSTANCE_PURPOSE", parse_purpose, "live, smoke_test or eval"),
    "enabled": _Option("PREFACTOR_ENABLED", parse_bool, "false turns the exporter into a no-op"),
    "span_filter": _Option(
        "PREFACTOR_SPAN_FILTER",
        parse_span_filter,
        "all, or genai: only spans of a GenAI convention and their ancestors (children of a dropped span are "
        "re-parented to the nearest exported ancestor)",
    ),
    "live_spans": _Option(
        "PREFACTOR_LIVE_SPANS",
        parse_live_spans,
        "with PrefactorSpanProcessor, which spans are created active when they start and finished when they end: "
        "agent (a run's root, agent spans and their ancestors), all, or none",
    ),
    "allow_insecure": _Option(
        "PREFACTOR_ALLOW_INSECURE",
        parse_bool,
        "allow a plain http:// URL to a host other than loopback (127.0.0.0/8, ::1, the name localhost); the token "
        "would travel in clear text",
    ),
    "tls_verify": _Option(
        "PREFACTOR_TLS_VERIFY", parse_bool, "verify the server's TLS certificate (turn off only knowingly)"
    ),
    "ca_bundle": _Option("PREFACTOR_CA_BUNDLE", parse_text, "CA bundle file to verify the server with"),
    "spool": _Option(
        "PREFACTOR_SPOOL", parse_bool, "keep undeliverable items on disk and re-send them, across restarts"
    ),
    "spool_dir": _Option(
        "PREFACTOR_SPOOL_DIR", parse_text, "spool directory (default: per user and destination under the temp dir)"
    ),
    "spool_max_bytes": _Option(
        "PREFACTOR_SPOOL_MAX_BYTES", positive_number(int), "spool size cap; beyond it the oldest is dropped (counted)"
    ),
    "spool_retention_seconds": _Option(
        "PREFACTOR_SPOOL_RETENTION_SECONDS", positive_number(float), "spooled items older than this are dropped"
    ),
    "shutdown_timeout": _Option(
        "PREFACTOR_SHUTDOWN_TIMEOUT",
        positive_number(float, allow_zero=True),
        "seconds the exporter may spend delivering at process exit / shutdown, in total",
    ),
    "export_timeout": _Option(
        "PREFACTOR_EXPORT_TIMEOUT", positive_number(float), "seconds one export() may take, retries included"
    ),
    "max_items_per_request": _Option("PREFACTOR_BULK_MAX_ITEMS", positive_number(int), "bulk items per HTTP request"),
    "max_request_bytes": _Option("PREFACTOR_BULK_MAX_BYTES", positive_number(int), "bytes of JSON per bulk request"),
    "compression": _Option(
        "PREFACTOR_COMPRESSION",
        parse_compression,
        "request body encoding: zstd, gzip or none (unset: zstd where a zstd codec is installed, else gzip); a "
        "server that refuses one gets the next, learned once per process",
    ),
    "schema_once": _Option(
        "PREFACTOR_SCHEMA_ONCE",
        parse_bool,
        "leave the schema set out of a run's register once this process registered one with it, for a server that "
        "takes that (Prefactor's API does not yet); a refusal is learned and the set sent again",
    ),
    "max_waiting_spans": _Option(
        "PREFACTOR_MAX_WAITING_SPANS",
        positive_number(int),
        "children held back waiting for their parent; beyond this the oldest is sent as an orphan",
    ),
    "max_queued_spans": _Option(
        "PREFACTOR_MAX_QUEUED_SPANS",
        positive_number(int),
        "spans held in memory while undeliverable; beyond this the oldest is dropped (counted)",
    ),
    "max_wait_seconds": _Option(
        "PREFACTOR_MAX_WAIT_SECONDS",
        positive_number(float, allow_zero=True),
        "how long a child waits for its parent before it is sent as an orphan; with the finish grace, how long a run"
        " whose root never comes stays open",
    ),
    "finish_grace_seconds": _Option(
        "PREFACTOR_FINISH_GRACE_SECONDS",
        positive_number(float, allow_zero=True),
        "quiet time after a trace's root before its agent instance is finished",
    ),
    "control_poll_interval": _Option(
        "PREFACTOR_CONTROL_POLL_INTERVAL",
        parse_poll_interval,
        "seconds between polls of an active run for termination by Prefactor (0: off; answers still carry it)",
    ),
    "capture_inputs": _Option(
        "PREFACTOR_CAPTURE_INPUTS",
        parse_bool,
        "send span inputs (messages sent, tool arguments, queries); false drops them",
    ),
    "capture_outputs": _Option(
        "PREFACTOR_CAPTURE_OUTPUTS",
        parse_bool,
        "send span outputs (messages received, tool results, documents); false drops them",
    ),
    "max_input_length": _Option(
        "PREFACTOR_MAX_INPUT_LENGTH",
        positive_number(int, allow_zero=True),
        "UTF-8 bytes kept of each string in inputs (longer ones are cut with a marker; 0 = no limit)",
    ),
    "max_output_length": _Option(
        "PREFACTOR_MAX_OUTPUT_LENGTH",
        positive_number(int, allow_zero=True),
        "UTF-8 bytes kept of each string in outputs (longer ones are cut with a marker; 0 = no limit)",
    ),
    "redact_defaults": _Option(
        "PREFACTOR_REDACT_DEFAULTS",
        parse_bool,
        "mask secret-looking keys and values (API keys, bearer tokens, JWTs, passwords) before sending",
    ),
    "redact_patterns": _Option(
        "PREFACTOR_REDACT_PATTERNS",
        parse_regex_list,
        "extra regular expressions to mask (a JSON array, or one expression)",
    ),
    "redact_keys": _Option(
        "PREFACTOR_REDACT_KEYS",
        parse_name_list,
        "extra attribute / JSON key names whose values are masked (comma-separated)",
    ),
    "redact_callback": _Option(
        "PREFACTOR_REDACT_CALLBACK",
        parse_callback_spec,
        "'module:function' called as f(path, value) -> value on every string; if it raises, the value is masked",
    ),
}


def alias_of(env: str) -> str:
    """`PREFACTOR_X` -> `OTEL_EXPORTER_PREFACTOR_X`: the name `opentelemetry-instrument` makes a flag of."""
    return ALIAS_PREFIX + env[len(NATIVE_PREFIX) :]


def read_env(environ: Mapping[str, str], env: str) -> tuple[str, str] | None:
    """The non-blank value of `env` or its alias, with the name it was read from: the alias wins (module docstring).
    Both set to different values: one warning naming both, never the values (one may be the token)."""
    alias = alias_of(env)
    native_raw = environ.get(env)
    alias_raw = environ.get(alias)
    native = native_raw if native_raw is not None and native_raw.strip() else None
    aliased = alias_raw if alias_raw is not None and alias_raw.strip() else None
    if aliased is not None:
        if native is not None and native.strip() != aliased.strip():
            logger.warning("Prefactor: %s and %s are both set, to different values; %s is used", alias, env, alias)
        return alias, aliased
    if native is not None:
        return env, native
    return None


@dataclass(frozen=True)
class PrefactorConfig:
    api_url: str = DEFAULT_API_URL
    api_token: Secret = field(default_factory=lambda: Secret(""))
    agent_id: str | None = None
    environment_id: str | None = None
    agent_name: str | None = None
    agent_identifier: str | None = None
    purpose: str | None = None
    enabled: bool = True
    span_filter: str = "all"
    live_spans: str = "agent"
    allow_insecure: bool = False
    tls_verify: bool = True
    ca_bundle: str | None = None
    shutdown_timeout: float = 5.0
    spool: bool = True
    spool_dir: str | None = None
    spool_max_bytes: int = 100 * 1024 * 1024
    spool_retention_seconds: float = 24 * 3600.0
    export_timeout: float = 10.0
    max_items_per_request: int = 500
    max_request_bytes: int = 4 * 1024 * 1024
    compression: str | None = None
    schema_once: bool = False
    max_waiting_spans: int = 10_000
    max_queued_spans: int = 20_000
    max_wait_seconds: float = 30.0
    finish_grace_seconds: float = 6.0
    control_poll_interval: float = 30.0
    capture_inputs: bool = True
    capture_outputs: bool = True
    max_input_length: int = 100_000
    max_output_length: int = 100_000
    redact_defaults: bool = True
    redact_patterns: tuple[str, ...] = ()
    redact_keys: tuple[str, ...] = ()
    redact_callback: str | Callable[[str, str], str] | None = None
    # Not an option: where the token came from (a variable, or the `api_token` keyword), so that a refusal names
    # what the user set (OTEL_EXPORTER_PREFACTOR_API_TOKEN wins over PREFACTOR_API_TOKEN: module docstring).
    token_source: str = field(default="PREFACTOR_API_TOKEN", compare=False)

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> PrefactorConfig:
        """Build from keyword arguments > environment > defaults. Raises ConfigError naming the variable."""
        env = os.environ if environ is None else environ
        unknown = set(overrides) - set(OPTIONS)
        if unknown:
            raise ConfigError(f"unknown Prefactor option(s): {', '.join(sorted(unknown))}")
        values: dict[str, Any] = {}
        source: dict[str, str] = {}  # the variable (or keyword) each value came from, for errors
        for name, option in OPTIONS.items():
            if name in overrides and overrides[name] is not None:
                raw = overrides[name]
                values[name] = cls._from_keyword(name, option, raw)
                source[option.env] = name
            else:
                found = read_env(env, option.env)
                if found is not None:
                    source[option.env] = found[0]
                    values[name] = option.parse(*found)
        if "api_token" in values and not isinstance(values["api_token"], Secret):
            values["api_token"] = Secret(values["api_token"])
        token_from = source.get(OPTIONS["api_token"].env)
        if token_from is not None:
            values["token_source"] = "the api_token argument" if token_from == "api_token" else token_from
        try:
            return cls(**values)
        except ConfigError as exc:
            # __post_init__ names the PREFACTOR_* variable; say the one the user actually set.
            message = str(exc)
            for env_name, used in source.items():
                if used != env_name and message.startswith(env_name + ":"):
                    raise ConfigError(used + message[len(env_name) :]) from None
            raise

    def __post_init__(self) -> None:
        # Here rather than in load(): a config built directly, or changed with replace(), is checked the same way.
        if not isinstance(self.api_token, Secret):
            raise ConfigError("PREFACTOR_API_TOKEN: expected a string")
        check_token("PREFACTOR_API_TOKEN", self.api_token.get())
        self._check_transport_security()

    def _check_transport_security(self) -> None:
        """Judge the URL requests will use (base + /api/v1/...), parsed as the HTTP client parses it."""
        name = "PREFACTOR_API_URL"
        base = parse_api_url(name, self.api_url)
        used = parse_api_url(name, self.api_base + "/bulk")
        if (used.scheme, used.host, used.port) != (base.scheme, base.host, base.port):
            raise ConfigError(f"{name}: the URL does not keep its host when the API path is appended")
        if used.scheme == "http" and not self.allow_insecure and not is_loopback_host(used.host):
            raise ConfigError(
                f"{name}: plain http:// to {used.host!r} would send the API token unencrypted; use https://, or "
                "set PREFACTOR_ALLOW_INSECURE=true (loopback means an address in 127.0.0.0/8, ::1 or the name "
                "localhost; other names are remote even if they resolve to 127.0.0.1)"
            )

    @staticmethod
    def _from_keyword(name: str, option: _Option, raw: Any) -> Any:
        if name == "api_token" and isinstance(raw, Secret):
            return raw
        if isinstance(raw, str):
            return option.parse(name, raw)
        if isinstance(raw, bool) and option.parse is parse_bool:
            return raw
        if isinstance(raw, (int, float)) and not isinstance(raw, bool):
            return option.parse(name, str(raw))
        if isinstance(raw, (list, tuple)) and option.parse in (parse_regex_list, parse_name_list):
            if not all(isinstance(part, str) for part in raw):
                raise ConfigError(f"{name}: expected a list of strings")
            return option.parse(name, json.dumps(list(raw))) if option.parse is parse_regex_list else tuple(raw)
        if callable(raw) and name == "redact_callback":
            return raw
        raise ConfigError(f"{name}: unsupported value type {type(raw).__name__}")

    @property
    def api_base(self) -> str:
        return self.api_url + API_PREFIX

    def replace(self, **changes: Any) -> PrefactorConfig:
        return dataclasses.replace(self, **changes)

    def destination(self, spool_directory: str | None = None, live_spans: str | None = None) -> str:
        """The one line saying where spans go, token masked (the exporter says it once at start). The exporter
        passes the spool directory it opened (None: the spool is off, or could not be opened) and, when they are
        not what PREFACTOR_LIVE_SPANS says (no PrefactorSpanProcessor), what live spans are."""
        agent = self.agent_id or "from the deployment token"
        spool = spool_directory or ("unavailable" if self.spool else "off")
        live = self.live_spans if live_spans is None else live_spans
        return (
            f"prefactor-otel: spans go to {self.api_base} for agent {agent} "
            f"(environment {self.environment_id or 'from the token'}, live spans {live}, spool {spool})"
        )

    def describe(self) -> str:
        """One line for the startup log: endpoint and settings, token masked."""
        token = self.api_token.get()
        token_hint = f"set ({len(token)} chars)" if token else "missing"
        return (
            f"endpoint={self.api_base} agent_id={self.agent_id or '-'} token={token_hint} "
            f"timeout={self.export_timeout}s bulk_max_items={self.max_items_per_request} "
            f"bulk_max_bytes={self.max_request_bytes}"
        )
