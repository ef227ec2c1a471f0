"""PrefactorConfig: keyword arguments override PREFACTOR_* environment variables override defaults.

Auto-configuration builds the exporter with no arguments, so everything must be reachable from the
environment. An invalid value raises one `ConfigError` naming the variable; the exporter turns that into one
log line and a disabled exporter, so the host application never dies of a typo.

Two values are checked for safety, not only shape (both in `PrefactorConfig.__post_init__`, so every way of
building a config passes them):
- **PREFACTOR_API_URL** is parsed with `httpx.URL`, the parser of the HTTP client that will connect, and the
  decision is made on the parsed host of the URL exactly as requests will use it, never on a prefix of the string.
  A URL with user info (`user:pw@`), a query or a fragment is refused outright: none has a meaning here and each
  is a way to make a string look like one host while connecting to another. Plain `http://` is allowed only to
  loopback without PREFACTOR_ALLOW_INSECURE: an IP literal that `ipaddress` says is loopback (127.0.0.0/8, ::1,
  IPv4-mapped ::ffff:127.x), or exactly the name `localhost` (a trailing dot allowed). Every other name counts as
  remote even if it resolves to 127.0.0.1 today: resolution can change between this check and the connection.
- **PREFACTOR_API_TOKEN** must be printable ASCII without whitespace inside it (surrounding whitespace, e.g. the
  newline of a token file, is stripped). A control character would otherwise reach the HTTP layer, which logs the
  header line at DEBUG and reports a connection error on every retry.
Error messages never contain the token, and never the user info of a URL.

**Aliases.** Every `PREFACTOR_X` is also read as `OTEL_EXPORTER_PREFACTOR_X` (`alias_of`), the naming of the OTLP
exporter's `OTEL_EXPORTER_OTLP_*`; environment_variables.py registers the aliases with `opentelemetry-instrument`,
which turns each into a flag (`--exporter_prefactor_api_token`). Precedence: keyword argument >
`OTEL_EXPORTER_PREFACTOR_X` > `PREFACTOR_X` > default. The alias wins because `opentelemetry-instrument` sets it
from a command-line flag, and a flag typed for one run is expected to beat the environment it runs in. Both set to
different values: one warning naming both variables (never the values). An error names the variable (or keyword)
the value came from.

`OPTIONS` is the one list of options: the exporter's and processor's keyword parameters, their docstrings and
the `PrefactorConfig` field docs (generated in config_text.py) and the README's configuration table are checked
against it (tests/test_options.py).

Called from whichever thread builds the exporter (usually the main thread, once); no shared state, no locks.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx

from prefactor_otel import ids
from prefactor_otel._logging import logger

DEFAULT_API_URL = "https://app.prefactorai.com"
API_PREFIX = "/api/v1"
NATIVE_PREFIX = "PREFACTOR_"
ALIAS_PREFIX = "OTEL_EXPORTER_PREFACTOR_"

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value is invalid. The message names the variable and never contains a secret."""


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


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _parse_bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{name}: expected one of true/false/1/0/yes/no/on/off, got {raw!r}")


def _positive_number(kind: Callable[[str], T], *, allow_zero: bool = False) -> Callable[[str, str], T]:
    def parse(name: str, raw: str) -> T:
        try:
            value = kind(raw.strip())
        except ValueError:
            raise ConfigError(f"{name}: expected a number, got {raw!r}") from None
        if value != value or value < 0 or (value == 0 and not allow_zero):  # NaN, negative
            raise ConfigError(f"{name}: must be {'>= 0' if allow_zero else '> 0'}, got {raw!r}")
        return value

    return parse


MIN_POLL_INTERVAL_S = 0.1


def _poll_interval(name: str, raw: str) -> float:
    """Seconds between polls of a run, or 0 (off). Below MIN_POLL_INTERVAL_S is a typo (milliseconds?), not a
    wish: every active run would be polled as fast as the exporter ticks."""
    value = _positive_number(float, allow_zero=True)(name, raw)
    if 0 < value < MIN_POLL_INTERVAL_S:
        raise ConfigError(f"{name}: must be 0 (off) or at least {MIN_POLL_INTERVAL_S} seconds, got {raw!r}")
    return value


