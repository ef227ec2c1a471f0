"""prefactor-otel benchmarks: CPU, requests, throughput, memory and app-thread overhead, side by side with OTLP.

    python benchmarks/run.py            # full run (a few minutes), writes benchmarks/RESULTS.md
    python benchmarks/run.py --quick    # smoke run (< 90 s), prints only (add --out FILE to write)
    python benchmarks/run.py --ref HEAD # benchmark a committed version (before/after a fix), work tree untouched

Needs the `bench` extra: `python -m pip install -e '.[bench]'`. Everything runs on 127.0.0.1: the sinks and the
local Prefactor-compatible server run in their own processes (sinks.py), each measurement in a fresh child
process (measure.py), this process only orchestrates. Every figure is the median of several runs. To benchmark a
work tree's source rather than the installed package: `PYTHONPATH=$PWD/src python benchmarks/run.py --quick`.

What each table measures (issue 22's acceptance: both workloads, both set-ups, app-thread time, bytes beside OTLP's,
each target with pass/fail, from one run):
- *CPU per span in the exporting thread* (realistic workload: ~1 KB GenAI messages; and *small-span workload*: a
  web request running an agent, mostly HTTP/DB/framework spans with a few short attributes; workload.py): thread
  CPU around `export()` + `shutdown()` on the same pre-made spans, beside OTLPSpanExporter and a JSON floor.
- *The two set-ups*: `BatchSpanProcessor(PrefactorSpanExporter())` and `PrefactorSpanProcessor` (exporter defaults,
  live spans on) beside `BatchSpanProcessor(OTLPSpanExporter)`, spans made live by the SDK: the **whole process's**
  CPU per span (every thread) beyond making the spans, and the **application thread's** CPU per span beyond making
  them (`on_start`/`on_end` and the collector passes it runs), both workloads.
- *Garbage collection* (the set-ups' rounds; the exporting thread's runs): collections by generation per 10,000
  spans and the collector's CPU per span (application thread / other threads) beside OTLP's; the GC containers one
  export() of 512 spans holds at its peak. Why: the collector runs when the *net* allocations of GC containers by
  all threads pass 700 (gen0), every 10th gen0 is a gen1, every 10th gen1 a full gen2 of the whole heap (tens of
  ms); an exporter that holds containers while a batch is in flight brings the host's next full collection
  forward, and it lands in the exporter's thread. Counts are deterministic where timings are noisy: they show
  *why* the whole-process line moves between runs (a full collection in a round, or none).
- *Bytes on the wire per span*: request bodies as the sink received them, as sent (with any `Content-Encoding`) and
  decoded, beside OTLP's uncompressed protobuf, from the same rounds.
- *The OTLP gateway beside the exporter*: read from benchmarks/gateway.py's last full run (gateway_notes.md).
- *HTTP requests and bytes per 1,000 spans*, *end-to-end throughput*, *steady load*: requests per span, spans/s.
- *Scaling*: CPU per span at each size (quick: 1,000 and 10,000; full: also 100,000) with finish grace 0 and with
  the default grace of 6 s (thousands of open runs), each in a fresh process; peak RSS.
- *Overhead on the application thread*: the agent loop's wall time with no exporter, OTLP, ours behind
  BatchSpanProcessor and PrefactorSpanProcessor; the CPU-bound loop shows GIL contention.
- *Targets*: every target of issue 22 with PASS/FAIL, then the older lines ("nothing else regresses"); "-" =
  reported, no threshold (peak RSS, throughput, `on_start` cost, the gateway: compare with the history/last run).
- *Profile*: the exporting thread's CPU by stage.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import IO, Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
Result = dict[str, Any]
HISTORY_START = "<!-- history:start -->"
HOSTILE_START, HOSTILE_END = "<!-- hostile:start -->", "<!-- hostile:end -->"
HISTORY_END = "<!-- history:end -->"
CHILD_TIMEOUT_S = 300


@dataclass(frozen=True)
class Plan:
    cpu_spans: int
    cpu_runs: int
    phase_runs: int
    scale: tuple[tuple[int, int], ...]  # (spans, runs) for our exporter
    grace_runs: int  # runs at the largest size with the default finish grace (agent runs stay open 6 s)
    rss_runs: int  # OTLP and no-exporter runs at the largest size
    e2e_spans: int
    e2e_runs: int
    steady_rates: tuple[int, ...]  # spans/s
    steady_seconds: float
    steady_runs: int
    app_reps: int
    app_cpu_runs: int
    app_io_runs: int
    app_work: int
    app_io_seconds: float
    setup_spans: int  # spans per round of each set-up (both workloads), whole-process CPU
    setup_runs: int


WORKLOAD_NAMES = ("realistic", "small")
SETUP_LABELS = {
    "otlp": "BatchSpanProcessor(OTLPSpanExporter)",
    "bsp": "BatchSpanProcessor(PrefactorSpanExporter)",
    "processor": "PrefactorSpanProcessor",
}
FULL = Plan(
    cpu_spans=10_000,
    cpu_runs=7,
    phase_runs=3,
    scale=((1_000, 7), (10_000, 5), (100_000, 3)),
    grace_runs=3,
    rss_runs=3,
    e2e_spans=20_000,
    e2e_runs=3,
    steady_rates=(1_000, 1_500),
    steady_seconds=12,
    steady_runs=2,
    app_reps=5,
    app_cpu_runs=600,
    app_io_runs=150,
    app_work=4000,
    app_io_seconds=0.002,
    setup_spans=6_000,
    setup_runs=5,
)
QUICK = Plan(
    cpu_spans=3_000,
    cpu_runs=3,
    phase_runs=1,
    scale=((1_000, 3), (10_000, 1)),
    grace_runs=1,
    rss_runs=1,
    e2e_spans=3_000,
    e2e_runs=1,
    steady_rates=(1_500,),
    steady_seconds=8,
    steady_runs=1,
    app_reps=2,
    app_cpu_runs=200,
    app_io_runs=50,
    app_work=4000,
    app_io_seconds=0.002,
    setup_spans=1_800,
    setup_runs=3,
)


# ---------------------------------------------------------------------------------------------- processes


SOURCE: dict[str, str] = {}  # "path": a src/ directory to import prefactor_otel from (--ref), else the installed one


def _child_env() -> dict[str, str]:
    """The environment minus OTEL_*/PREFACTOR_* settings, so no exporter picks up configuration by accident."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PREFACTOR_"))}
    if "path" in SOURCE:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [SOURCE["path"], env.get("PYTHONPATH")]))
    return env


def use_ref(ref: str) -> str:
    """Benchmark prefactor_otel as committed at `ref` (a copy of its src/ goes first on the children's path).

    Compares versions (before/after a fix) without touching the work tree, and keeps a run independent of edits
    in progress. Returns the short commit id.
    """
    commit = subprocess.run(
        ["git", "rev-parse", "--short", ref + "^{commit}"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    archive = subprocess.run(
        ["git", "archive", commit, "src/prefactor_otel"], cwd=ROOT, capture_output=True, check=True
    )
    target = Path(tempfile.mkdtemp(prefix=f"prefactor-bench-{commit}-"))
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(target, filter="data")
    SOURCE["path"] = str(target / "src")
    SOURCE["commit"] = commit
    return commit


def child(kind: str, params: Result) -> Result:
    """Run one measurement in a fresh process; its last stdout line is its JSON result."""
    command = [sys.executable, str(HERE / "measure.py"), kind, json.dumps(params)]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, env=_child_env(), cwd=ROOT, check=False
    )
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"measurement {kind} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(lines[-1])


class Server:
    """A sinks.py process: started here, stopped by closing its standard input (it exits by itself otherwise)."""

    def __init__(self, *args: str) -> None:
        self._process = subprocess.Popen(
            [sys.executable, str(HERE / "sinks.py"), "--max-seconds", "1500", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=_child_env(),
            cwd=ROOT,
        )
        self.info: Result = json.loads(self._readline())

    def _readline(self) -> str:
        stdout: IO[str] | None = self._process.stdout
        assert stdout is not None
        line = stdout.readline()
        if not line:
            raise RuntimeError("sink process ended before answering")
        return line

    def command(self, line: str) -> Result:
        stdin: IO[str] | None = self._process.stdin
        assert stdin is not None
        stdin.write(line + "\n")
        stdin.flush()
        return json.loads(self._readline())

    def stop(self) -> None:
        if self._process.stdin is not None:
            self._process.stdin.close()
        try:
            self._process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=5)


@contextmanager
def server(*args: str) -> Iterator[Server]:
    process = Server(*args)
    try:
        yield process
    finally:
        process.stop()


def sink_stats(url: str) -> dict[str, int]:
    with urllib.request.urlopen(url + "/_stats", timeout=10) as response:
        return json.loads(response.read())


def dev_params(dev: Server) -> Result:
    """Where and how an exporter in a child process reaches the local server."""
    return {key: dev.info[key] for key in ("url", "token", "agent_id", "environment_id")}


def progress(message: str) -> None:
    print(f"  .. {message}", file=sys.stderr, flush=True)


class MachineLoad:
    """CPU used by processes other than this benchmark while it runs (other work makes every figure noisier)."""

    def __init__(self) -> None:
        self._start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float]:
        try:
            fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        except (OSError, ValueError, IndexError):
            return 0.0, 0.0, 0.0
        hz = os.sysconf("SC_CLK_TCK")
        user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
        ours = 0.0
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
            usage = resource.getrusage(who)
            ours += usage.ru_utime + usage.ru_stime
        return (user + nice + system + irq + softirq) / hz, steal / hz, ours

    def report(self, wall_seconds: float) -> Result:
        busy, steal, ours = (end - start for end, start in zip(self._sample(), self._start, strict=True))
        others = max(0.0, busy - ours)
        share = others / max(wall_seconds * (os.cpu_count() or 1), 1e-9) * 100
        return {"other_cpu_s": others, "other_pct": share, "steal_s": steal, "busy": share > 5 or steal > 1}


