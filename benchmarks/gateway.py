"""The OTLP gateway measured beside the in-process exporter, on the same spans (issue 21).

    python benchmarks/gateway.py            # 20,000 spans x 3 rounds, 20 s of sustained load, 60 latency probes
    python benchmarks/gateway.py --quick    # a smoke run (well under a minute), prints only

A full run writes its section, "The OTLP gateway", to benchmarks/gateway_notes.md and into benchmarks/RESULTS.md
(between its markers; run.py keeps it there when it rewrites the file).

Needs the `gateway` and `bench` extras. Everything runs on 127.0.0.1, each part in its own process: the fast
bulk sink (sinks.py: answers `POST /api/v1/bulk` like Prefactor, counts items), a `prefactor-otel gateway`
subprocess in front of it, and the contenders below; this process only orchestrates and sends.

Figures, all on the same spans (workload.py's agent traces, ~1 KB GenAI messages, 9 spans per run):
- **CPU per span, whole process** (every thread: decoding, mapping, planning, encoding, HTTP both ways, fsync):
  the gateway (read from /proc/<pid>/stat around the load) beside the in-process `PrefactorSpanExporter` and the
  OTLP/HTTP exporter, each in a fresh child process (`time.process_time()` around `export()` + `shutdown()`).
  The gateway's figure includes its OTLP/HTTP server; the exporters' include their HTTP client. The sender's own
  cost (encoding OTLP) is not in the gateway's figure: it is the OTLP exporter's row.
- **Throughput**: spans/s from the first request sent to the last bulk item counted at the sink, one sender
  posting 512-span OTLP/HTTP protobuf requests back to back (each waits for its acknowledgement: fsynced).
- **Peak RSS** of the gateway (VmHWM) after a sustained load at the highest rate it acknowledged.
- **Latency**: one trace per request, spaced out: from the request sent to its acknowledgement (fsync), and to
  the first bulk request that carries its items (the sink's item count rising).
Ratios are against peers measured in the same run; nothing here is compared with a fixed number.
"""

from __future__ import annotations

import argparse
import json
import os
import re
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

BATCH = 512
Result = dict[str, Any]
LISTENING = re.compile(
    r"listening http=(?P<http>[\w.\[\]:-]+?):(?P<hport>\d+) grpc=(?P<grpc>[\w.\[\]:-]+?):(?P<gport>\d+)"
)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
WAIT_LIMIT_S = 120.0


def _env(sink_url: str, agent_id: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PREFACTOR_", "OTEL_"))}
    env.update(
        PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(HERE), env.get("PYTHONPATH", "")]),
        PREFACTOR_API_URL=sink_url,
        PREFACTOR_API_TOKEN="pf_bench_token",
        PREFACTOR_AGENT_ID=agent_id,
        PREFACTOR_FINISH_GRACE_SECONDS="0",
    )
    return env


# ------------------------------------------------------------------------------------------ children


def child_inprocess(params: Result) -> Result:
    """In a fresh process: the same spans through one exporter; CPU of the whole process."""
    import shutil

    from measure import otlp_exporter, prefactor_exporter
    from workload import SpanSource, batched

    # Whole traces only (at least the spans asked for): a trace cut at the end left a run whose root never came,
    # which the gateway rightly finishes only once idle (max_wait_seconds, 30 s) -- and the throughput figure
    # measured that wait, not the gateway (626 spans/s for 10,894 per core of its CPU).
    spans = SpanSource(seed=params["seed"]).spans(params["spans"])
    batches = batched(spans, BATCH)
    spool = tempfile.mkdtemp(prefix="prefactor-bench-gw-")
    if params["kind"] == "prefactor":
        exporter: Any = prefactor_exporter(params["url"], agent_id=params["agent_id"], spool_dir=spool)
    else:
        exporter = otlp_exporter(params["url"])
    cpu, wall = time.process_time(), time.perf_counter()
    for batch in batches:
        exporter.export(batch)
    exporter.shutdown()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    shutil.rmtree(spool, ignore_errors=True)
    return {"spans": len(spans), "cpu_s": cpu, "wall_s": wall}


