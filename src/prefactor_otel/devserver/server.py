"""`DevServer`: the store behind real HTTP on 127.0.0.1, with auth, limits and fault injection.

One `ThreadingHTTPServer` per `DevServer`, each with its own store, faults and request log, so any number of them
can run side by side in one test process. `DevServer` is what a test (or `prefactor-otel serve`, serve.py) holds:
its ids, its lifecycle and its test API (faults, request log, findings, reads of the store); what one request does
is handler.py (HTTP) and routes.py (what a method and path mean). `DevServer` assembles the parts: its `Store`, its
`FaultSet`, its `Traffic` (request_log.py: the request log and the fault byte count), and, at start, the `Site` the
listening `DevHTTPServer` hands every request; nothing below it knows `DevServer`.
Threads: the caller's thread starts and stops it and uses the test API; the request threads use its store and
faults, and log each request and count fault bytes in its traffic. The store takes its own RLock, the fault set its
own lock; the traffic has one lock for the request log and one for the fault byte count."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable, Iterable
from urllib.parse import quote

from prefactor_otel.devserver import store as st
from prefactor_otel.devserver import webpage
from prefactor_otel.devserver.faults import Fault, FaultSet
from prefactor_otel.devserver.handler import DevHTTPServer, Site
from prefactor_otel.devserver.request_log import RequestLog, Traffic
from prefactor_otel.devserver.routes import API
from prefactor_otel.devserver.store import ApiError, JsonDict, Store
from prefactor_otel.devserver.timefmt import now_us
from prefactor_otel.model import ids

DEFAULT_TOKEN = "pf_test_token"
DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024
DEFAULT_PORT = 8787  # what `prefactor-otel serve` uses too


class DevServer:
    """A strict, local, Prefactor-compatible API server on real HTTP. See the package docstring."""

    def __init__(
        self,
        token: str = DEFAULT_TOKEN,
        host: str = "127.0.0.1",
        port: int = 0,
        partition: int | None = None,
        *,
        agent_id: str | None = None,
        environment_id: str | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        bulk_actions: frozenset[str] | None = None,
        store: Store | None = None,
        on_request: Callable[[RequestLog], None] | None = None,
        keep_requests: int | None = None,
        allowed_hosts: Iterable[str] = (),
        refuse_encodings: Iterable[str] = (),
        register_without_schema: bool = False,
    ) -> None:
        """`store`: serve this store (e.g. one persist.load restored) instead of a new account; its ids win over
        `agent_id`/`environment_id`/`partition`, which must then be None. `on_request`: called with each request's
        entry as it is logged, with `detail` filled in (what `prefactor-otel serve` prints); without it no detail
        is computed, so a test or benchmark server pays nothing. `keep_requests`: keep only the last N entries in
        `requests` (a long-running server must not grow without bound); None keeps all. `allowed_hosts`: host names
        answered besides loopback ones and `host` (e.g. `host.docker.internal`); every other `Host` is refused, as
        is any request from another origin (guard.py: DNS rebinding and cross-site requests). `refuse_encodings`:
        request Content-Encodings answered 415 (e.g. {"zstd"}), to test a client's fallback (docs/wire.md).
        `register_without_schema`: accept a register without `agent_schema_version` once the agent has a schema
        version (the run gets the latest); off by default, as prefactor-http requires it (docs/local-server.md)."""
        if store is not None and (agent_id, environment_id, partition, bulk_actions) != (None, None, None, None):
            raise ValueError("a DevServer given a store takes its ids from it: no agent_id/environment_id/partition")
        if not isinstance(token, str) or not token.strip() or token != token.strip():
            raise ValueError("DevServer token must be a non-empty string without surrounding whitespace")
        if max_body_bytes < 1:
            raise ValueError("max_body_bytes must be >= 1")
        seeded = [value for value in (agent_id, environment_id) if value is not None]
        for value in seeded:
            if not ids.is_pfid(value):
                raise ValueError("agent_id/environment_id must be canonical PFIDs")
        partitions = {ids.extract_partition(value) for value in seeded}
        if partition is not None:
            if not 0 <= partition <= ids.MAX_PARTITION:
                raise ValueError("partition must fit in 30 bits")
            partitions.add(partition)
        if len(partitions) > 1:
            raise ValueError("agent_id, environment_id and partition must all name the same PFID partition")
        if store is None:
            self.partition: int = partitions.pop() if partitions else secrets.randbelow(ids.MAX_PARTITION + 1)
            now_ms = now_us() // 1000
            store = Store(
                account_id=ids.encode(now_ms, self.partition, secrets.randbits(80)),
                agent_id=agent_id or ids.encode(now_ms, self.partition, secrets.randbits(80)),
                environment_id=environment_id or ids.encode(now_ms, self.partition, secrets.randbits(80)),
                partition=self.partition,
                bulk_actions=bulk_actions,
                agent_deployment_id=ids.encode(now_ms, self.partition, secrets.randbits(80)),
            )
        self.store = store
        store.registration.accept_known_schema = register_without_schema
        self.partition = store.partition
        self.account_id = store.account_id
        self.agent_id = store.agent_id
        self.environment_id = store.environment_id
        self.agent_deployment_id = store.agent_deployment_id
        self.host = host
        self.allowed_hosts = frozenset(webpage.normalize_allowed_host(name) for name in allowed_hosts)
        self.max_body_bytes = max_body_bytes
        self.refuse_encodings = frozenset(name.strip().lower() for name in refuse_encodings)
        self._token = token
        self._port = port
        self.faults = FaultSet()
        self._traffic = Traffic(keep=keep_requests, on_request=on_request)
        self._httpd: DevHTTPServer | None = None
        self._bound = False
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> DevServer:
        if self._httpd is not None:
            return self
        site = Site(
            token=self.token,
            host=self.host,
            allowed_hosts=self.allowed_hosts,
            max_body_bytes=self.max_body_bytes,
            store=self.store,
            faults=self.faults,
            traffic=self._traffic,
            refused_encodings=self.refuse_encodings,
        )
        httpd = DevHTTPServer((self.host, self._port), site)
        self._httpd = httpd
        self._port = httpd.server_address[1]
        self._bound = True
        self._thread = threading.Thread(
            target=httpd.serve_until_stopped,
            name=f"prefactor-devserver-{self._port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.stopping.set()
        httpd.stop_serving()
        httpd.close_connections()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> DevServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._httpd is not None

    @property
    def token(self) -> str:
        return self._token

    @property
    def port(self) -> int:
        # Still answers after stop(), so a test can report where a finished server was.
        if not self._bound:
            raise RuntimeError("DevServer is not started")
        return self._port

    @property
    def url(self) -> str:
        """Base URL without the /api/v1 suffix, as `PREFACTOR_API_URL` wants it."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def page_url(self) -> str:
        """The web page listing this server's runs, with the token in the URL fragment: the browser keeps the
        fragment to itself (it is never sent in a request), and the page moves it into its session storage."""
        return f"{self.url}/#token={quote(self.token, safe='')}"

    @property
    def api_url(self) -> str:
        return self.url + API

    def new_id(self) -> str:
        """A fresh PFID in this account's partition (what a client-chosen id must look like)."""
        return self.store.new_id()

    def env(self) -> dict[str, str]:
        """PREFACTOR_* variables pointing an exporter (or a subprocess) at this server."""
        return {
            "PREFACTOR_API_URL": self.url,
            "PREFACTOR_API_TOKEN": self.token,
            "PREFACTOR_AGENT_ID": self.agent_id,
            "PREFACTOR_ENVIRONMENT_ID": self.environment_id,
        }

    def __repr__(self) -> str:
        where = self.url if self._httpd is not None else "not started"
        return f"DevServer({where}, agent_id={self.agent_id}, token=***)"

    # ------------------------------------------------------------------ faults and inspection

    def findings(self) -> list[JsonDict]:
        """Strict-mode findings: requests the server accepted as the real API would, but a stricter server would
        have refused (unknown fields, payloads breaking their schema, runs finished complete with open spans,
        incomplete data_risk). Each is `{"rule", "action", "message", "field"?, ...}`. See docs/local-server.md."""
        return self.store.findings()

    def clear_findings(self) -> None:
        self.store.clear_findings()

    def terminate(self, instance_id: str, reason: str) -> JsonDict:
        """Terminate an active run as an operator would in Prefactor: the run becomes `terminated`, its in-flight
        spans close (`active` -> `failed`, `pending` -> `cancelled`) and later span answers for it carry `control`.
        Returns the instance; raises `ApiError` with the API's answer otherwise."""
        status, body = self.store.execute(st.TERMINATE, {"agent_instance_id": instance_id, "reason": reason})
        if status != 200:
            raise ApiError(status, body.get("code", "unexpected"), body.get("message", ""), body.get("errors"))
        return dict(body["details"])

    def add_fault(self, fault: Fault) -> None:
        self.faults.add(fault)

    def clear_faults(self) -> None:
        self.faults.clear()

    @property
    def fault_bytes_sent(self) -> int:
        """Bytes written by hostile answers (trickles, endless or filler bodies), headers included."""
        return self._traffic.fault_bytes

    @property
    def on_request(self) -> Callable[[RequestLog], None] | None:
        """The listener told of each request's entry, as given to the constructor."""
        return self._traffic.on_request

    @property
    def requests(self) -> list[RequestLog]:
        return self._traffic.requests()

    def clear_requests(self) -> None:
        self._traffic.clear_requests()

    def instances(self) -> list[JsonDict]:
        return self.store.instances()

    def spans(self, instance_id: str | None = None) -> list[JsonDict]:
        return self.store.spans(instance_id)

    def snapshot(self) -> JsonDict:
        return self.store.snapshot()