# ---------------------------------------------------------------------------------------------- statistics


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def spread_pct(values: Sequence[float]) -> float:
    """Half the range, in % of the median: the run-to-run noise of one figure."""
    if len(values) < 2:
        return 0.0
    return (max(values) - min(values)) / 2 / median(values) * 100


def fmt(value: float, digits: int = 1) -> str:
    return f"{value:,.{digits}f}"


# ---------------------------------------------------------------------------------------------- measuring


def measure(plan: Plan) -> Result:
    results: Result = {}
    with server() as sinks, server("--echo") as echoing:
        urls = {"bulk": sinks.info["bulk"], "otlp": sinks.info["otlp"]}
        progress(f"CPU per span: {plan.cpu_spans:,} spans, {plan.cpu_runs} runs per exporter")
        # The echoing sink answers as Prefactor's API does (each item's object echoed): the exporter's cost against
        # the real API, where answers are as large as requests (sinks.py --echo).
        results["cpu"] = child(
            "cpu", {"spans": plan.cpu_spans, "runs": plan.cpu_runs, "bulk_echo": echoing.info["bulk"], **urls}
        )
        progress("CPU per span, small-span workload")
        small_kinds = ["floor", "otlp", "prefactor"]
        results["cpu_small"] = child(
            "cpu", {"spans": plan.cpu_spans, "runs": plan.cpu_runs, "workload": "small", "kinds": small_kinds, **urls}
        )
        progress(f"set-ups: whole-process and app-thread CPU, bytes on the wire ({', '.join(WORKLOAD_NAMES)})")
        results["setup"] = {
            workload: child("setup", {"workload": workload, "spans": plan.setup_spans, "runs": plan.setup_runs, **urls})
            for workload in WORKLOAD_NAMES
        }
        progress("where our CPU goes (stages)")
        results["phases"] = child("phases", {"spans": plan.cpu_spans, "runs": plan.phase_runs, **urls})
        largest = max(n for n, _ in plan.scale)
        progress(f"scaling and peak RSS: {', '.join(f'{n:,}' for n, _ in plan.scale)} spans, fresh process per run")
        scale: list[Result] = []
        for rep in range(max(runs for _, runs in plan.scale)):
            for spans, runs in plan.scale:
                if rep < runs:
                    scale.append(child("scale", {"exporter": "prefactor", "spans": spans, **urls}))
                if rep < plan.grace_runs:  # the default finish grace: thousands of runs open at the larger sizes
                    scale.append(child("scale", {"exporter": "prefactor", "spans": spans, "grace": 6, **urls}))
            if rep < plan.rss_runs:
                for kind in ("otlp", "none"):
                    scale.append(child("scale", {"exporter": kind, "spans": largest, **urls}))
        results["scale"] = scale
        progress(f"end-to-end throughput: {plan.e2e_spans:,} spans through BatchSpanProcessor")
        e2e: list[Result] = []
        for _ in range(plan.e2e_runs):
            with server("--devserver") as dev:  # a fresh server per run: its store only grows
                run = child("e2e", {"sink": "devserver", "spans": plan.e2e_spans, **dev_params(dev)})
                run["server"] = dev.command("counts")
            e2e.append(run)
            before = sink_stats(urls["bulk"])
            run = child("e2e", {"sink": "bulk", "spans": plan.e2e_spans, "url": urls["bulk"]})
            after = sink_stats(urls["bulk"])
            run["sink"] = {key: after.get(key, 0) - before.get(key, 0) for key in after}
            e2e.append(run)
        rates = ", ".join(f"{r:,}" for r in plan.steady_rates)
        progress(f"steady load: {rates} spans/s for {plan.steady_seconds:g} s, exporter defaults")
        steady: list[Result] = []
        for _ in range(plan.steady_runs):
            for rate in plan.steady_rates:
                common = {"rate": rate, "seconds": plan.steady_seconds}
                with server("--devserver") as dev:
                    run = child("steady", {"exporter": "prefactor", **common, **dev_params(dev)})
                    run["server"] = dev.command("counts")
                steady.append(run)
                before = sink_stats(urls["otlp"])
                run = child("steady", {"exporter": "otlp", **common, "url": urls["otlp"]})
                after = sink_stats(urls["otlp"])
                run["server"] = {key: after.get(key, 0) - before.get(key, 0) for key in after}
                steady.append(run)
        results["e2e"] = e2e
        results["steady"] = steady
        progress(f"app-thread overhead: {plan.app_reps} rounds of none / OTLP / Prefactor (both set-ups), interleaved")
        app: list[Result] = []
        for _ in range(plan.app_reps):
            for mode in APP_MODES:
                params = {
                    "mode": mode,
                    "cpu_runs": plan.app_cpu_runs,
                    "io_runs": plan.app_io_runs,
                    "work": plan.app_work,
                    "io_seconds": plan.app_io_seconds,
                    **urls,
                }
                app.append(child("app", params))
        results["app"] = app
        results["urls"] = urls
    return results


# ---------------------------------------------------------------------------------------------- summary

APP_MODES = ("none", "otlp", "prefactor", "processor")


SETUP_MODES = ("none", "otlp", "bsp", "processor")  # measure.py's, the no-processor round first
GC_CONTAINER_LABELS = {
    "otlp": "OTLPSpanExporter",
    "prefactor": "PrefactorSpanExporter (finish grace 0, as the runs above)",
    "prefactor_default_grace": "PrefactorSpanExporter, default finish grace (6 s, as in the set-ups)",
}


def collections_per_10k(rows: Sequence[Result], spans: int) -> list[float] | None:
    """Collections by generation (0, 1, 2) per 10,000 spans over `rows`, each a round or run of `spans` spans with
    its `gc_collections`; None when the rows predate the figure.

    A mean (all collections / all spans), not a median: collections are whole numbers, a few per round, and a
    median of rounds would round away a full collection that lands in 3 rounds out of 5.
    """
    counted = [r["gc_collections"] for r in rows if "gc_collections" in r]
    if not rows or len(counted) != len(rows) or spans <= 0:
        return None
    return [sum(c[generation] for c in counted) / (len(counted) * spans) * 10_000 for generation in range(3)]


def summarize_setup_gc(rounds: Sequence[Result], spans: int) -> Result | None:
    """Per set-up mode (and the no-processor round): collections by generation per 10,000 spans during the round
    (every thread's), the collector's CPU per span on the application thread and on the other threads (medians),
    and each figure against OTLP's; None for a dump made before these figures existed."""
    out: Result = {}
    for mode in SETUP_MODES:
        mine = [r for r in rounds if r["mode"] == mode]
        per_10k = collections_per_10k(mine, spans)
        if per_10k is None or any("gc_app_us" not in r for r in mine):
            return None
        out[mode] = {
            "collections_per_10k": per_10k,
            "app_us": median([r["gc_app_us"] for r in mine]),
            "other_us": median([r["gc_other_us"] for r in mine]),
            "total_us": median([r["gc_app_us"] + r["gc_other_us"] for r in mine]),
        }
    for mode in SETUP_MODES:
        cell, peer = out[mode], out["otlp"]
        cell["gen2_x_otlp"] = ratio_or_none(cell["collections_per_10k"][2], peer["collections_per_10k"][2])
        cell["total_x_otlp"] = ratio_or_none(cell["total_us"], peer["total_us"])
    return out


def summarize_containers(cpu: Result) -> Result | None:
    """GC containers one export() of a batch holds (peak, held when it returns) per contender, and collections
    per 10,000 spans in the timed runs; None for a dump made before these figures existed."""
    containers = cpu.get("containers")
    if not containers:
        return None
    out: Result = {}
    for kind, figures in containers.items():
        rows = cpu["runs"].get(kind, [])
        out[kind] = {
            "batch": figures["batch"],
            "peak": figures["peak"],
            "held_after": figures["held_after"],
            "collections_per_10k": collections_per_10k(rows, cpu["spans"]),
        }
    if "otlp" in out:
        for cell in out.values():
            cell["peak_x_otlp"] = ratio_or_none(cell["peak"], out["otlp"]["peak"])
    return out


def ratio_or_none(value: float, peer: float) -> float | None:
    """value / peer, or None when the peer is 0 (a count OTLP never reaches: no ratio, the figures say it)."""
    return value / peer if peer else None


