"""Tenancy: which Prefactor destination an ingress token writes to, and which of its agents a span goes to.

A `Route` is one tenant: a name, the ingress tokens its clients send (`Authorization: Bearer <token>`), the
exporter configuration it delivers with (`config`: the Prefactor API URL, token and environment, and every other
PREFACTOR_* option of the gateway's own configuration), and the agents it may write to (`agents`: a key -> a
Prefactor agent id, with a `default_agent` key). A span's agent is chosen by its resource attribute
`prefactor.agent` (`AGENT_ATTRIBUTE`), a key of its route's agents, else the route's default; any other value is
refused (the request's partial success says so), never written to another agent or another route.

Routes come from two places (`build_routes`):
- the default route, `default`, from the PREFACTOR_* variables the exporter reads (PREFACTOR_API_TOKEN,
  PREFACTOR_AGENT_ID, ...), with PREFACTOR_GATEWAY_TOKENS as its ingress tokens; it exists when PREFACTOR_API_TOKEN
  is set. Its one agent is `default` (the agent id, or the deployment token's agent when no id is set);
- a routes file (JSON, `load_routes_file`), each route with at least one ingress token:

    {"routes": [{"name": "team-a",
                 "ingress_tokens_env": ["TEAM_A_INGRESS_TOKEN"],      # or "ingress_tokens": ["..."]
                 "api_url": "https://app.prefactorai.com",           # default: the gateway's PREFACTOR_API_URL
                 "api_token_env": "TEAM_A_PREFACTOR_TOKEN",          # or "api_token": "..." (prefer variables)
                 "environment_id": "<pfid>",
                 "agents": {"support": "<agent pfid>", "billing": "<agent pfid>"},
                 "default_agent": "support"}]}

Tokens are held as `Secret` (never in a repr or a log line); ingress tokens are compared in constant time
(`RouteTable.authenticate`: every configured token is compared, hmac.compare_digest, whatever matched).
An ingress token names one route only (a token listed twice is a ConfigError).

Pure configuration: no I/O beyond reading the routes file, no threads, no locks; `RouteTable` is immutable once built
and read by any thread.
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefactor_otel.config.options import PrefactorConfig, Secret
from prefactor_otel.config.values import ConfigError, check_token, parse_pfid, parse_url

AGENT_ATTRIBUTE = "prefactor.agent"
DEFAULT_ROUTE = "default"
DEFAULT_AGENT = "default"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_ROUTE_KEYS = frozenset(
    {
        "name",
        "ingress_tokens",
        "ingress_tokens_env",
        "api_url",
        "api_token",
        "api_token_env",
        "environment_id",
        "agents",
        "default_agent",
    }
)


@dataclass(frozen=True)
class Route:
    name: str
    ingress_tokens: tuple[Secret, ...]
    config: PrefactorConfig  # without an agent id: `agent_config` adds the agent's
    agents: Mapping[str, str | None]  # key -> Prefactor agent id (None: the deployment token's agent)
    default_agent: str

    def agent_key(self, chosen: str | None) -> str | None:
        """The key of the agent a span goes to: `chosen` (its `prefactor.agent`) if it is one of this route's, the
        default when none is chosen; None when the chosen agent is not this route's (the span is refused)."""
        if chosen is None or chosen == "":
            return self.default_agent
        return chosen if chosen in self.agents else None

    def agent_config(self, key: str) -> PrefactorConfig:
        return self.config.replace(agent_id=self.agents[key])

    def describe(self) -> str:
        agents = ", ".join(f"{key}={agent_id or 'from the token'}" for key, agent_id in self.agents.items())
        return (
            f"route {self.name}: {self.config.api_base} environment {self.config.environment_id or 'from the token'}"
            f", agents {agents} (default {self.default_agent}), {len(self.ingress_tokens)} ingress token(s)"
        )


@dataclass(frozen=True)
class RouteTable:
    routes: tuple[Route, ...]

    @property
    def open(self) -> bool:
        """No ingress token anywhere: every request is the default route's (a loopback gateway only: settings)."""
        return not any(route.ingress_tokens for route in self.routes)

    def by_name(self, name: str) -> Route | None:
        for route in self.routes:
            if route.name == name:
                return route
        return None

    def authenticate(self, authorization: str | None) -> Route | None:
        """The route of the bearer token in `authorization` (the raw header value), or None. Compares the token
        with every configured one in constant time, so the time taken tells nothing of which (if any) matched."""
        if self.open:
            return self.routes[0] if self.routes else None
        token = bearer_token(authorization)
        if token is None:
            return None
        given = token.encode("utf-8", errors="replace")
        found: Route | None = None
        for route in self.routes:
            for secret in route.ingress_tokens:
                if hmac.compare_digest(given, secret.get().encode("utf-8")) and found is None:
                    found = route
        return found


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    value = value.strip()
    return value or None


