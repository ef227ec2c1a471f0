"""Local sinks for the benchmarks, run in their own process on 127.0.0.1 (never in the process measured).

    python benchmarks/sinks.py             # fast sinks: Prefactor bulk + OTLP/HTTP, on two ports
    python benchmarks/sinks.py --echo      # the fast bulk sink echoes each item's object, as Prefactor's API does
    python benchmarks/sinks.py --devserver # the real local Prefactor-compatible server (prefactor_otel.devserver)

The process prints one JSON line with its addresses, then serves until its standard input closes (the parent
exits) or `--max-seconds` pass.

The fast sinks answer as fast as a Python socket loop can, so the benchmark measures the exporter and not a
server: the bulk sink parses the request and returns a well-formed bulk answer
(`{"status":"success","outputs":{key:{"status":"success","details":{"id":...}}}}` for every item key), the
OTLP sink answers 200 with an empty `ExportTraceServiceResponse`. With `--echo` the bulk sink answers as Prefactor's
API does (and the local server, devserver/span_actions.py and state.py's `render_instance`): each output's `details`
is the whole object the item created or changed -- a span create's agent span with its payload and result payload,
a register's agent instance -- so an answer is about as large as its request and response reading is measured
honestly (`echo_bulk_answer`; the sink keeps no state, so a span finish echoes the fields it sent). Both sinks count
requests and bytes (request line and headers separately from the body), served at `GET /_stats`; `POST /_reset`
zeroes them. A body sent with a `Content-Encoding` (gzip, deflate, zstd) is decoded before it is read: `body_bytes`
counts it as sent on the wire, `decoded_bytes` as decoded (equal for an uncompressed body),
`encoded_requests:<encoding>` counts each encoding, and `answer_bytes` the bulk answers' bodies.

With `--devserver`, lines on standard input are commands: `counts` prints a JSON line with the instances and
spans the server holds and the requests it answered.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import socketserver
import sys
import threading
import time
import zlib
from collections import Counter
from typing import Any

MAX_REQUESTS_PER_CONNECTION = 1_000_000
MAX_HEADER_LINES = 100
MAX_BODY_BYTES = 64 * 1024 * 1024


class Stats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()

    def add(
        self,
        path: str,
        head_bytes: int,
        body_bytes: int,
        items: int,
        decoded_bytes: int = -1,
        encoding: str = "",
        answer_bytes: int = 0,
    ) -> None:
        with self._lock:
            self.counts[f"requests:{path}"] += 1
            self.counts["requests"] += 1
            self.counts["head_bytes"] += head_bytes
            self.counts["body_bytes"] += body_bytes
            self.counts["decoded_bytes"] += body_bytes if decoded_bytes < 0 else decoded_bytes
            if encoding:
                self.counts[f"encoded_requests:{encoding}"] += 1
            self.counts["items"] += items
            self.counts["answer_bytes"] += answer_bytes
            if items == 1:
                self.counts["single_item_requests"] += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)

    def reset(self) -> None:
        with self._lock:
            self.counts.clear()


def decode_body(body: bytes, encoding: str) -> bytes:
    """The body without its Content-Encoding (gzip, deflate or zstd; "" or identity: as it is). ValueError else."""
    if encoding in ("", "identity"):
        return body
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompress(body, 16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return zlib.decompress(body)
    if encoding == "zstd":
        try:
            from compression import zstd  # type: ignore[import-not-found]  # Python 3.14+

            return bytes(zstd.decompress(body))
        except ImportError:
            import zstandard

            # A stream decompressor: frames written without their content size decode too.
            return bytes(zstandard.ZstdDecompressor().decompressobj().decompress(body))
    raise ValueError(f"bench sink: unsupported Content-Encoding {encoding!r}")


def _item_id(item: dict[str, Any]) -> str | None:
    details = item.get("details")
    if isinstance(details, dict) and isinstance(details.get("id"), str):
        return details["id"]
    for field in ("id", "agent_span_id", "agent_instance_id"):
        if isinstance(item.get(field), str):
            return item[field]
    return None


_ECHO_ACCOUNT = "01m98mkywh0000000000000000000001"  # fixed ids of the echoing sink's one account and agent
_ECHO_AGENT = "01m98mkywh0000000000000000000002"


def _echo_time(ns: object) -> str | None:
    """An ISO 8601 time (microseconds, Z) as the API writes its timestamps; None for a missing one."""
    if isinstance(ns, str):
        return ns
    if not isinstance(ns, int):
        return None
    seconds, rest = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{rest // 1000:06d}Z"


def _echo_span(fields: dict[str, Any], now: str) -> dict[str, Any]:
    """The agent span object a span create (or finish) answers with: the span as the server stores it."""
    return {
        "type": "agent_span",
        "id": fields.get("id") or fields.get("agent_span_id"),
        "account_id": _ECHO_ACCOUNT,
        "agent_id": _ECHO_AGENT,
        "agent_instance_id": fields.get("agent_instance_id"),
        "parent_span_id": fields.get("parent_span_id"),
        "schema_name": fields.get("schema_name"),
        "schema_title": fields.get("schema_name"),
        "status": fields.get("status") or "complete",
        "payload": fields.get("payload", {}),
        "result_payload": fields.get("result_payload"),
        "summary": None,
        "sensitive_encoding": bool(fields.get("sensitive_encoding")),
        "started_at": _echo_time(fields.get("started_at")),
        "finished_at": _echo_time(fields.get("finished_at") or fields.get("timestamp")),
        "inserted_at": now,
        "updated_at": now,
    }


def _echo_instance(item: dict[str, Any], now: str) -> dict[str, Any]:
    """The agent instance object a register, start or finish answers with (state.py's `render_instance`)."""
    kind = item.get("_type", "")
    status = {"agent_instances/start": "active", "agent_instances/finish": item.get("status") or "complete"}
    return {
        "type": "agent_instance",
        "id": _item_id(item),
        "account_id": _ECHO_ACCOUNT,
        "agent_id": _ECHO_AGENT,
        "agent_version_id": "01m98mkywh0000000000000000000003",
        "agent_schema_version_id": "01m98mkywh0000000000000000000004",
        "environment_id": item.get("environment_id") or "01m98mkywh0000000000000000000005",
        "agent_deployment_id": "01m98mkywh0000000000000000000006",
        "status": status.get(kind, "pending"),
        "inserted_at": now,
        "updated_at": now,
        "started_at": _echo_time(item.get("timestamp")) if kind != "agent_instances/register" else None,
        "finished_at": _echo_time(item.get("timestamp")) if kind == "agent_instances/finish" else None,
        "span_counts": {"total": 0, "pending": 0, "active": 0, "complete": 0, "failed": 0, "cancelled": 0,
                        "finished": 0},
        "external_identifier": item.get("external_identifier"),
        "purpose": item.get("purpose") or "live",
        "termination_reason": None,
        "quality_payloads": {},
        "quality_summaries": {},
    }  # fmt: skip


def echo_bulk_answer(body: bytes) -> tuple[bytes, int]:
    """A bulk answer as Prefactor's API writes it: success for every item key, `details` the whole object the item
    created or changed (a span create echoes its payloads), so the answer is about the size of the request."""
    items = json.loads(body)["items"]
    now = _echo_time(time.time_ns())
    outputs = {}
    for item in items:
        if not isinstance(item, dict):
            continue
        kind = item.get("_type", "")
        if kind == "agent_spans/create":
            details = item.get("details")
            echoed = _echo_span(details if isinstance(details, dict) else {}, now or "")
        elif kind == "agent_spans/finish":
            echoed = _echo_span(item, now or "")
        else:
            echoed = _echo_instance(item, now or "")
        outputs[item["idempotency_key"]] = {"status": "success", "details": echoed}
    return json.dumps({"status": "success", "outputs": outputs}, separators=(",", ":")).encode(), len(items)


def bulk_answer(body: bytes) -> tuple[bytes, int]:
    """A well-formed bulk answer: success for every item key, with the item's id in `details`."""
    items = json.loads(body)["items"]
    outputs = {
        item["idempotency_key"]: {"status": "success", "details": {"id": _item_id(item)}}
        for item in items
        if isinstance(item, dict)
    }
    return json.dumps({"status": "success", "outputs": outputs}, separators=(",", ":")).encode(), len(items)


class _Handler(socketserver.StreamRequestHandler):
    """HTTP/1.1 with keep-alive, Content-Length or chunked bodies; nothing more than the exporters need."""

    server: _Server

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def handle(self) -> None:
        for _ in range(MAX_REQUESTS_PER_CONNECTION):
            request_line = self.rfile.readline(65537)
            if not request_line.strip():
                return
            head_bytes = len(request_line)
            length = 0
            chunked = False
            keep_alive = True
            encoding = ""
            for _ in range(MAX_HEADER_LINES):
                line = self.rfile.readline(65537)
                head_bytes += len(line)
                if line in (b"\r\n", b"\n", b""):
                    break
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"transfer-encoding" and b"chunked" in value.lower():
                    chunked = True
                elif name == b"connection" and b"close" in value.lower():
                    keep_alive = False
                elif name == b"content-encoding":
                    encoding = value.strip().lower().decode("latin-1")
            body = self._read_chunked() if chunked else self.rfile.read(min(length, MAX_BODY_BYTES))
            method, target = request_line.split(b" ", 2)[:2]
            path = target.decode("latin-1").split("?", 1)[0]
            status, content_type, payload = self.server.answer(
                method.decode("latin-1"), path, body, head_bytes, encoding
            )
            self.wfile.write(
                b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n"
                % (status, b"OK" if status == 200 else b"ERR", content_type, len(payload))
                + payload
            )
            if not keep_alive:
                return

    def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        size = 0
        while size <= MAX_BODY_BYTES:
            chunk_size = int(self.rfile.readline(1024).split(b";")[0].strip() or b"0", 16)
            if chunk_size == 0:
                self.rfile.readline(1024)
                break
            parts.append(self.rfile.read(chunk_size))
            self.rfile.readline(1024)
            size += chunk_size
        return b"".join(parts)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, kind: str, echo: bool = False) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.kind = kind
        self.echo = echo  # the bulk sink answers with each item's whole object (`echo_bulk_answer`)
        self.stats = Stats()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def answer(
        self, method: str, path: str, body: bytes, head_bytes: int, encoding: str = ""
    ) -> tuple[int, bytes, bytes]:
        json_type = b"application/json"
        if path == "/_stats":
            return 200, json_type, json.dumps(self.stats.snapshot()).encode()
        if path == "/_reset":
            self.stats.reset()
            return 200, json_type, b"{}"
        if self.kind == "bulk":
            if path != "/api/v1/bulk" or method != "POST":
                self.stats.add(path, head_bytes, len(body), 0)
                return 404, json_type, b'{"status":"error","code":"not_found","message":"bench sink: bulk only"}'
            try:
                decoded = decode_body(body, encoding)
            except (ValueError, zlib.error, ImportError) as exc:
                self.stats.add(path, head_bytes, len(body), 0, encoding=encoding or "unreadable")
                return 415, json_type, json.dumps({"status": "error", "code": "encoding", "message": str(exc)}).encode()
            # Looked up per request: wire_cost.py replaces `bulk_answer` in this module.
            payload, items = echo_bulk_answer(decoded) if self.echo else bulk_answer(decoded)
            self.stats.add(path, head_bytes, len(body), items, len(decoded), encoding, len(payload))
            return 200, json_type, payload
        decoded_size = -1
        if encoding not in ("", "identity"):  # OTLP with OTEL_EXPORTER_OTLP_COMPRESSION: counted decoded too
            with contextlib.suppress(ValueError, zlib.error, ImportError):
                decoded_size = len(decode_body(body, encoding))
        self.stats.add(path, head_bytes, len(body), 0, decoded_size, encoding)
        return 200, b"application/x-protobuf", b""  # an empty ExportTraceServiceResponse: all accepted


