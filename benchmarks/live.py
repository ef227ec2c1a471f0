"""Live runs: what PrefactorSpanProcessor costs the application's thread at a span start, what it costs per span in
all, and how soon a live span reaches the server.

Usage: python benchmarks/live.py [--quick] [--out PATH]

1. `on_start` per span, called directly on a real started SDK span (the start queue emptied between rounds, as
   the exporter's thread does), beside BatchSpanProcessor.on_start (a no-op: the floor of a processor call) and
   beside one dict assignment (what any bookkeeping on the application's thread would cost at least). A
   non-live and a live span cost the same here by design: `on_start` only appends; the live decision, the
   mapping and the request happen on the exporter's thread.
2. Application-thread time per span of a whole span (start + end, no attributes) through a TracerProvider with
   PrefactorSpanProcessor vs with BatchSpanProcessor(PrefactorSpanExporter) — the cost of seeing starts.
3. Delay from a live span's start to its arrival at the local server (the server's clock when it stored the span
   minus the span's start), median and worst of N, beside the BatchSpanProcessor's schedule delay (5 s): a
   live span must be there in about a second, not after a batch.
Figures are medians of several rounds; ratios are against the peer measured in the same run. 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from prefactor_otel import PrefactorSpanExporter, PrefactorSpanProcessor
from prefactor_otel.devserver import DevServer

AGENT = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "bench"}


def options(srv: DevServer) -> dict[str, Any]:
    return {
        "api_url": srv.url,
        "api_token": srv.token,
        "agent_id": srv.agent_id,
        "environment_id": srv.environment_id,
        "environ": {},
        "spool": False,
    }


def per_call_ns(call: Any, arg: Any, calls: int, reset: Any) -> float:
    best = []
    for _ in range(7):
        reset()
        start = time.perf_counter_ns()
        for _ in range(calls):
            call(arg)
        best.append((time.perf_counter_ns() - start) / calls)
    return statistics.median(best)


def on_start_cost(srv: DevServer, calls: int) -> dict[str, float]:
    provider = TracerProvider(resource=Resource.create({"service.name": "bench"}))
    processor = PrefactorSpanProcessor(**options(srv))
    batch = BatchSpanProcessor(PrefactorSpanExporter(**options(srv)))
    tracer = provider.get_tracer("bench")
    plain = tracer.start_span("step")
    live = tracer.start_span("invoke_agent bench", attributes=AGENT)
    queue = processor.exporter._starts
    # The exporter's thread empties the queue; here the rounds do, so it never reaches its cap.
    with processor.exporter._send_lock:
        figures = {
            "prefactor_non_live_ns": per_call_ns(processor.on_start, plain, calls, queue.clear),
            "prefactor_live_ns": per_call_ns(processor.on_start, live, calls, queue.clear),
            "batch_noop_ns": per_call_ns(batch.on_start, plain, calls, lambda: None),
        }
        table: dict[int, None] = {}
        figures["dict_assignment_ns"] = per_call_ns(lambda s: table.__setitem__(id(s), None), plain, calls, table.clear)
        queue.clear()
    plain.end()
    live.end()
    processor.shutdown()
    batch.shutdown()
    return figures


def whole_span_cost(srv: DevServer, spans: int) -> dict[str, float]:
    results: dict[str, list[float]] = {"processor": [], "batch": []}
    for _round in range(5):
        for name in ("batch", "processor"):
            provider = TracerProvider(resource=Resource.create({"service.name": "bench"}))
            if name == "processor":
                provider.add_span_processor(PrefactorSpanProcessor(live_spans="none", **options(srv)))
            else:
                provider.add_span_processor(BatchSpanProcessor(PrefactorSpanExporter(**options(srv))))
            tracer = provider.get_tracer("bench")
            start = time.thread_time_ns()
            for _ in range(spans // 10):
                with tracer.start_as_current_span("root"):
                    for _ in range(9):
                        with tracer.start_as_current_span("step"):
                            pass
            results[name].append((time.thread_time_ns() - start) / spans)
            provider.shutdown()
    return {name: statistics.median(values) for name, values in results.items()}


def live_delay(srv: DevServer, samples: int) -> list[float]:
    provider = TracerProvider(resource=Resource.create({"service.name": "bench"}))
    provider.add_span_processor(PrefactorSpanProcessor(**options(srv)))
    tracer = provider.get_tracer("bench")
    delays = []
    for index in range(samples):
        with tracer.start_as_current_span(f"invoke_agent bench {index}", attributes=AGENT) as span:
            started = span.start_time / 1e9  # type: ignore[operator]
            name = f"invoke_agent bench {index}"
            stop = time.monotonic() + 10
            arrived = None
            while arrived is None and time.monotonic() < stop:
                for row in srv.spans():
                    if row["payload"]["name"] == name:
                        arrived = datetime.fromisoformat(row["inserted_at"].replace("Z", "+00:00")).timestamp()
                        break
                else:
                    time.sleep(0.01)
            delays.append((arrived - started) if arrived is not None else float("inf"))
        time.sleep(0.05)
    provider.shutdown()
    return delays


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    calls = 20_000 if args.quick else 100_000
    with DevServer() as srv:
        start = on_start_cost(srv, calls)
        whole = whole_span_cost(srv, 2_000 if args.quick else 10_000)
        delays = live_delay(srv, 10 if args.quick else 30)
    lines = [
        "# Live runs: PrefactorSpanProcessor",
        "",
        "| figure | value | peer (same run) | ratio |",
        "|---|---|---|---|",
        f"| on_start, non-live span | {start['prefactor_non_live_ns']:.0f} ns | BatchSpanProcessor.on_start (no-op) "
        f"{start['batch_noop_ns']:.0f} ns | {start['prefactor_non_live_ns'] / start['batch_noop_ns']:.2f}x |",
        f"| on_start, live span | {start['prefactor_live_ns']:.0f} ns | one dict assignment "
        f"{start['dict_assignment_ns']:.0f} ns | {start['prefactor_live_ns'] / start['dict_assignment_ns']:.2f}x |",
        f"| app-thread time per span (start+end), live spans none | {whole['processor'] / 1000:.2f} us | "
        f"BatchSpanProcessor(PrefactorSpanExporter) {whole['batch'] / 1000:.2f} us | "
        f"{whole['processor'] / whole['batch']:.2f}x |",
        f"| live span start -> stored by the server, median | {statistics.median(delays):.2f} s | batch schedule "
        f"delay 5.00 s | {statistics.median(delays) / 5:.2f}x |",
        f"| live span start -> stored by the server, worst of {len(delays)} | {max(delays):.2f} s | | |",
        "",
        f"Targets: on_start <= 1 us per non-live span, <= 5 us per live span: "
        f"{'PASS' if start['prefactor_non_live_ns'] <= 1000 and start['prefactor_live_ns'] <= 5000 else 'FAIL'}; "
        f"a live span at the server within about a second: {'PASS' if max(delays) <= 1.5 else 'FAIL'}.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