def ratio_text(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x"


def summarize_small(cpu: Result) -> Result:
    """The exporting thread's CPU per span on the small-span workload (the `cpu` kind's runs)."""
    runs = cpu["runs"]
    out: Result = {"spans": cpu["spans"], "traces": cpu["traces"], "runs": len(runs["prefactor"])}
    for kind, rows in runs.items():
        out[f"cpu_{kind}"] = median([r["cpu_us"] for r in rows])
        out[f"cpu_{kind}_spread"] = spread_pct([r["cpu_us"] for r in rows])
    out["ratio_otlp"] = out["cpu_prefactor"] / out["cpu_otlp"]
    out["delivery_ok"] = all(
        r["ok"] and r["exported"] == cpu["spans"] and r["dropped"] == 0 and r["instances_finished"] == cpu["traces"]
        for r in runs["prefactor"]
    )
    out["gc"] = summarize_containers(cpu)
    return out


def summarize_setup(setup: Result) -> Result:
    """Per set-up: whole-process CPU per span and the application thread's, both minus the no-processor round's of
    the same interleaved round (paired), medians over rounds; bytes on the wire per span."""
    rounds = setup["rounds"]
    spans = setup["spans"]
    base = [r for r in rounds if r["mode"] == "none"]
    out: Result = {"spans": spans, "traces": setup["traces"], "runs": len(base), "on_start": setup["on_start"]}
    out["none_process_us"] = median([r["process_us"] for r in base])
    out["none_app_us"] = median([r["app_us"] for r in base])
    out["none_app_spread_us"] = (max(r["app_us"] for r in base) - min(r["app_us"] for r in base)) / 2
    for mode in ("otlp", "bsp", "processor"):
        mine = [r for r in rounds if r["mode"] == mode]
        process = [r["process_us"] - b["process_us"] for r, b in zip(mine, base, strict=True)]
        app = [r["app_us"] - b["app_us"] for r, b in zip(mine, base, strict=True)]
        app_gc = [r.get("app_gc_us", 0.0) - b.get("app_gc_us", 0.0) for r, b in zip(mine, base, strict=True)]
        out[mode] = {
            "process_us": median(process),
            "process_spread": spread_pct(process),
            "app_us": median(app),
            "app_spread_us": (max(app) - min(app)) / 2 if len(app) > 1 else 0.0,
            "app_gc_us": median(app_gc),
            "requests_per_k": median([r["requests"] / spans * 1000 for r in mine]),
            "wire_bytes": median([r["body_bytes"] / spans for r in mine]),
            "decoded_bytes": median([r["decoded_bytes"] / spans for r in mine]),
            "head_bytes": median([r["head_bytes"] / spans for r in mine]),
            "encodings": sorted({name for r in mine for name in r.get("encodings", {})}),
            "ok": all(r.get("ok", True) for r in mine),
        }
    for mode in ("bsp", "processor"):
        out[mode]["ratio_otlp"] = out[mode]["process_us"] / out["otlp"]["process_us"]
        out[mode]["wire_ratio_otlp"] = out[mode]["wire_bytes"] / out["otlp"]["decoded_bytes"]
    out["gc"] = summarize_setup_gc(rounds, spans)
    return out


GATEWAY_ROW = re.compile(r"^\| prefactor-otel gateway[^|]*\| ([\d.,]+) \|[^|]*\| ([\d.]+) \| ([\d.]+) \|", re.M)
IN_PROCESS_ROW = re.compile(r"^\| PrefactorSpanExporter, in process \| ([\d.,]+) \|", re.M)


GATEWAY_TARGET = "gateway CPU/span reported beside the exporter's (benchmarks/gateway.py's last notes)"


def gateway_target(gateway: Result | None) -> tuple[str, None, str]:
    """The Targets row that reports the gateway (no pass/fail: the issue asks for the figure beside the exporter's)."""
    if not gateway:
        return (GATEWAY_TARGET, None, "no gateway_notes.md: run benchmarks/gateway.py")
    return (
        GATEWAY_TARGET,
        None,
        f"{fmt(gateway['gateway_us'])} vs {fmt(gateway['exporter_us'])} us = {gateway['x_exporter']:.2f}x "
        f"({gateway['x_otlp']:.2f}x OTLP; {gateway['when']})",
    )


def gateway_figures() -> Result | None:
    """The gateway's whole-process CPU per span beside the in-process exporter's, from the last full run of
    benchmarks/gateway.py (its notes, gateway_notes.md): that benchmark needs minutes, not a quick run's seconds."""
    notes = HERE / "gateway_notes.md"
    try:
        text = notes.read_text()
    except OSError:
        return None
    gateway = GATEWAY_ROW.search(text)
    exporter = IN_PROCESS_ROW.search(text)
    when = re.search(r"on (\d{4}-\d\d-\d\d \d\d:\d\d UTC)", text)
    if gateway is None or exporter is None:
        return None
    return {
        "gateway_us": float(gateway.group(1).replace(",", "")),
        "x_otlp": float(gateway.group(2)),
        "x_exporter": float(gateway.group(3)),
        "exporter_us": float(exporter.group(1).replace(",", "")),
        "when": when.group(1) if when else "unknown date",
    }


def summarize(results: Result, plan: Plan) -> Result:
    cpu = results["cpu"]
    runs = cpu["runs"]
    spans = cpu["spans"]
    s: Result = {"spans": spans, "traces": cpu["traces"], "cpu_runs": len(runs["prefactor"])}
    for kind in ("floor", "payload_floor", "otlp", "prefactor", "prefactor_unredacted", "prefactor_echo"):
        if not runs.get(kind):  # the newer rows are absent from dumps made before they existed
            continue
        values = [r["cpu_us"] for r in runs[kind]]
        s[f"cpu_{kind}"] = median(values)
        s[f"cpu_{kind}_spread"] = spread_pct(values)
        s[f"wall_{kind}"] = median([r["wall_us"] for r in runs[kind]])
        s[f"gc_{kind}"] = median([r.get("gc_us", 0.0) for r in runs[kind]])
    s["ratio_otlp"] = s["cpu_prefactor"] / s["cpu_otlp"]
    s["ratio_floor"] = s["cpu_prefactor"] / s["cpu_floor"]
    s["gc"] = summarize_containers(cpu)
    s["otlp_ratio_floor"] = s["cpu_otlp"] / s["cpu_floor"]
    if "cpu_payload_floor" in s:
        s["ratio_payload_floor"] = s["cpu_prefactor"] / s["cpu_payload_floor"]
    ours = runs["prefactor"][-1]
    s["delivery_ok"] = all(
        r["ok"] and r["exported"] == spans and r["dropped"] == 0 and r["instances_finished"] == cpu["traces"]
        for r in runs["prefactor"]
    )
    per_k = 1000 / spans
    rest = cpu["rest"]
    head_per_request = ours["head_bytes"] / ours["requests"]
    bulk_path = len("/api/v1/bulk")
    rest_heads = rest["total_requests"] * (head_per_request - bulk_path) + rest["path_bytes"]
    otlp = runs["otlp"][-1]
    s["requests"] = {
        "prefactor": (
            ours["requests"] * per_k,
            ours["body_bytes"] * per_k,
            (ours["body_bytes"] + ours["head_bytes"]) * per_k,
        ),
        "rest": (
            rest["total_requests"] * per_k,
            rest["total_body_bytes"] * per_k,
            (rest["total_body_bytes"] + rest_heads) * per_k,
        ),
        "otlp": (
            otlp["requests"] * per_k,
            otlp["body_bytes"] * per_k,
            (otlp["body_bytes"] + otlp["head_bytes"]) * per_k,
        ),
    }
    s["rest_detail"] = {k: v * per_k for k, v in rest["requests"].items()}
    s["request_ratio"] = rest["total_requests"] / ours["requests"]
    s["byte_ratio"] = s["requests"]["rest"][2] / s["requests"]["prefactor"][2]
    s["head_per_request"] = head_per_request

    scale_rows: list[Result] = []
    for n, grace in [*((n, 0) for n, _ in plan.scale), *((n, 6) for n, _ in plan.scale)]:
        mine = [r for r in results["scale"] if r["exporter"] == "prefactor" and r["spans"] == n and r["grace"] == grace]
        if not mine:
            continue
        scale_rows.append(
            {
                "spans": n,
                "grace": grace,
                "open_traces": median([r["max_open_traces"] for r in mine]),
                "runs": len(mine),
                "cpu_us": median([r["cpu_us"] for r in mine]),
                "spread": spread_pct([r["cpu_us"] for r in mine]),
                "first_tenth_us": median([r["first_tenth_us"] for r in mine]),
                "last_tenth_us": median([r["last_tenth_us"] for r in mine]),
                # The trend within each run (measure.trend), median over the runs; dumps made before it: the tenths.
                "trend": median([r["trend"]["change"] for r in mine])
                if all("trend" in r for r in mine)
                else median([r["last_tenth_us"] for r in mine]) / median([r["first_tenth_us"] for r in mine]) - 1,
                "trend_window": mine[0]["trend"]["window"] if "trend" in mine[0] else "last vs first tenth",
                "lead_in_us": (
                    median([r["lead_in_us"] for r in mine]) if all(r.get("lead_in_us") for r in mine) else None
                ),
                "gc_us": median([r["gc_us"] for r in mine]),
                "no_gc_us": median([r["cpu_us"] - r["gc_us"] for r in mine]),
                "peak_rss_mb": median([r["peak_rss_mb"] for r in mine]),
                "rss_growth_mb": median([r["peak_rss_mb"] - r["rss_before_mb"] for r in mine]),
                "ok": all(r["ok"] and r["dropped"] == 0 for r in mine),
            }
        )
    s["scale"] = scale_rows
    flat = [r for r in scale_rows if r["grace"] == 0]
    s["scale_growth"] = flat[-1]["cpu_us"] / flat[0]["cpu_us"] - 1
    s["scale_growth_no_gc"] = flat[-1]["no_gc_us"] / flat[0]["no_gc_us"] - 1
    s["scale_drift"] = flat[-1]["trend"]
    graced = [r for r in scale_rows if r["grace"] > 0]
    s["scale_drift_grace"] = graced[-1]["trend"] if graced else None
    # With the default grace, each larger size against the smallest with the same grace (issue 22's line), and the
    # largest against grace 0's smallest (the older line, kept for the history).
    s["scale_growth_grace"] = graced[-1]["cpu_us"] / flat[0]["cpu_us"] - 1 if graced else None
    s["scale_growth_grace_sizes"] = (
        [(r["spans"], r["cpu_us"] / graced[0]["cpu_us"] - 1, r["open_traces"]) for r in graced[1:]]
        if len(graced) > 1 and graced[0]["spans"] < graced[-1]["spans"]
        else []
    )
    largest = flat[-1]["spans"]
    rss: Result = {}
    for kind in ("none", "otlp", "prefactor"):
        rows = [r for r in results["scale"] if r["exporter"] == kind and r["spans"] == largest and not r.get("grace")]
        rss[kind] = {
            "peak_rss_mb": median([r["peak_rss_mb"] for r in rows]),
            "rss_growth_mb": median([r["peak_rss_mb"] - r["rss_before_mb"] for r in rows]),
            "cpu_us": median([r.get("cpu_us", 0.0) for r in rows]),
            "runs": len(rows),
        }
    s["rss"] = rss
    s["rss_largest"] = largest

    e2e: Result = {}
    for sink in ("devserver", "bulk"):
        rows = (
            [r for r in results["e2e"] if r.get("server") is not None]
            if sink == "devserver"
            else [r for r in results["e2e"] if r.get("server") is None]
        )
        e2e[sink] = {
            "spans_per_s": median([r["spans_per_s"] for r in rows]),
            "produce_per_s": median([r["spans"] / r["produce_s"] for r in rows]),
            "spans": rows[0]["spans"],
            "runs": len(rows),
            "requests": median([r["requests"] for r in rows]),
            "requests_per_k": median([r["requests"] / r["spans"] * 1000 for r in rows]),
            "single_item_pct": median(
                [
                    (r.get("server") or r.get("sink") or {}).get("single_item_requests", 0)
                    / max(1, r["requests"])
                    * 100
                    for r in rows
                ]
            ),
            "ok": all(
                r["flushed"]
                and r["exported"] == r["spans"]
                and r["dropped"] == 0
                and r["instances_finished"] == r["traces"]
                for r in rows
            ),
            "server_ok": all(
                r["server"]["spans"] == r["spans"]
                and r["server"]["instances_finished"] == r["traces"]
                and r["server"]["errors"] == 0
                for r in rows
            )
            if sink == "devserver"
            else None,
        }
    s["e2e"] = e2e
    s["request_ratio_e2e"] = s["requests"]["rest"][0] / e2e["devserver"]["requests_per_k"]
    steady_rows: list[Result] = []
    for rate in plan.steady_rates:
        row: Result = {"rate": rate}
        for kind in ("otlp", "prefactor"):
            rows = [r for r in results["steady"] if r["exporter"] == kind and r["target_rate"] == rate]
            row[kind] = {
                "cpu_us": median([r["background_cpu_us"] for r in rows]),
                "requests_per_k": median([r["server"]["requests"] / r["spans"] * 1000 for r in rows]),
                "single_pct": median(
                    [r["server"].get("single_item_requests", 0) / max(1, r["server"]["requests"]) * 100 for r in rows]
                ),
                "rate": median([r["rate"] for r in rows]),
                "runs": len(rows),
                "ok": all(r["server"].get("spans", r["spans"]) == r["spans"] and not r.get("dropped") for r in rows),
            }
        steady_rows.append(row)
    s["steady"] = steady_rows
    s["steady_seconds"] = plan.steady_seconds
    s["request_ratio_steady"] = min(s["requests"]["rest"][0] / r["prefactor"]["requests_per_k"] for r in steady_rows)

    app: Result = {}
    for variant in ("cpu", "io"):
        row: Result = {}
        for mode in APP_MODES:
            walls = [r[variant]["wall_us_per_run"] for r in results["app"] if r["mode"] == mode]
            cpus = [r[variant]["cpu_us_per_run"] for r in results["app"] if r["mode"] == mode]
            row[mode] = {"wall": median(walls), "spread": spread_pct(walls), "cpu": median(cpus)}
        base = row["none"]["wall"]
        for mode in APP_MODES[1:]:
            row[mode]["overhead_pct"] = (row[mode]["wall"] / base - 1) * 100
        noise = max(row[m]["spread"] for m in APP_MODES)
        row["noise_pct"] = noise
        row["delta_pct"] = row["prefactor"]["overhead_pct"] - row["otlp"]["overhead_pct"]
        row["pass"] = row["delta_pct"] <= noise
        row["processor_delta_pct"] = row["processor"]["overhead_pct"] - row["otlp"]["overhead_pct"]
        row["processor_pass"] = row["processor_delta_pct"] <= noise
        mine = [r[variant] for r in results["app"] if r["mode"] in ("prefactor", "processor")]
        row["exported_ok"] = all(r["exported"] == r["produced"] for r in mine)
        app[variant] = row
    s["app"] = app
    s["app_params"] = {
        "cpu_runs": plan.app_cpu_runs,
        "io_runs": plan.app_io_runs,
        "work": plan.app_work,
        "io_ms": plan.app_io_seconds * 1000,
        "reps": plan.app_reps,
    }

    s["small"] = summarize_small(results["cpu_small"]) if "cpu_small" in results else None
    s["setup"] = {w: summarize_setup(results["setup"][w]) for w in WORKLOAD_NAMES if w in results.get("setup", {})}
    s["gateway"] = gateway_figures()
    s["targets"] = targets(s, flat, graced, largest, app)
    phases = results["phases"]
    stage_names = list(phases["stages"][0]) if phases["stages"] else []
    s["phases_total"] = median(phases["total_us"])
    s["phases"] = [(name, median([st.get(name, 0.0) for st in phases["stages"]])) for name in stage_names]
    return s


Target = tuple[str, bool | None, str]  # (target, pass / fail / None = reported only, measured)


def targets(s: Result, flat: list[Result], graced: list[Result], largest: int, app: Result) -> list[Target]:
    """Issue 22's targets, each with pass/fail from this run, then the older lines ("nothing else regresses")."""
    out: list[Target] = [
        (
            "CPU/span <= 1.0x OTLP, realistic workload, exporting thread",
            s["ratio_otlp"] <= 1.0,
            f"{s['ratio_otlp']:.2f}x",
        )
    ]
    small = s.get("small")
    if small:
        out.append(
            (
                "CPU/span <= 1.0x OTLP, small-span workload, exporting thread",
                small["ratio_otlp"] <= 1.0,
                f"{small['ratio_otlp']:.2f}x",
            )
        )
    for workload, row in s.get("setup", {}).items():
        for mode in ("bsp", "processor"):
            out.append(
                (
                    f"CPU/span <= 1.0x OTLP, {workload} workload, {SETUP_LABELS[mode]}, whole process",
                    row[mode]["ratio_otlp"] <= 1.0,
                    f"{row[mode]['ratio_otlp']:.2f}x ({fmt(row[mode]['process_us'])} vs "
                    f"{fmt(row['otlp']['process_us'])} us)",
                )
            )
    for workload, row in s.get("setup", {}).items():
        noise = row["none_app_spread_us"]
        for mode in ("bsp", "processor"):
            ours, peer = row[mode]["app_us"], row["otlp"]["app_us"]
            out.append(
                (
                    f"app-thread CPU/span <= OTLP's, {workload} workload, {SETUP_LABELS[mode]}",
                    ours <= peer + noise,
                    f"{ours:+.2f} vs {peer:+.2f} us (noise {noise:.2f})",
                )
            )
    for variant, label in (("cpu", "CPU-bound loop (GIL contention)"), ("io", "I/O-bound loop")):
        row = app[variant]
        for mode, key in (("prefactor", "pass"), ("processor", "processor_pass")):
            setup = SETUP_LABELS["bsp" if mode == "prefactor" else "processor"]
            out.append(
                (
                    f"app-thread overhead within noise of OTLP's, {label}, {setup}",
                    row[key],
                    f"{row[mode]['overhead_pct']:+.1f}% vs {row['otlp']['overhead_pct']:+.1f}%"
                    f" (noise {row['noise_pct']:.1f}%)",
                )
            )
    for workload, row in s.get("setup", {}).items():
        for mode in ("bsp", "processor"):
            cell = row[mode]
            sent = "uncompressed" if not cell["encodings"] else "/".join(cell["encodings"])
            out.append(
                (
                    f"bytes on the wire/span <= OTLP's uncompressed protobuf, {workload} workload, "
                    f"{SETUP_LABELS[mode]}",
                    cell["wire_ratio_otlp"] <= 1.0,
                    f"{cell['wire_bytes']:,.0f} ({sent}) vs {row['otlp']['decoded_bytes']:,.0f} B"
                    f" = {cell['wire_ratio_otlp']:.2f}x",
                )
            )
    out.append(gateway_target(s.get("gateway")))
    for spans, growth, open_runs in s.get("scale_growth_grace_sizes", []):
        out.append(
            (
                f"CPU/span at {spans:,} within 10% of {graced[0]['spans']:,}, default finish grace (6 s)",
                abs(growth) <= 0.10,
                f"{growth * 100:+.1f}% ({open_runs:,.0f} open agent runs)",
            )
        )
    for row in flat[1:]:
        growth = row["cpu_us"] / flat[0]["cpu_us"] - 1
        out.append(
            (
                f"CPU/span at {row['spans']:,} within 10% of {flat[0]['spans']:,}, finish grace 0",
                abs(growth) <= 0.10,
                f"{growth * 100:+.1f}%",
            )
        )
    out.append(
        (
            f"planner flat: trend over the {largest:,}-span run, no GC (finish grace 0; {flat[-1]['trend_window']})",
            abs(s["scale_drift"]) <= 0.10,
            f"{s['scale_drift'] * 100:+.1f}%",
        )
    )
    if graced:
        out.append(
            (
                f"planner flat: trend over the {graced[-1]['spans']:,}-span run, no GC (finish grace 6 s; "
                f"{graced[-1]['trend_window']})",
                abs(s["scale_drift_grace"]) <= 0.10,
                f"{s['scale_drift_grace'] * 100:+.1f}%",
            )
        )
    # Nothing else regresses: the lines that held before issue 22, and the figures to compare with the last full run.
    out += [
        ("CPU/span <= 3x JSON floor", s["ratio_floor"] <= 3.0, f"{s['ratio_floor']:.2f}x"),
        (
            ">= 100x fewer HTTP requests than per-span REST (finish grace 0)",
            s["request_ratio"] >= 100,
            f"{s['request_ratio']:,.0f}x",
        ),
        (
            ">= 100x fewer HTTP requests than per-span REST (defaults, e2e burst into the local server)",
            s["request_ratio_e2e"] >= 100,
            f"{s['request_ratio_e2e']:,.0f}x",
        ),
        (
            ">= 100x fewer HTTP requests than per-span REST (defaults, steady load, worst rate)",
            s["request_ratio_steady"] >= 100,
            f"{s['request_ratio_steady']:,.0f}x",
        ),
        (
            f"peak RSS growth at {largest:,} spans (reported; OTLP's beside it)",
            None,
            f"{fmt(s['rss']['prefactor']['rss_growth_mb'])} MB vs {fmt(s['rss']['otlp']['rss_growth_mb'])} MB",
        ),
        (
            "end-to-end throughput into the local server (reported; compare with the history)",
            None,
            f"{fmt(s['e2e']['devserver']['spans_per_s'], 0)} spans/s",
        ),
    ]
    for row in list(s.get("setup", {}).values())[:1]:
        start = row["on_start"]
        out.append(
            (
                "PrefactorSpanProcessor.on_start per call (reported; BatchSpanProcessor's no-op beside it)",
                None,
                f"{start['prefactor_ns']:.0f} ns vs {start['batch_noop_ns']:.0f} ns",
            )
        )
    return out + gc_targets(s)


def gc_targets(s: Result) -> list[Target]:
    """Informational rows (no threshold): the garbage collector's figures beside OTLP's, where the run has them."""
    out: list[Target] = []
    exporting = [("realistic", s.get("gc")), ("small", (s.get("small") or {}).get("gc"))]
    for workload, gc in exporting:
        if not gc or "prefactor" not in gc or "otlp" not in gc:
            continue
        ours, peer = gc["prefactor"], gc["otlp"]
        grace = gc.get("prefactor_default_grace")
        out.append(
            (
                f"GC containers at the peak of one export() of {ours['batch']} spans, {workload} workload, x OTLP",
                None,
                f"{ours['peak']:,.0f} vs {peer['peak']:,.0f} = {ratio_text(ours['peak_x_otlp'])}"
                + (
                    f" (default finish grace: {grace['peak']:,.0f}, {grace['held_after']:,.0f} held after)"
                    if grace
                    else ""
                ),
            )
        )
    for workload, row in s.get("setup", {}).items():
        gc = row.get("gc")
        if not gc:
            continue
        peer = gc["otlp"]
        out.append(
            (
                f"full (gen2) collections per 10k spans, {workload} workload, set-ups (BSP / processor), x OTLP",
                None,
                " / ".join(f"{gc[mode]['collections_per_10k'][2]:.1f}" for mode in ("bsp", "processor"))
                + f" vs {peer['collections_per_10k'][2]:.1f}"
                + f" (no processor: {gc['none']['collections_per_10k'][2]:.1f})",
            )
        )
        out.append(
            (
                f"GC CPU us/span, every thread, {workload} workload, set-ups (BSP / processor), x OTLP",
                None,
                " / ".join(f"{gc[mode]['total_us']:.2f}" for mode in ("bsp", "processor"))
                + f" vs {peer['total_us']:.2f} us = "
                + " / ".join(ratio_text(gc[mode]["total_x_otlp"]) for mode in ("bsp", "processor")),
            )
        )
    return out


# ---------------------------------------------------------------------------------------------- rendering


def tables(s: Result) -> list[tuple[str, list[str], list[list[str]], str]]:
    """(title, header, rows, note) for every table."""
    out: list[tuple[str, list[str], list[list[str]], str]] = []
    cpu_rows = []
    for kind, label in (
        ("floor", "JSON floor (json.dumps of each span's fields and attributes)"),
        ("payload_floor", "Prefactor payload floor (json.dumps of each span's mapped payloads; mapping not timed)"),
        ("otlp", "OTLPSpanExporter (opentelemetry-exporter-otlp-proto-http)"),
        ("prefactor", "PrefactorSpanExporter"),
        ("prefactor_unredacted", "PrefactorSpanExporter, PREFACTOR_REDACT_DEFAULTS=false (built-in redaction off)"),
        ("prefactor_echo", "PrefactorSpanExporter, answers echoing each object (as Prefactor's API answers)"),
    ):
        if f"cpu_{kind}" not in s:
            continue
        cpu_rows.append(
            [
                label,
                fmt(s[f"cpu_{kind}"]),
                f"±{s[f'cpu_{kind}_spread']:.0f}%",
                fmt(s[f"gc_{kind}"]),
                f"{s[f'cpu_{kind}'] / s['cpu_otlp']:.2f}",
                f"{s[f'cpu_{kind}'] / s['cpu_floor']:.2f}",
                fmt(s[f"wall_{kind}"]),
            ]
        )
    out.append(
        (
            "CPU per span in the exporting thread",
            ["exporter", "CPU us/span", "spread", "of which GC", "x OTLP", "x floor", "wall us/span"],
            cpu_rows,
            f"{s['spans']:,} spans ({s['traces']:,} agent runs) in batches of 512, the same spans for each; "
            f"`time.thread_time()` around every `export()` and the final `shutdown()`; fresh exporter per run; "
            f"median of {s['cpu_runs']} interleaved runs after one warm-up run each; 'of which GC' = the garbage "
            "collector's passes that ran inside those calls. "
            f"Every run delivered every span and finished every run: {'yes' if s['delivery_ok'] else 'NO'}."
            + (
                f" The payload floor is the stdlib's cost for the JSON we actually send and nothing else; the "
                f"exporter is {s['ratio_payload_floor']:.2f}x it."
                if "ratio_payload_floor" in s
                else ""
            )
            + (
                " The built-in redaction rules (secret-named keys, secret-looking values; on unless"
                " PREFACTOR_REDACT_DEFAULTS=false, and no user rules are configured here) cost"
                f" {s['cpu_prefactor'] - s['cpu_prefactor_unredacted']:.1f} us/span of it."
                if "cpu_prefactor_unredacted" in s
                else ""
            )
            + (
                " The other rows' bulk sink answers each item with its status and id only (~170 B a span); the"
                " echoing row's answers, like Prefactor's API and the local server, carry each object the item"
                f" wrote (~2 KB a span): reading them costs {s['cpu_prefactor_echo'] - s['cpu_prefactor']:+.1f}"
                " us/span more."
                if "cpu_prefactor_echo" in s
                else ""
            ),
        )
    )
    out.extend(setup_tables(s))
    req = s["requests"]
    out.append(
        (
            "HTTP requests and bytes per 1,000 spans",
            ["pattern", "requests", "body KB", "KB with headers"],
            [
                [
                    "Prefactor bulk (this exporter)",
                    fmt(req["prefactor"][0]),
                    fmt(req["prefactor"][1] / 1000),
                    fmt(req["prefactor"][2] / 1000),
                ],
                [
                    "per-span REST (Prefactor Python SDK pattern)",
                    fmt(req["rest"][0]),
                    fmt(req["rest"][1] / 1000),
                    fmt(req["rest"][2] / 1000),
                ],
                [
                    "Prefactor bulk, exporter defaults behind BatchSpanProcessor (e2e run, local server)",
                    fmt(s["e2e"]["devserver"]["requests_per_k"]),
                    "",
                    "",
                ],
                [
                    "OTLP/HTTP protobuf (for reference)",
                    fmt(req["otlp"][0]),
                    fmt(req["otlp"][1] / 1000),
                    fmt(req["otlp"][2] / 1000),
                ],
            ],
            f"**{s['request_ratio']:,.0f}x fewer requests** ({s['request_ratio_e2e']:,.0f}x with the exporter's "
            f"defaults end to end) and {s['byte_ratio']:.2f}x fewer bytes than per-span REST. The first row is the CPU "
            "workload above (finish grace 0). "
            "REST per 1,000 spans: "
            + ", ".join(f"{k} {v:,.0f}" for k, v in s["rest_detail"].items())
            + ". REST bodies are built from the same mapped spans; its headers are counted as "
            f"{s['head_per_request']:.0f} bytes per request, what our client sends (path length adjusted).",
        )
    )
    e2e = s["e2e"]
    out.append(
        (
            "End-to-end throughput (BatchSpanProcessor -> PrefactorSpanExporter -> server in another process)",
            [
                "server",
                "spans/s",
                "app produces spans/s",
                "requests",
                "per 1,000 spans",
                "1-item requests",
                "all delivered",
            ],
            [
                [
                    "local Prefactor-compatible server (prefactor_otel.devserver)",
                    fmt(e2e["devserver"]["spans_per_s"], 0),
                    fmt(e2e["devserver"]["produce_per_s"], 0),
                    fmt(e2e["devserver"]["requests"], 0),
                    fmt(e2e["devserver"]["requests_per_k"]),
                    f"{e2e['devserver']['single_item_pct']:.0f}%",
                    "yes" if e2e["devserver"]["ok"] and e2e["devserver"]["server_ok"] else "NO",
                ],
                [
                    "fast bulk sink (the exporter's own ceiling)",
                    fmt(e2e["bulk"]["spans_per_s"], 0),
                    fmt(e2e["bulk"]["produce_per_s"], 0),
                    fmt(e2e["bulk"]["requests"], 0),
                    fmt(e2e["bulk"]["requests_per_k"]),
                    f"{e2e['bulk']['single_item_pct']:.0f}%",
                    "yes" if e2e["bulk"]["ok"] else "NO",
                ],
            ],
            f"{e2e['devserver']['spans']:,} spans generated as fast as the SDK can, one process; spans/s = spans / "
            "(first span -> provider and exporter flushed, every agent run finished); median of "
            f"{e2e['devserver']['runs']} runs. The exporter runs with its defaults here (finish grace 6 s); "
            "'1-item requests' = share of bulk requests that carried a single item. 'All delivered' is checked on "
            "the server's side too.",
        )
    )
    steady_table = []
    for row in s["steady"]:
        for kind, label in (
            ("otlp", "OTLPSpanExporter -> fast OTLP sink"),
            ("prefactor", "PrefactorSpanExporter -> local server"),
        ):
            cell = row[kind]
            steady_table.append(
                [
                    f"{row['rate']:,}",
                    label,
                    fmt(cell["cpu_us"]),
                    fmt(cell["requests_per_k"]),
                    f"{cell['single_pct']:.0f}%",
                    "yes" if cell["ok"] else "NO",
                ]
            )
    out.append(
        (
            "Steady load (agent runs paced at a fixed span rate, BatchSpanProcessor and exporter with their defaults)",
            [
                "spans/s",
                "exporter",
                "background CPU us/span",
                "requests per 1,000 spans",
                "1-item requests",
                "all delivered",
            ],
            steady_table,
            f"{s['steady_seconds']:g} s per run, median of {s['steady'][0]['prefactor']['runs']} runs. Background "
            "CPU = the process's CPU outside the application thread (BatchSpanProcessor's worker, the exporter and its "
            "threads) per span. What a long-running service sees: agent runs keep reaching the end of their finish "
            "grace (6 s) while new spans arrive.",
        )
    )
    scale_rows = [
        [
            f"{r['spans']:,}" + (f", finish grace {r['grace']:g} s" if r["grace"] else ""),
            fmt(r["open_traces"], 0),
            fmt(r["cpu_us"]),
            f"±{r['spread']:.0f}%",
            fmt(r["gc_us"]),
            fmt(r["no_gc_us"]),
            fmt(r["first_tenth_us"]),
            fmt(r["last_tenth_us"]),
            f"{r['trend'] * 100:+.1f}%",
            fmt(r["lead_in_us"]) if r.get("lead_in_us") else "-",
            fmt(r["peak_rss_mb"]),
            fmt(r["rss_growth_mb"]),
            str(r["runs"]),
        ]
        for r in s["scale"]
    ]
    out.append(
        (
            "Scaling: CPU per span and peak RSS vs spans exported (PrefactorSpanExporter)",
            [
                "spans",
                "open runs (max)",
                "CPU us/span",
                "spread",
                "of which GC",
                "without GC",
                "first 10%, no GC",
                "last 10%, no GC",
                "trend, no GC",
                "first batch us/span",
                "peak RSS MB",
                "RSS growth MB",
                "runs",
            ],
            scale_rows,
            f"Finish grace 0 (runs finished as soon as their root is delivered): CPU/span at {s['rss_largest']:,} vs "
            f"{s['scale'][0]['spans']:,}: {s['scale_growth'] * 100:+.1f}% ({s['scale_growth_no_gc'] * 100:+.1f}% "
            "without the garbage collector's passes)."
            + (
                f" With the default grace of 6 s: {s['scale_growth_grace'] * 100:+.1f}% vs the first row."
                if s["scale_growth_grace"] is not None
                else ""
            )
            + f" Within the {s['rss_largest']:,}-span runs, the trend of per-batch CPU without GC: "
            f"{s['scale_drift'] * 100:+.1f}% (grace 0)"
            + (f", {s['scale_drift_grace'] * 100:+.1f}% (grace 6 s)." if s["scale_drift_grace"] is not None else ".")
            + f" A fresh process per run, warmed up with {4 * 512:,} spans through a throwaway exporter, then a fresh "
            "exporter whose first batch of 512 is not counted ('first batch': its one-time costs, connection, journal "
            "file, the agent's first register, shown on their own), fed spans generated on the fly in batches of 512 "
            "(nothing kept), as fast as they come; open runs = the most agent runs the planner held at once; "
            "'first/last 10%, no GC' = median over those batches of CPU/span minus the collector's passes; 'trend' = "
            "the change from the first to the last batch on the Theil-Sen line through every batch (median of the "
            "pairwise slopes; with a grace, over the batches after the first grace period when there are 10: before "
            "it no run finishes), median over runs; RSS growth = peak RSS - RSS before the measured exporter.",
        )
    )
    rss = s["rss"]
    out.append(
        (
            f"Peak RSS of the exporting process at {s['rss_largest']:,} spans",
            ["exporter", "peak RSS MB", "RSS growth MB", "CPU us/span"],
            [
                [
                    "none (the SDK generating spans only)",
                    fmt(rss["none"]["peak_rss_mb"]),
                    fmt(rss["none"]["rss_growth_mb"]),
                    "-",
                ],
                [
                    "OTLPSpanExporter",
                    fmt(rss["otlp"]["peak_rss_mb"]),
                    fmt(rss["otlp"]["rss_growth_mb"]),
                    fmt(rss["otlp"]["cpu_us"]),
                ],
                [
                    "PrefactorSpanExporter",
                    fmt(rss["prefactor"]["peak_rss_mb"]),
                    fmt(rss["prefactor"]["rss_growth_mb"]),
                    fmt(rss["prefactor"]["cpu_us"]),
                ],
            ],
            f"Median of {rss['prefactor']['runs']} runs (OTLP and none: {rss['otlp']['runs']}).",
        )
    )
    app = s["app"]
    p = s["app_params"]
    app_rows = []
    for variant, label in (("cpu", "CPU-bound loop"), ("io", f"I/O-bound loop ({p['io_ms']:g} ms per LLM call)")):
        row = app[variant]
        app_rows.append(
            [
                label,
                fmt(row["none"]["wall"], 0),
                f"{fmt(row['otlp']['wall'], 0)} ({row['otlp']['overhead_pct']:+.1f}%)",
                f"{fmt(row['prefactor']['wall'], 0)} ({row['prefactor']['overhead_pct']:+.1f}%)",
                f"{fmt(row['processor']['wall'], 0)} ({row['processor']['overhead_pct']:+.1f}%)",
                f"±{row['noise_pct']:.1f}%",
                ("yes" if row["pass"] else "NO") + " / " + ("yes" if row["processor_pass"] else "NO"),
            ]
        )
    out.append(
        (
            "Overhead on the application thread (agent loop wall time, us per agent run of 9 spans)",
            [
                "loop",
                "no exporter",
                "OTLP + BSP",
                "Prefactor + BSP",
                "PrefactorSpanProcessor",
                "noise",
                "within noise of OTLP (BSP / processor)",
            ],
            app_rows,
            f"Median of {p['reps']} interleaved rounds, each a fresh process; CPU-bound: {p['cpu_runs']} runs, "
            f"{p['work']:,} iterations of pure-Python work in each of the 6 leaf steps, no sleeping (worst case: the "
            f"exporter thread competes for the GIL); I/O-bound: {p['io_runs']} runs, each chat call sleeps "
            f"{p['io_ms']:g} ms. BatchSpanProcessor with its defaults; PrefactorSpanProcessor with the exporter's "
            "defaults "
            "(live spans, finish grace). Noise = the largest half-range of the runs.",
        )
    )
    out.append(
        (
            "Targets",
            ["target", "measured", "result"],
            [[name, value, "-" if ok is None else "PASS" if ok else "FAIL"] for name, ok, value in s["targets"]],
            "",
        )
    )
    out.append(
        (
            "Profile: where PrefactorSpanExporter's CPU per span goes (thread time per stage)",
            ["stage", "us/span", "share"],
            [[name, fmt(value), f"{value / s['phases_total'] * 100:.0f}%"] for name, value in s["phases"]]
            + [["total (export + shutdown, stages wrapped)", fmt(s["phases_total"]), "100%"]],
            "Stages overlap: `transport: HTTP` includes `response validation` (and `compression` where the code"
            " has it), `planner: plan` includes `ids`; the rest is wiring in exporter.py and delivery.py."
            " Redaction's share is the CPU table's redaction row.",
        )
    )
    return out


def setup_tables(s: Result) -> list[tuple[str, list[str], list[list[str]], str]]:
    """The small-span workload's exporting-thread CPU, both set-ups on both workloads, bytes on the wire, the
    gateway."""
    out: list[tuple[str, list[str], list[list[str]], str]] = []
    small = s.get("small")
    if small:
        out.append(
            (
                "CPU per span in the exporting thread, small-span workload",
                ["exporter", "CPU us/span", "spread", "x OTLP"],
                [
                    [label, fmt(small[f"cpu_{kind}"]), f"±{small[f'cpu_{kind}_spread']:.0f}%", f"{ratio:.2f}"]
                    for kind, label, ratio in (
                        ("floor", "JSON floor", small["cpu_floor"] / small["cpu_otlp"]),
                        ("otlp", "OTLPSpanExporter", 1.0),
                        ("prefactor", "PrefactorSpanExporter", small["ratio_otlp"]),
                    )
                ],
                f"{small['spans']:,} spans ({small['traces']:,} web requests running an agent: 12 spans each, 3"
                " of them GenAI; workload.py), measured as the table above. Every run delivered every span and "
                "finished every"
                f" run: {'yes' if small['delivery_ok'] else 'NO'}.",
            )
        )
    containers = gc_exporting_table(s)
    if containers:
        out.append(containers)
    setup = s.get("setup") or {}
    if setup:
        rows = []
        for workload, row in setup.items():
            for mode in ("otlp", "bsp", "processor"):
                cell = row[mode]
                rows.append(
                    [
                        workload,
                        SETUP_LABELS[mode],
                        fmt(cell["process_us"]),
                        f"±{cell['process_spread']:.0f}%",
                        f"{cell['process_us'] / row['otlp']['process_us']:.2f}",
                        f"{cell['app_us']:+.2f}",
                        f"±{cell['app_spread_us']:.2f}",
                        f"{cell['app_gc_us']:+.2f}",
                        "yes" if cell["ok"] else "NO",
                    ]
                )
        first = next(iter(setup.values()))
        making = ", ".join(f"{w}: {fmt(r['none_app_us'])} us/span" for w, r in setup.items())
        out.append(
            (
                "The two set-ups, whole process and application thread (CPU us per span beyond making the spans)",
                [
                    "workload",
                    "set-up",
                    "process CPU us/span",
                    "spread",
                    "x OTLP",
                    "app thread us/span",
                    "spread",
                    "of which GC",
                    "ok",
                ],
                rows,
                f"{first['spans']:,} spans per round, median of {first['runs']} interleaved rounds in one process"
                " after a warm-up round each. Spans are made by the SDK on the application's thread as fast as it "
                "can; then"
                " the provider is flushed and shut down. Process CPU = `time.process_time()` (every thread: the"
                " application's, BatchSpanProcessor's worker, the exporter's finisher) minus the same round's with no"
                " processor; app thread = the application thread's CPU while making the spans (on_start, on_end, the"
                " collector's passes it runs: 'of which GC') minus the no-processor round's"
                f" ({making}). Exporter"
                " defaults (finish grace 6 s; PrefactorSpanProcessor: live spans for agents, runs finished once their"
                " spans are in). BatchSpanProcessor's queue holds a whole round (no drops); ok = every span delivered.",
            )
        )
        collections = gc_setup_table(setup)
        if collections:
            out.append(collections)
        wire_rows = []
        for workload, row in setup.items():
            for mode in ("otlp", "bsp", "processor"):
                cell = row[mode]
                wire_rows.append(
                    [
                        workload,
                        SETUP_LABELS[mode],
                        fmt(cell["wire_bytes"], 0),
                        fmt(cell["decoded_bytes"], 0),
                        "/".join(cell["encodings"]) or "none",
                        f"{cell['wire_bytes'] / row['otlp']['decoded_bytes']:.2f}",
                        fmt(cell["head_bytes"], 0),
                        fmt(cell["requests_per_k"]),
                    ]
                )
        out.append(
            (
                "Bytes on the wire per span (request bodies as the sink received them)",
                [
                    "workload",
                    "set-up",
                    "as sent B/span",
                    "decoded B/span",
                    "Content-Encoding",
                    "x OTLP uncompressed",
                    "headers B/span",
                    "requests per 1,000 spans",
                ],
                wire_rows,
                "Same rounds as the table above. 'As sent' counts each body with its Content-Encoding, 'decoded'"
                " without it (the sink decodes gzip and zstd); OTLP sends uncompressed protobuf by default, the "
                "peer of the"
                " target.",
            )
        )
    gateway = s.get("gateway")
    if gateway:
        out.append(
            (
                "The OTLP gateway beside the exporter (from benchmarks/gateway.py's last full run)",
                ["contender (whole process)", "CPU us/span", "x in-process exporter", "x OTLP exporter"],
                [
                    ["PrefactorSpanExporter, in process", fmt(gateway["exporter_us"]), "1.00", ""],
                    [
                        "prefactor-otel gateway (OTLP/HTTP in, bulk out)",
                        fmt(gateway["gateway_us"]),
                        f"{gateway['x_exporter']:.2f}",
                        f"{gateway['x_otlp']:.2f}",
                    ],
                ],
                f"Read from benchmarks/gateway_notes.md ({gateway['when']}); the gateway runs the same mapping and"
                " pipeline after decoding OTLP. Run `python benchmarks/gateway.py` to refresh (minutes, not a quick"
                " run's seconds).",
            )
        )
    return out


def gc_exporting_table(s: Result) -> tuple[str, list[str], list[list[str]], str] | None:
    """GC containers one export() holds and collections in the exporting-thread runs, both workloads, where the
    run has them (a dump made before they existed has not)."""
    rows: list[list[str]] = []
    for workload, gc in (("realistic", s.get("gc")), ("small", (s.get("small") or {}).get("gc"))):
        for kind, label in GC_CONTAINER_LABELS.items():
            cell = (gc or {}).get(kind)
            if not cell:
                continue
            per_10k = cell["collections_per_10k"]
            rows.append(
                [
                    workload,
                    label,
                    fmt(cell["peak"], 0),
                    fmt(cell["held_after"], 0),
                    ratio_text(cell.get("peak_x_otlp")),
                    *([f"{value:.1f}" for value in per_10k] if per_10k else ["-", "-", "-"]),
                ]
            )
    if not rows:
        return None
    return (
        "Garbage collection in the exporting thread: GC containers in flight",
        [
            "workload",
            "exporter",
            "containers at the peak of one export()",
            "held when it returns",
            "peak x OTLP",
            "gen0 per 10k spans",
            "gen1",
            "gen2",
        ],
        rows,
        "Net GC objects (dicts, lists, instances, tuples: the containers the collector tracks and counts towards its"
        " next collection) the process holds during one export() of a 512-span batch, beyond what it held before:"
        " CPython's generation-0 count (allocations minus deallocations) with the collector disabled, sampled on"
        " every call and return of the exporting thread (measure.py's ContainerCount, after the timed runs); the"
        " median of 3 batches after a warm-up batch. 'Held when it returns' includes what the exporter keeps for"
        " open runs and reference cycles only a collection frees. Each 700 net containers trigger a generation-0"
        " collection of the whole process, every 10th a gen1, every 10th gen1 a full (gen2) collection when enough"
        " has survived: what a batch holds in flight is what it adds to the host's collections. Collections per"
        " 10,000 spans: every thread's, during the timed export() + shutdown() runs of the table above (mean over"
        " runs; the pre-made spans frozen out of the collector's scans).",
    )


def gc_setup_table(setup: Result) -> tuple[str, list[str], list[list[str]], str] | None:
    """Collections by generation and the collector's CPU per span in the set-ups' rounds, beside OTLP's."""
    rows: list[list[str]] = []
    for workload, row in setup.items():
        gc = row.get("gc")
        if not gc:
            continue
        for mode in SETUP_MODES:
            cell = gc[mode]
            rows.append(
                [
                    workload,
                    SETUP_LABELS.get(mode, "no processor (the spans alone)"),
                    *(f"{value:.1f}" for value in cell["collections_per_10k"]),
                    ratio_text(cell["gen2_x_otlp"]),
                    f"{cell['app_us']:.2f}",
                    f"{cell['other_us']:.2f}",
                    f"{cell['total_us']:.2f}",
                    ratio_text(cell["total_x_otlp"]),
                ]
            )
    if not rows:
        return None
    spans = next(iter(setup.values()))["spans"]
    return (
        "Garbage collection in the set-ups (same rounds as the set-ups table)",
        [
            "workload",
            "set-up",
            "gen0 per 10k spans",
            "gen1",
            "gen2 (full)",
            "gen2 x OTLP",
            "GC CPU us/span, app thread",
            "other threads",
            "all",
            "all x OTLP",
        ],
        rows,
        "Every thread's collections during each round (making the spans, flushing, shutting down; a `gc.collect()`"
        " before it), by generation, per 10,000 spans: all collections of all rounds / all their spans. GC CPU ="
        " thread CPU inside the collector's passes (`gc.callbacks`), on the application thread (making, flushing,"
        " shutting down) and on the others (BatchSpanProcessor's worker, the exporter's finisher), per span, median"
        " of the rounds; not net of the no-processor round (its row is the spans' own). Counts are deterministic"
        " where timings are not: a full collection of the whole heap (tens of ms) landing in a round is what moves"
        " the whole-process line between runs. CPython runs one once more than 10 gen1 collections have run since"
        " the last (here: since the `gc.collect()` before the round) and the objects they promoted exceed a quarter"
        f" of the old heap: at {spans:,} spans per round, more than {10 / spans * 10_000:.1f} gen1 per 10k spans.",
    )


def render_text(title: str, header: list[str], rows: list[list[str]], note: str) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    lines = [title, "-" * len(title)]
    for row in [header, *rows]:
        cells = [
            str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells))
    if note:
        lines.append(note.replace("**", ""))
    return "\n".join(lines)


