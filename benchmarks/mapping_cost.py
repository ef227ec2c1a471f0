"""What `map_span` costs per span, in this process, for the work tree and for an earlier commit side by side.

Usage: python benchmarks/mapping_cost.py [--ref main] [--spans 2000] [--rounds 7] [--profile tree|ref]

Two workloads: the realistic agent traces of `benchmarks/workload.py` (~1 KB GenAI messages) and a small-span list
(HTTP server and client, DB, cache, framework spans with a handful of short attributes, beside a few GenAI spans:
what agents also make). Each round maps every span of a workload once with the default options, the work tree's
mapping and the reference's alternately (interleaved, so machine noise hits both alike); the best round of each is
reported in CPU µs/span (the thread's CPU time, not wall time: other work on a shared machine does not count), with the ratio work tree / reference. `--profile` runs cProfile over the work tree's (or the
reference's) mapping instead and prints the top functions by self time. The reference is `src/prefactor_otel` as
committed at `--ref`, imported under another package name (as benchmarks/mapping_diff.py does). Nothing leaves the
process; the figures are noisy on a shared machine, so read the ratio, not the absolute times.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import os
import pstats
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.trace import SpanKind, Status, StatusCode

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from mapping_diff import load_ref
from workload import SERVICE, SpanSource

import prefactor_otel.mapping as current

_ROUTES = ("/api/orders/{id}", "/api/users/{id}", "/healthz", "/api/search", "/api/cart/items")
_TABLES = ("orders", "users", "sessions", "inventory")


class _Collect(SpanProcessor):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def on_end(self, span: ReadableSpan) -> None:
        self.spans.append(span)


def small_spans(count: int, seed: int = 5, resource: Resource = SERVICE) -> list[ReadableSpan]:
    """Mostly non-GenAI spans with a few short attributes: an HTTP request served, its DB queries, a cache read, an
    outgoing HTTP call, a framework step; one request in ten also makes a short model call. One error in 25."""
    rng = random.Random(seed)
    collect = _Collect()
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(collect)
    web = provider.get_tracer("opentelemetry.instrumentation.fastapi", "0.48b0")
    db = provider.get_tracer("opentelemetry.instrumentation.asyncpg", "0.48b0")
    http = provider.get_tracer("opentelemetry.instrumentation.httpx", "0.48b0")
    llm = provider.get_tracer("opentelemetry.instrumentation.openai_v2", "2.1b0")
    for _ in range(count):  # bounded: each request makes several spans
        if len(collect.spans) >= count:
            break
        route = rng.choice(_ROUTES)
        with web.start_as_current_span(
            f"GET {route}",
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": "GET",
                "http.route": route,
                "url.scheme": "https",
                "url.path": route.replace("{id}", str(rng.randrange(10**5))),
                "server.address": "shop.example.com",
                "server.port": 443,
                "client.address": f"10.0.{rng.randrange(256)}.{rng.randrange(256)}",
                "user_agent.original": "python-httpx/0.27.0",
            },
        ) as request:
            with web.start_as_current_span(
                "auth middleware", attributes={"app.user.tier": rng.choice(("free", "pro"))}
            ):
                pass
            table = rng.choice(_TABLES)
            for _ in range(rng.randint(1, 3)):
                with db.start_as_current_span(
                    f"SELECT {table}",
                    kind=SpanKind.CLIENT,
                    attributes={
                        "db.system.name": "postgresql",
                        "db.namespace": "shop",
                        "db.operation.name": "SELECT",
                        "db.collection.name": table,
                        "db.query.text": f"SELECT * FROM {table} WHERE id = $1",
                        "server.address": "db.internal",
                        "server.port": 5432,
                    },
                ):
                    pass
            with db.start_as_current_span(
                "GET", kind=SpanKind.CLIENT, attributes={"db.system.name": "redis", "db.operation.name": "GET"}
            ):
                pass
            with http.start_as_current_span(
                "POST",
                kind=SpanKind.CLIENT,
                attributes={
                    "http.request.method": "POST",
                    "url.full": "https://payments.example.com/v1/charges",
                    "server.address": "payments.example.com",
                    "http.response.status_code": 200,
                },
            ):
                pass
            if rng.random() < 0.1:
                with llm.start_as_current_span(
                    "chat gpt-4o-mini",
                    kind=SpanKind.CLIENT,
                    attributes={
                        "gen_ai.operation.name": "chat",
                        "gen_ai.provider.name": "openai",
                        "gen_ai.request.model": "gpt-4o-mini",
                        "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
                        "gen_ai.usage.input_tokens": rng.randrange(20, 200),
                        "gen_ai.usage.output_tokens": rng.randrange(5, 50),
                    },
                ):
                    pass
            status = 500 if rng.random() < 0.04 else 200
            request.set_attribute("http.response.status_code", status)
            if status == 500:
                request.set_status(Status(StatusCode.ERROR))
    return collect.spans[:count]


def workloads(count: int) -> dict[str, list[ReadableSpan]]:
    return {"realistic": SpanSource(seed=3).spans(count)[:count], "small spans": small_spans(count)}


def _round(mapping: Any, options: Any, spans: list[ReadableSpan]) -> float:
    map_span = mapping.map_span
    gc.collect()
    start = time.thread_time_ns()
    for span in spans:
        map_span(span, options)
    return (time.thread_time_ns() - start) / 1000 / len(spans)


def measure(reference: Any, spans: list[ReadableSpan], rounds: int) -> tuple[float, float]:
    """Best µs/span of the work tree and the reference, rounds interleaved."""
    tree_options, ref_options = current.MappingOptions(), reference.MappingOptions()
    _round(current, tree_options, spans[:200])  # warm both (caches, first-second formatting)
    _round(reference, ref_options, spans[:200])
    tree, ref = [], []
    for index in range(rounds):
        pair = [(current, tree_options, tree), (reference, ref_options, ref)]
        for mapping, options, out in pair if index % 2 == 0 else reversed(pair):
            out.append(_round(mapping, options, spans))
    return min(tree), min(ref)


def profile(mapping: Any, spans: list[ReadableSpan], top: int) -> None:
    options = mapping.MappingOptions()
    _round(mapping, options, spans[:200])
    profiler = cProfile.Profile()
    profiler.enable()
    for span in spans:
        mapping.map_span(span, options)
    profiler.disable()
    stats = pstats.Stats(profiler)
    rows = sorted(stats.stats.items(), key=lambda item: item[1][2], reverse=True)[:top]  # type: ignore[attr-defined]
    print(f"  {'self µs/span':>12} {'cum µs/span':>12} {'calls/span':>10}  function")
    for (filename, line, function), (_, calls, self_time, cumulative, _) in rows:
        where = f"{Path(filename).parent.name}/{Path(filename).name}:{line}({function})"
        print(
            f"  {self_time * 1e6 / len(spans):12.2f} {cumulative * 1e6 / len(spans):12.2f} "
            f"{calls / len(spans):10.2f}  {where}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", default="main", help="the commit to compare with (default main)")
    parser.add_argument("--spans", type=int, default=2000, help="spans per workload")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds per contender (best is reported)")
    parser.add_argument("--profile", choices=("tree", "ref"), help="cProfile one side instead of timing both")
    parser.add_argument("--top", type=int, default=25, help="functions listed by --profile")
    args = parser.parse_args(argv)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    with tempfile.TemporaryDirectory(prefix="mapping-cost-") as tmp:
        reference = load_ref(args.ref, Path(tmp))
        print(f"map_span, default options; load average {load:.2f}; {args.spans} spans per workload")
        for label, spans in workloads(args.spans).items():
            if args.profile:
                print(f"{label}: cProfile of the {'work tree' if args.profile == 'tree' else args.ref}")
                profile(current if args.profile == "tree" else reference, spans, args.top)
                continue
            tree, ref = measure(reference, spans, args.rounds)
            print(
                f"{label:>12}: work tree {tree:6.2f} µs/span   {args.ref} {ref:6.2f} µs/span   ratio {tree / ref:.3f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
