"""What `map_span` costs per span, in this process, for the work tree and for an earlier commit side by side.

Usage: python benchmarks/mapping_cost.py [--ref main] [--spans 2000] [--rounds 7] [--profile tree|ref]

Two workloads: the realistic agent traces of `benchmarks/workload.py` (~1 KB GenAI messages) and its small-span
workload (HTTP server and client, DB, cache, framework spans with a handful of short attributes, beside a few GenAI
spans: what agents also make), the same spans `run.py` measures. Each round maps every span of a workload once with
the default options, the work tree's mapping and the reference's alternately (interleaved, so machine noise hits
both alike); the best round of each is reported in CPU µs/span (the thread's CPU time, not wall time: other work on
a shared machine does not count), with the ratio work tree / reference. `--profile` runs cProfile over the work
tree's (or the reference's) mapping instead and prints the top functions by self time. The reference is
`src/prefactor_otel` as committed at `--ref`, imported under another package name (as benchmarks/mapping_diff.py
does). Nothing leaves the process; the figures are noisy on a shared machine, so read the ratio, not the absolute
times.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from mapping_diff import load_ref
from workload import SpanSource

import prefactor_otel.mapping as current

_ROUTES = ("/api/orders/{id}", "/api/users/{id}", "/healthz", "/api/search", "/api/cart/items")
_TABLES = ("orders", "users", "sessions", "inventory")


class _Collect(SpanProcessor):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def on_end(self, span: ReadableSpan) -> None:
        self.spans.append(span)


def small_spans(count: int, seed: int = 5) -> list[ReadableSpan]:
    """The small-span workload of benchmarks/workload.py (what run.py measures), `count` spans of whole traces."""
    return SpanSource(seed=seed, workload="small").spans(count)[:count]


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
