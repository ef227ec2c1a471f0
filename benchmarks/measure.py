"""The measurements, each run in a fresh child process by run.py: `python benchmarks/measure.py KIND PARAMS_JSON`.

A child prints one JSON line (its result) as the last line of its standard output. Kinds:

- `cpu`: CPU per span in the exporting thread (`time.thread_time()` around `export()` and the final `shutdown()`)
  for the JSON floor, OTLPSpanExporter and PrefactorSpanExporter, on one fixed set of spans of one workload
  (`workload`: realistic or small, workload.py), interleaved runs, a fresh exporter per run. Also the HTTP requests
  and bytes each sends, and what the per-span REST pattern would send for the same spans. Garbage collection: the
  collections by generation during the timed runs, and (after them, collector disabled around each counted call)
  the net GC containers one export() of a batch holds at its peak and when it returns (`ContainerCount`), OTLP's
  and ours (finish grace 0, and the default grace).
- `setup`: the two set-ups as an application has them, on one workload: spans made by the SDK on this (the
  application's) thread through a TracerProvider with no processor, `BatchSpanProcessor(OTLPSpanExporter)`,
  `BatchSpanProcessor(PrefactorSpanExporter)` or `PrefactorSpanProcessor` (exporter defaults: live spans, finish
  grace), then flushed and shut down. Whole-process CPU (`time.process_time()`: every thread) per span minus the
  no-processor round's = what exporting costs the process; the application thread's CPU while it makes the spans
  (`on_start`/`on_end`, the garbage collector's passes it runs) minus the no-processor round's = its share; bytes
  on the wire per span as the sink received them (as sent, and decoded). Interleaved rounds in one process. Also
  `on_start` per call beside BatchSpanProcessor's. Garbage collection over the whole round (making, flushing,
  shutting down): every thread's collections by generation, and the collector's CPU on the application thread and
  on the other threads (`GcClock`, keyed by thread).
- `phases`: where PrefactorSpanExporter's CPU goes (thread time per stage, wrappers around the stages).
- `scale`: one exporter fed N spans generated on the fly; CPU per span, last-10 % CPU per span, peak RSS.
- `e2e`: spans/s through BatchSpanProcessor into a server in another process.
- `app`: the agent loop's time on the application thread with no exporter, OTLP or ours behind BatchSpanProcessor,
  or PrefactorSpanProcessor (`mode`: none, otlp, prefactor, processor).
"""

from __future__ import annotations

import atexit
import functools
import gc
import json
import re
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import rest_pattern
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from workload import SERVICE, SPANS_PER_TRACE, WORKLOADS, SpanSource, agent_run, batched, floor_dict, tracers

from prefactor_otel import PrefactorSpanExporter, PrefactorSpanProcessor
from prefactor_otel.mapping import map_span
from prefactor_otel.model import ids

