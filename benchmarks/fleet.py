"""A fleet measured whole: an OTLP client -> the Collector (load balancing, static) -> two gateway replicas -> a sink
(issue 23, part 4).

    python benchmarks/fleet.py            # 20,480 spans x 3 rounds; memory per open trace with 1,000 / 2,000 traces
    python benchmarks/fleet.py --quick    # a smoke run (about a minute), prints only

A full run writes its section, "A fleet", to benchmarks/fleet_notes.md and into benchmarks/RESULTS.md (between
`<!-- fleet:start -->` and `<!-- fleet:end -->`; run.py keeps it there when it rewrites the file).

Needs the `gateway` and `bench` extras and the project's Collector (`python -m tests.collector_build` builds it once;
`PREFACTOR_COLLECTOR_BINARY` names another). Everything runs on 127.0.0.1, each part in its own process:
- the fast bulk sink (sinks.py: answers `POST /api/v1/bulk` like Prefactor, counts items);
- two `prefactor-otel gateway` replicas, each on its own directory, runs finished at once (finish grace 0);
- `otelcol-prefactor` on collector/fleet-static.yaml exactly as shipped (only its environment differs);
- the client: a fresh process exporting workload.py's agent traces (9 spans a run, ~1 KB GenAI messages) with the
  OTel Python SDK's OTLP/HTTP exporter, 512 spans a request, back to back (each waits for the Collector's answer);
- this process only orchestrates.

Figures:
- **End to end**: spans/s from the client's first export to the last bulk item counted at the sink (the sink's
  count standing still for 2 s after the client is done ends the wait; items are checked against the in-process
  exporter's count for the same spans).
- **CPU per span of each part**: utime + stime from /proc/<pid>/stat around the load, for the Collector, each
  replica and the sink; the client's is its own `time.process_time()` around its exports (span generation excluded).
  On 2 cores every part competes with the others: the sum is the chain's cost, the spans/s is this machine's.
- **Memory per open trace**: one replica, fed (directly over OTLP/HTTP) N traces' children without their root, held
  open (max wait one hour): (RSS with 2N open - RSS with N open) / N, after a warm-up.
Nothing here is compared with a fixed number; the capacity note states which figures are projected.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from gateway import BATCH, LISTENING, _env, items_at, post_all, reset_sink, run_child, write_section

Result = dict[str, Any]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
INGRESS_TOKEN = "bench-ingress-token"
WAIT_LIMIT_S = 300.0
STILL_S = 2.0


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ------------------------------------------------------------------------------------------ the client (a child)


def child_client(params: Result) -> Result:
    """In a fresh process: the OTel SDK's OTLP/HTTP exporter sends the spans to the Collector, 512 a request."""
    from measure import otlp_exporter
    from opentelemetry.sdk.trace.export import SpanExportResult
    from workload import SpanSource, batched

    spans = SpanSource(seed=params["seed"]).spans(params["spans"])[: params["spans"]]
    exporter = otlp_exporter(params["url"])
    failed = 0
    started_at = time.time()
    cpu = time.process_time()
    for batch in batched(spans, BATCH):
        if exporter.export(batch) is not SpanExportResult.SUCCESS:
            failed += len(batch)
    cpu = time.process_time() - cpu
    ended_at = time.time()
    exporter.shutdown()
    return {"spans": len(spans), "failed": failed, "cpu_s": cpu, "started_at": started_at, "ended_at": ended_at}


# ------------------------------------------------------------------------------------------ the parts


class Replica:
    """One `prefactor-otel gateway` process on its own directory; its HTTP and gRPC ports read from its line."""

    def __init__(self, env: dict[str, str], directory: str) -> None:
        command = [sys.executable, "-m", "prefactor_otel", "gateway", "--http-port", "0", "--grpc-port", "0"]
        self.process = subprocess.Popen(
            [*command, "--dir", directory],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
            cwd=ROOT,
        )
        assert self.process.stdout is not None
        for _ in range(1000):  # bounded: the listening line comes among the first few
            line = self.process.stdout.readline()
            if not line:
                raise RuntimeError("a gateway replica exited before listening")
            found = LISTENING.search(line)
            if found:
                self.url = f"http://{found['http']}:{found['hport']}"
                self.grpc = f"{found['grpc']}:{found['gport']}"
                break
        else:
            raise RuntimeError("a gateway replica did not say where it listens")
        for _ in range(600):
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=5) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("a gateway replica never became ready")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


