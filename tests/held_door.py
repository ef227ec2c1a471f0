"""A TCP relay on 127.0.0.1 in front of a server that holds a chosen request until the test lets it through: the
test decides when a client's request is answered, so a state that lasts while the request is out ("replaying")
lasts until the test has looked at it, however slow the machine (a server-side delay would end on its own clock).

    with HeldDoor(srv.url, b"POST /api/v1/bulk") as door:
        ...point the client at door.url...
        assert door.holding.wait(60)  # the request reached the door
        ...observe the client while it waits...
        door.open()  # that request and everything after it pass

Only the bytes from the client are looked at: a chunk holding `marker` (a request line) waits at the door until
`open()`; everything else, and everything once open, is relayed at once. Every wait is bounded (HOLD_LIMIT_S, a
safety limit against a hang, never a timing assertion); a door left shut past it lets the request through.

Threads: one acceptor thread; per connection two relay threads (client -> server, server -> client). The test
thread calls `open()` and reads `holding`. Shared state is two threading.Events and the list of sockets, whose
appends and the close at exit are guarded by `_lock`.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType
from urllib.parse import urlsplit

HOLD_LIMIT_S = 120.0
_CHUNK = 65536


class HeldDoor:
    def __init__(self, upstream_url: str, marker: bytes) -> None:
        parts = urlsplit(upstream_url)
        assert parts.hostname in ("127.0.0.1", "localhost") and parts.port is not None, upstream_url
        self._upstream = (parts.hostname, parts.port)
        self._rest = upstream_url[len(f"{parts.scheme}://{parts.netloc}") :]
        self._marker = marker
        self.holding = threading.Event()  # a request with the marker is waiting at the door
        self._open = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}{self._rest}"
        self._acceptor = threading.Thread(target=self._accept, name="held-door-accept", daemon=True)

    def __enter__(self) -> HeldDoor:
        self._acceptor.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._open.set()
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                sock.close()
        self._acceptor.join(10)

    def open(self) -> None:
        """Let the held request, and every later one, through."""
        self._open.set()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # the listener was closed: the door is gone
            try:
                server = socket.create_connection(self._upstream, timeout=10)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._sockets += [client, server]
            threading.Thread(target=self._relay, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._relay, args=(server, client, False), daemon=True).start()

    def _relay(self, source: socket.socket, sink: socket.socket, from_client: bool) -> None:
        tail = b""  # the end of the last chunk: a marker split between two reads is still seen
        try:
            while True:
                chunk = source.recv(_CHUNK)
                if not chunk:
                    break
                if from_client and not self._open.is_set() and self._marker in tail + chunk:
                    self.holding.set()
                    self._open.wait(HOLD_LIMIT_S)
                tail = chunk[-len(self._marker) :]
                sink.sendall(chunk)
        except OSError:
            pass  # either side hung up, or the door closed at exit
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
