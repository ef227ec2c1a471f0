"""OTLP/gRPC in front of the gateway: `opentelemetry.proto.collector.trace.v1.TraceService/Export` on grpcio.

`TraceExportService` is a `TraceServiceServicer` (opentelemetry-proto's generated base class); `build_server` puts
it on a `grpc.Server` bound to the host and port given (port 0: a free one; the bound port is returned).

Answers, as OTLP/gRPC specifies them:
- OK with an ExportTraceServiceResponse (`partial_success` when spans were rejected);
- UNAUTHENTICATED: no or unknown ingress token in the `authorization` metadata (`Bearer <token>`), checked before
  the message is decoded (the gateway's routes, in constant time; `Gateway.accept` checks it again);
- INVALID_ARGUMENT: the message is not an ExportTraceServiceRequest. The method is registered with no request
  deserializer, so the servicer gets the raw bytes and decodes them with `otlp.parse_protobuf`: grpcio's own
  deserializer would answer INTERNAL for a bad message, which no OTLP client reads as "bad input";
- RESOURCE_EXHAUSTED (the gateway's queue is full) or UNAVAILABLE (its log or spool is full, it is starting or
  stopping), from `Overloaded`, each with a `google.rpc.RetryInfo` saying when to retry. OTLP clients retry
  RESOURCE_EXHAUSTED only when a RetryInfo is present, and they look for it in two places: the Collector's (Go)
  exporter in the status details (`grpc-status-details-bin`: a `google.rpc.Status` whose details hold the
  RetryInfo), the Python SDK's exporter in the trailing metadata `google.rpc.retryinfo-bin` (the RetryInfo alone).
  Both are sent. The two messages are encoded here from protobuf's own well-known types (`Any`, `Duration`) and the
  codec's `google.rpc.Status`, so the gateway extra needs no googleapis-common-protos;
- RESOURCE_EXHAUSTED as well, from grpcio itself, for a message over `max_request_bytes` (its
  `grpc.max_receive_message_length`) and for RPCs beyond `max_pending` at once (`maximum_concurrent_rpcs`).
gzip request compression is grpcio's: it decompresses before the size check.

A refused request never reaches `Gateway.accept` (or `accept` refuses it whole). Each refusal is logged, one line
per kind, rate-limited; never a token or a metadata value.

Threads: `Export` runs on the server's thread pool (`max_pending` threads, and grpcio admits at most `max_pending`
RPCs at once: an admitted RPC never waits for a thread) and blocks there in `Gateway.accept` until the spans are
durable. The servicer holds no state of its own.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NoReturn

import grpc  # type: ignore[import-untyped]  # grpcio ships no type information
from google.protobuf.any_pb2 import Any as AnyMessage  # type: ignore[import-untyped]  # no inline types
from google.protobuf.duration_pb2 import Duration  # type: ignore[import-untyped]
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc import TraceServiceServicer

from prefactor_otel._logging import RateLimitedLog, logger
from prefactor_otel.gateway.otlp import OtlpDecodeError, export_response, parse_protobuf, status_body
from prefactor_otel.gateway.service import Gateway, Overloaded, Unauthenticated

SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"
RETRY_INFO_TYPE_URL = "type.googleapis.com/google.rpc.RetryInfo"
STATUS_DETAILS_KEY = "grpc-status-details-bin"
RETRY_INFO_KEY = "google.rpc.retryinfo-bin"
# As many threads as RPCs admitted at once: an admitted RPC never waits in the executor's queue, so grpcio's own
# RESOURCE_EXHAUSTED (which carries no RetryInfo, so the Collector would not retry it) comes only when that many
# RPCs are all inside `Gateway.accept` at once.
DEFAULT_MAX_PENDING = 32


def _length_delimited(field_number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field (wire type 2): tag, varint length, payload."""
    out = bytearray()
    for value in ((field_number << 3) | 2, len(payload)):
        while value > 0x7F:
            out.append((value & 0x7F) | 0x80)
            value >>= 7
        out.append(value)
    return bytes(out) + payload


def retry_info(retry_after_s: float) -> bytes:
    """A serialized google.rpc.RetryInfo: `retry_delay` (field 1), a Duration."""
    delay = Duration()
    delay.FromNanoseconds(int(max(retry_after_s, 0.0) * 1e9))
    return _length_delimited(1, delay.SerializeToString())


def status_details(code: int, message: str, retry_after_s: float) -> bytes:
    """A serialized google.rpc.Status (the codec's) with one detail (field 3, an Any): the RetryInfo."""
    detail = AnyMessage(type_url=RETRY_INFO_TYPE_URL, value=retry_info(retry_after_s))
    # Fields appended to a serialized message are part of it: the repeated `details` field added to the Status.
    return status_body(code, message, json=False) + _length_delimited(3, detail.SerializeToString())