def build_routes(
    environ: Mapping[str, str], base: PrefactorConfig, ingress_tokens: frozenset[str], routes_file: Path | None
) -> RouteTable:
    """The default route (when PREFACTOR_API_TOKEN is set) and the routes of the file. Raises ConfigError."""
    routes: list[Route] = []
    if base.api_token:
        agent_id = base.agent_id
        routes.append(
            Route(
                name=DEFAULT_ROUTE,
                ingress_tokens=tuple(Secret(token) for token in sorted(ingress_tokens)),
                config=base.replace(agent_id=None),
                agents={DEFAULT_AGENT: agent_id},
                default_agent=DEFAULT_AGENT,
            )
        )
    elif ingress_tokens and routes_file is None:
        raise ConfigError(
            "PREFACTOR_GATEWAY_TOKENS is set but PREFACTOR_API_TOKEN is not: the default route has no Prefactor "
            "token to deliver with (set PREFACTOR_API_TOKEN, or give a routes file)"
        )
    if routes_file is not None:
        routes.extend(load_routes_file(routes_file, environ, base))
    if not routes:
        raise ConfigError(
            "the gateway has nowhere to send spans: set PREFACTOR_API_TOKEN (and PREFACTOR_AGENT_ID), or give a routes "
            "file (PREFACTOR_GATEWAY_ROUTES / --routes)"
        )
    names = [route.name for route in routes]
    if len(set(names)) != len(names):
        raise ConfigError(f"routes: a route name is used twice ({', '.join(sorted(names))}; 'default' is reserved)")
    seen: set[str] = set()
    for route in routes:
        for secret in route.ingress_tokens:
            if secret.get() in seen:
                raise ConfigError(f"routes: an ingress token of route {route.name!r} is also another route's")
            seen.add(secret.get())
    return RouteTable(tuple(routes))


def load_routes_file(path: Path, environ: Mapping[str, str], base: PrefactorConfig) -> list[Route]:
    where = f"routes file {path}"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read it ({type(exc).__name__}: {exc.strerror or exc})") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: not valid JSON ({str(exc)[:120]})") from None
    if not isinstance(data, dict) or not isinstance(data.get("routes"), list) or not data["routes"]:
        raise ConfigError(f'{where}: expected an object {{"routes": [ ... ]}} with at least one route')
    return [_route(entry, index, where, environ, base) for index, entry in enumerate(data["routes"])]


def _route(entry: Any, index: int, where: str, environ: Mapping[str, str], base: PrefactorConfig) -> Route:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: route #{index + 1} is not an object")
    name = entry.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"{where}: route #{index + 1} needs a name (letters, digits, '_', '.', '-'; up to 64)")
    at = f"{where}, route {name!r}"
    unknown = set(entry) - _ROUTE_KEYS
    if unknown:
        raise ConfigError(f"{at}: unknown key(s) {', '.join(sorted(unknown))}")
    tokens = [_token(value, f"{at}: ingress_tokens") for value in _strings(entry, "ingress_tokens", at)]
    for variable in _strings(entry, "ingress_tokens_env", at):
        raw = environ.get(variable, "").strip()
        if not raw:
            raise ConfigError(f"{at}: the variable {variable} (ingress_tokens_env) is not set")
        tokens.extend(_token(part, f"{at}: {variable}") for part in raw.split(",") if part.strip())
    if not tokens:
        raise ConfigError(f"{at}: needs at least one ingress token (ingress_tokens_env, or ingress_tokens)")
    api_token = _api_token(entry, at, environ)
    changes: dict[str, Any] = {"api_token": Secret(api_token), "agent_id": None}
    if "api_url" in entry:
        if not isinstance(entry["api_url"], str):
            raise ConfigError(f"{at}: api_url must be a string")
        changes["api_url"] = parse_url(f"{at}: api_url", entry["api_url"])
    if "environment_id" in entry:
        changes["environment_id"] = _pfid(entry["environment_id"], f"{at}: environment_id")
    agents_raw = entry.get("agents")
    if not isinstance(agents_raw, dict) or not agents_raw:
        raise ConfigError(f'{at}: needs "agents": {{"<key>": "<agent id>", ...}} (at least one)')
    agents: dict[str, str | None] = {}
    for key, agent_id in agents_raw.items():
        if not _NAME.match(key):
            raise ConfigError(f"{at}: agent key {key[:40]!r} must be letters, digits, '_', '.', '-' (up to 64)")
        agents[key] = _pfid(agent_id, f"{at}: agents.{key}")
    default_agent = entry.get("default_agent", next(iter(agents)) if len(agents) == 1 else None)
    if default_agent not in agents:
        raise ConfigError(f"{at}: default_agent must be one of its agents' keys ({', '.join(agents)})")
    try:
        config = base.replace(**changes)
    except ConfigError as exc:
        raise ConfigError(f"{at}: {exc}") from None
    return Route(name, tuple(Secret(token) for token in tokens), config, agents, str(default_agent))


def _strings(entry: Mapping[str, Any], key: str, at: str) -> list[str]:
    value = entry.get(key, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ConfigError(f"{at}: {key} must be a list of strings")
    return list(value)


def _token(value: str, at: str) -> str:
    token = value.strip()
    if not token:
        raise ConfigError(f"{at}: an empty token")
    check_token(at, token)
    return token


def _api_token(entry: Mapping[str, Any], at: str, environ: Mapping[str, str]) -> str:
    variable = entry.get("api_token_env")
    if variable is not None:
        if not isinstance(variable, str):
            raise ConfigError(f"{at}: api_token_env must be a variable name")
        raw = environ.get(variable, "").strip()
        if not raw:
            raise ConfigError(f"{at}: the variable {variable} (api_token_env) is not set")
        return _token(raw, f"{at}: {variable}")
    value = entry.get("api_token")
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{at}: needs its Prefactor token: api_token_env (a variable name; preferred) or api_token")
    return _token(value, f"{at}: api_token")


def _pfid(value: Any, at: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{at}: expected a Prefactor id (a string)")
    return parse_pfid(at, value)
