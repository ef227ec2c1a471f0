"""`prefactor-otel serve`: a dev server in the foreground, until Ctrl-C or SIGTERM, remembering its state.

With a state file (the CLI's default, see state_file.py) the server keeps its token, account, agent and
environment ids, runs, spans, idempotency keys and findings across restarts: an app still configured with the old
`PREFACTOR_AGENT_ID` keeps working, and a replayed bulk item answers exactly as before. Without one (`--memory`,
or `state_path=None`) everything is lost when it stops, as `DevServer` in tests.

Threads: `serve` runs on the caller's thread (the main thread installs a SIGTERM handler; from another thread it
only stops on Ctrl-C); the server's threads handle requests and print the request log (request_log.py); a
`StateWriter` thread saves the state file.
"""

from __future__ import annotations

import os
import secrets
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any, TextIO

from prefactor_otel.devserver.request_log import RequestPrinter
from prefactor_otel.devserver.server import DEFAULT_PORT, DevServer
from prefactor_otel.devserver.state_file import StateFile, StateFileError, StateWriter

# What serve defaulted to before it kept state on disk: public (in every copy of this package), so any local
# program could use it. Never a default now; a saved state holding it gets a random token. `demo --loop` prints
# a token only when it is this one, the one token that is no secret.
PUBLIC_TOKEN = "pf_local_dev_token"
KEEP_REQUESTS = 1000  # `DevServer.requests` of a long-running server: the last ones only
SAVE_INTERVAL_S = 0.5


def new_token() -> str:
    """A random token for a new local server: 256 bits, URL-safe (it travels in the page URL's fragment)."""
    return "pf_local_" + secrets.token_urlsafe(32)