def render_markdown(title: str, header: list[str], rows: list[list[str]], note: str) -> str:
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    if note:
        lines += ["", note]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- RESULTS.md


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def work_tree_commit() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "src"], cwd=ROOT, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head.stdout.strip() + ("+uncommitted src changes" if dirty.stdout.strip() else "")


def environment() -> Result:
    cpu_model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = "unknown"
    try:
        kib = int(re.findall(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text())[0])
        memory = f"{kib / 1024 / 1024:.1f} GiB"
    except (OSError, IndexError):
        pass
    try:
        from google.protobuf.internal import api_implementation

        protobuf_impl = api_implementation.Type()
    except ImportError:
        protobuf_impl = "?"
    return {
        "cpu": cpu_model,
        "cores": os.cpu_count(),
        "memory": memory,
        "os": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "commit": SOURCE["commit"] + " (--ref)" if "commit" in SOURCE else work_tree_commit(),
        "versions": {
            "prefactor-otel": _version("prefactor-otel"),
            "opentelemetry-sdk": _version("opentelemetry-sdk"),
            "opentelemetry-exporter-otlp-proto-http": _version("opentelemetry-exporter-otlp-proto-http"),
            "protobuf": f"{_version('protobuf')} ({protobuf_impl})",
            "requests": _version("requests"),
            "httpx": _version("httpx"),
            "pydantic": _version("pydantic"),
        },
    }


