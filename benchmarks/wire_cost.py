"""Bytes on the wire per span, and the CPU of encoding and compressing them, beside OTLP's protobuf for the same spans.

    python benchmarks/wire_cost.py [--spans 3000] [--repeat 5]

The spans (the benchmark workload, `workload.SpanSource`) go through a real `PrefactorSpanExporter` into the local
server (`DevServer`, in this process, uncompressed so the bodies can be taken as they are), in batches of 512 as
BatchSpanProcessor cuts them. Every bulk body the exporter sends is kept, and every item it encoded. Then, outside
the exporter and timed with `time.thread_time()` (the best of `repeat` passes):

- `encode`: `wire.encode_item` over every item, the bodies joined (what the send path does per request);
- each codec and level (identity, gzip 1/3/6, zstd 3/1 and the fast levels -1/-3/-5/-7/-10 where a zstd codec is
  installed) over every body, as `transport.compression` would send it (bodies under its MIN_COMPRESS_BYTES go
  uncompressed);
- the same bodies with the schema set left out of every register after an agent's first (docs/wire.md,
  "The schema set"), to show what that saves;
- OTLP: `encode_spans(batch).SerializeToString()` per batch (what OTLPSpanExporter sends, uncompressed) and gzip
  of it (its `Compression.Gzip`, level 9 by default in the SDK: `gzip.compress`).

`measure(spans)` is the importable form (benchmarks/run.py uses it): it returns a dict of per-span figures, see
its docstring. `--exporter` adds the whole exporter's CPU per compression setting beside OTLP's; `--http` the
request itself beside its floor (`http_cost`: the same compressed bodies POSTed by a bare `httpx.Client.post`, by
`http.client`, and by our transport, into the benchmark's fast bulk sink). Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import gzip
import json
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "benchmarks") not in sys.path:
    sys.path.insert(0, str(ROOT / "benchmarks"))

import httpx
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan

from prefactor_otel import PrefactorSpanExporter
from prefactor_otel.devserver import DevServer
from prefactor_otel.transport import compression, wire

BATCH = 512


def _captured(
    spans: Sequence[ReadableSpan], batch_size: int, register_without_schema: bool
) -> tuple[list[bytes], list[list[dict[str, Any]]]]:
    """Every bulk body a real exporter sends for `spans`, and the items of each (as the planner built them)."""
    bodies: list[bytes] = []
    items: list[list[dict[str, Any]]] = []
    with DevServer(register_without_schema=register_without_schema) as server:
        exporter = PrefactorSpanExporter(
            api_url=server.url,
            api_token=server.token,
            agent_id=server.agent_id,
            finish_grace_seconds=0,
            compression="none",
            schema_once=register_without_schema,
            spool=False,
            control_poll_interval=0,
        )
        transport = exporter._transport
        delivery = exporter._delivery
        assert transport is not None and delivery is not None, exporter
        send_bulk = transport.send_bulk
        encode = delivery._encode
        planned: dict[bytes, dict[str, Any]] = {}

        def keep_items(planned_items: Any, source: Any) -> Any:
            encoded, sendable = encode(planned_items, source)
            for data, item in zip(encoded, sendable, strict=True):
                planned[data] = item.body
            return encoded, sendable

        def keep_body(encoded_items: Sequence[bytes], keys: Sequence[str], deadline: float) -> Any:
            bodies.append(wire.bulk_body(encoded_items))
            items.append([planned[data] for data in encoded_items])  # as planned: with the schema set
            return send_bulk(encoded_items, keys, deadline)

        delivery._encode = keep_items  # type: ignore[method-assign]
        transport.send_bulk = keep_body  # type: ignore[method-assign]
        for start in range(0, len(spans), batch_size):
            exporter.export(spans[start : start + batch_size])
        exporter.shutdown()
    return bodies, items


def _best(repeat: int, work: Callable[[], int]) -> tuple[float, int]:
    """The least thread CPU seconds of `repeat` runs of `work`, and what it returned."""
    best, result = float("inf"), 0
    for _ in range(repeat):
        started = time.thread_time()
        result = work()
        best = min(best, time.thread_time() - started)
    return best, result


def _without_repeated_schemas(items: list[list[dict[str, Any]]]) -> list[bytes]:
    """The bodies again, each register after the first of its agent without the schema set."""
    seen: set[object] = set()
    bodies = []
    for request in items:
        encoded = []
        for item in request:
            if "agent_schema_version" in item:
                agent = item.get("agent_id")
                if agent in seen:
                    item = {key: value for key, value in item.items() if key != "agent_schema_version"}
                seen.add(agent)
            encoded.append(wire.encode_item(item))
        bodies.append(wire.bulk_body(encoded))
    return bodies


def measure(
    spans: Sequence[ReadableSpan], *, batch_size: int = BATCH, repeat: int = 5, register_without_schema: bool = False
) -> dict[str, Any]:
    """Per-span figures for `spans` (a list of ended spans, e.g. `SpanSource(seed=1).spans(3000)`):

    `{"spans": n, "requests": r, "bytes": {codec: bytes per span}, "cpu_us": {codec: µs per span},
      "encode_us": µs per span, "otlp_bytes": protobuf bytes per span, "otlp_gzip_bytes": ...,
      "otlp_encode_us": µs per span, "schema_once_bytes": {codec: bytes per span},
      "schema_once_cpu_us": {codec: µs per span}}`

    Codecs: "identity", "gzip-1", "gzip-3", "gzip-6", "zstd-3", "zstd-1", and zstd's fast levels -1 ... -10 as
    "zstd-fast1" ... "zstd-fast10" (zstd only with a codec installed; transport.compression.ZSTD_LEVEL is the
    default).
    `cpu_us[codec]` is compressing only; the send path's total is `encode_us + cpu_us[codec]`. The bodies are those
    sent to the local server by an exporter with its defaults (every register carries the schema set), or with
    `register_without_schema` by one with PREFACTOR_SCHEMA_ONCE on to a server that takes that (the exporter leaves
    the set out of registers after the first delivered). `schema_once_*` is the ideal: every
    register after its agent's first without the set.
    """
    spans = list(spans)
    count = len(spans)
    bodies, items = _captured(spans, batch_size, register_without_schema)
    flat = [item for request in items for item in request]

    def encode_all() -> int:
        return sum(len(wire.bulk_body([wire.encode_item(item) for item in request])) for request in items)

    encode_s, _ = _best(repeat, encode_all)
    del flat

    codecs: dict[str, Callable[[bytes], bytes]] = {"identity": lambda body: body}
    for level in (1, 3, 6):
        codecs[f"gzip-{level}"] = lambda body, level=level: compression.gzip_compress(body, level)
    for level in (3, 1, -1, -3, -5, -7, -10):
        zstd = compression.zstd_compressor(level)
        if zstd is not None:
            codecs[f"zstd-{level}" if level > 0 else f"zstd-fast{-level}"] = zstd

    def sized(codec: Callable[[bytes], bytes], of: list[bytes]) -> Callable[[], int]:
        small = compression.MIN_COMPRESS_BYTES
        return lambda: sum(len(body) if len(body) < small else len(codec(body)) for body in of)

    once = _without_repeated_schemas(items)
    result: dict[str, Any] = {
        "spans": count,
        "requests": len(bodies),
        "encode_us": encode_s / count * 1e6,
        "bytes": {},
        "cpu_us": {},
        "schema_once_bytes": {},
        "schema_once_cpu_us": {},
    }
    for name, codec in codecs.items():
        seconds, size = _best(repeat, sized(codec, bodies))
        result["bytes"][name] = size / count
        result["cpu_us"][name] = seconds / count * 1e6
        seconds, size = _best(repeat, sized(codec, once))
        result["schema_once_bytes"][name] = size / count
        result["schema_once_cpu_us"][name] = seconds / count * 1e6

    batches = [spans[i : i + batch_size] for i in range(0, count, batch_size)]
    otlp_s, otlp_size = _best(repeat, lambda: sum(len(encode_spans(b).SerializeToString()) for b in batches))
    result["otlp_bytes"] = otlp_size / count
    result["otlp_encode_us"] = otlp_s / count * 1e6
    protobufs = [encode_spans(b).SerializeToString() for b in batches]
    result["otlp_gzip_bytes"] = sum(len(gzip.compress(p)) for p in protobufs) / count
    return result


# The fast sinks (sinks.py) in a child process, their bulk sink taught to inflate a body by its magic bytes (it reads
# no Content-Encoding header), so compressed requests get the same well-formed answer as plain ones.
_SINK_CHILD = """
import sys, zlib, zstandard, sinks
plain = sinks.bulk_answer
def inflate(body):
    if body[:2] == b"\\x1f\\x8b":
        return zlib.decompress(body, 31)
    if body[:4] == b"\\x28\\xb5\\x2f\\xfd":
        return zstandard.ZstdDecompressor().decompress(body)
    return body
