"""The gateway's settings: where it listens, who may send, where spans go, where it keeps what it acknowledged.

`GatewaySettings.load(environ, **overrides)` reads the exporter's PREFACTOR_* variables (the default route's
Prefactor destination and every exporter option: `config`) and the gateway's own:

| variable | meaning | default |
| --- | --- | --- |
| PREFACTOR_GATEWAY_TOKENS | the default route's ingress tokens (comma-separated) | none |
| PREFACTOR_GATEWAY_ROUTES | a routes file (JSON, routes.py) | none |
| PREFACTOR_GATEWAY_DIR | the ingress log, the spools, the replica id | `gateway/` beside the exporter's spools |
| PREFACTOR_GATEWAY_MAX_REQUEST_BYTES | a request's decompressed size limit (the front ends apply it) | 8 MiB |
| PREFACTOR_GATEWAY_MAX_QUEUED_SPANS | spans accepted and not yet planned; beyond it: 429 | PREFACTOR_MAX_QUEUED_SPANS |
| PREFACTOR_GATEWAY_LOG_MAX_BYTES | the ingress log's size cap; beyond it: 503 | 256 MiB |
| PREFACTOR_GATEWAY_SEGMENT_BYTES | the size at which the ingress log starts a new segment file | 8 MiB |

Keyword overrides (the command line's flags) win over the environment; any exporter option may be given too.
`load` refuses (ConfigError) a host that is not loopback with no ingress token configured anywhere: an open gateway
on a network would let anyone write into the account. The finish grace period defaults to
`GATEWAY_FINISH_GRACE_S` instead of the exporter's (docs/gateway.md: a trace's services export in separate
batches, seconds apart) unless PREFACTOR_FINISH_GRACE_SECONDS is set.

Immutable once loaded; read by any thread. No locks.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from prefactor_otel.config.options import OPTIONS, PrefactorConfig, read_env
from prefactor_otel.config.values import ConfigError, check_token, is_loopback_host, positive_number
from prefactor_otel.gateway.routes import RouteTable, build_routes

DEFAULT_MAX_REQUEST_BYTES = 8 * 1024 * 1024
DEFAULT_LOG_MAX_BYTES = 256 * 1024 * 1024
DEFAULT_SEGMENT_BYTES = 8 * 1024 * 1024
GATEWAY_FINISH_GRACE_S = 15.0

TOKENS_ENV = "PREFACTOR_GATEWAY_TOKENS"
ROUTES_ENV = "PREFACTOR_GATEWAY_ROUTES"
DIR_ENV = "PREFACTOR_GATEWAY_DIR"
_NUMBERS = {
    "max_request_bytes": "PREFACTOR_GATEWAY_MAX_REQUEST_BYTES",
    "max_queued_spans": "PREFACTOR_GATEWAY_MAX_QUEUED_SPANS",
    "log_max_bytes": "PREFACTOR_GATEWAY_LOG_MAX_BYTES",
    "segment_bytes": "PREFACTOR_GATEWAY_SEGMENT_BYTES",
}


def default_directory(config: PrefactorConfig) -> Path:
    """Beside the exporter's spools: under PREFACTOR_SPOOL_DIR when set, else per user under the temp dir."""
    if config.spool_dir:
        return Path(config.spool_dir) / "gateway"
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(tempfile.gettempdir()) / f"prefactor-otel-{uid}" / "gateway"


@dataclass(frozen=True)
class GatewaySettings:
    host: str = "127.0.0.1"
    http_port: int = 4318
    grpc_port: int = 4317
    ingress_tokens: frozenset[str] = frozenset()
    routes_file: Path | None = None
    directory: Path = field(default_factory=lambda: default_directory(PrefactorConfig()))
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    max_queued_spans: int = 20_000
    log_max_bytes: int = DEFAULT_LOG_MAX_BYTES
    segment_bytes: int = DEFAULT_SEGMENT_BYTES
    config: PrefactorConfig = field(default_factory=PrefactorConfig)  # the default route's, and every route's options
    routes: RouteTable = field(default_factory=lambda: RouteTable(()))

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> GatewaySettings:
        """Keyword overrides > environment > defaults. Raises ConfigError naming the variable or flag."""
        env = os.environ if environ is None else environ
        own = {f.name for f in fields(cls)} - {"routes"}
        unknown = set(overrides) - own - set(OPTIONS)
        if unknown:
            raise ConfigError(f"unknown gateway option(s): {', '.join(sorted(unknown))}")
        given = {name: value for name, value in overrides.items() if value is not None}
        config = given.pop("config", None)
        if config is None:
            options = {name: given.pop(name) for name in list(given) if name in OPTIONS}
            if "finish_grace_seconds" not in options and read_env(env, "PREFACTOR_FINISH_GRACE_SECONDS") is None:
                options["finish_grace_seconds"] = GATEWAY_FINISH_GRACE_S
            config = PrefactorConfig.load(env, **options)
        elif not isinstance(config, PrefactorConfig):
            raise ConfigError("config: expected a PrefactorConfig")
        tokens = _tokens(given.pop("ingress_tokens", None), env)
        routes_file = given.pop("routes_file", None)
        if routes_file is None and env.get(ROUTES_ENV, "").strip():
            routes_file = env[ROUTES_ENV].strip()
        directory = given.pop("directory", None)
        if directory is None and env.get(DIR_ENV, "").strip():
            directory = env[DIR_ENV].strip()
        numbers: dict[str, int] = {}
        for name, variable in _NUMBERS.items():
            if name in given:
                numbers[name] = positive_number(int)(name, str(given.pop(name)))
            elif env.get(variable, "").strip():
                numbers[name] = positive_number(int)(variable, env[variable])
        numbers.setdefault("max_queued_spans", config.max_queued_spans)
        if numbers["max_queued_spans"] > config.max_queued_spans:
            raise ConfigError(
                f"PREFACTOR_GATEWAY_MAX_QUEUED_SPANS ({numbers['max_queued_spans']}) must not exceed "
                f"PREFACTOR_MAX_QUEUED_SPANS ({config.max_queued_spans}): a pipeline drops what is beyond its own "
                "bound, and the gateway acknowledges nothing it may drop"
            )
        host = str(given.pop("host", "127.0.0.1"))
        ports = {name: int(given.pop(name)) for name in ("http_port", "grpc_port") if name in given}
        routes = build_routes(env, config, tokens, Path(routes_file) if routes_file is not None else None)
        if routes.open and not is_loopback_host(host):
            raise ConfigError(
                f"the gateway would listen on {host!r}, not a loopback address, with no ingress token: anyone who can "
                f"reach it could write into the Prefactor account. Set {TOKENS_ENV} (comma-separated; clients send "
                "'Authorization: Bearer <token>'), give routes with ingress tokens, or listen on 127.0.0.1"
            )
        return cls(
            host=host,
            ingress_tokens=tokens,
            routes_file=Path(routes_file) if routes_file is not None else None,
            directory=Path(directory) if directory is not None else default_directory(config),
            config=config,
            routes=routes,
            **ports,
            **numbers,
        )

    @property
    def open(self) -> bool:
        """No ingress token configured anywhere: requests need none (a loopback gateway only)."""
        return self.routes.open


def _tokens(value: str | Iterable[str] | None, environ: Mapping[str, str]) -> frozenset[str]:
    name = "ingress_tokens"
    if value is None:
        value = environ.get(TOKENS_ENV, "")
        name = TOKENS_ENV
    parts = value.split(",") if isinstance(value, str) else list(value)
    tokens = [part.strip() for part in parts if part.strip()]
    for token in tokens:
        check_token(name, token)
    return frozenset(tokens)