def history_row(s: Result, env: Result, when: str, quick: bool) -> str:
    return (
        f"| {when} | {env['commit']} | {'quick' if quick else 'full'} | {fmt(s['cpu_prefactor'])} | "
        f"{fmt(s['cpu_otlp'])} | {fmt(s['cpu_floor'])} | {s['ratio_otlp']:.2f}x | {s['ratio_floor']:.2f}x | "
        f"{s['request_ratio']:,.0f}x | "
        f"{s['scale_growth'] * 100:+.1f}% | {fmt(s['e2e']['devserver']['spans_per_s'], 0)} | "
        f"{fmt(s['rss']['prefactor']['peak_rss_mb'])} |"
    )


def write_results(
    path: Path, s: Result, env: Result, command: str, duration: float, quick: bool, when: str, *, new_row: bool = True
) -> None:
    previous: list[str] = []
    hostile = ""  # written by benchmarks/hostile.py between its markers: carried over as it is
    if path.exists():
        text = path.read_text()
        if HOSTILE_START in text and HOSTILE_END in text:
            hostile = HOSTILE_START + text.split(HOSTILE_START, 1)[1].split(HOSTILE_END, 1)[0] + HOSTILE_END
        if HISTORY_START in text and HISTORY_END in text:
            block = text.split(HISTORY_START, 1)[1].split(HISTORY_END, 1)[0]
            previous = [line for line in block.strip().splitlines() if line.startswith("| 20")]
    history = [*previous, history_row(s, env, when, quick)][-30:] if new_row else previous
    versions = "\n".join(f"| {name} | {version} |" for name, version in env["versions"].items())
    parts = [
        "# Benchmark results",
        "",
        f"Written by `{command}` on {when} in {duration:.0f} s"
        + (" (quick smoke run: few runs, small sizes)" if quick else "")
        + ". "
        "Re-run it to refresh this file; the notes under *Profile* come from `benchmarks/profile_notes.md` and the "
        "*History* table keeps one row per run.",
        "",
        "## Machine",
        "",
        "| | |",
        "| --- | --- |",
        f"| CPU | {env['cpu']} |",
        f"| cores | {env['cores']} |",
        f"| memory | {env['memory']} |",
        f"| OS | {env['os']} |",
        f"| Python | {env['python']} |",
        f"| prefactor-otel commit | {env['commit']} |",
        f"| machine load | {load_note(s['load'])} |",
        versions,
        "",
        "## Results",
        "",
    ]
    for table in tables(s):
        if table[0].startswith("Profile"):
            continue
        parts += [render_markdown(*table), ""]
    parts += ["## Profile", ""]
    profile = [t for t in tables(s) if t[0].startswith("Profile")]
    parts += [render_markdown(*profile[0]), ""]
    if s.get("cprofile"):
        parts += [
            "### cProfile: PrefactorSpanExporter's most expensive functions (self time)",
            "",
            "| function | calls | self us/span | cumulative us/span |",
            "| --- | --- | --- | --- |",
        ]
        parts += [
            f"| `{r['function']}` | {r['calls']:,} | {fmt(r['self_us_per_span'], 2)} | "
            f"{fmt(r['cumulative_us_per_span'], 2)} |"
            for r in s["cprofile"]["top_self"]
        ]
        parts += ["", "(cProfile inflates small, frequently called functions; the stage table above is unbiased.)", ""]
    notes = HERE / "profile_notes.md"
    if notes.exists():
        parts += [notes.read_text().strip(), ""]
    soak = HERE / "soak_notes.md"  # written by hand from benchmarks/soak_dead_backend.py (a 10-minute run)
    if soak.exists():
        parts += [soak.read_text().strip(), ""]
    gateway = HERE / "gateway_notes.md"  # written by benchmarks/gateway.py (a full run)
    if gateway.exists():
        parts += [gateway.read_text().strip(), ""]
    fleet = HERE / "fleet_notes.md"  # written by benchmarks/fleet.py (the Collector and two replicas)
    if fleet.exists():
        parts += [fleet.read_text().strip(), ""]
    floors = HERE / "floors_notes.md"  # written by benchmarks/floors.py --write (per stage: our cost and its floor)
    if floors.exists():
        parts += [floors.read_text().strip(), ""]
    if hostile:
        parts += [hostile, ""]
    parts += [
        "## History",
        "",
        "| date | commit | run | ours us/span | OTLP us/span | floor us/span | x OTLP | x floor | fewer requests | "
        "CPU growth | e2e spans/s | peak RSS MB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        HISTORY_START,
        *history,
        HISTORY_END,
        "",
    ]
    path.write_text("\n".join(parts))