def _pfid(name: str, raw: str) -> str:
    value = raw.strip()
    if not ids.is_pfid(value):
        raise ConfigError(f"{name}: expected a Prefactor id (32-character lowercase PFID), got {value!r}")
    return value


def _url(name: str, raw: str) -> str:
    """The base URL, without a trailing slash or the /api/v1 prefix; refuses what `_parse_api_url` refuses."""
    value = raw.strip().rstrip("/")
    _parse_api_url(name, value)
    # Users copy the URL from docs with or without the /api/v1 prefix; we add it ourselves.
    if value.endswith(API_PREFIX):
        value = value[: -len(API_PREFIX)]
    return value


def _parse_api_url(name: str, value: str) -> httpx.URL:
    """The URL as the HTTP client will parse it, after the structural checks. Messages never echo the raw value:
    it may hold a password in its user info."""
    try:
        url = httpx.URL(value)
    except Exception:  # httpx.InvalidURL, or a TypeError/ValueError on exotic input
        raise ConfigError(f"{name}: not a valid URL") from None
    if url.scheme not in ("http", "https"):
        raise ConfigError(f"{name}: expected an http(s) URL")
    if not url.host:
        raise ConfigError(f"{name}: the URL has no host")
    if url.userinfo:
        raise ConfigError(
            f"{name}: the URL must not contain user info ('user:password@'); the token goes in PREFACTOR_API_TOKEN"
        )
    # Checked on the string too: an empty query ('x?') or fragment ('x#') parses as absent but is never intended.
    if url.query or url.fragment or "?" in value or "#" in value:
        raise ConfigError(f"{name}: the URL must not contain a query ('?') or fragment ('#')")
    return url


def is_loopback_host(host: str) -> bool:
    """True for an IP literal that is loopback, or exactly `localhost` / `localhost.`; False for any other name,
    whatever it resolves to now (DNS can change between this check and the connection)."""
    if host in ("localhost", "localhost."):
        return True
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])  # an IPv6 zone ("%25eth0") does not change the address
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def _token(name: str, raw: str) -> str:
    value = raw.strip()
    _check_token(name, value)
    return value


def _check_token(name: str, value: str) -> None:
    """Refuse a token HTTP cannot carry. The message says what and where, never the value."""
    for position, char in enumerate(value, start=1):
        if not char.isprintable() or char.isspace():
            kind = "a control character (e.g. a line break)" if not char.isprintable() else "whitespace"
            raise ConfigError(
                f"{name}: the token contains {kind} at position {position} of {len(value)}; "
                "copy it again without line breaks or spaces"
            )
        if not char.isascii():
            raise ConfigError(
                f"{name}: the token contains a non-ASCII character at position {position} of {len(value)}; "
                "HTTP headers carry ASCII only"
            )


def _text(name: str, raw: str) -> str:
    return raw.strip()


def _span_filter(name: str, raw: str) -> str:
    value = raw.strip().lower()
    if value not in ("all", "genai"):
        raise ConfigError(f"{name}: expected all or genai, got {raw!r}")
    return value


def _live_spans(name: str, raw: str) -> str:
    value = raw.strip().lower()
    if value not in ("agent", "all", "none"):
        raise ConfigError(f"{name}: expected agent, all or none, got {raw!r}")
    return value


def _purpose(name: str, raw: str) -> str:
    value = raw.strip().lower()
    if value not in ("live", "smoke_test", "eval"):
        raise ConfigError(f"{name}: expected live, smoke_test or eval, got {raw!r}")
    return value


def _regex_list(name: str, raw: str) -> tuple[str, ...]:
    """A JSON array of regular expressions, or one regular expression; each must compile."""
    value = raw.strip()
    patterns: list[str]
    if value.startswith("["):
        try:
            loaded = json.loads(value)
        except ValueError:
            raise ConfigError(f"{name}: expected a JSON array of regular expressions") from None
        if not isinstance(loaded, list) or not all(isinstance(p, str) for p in loaded):
            raise ConfigError(f"{name}: expected a JSON array of regular expressions")
        patterns = loaded
    else:
        patterns = [value]
    for index, pattern in enumerate(patterns):
        try:
            re.compile(pattern)
        except re.error as exc:
            # The message names the position, never the pattern (it may describe a secret's shape).
            raise ConfigError(f"{name}: pattern {index + 1} is not a valid regular expression ({exc.msg})") from None
    return tuple(patterns)