def serve(
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    token: str | None = None,
    agent_id: str | None = None,
    environment_id: str | None = None,
    *,
    state_path: str | os.PathLike[str] | None = None,
    reset: bool = False,
    allowed_hosts: Sequence[str] = (),
    refuse_encodings: Sequence[str] = (),
    register_without_schema: bool = False,
    request_log: TextIO | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    """Run a dev server in the foreground until Ctrl-C or SIGTERM; print how to point an exporter at it.

    `token`: given explicitly, it is the token (replacing a saved one, which the banner says); else the saved
    token (unless it is the old public `pf_local_dev_token`: replaced, and the banner says so), else
    `PREFACTOR_API_TOKEN`, else a new random one (`new_token`), saved with the state. `state_path`: the state
    file to load and keep saving (None: memory only); `reset`: discard that file first. `allowed_hosts`: host names
    answered besides loopback ones and `host` (a container's `host.docker.internal`). `refuse_encodings` and
    `register_without_schema`: DevServer's settings for testing an exporter's fallbacks (docs/wire.md), each said
    in the banner. `request_log`: print one line per request there.
    Returns the exit status: 0 after a stop, 2 when it cannot start (the reason is on `err`)."""
    stream = out or sys.stdout
    errors = err or sys.stderr
    env = os.environ if environ is None else environ
    state = StateFile(state_path) if state_path is not None else None
    try:
        testing = _Testing(tuple(refuse_encodings), register_without_schema)
        return _serve(
            host,
            port,
            token,
            agent_id,
            environment_id,
            state,
            reset,
            allowed_hosts,
            testing,
            request_log,
            stream,
            errors,
            env,
        )
    except StateFileError as exc:
        print(f"prefactor-otel serve: {exc}", file=errors, flush=True)
        return 2
    finally:
        if state is not None:
            state.release()


def _serve(
    host: str,
    port: int,
    token: str | None,
    agent_id: str | None,
    environment_id: str | None,
    state: StateFile | None,
    reset: bool,
    allowed_hosts: Sequence[str],
    testing: _Testing,
    request_log: TextIO | None,
    stream: TextIO,
    errors: TextIO,
    env: Mapping[str, str],
) -> int:
    notes: list[str] = []
    loaded = None
    if state is not None:
        state.acquire()
        if reset:
            removed = state.remove()
            notes.append(f"--reset: {'discarded the saved state' if removed else 'there was no saved state'}")
        else:
            loaded = state.read()
    env_token = env.get("PREFACTOR_API_TOKEN") or None
    if loaded is not None:
        clash = _seed_clash(loaded.store.agent_id, agent_id, "--agent-id") or _seed_clash(
            loaded.store.environment_id, environment_id, "--environment-id"
        )
        if clash:
            print(f"prefactor-otel serve: {clash} (state file {state and state.path})", file=errors, flush=True)
            return 2
        chosen = token or loaded.token
        if token is not None and token != loaded.token:
            notes.append("Token: changed by --token; apps still using the saved token now get 401")
        elif token is None and loaded.token == PUBLIC_TOKEN:
            chosen = new_token()
            notes.append(
                f"Token: the saved token was the public {PUBLIC_TOKEN}, which any program on this machine knows: "
                f"replaced by the new random one below (apps still using it get 401; --token {PUBLIC_TOKEN} keeps it)"
            )
        elif env_token is not None and env_token != chosen:
            notes.append(
                "Token: kept from the state file; PREFACTOR_API_TOKEN in this shell differs "
                '(pass --token "$PREFACTOR_API_TOKEN" to make it the token)'
            )
    else:
        chosen = token or env_token or new_token()
    if chosen == PUBLIC_TOKEN:
        notes.append(
            f"Token: {PUBLIC_TOKEN} is public (any program on this machine knows it); drop --token and "
            "PREFACTOR_API_TOKEN for a random one"
        )
    notes.extend(testing.notes())
    printer = RequestPrinter(request_log) if request_log is not None else None
    try:
        if loaded is not None:
            seed: dict[str, Any] = {"store": loaded.store}
        else:
            seed = {"agent_id": agent_id, "environment_id": environment_id}
        server = DevServer(
            token=chosen,
            host=host,
            port=port,
            on_request=printer,
            keep_requests=KEEP_REQUESTS,
            allowed_hosts=allowed_hosts,
            refuse_encodings=testing.refuse_encodings,
            register_without_schema=testing.register_without_schema,
            **seed,
        )
        server.start()
    except ValueError as exc:
        print(f"prefactor-otel serve: {exc}", file=errors, flush=True)
        return 2
    except OSError as exc:
        print(f"prefactor-otel serve: cannot listen on {host}:{port}: {exc.strerror or exc}", file=errors, flush=True)
        return 2
    writer = None
    if state is not None:
        writer = StateWriter(
            server.store,
            chosen,
            state,
            interval_s=SAVE_INTERVAL_S,
            on_error=lambda message: print(f"prefactor-otel serve: {message}", file=errors, flush=True),
        )
        writer.save(force=True)  # the ids and token are on disk before any app is pointed at them
        writer.start()
    try:
        _run_until_stopped(server, stream, _state_line(state, loaded, server), notes, printer is not None)
    finally:
        server.stop()
        saved = writer.stop() if writer is not None else False
    instances, spans = server.store.counts()
    where = f"; saved to {state.path}" if state is not None and saved else ""
    print(f"stopped: {instances} agent runs, {spans} spans received{where}", file=stream, flush=True)
    return 0


@dataclass(frozen=True)
class _Testing:
    """What the server does differently from the API, to test an exporter's fallbacks (docs/wire.md)."""

    refuse_encodings: tuple[str, ...]
    register_without_schema: bool

    def notes(self) -> list[str]:
        notes = []
        if self.refuse_encodings:
            names = ", ".join(sorted({name.strip().lower() for name in self.refuse_encodings}))
            notes.append(f"Testing: request bodies encoded {names} are answered 415 (--refuse-encoding)")
        if self.register_without_schema:
            notes.append(
                "Testing: a run registered without agent_schema_version gets the agent's latest one "
                "(--register-without-schema; the API requires it)"
            )
        return notes


def _seed_clash(saved: str, given: str | None, flag: str) -> str | None:
    if given is None or given == saved:
        return None
    return (
        f"{flag} {given} differs from the saved {saved}; drop {flag} to keep the saved one, or start over with "
        f"--reset (discards the saved runs), or use another --state PATH"
    )


def _state_line(state: StateFile | None, loaded: object, server: DevServer) -> str:
    if state is None:
        return "State: in memory only: runs, and the agent id, are lost when it stops"
    if loaded is None:
        return f"State: {state.path} (new)"
    instances, spans = server.store.counts()
    return f"State: {state.path} (loaded: {instances} runs, {spans} spans)"


def _run_until_stopped(server: DevServer, stream: TextIO, state_line: str, notes: list[str], logging: bool) -> None:
    stop = threading.Event()
    previous = None
    in_main = threading.current_thread() is threading.main_thread()
    if in_main:

        def on_sigterm(signum: int, frame: FrameType | None) -> None:
            stop.set()

        previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        lines = [
            f"Prefactor dev server listening on {server.url}",
            f"Watch runs in a browser: {server.page_url}",
            state_line,
            *notes,
            "Point an exporter at it with:",
            *(f"  export {name}={value}" for name, value in server.env().items()),
            *(["Each request is logged as it is answered (--quiet turns that off)."] if logging else []),
            "Press Ctrl-C to stop.",
        ]
        print("\n".join(lines), file=stream, flush=True)
        while not stop.wait(0.2):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        if in_main and previous is not None:
            signal.signal(signal.SIGTERM, previous)