BATCH = 512  # BatchSpanProcessor's default max_export_batch_size
Result = dict[str, Any]
# Each exporter gets its own spool directory under one per-process root, removed when the process ends.
SPOOL_ROOT = Path(tempfile.mkdtemp(prefix="prefactor-bench-spool-"))
atexit.register(shutil.rmtree, SPOOL_ROOT, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- helpers


def bench_agent_id(seed: int = 7) -> str:
    """A PFID for the agent, so the exporter takes the partition from it and never calls pfid/generate."""
    return ids.encode(int(time.time() * 1000), 4242 + seed, 0x5EED_0000_0000 + seed)


def prefactor_settings(url: str, **options: Any) -> dict[str, Any]:
    """The exporter's defaults but for where it sends (a fast sink), its agent (no pfid/generate call) and its
    spool directory (a fresh one per exporter, removed with the process)."""
    settings: dict[str, Any] = {
        "api_url": url,
        "api_token": "pf_bench_token",
        "agent_id": bench_agent_id(),
        "spool_dir": tempfile.mkdtemp(dir=SPOOL_ROOT),
    }
    settings.update(options)
    return settings


def prefactor_exporter(url: str, **options: Any) -> PrefactorSpanExporter:
    """An exporter with finish grace 0 unless told otherwise (each run finished once its root is delivered)."""
    exporter = PrefactorSpanExporter(**prefactor_settings(url, **{"finish_grace_seconds": 0, **options}))
    if not exporter.enabled:
        raise RuntimeError(f"exporter disabled: {exporter!r}")
    return exporter


def otlp_exporter(url: str) -> OTLPSpanExporter:
    return OTLPSpanExporter(endpoint=url + "/v1/traces", timeout=10)


def sink_stats(url: str, reset: bool = False) -> dict[str, int]:
    """Counters of a fast sink (in its own process); `reset` zeroes them."""
    request = urllib.request.Request(url + ("/_reset" if reset else "/_stats"), method="POST" if reset else "GET")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def current_rss_mb() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / (1024 * 1024)


class GcClock:
    """Thread CPU time spent in garbage collections while `active` (gc.callbacks run in the collecting thread).

    `seconds` and `collections`: with `thread` set, only the collections that thread runs, else every thread's.
    `by_thread` (thread id -> seconds) and `by_generation` (collections of generation 0, 1, 2) count every thread's
    collection while active, whatever `thread` says: the set-ups split the collector's CPU into the application
    thread's and the others' (BatchSpanProcessor's worker, the exporter's finisher), and count collections by
    generation the way `gc.get_stats()` deltas would, without an explicit `gc.collect()` outside the window.
    """

    def __init__(self) -> None:
        self.seconds = 0.0
        self.collections = 0
        self.active = False
        self.thread: int | None = None
        self.by_thread: dict[int, float] = {}
        self.by_generation = [0, 0, 0]
        self._started: dict[int, float] = {}
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if not self.active:
            return
        ident = threading.get_ident()
        if phase == "start":
            self._started[ident] = time.thread_time()
            return
        started = self._started.pop(ident, None)
        if started is None:
            return
        spent = time.thread_time() - started
        self.by_thread[ident] = self.by_thread.get(ident, 0.0) + spent
        self.by_generation[min(info.get("generation", 2), 2)] += 1
        if self.thread is None or ident == self.thread:
            self.seconds += spent
            self.collections += 1

    def reset(self) -> None:
        self.seconds, self.collections = 0.0, 0
        self.by_thread, self.by_generation = {}, [0, 0, 0]


GC = GcClock()


def export_all(exporter: SpanExporter, batches: Sequence[Sequence[ReadableSpan]]) -> tuple[float, float, bool]:
    """Thread CPU seconds and wall seconds of exporting every batch and shutting down; True if all succeeded."""
    ok = True
    gc.collect()
    GC.reset()
    GC.active = True
    wall = time.perf_counter()
    cpu = time.thread_time()
    for batch in batches:
        ok = exporter.export(batch) is SpanExportResult.SUCCESS and ok
    exporter.shutdown()
    cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
    GC.active = False
    return cpu, wall, ok


def payload_floor_all(payloads: Sequence[dict[str, Any]]) -> tuple[float, float, int]:
    """json.dumps of the Prefactor payloads themselves (mapped beforehand, not timed): the stdlib cost of the
    bytes we send, without the mapping, ids, ordering or HTTP."""
    gc.collect()
    wall = time.perf_counter()
    cpu = time.thread_time()
    size = 0
    for payload in payloads:
        size += len(json.dumps(payload))
    return time.thread_time() - cpu, time.perf_counter() - wall, size


def floor_all(batches: Sequence[Sequence[ReadableSpan]]) -> tuple[float, float, int]:
    gc.collect()
    wall = time.perf_counter()
    cpu = time.thread_time()
    size = 0
    for batch in batches:
        for span in batch:
            size += len(json.dumps(floor_dict(span)))
    return time.thread_time() - cpu, time.perf_counter() - wall, size


BALLAST = 50_000  # live GC objects under the count while containers are counted (ContainerCount)
CONTAINER_BATCHES = 3  # batches whose export() is counted, after one warm-up batch


class ContainerCount:
    """Net GC objects the process holds while one call runs: at its peak and when it returns.

    Why this method: a collection of generation 0 is triggered when generation 0's count passes its threshold (700),
    and CPython keeps that count as allocations of GC objects (containers: dicts, lists, instances, tuples...) minus
    their deallocations, by every thread. With the collector disabled nothing resets it, so `count - start` is the
    net number of containers made since `start`: what a call adds towards the next collection, and what survives
    into the older generations if a collection lands while it is held. Its maximum over the call is what the call
    holds in flight. It is sampled on every Python and C call and return of the measuring thread
    (`sys.setprofile`), frequent enough that no stage's peak falls between samples. A deallocation at count 0 is
    not counted, so a ballast of live lists lifts the count first; the profiler's own frame objects add at most the
    stack depth (tens, in every contender alike). The collector is disabled only in this child process, only around
    the counted call, and only in this measurement (never in a timed one).
    """

    def __init__(self) -> None:
        self.peak = 0

    def _sample(self, frame: object, event: str, arg: object) -> None:
        count = gc.get_count()[0]
        if count > self.peak:
            self.peak = count

    def count(self, call: Callable[[], object]) -> tuple[int, int]:
        """(peak, at return) of the net GC objects made during `call()`, beyond the count when it started."""
        gc.collect()
        enabled = gc.isenabled()
        gc.disable()
        ballast: list[list[None]] = [[] for _ in range(BALLAST)]
        sample = self._sample  # made before `start`: the bound method is a GC object too
        start = self.peak = gc.get_count()[0]
        sys.setprofile(sample)
        try:
            call()
        finally:
            sys.setprofile(None)
            end = gc.get_count()[0]
            del ballast
            if enabled:
                gc.enable()
        return max(self.peak, end) - start, end - start


def containers_in_flight(exporter: SpanExporter, batches: Sequence[Sequence[ReadableSpan]]) -> Result:
    """GC containers one export() of a batch holds at its peak and still holds when it returns (ContainerCount),
    median over up to CONTAINER_BATCHES full batches after a warm-up batch (first-use caches, the connection)."""
    counter = ContainerCount()
    exporter.export(batches[0])
    peaks: list[int] = []
    held: list[int] = []
    counted = [batch for batch in batches[1:] if len(batch) == len(batches[0])][:CONTAINER_BATCHES] or batches[:1]
    for batch in counted:
        peak, after = counter.count(functools.partial(exporter.export, batch))
        peaks.append(peak)
        held.append(after)
    exporter.shutdown()
    return {
        "batch": len(counted[0]),
        "batches": len(peaks),
        "peak": statistics.median(peaks),
        "held_after": statistics.median(held),
        "peaks": peaks,
        "held": held,
    }


# ---------------------------------------------------------------------------------------------- kinds


def measure_cpu(params: Result) -> Result:
    source = SpanSource(seed=1, workload=params.get("workload", "realistic"))
    spans = source.spans(params["spans"])
    batches = batched(spans, BATCH)
    count = len(spans)
    # The payload floor's input: each span's Prefactor payloads, mapped once here and not timed.
    payloads = [{"payload": r.payload, "result_payload": r.result_payload} for r in map(map_span, spans)]
    # The pre-generated spans stand in for what BatchSpanProcessor would hold (at most a queue's worth): keep
    # them out of the garbage collector's scans so its cost reflects the exporters' own allocations.
    gc.collect()
    gc.freeze()
    bulk, otlp = params["bulk"], params["otlp"]
    # "prefactor_unredacted": the same exporter with PREFACTOR_REDACT_DEFAULTS=false, so the table shows what the
    # default secret patterns cost (a feature OTLP does not have) next to the rest of the exporter.
    # "prefactor_echo": the default exporter against a sink that answers as Prefactor's API does (each item's object
    # echoed in its output), when the caller started one (`bulk_echo`).
    kinds = params.get("kinds") or [
        "floor",
        "payload_floor",
        "otlp",
        "prefactor",
        "prefactor_unredacted",
        *(["prefactor_echo"] if params.get("bulk_echo") else []),
    ]
    runs: dict[str, list[Result]] = {kind: [] for kind in kinds}

    def one(kind: str) -> Result:
        if kind in ("floor", "payload_floor"):
            cpu, wall, size = floor_all(batches) if kind == "floor" else payload_floor_all(payloads)
            return {"cpu_us": cpu / count * 1e6, "wall_us": wall / count * 1e6, "json_bytes": size}
        url = otlp if kind == "otlp" else params["bulk_echo"] if kind == "prefactor_echo" else bulk
        sink_stats(url, reset=True)
        exporter: SpanExporter
        if kind == "otlp":
            exporter = otlp_exporter(otlp)
        else:
            exporter = prefactor_exporter(url, redact_defaults=kind != "prefactor_unredacted")
        cpu, wall, ok = export_all(exporter, batches)
        sink = sink_stats(url)
        result: Result = {
            "cpu_us": cpu / count * 1e6,
            "wall_us": wall / count * 1e6,
            "gc_us": GC.seconds / count * 1e6,
            "gc_collections": list(GC.by_generation),  # by generation, every thread, during export() + shutdown()
            "ok": ok,
            "requests": sink.get("requests", 0),
            "body_bytes": sink.get("body_bytes", 0),
            "decoded_bytes": sink.get("decoded_bytes", sink.get("body_bytes", 0)),
            "head_bytes": sink.get("head_bytes", 0),
        }
        if isinstance(exporter, PrefactorSpanExporter):
            stats = exporter.stats()
            result.update(
                exported=stats["spans_exported"],
                dropped=stats["spans_dropped"],
                instances_finished=stats["instances_finished"],
                exporter_requests=stats["requests"],
            )
        return result

    for kind in runs:  # warm-up: first-use costs (lazy imports, schema builds, connection set-up) are not counted
        one(kind)
    for _ in range(params["runs"]):
        for kind in runs:
            runs[kind].append(one(kind))
    # GC containers in flight, after the timed runs (it disables the collector around each counted export): ours as
    # in the runs above (finish grace 0) and with the default grace (the set-ups': each open run's state stays).
    containers: Result = {}
    if "otlp" in runs:
        containers["otlp"] = containers_in_flight(otlp_exporter(otlp), batches)
    if "prefactor" in runs:
        containers["prefactor"] = containers_in_flight(prefactor_exporter(bulk), batches)
        default_grace = PrefactorSpanExporter(**prefactor_settings(bulk))
        containers["prefactor_default_grace"] = containers_in_flight(default_grace, batches)
    rest = rest_pattern.per_span_rest(spans)
    traces = count // source.spans_per_trace
    return {"spans": count, "traces": traces, "batch": BATCH, "runs": runs, "rest": rest, "containers": containers}


SETUP_MODES = ("none", "otlp", "bsp", "processor")


def measure_setup(params: Result) -> Result:
    """Whole-process and application-thread CPU per span of each set-up, and bytes on the wire (module docstring)."""
    import random

    make, per_trace = WORKLOADS[params["workload"]]
    traces = max(1, params["spans"] // per_trace)
    spans = traces * per_trace
    queue = spans + 4 * BATCH  # BatchSpanProcessor's queue holds a whole round: the figure is never a drop's
    bulk, otlp = params["bulk"], params["otlp"]
    rng = random.Random(11)

    def one(mode: str, count: int) -> Result:
        provider = TracerProvider(resource=SERVICE)
        exporter: PrefactorSpanExporter | None = None
        url = otlp if mode == "otlp" else bulk
        if mode == "otlp":
            provider.add_span_processor(BatchSpanProcessor(otlp_exporter(otlp), max_queue_size=queue))
        elif mode == "bsp":
            exporter = PrefactorSpanExporter(**prefactor_settings(bulk))
            provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=queue))
        elif mode == "processor":
            processor = PrefactorSpanProcessor(max_queue_size=queue, **prefactor_settings(bulk))
            exporter = processor.exporter
            provider.add_span_processor(processor)
        agent, llm = tracers(provider)
        sink_stats(url, reset=True)
        gc.collect()
        GC.reset()
        app_thread = threading.get_ident()
        # The whole round (making, flushing, shutting down) is recorded by thread and generation; `app_gc_us` keeps
        # its meaning: the collections the application's thread runs while it makes the spans.
        GC.thread, GC.active = app_thread, True
        process_cpu = time.process_time()
        app_cpu = time.thread_time()
        wall = time.perf_counter()
        for _ in range(count):
            make(agent, llm, rng)
        app_cpu = time.thread_time() - app_cpu
        app_gc = GC.seconds
        provider.force_flush(timeout_millis=120_000)
        provider.shutdown()
        process_cpu = time.process_time() - process_cpu
        wall = time.perf_counter() - wall
        GC.active, GC.thread = False, None
        made = count * per_trace
        gc_app = GC.by_thread.get(app_thread, 0.0)
        result: Result = {
            "mode": mode,
            "spans": made,
            "process_us": process_cpu / made * 1e6,
            "app_us": app_cpu / made * 1e6,
            "app_gc_us": app_gc / made * 1e6,
            "wall_us": wall / made * 1e6,
            # every thread's collections during the whole round, by generation; their CPU, the application
            # thread's (making, flushing and shutting down) and the other threads'
            "gc_collections": list(GC.by_generation),
            "gc_app_us": gc_app / made * 1e6,
            "gc_other_us": (sum(GC.by_thread.values()) - gc_app) / made * 1e6,
        }
        if mode != "none":
            sink = sink_stats(url)
            result.update(
                requests=sink.get("requests", 0),
                body_bytes=sink.get("body_bytes", 0),
                decoded_bytes=sink.get("decoded_bytes", sink.get("body_bytes", 0)),
                head_bytes=sink.get("head_bytes", 0),
                encodings={k.split(":", 1)[1]: v for k, v in sink.items() if k.startswith("encoded_requests:")},
            )
        if exporter is not None:
            stats = exporter.stats()
            result.update(
                ok=stats["spans_exported"] == made and stats["spans_dropped"] == 0,
                exported=stats["spans_exported"],
                dropped=stats["spans_dropped"],
                instances_finished=stats["instances_finished"],
            )
        return result

    for mode in SETUP_MODES:  # warm-up: first-use costs (imports, schema builds, connections) are not counted
        one(mode, max(1, traces // 5))
    rounds: list[Result] = []
    for _ in range(params["runs"]):
        for mode in SETUP_MODES:
            rounds.append(one(mode, traces))
    return {
        "workload": params["workload"],
        "spans": spans,
        "traces": traces,
        "rounds": rounds,
        "on_start": on_start_cost(bulk, params.get("on_start_calls", 20_000)),
    }


def on_start_cost(bulk: str, calls: int) -> Result:
    """ns per `on_start` call on a real started span: PrefactorSpanProcessor's beside BatchSpanProcessor's (a no-op,
    the floor of a processor call). The start queue is emptied between rounds, as the exporter's thread does."""
    provider = TracerProvider(resource=SERVICE)
    processor = PrefactorSpanProcessor(**prefactor_settings(bulk))
    batch = BatchSpanProcessor(otlp_exporter(bulk))
    span = provider.get_tracer("bench").start_span("invoke_agent bench", attributes={"gen_ai.operation.name": "chat"})
    exporter: Any = processor.exporter  # `start_queue` before the rename: `run.py --ref` measures older commits too
    queue = (exporter._start_queue if hasattr(exporter, "_start_queue") else exporter.start_queue)()
    starts = queue[0] if queue is not None else None

    def per_call_ns(call: Callable[[Any], None]) -> float:
        rounds = []
        for _ in range(5):
            if starts is not None:
                starts.clear()
            begin = time.perf_counter_ns()
            for _ in range(calls):
                call(span)
            rounds.append((time.perf_counter_ns() - begin) / calls)
        return statistics.median(rounds)

    figures = {"prefactor_ns": per_call_ns(processor.on_start), "batch_noop_ns": per_call_ns(batch.on_start)}
    if starts is not None:
        starts.clear()
    span.end()
    processor.shutdown()
    batch.shutdown()
    return figures


def measure_phases(params: Result) -> Result:
    """Thread CPU per stage of PrefactorSpanExporter, by wrapping the stages (outer stages include inner ones)."""
    import prefactor_otel.pipeline.delivery as delivery_module
    import prefactor_otel.pipeline.planner as planner_module
    import prefactor_otel.sdk.exporter as exporter_module
    import prefactor_otel.transport.answers as answers_module
    import prefactor_otel.transport.client as transport_module
    from prefactor_otel.model import ids as ids_module

    spans = SpanSource(seed=1).spans(params["spans"])
    batches = batched(spans, BATCH)
    gc.collect()
    gc.freeze()
    spent: Counter[str] = Counter()

    def wrap(owner: Any, name: str, label: str) -> None:
        original: Callable[..., Any] | None = getattr(owner, name, None)
        if original is None:  # the code moved on: that stage is not measured, the total still is
            return
        call: Callable[..., Any] = original

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.thread_time()
            try:
                return call(*args, **kwargs)
            finally:
                spent[label] += time.thread_time() - start

        setattr(owner, name, timed)

    wrap(exporter_module, "map_span", "mapping: map_span (ReadableSpan -> payloads)")
    wrap(planner_module.Planner, "add", "planner: add (incl. new instance items)")
    wrap(planner_module.Planner, "plan", "planner: plan (ordering, create items, ids, keys)")
    wrap(planner_module.Planner, "apply", "planner: apply outcomes")
    wrap(delivery_module.Delivery, "_encode", "encode: items -> JSON bytes")
    wrap(transport_module.BulkTransport, "_post", "transport: HTTP request + response handling")
    wrap(answers_module.AnswerReader, "bulk_outcomes", "transport: response validation (pydantic)")
    wrap(ids_module, "span_pfid", "ids: span PFIDs (inside planner: plan)")
    try:  # request compression (PREFACTOR_COMPRESSION), where the code has it
        import prefactor_otel.transport.compression as compression_module

        wrap(compression_module.BodyCompression, "compress", "compression: request bodies (inside transport)")
    except ImportError:
        pass
    totals: list[float] = []
    stages: list[dict[str, float]] = []
    for run in range(params["runs"] + 1):
        spent.clear()
        cpu, _, _ = export_all(prefactor_exporter(params["bulk"]), batches)
        if run == 0:
            continue  # warm-up
        totals.append(cpu / len(spans) * 1e6)
        stages.append({label: seconds / len(spans) * 1e6 for label, seconds in spent.items()})
    return {"spans": len(spans), "total_us": totals, "stages": stages}


def measure_scale(params: Result) -> Result:
    kind, total = params["exporter"], params["spans"]
    source = SpanSource(seed=2)

    def new_exporter() -> SpanExporter | None:
        if kind == "prefactor":
            return prefactor_exporter(params["bulk"], finish_grace_seconds=params.get("grace", 0))
        if kind == "otlp":
            return otlp_exporter(params["otlp"])
        return None

    # Warm the process up with a throwaway exporter (lazy imports, first-use costs, the garbage collector's
    # steady state), so the measured exporter starts empty in a process that looks like a long-running one.
    warm = new_exporter()
    for batch in source.batches(params.get("warmup_spans", 4 * BATCH), BATCH):
        if warm is not None:
            warm.export(batch)
    if warm is not None:
        warm.shutdown()
    exporter = new_exporter()
    # The measured exporter's first batch (its one-time costs: connection, journal file, the agent's first register
    # with the schema set) is exported before the count starts and reported on its own (`lead_in_us`): spread over
    # 1,000 spans it made the smallest size ~10 % dearer than the larger ones, a fixed cost the "flat" lines
    # (which ask whether the cost per span grows with open runs) must not read as a trend.
    lead_in_us = None
    if exporter is not None and params.get("lead_in", True):
        (lead_in,) = source.batches(BATCH, BATCH)
        start = time.thread_time()
        exporter.export(lead_in)
        lead_in_us = (time.thread_time() - start) / len(lead_in) * 1e6
    gc.collect()
    rss_before = current_rss_mb()
    per_batch: list[tuple[int, float, float]] = []  # spans, thread CPU, of which garbage collection
    batch_at: list[float] = []  # seconds since the count started, at each batch's start
    ok = True
    open_traces = 0
    GC.reset()
    began = time.monotonic()
    for batch in source.batches(total, BATCH):
        if exporter is None:
            continue
        GC.active = True
        gc_before = GC.seconds
        batch_at.append(time.monotonic() - began)
        start = time.thread_time()
        ok = exporter.export(batch) is SpanExportResult.SUCCESS and ok
        per_batch.append((len(batch), time.thread_time() - start, GC.seconds - gc_before))
        GC.active = False
        if isinstance(exporter, PrefactorSpanExporter):
            open_traces = max(open_traces, exporter.stats()["open_traces"])
    result: Result = {
        "exporter": kind,
        "spans": total,
        "grace": params.get("grace", 0),
        "max_open_traces": open_traces,
        "lead_in_us": lead_in_us,
    }
    if exporter is not None:
        GC.active = True
        start = time.thread_time()
        exporter.shutdown()
        shutdown_cpu = time.thread_time() - start
        GC.active = False
        cpu = sum(seconds for _, seconds, _ in per_batch) + shutdown_cpu
        # Growth check robust to noise and to the collector: per-batch CPU without GC, median of a tenth of the run.
        tenth = max(1, len(per_batch) // 10)
        without_gc = [(seconds - collecting) / n * 1e6 for n, seconds, collecting in per_batch]
        result.update(
            ok=ok,
            cpu_us=cpu / total * 1e6,
            gc_us=GC.seconds / total * 1e6,
            first_tenth_us=statistics.median(without_gc[:tenth]),
            last_tenth_us=statistics.median(without_gc[-tenth:]),
            trend=trend(without_gc, batch_at, params.get("grace", 0)),
            per_batch_us=[round(value, 2) for value in without_gc],  # the trend's points, for a reader to plot
            shutdown_ms=shutdown_cpu * 1e3,
        )
        if isinstance(exporter, PrefactorSpanExporter):
            stats = exporter.stats()
            result.update(exported=stats["spans_exported"], dropped=stats["spans_dropped"])
    result.update(rss_before_mb=rss_before, peak_rss_mb=peak_rss_mb())
    return result


def theil_sen_change(values: Sequence[float]) -> float:
    """The change from the first to the last of `values` (equally spaced points) on their Theil-Sen line: slope the
    median of every pairwise slope, intercept the median of each value less its slope term; the line's last value
    over its first, minus 1. One noisy batch moves it little, where a median of the first and last tenth (two
    batches each at 10,000 spans) swings +-15 % from run to run."""
    n = len(values)
    if n < 3:
        return 0.0
    slope = statistics.median([(values[j] - values[i]) / (j - i) for i in range(n) for j in range(i + 1, n)])
    start = statistics.median([value - slope * i for i, value in enumerate(values)])
    return slope * (n - 1) / start if start > 0 else 0.0


def trend(per_batch_us: Sequence[float], batch_at: Sequence[float], grace: float) -> Result:
    """How the cost per span moves over one run: the Theil-Sen change over its batches (no GC). With a finish grace,
    over the batches after the first grace period when there are at least 10 of them: before it no run has been quiet
    that long, so no run finishes, and after it every batch also carries finishes -- a step of steady work (one finish
    per run), not a cost that grows with the runs held open, which is what the line asks about."""
    points = list(per_batch_us)
    window = "whole run"
    if grace > 0:
        after = [value for value, at in zip(per_batch_us, batch_at, strict=True) if at >= grace]
        if len(after) >= 10:
            points, window = after, f"after the first {grace:g} s"
    return {"change": theil_sen_change(points), "batches": len(points), "window": window}


def measure_e2e(params: Result) -> Result:
    target = params["spans"]
    if params["sink"] == "devserver":
        exporter = prefactor_exporter(
            params["url"],
            api_token=params["token"],
            agent_id=params["agent_id"],
            environment_id=params["environment_id"],
            finish_grace_seconds=6,  # the default: force_flush at the end finishes the runs
        )
    else:
        exporter = prefactor_exporter(params["url"], finish_grace_seconds=6)
    provider = TracerProvider(resource=SERVICE)
    # A queue that holds the whole run: the figure is the pipeline's throughput, not BatchSpanProcessor's drops.
    provider.add_span_processor(
        BatchSpanProcessor(exporter, max_queue_size=target + 4 * BATCH, max_export_batch_size=BATCH)
    )
    agent, llm = tracers(provider)
    import random

    rng = random.Random(3)
    traces = -(-target // SPANS_PER_TRACE)
    start = time.perf_counter()
    for _ in range(traces):
        agent_run(agent, llm, rng)
    produced = time.perf_counter() - start
    # BatchSpanProcessor's flush exports the queue; the exporter's own flush then finishes the agent runs.
    flushed = provider.force_flush(timeout_millis=600_000) and exporter.force_flush(timeout_millis=600_000)
    elapsed = time.perf_counter() - start
    stats = exporter.stats()
    provider.shutdown()
    spans = traces * SPANS_PER_TRACE
    return {
        "spans": spans,
        "traces": traces,
        "produce_s": produced,
        "total_s": elapsed,
        "spans_per_s": spans / elapsed,
        "flushed": flushed,
        "exported": stats["spans_exported"],
        "dropped": stats["spans_dropped"],
        "instances_finished": stats["instances_finished"],
        "requests": stats["requests"],
    }


def measure_steady(params: Result) -> Result:
    """A steady load: agent runs paced at a fixed span rate through BatchSpanProcessor, exporter defaults.

    What a long-running service sees: agent runs keep reaching the end of their finish grace while new spans
    arrive. Reports requests per 1,000 spans, the share of 1-item requests, and the CPU the process spends
    outside the application thread per span (BatchSpanProcessor's worker and the exporter's threads).
    """
    import random

    exporter: SpanExporter
    if params["exporter"] == "otlp":
        exporter = otlp_exporter(params["url"])
    else:
        exporter = prefactor_exporter(
            params["url"],
            api_token=params["token"],
            agent_id=params["agent_id"],
            environment_id=params["environment_id"],
            finish_grace_seconds=6,  # the default
        )
    provider = TracerProvider(resource=SERVICE)
    processor = BatchSpanProcessor(exporter)  # the defaults, as an application has them
    provider.add_span_processor(processor)
    agent, llm = tracers(provider)
    rng = random.Random(5)
    interval = SPANS_PER_TRACE / params["rate"]
    traces = int(params["seconds"] * params["rate"] / SPANS_PER_TRACE)
    process_cpu = time.process_time()
    app_cpu = time.thread_time()
    start = time.perf_counter()
    for index in range(traces):
        agent_run(agent, llm, rng)
        delay = start + (index + 1) * interval - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
    app_cpu = time.thread_time() - app_cpu
    background_cpu = time.process_time() - process_cpu - app_cpu
    elapsed = time.perf_counter() - start
    result: Result = {"exporter": params["exporter"], "target_rate": params["rate"]}
    if isinstance(exporter, PrefactorSpanExporter):
        stats = exporter.stats()
        result.update(
            exported_during_run=stats["spans_exported"],
            requests_during_run=stats["requests"],
            dropped=stats["spans_dropped"],
        )
    provider.shutdown()
    if isinstance(exporter, PrefactorSpanExporter):
        stats = exporter.stats()
        result.update(
            exported=stats["spans_exported"],
            spooled=stats["spans_spooled"],
            dropped=stats["spans_dropped"],
            left_queued=stats["spans_queued"],
        )
    spans = traces * SPANS_PER_TRACE
    result.update(
        spans=spans,
        traces=traces,
        seconds=elapsed,
        rate=spans / elapsed,
        background_cpu_us=background_cpu / spans * 1e6,
    )
    return result


def measure_app(params: Result) -> Result:
    """The agent loop timed on the application thread; the exporter works behind BatchSpanProcessor."""
    import random

    mode = params["mode"]
    out: Result = {"mode": mode}
    for variant, runs, work, io_seconds in (
        ("cpu", params["cpu_runs"], params["work"], 0.0),
        ("io", params["io_runs"], 0, params["io_seconds"]),
    ):
        provider = TracerProvider(resource=SERVICE)
        exporter: SpanExporter | None = None
        if mode == "otlp":
            exporter = otlp_exporter(params["otlp"])
        elif mode == "prefactor":
            exporter = prefactor_exporter(params["bulk"])
        if mode == "processor":  # the recommended set-up, live spans and finish grace at their defaults
            processor = PrefactorSpanProcessor(**prefactor_settings(params["bulk"]))
            exporter = processor.exporter
            provider.add_span_processor(processor)
        elif exporter is not None:
            provider.add_span_processor(BatchSpanProcessor(exporter))  # the defaults, as an application has them
        agent, llm = tracers(provider)
        rng = random.Random(4)
        for _ in range(10):  # warm-up
            agent_run(agent, llm, rng, work=work, io_seconds=io_seconds)
        gc.collect()
        wall = time.perf_counter()
        cpu = time.thread_time()
        for _ in range(runs):
            agent_run(agent, llm, rng, work=work, io_seconds=io_seconds)
        cpu = time.thread_time() - cpu
        wall = time.perf_counter() - wall
        exported = None
        if isinstance(exporter, PrefactorSpanExporter):
            provider.force_flush(timeout_millis=60_000)
            exported = exporter.stats()["spans_exported"]
        provider.shutdown()
        out[variant] = {
            "runs": runs,
            "wall_us_per_run": wall / runs * 1e6,
            "cpu_us_per_run": cpu / runs * 1e6,
            "exported": exported,
            "produced": (runs + 10) * SPANS_PER_TRACE,
        }
    return out


def measure_profile(params: Result) -> Result:
    """cProfile of PrefactorSpanExporter exporting the CPU workload: the functions that cost the most."""
    import cProfile
    import pstats

    spans = SpanSource(seed=1).spans(params["spans"])
    batches = batched(spans, BATCH)
    gc.collect()
    gc.freeze()
    export_all(prefactor_exporter(params["bulk"]), batches)  # warm-up
    profiler = cProfile.Profile()
    profiler.enable()
    export_all(prefactor_exporter(params["bulk"]), batches)
    profiler.disable()
    stats = pstats.Stats(profiler)
    rows: list[Result] = []
    waits = ("recv", "recv_into", "select", "poll", "acquire", "wait", "sendall")  # blocked on I/O or locks, not CPU
    for (filename, line, function), (_, calls, tottime, cumtime, _) in stats.stats.items():  # type: ignore[attr-defined]
        if any(f"'{name}'" in function or f".{name}'" in function for name in waits):
            continue
        where = re.sub(r"^.*?(site-packages/|/src/|/lib/python3\.\d+/)", "", filename)
        rows.append(
            {
                "function": f"{where}:{line}({function})",
                "calls": calls,
                "self_us_per_span": tottime / len(spans) * 1e6,
                "cumulative_us_per_span": cumtime / len(spans) * 1e6,
            }
        )
    top_self = sorted(rows, key=lambda r: r["self_us_per_span"], reverse=True)[: params.get("top", 20)]
    top_cumulative = sorted(
        (r for r in rows if "prefactor_otel" in r["function"]), key=lambda r: r["cumulative_us_per_span"], reverse=True
    )[: params.get("top", 20)]
    return {"spans": len(spans), "top_self": top_self, "top_cumulative": top_cumulative}


KINDS: dict[str, Callable[[Result], Result]] = {
    "profile": measure_profile,
    "cpu": measure_cpu,
    "setup": measure_setup,
    "phases": measure_phases,
    "scale": measure_scale,
    "e2e": measure_e2e,
    "app": measure_app,
    "steady": measure_steady,
}


def main(argv: list[str]) -> int:
    kind, params = argv[0], json.loads(argv[1])
    result = KINDS[kind](params)
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
