"""The local server's web page: `GET /`, `/app.js` and `/style.css`, static files shipped in `devserver/web/`.

The page holds no data, so it is served without a token; `app.js` reads the runs from `GET /_dev/runs` with the
bearer token, which reaches the page in the URL fragment (`DevServer.page_url`: `http://127.0.0.1:8787/#token=...`).
Browsers never send a fragment to the server, so the token appears in no request line or log. Another site cannot
read the runs: a request carrying an `Authorization` header needs a CORS preflight, which this server never grants;
and every route, the API's included, refuses a request from another origin or under another host (guard.py).

Every answer forbids caching and sniffing and carries a strict Content-Security-Policy (own origin only: no inline
script or style, no third-party fetch), so data rendered by the page cannot pull anything in. A `Host` header that
is neither a loopback name/address nor the server's own bound host is refused: a DNS-rebinding page (whose name
resolves to 127.0.0.1 after loading) cannot even load the page through its own name.

Pure functions over immutable inputs: the server's handler threads call `answer()` concurrently; no state, no locks.
The files are read on each request (three small files, a local tool), so a wheel and a checkout behave alike.
"""

from __future__ import annotations

import ipaddress
from importlib import resources
from typing import NamedTuple

# path -> (file in devserver/web/, Content-Type)
PAGE_FILES: dict[str, tuple[str, str]] = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
}
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'; object-src 'none'"
)
_SECURITY_HEADERS: tuple[tuple[str, str], ...] = (
    ("Cache-Control", "no-store"),
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
)
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})
_WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})


class PageAnswer(NamedTuple):
    status: int
    body: bytes
    content_type: str
    headers: tuple[tuple[str, str], ...]


def is_page(method: str, path: str) -> bool:
    """Whether `method path` asks for one of the page's files (answered by `answer`, not the API)."""
    return method == "GET" and (path in PAGE_FILES or path == "/favicon.ico")


def refused(status: int, message: str) -> PageAnswer:
    """A refusal of a page file (guard.py says why), as text a person reads in the browser."""
    return PageAnswer(status, f"Refused: {message}\n".encode(), "text/plain; charset=utf-8", _SECURITY_HEADERS)


def answer(
    method: str, path: str, host_header: str | None, bound_host: str, allowed_hosts: frozenset[str] = frozenset()
) -> PageAnswer | None:
    """The answer to a request for one of the page's files, or None when `method path` is not one (the API
    handles it). `host_header` is the request's `Host`; `bound_host` the address the server listens on. The
    handler refuses other hosts before this (guard.py); the check here keeps this function safe on its own."""
    if not is_page(method, path):
        return None
    if not host_allowed(host_header, bound_host, allowed_hosts):
        return refused(
            403,
            f"this local server answers its page only under a loopback name or its own address, not "
            f"{(host_header or '(no Host header)')!r} (a guard against DNS rebinding). Open the URL that "
            "`prefactor-otel serve` prints.",
        )
    if path == "/favicon.ico":  # browsers ask for it; "no icon" beats a 401 in the console
        return PageAnswer(204, b"", "image/x-icon", _SECURITY_HEADERS)
    filename, content_type = PAGE_FILES[path]
    try:
        # one path part per joinpath call: Python 3.10's Traversable takes one (a zipped install fails on two)
        body = resources.files("prefactor_otel.devserver").joinpath("web").joinpath(filename).read_bytes()
    except OSError as exc:  # an install without the package data: say what is missing instead of a bare 500
        message = f"the page file web/{filename} is missing from this installation ({type(exc).__name__})\n"
        return PageAnswer(500, message.encode(), "text/plain; charset=utf-8", _SECURITY_HEADERS)
    return PageAnswer(200, body, content_type, _SECURITY_HEADERS)


def host_allowed(host_header: str | None, bound_host: str, allowed_hosts: frozenset[str] = frozenset()) -> bool:
    """Whether a `Host` header names this server: a loopback name or address, the host it is bound to, or one of
    `allowed_hosts` (names the user allowed, lower case, without port: `serve --allow-host`). Bound to a wildcard
    address (reachable from other machines on purpose), any IP literal is accepted too: DNS rebinding needs a name,
    and an address typed by the user is not one."""
    if not host_header:
        return False
    host = _strip_port(host_header.strip()).lower().rstrip(".")
    bound = bound_host.strip("[]").lower()
    if host in _LOOPBACK_NAMES or host.endswith(".localhost") or host == bound or host in allowed_hosts:
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or bound in _WILDCARD_HOSTS


def split_host(host: str) -> tuple[str, int | None]:
    """A `Host` header's name (brackets of an IPv6 address removed) and port (None when it has none)."""
    if host.startswith("["):  # [::1]:8787
        end = host.find("]")
        if end < 0:
            return host, None
        rest = host[end + 1 :]
        return host[1:end], int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
    name, colon, port = host.rpartition(":")
    if colon and port.isdigit() and ":" not in name:
        return name, int(port)
    return host, None


def _strip_port(host: str) -> str:
    return split_host(host)[0]


def normalize_allowed_host(name: str) -> str:
    """A name given to `--allow-host` / `DevServer(allowed_hosts=...)` as `host_allowed` compares it; ValueError
    for one that is empty or carries a scheme, path or wildcard."""
    host = _strip_port(name.strip()).lower().rstrip(".")
    if not host or any(c in host for c in "/*@ ") or "://" in name:
        raise ValueError(f"--allow-host takes a host name such as host.docker.internal, not {name!r}")
    return host
