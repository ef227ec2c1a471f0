"""Hostile servers: wall time and peak RSS of export(), force_flush(), shutdown() and process exit.

Usage: python benchmarks/hostile.py [--quick] [--out PATH] [--operations export,exit] [--child-src DIR]
                                   [--memory-limit-mb N]

For each hostile server (a DevServer in this process whose every API request meets one fault: a trickled
answer, an endless chunked body, a 1 GB body, a black hole) and each operation, a fresh subprocess (so the peak
RSS is that scenario's own) builds a TracerProvider with the exporter, records one agent trace and then runs the
operation: `exporter.export(spans)`, `provider.force_flush()`, `provider.shutdown()`, or nothing at all, letting
the process exit run the atexit hooks. Wall time is measured around the call (for exit: from the end of the
script to the end of the process); peak RSS is the child's ru_maxrss, beside its value before the operation.
It measures whatever the tree does: exit and shutdown budgets also depend on the exporter.

Full runs use the default export timeout (10 s) and a short one (1 s) and write benchmarks/RESULTS-hostile.md;
--quick runs the short timeout only and prints. `--child-src` measures another source tree's exporter against
the same servers (e.g. `git archive <commit> src | tar -x -C /tmp/old` for before/after figures);
`--memory-limit-mb` caps each child's address space (an unbounded client would otherwise take gigabytes).
Bounded: a child still running after KILL_AFTER_S is killed and its row says so. Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# Children import the exporter from HOSTILE_SRC when the parent sets it (--child-src); the parent, whose
# DevServer plays the hostile servers, always uses this tree.
sys.path.insert(0, os.environ.get("HOSTILE_SRC") or str(ROOT / "src"))

from prefactor_otel.devserver import DevServer
from prefactor_otel.devserver.faults import Fault

KILL_AFTER_S = 150.0
OPERATIONS = ("export", "force_flush", "shutdown", "exit")
SERVERS: dict[str, dict[str, Any]] = {
    # The real answer, status line and headers included, at 2 bytes a second.
    "trickle 2 B/s": {"trickle_bytes_per_s": 2},
    "endless chunked": {"endless_body": True},
    "1 GB body": {"body_bytes": 1 << 30},
    "black hole": {"black_hole": True},
}
TIMEOUTS = {"default (10 s)": None, "short (1 s)": "1"}
# In the results file, what follows this line is written by hand (before/after notes) and kept by a new run.
KEEP_MARKER = "<!-- notes below are kept when hostile.py rewrites this file -->"


# ---------------------------------------------------------------------------------------------- child


def child(operation: str) -> None:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from tests.spans import agent_trace, make_provider

    from prefactor_otel import PrefactorSpanExporter

    if operation == "export":
        provider, collector = make_provider()
        exporter = PrefactorSpanExporter()
        agent_trace(provider)
        report("before", rss_kib=peak_rss_kib())
        start = time.monotonic()
        result = exporter.export(collector.spans)
        report("after", seconds=time.monotonic() - start, result=result.name)
        return
    # The usual order: the provider first, then the exporter (whose atexit hook, registered later, runs first).
    provider = TracerProvider(resource=Resource.create({"service.name": "hostile-bench"}))
    provider.add_span_processor(BatchSpanProcessor(PrefactorSpanExporter()))
    agent_trace(provider)
    report("before", rss_kib=peak_rss_kib())
    start = time.monotonic()
    if operation == "force_flush":
        flushed = provider.force_flush()
        report("after", seconds=time.monotonic() - start, result=flushed)
    elif operation == "shutdown":
        provider.shutdown()
        report("after", seconds=time.monotonic() - start, result=None)
    # "exit": nothing more; the interpreter's exit runs the provider's and the exporter's atexit hooks.


def report(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, "at": time.monotonic(), **fields}), flush=True)


def peak_rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


# ---------------------------------------------------------------------------------------------- parent


def run_scenario(
    fault: dict[str, Any], operation: str, export_timeout: str | None, child_src: Path | None, memory_mb: int | None
) -> dict[str, Any]:
    with DevServer() as srv, tempfile.TemporaryDirectory() as spool_dir:
        srv.add_fault(Fault(path="/api/v1", method="*", times=-1, **fault))
        env = {
            key: value for key, value in os.environ.items() if not key.startswith(("PREFACTOR_", "OTEL_"))
        } | srv.env()
        env |= {"PREFACTOR_SPOOL_DIR": spool_dir, "PREFACTOR_FINISH_GRACE_SECONDS": "0", "PYTHONPATH": str(ROOT)}
        if export_timeout is not None:
            env["PREFACTOR_EXPORT_TIMEOUT"] = export_timeout
        if child_src is not None:
            env["HOSTILE_SRC"] = str(child_src)

        def limit_memory() -> None:
            if memory_mb is not None:
                resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))

        started = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, __file__, "--child", operation],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            preexec_fn=limit_memory,
        )
        killed = threading.Event()

        def kill() -> None:
            killed.set()
            proc.kill()

        timer = threading.Timer(KILL_AFTER_S, kill)
        timer.start()
        events: dict[str, dict[str, Any]] = {}
        assert proc.stdout is not None
        for line in proc.stdout:
            event = json.loads(line)
            event["parent_at"] = time.monotonic()
            events[event["event"]] = event
        _, status, usage = os.wait4(proc.pid, 0)
        ended = time.monotonic()
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
        timer.cancel()
        bytes_sent = srv.fault_bytes_sent
    row: dict[str, Any] = {
        "killed": killed.is_set(),
        "returncode": proc.returncode,
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "total_s": ended - started,
    }
    before = events.get("before")
    row["rss_before_mb"] = before["rss_kib"] / 1024 if before else None
    if operation == "exit":
        row["seconds"] = ended - before["parent_at"] if before else None
    else:
        after = events.get("after")
        row["seconds"] = after["seconds"] if after else None
        row["result"] = after["result"] if after else None
    row["server_mb_written"] = bytes_sent / 2**20
    return row


def render(rows: list[dict[str, Any]], note: str) -> str:
    lines = [
        "# Hostile servers: bounded calls",
        "",
        f"Written by `benchmarks/hostile.py` on {note}. One fresh process per row; every API request meets "
        "the server's fault. *seconds*: wall time of the call (exit: from the end of the script to the end of the "
        "process). *peak RSS*: the process's maximum resident set (before the call in brackets). *server wrote*: "
        "bytes the hostile server managed to write (what the exporter read, plus socket buffers).",
        "",
        "| server | export timeout | operation | seconds | peak RSS MB (before) | server wrote MB | result |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        seconds = "killed" if row["killed"] else ("-" if row["seconds"] is None else f"{row['seconds']:.2f}")
        before = "-" if row["rss_before_mb"] is None else f"{row['rss_before_mb']:.0f}"
        result = row.get("result", "") or ""
        if not row["killed"] and row["returncode"] != 0:
            result = f"{result} (process exit code {row['returncode']})".strip()
        lines.append(
            f"| {row['server']} | {row['timeout']} | {row['operation']} | {seconds} | "
            f"{row['peak_rss_mb']:.0f} ({before}) | {row['server_mb_written']:.1f} | {result} |"
        )
    return "\n".join(lines) + "\n"


def commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "src"], cwd=ROOT, capture_output=True, text=True)
    except OSError:
        return "unknown"
    return out.stdout.strip() + ("+uncommitted src changes" if dirty.stdout.strip() else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", choices=OPERATIONS, help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="short export timeout only; print, write nothing")
    parser.add_argument("--out", type=Path, help="write the table here (default: benchmarks/RESULTS-hostile.md)")
    parser.add_argument("--operations", default=",".join(OPERATIONS), help="comma-separated subset of %(default)s")
    parser.add_argument("--child-src", type=Path, help="the src directory children import the exporter from")
    parser.add_argument("--memory-limit-mb", type=int, help="address-space limit of each child")
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    operations = [name for name in args.operations.split(",") if name]
    unknown = set(operations) - set(OPERATIONS)
    if unknown:
        parser.error(f"unknown operation(s): {', '.join(sorted(unknown))}")
    timeouts = {k: v for k, v in TIMEOUTS.items() if v is not None} if args.quick else TIMEOUTS
    rows = []
    for server, fault in SERVERS.items():
        for label, timeout in timeouts.items():
            for operation in operations:
                row = {"server": server, "timeout": label, "operation": operation}
                row |= run_scenario(fault, operation, timeout, args.child_src, args.memory_limit_mb)
                rows.append(row)
                print(json.dumps(row), flush=True)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    table = render(rows, f"{stamp} at {commit()}, Python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    print(table)
    out = args.out or (None if args.quick else HERE / "RESULTS-hostile.md")
    if out is not None:
        kept = out.read_text().partition(KEEP_MARKER) if out.exists() else ("", "", "")
        out.write_text(table + (f"\n{KEEP_MARKER}{kept[2]}" if kept[1] else ""))


if __name__ == "__main__":
    main()
