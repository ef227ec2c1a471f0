"""`prefactor-otel serve`: a dev server in the foreground, until Ctrl-C or SIGTERM.

Runs on the main thread (it installs a SIGTERM handler there; from another thread it only stops on Ctrl-C).
"""

from __future__ import annotations

import secrets
import signal
import sys
import threading
from types import FrameType
from typing import TextIO

from prefactor_otel.devserver.server import DEFAULT_PORT, DevServer


def serve(
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    token: str | None = None,
    agent_id: str | None = None,
    environment_id: str | None = None,
    *,
    out: TextIO | None = None,
) -> int:
    """Run a dev server in the foreground until Ctrl-C or SIGTERM; print how to point an exporter at it."""
    stream = out or sys.stdout
    chosen = token or "pf_dev_" + secrets.token_urlsafe(18)
    server = DevServer(token=chosen, host=host, port=port, agent_id=agent_id, environment_id=environment_id)
    server.start()
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
            "Point an exporter at it with:",
            *(f"  export {name}={value}" for name, value in server.env().items()),
            "Press Ctrl-C to stop.",
        ]
        print("\n".join(lines), file=stream, flush=True)
        while not stop.wait(0.2):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        if in_main and previous is not None:
            signal.signal(signal.SIGTERM, previous)
    instances, spans = server.store.counts()
    print(f"stopped: {instances} agent runs, {spans} spans received", file=stream, flush=True)
    return 0