def load_note(load: Result) -> str:
    text = (
        f"Other processes used {load['other_cpu_s']:.0f} CPU-seconds during the run ({load['other_pct']:.0f}% of the "
        f"machine), hypervisor steal {load['steal_s']:.0f} s."
    )
    if load["busy"]:
        text += " WARNING: the machine was not quiet; figures are noisier than usual, re-run on an idle machine."
    return text


def headline(s: Result) -> str:
    return (
        f"PrefactorSpanExporter: {fmt(s['cpu_prefactor'])} us of CPU per span in the exporting thread "
        f"({s['ratio_otlp']:.2f}x OTLP/HTTP, {s['ratio_floor']:.2f}x a bare json.dumps), "
        f"{s['request_ratio']:,.0f}x fewer HTTP requests than per-span REST calls "
        f"({fmt(s['requests']['prefactor'][0])} vs {fmt(s['requests']['rest'][0], 0)} per 1,000 spans), "
        f"{fmt(s['e2e']['devserver']['spans_per_s'], 0)} spans/s end to end into the local server."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="prefactor-otel benchmarks (see the module docstring)")
    parser.add_argument("--quick", action="store_true", help="smoke run: few runs, small sizes (< 90 s)")
    parser.add_argument("--out", type=Path, help="write the results here (default: benchmarks/RESULTS.md, full runs)")
    parser.add_argument("--profile", action="store_true", help="also run cProfile (automatic when a CPU target fails)")
    parser.add_argument("--json", type=Path, help="also dump the raw measurements as JSON here")
    parser.add_argument("--ref", help="benchmark prefactor_otel as committed at this git ref instead of the work tree")
    parser.add_argument(
        "--render",
        type=Path,
        metavar="JSON",
        help="measure nothing: write RESULTS.md again from a --json dump (after editing profile_notes.md)",
    )
    args = parser.parse_args(argv)
    if args.render:
        dump = json.loads(args.render.read_text())
        meta = dump["meta"]
        # The gateway's figures come from gateway_notes.md, which may have been measured since the dump: read again.
        summary = dump["summary"]
        summary["gateway"] = gateway_figures()
        summary["targets"] = [
            list(gateway_target(summary["gateway"])) if row[0] == GATEWAY_TARGET else row for row in summary["targets"]
        ]
        out = args.out or HERE / "RESULTS.md"
        write_results(
            out,
            dump["summary"],
            meta["env"],
            meta["command"],
            meta["duration"],
            meta["quick"],
            meta["when"],
            new_row=False,
        )
        print(f"wrote {out}")
        return 0
    if args.ref:
        print(f"benchmarking prefactor_otel at {use_ref(args.ref)} ({args.ref})", flush=True)
    try:
        return run(args)
    finally:
        if "path" in SOURCE:
            shutil.rmtree(Path(SOURCE["path"]).parent, ignore_errors=True)


