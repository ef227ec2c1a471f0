"""Large backlogs: the wall time and peak memory of a shutdown during an outage, and of the replay after it.

    python benchmarks/backlog.py [--traces 25000]

Phase 1 (a fresh process): the API is down (a refused port on 127.0.0.1); the application exports `--traces`
agent runs (~9 spans each, ~1 KB GenAI messages) in batches of 512, as the BatchSpanProcessor does, then calls
`shutdown(5000)`. Printed: the wall time of that shutdown, the process's peak RSS, what reached the spool (files,
largest file, bytes) and what was dropped (the in-memory queue is bounded by PREFACTOR_MAX_QUEUED_SPANS).
Phase 2 (another fresh process): the API is up (the local server, in this process); a new exporter on the same
spool directory replays everything. Printed: the time until the spool is empty, the process's peak RSS, and
the spans the server stored. Every phase ends by itself (each step has a deadline).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from prefactor_otel.devserver import DevServer

OUTAGE = """
    import json, resource, sys, time
    sys.path.insert(0, {root!r})
    from benchmarks.workload import SpanSource
    from prefactor_otel import PrefactorSpanExporter

    exporter = PrefactorSpanExporter(export_timeout=1)
    source = SpanSource(seed=7)
    spans = 0
    for batch in source.batches({traces} * 9, 512):
        exporter.export(batch)
        spans += len(batch)
    started = time.monotonic()
    exporter.shutdown(5000)
    seconds = time.monotonic() - started
    stats = exporter.stats()
    print(json.dumps({{"spans": spans, "shutdown_s": seconds,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "spooled": stats["spans_spooled"], "dropped": stats["dropped_by_reason"]}}))
"""

REPLAY = """
    import json, resource, sys, time
    sys.path.insert(0, {root!r})
    from prefactor_otel import PrefactorSpanExporter

    started = time.monotonic()
    exporter = PrefactorSpanExporter(export_timeout=10)
    deadline = time.monotonic() + 300
    while exporter.stats()["spool_backlog_bytes"] and time.monotonic() < deadline:
        exporter.force_flush(10_000)
    seconds = time.monotonic() - started
    exporter.shutdown(5000)
    stats = exporter.stats()
    print(json.dumps({{"replay_s": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "replayed": stats["spans_replayed"], "left_bytes": stats["spool_backlog_bytes"]}}))
"""


def refused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again: connections to it are refused


def run(script: str, env: dict[str, str], timeout: float) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise SystemExit(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", type=int, default=25_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, DevServer(token="pf_backlog_token") as srv:
        spool_dir = Path(tmp) / "spool"
        env = {k: v for k, v in srv.env().items()}
        env["PREFACTOR_SPOOL_DIR"] = str(spool_dir)
        down = {**env, "PREFACTOR_API_URL": f"http://127.0.0.1:{refused_port()}"}
        outage = run(OUTAGE.format(root=str(ROOT), traces=args.traces), down, timeout=900)
        files = [p for p in spool_dir.iterdir() if p.is_file() and p.name[0].isdigit()]
        sizes = [p.stat().st_size for p in files]
        print(
            f"outage: {outage['spans']:,} spans exported into a dead API; shutdown(5000) took "
            f"{outage['shutdown_s']:.2f} s; peak RSS {outage['peak_rss_mb']:.0f} MB"
        )
        print(
            f"  spooled {outage['spooled']:,} spans in {len(files)} files, {sum(sizes) / 2**20:.1f} MiB, "
            f"largest file {max(sizes, default=0) / 2**20:.2f} MiB; dropped {outage['dropped']}"
        )
        replay = run(REPLAY.format(root=str(ROOT)), env, timeout=900)
        print(
            f"replay: {replay['replayed']:,} spans in {replay['replay_s']:.1f} s; peak RSS "
            f"{replay['peak_rss_mb']:.0f} MB; {replay['left_bytes']} bytes left; the server holds "
            f"{len(srv.spans()):,} spans in {len(srv.instances()):,} runs"
        )


if __name__ == "__main__":
    started = time.monotonic()
    main()
    print(f"({time.monotonic() - started:.0f} s)")
