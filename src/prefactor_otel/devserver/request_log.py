"""What `prefactor-otel serve` prints for each request: one line, plus one per rejected bulk item.

    12:01:02 POST /api/v1/bulk 12 items -> 200 (11 ok, 1 rejected)
      rejected agent_spans/create agent-spans-create-01jd…: invalid_value: parent_span_id not found
    12:01:03 GET /api/v1/ping -> 401 bad or missing token (bad_authtoken)

`Traffic` is what a server's requests leave behind: the log of entries (`DevServer.requests`), the listener told of
each (`DevServer(on_request=...)`), and the count of bytes hostile answers wrote (`DevServer.fault_bytes_sent`).
`describe()` builds an entry's `detail` (the server calls it only when someone listens); `format_request()` turns an
entry into the printed text; `RequestPrinter` is the listener `serve` installs. Neither the token nor any header is
ever part of an entry, so none can be printed.

Threads: `describe` and `format_request` are pure. `Traffic` is written by the request threads and read by the test
thread: `_requests_lock` guards the log, `_fault_bytes_lock` the byte count; the listener is called outside both.
`RequestPrinter.__call__` runs on the request threads and takes its own lock so lines of concurrent requests do not
interleave.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, NamedTuple, TextIO

_KEY_SHOWN = 40  # characters of an idempotency key printed: enough to tell items apart, short enough to read


class RequestLog(NamedTuple):
    """One request the server answered. `status` 0 means the connection was dropped without a response.
    `detail` is filled in only for a server with an `on_request` listener (see `describe`). `request_bytes` is the
    body as it came (compressed or not), `encoding` its Content-Encoding, `decoded_bytes` its size once decoded
    (None when it was not compressed, or could not be decoded)."""

    method: str
    path: str
    status: int
    request_bytes: int
    item_count: int | None
    detail: str | None = None
    encoding: str = "identity"
    decoded_bytes: int | None = None


class Traffic:
    """The requests one server answered (the last `keep` of them, or all) and the bytes its hostile answers wrote."""

    def __init__(self, *, keep: int | None = None, on_request: Callable[[RequestLog], None] | None = None) -> None:
        self.on_request = on_request  # set once: told of every entry as it is logged
        self._requests: deque[RequestLog] = deque(maxlen=keep)
        self._requests_lock = threading.Lock()
        self._fault_bytes = 0
        self._fault_bytes_lock = threading.Lock()

    @property
    def describes(self) -> bool:
        """Whether entries need a `detail`: only a listener reads it, so without one nobody pays for it."""
        return self.on_request is not None

    def log(self, entry: RequestLog) -> None:
        with self._requests_lock:
            self._requests.append(entry)
        if self.on_request is not None:
            self.on_request(entry)

    def requests(self) -> list[RequestLog]:
        with self._requests_lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._requests_lock:
            self._requests.clear()

    def count_fault_bytes(self, count: int) -> None:
        with self._fault_bytes_lock:
            self._fault_bytes += count

    @property
    def fault_bytes(self) -> int:
        with self._fault_bytes_lock:
            return self._fault_bytes


def describe(status: int, request: Any, answer: Any, bulk: bool) -> str | None:
    """The human part of a log entry: a bulk's item outcomes, why a 401, an error's code and message."""
    if status == 0:
        return "connection dropped (injected fault)"
    if status == 401:
        code = answer.get("code") if isinstance(answer, dict) else None
        return "bad or missing token" + (f" ({code})" if code else "")
    if bulk and status == 200 and isinstance(request, dict) and isinstance(answer, dict):
        return _describe_bulk(request.get("items"), answer.get("outputs"))
    if status >= 400 and isinstance(answer, dict) and answer.get("status") == "error":
        return f"{answer.get('code')}: {answer.get('message')}"
    return None


def _describe_bulk(items: object, outputs: object) -> str | None:
    if not isinstance(items, list) or not isinstance(outputs, dict):
        return None
    ok = 0
    rejected: list[str] = []
    not_run = 0
    for item in items:
        key = item.get("idempotency_key") if isinstance(item, dict) else None
        output = outputs.get(key) if isinstance(key, str) else None
        if not isinstance(output, dict) or not isinstance(key, str):
            not_run += 1  # the bulk stops at its first failing item: the rest were not executed
        elif output.get("status") == "error":
            shown = key if len(key) <= _KEY_SHOWN else key[:_KEY_SHOWN] + "…"
            reason = f"{output.get('code')}: {output.get('message')}"
            rejected.append(f"  rejected {item.get('_type')} {shown}: {reason}")
        else:
            ok += 1
    counts = [f"{ok} ok"]
    if rejected:
        counts.append(f"{len(rejected)} rejected")
    if not_run:
        counts.append(f"{not_run} not run")
    return "\n".join([", ".join(counts), *rejected])


def format_request(entry: RequestLog, at: float | None = None) -> str:
    """`HH:MM:SS METHOD PATH [N items] -> STATUS [detail]`, then the detail's further lines (rejected items)."""
    clock = time.strftime("%H:%M:%S", time.localtime(time.time() if at is None else at))
    items = f" {entry.item_count} item{'s' if entry.item_count != 1 else ''}" if entry.item_count is not None else ""
    status = "dropped" if entry.status == 0 else str(entry.status)
    head, _, rest = (entry.detail or "").partition("\n")
    if head and entry.status == 200 and entry.item_count is not None:
        head = f"({head})"
    line = f"{clock} {entry.method} {entry.path}{items} -> {status}" + (f" {head}" if head else "")
    return line + ("\n" + rest if rest else "")


def is_tool_read(entry: RequestLog) -> bool:
    """A successful read by the local tools (`show`, `show --watch`, a page and its polling: GETs outside the API),
    which would otherwise add a line every second to the log of what apps send."""
    return entry.method == "GET" and entry.status == 200 and not entry.path.startswith("/api/")


class RequestPrinter:
    """A `DevServer(on_request=...)` listener printing each entry to `stream`, one write per entry; the local
    tools' successful reads (`is_tool_read`) are left out."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def __call__(self, entry: RequestLog) -> None:
        if is_tool_read(entry):
            return
        text = format_request(entry) + "\n"
        with self._lock:
            try:
                self._stream.write(text)
                self._stream.flush()
            except (OSError, ValueError):
                pass  # a closed terminal must not break request handling
