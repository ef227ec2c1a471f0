"""Real OTLP clients, and capture servers that record the raw requests they send, for the gateway's tests.

- `CaptureServer`: a test-only OTLP/HTTP receiver on 127.0.0.1 (the standard library's threading HTTP server): it
  records each POST's path, headers and raw body (Content-Length or chunked, as Node sends it) and answers 200 with
  an empty OTLP response in the request's content type.
- `GrpcCapture`: a test-only OTLP/gRPC receiver (grpcio) whose `TraceService/Export` handler takes the request's
  raw bytes (no deserializer: what the client put on the wire, after gRPC's own decompression) and its metadata.
- `python_http_client`, `python_grpc_client`: the OTel Python SDK with `opentelemetry-exporter-otlp-proto-http` /
  `-proto-grpc` (a BatchSpanProcessor) and a collector beside it that records what the SDK ended: tests/spans.py's
  agent traces, in this process.
- `run_node_client`: tests/node_otlp/send.mjs, the OTel JS SDK with `@opentelemetry/exporter-trace-otlp-http`
  (OTLP/JSON) or `-proto` (protobuf), in a subprocess with the pinned Node 22; it prints what its SDK recorded.
- `sdk_view` / `node_view`: a span as the SDK held it, in one comparable form (hex ids, int kinds and status codes,
  nanosecond times, arrays as lists), for "what arrived equals what the client recorded".

The servers run their own threads; each records under its own lock and a test reads the records after the client
has finished (bounded waits only).
"""

from __future__ import annotations

import gzip
import json
import subprocess
import threading
import zlib
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from prefactor_otel.gateway import otlp
from tests.spans import agent_trace, make_provider

NODE_OTLP_DIR = Path(__file__).parent / "node_otlp"
SEND = NODE_OTLP_DIR / "send.mjs"
CLIENT_LIMIT_S = 120.0  # a safety limit against a hang only
EXPORT_SERVICE = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


# --------------------------------------------------------------------------- capture servers


@dataclass
class Captured:
    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes  # as it came over the wire

    def request(self) -> ExportTraceServiceRequest:
        """The request the body carries: decompressed as Content-Encoding says, parsed as Content-Type says."""
        body = self.body
        encoding = self.headers.get("content-encoding", "")
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "deflate":
            body = zlib.decompress(body)
        if self.headers.get("content-type", "").startswith("application/json"):
            return otlp.parse_json(body)
        return otlp.parse_protobuf(body)


class _CaptureHandler(BaseHTTPRequestHandler):
    server: _CaptureHTTPServer

    def do_POST(self) -> None:
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            body = self._chunked()
        else:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
        headers = {name.lower(): value for name, value in self.headers.items()}
        with self.server.lock:
            self.server.captured.append(Captured(self.path, headers, body))
        json_body = headers.get("content-type", "").startswith("application/json")
        answer = otlp.response_body(otlp.export_response(0, ""), json=json_body)
        self.send_response(200)
        self.send_header("Content-Type", "application/json" if json_body else "application/x-protobuf")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def _chunked(self) -> bytes:
        parts = []
        for _ in range(1_000_000):  # bounded: a request of a million chunks is not one of ours
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                self.rfile.readline()
                break
            parts.append(self.rfile.read(size))
            self.rfile.readline()
        return b"".join(parts)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _CaptureHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _CaptureHandler)
        self.lock = threading.Lock()
        self.captured: list[Captured] = []


class CaptureServer:
    """A test-only OTLP/HTTP receiver recording raw requests (see the module docstring)."""

    def __init__(self) -> None:
        self._server = _CaptureHTTPServer()
        self._thread = threading.Thread(target=self._server.serve_forever, name="otlp-capture", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def captured(self) -> list[Captured]:
        with self._server.lock:
            return list(self._server.captured)

    def __enter__(self) -> CaptureServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


@dataclass
class GrpcCall:
    metadata: dict[str, str]
    body: bytes


@dataclass
class GrpcCapture:
    """A test-only OTLP/gRPC receiver recording each Export call's raw request bytes and metadata."""

    calls: list[GrpcCall] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    port: int = 0

    def _export(self, body: bytes, context: grpc.ServicerContext) -> bytes:
        with self._lock:
            self.calls.append(GrpcCall(dict(context.invocation_metadata()), body))  # type: ignore[arg-type]
        return otlp.response_body(otlp.export_response(0, ""), json=False)

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    @contextmanager
    def running(self) -> Iterator[GrpcCapture]:
        server = grpc.server(ThreadPoolExecutor(max_workers=2))
        handler = grpc.unary_unary_rpc_method_handler(self._export)  # no (de)serializers: raw bytes both ways
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(EXPORT_SERVICE.split("/")[1], {"Export": handler}),)
        )
        self.port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        try:
            yield self
        finally:
            server.stop(grace=None).wait(10)


# --------------------------------------------------------------------------- the Python clients


class _Answered(SpanExporter):
    """The OTLP exporter, and what each of its exports returned."""

    def __init__(self, exporter: SpanExporter) -> None:
        self.exporter = exporter
        self.results: list[SpanExportResult] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        result = self.exporter.export(spans)
        self.results.append(result)
        return result

    def shutdown(self) -> None:
        self.exporter.shutdown()