sinks.bulk_answer = lambda body: plain(inflate(body))
sys.exit(sinks.main(["--max-seconds", "900"]))
"""


@contextlib.contextmanager
def _sink_child() -> Iterator[dict[str, str]]:
    """The fast sinks (sinks.py) in a process of their own, for as long as the block runs: their URLs."""
    child = subprocess.Popen(
        [sys.executable, "-c", _SINK_CHILD],
        cwd=ROOT / "benchmarks",
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        yield json.loads(child.stdout.readline())
    finally:
        if child.stdin is not None:
            child.stdin.close()  # the sink exits when its parent's pipe closes
        child.wait(timeout=30)


def exporter_cpu(
    spans: Sequence[ReadableSpan], settings: Sequence[str] = ("none", "gzip", "zstd"), *, runs: int = 5
) -> dict[str, float]:
    """The whole exporter's CPU per span (µs: thread time of export() and shutdown(), the median of `runs`
    interleaved runs, a fresh exporter each) for each PREFACTOR_COMPRESSION setting, into the benchmark's fast bulk
    sink (sinks.py, in its own process); plus "otlp", OTLPSpanExporter into the fast OTLP sink, for the ratio."""
    from statistics import median

    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    from prefactor_otel.model import ids

    spans = list(spans)
    batches = [spans[i : i + BATCH] for i in range(0, len(spans), BATCH)]
    timings: dict[str, list[float]] = {name: [] for name in (*settings, "otlp")}
    agent_id = ids.encode(int(time.time() * 1000), 4242, 0x5EED)
    with _sink_child() as urls:

        def one(name: str) -> float:
            exporter: Any
            if name == "otlp":
                exporter = OTLPSpanExporter(endpoint=urls["otlp"] + "/v1/traces", timeout=10)
            else:
                exporter = PrefactorSpanExporter(
                    api_url=urls["bulk"],
                    api_token="pf_bench_token",
                    agent_id=agent_id,
                    finish_grace_seconds=0,
                    compression=name,
                    spool=False,
                    control_poll_interval=0,
                )
            started = time.thread_time()
            for batch in batches:
                exporter.export(batch)
            exporter.shutdown()
            return (time.thread_time() - started) / len(spans) * 1e6

        for name in timings:  # warm-up: imports, first connections
            one(name)
        for _ in range(runs):
            for name in timings:
                timings[name].append(one(name))
    return {name: median(values) for name, values in timings.items()}


def http_cost(spans: Sequence[ReadableSpan], *, runs: int = 15) -> dict[str, float]:
    """The HTTP request itself, thread CPU µs per span (the least of `runs` interleaved passes over every request the
    exporter sends for `spans`), into the fast bulk sink (sinks.py, its own process; the answer ~130 B per item):

    - "httpx_post": `httpx.Client().post(...).content` of the bodies as the exporter compresses them (the floor with
      the HTTP library the exporter uses), with the exporter's headers;
    - "http_client": the stdlib's `http.client` doing the same (the floor of any Python HTTP client here);
    - "request": the exporter's `BulkTransport._request` (deadline, size cap, instrumentation suppressed);
    - "send_bulk": `BulkTransport.send_bulk` from the encoded items: the body joined, compressed, sent, the answer
      read and judged per item (what the export path pays per request);
    - "compress", "answer": the compression and the answer's reading alone, for the remainder.
    """
    import http.client

    spans = list(spans)
    count = len(spans)
    _, items = _captured(spans, BATCH, False)
    encoded = [[wire.encode_item(item) for item in request] for request in items]
    keys = [[item["idempotency_key"] for item in request] for request in items]
    with _sink_child() as urls:
        exporter = PrefactorSpanExporter(
            api_url=urls["bulk"],
            api_token="pf_bench_token",
            agent_id="01m982a39700044j0000000000000qqd",
            spool=False,
            control_poll_interval=0,
        )
        transport = exporter._transport
        assert transport is not None
        sent = [transport.compression.compress(wire.bulk_body(request)) for request in encoded]
        bodies = [body for _, body in sent]
        headers = [transport._encoded_headers.get(encoding, transport._headers) for encoding, _ in sent]
        url = transport._config.api_base + "/bulk"
        parsed = urllib.parse.urlsplit(url)
        bare = httpx.Client()
        connection = http.client.HTTPConnection(parsed.hostname or "127.0.0.1", parsed.port)
        answers = [transport._request("/bulk", body, time.monotonic() + 10, encoding=e)[1] for e, body in sent]

        def httpx_post() -> None:
            for body, head in zip(bodies, headers, strict=True):
                bare.post(url, content=body, headers=head).read()

        def stdlib() -> None:
            for body, head in zip(bodies, headers, strict=True):
                connection.request("POST", parsed.path, body=body, headers=head)
                connection.getresponse().read()

        def request() -> None:
            for encoding, body in sent:
                transport._request("/bulk", body, time.monotonic() + 10, encoding=encoding)

        def send_bulk() -> None:
            for request_items, request_keys in zip(encoded, keys, strict=True):
                result = transport.send_bulk(request_items, request_keys, time.monotonic() + 10)
                assert result.error is None, result

        def compress() -> None:
            for request_items in encoded:
                transport.compression.compress(wire.bulk_body(request_items))

        def answer() -> None:
            for body, request_keys in zip(answers, keys, strict=True):
                transport._answers.bulk_outcomes(200, body, request_keys)

        passes = {
            "httpx_post": httpx_post,
            "http_client": stdlib,
            "request": request,
            "send_bulk": send_bulk,
            "compress": compress,
            "answer": answer,
        }
        best = {name: float("inf") for name in passes}
        for work in passes.values():  # warm-up: connections, first calls
            work()
        gc.collect()
        gc.freeze()
        try:
            for _ in range(runs):
                for name, work in passes.items():
                    started = time.thread_time()
                    work()
                    best[name] = min(best[name], time.thread_time() - started)
        finally:
            gc.unfreeze()
        exporter.shutdown()
        bare.close()
        connection.close()
    result = {name: seconds / count * 1e6 for name, seconds in best.items()}
    result["requests"] = len(bodies)
    result["spans"] = count
    return result


def http_table(result: dict[str, float]) -> str:
    per_request = result["spans"] / result["requests"]
    lines = [
        f"HTTP, {result['spans']:.0f} spans in {result['requests']:.0f} requests (thread CPU, least of the passes):",
        "",
        "| pass | µs/span | µs/request | x httpx post |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name in ("http_client", "httpx_post", "request", "compress", "answer", "send_bulk"):
        value = result[name]
        lines.append(f"| {name} | {value:.2f} | {value * per_request:.0f} | {value / result['httpx_post']:.2f} |")
    rest = result["send_bulk"] - result["request"] - result["compress"] - result["answer"]
    lines.append(f"\nsend_bulk - request - compress - answer = {rest:.2f} µs/span (the body's join, counters, wiring)")
    return "\n".join(lines)


def table(result: dict[str, Any]) -> str:
    otlp = result["otlp_bytes"]
    lines = [
        f"{result['spans']} spans, {result['requests']} bulk requests; encode {result['encode_us']:.2f} µs/span; "
        f"OTLP protobuf {otlp:.0f} B/span (gzip {result['otlp_gzip_bytes']:.0f}), "
        f"its encoding {result['otlp_encode_us']:.2f} µs/span",
        "",
        "| codec | bytes/span | x OTLP protobuf | compress µs/span | encode+compress µs/span "
        "| schema once: bytes/span | schema once: compress µs/span |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, size in result["bytes"].items():
        cpu = result["cpu_us"][name]
        once, once_cpu = result["schema_once_bytes"][name], result["schema_once_cpu_us"][name]
        lines.append(
            f"| {name} | {size:.0f} | {size / otlp:.2f} | {cpu:.2f} | {result['encode_us'] + cpu:.2f} "
            f"| {once:.0f} | {once_cpu:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from workload import SpanSource

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spans", type=int, default=3000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--exporter", action="store_true", help="also the whole exporter's CPU per setting")
    parser.add_argument("--http", action="store_true", help="also the HTTP request beside its floor (http_cost)")
    parser.add_argument(
        "--register-without-schema", action="store_true", help="a local server that takes registers without the set"
    )
    args = parser.parse_args(argv)
    spans = SpanSource(seed=1).spans(args.spans)
    result = measure(spans, repeat=args.repeat, register_without_schema=args.register_without_schema)
    if args.exporter:
        result["exporter_cpu_us"] = exporter_cpu(spans)
    if args.http:
        result["http_us"] = http_cost(spans)
    print(json.dumps(result, indent=1) if args.json else table(result))
    if args.exporter and not args.json:
        cpu = result["exporter_cpu_us"]
        print("\nwhole exporter, µs/span (median): " + ", ".join(f"{k} {v:.1f}" for k, v in cpu.items()))
        print("ratio to OTLP: " + ", ".join(f"{k} {v / cpu['otlp']:.2f}x" for k, v in cpu.items() if k != "otlp"))
    if args.http and not args.json:
        print("\n" + http_table(result["http_us"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
