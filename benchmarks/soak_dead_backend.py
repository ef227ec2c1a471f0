"""Soak: constant span load against a dead Prefactor backend; resident memory must stay flat.

Usage: python benchmarks/soak_dead_backend.py [--minutes 10] [--rate 1000] [--backend refused|silent]

The backend is a local port that refuses connections (or, with `silent`, accepts and never answers), so every
export fails and the exporter's bounds are what hold memory: the planner's caps, the spool on disk with its size
cap. Prints RSS samples and the peak (VmHWM); nothing leaves 127.0.0.1. Bounded: stops after --minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from prefactor_otel import PrefactorSpanExporter
from prefactor_otel.model.ids import encode

MESSAGE = json.dumps([{"role": "user", "parts": [{"type": "text", "content": "x" * 900}]}])


def rss_kib() -> tuple[int, int]:
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def dead_backend(kind: str) -> tuple[str, socket.socket | None]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    if kind == "silent":
        sock.listen(1024)
        return f"http://127.0.0.1:{port}", sock
    sock.close()
    return f"http://127.0.0.1:{port}", None


def one_trace(tracer) -> None:  # 10 spans
    with tracer.start_as_current_span("invoke_agent soak", attributes={"gen_ai.operation.name": "invoke_agent"}):
        for _ in range(3):
            with tracer.start_as_current_span(
                "chat m", attributes={"gen_ai.operation.name": "chat", "gen_ai.input.messages": MESSAGE}
            ):
                with tracer.start_as_current_span("http"):
                    pass
            with tracer.start_as_current_span("execute_tool t", attributes={"gen_ai.tool.name": "t"}):
                pass


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=int, default=1000, help="spans per second")
    parser.add_argument("--backend", choices=("refused", "silent"), default="refused")
    parser.add_argument("--spool-max-mib", type=int, default=64)
    args = parser.parse_args()

    url, keep_open = dead_backend(args.backend)
    spool_dir = tempfile.mkdtemp(prefix="prefactor-soak-")
    exporter = PrefactorSpanExporter(
        environ={},
        api_url=url,
        api_token="pf_soak_token",
        agent_id=encode(int(time.time() * 1000), 42, 1),
        export_timeout=2,
        spool_dir=spool_dir,
        spool_max_bytes=args.spool_max_mib * 1024 * 1024,
        finish_grace_seconds=1,
    )
    provider = TracerProvider(resource=Resource.create({"service.name": "soak"}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    tracer = provider.get_tracer("soak")

    end = time.monotonic() + args.minutes * 60
    traces_per_second = max(1, args.rate // 10)
    samples: list[tuple[float, int]] = []
    started = time.monotonic()
    next_sample = started
    produced = 0
    while time.monotonic() < end:
        second = time.monotonic()
        for _ in range(traces_per_second):
            one_trace(tracer)
        produced += traces_per_second * 10
        if time.monotonic() >= next_sample:
            rss, _ = rss_kib()
            samples.append((time.monotonic() - started, rss))
            stats = exporter.stats()
            print(
                f"t={samples[-1][0]:6.0f}s rss={rss / 1024:7.1f} MiB produced={produced} "
                f"spooled={stats['spans_spooled']} dropped={stats['spans_dropped']} "
                f"queued={stats['spans_queued']} spool={stats['spool_backlog_bytes'] / 2**20:.1f} MiB",
                flush=True,
            )
            next_sample += 30
        time.sleep(max(0.0, 1.0 - (time.monotonic() - second)))
    provider.shutdown()
    rss, peak = rss_kib()
    warm = [r for t, r in samples if t >= 60] or [r for _, r in samples]
    print(
        f"RESULT minutes={args.minutes} rate={args.rate}/s backend={args.backend} produced={produced} "
        f"peak_rss={peak / 1024:.1f} MiB rss_after_1min_min={min(warm) / 1024:.1f} "
        f"max={max(warm) / 1024:.1f} MiB growth={(max(warm) - min(warm)) / 1024:.1f} MiB "
        f"dropped_by_reason={exporter.stats()['dropped_by_reason']}"
    )
    if keep_open is not None:
        keep_open.close()
    for path in Path(spool_dir).iterdir():
        path.unlink()
    os.rmdir(spool_dir)


if __name__ == "__main__":
    main()