class TraceExportService(TraceServiceServicer):
    """The OTLP trace service over the gateway. `Export` takes the request's raw bytes (module docstring)."""

    def __init__(self, gateway: Gateway, log: RateLimitedLog | None = None) -> None:
        self._gateway = gateway
        self._log = log or RateLimitedLog(interval=10.0)

    def Export(self, request: bytes, context: Any) -> ExportTraceServiceResponse:  # the proto's name
        authorization = None
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                authorization = value if isinstance(value, str) else None
                break
        try:
            self._gateway.authenticate(authorization)  # before the message is decoded
        except Unauthenticated:
            self._abort(context, grpc.StatusCode.UNAUTHENTICATED, "unauthenticated", "no or unknown ingress token")
        try:
            acceptance = self._gateway.accept(authorization, parse_protobuf(request))
        except OtlpDecodeError as exc:
            self._abort(context, grpc.StatusCode.INVALID_ARGUMENT, "undecodable", str(exc))
        except Unauthenticated:
            self._abort(context, grpc.StatusCode.UNAUTHENTICATED, "unauthenticated", "no or unknown ingress token")
        except Overloaded as exc:
            code = grpc.StatusCode.UNAVAILABLE if exc.unavailable else grpc.StatusCode.RESOURCE_EXHAUSTED
            kind = "unavailable" if exc.unavailable else "overloaded"
            message = f"{kind}: {exc.reason}"
            metadata = (
                (STATUS_DETAILS_KEY, status_details(code.value[0], message, exc.retry_after_s)),
                (RETRY_INFO_KEY, retry_info(exc.retry_after_s)),
            )
            self._abort(context, code, kind, message, metadata)
        except Exception:  # a bug of ours: answered and logged, and the next RPC is served as usual
            logger.exception("Prefactor gateway: internal error handling %s/Export", SERVICE)
            self._abort(context, grpc.StatusCode.INTERNAL, "internal", "internal error")
        return export_response(acceptance.rejected_spans, acceptance.message)

    def _abort(
        self, context: Any, code: Any, kind: str, message: str, metadata: tuple[tuple[str, bytes], ...] = ()
    ) -> NoReturn:
        """Log (one line per kind, rate-limited) and end the RPC with `code`: raises, as grpcio's abort does."""
        self._log.log(
            logging.WARNING,
            f"grpc {code.name} {kind}",
            "Prefactor gateway: refused gRPC Export from %s: %s %s (%s)",
            _peer_host(context.peer()),
            code.name,
            kind,
            message,
        )
        if metadata:
            context.set_trailing_metadata(metadata)
        context.abort(code, message)
        raise AssertionError("grpcio's abort returns only by raising")


def _peer_host(peer: str) -> str:
    """`ipv4:127.0.0.1:5555` -> `127.0.0.1` (the port says nothing useful in a log line)."""
    address = peer.split(":", 1)[1] if ":" in peer else peer
    return address.rsplit(":", 1)[0] if address.count(":") == 1 or address.startswith("[") else address


def build_server(
    gateway: Gateway,
    *,
    host: str,
    port: int,
    max_request_bytes: int,
    max_pending: int = DEFAULT_MAX_PENDING,
    log: RateLimitedLog | None = None,
) -> tuple[Any, int]:
    """A grpc.Server (not started) with the trace service, bound to host:port; returns it and the bound port.
    Raises OSError when the address cannot be bound."""
    service = TraceExportService(gateway, log)
    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Export": grpc.unary_unary_rpc_method_handler(
                service.Export,
                request_deserializer=None,  # raw bytes: decoded by the servicer (module docstring)
                response_serializer=ExportTraceServiceResponse.SerializeToString,
            )
        },
    )
    server = grpc.server(
        ThreadPoolExecutor(max_workers=max_pending, thread_name_prefix="prefactor-gateway-grpc"),
        handlers=(handler,),
        options=(
            ("grpc.max_receive_message_length", max_request_bytes),
            ("grpc.so_reuseport", 0),  # a port in use is an error, never shared with another process
        ),
        maximum_concurrent_rpcs=max_pending,
    )
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as exc:  # grpcio raises RuntimeError when it cannot bind
        raise OSError(f"cannot listen for gRPC on {address}: {exc}") from None
    if not bound:
        raise OSError(f"cannot listen for gRPC on {address}")
    return server, int(bound)