def _send_agent_traces(exporter: SpanExporter, service: str) -> tuple[list[ReadableSpan], list[SpanExportResult]]:
    """Two agent traces (one failing in its tool), exported by `exporter` behind a BatchSpanProcessor; what the SDK
    recorded (a collector beside it) and what each export returned."""
    provider, collector = make_provider(service)
    answered = _Answered(exporter)
    provider.add_span_processor(BatchSpanProcessor(answered, schedule_delay_millis=60_000))
    agent_trace(provider)
    with suppress(RuntimeError):  # the failing trace's tool raises through its spans, as an application's would
        agent_trace(provider, fail=True)
    assert provider.force_flush(timeout_millis=30_000)
    provider.shutdown()
    return collector.spans, answered.results


def python_http_client(
    url: str, *, compress: bool, headers: Mapping[str, str] | None = None, service: str = "python-http-agent"
) -> tuple[list[ReadableSpan], list[SpanExportResult]]:
    """`opentelemetry-exporter-otlp-proto-http` (protobuf) sending agent traces to `url` (…/v1/traces)."""
    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    exporter = OTLPSpanExporter(
        endpoint=url,
        headers=dict(headers or {}),
        timeout=20,
        compression=Compression.Gzip if compress else Compression.NoCompression,
    )
    return _send_agent_traces(exporter, service)


def python_grpc_client(
    endpoint: str, *, compress: bool, headers: Mapping[str, str] | None = None, service: str = "python-grpc-agent"
) -> tuple[list[ReadableSpan], list[SpanExportResult]]:
    """`opentelemetry-exporter-otlp-proto-grpc` sending agent traces to `endpoint` (host:port, plaintext)."""
    from opentelemetry.exporter.otlp.proto.grpc.exporter import Compression
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    exporter = OTLPSpanExporter(
        endpoint=endpoint,
        insecure=True,
        headers={name.lower(): value for name, value in (headers or {}).items()},  # gRPC metadata is lower-case
        timeout=20,
        compression=Compression.Gzip if compress else Compression.NoCompression,
    )
    return _send_agent_traces(exporter, service)


# --------------------------------------------------------------------------- the Node client


def run_node_client(
    node: Path,
    url: str,
    protocol: str,
    *,
    compression: str = "none",
    headers: Mapping[str, str] | None = None,
    service: str = "node-agent",
    traces: int = 1,
) -> dict[str, Any]:
    """send.mjs's report: {"ok", "node_version", "results", "errors", "spans"} (see send.mjs); `traces` agent
    traces, each with ids of its own."""
    command = [str(node), str(SEND), "--url", url, "--protocol", protocol, "--compression", compression]
    command += ["--service", service, "--traces", str(traces)]
    for name, value in (headers or {}).items():
        command += ["--header", f"{name}={value}"]
    done = subprocess.run(
        command, cwd=NODE_OTLP_DIR, capture_output=True, text=True, timeout=CLIENT_LIMIT_S, check=False
    )
    lines = done.stdout.strip().splitlines()
    assert done.returncode == 0 and lines, (
        f"send.mjs exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    )
    report: dict[str, Any] = json.loads(lines[-1])
    assert report["ok"], report.get("error")
    return report


# --------------------------------------------------------------------------- one comparable form


def _plain(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_plain(item) for item in value]
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    return value


def _attributes(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    return {key: _plain(value) for key, value in (attributes or {}).items()}


def sdk_view(span: ReadableSpan) -> dict[str, Any]:
    """A Python SDK span (recorded by a client, or decoded by the gateway) in the comparable form."""
    context, parent, scope = span.context, span.parent, span.instrumentation_scope
    assert context is not None
    return {
        "name": span.name,
        "trace_id": f"{context.trace_id:032x}",
        "span_id": f"{context.span_id:016x}",
        "parent_span_id": f"{parent.span_id:016x}" if parent is not None else None,
        "parent_is_remote": parent.is_remote if parent is not None else None,
        "kind": span.kind.value,
        "status": (span.status.status_code.value, span.status.description or None),
        "start_time": span.start_time,
        "end_time": span.end_time,
        "attributes": _attributes(span.attributes),
        "events": [(e.name, e.timestamp, _attributes(e.attributes)) for e in span.events],
        "links": [
            (f"{x.context.trace_id:032x}", f"{x.context.span_id:016x}", x.context.is_remote, _attributes(x.attributes))
            for x in span.links
        ],
        "dropped": [span.dropped_attributes, span.dropped_events, span.dropped_links],
        "scope": (scope.name, scope.version or None) if scope is not None else None,
        "resource": _attributes(span.resource.attributes),
    }


def node_view(span: Mapping[str, Any]) -> dict[str, Any]:
    """A span send.mjs recorded, in the comparable form (JS SpanKind numbers are Python's; status codes too)."""
    return {
        "name": span["name"],
        "trace_id": span["trace_id"],
        "span_id": span["span_id"],
        "parent_span_id": span["parent_span_id"],
        "parent_is_remote": span["parent_is_remote"],
        "kind": span["kind"],
        "status": (span["status"]["code"], span["status"]["message"] or None),
        "start_time": int(span["start_time"]),
        "end_time": int(span["end_time"]),
        "attributes": _attributes(span["attributes"]),
        "events": [(e["name"], int(e["time"]), _attributes(e["attributes"])) for e in span["events"]],
        "links": [(x["trace_id"], x["span_id"], x["is_remote"], _attributes(x["attributes"])) for x in span["links"]],
        "dropped": list(span["dropped"]),
        "scope": (span["scope"]["name"], span["scope"]["version"] or None),
        "resource": _attributes(span["resource"]),
    }


def by_span_id(views: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {view["span_id"]: view for view in views}
