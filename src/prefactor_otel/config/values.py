"""Option values: the parser of every option, and the safety checks on the API URL and token.

Each parser takes (variable name, raw string) and returns the typed value, or raises `ConfigError` naming the
variable. options.py's `OPTIONS` names one parser per option (`positive_number(kind)` builds the numeric ones).

Two values are checked for safety, not only shape (both in `PrefactorConfig.__post_init__`, so every way of
building a config passes them; the checks are `parse_api_url`, `is_loopback_host` and `check_token`):
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

Pure functions, no state, no locks; called from whichever thread builds a config (usually the main thread, once)
and by doctor, through `OPTIONS`.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable
from typing import TypeVar

import httpx

from prefactor_otel.model import ids

API_PREFIX = "/api/v1"

T = TypeVar("T", int, float)  # the numeric kinds `positive_number` compares with 0


class ConfigError(ValueError):
    """A configuration value is invalid. The message names the variable and never contains a secret."""


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{name}: expected one of true/false/1/0/yes/no/on/off, got {raw!r}")


def positive_number(kind: Callable[[str], T], *, allow_zero: bool = False) -> Callable[[str, str], T]:
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


def parse_poll_interval(name: str, raw: str) -> float:
    """Seconds between polls of a run, or 0 (off). Below MIN_POLL_INTERVAL_S is a typo (milliseconds?), not a
    wish: every active run would be polled as fast as the exporter ticks."""
    value = positive_number(float, allow_zero=True)(name, raw)
    if 0 < value < MIN_POLL_INTERVAL_S:
        raise ConfigError(f"{name}: must be 0 (off) or at least {MIN_POLL_INTERVAL_S} seconds, got {raw!r}")
    return value


def parse_pfid(name: str, raw: str) -> str:
    value = raw.strip()
    if not ids.is_pfid(value):
        raise ConfigError(f"{name}: expected a Prefactor id (32-character lowercase PFID), got {value!r}")
    return value


def parse_url(name: str, raw: str) -> str:
    """The base URL, without a trailing slash or the /api/v1 prefix; refuses what `parse_api_url` refuses."""
    value = raw.strip().rstrip("/")
    parse_api_url(name, value)
    # Users copy the URL from docs with or without the /api/v1 prefix; we add it ourselves.
    if value.endswith(API_PREFIX):
        value = value[: -len(API_PREFIX)]
    return value


def parse_api_url(name: str, value: str) -> httpx.URL:
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


def parse_token(name: str, raw: str) -> str:
    value = raw.strip()
    check_token(name, value)
    return value


def check_token(name: str, value: str) -> None:
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


def parse_text(name: str, raw: str) -> str:
    return raw.strip()


def parse_span_filter(name: str, raw: str) -> str:
    value = raw.strip().lower()
    if value not in ("all", "genai"):
        raise ConfigError(f"{name}: expected all or genai, got {raw!r}")
    return value


def parse_live_spans(name: str, raw: str) -> str:
    value = raw.strip().lower()
    if value not in ("agent", "all", "none"):
        raise ConfigError(f"{name}: expected agent, all or none, got {raw!r}")
    return value


def parse_purpose(name: str, raw: str) -> str:
    value = raw.strip().lower()
    if value not in ("live", "smoke_test", "eval"):
        raise ConfigError(f"{name}: expected live, smoke_test or eval, got {raw!r}")
    return value


def parse_compression(name: str, raw: str) -> str:
    """Request body compression: zstd, gzip or none (docs/wire.md); unset means zstd where a codec is
    installed, else gzip."""
    value = raw.strip().lower()
    if value not in ("zstd", "gzip", "none"):
        raise ConfigError(f"{name}: expected zstd, gzip or none, got {raw!r}")
    return value


def parse_regex_list(name: str, raw: str) -> tuple[str, ...]:
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


def parse_name_list(name: str, raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def parse_callback_spec(name: str, raw: str) -> str:
    value = raw.strip()
    module, sep, attribute = value.partition(":")
    if not sep or not module or not attribute:
        raise ConfigError(f"{name}: expected 'package.module:function', got {raw!r}")
    return value