class Collector:
    """`otelcol-prefactor` on one of collector/'s configurations as shipped (fleet-static.yaml, or
    fleet-static-durable.yaml with its queue in `queue_dir`), ready once it says so."""

    def __init__(self, replicas: list[Replica], config: str = "fleet-static.yaml", queue_dir: str = "") -> None:
        sys.path.insert(0, str(ROOT))
        from tests.collector_build import collector_binary

        self.http_port = free_port()
        env = {key: value for key, value in os.environ.items() if not key.startswith(("PREFACTOR_", "OTEL_"))}
        env.update(
            COLLECTOR_OTLP_GRPC_ENDPOINT=f"127.0.0.1:{free_port()}",
            COLLECTOR_OTLP_HTTP_ENDPOINT=f"127.0.0.1:{self.http_port}",
            COLLECTOR_METRICS_HOST="127.0.0.1",
            COLLECTOR_METRICS_PORT=str(free_port()),
            PREFACTOR_GATEWAY_REPLICAS="[" + ", ".join(replica.grpc for replica in replicas) + "]",
            PREFACTOR_GATEWAY_INGRESS_TOKEN=INGRESS_TOKEN,
            PREFACTOR_GATEWAY_INSECURE="true",
            COLLECTOR_QUEUE_DIR=queue_dir,
        )
        command = [str(collector_binary()), "--config", str(ROOT / "collector" / config)]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        assert self.process.stdout is not None
        seen: list[str] = []
        for _ in range(10_000):  # bounded: "Everything is ready" comes among the first lines
            line = self.process.stdout.readline()
            if not line:
                raise RuntimeError("the Collector exited:\n" + "".join(seen[-30:]))
            seen.append(line)
            if "Everything is ready" in line:
                break
        else:
            raise RuntimeError("the Collector never became ready")
        # Its later lines (warnings only at this level) go nowhere, so a full pipe never blocks it.
        import threading

        threading.Thread(target=self.process.stdout.read, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def wait_settled(sink_url: str, expected: int) -> tuple[int, float]:
    """Wait until the sink has `expected` items, or its count stood still for STILL_S; (items, when it last rose
    as time.time())."""
    deadline = time.monotonic() + WAIT_LIMIT_S
    last, rose_at = items_at(sink_url), time.time()
    while time.monotonic() < deadline:
        now = items_at(sink_url)
        if now != last:
            last, rose_at = now, time.time()
        if now >= expected or time.time() - rose_at >= STILL_S:
            return now, rose_at
        time.sleep(0.005)
    return last, rose_at


# ------------------------------------------------------------------------------------------ orchestration


def replica_env(bulk: str, agent_id: str, **extra: str) -> dict[str, str]:
    env = _env(bulk, agent_id)
    env.update(PREFACTOR_GATEWAY_TOKENS=INGRESS_TOKEN, **extra)
    return env


def chain_round(
    args: argparse.Namespace, bulk: str, sink_pid: int, agent_id: str, expected: int, config: str
) -> Result:
    reset_sink(bulk)
    with tempfile.TemporaryDirectory(prefix="prefactor-bench-fleet-") as directory:
        replicas = [Replica(replica_env(bulk, agent_id), f"{directory}/gw-{name}") for name in ("a", "b")]
        collector = None
        try:
            collector = Collector(replicas, config, f"{directory}/collector-queue")
            pids = {"collector": collector.process.pid, "sink": sink_pid}
            pids.update({f"replica {name}": r.process.pid for name, r in zip("ab", replicas, strict=True)})
            before = {name: cpu_s(pid) for name, pid in pids.items()}
            client = run_child_here("client", {"seed": 1, "spans": args.spans, "url": collector.url})
            items, last_item_at = wait_settled(bulk, expected)
            cpu = {name: cpu_s(pid) - before[name] for name, pid in pids.items()}
            cpu["client"] = client["cpu_s"]
        finally:
            if collector is not None:
                collector.stop()
            for replica in replicas:
                replica.stop()
    spans = client["spans"]
    return {
        "spans": spans,
        "client_failed": client["failed"],
        "items": items,
        "spans_per_s": spans / (last_item_at - client["started_at"]),
        "client_spans_per_s": spans / (client["ended_at"] - client["started_at"]),
        "cpu_us_per_span": {name: value / spans * 1e6 for name, value in cpu.items()},
    }


def run_child_here(kind: str, params: Result) -> Result:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PREFACTOR_", "OTEL_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(HERE), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, __file__, "--child", kind, json.dumps(params)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=900,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"child {kind} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def open_trace_memory(args: argparse.Namespace, bulk: str, agent_id: str) -> Result:
    """RSS of one replica holding N, then 2N traces open (their children, no root): the slope per trace."""
    import httpx
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from workload import SpanSource, batched

    n = args.open_traces
    source = SpanSource(seed=3)
    warm = [encode_spans(batch).SerializeToString() for batch in batched(source.spans(2 * BATCH), BATCH)]
    by_trace: dict[int, list[Any]] = {}
    for span in source.spans(2 * n * 9):
        if span.parent is not None and span.context is not None:  # the children: each trace stays open
            by_trace.setdefault(span.context.trace_id, []).append(span)
    traces = list(by_trace.values())[: 2 * n]
    halves = []
    for part in (traces[:n], traces[n:]):
        spans = [span for trace in part for span in trace]
        halves.append([encode_spans(batch).SerializeToString() for batch in batched(spans, BATCH)])
    env = replica_env(
        bulk,
        agent_id,
        PREFACTOR_MAX_WAIT_SECONDS="3600",
        PREFACTOR_MAX_WAITING_SPANS=str(10**7),
        PREFACTOR_MAX_QUEUED_SPANS=str(10**7),
    )
    out: Result = {"traces": n, "spans_per_trace_held": sum(len(trace) for trace in traces[:n]) / n}
    with tempfile.TemporaryDirectory(prefix="prefactor-bench-fleet-mem-") as directory:
        replica = Replica(env, f"{directory}/gw")
        try:
            with httpx.Client(timeout=30, headers={"Authorization": f"Bearer {INGRESS_TOKEN}"}) as client:
                post_all(client, replica.url, warm)  # whole traces: the code paths and caches are warm
                time.sleep(2.0)
                out["rss_idle_mb"] = rss_mb(replica.process.pid)
                for index, bodies in enumerate(halves):
                    post_all(client, replica.url, bodies)
                    time.sleep(2.0)
                    out[f"rss_{index + 1}n_mb"] = rss_mb(replica.process.pid)
        finally:
            replica.stop()
    out["kib_per_open_trace"] = (out["rss_2n_mb"] - out["rss_1n_mb"]) * 1024 / n
    return out


def measure(args: argparse.Namespace) -> Result:
    from measure import bench_agent_id
    from run import server

    agent_id = bench_agent_id()
    results: Result = {"spans": args.spans, "rounds": args.rounds}
    with server() as sinks:
        bulk = sinks.info["bulk"]
        sink_pid = sinks._process.pid  # the sink's own process: its CPU is one part of the chain
        reset_sink(bulk)
        env = _env(bulk, agent_id)
        reference = run_child(
            "inprocess", {"kind": "prefactor", "seed": 1, "spans": args.spans, "url": bulk, "agent_id": agent_id}, env
        )
        expected = items_at(bulk)
        results["expected_items"] = expected
        results["reference_cpu_us_per_span"] = reference["cpu_s"] / reference["spans"] * 1e6
        rounds, durable = [], []
        for index in range(args.rounds):  # the two configurations in turn: the ratio between them is fair
            print(f"  .. round {index + 1} of {args.rounds}", file=sys.stderr, flush=True)
            rounds.append(chain_round(args, bulk, sink_pid, agent_id, expected, "fleet-static.yaml"))
            durable.append(chain_round(args, bulk, sink_pid, agent_id, expected, "fleet-static-durable.yaml"))
        results["durable"] = {
            "spans_per_s": statistics.median(r["spans_per_s"] for r in durable),
            "collector_us_per_span": statistics.median(r["cpu_us_per_span"]["collector"] for r in durable),
            "items": [r["items"] for r in durable],
            "client_failed": sum(r["client_failed"] for r in durable),
        }
        results["rounds_raw"] = rounds
        results["spans_per_s"] = statistics.median(r["spans_per_s"] for r in rounds)
        results["client_spans_per_s"] = statistics.median(r["client_spans_per_s"] for r in rounds)
        results["items"] = [r["items"] for r in rounds]
        results["client_failed"] = sum(r["client_failed"] for r in rounds)
        parts = rounds[0]["cpu_us_per_span"].keys()
        results["cpu_us_per_span"] = {p: statistics.median(r["cpu_us_per_span"][p] for r in rounds) for p in parts}
        print("  .. memory per open trace", file=sys.stderr, flush=True)
        results["memory"] = open_trace_memory(args, bulk, agent_id)
    return results


# ------------------------------------------------------------------------------------------ the note

HEADROOM = 0.7  # plan a replica (one Python process: about one core) at 70 % of its measured per-core rate


def otlp_bytes_per_span() -> float:
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from workload import SpanSource, batched

    spans = SpanSource(seed=4).spans(4 * BATCH)
    bodies = [encode_spans(batch).SerializeToString() for batch in batched(spans, BATCH)]
    return sum(len(body) for body in bodies) / len(spans)


def durable_lines(results: Result) -> list[str]:
    """The persistent queue's cost, measured in the same run, rounds taken in turn with the in-memory one."""
    durable = results.get("durable")
    if not durable:
        return []
    collector = results["cpu_us_per_span"]["collector"]
    return [
        "",
        f"The Collector with its queue on disk (collector/fleet-static-durable.yaml: file_storage, fsync on every "
        f"write, no batch processor), rounds taken in turn with the in-memory one: **{durable['spans_per_s']:,.0f} "
        f"spans/s** end to end (x{durable['spans_per_s'] / results['spans_per_s']:.2f} of fleet-static.yaml's), "
        f"Collector {durable['collector_us_per_span']:.1f} us/span (x{durable['collector_us_per_span'] / collector:.2f}"
        f"); items at the sink {durable['items']}, client exports refused: {durable['client_failed']}. On a loaded "
        "machine the end-to-end rate moves with the load more than with the file: read the CPU ratio.",
    ]


def report(results: Result) -> str:
    cpu = results["cpu_us_per_span"]
    replicas_us = cpu["replica a"] + cpu["replica b"]
    reference = results["reference_cpu_us_per_span"]
    total = sum(cpu.values())
    per_core = 1e6 / replicas_us  # spans/s one core of replica CPU takes in
    collector_per_core = 1e6 / cpu["collector"]
    memory = results["memory"]
    items_per_span = results["expected_items"] / results["spans"]
    bytes_per_span = results["otlp_bytes_per_span"]
    lines = [
        f"{results['spans']:,} spans a round (workload.py's agent traces, 9 spans a run), {results['rounds']} "
        f"round(s), medians. Client: OTel Python OTLP/HTTP exporter, 512 spans a request, one connection.",
        "",
        f"End to end (client's first export -> last bulk item at the sink): **{results['spans_per_s']:,.0f} spans/s** "
        f"on this machine, every part sharing its 2 cores (the client alone got its answers at "
        f"{results['client_spans_per_s']:,.0f} spans/s). Bulk items at the sink per round {results['items']} "
        f"(the in-process exporter's count for the same spans: {results['expected_items']:,}); client exports "
        f"refused: {results['client_failed']}. The replicas run with finish grace 0 here (as in "
        "benchmarks/gateway.py): a span the Collector delivers after its run's root is then dropped "
        '(`instance_already_finished`, docs/gateway.md "Fleets"), the likely cause of any items short; the '
        "gateway's default grace (15 s) takes them.",
        "",
        "| part (whole process) | CPU us/span | share | x OTLP client |",
        "| --- | --- | --- | --- |",
    ]
    order = ("client", "collector", "replica a", "replica b", "sink")
    names = {
        "client": "client (OTLP/HTTP exporter: encode + send)",
        "collector": "Collector (receive, batch, route by trace id, OTLP/gRPC out)",
        "replica a": "gateway replica a",
        "replica b": "gateway replica b",
        "sink": "bulk sink (stands in for Prefactor)",
    }
    for key in order:
        lines.append(
            f"| {names[key]} | {cpu[key]:.1f} | {cpu[key] / total * 100:.0f}% | {cpu[key] / cpu['client']:.2f} |"
        )
    lines += [
        f"| the chain | {total:.1f} | 100% | {total / cpu['client']:.2f} |",
        "",
        "The in-process `PrefactorSpanExporter` on the same spans, same run: "
        f"{reference:.1f} us/span (the replicas together: x{replicas_us / reference:.2f} of it).",
        *durable_lines(results),
        "",
        f"Memory per open trace (one replica holding {memory['traces']:,} then {2 * memory['traces']:,} traces open, "
        f"{memory['spans_per_trace_held']:.0f} spans each waiting for their root): RSS {memory['rss_idle_mb']:.0f} MiB "
        f"idle, {memory['rss_1n_mb']:.0f} / {memory['rss_2n_mb']:.0f} MiB: **{memory['kib_per_open_trace']:.1f} KiB "
        "per open trace** (measured).",
        "",
        "Capacity (projected from the figures above, not measured at these rates):",
        f"- a replica takes ~{per_core:,.0f} spans/s per core of its CPU (measured: 1e6 / {replicas_us:.0f} us); it is "
        f"one Python process (about one core), planned at {HEADROOM:.0%}: **{per_core * HEADROOM:,.0f} spans/s a "
        "replica**;",
    ]
    for rate in (10_000, 100_000):
        replicas = max(2, -(-int(rate) // int(per_core * HEADROOM)))
        collector_cores = rate / collector_per_core
        lines.append(
            f"- **{rate:,} spans/s: {replicas} replicas** (at least 2 for a restart), the Collector(s) "
            f"{collector_cores:.1f} core(s) (~{collector_per_core:,.0f} spans/s per core, measured), "
            f"{rate * items_per_span / 500:,.0f} bulk requests/s to Prefactor at 500 items each "
            f"({items_per_span:.2f} items per span), {rate * bytes_per_span / 1e6:.1f} MB/s into the replicas' "
            "ingress logs (fsynced) in all;"
        )
    lines += [
        f"- open traces: traces/s x how long a trace stays open; e.g. 100,000 spans/s of 9-span runs lasting 60 s is "
        f"~{100_000 / 9 * 60:,.0f} open traces, {100_000 / 9 * 60 * memory['kib_per_open_trace'] / 1024:,.0f} MiB "
        "over the fleet (spread by the ring);",
        "- what limits scaling: (1) Prefactor's API rate (bulk requests/s above: not known here; a spool absorbs an "
        "outage, at ~3x the OTLP bytes per span, up to its cap, and a replica then answers 503); (2) each replica's "
        "disk: the ingress log is fsynced before every acknowledgement (group commit) and holds every open trace; "
        "(3) the Collector's `sending_queue` (1000 requests per replica in fleet-static.yaml, in memory: a replica "
        "down longer than that holds makes the Collector refuse clients, who retry, and a Collector killed loses "
        "it; on disk in fleet-static-durable.yaml, at the cost above; collector/README.md); (4) the ring: a replica "
        "list change moves ~1/N of trace ids, splitting the open ones.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from gateway import load_average

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--spans", type=int)
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--open-traces", type=int)
    parser.add_argument("--json", action="store_true", help="print the raw figures as JSON too")
    parser.add_argument("--from-json", type=Path, help="measure nothing: write the note again from a --json dump")
    parser.add_argument("--load", default="", help="with --from-json: the machine load to state")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "PARAMS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        kind, params = args.child
        print(json.dumps({"client": child_client}[kind](json.loads(params))))
        return 0
    if args.from_json:
        text = report(json.loads(args.from_json.read_text()))
        print(text)
        write_section("fleet", "A fleet", text, args.load)
        return 0
    args.spans = args.spans or (5_120 if args.quick else 20_480)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.open_traces = args.open_traces or (300 if args.quick else 1_000)
    results = measure(args)
    results["otlp_bytes_per_span"] = otlp_bytes_per_span()
    if args.json:
        print(json.dumps(results, indent=2))
    text = report(results)
    print(text)
    if not args.quick:
        write_section("fleet", "A fleet", text, load_average())
    return 0


if __name__ == "__main__":
    sys.exit(main())
