"""Which requests the local server refuses before anything else: other hosts (DNS rebinding) and other origins.

A web page the developer visits while a local server runs can reach it two ways, and both are refused on every
route (the API, `/_dev`, the page), before faults, authentication or the body are looked at:

- **DNS rebinding**: the page's own name is made to resolve to 127.0.0.1 after it loaded, so the browser treats the
  server as the page's origin and lets it read the answers. Its requests carry the page's name in `Host`: a `Host`
  that is neither a loopback name or address (`localhost`, `*.localhost`, `127.0.0.1`, `[::1]`, with or without a
  port) nor the host the server is bound to, nor a name the user allowed (`serve --allow-host`), is refused
  (`forbidden_host`). See `webpage.host_allowed`.
- **Cross-origin requests**: a page on another origin (another site, or another port of this machine) can send
  "simple" requests (a form post, `fetch(..., {mode: "no-cors"})`) without a CORS preflight. A request whose
  `Origin` is not this server's own (the scheme `http`, and the host and port of its `Host` header) is refused
  whatever its token (`forbidden_origin`); so is a state-changing one (POST, PUT, PATCH, DELETE) without `Origin`
  that a browser marked `Sec-Fetch-Site: cross-site` or `same-site`. Reads need the token in an `Authorization`
  header, which needs a preflight this server never grants, so another origin could not read anyway; a read
  carrying a foreign `Origin` is still refused, so the answer says why instead of a CORS error.

Local clients (the exporter, Prefactor's Python and Node clients, curl, `prefactor-otel show`) send no `Origin` and
no `Sec-Fetch-Site`, and the page's own fetches are same-origin: all pass. A top-level navigation to the page from
another site (a link the user clicks) is a GET without `Origin`: it passes too.

Pure functions over their arguments: the request threads call `refusal()` concurrently; no state, no locks.
"""

from __future__ import annotations

from typing import NamedTuple
from urllib.parse import urlsplit

from prefactor_otel.devserver.webpage import host_allowed, split_host

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_FOREIGN_FETCH_SITES = frozenset({"cross-site", "same-site"})


class Refusal(NamedTuple):
    status: int
    code: str
    message: str


def refusal(
    method: str,
    host_header: str | None,
    origin: str | None,
    fetch_site: str | None,
    bound_host: str,
    allowed_hosts: frozenset[str] = frozenset(),
) -> Refusal | None:
    """Why this request is refused, or None when it may go on. `host_header`, `origin` and `fetch_site` are the
    request's `Host`, `Origin` and `Sec-Fetch-Site` headers (None when absent); `bound_host` the server's address;
    `allowed_hosts` further names the user allowed (`serve --allow-host`)."""
    if not host_allowed(host_header, bound_host, allowed_hosts):
        shown = repr(host_header) if host_header else "(no Host header)"
        return Refusal(
            403,
            "forbidden_host",
            f"this local server answers only under a loopback name or address (localhost, 127.0.0.1, [::1]) or the "
            f"address it is bound to, not Host {shown}: a guard against DNS rebinding (a web page whose name was "
            "made to resolve to this machine). Use the URL `prefactor-otel serve` prints, or start it with "
            "--allow-host NAME for a name of yours (e.g. host.docker.internal from a container).",
        )
    assert host_header is not None  # host_allowed refuses a missing one
    if origin is not None:
        if not same_origin(origin, host_header):
            return Refusal(
                403,
                "forbidden_origin",
                f"a request from another origin ({origin.strip()!r}) is refused whatever its token: only this "
                f"server's own page (http://{host_header.strip()}) may call it from a browser; scripts and SDKs send "
                "no Origin header",
            )
    elif method.upper() in STATE_CHANGING and (fetch_site or "").strip().lower() in _FOREIGN_FETCH_SITES:
        return Refusal(
            403,
            "forbidden_origin",
            f"a {method.upper()} that the browser marked Sec-Fetch-Site: {fetch_site} comes from another site and is "
            "refused whatever its token: only this server's own page may change its state from a browser",
        )
    return None


def same_origin(origin: str, host_header: str) -> bool:
    """Whether `Origin` is the origin a browser gives this server's own page, reached under `host_header`:
    `http`, the same host (case-insensitive) and the same port (80 when absent). `null` (a sandboxed frame, a
    `file:` or `data:` page) never is."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port or 80
    except ValueError:
        return False
    if parts.scheme.lower() != "http" or not parts.hostname or parts.path not in ("", "/"):
        return False
    host, host_port = split_host(host_header.strip())
    return parts.hostname.lower().rstrip(".") == host.lower().rstrip(".") and port == (host_port or 80)