def run(args: argparse.Namespace) -> int:
    plan = QUICK if args.quick else FULL
    started = time.monotonic()
    load = MachineLoad()
    print(f"prefactor-otel benchmarks ({'quick' if args.quick else 'full'} run) on {os.cpu_count()} cores", flush=True)
    results = measure(plan)
    summary = summarize(results, plan)
    cpu_missed = summary["ratio_otlp"] > 1.0 or summary["ratio_floor"] > 3.0
    if args.profile or (cpu_missed and not args.quick):
        progress("profiling PrefactorSpanExporter (cProfile)")
        with server() as sinks:
            summary["cprofile"] = child("profile", {"spans": plan.cpu_spans, "bulk": sinks.info["bulk"], "top": 20})
    duration = time.monotonic() - started
    summary["load"] = load.report(duration)
    print()
    for table in tables(summary):
        print(render_text(*table))
        print()
    if summary.get("cprofile"):
        print("cProfile, top functions by self time (us/span):")
        for row in summary["cprofile"]["top_self"][:12]:
            print(f"  {row['self_us_per_span']:7.2f}  {row['function']}")
        print()
    print("Headline:", headline(summary))
    print(load_note(summary["load"]))
    print(f"\n{duration:.0f} s")
    out = args.out or (None if args.quick else HERE / "RESULTS.md")
    command = (
        "python benchmarks/run.py" + (" --quick" if args.quick else "") + (f" --ref {args.ref}" if args.ref else "")
    )
    meta = {
        "env": environment(),
        "command": command,
        "duration": duration,
        "quick": args.quick,
        "when": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    if out is not None:
        write_results(out, summary, meta["env"], command, duration, args.quick, meta["when"])
        print(f"wrote {out}")
    else:
        print("(quick run: nothing written; pass --out FILE to write the results)")
    if args.json:
        args.json.write_text(json.dumps({"results": results, "summary": summary, "meta": meta}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
