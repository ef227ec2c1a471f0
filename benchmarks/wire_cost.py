"""Bytes on the wire per span, and the CPU of encoding and compressing them, beside OTLP's protobuf for the same spans.

    python benchmarks/wire_cost.py [--spans 3000] [--repeat 5]

The spans (the benchmark workload, `workload.SpanSource`) go through a real `PrefactorSpanExporter` into the local
server (`DevServer`, in this process, uncompressed so the bodies can be taken as they are), in batches of 512 as
BatchSpanProcessor cuts them. Every bulk body the exporter sends is kept, and every item it encoded. Then, outside
the exporter and timed with `time.thread_time()` (the best of `repeat` passes):

- `encode`: `wire.encode_item` over every item, the bodies joined (what the send path does per request);
- each codec and level (identity, gzip 1/3/6, zstd 1/3 where a zstd codec is installed) over every body, as
  `transport.compression` would send it (bodies under its MIN_COMPRESS_BYTES go uncompressed);
- the same bodies with the schema set left out of every register after an agent's first (docs/wire.md,
  "The schema set"), to show what that saves;
- OTLP: `encode_spans(batch).SerializeToString()` per batch (what OTLPSpanExporter sends, uncompressed) and gzip
  of it (its `Compression.Gzip`, level 9 by default in the SDK: `gzip.compress`).

`measure(spans)` is the importable form (benchmarks/run.py uses it): it returns a dict of per-span figures, see
its docstring. Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "benchmarks") not in sys.path:
    sys.path.insert(0, str(ROOT / "benchmarks"))

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

    Codecs: "identity", "gzip-1", "gzip-3", "gzip-6", "zstd-1", "zstd-3" (zstd only with a codec installed).
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
    for level in (1, 3):
        zstd = compression.zstd_compressor(level)
        if zstd is not None:
            codecs[f"zstd-{level}"] = zstd

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


def exporter_cpu(
    spans: Sequence[ReadableSpan], settings: Sequence[str] = ("none", "gzip", "zstd"), *, runs: int = 5
) -> dict[str, float]:
    """The whole exporter's CPU per span (µs: thread time of export() and shutdown(), the median of `runs`
    interleaved runs, a fresh exporter each) for each PREFACTOR_COMPRESSION setting, into the benchmark's fast bulk
    sink (sinks.py, in its own process); plus "otlp", OTLPSpanExporter into the fast OTLP sink, for the ratio."""
    import subprocess
    from statistics import median

    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    from prefactor_otel.model import ids

    spans = list(spans)
    batches = [spans[i : i + BATCH] for i in range(0, len(spans), BATCH)]
    timings: dict[str, list[float]] = {name: [] for name in (*settings, "otlp")}
    agent_id = ids.encode(int(time.time() * 1000), 4242, 0x5EED)
    child = subprocess.Popen(
        [sys.executable, "-c", _SINK_CHILD],
        cwd=ROOT / "benchmarks",
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        urls = json.loads(child.stdout.readline())

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
    finally:
        if child.stdin is not None:
            child.stdin.close()
        child.wait(timeout=30)
    return {name: median(values) for name, values in timings.items()}


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
    parser.add_argument(
        "--register-without-schema", action="store_true", help="a local server that takes registers without the set"
    )
    args = parser.parse_args(argv)
    spans = SpanSource(seed=1).spans(args.spans)
    result = measure(spans, repeat=args.repeat, register_without_schema=args.register_without_schema)
    if args.exporter:
        result["exporter_cpu_us"] = exporter_cpu(spans)
    print(json.dumps(result, indent=1) if args.json else table(result))
    if args.exporter and not args.json:
        cpu = result["exporter_cpu_us"]
        print("\nwhole exporter, µs/span (median): " + ", ".join(f"{k} {v:.1f}" for k, v in cpu.items()))
        print("ratio to OTLP: " + ", ".join(f"{k} {v / cpu['otlp']:.2f}x" for k, v in cpu.items() if k != "otlp"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