def child_bodies(params: Result) -> Result:
    """In a fresh process: the same spans encoded as OTLP/HTTP protobuf request bodies, written to a file."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from workload import SpanSource, batched

    # Whole traces only (at least the spans asked for): a trace cut at the end left a run whose root never came,
    # which the gateway rightly finishes only once idle (max_wait_seconds, 30 s) -- and the throughput figure
    # measured that wait, not the gateway (626 spans/s for 10,894 per core of its CPU).
    spans = SpanSource(seed=params["seed"]).spans(params["spans"])
    bodies = [encode_spans(batch).SerializeToString() for batch in batched(spans, BATCH)]
    with open(params["out"], "wb") as out:
        for body in bodies:
            out.write(len(body).to_bytes(4, "big") + body)
    return {"spans": len(spans), "requests": len(bodies)}


def run_child(kind: str, params: Result, env: dict[str, str]) -> Result:
    done = subprocess.run(
        [sys.executable, __file__, "--child", kind, json.dumps(params)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"child {kind} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------ the gateway


class GatewayProcess:
    def __init__(self, env: dict[str, str], directory: str) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "prefactor_otel",
                "gateway",
                "--http-port",
                "0",
                "--grpc-port",
                "0",
                "--dir",
                directory,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=ROOT,
        )
        self.lines: list[str] = []
        deadline = time.monotonic() + 60
        assert self.process.stdout is not None
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                raise RuntimeError("the gateway exited before listening:\n" + "".join(self.lines))
            self.lines.append(line)
            found = LISTENING.search(line)
            if found:
                self.url = f"http://{found['http']}:{found['hport']}"
                break
        else:
            raise RuntimeError("the gateway did not say where it listens")
        self._wait_ready()

    def _wait_ready(self) -> None:
        for _ in range(600):
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=5) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("the gateway never became ready")

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime

    def memory_mb(self) -> tuple[float, float]:
        """(peak RSS, current RSS) in MiB."""
        values = {}
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                values[key] = int(rest.split()[0]) / 1024
        return values["VmHWM"], values["VmRSS"]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def read_bodies(path: str) -> list[bytes]:
    data = Path(path).read_bytes()
    bodies, at = [], 0
    while at < len(data):
        size = int.from_bytes(data[at : at + 4], "big")
        bodies.append(data[at + 4 : at + 4 + size])
        at += 4 + size
    return bodies


def items_at(sink_url: str) -> int:
    with urllib.request.urlopen(sink_url + "/_stats", timeout=10) as answer:
        return int(json.loads(answer.read()).get("items", 0))


def reset_sink(sink_url: str) -> None:
    request = urllib.request.Request(sink_url + "/_reset", method="POST")
    with urllib.request.urlopen(request, timeout=10):
        pass


def wait_items(sink_url: str, expected: int) -> float:
    """Wait until the sink has counted `expected` items; returns when (perf_counter)."""
    deadline = time.monotonic() + WAIT_LIMIT_S
    while time.monotonic() < deadline:
        if items_at(sink_url) >= expected:
            return time.perf_counter()
        time.sleep(0.002)
    raise RuntimeError(f"the sink counted {items_at(sink_url)} items of {expected} within {WAIT_LIMIT_S:.0f} s")


def post_all(client: Any, url: str, bodies: list[bytes]) -> dict[int, int]:
    statuses: dict[int, int] = {}
    for body in bodies:
        for _attempt in range(100):  # bounded: a 429/503 is retried after its Retry-After, as OTLP clients do
            answer = client.post(url + "/v1/traces", content=body, headers={"Content-Type": "application/x-protobuf"})
            statuses[answer.status_code] = statuses.get(answer.status_code, 0) + 1
            if answer.status_code not in (429, 503):
                break
            time.sleep(float(answer.headers.get("Retry-After", "1")))
    return statuses


# ------------------------------------------------------------------------------------------ orchestration


def measure(args: argparse.Namespace) -> Result:
    import httpx
    from measure import bench_agent_id
    from run import server

    agent_id = bench_agent_id()
    results: Result = {"spans": args.spans, "rounds": args.rounds}
    with server() as sinks:
        bulk, otlp = sinks.info["bulk"], sinks.info["otlp"]
        env = _env(bulk, agent_id)
        body_file = tempfile.mktemp(prefix="prefactor-bench-gw-bodies-")
        encoded = run_child("bodies", {"seed": 1, "spans": args.spans, "out": body_file}, env)
        bodies = read_bodies(body_file)
        os.unlink(body_file)
        rows: dict[str, list[float]] = {"prefactor": [], "otlp": [], "gateway": [], "gateway_rate": []}
        expected_items = 0
        statuses: dict[int, int] = {}
        for round_index in range(args.rounds):
            print(f"  .. round {round_index + 1} of {args.rounds}", file=sys.stderr, flush=True)
            reset_sink(bulk)
            inproc = run_child(
                "inprocess",
                {"kind": "prefactor", "seed": 1, "spans": args.spans, "url": bulk, "agent_id": agent_id},
                env,
            )
            rows["prefactor"].append(inproc["cpu_s"] / inproc["spans"] * 1e6)
            expected_items = items_at(bulk)
            peer = run_child(
                "inprocess", {"kind": "otlp", "seed": 1, "spans": args.spans, "url": otlp, "agent_id": agent_id}, env
            )
            rows["otlp"].append(peer["cpu_s"] / peer["spans"] * 1e6)
            reset_sink(bulk)
            with tempfile.TemporaryDirectory(prefix="prefactor-bench-gw-dir-") as directory:
                gateway = GatewayProcess(env, directory)
                try:
                    with httpx.Client(timeout=30) as client:
                        cpu, started = gateway.cpu_s(), time.perf_counter()
                        for code, count in post_all(client, gateway.url, bodies).items():
                            statuses[code] = statuses.get(code, 0) + count
                        done = wait_items(bulk, expected_items)
                        cpu = gateway.cpu_s() - cpu
                    rows["gateway"].append(cpu / encoded["spans"] * 1e6)
                    rows["gateway_rate"].append(encoded["spans"] / (done - started))
                finally:
                    gateway.stop()
        results["cpu_us_per_span"] = {
            name: statistics.median(values) for name, values in rows.items() if name != "gateway_rate"
        }
        results["spread"] = {name: (max(v) - min(v)) / statistics.median(v) * 100 for name, v in rows.items() if v}
        results["spans_per_s"] = statistics.median(rows["gateway_rate"])
        results["statuses"] = statuses
        results["items_per_run"] = expected_items
        results.update(sustained_and_latency(args, env, bulk, bodies))
    return results


def sustained_and_latency(args: argparse.Namespace, env: dict[str, str], bulk: str, bodies: list[bytes]) -> Result:
    import httpx
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from workload import SpanSource

    out: Result = {}
    source = SpanSource(seed=2)
    single = [encode_spans(source.spans(9)[:9]).SerializeToString() for _ in range(args.probes)]
    with tempfile.TemporaryDirectory(prefix="prefactor-bench-gw-dir-") as directory:
        gateway = GatewayProcess(env, directory)
        try:
            with httpx.Client(timeout=30) as client:
                sent = 0
                started = time.perf_counter()
                cpu = gateway.cpu_s()
                for _ in range(10_000_000):  # bounded by the clock below
                    if time.perf_counter() - started >= args.sustain_s:
                        break
                    post_all(client, gateway.url, [bodies[sent % len(bodies)]])
                    sent += 1
                elapsed = time.perf_counter() - started
                out["sustained"] = {
                    "seconds": elapsed,
                    "requests": sent,
                    "acknowledged_spans_per_s": sent * BATCH / elapsed,
                    "cpu_s": gateway.cpu_s() - cpu,
                }
                time.sleep(1.0)
                out["sustained"]["peak_rss_mb"], out["sustained"]["rss_mb"] = gateway.memory_mb()
                # Latency probes once the backlog of the sustained phase is gone (the item count stands still).
                last, still = -1, 0
                for _ in range(int(WAIT_LIMIT_S / 0.2)):
                    now = items_at(bulk)
                    still = still + 1 if now == last else 0
                    if still >= 10:
                        break
                    last = now
                    time.sleep(0.2)
                acks, firsts = [], []
                for body in single:
                    before = items_at(bulk)
                    t0 = time.perf_counter()
                    answer = client.post(
                        gateway.url + "/v1/traces", content=body, headers={"Content-Type": "application/x-protobuf"}
                    )
                    acks.append(time.perf_counter() - t0)
                    if answer.status_code == 200:
                        firsts.append(wait_items(bulk, before + 1) - t0)
                    time.sleep(0.1)
                out["latency_ms"] = {
                    "ack_p50": statistics.median(acks) * 1000,
                    "ack_p95": sorted(acks)[int(len(acks) * 0.95) - 1] * 1000,
                    "first_bulk_p50": statistics.median(firsts) * 1000,
                    "first_bulk_p95": sorted(firsts)[int(len(firsts) * 0.95) - 1] * 1000,
                    "probes": len(firsts),
                }
        finally:
            gateway.stop()
    return out


def report(results: Result) -> str:
    cpu = results["cpu_us_per_span"]
    otlp = cpu["otlp"]
    lines = [
        f"{results['spans']:,} spans ({results['items_per_run']:,} bulk items), {results['rounds']} rounds, medians",
        "",
        "| contender (whole process) | CPU us/span | spread | x OTLP exporter | x in-process exporter |",
        "| --- | --- | --- | --- | --- |",
    ]
    names = {
        "otlp": "OTLPSpanExporter (the peer: encodes only)",
        "prefactor": "PrefactorSpanExporter, in process",
        "gateway": "prefactor-otel gateway (OTLP/HTTP in, bulk out)",
    }
    for key in ("otlp", "prefactor", "gateway"):
        lines.append(
            f"| {names[key]} | {cpu[key]:.1f} | ±{results['spread'][key] / 2:.0f}% | {cpu[key] / otlp:.2f} | "
            f"{cpu[key] / cpu['prefactor']:.2f} |"
        )
    sustained, latency = results["sustained"], results["latency_ms"]
    lines += [
        "",
        f"Gateway throughput, one sender, 512-span requests: {results['spans_per_s']:,.0f} spans/s "
        f"(= {1e6 / cpu['gateway']:,.0f} spans/s per core of gateway CPU). Answers: {results['statuses']}.",
        f"Sustained {sustained['seconds']:.0f} s: {sustained['acknowledged_spans_per_s']:,.0f} spans/s acknowledged; "
        f"gateway peak RSS {sustained['peak_rss_mb']:.0f} MiB (RSS after: {sustained['rss_mb']:.0f} MiB).",
        f"Latency, one trace per request ({latency['probes']} probes): acknowledged (fsynced) p50 "
        f"{latency['ack_p50']:.1f} ms, p95 {latency['ack_p95']:.1f} ms; to the first bulk request carrying it p50 "
        f"{latency['first_bulk_p50']:.0f} ms, p95 {latency['first_bulk_p95']:.0f} ms.",
    ]
    return "\n".join(lines)


def write_section(name: str, title: str, text: str, machine_load: str) -> None:
    """A full run's section: benchmarks/<name>_notes.md, and the same text in RESULTS.md between its markers
    (`<!-- <name>:start -->`, `<!-- <name>:end -->`; run.py keeps the notes file when it rewrites RESULTS.md).
    Used by this benchmark ("gateway") and benchmarks/fleet.py ("fleet")."""
    import datetime as dt

    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    command = f"`python benchmarks/{name}.py` on {when}, {os.cpu_count()} cores; {machine_load}"
    section = "\n".join([start, f"## {title}", "", command, "", text, end])
    (HERE / f"{name}_notes.md").write_text(section + "\n")
    results = HERE / "RESULTS.md"
    if results.exists():
        current = results.read_text()
        if start in current and end in current:
            head, rest = current.split(start, 1)
            current = head + section + rest.split(end, 1)[1]
        else:
            current = current.replace("## History", section + "\n\n## History", 1)
        results.write_text(current)


def load_average() -> str:
    try:
        one, five, fifteen = Path("/proc/loadavg").read_text().split()[:3]
    except OSError:
        return "machine load unknown."
    return f"load average at the end {one} / {five} / {fifteen} (1 / 5 / 15 min): figures under load are wider."


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--spans", type=int)
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--json", action="store_true", help="print the raw figures as JSON too")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "PARAMS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        kind, params = args.child
        result = {"inprocess": child_inprocess, "bodies": child_bodies}[kind](json.loads(params))
        print(json.dumps(result))
        return 0
    args.spans = args.spans or (5_120 if args.quick else 20_480)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.sustain_s = 5.0 if args.quick else 20.0
    args.probes = 20 if args.quick else 60
    results = measure(args)
    if args.json:
        print(json.dumps(results, indent=2))
    text = report(results)
    print(text)
    if not args.quick:
        write_section("gateway", "The OTLP gateway", text, load_average())
    return 0


if __name__ == "__main__":
    sys.exit(main())