def _serve(server: socketserver.BaseServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
    thread.start()
    return thread


def _wait_for_parent(max_seconds: float, on_line: Any = None) -> None:
    """Return when stdin closes (the parent is gone) or after max_seconds; `on_line` handles command lines."""
    done = threading.Event()

    def reader() -> None:
        for line in sys.stdin:
            if on_line is not None:
                on_line(line.strip())
        done.set()

    threading.Thread(target=reader, daemon=True).start()
    done.wait(max_seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devserver", action="store_true", help="run the real local Prefactor-compatible server")
    parser.add_argument(
        "--echo", action="store_true", help="the fast bulk sink echoes each item's object, as Prefactor's API does"
    )
    parser.add_argument("--max-seconds", type=float, default=1800.0, help="exit after this long in any case")
    args = parser.parse_args(argv)
    started = time.monotonic()
    if args.devserver:
        from prefactor_otel.devserver import DevServer

        dev = DevServer(token="pf_bench_token").start()
        print(
            json.dumps(
                {"url": dev.url, "token": dev.token, "agent_id": dev.agent_id, "environment_id": dev.environment_id}
            ),
            flush=True,
        )

        def command(line: str) -> None:
            if line == "counts":
                instances = dev.instances()
                requests = dev.requests
                _, spans = dev.store.counts()
                print(
                    json.dumps(
                        {
                            "instances": len(instances),
                            "instances_finished": sum(
                                1 for i in instances if i.get("status") in ("complete", "failed")
                            ),
                            "spans": spans,
                            "requests": len(requests),
                            "single_item_requests": sum(1 for r in requests if r.item_count == 1),
                            "request_bytes": sum(r.request_bytes for r in requests),
                            "errors": sum(1 for r in requests if r.status >= 400),
                        }
                    ),
                    flush=True,
                )

        try:
            _wait_for_parent(args.max_seconds - (time.monotonic() - started), command)
        finally:
            dev.stop()
        return 0
    bulk, otlp = _Server("bulk", echo=args.echo), _Server("otlp")
    _serve(bulk)
    _serve(otlp)
    print(json.dumps({"bulk": bulk.url, "otlp": otlp.url}), flush=True)
    try:
        _wait_for_parent(args.max_seconds)
    finally:
        bulk.shutdown()
        otlp.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
