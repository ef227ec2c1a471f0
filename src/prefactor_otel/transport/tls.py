"""The TLS context the HTTP client verifies the server with: built once per process, and not at all for plain http.

Loading the CA bundle (`SSLContext.load_verify_locations`, ~20-100 ms) is what building an httpx transport cost
most; httpx does it for every transport it builds, even for an `http://` URL that never speaks TLS. So:
- an `http://` API URL reached directly or through an `http://` proxy gets a bare client context that trusts no
  CA: nothing uses it, and if anything ever did, verification would fail closed. A `PREFACTOR_CA_BUNDLE` is still
  loaded (once): a bundle that cannot be read is a configuration error whatever the URL;
- otherwise the verifying context is built once per process for each (CA bundle, SSL_CERT_FILE, SSL_CERT_DIR)
  and shared by every exporter, forked child and rebuilt client (an `SSLContext` may be shared by any number of
  connections and threads; a fork keeps it usable);
- `PREFACTOR_TLS_VERIFY=false` gets httpx's own non-verifying context (`False`), which loads nothing.

Threads: called from whichever thread builds an HTTP client (exporter construction, a forked child's only
thread); `_CONTEXTS` is guarded by `_LOCK`.
"""

from __future__ import annotations

import os
import ssl
import threading

import httpx

from prefactor_otel.config.options import PrefactorConfig

_LOCK = threading.Lock()
_CONTEXTS: dict[tuple[str | None, str | None, str | None], ssl.SSLContext] = {}


def tls_context(config: PrefactorConfig, proxy_url: str | None) -> bool | ssl.SSLContext:
    """What to pass as httpx's `verify` for `config`'s API URL, reached through `proxy_url` (None: directly)."""
    if not config.tls_verify:
        return False
    plain = httpx.URL(config.api_base).scheme == "http"
    if plain and not config.ca_bundle and (proxy_url is None or proxy_url.strip().lower().startswith("http://")):
        return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies, trusts nothing: never used (module docstring)
    key = (config.ca_bundle, os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))
    with _LOCK:
        context = _CONTEXTS.get(key)
        if context is None:
            if config.ca_bundle:
                context = ssl.create_default_context(cafile=config.ca_bundle)
            else:
                context = httpx.create_ssl_context(verify=True)  # certifi's bundle, or SSL_CERT_FILE / _DIR
            _CONTEXTS[key] = context
        return context