def _name_list(name: str, raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _callback_spec(name: str, raw: str) -> str:
    value = raw.strip()
    module, sep, attribute = value.partition(":")
    if not sep or not module or not attribute:
        raise ConfigError(f"{name}: expected 'package.module:function', got {raw!r}")
    return value


@dataclass(frozen=True)
class _Option:
    env: str
    parse: Callable[[str, str], Any]
    doc: str


# field name -> (environment variable, parser, documentation). The README's configuration table is this.
OPTIONS: dict[str, _Option] = {
    "api_url": _Option("PREFACTOR_API_URL", _url, "Prefactor API base URL (paths live under /api/v1)"),
    "api_token": _Option(
        "PREFACTOR_API_TOKEN", _token, "API token (Bearer; printable ASCII). Without it the exporter is off"
    ),
    "agent_id": _Option("PREFACTOR_AGENT_ID", _pfid, "agent the runs belong to (omit with a deployment token)"),
    "environment_id": _Option("PREFACTOR_ENVIRONMENT_ID", _pfid, "environment for the runs (account token)"),
    "agent_name": _Option("PREFACTOR_AGENT_NAME", _text, "agent version name (default: service.name)"),
    "agent_identifier": _Option(
        "PREFACTOR_AGENT_IDENTIFIER", _text, "agent version identifier (default: service.version)"
    ),
    "purpose": _Option("PREFACTOR_INSTANCE_PURPOSE", _purpose, "live, smoke_test or eval"),
    "enabled": _Option("PREFACTOR_ENABLED", _parse_bool, "false turns the exporter into a no-op"),
    "span_filter": _Option(
        "PREFACTOR_SPAN_FILTER",
        _span_filter,
        "all, or genai: only spans of a GenAI convention and their ancestors (children of a dropped span are "
        "re-parented to the nearest exported ancestor)",
    ),
    "live_spans": _Option(
        "PREFACTOR_LIVE_SPANS",
        _live_spans,
        "with PrefactorSpanProcessor, which spans are created active when they start and finished when they end: "
        "agent (a run's root, agent spans and their ancestors), all, or none",
    ),
    "allow_insecure": _Option(
        "PREFACTOR_ALLOW_INSECURE",
        _parse_bool,
        "allow a plain http:// URL to a host other than loopback (127.0.0.0/8, ::1, the name localhost); the token "
        "would travel in clear text",
    ),
    "tls_verify": _Option(
        "PREFACTOR_TLS_VERIFY", _parse_bool, "verify the server's TLS certificate (turn off only knowingly)"
    ),
    "ca_bundle": _Option("PREFACTOR_CA_BUNDLE", _text, "CA bundle file to verify the server with"),
    "spool": _Option(
        "PREFACTOR_SPOOL", _parse_bool, "keep undeliverable items on disk and re-send them, across restarts"
    ),
    "spool_dir": _Option(
        "PREFACTOR_SPOOL_DIR", _text, "spool directory (default: per user and destination under the temp dir)"
    ),
    "spool_max_bytes": _Option(
        "PREFACTOR_SPOOL_MAX_BYTES", _positive_number(int), "spool size cap; beyond it the oldest is dropped (counted)"
    ),
    "spool_retention_seconds": _Option(
        "PREFACTOR_SPOOL_RETENTION_SECONDS", _positive_number(float), "spooled items older than this are dropped"
    ),
    "shutdown_timeout": _Option(
        "PREFACTOR_SHUTDOWN_TIMEOUT",
        _positive_number(float, allow_zero=True),
        "seconds the exporter may spend delivering at process exit / shutdown, in total",
    ),
    "export_timeout": _Option(
        "PREFACTOR_EXPORT_TIMEOUT", _positive_number(float), "seconds one export() may take, retries included"
    ),
    "max_items_per_request": _Option("PREFACTOR_BULK_MAX_ITEMS", _positive_number(int), "bulk items per HTTP request"),
    "max_request_bytes": _Option("PREFACTOR_BULK_MAX_BYTES", _positive_number(int), "bytes of JSON per bulk request"),
    "max_waiting_spans": _Option(
        "PREFACTOR_MAX_WAITING_SPANS",
        _positive_number(int),
        "children held back waiting for their parent; beyond this the oldest is sent as an orphan",
    ),
    "max_queued_spans": _Option(
        "PREFACTOR_MAX_QUEUED_SPANS",
        _positive_number(int),
        "spans held in memory while undeliverable; beyond this the oldest is dropped (counted)",
    ),
    "max_wait_seconds": _Option(
        "PREFACTOR_MAX_WAIT_SECONDS",
        _positive_number(float, allow_zero=True),
        "how long a child waits for its parent before it is sent as an orphan",
    ),
    "finish_grace_seconds": _Option(
        "PREFACTOR_FINISH_GRACE_SECONDS",
        _positive_number(float, allow_zero=True),
        "quiet time after a trace's root before its agent instance is finished",
    ),
    "control_poll_interval": _Option(
        "PREFACTOR_CONTROL_POLL_INTERVAL",
        _poll_interval,
        "seconds between polls of an active run for termination by Prefactor (0: off; answers still carry it)",
    ),
    "capture_inputs": _Option(
        "PREFACTOR_CAPTURE_INPUTS",
        _parse_bool,
        "send span inputs (messages sent, tool arguments, queries); false drops them",
    ),
    "capture_outputs": _Option(
        "PREFACTOR_CAPTURE_OUTPUTS",
        _parse_bool,
        "send span outputs (messages received, tool results, documents); false drops them",
    ),
    "max_input_length": _Option(
        "PREFACTOR_MAX_INPUT_LENGTH",
        _positive_number(int, allow_zero=True),
        "UTF-8 bytes kept of each string in inputs (longer ones are cut with a marker; 0 = no limit)",
    ),
    "max_output_length": _Option(
        "PREFACTOR_MAX_OUTPUT_LENGTH",
        _positive_number(int, allow_zero=True),
        "UTF-8 bytes kept of each string in outputs (longer ones are cut with a marker; 0 = no limit)",
    ),
    "redact_defaults": _Option(
        "PREFACTOR_REDACT_DEFAULTS",
        _parse_bool,
        "mask secret-looking keys and values (API keys, bearer tokens, JWTs, passwords) before sending",
    ),
    "redact_patterns": _Option(
        "PREFACTOR_REDACT_PATTERNS",
        _regex_list,
        "extra regular expressions to mask (a JSON array, or one expression)",
    ),
    "redact_keys": _Option(
        "PREFACTOR_REDACT_KEYS",
        _name_list,
        "extra attribute / JSON key names whose values are masked (comma-separated)",
    ),
    "redact_callback": _Option(
        "PREFACTOR_REDACT_CALLBACK",
        _callback_spec,
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
        _check_token("PREFACTOR_API_TOKEN", self.api_token.get())
        self._check_transport_security()

    def _check_transport_security(self) -> None:
        """Judge the URL requests will use (base + /api/v1/...), parsed as the HTTP client parses it."""
        name = "PREFACTOR_API_URL"
        base = _parse_api_url(name, self.api_url)
        used = _parse_api_url(name, self.api_base + "/bulk")
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
        if isinstance(raw, bool) and option.parse is _parse_bool:
            return raw
        if isinstance(raw, (int, float)) and not isinstance(raw, bool):
            return option.parse(name, str(raw))
        if isinstance(raw, (list, tuple)) and option.parse in (_regex_list, _name_list):
            if not all(isinstance(part, str) for part in raw):
                raise ConfigError(f"{name}: expected a list of strings")
            return option.parse(name, json.dumps(list(raw))) if option.parse is _regex_list else tuple(raw)
        if callable(raw) and name == "redact_callback":
            return raw
        raise ConfigError(f"{name}: unsupported value type {type(raw).__name__}")

    @property
    def api_base(self) -> str:
        return self.api_url + API_PREFIX

    def replace(self, **changes: Any) -> PrefactorConfig:
        return dataclasses.replace(self, **changes)

    def destination(self, spool_directory: str | None = None) -> str:
        """The one line saying where spans go, token masked (the exporter says it once at start). The exporter
        passes the spool directory it opened (None: the spool is off, or could not be opened)."""
        agent = self.agent_id or "from the deployment token"
        spool = spool_directory or ("unavailable" if self.spool else "off")
        return (
            f"prefactor-otel: spans go to {self.api_base} for agent {agent} "
            f"(environment {self.environment_id or 'from the token'}, live spans {self.live_spans}, spool {spool})"
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
