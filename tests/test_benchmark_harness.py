"""The benchmark's own parts (benchmarks/): what issue 22's figures rest on.

- The fast sinks (sinks.py, a real process on 127.0.0.1) count a request body as sent and as decoded, and read
  bulk bodies sent with a Content-Encoding (gzip, zstd), so bytes-on-the-wire figures stay right with compression.
- The small-span workload (workload.py) has the shape its docstring says: 12 spans per trace, 3 of them GenAI.
- The `setup` measurement (measure.py) runs both set-ups and OTLP's against the sinks and reports each delivered,
  with every round's collections by generation and the collector's CPU by thread.
- The `cpu` measurement reports, per contender, the GC containers one export() holds at its peak and after it.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import zstandard

from prefactor_otel.mapping import map_span

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
SRC = Path(__file__).resolve().parent.parent / "src"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PREFACTOR_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    return env


def _measure(kind: str, params: dict[str, Any]) -> dict[str, Any]:
    """One measurement of benchmarks/measure.py in its own process, as run.py runs it: its result."""
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "measure.py"), kind, json.dumps(params)],
        capture_output=True,
        text=True,
        timeout=240,
        env=_env(),
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _sink_process(*args: str) -> Iterator[dict[str, Any]]:
    """benchmarks/sinks.py in its own process (as run.py starts it): its addresses, then stopped."""
    process = subprocess.Popen(
        [sys.executable, str(BENCHMARKS / "sinks.py"), *args, "--max-seconds", "120"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        assert process.stdout is not None
        yield json.loads(process.stdout.readline())
    finally:
        assert process.stdin is not None
        process.stdin.close()  # the sink exits when its parent's pipe closes
        process.wait(timeout=15)


@pytest.fixture
def sinks() -> Iterator[dict[str, Any]]:
    yield from _sink_process()


def _bulk_body(count: int) -> bytes:
    items = [
        {"_type": "agent_spans/create", "idempotency_key": f"key-{i:04d}", "details": {"id": f"span-{i}"}}
        for i in range(count)
    ]
    return json.dumps({"items": items}).encode()


def test_the_bulk_sink_reads_compressed_bodies_and_counts_them_as_sent_and_decoded(sinks: dict[str, Any]) -> None:
    body = _bulk_body(50)
    encoded = {"": body, "gzip": gzip.compress(body), "zstd": zstandard.ZstdCompressor().compress(body)}
    with httpx.Client(timeout=10) as client:
        client.post(sinks["bulk"] + "/_reset")
        for encoding, data in encoded.items():
            headers = {"Content-Type": "application/json"} | ({"Content-Encoding": encoding} if encoding else {})
            answer = client.post(sinks["bulk"] + "/api/v1/bulk", content=data, headers=headers)
            assert answer.status_code == 200, encoding
            outputs = answer.json()["outputs"]
            assert len(outputs) == 50 and outputs["key-0007"]["details"]["id"] == "span-7"
        refused = client.post(sinks["bulk"] + "/api/v1/bulk", content=b"not brotli", headers={"Content-Encoding": "br"})
        assert refused.status_code == 415
        stats = client.get(sinks["bulk"] + "/_stats").json()
    assert stats["requests"] == 4
    assert stats["items"] == 150
    assert stats["body_bytes"] == sum(len(data) for data in encoded.values()) + len(b"not brotli")
    assert stats["decoded_bytes"] == 3 * len(body) + len(b"not brotli")
    assert stats["encoded_requests:gzip"] == 1 and stats["encoded_requests:zstd"] == 1
    assert stats["encoded_requests:br"] == 1


def test_the_small_span_workload_is_mostly_plain_spans_with_a_few_genai_ones() -> None:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from workload import SMALL_SPANS_PER_TRACE, SpanSource
    finally:
        sys.path.remove(str(BENCHMARKS))
    source = SpanSource(seed=5, workload="small")
    spans = source.spans(240)
    assert source.spans_per_trace == SMALL_SPANS_PER_TRACE == 12
    assert len(spans) == 240
    traces = Counter(span.context.trace_id for span in spans if span.context is not None)
    assert set(traces.values()) == {12}
    # each trace stretched to a real run's length, its spans still inside their parents
    by_id = {span.context.span_id: span for span in spans if span.context is not None}
    for span in spans:
        assert span.start_time is not None and span.end_time is not None and span.start_time <= span.end_time
        parent = by_id.get(span.parent.span_id) if span.parent is not None else None
        if parent is not None:
            assert parent.start_time is not None and parent.end_time is not None
            assert parent.start_time <= span.start_time and span.end_time <= parent.end_time
        else:
            assert span.end_time - span.start_time == pytest.approx(8e9, rel=1e-6)
    schemas = Counter(map_span(span).schema_name for span in spans)
    assert schemas == {"otel:span": 180, "otel:llm": 40, "otel:agent": 20}
    # a handful of short attributes: no message content, no value longer than a query
    values = [value for span in spans for value in (span.attributes or {}).values()]
    assert max(len(value) for value in values if isinstance(value, str)) <= 80
    assert max(len(span.attributes or {}) for span in spans if map_span(span).schema_name == "otel:span") <= 8


def test_the_setup_measurement_delivers_every_span_in_both_set_ups(sinks: dict[str, Any]) -> None:
    params = {"workload": "small", "spans": 120, "runs": 1, "on_start_calls": 200, **sinks}
    result = _measure("setup", params)
    rounds = {r["mode"]: r for r in result["rounds"]}
    assert set(rounds) == {"none", "otlp", "bsp", "processor"}
    for mode in ("bsp", "processor"):
        assert rounds[mode]["ok"], rounds[mode]
        assert rounds[mode]["exported"] == 120 and rounds[mode]["instances_finished"] == 10
        assert rounds[mode]["decoded_bytes"] >= rounds[mode]["body_bytes"] > 0
    assert rounds["otlp"]["requests"] >= 1 and rounds["otlp"]["body_bytes"] > 0
    assert result["on_start"]["prefactor_ns"] > 0
    for r in rounds.values():  # the garbage collector's figures of each round: counts by generation, CPU by thread
        assert len(r["gc_collections"]) == 3 and all(count >= 0 for count in r["gc_collections"])
        assert r["gc_app_us"] >= 0 and r["gc_other_us"] >= 0 and r["gc_app_us"] >= r["app_gc_us"] >= 0


def test_the_cpu_measurement_counts_the_gc_containers_each_export_holds(sinks: dict[str, Any]) -> None:
    params = {"workload": "small", "spans": 1_100, "runs": 1, "kinds": ["otlp", "prefactor"], **sinks}
    result = _measure("cpu", params)
    containers = result["containers"]
    assert set(containers) == {"otlp", "prefactor", "prefactor_default_grace"}
    for figures in containers.values():
        assert figures["batch"] == 512 and figures["batches"] == 1  # 1,104 spans: a warm-up batch, a counted one
        assert figures["peak"] >= figures["held_after"] and figures["peak"] > 0
    for kind in ("otlp", "prefactor"):
        (run,) = result["runs"][kind]
        assert len(run["gc_collections"]) == 3 and all(count >= 0 for count in run["gc_collections"])


@pytest.fixture
def echoing_sinks() -> Iterator[dict[str, Any]]:
    yield from _sink_process("--echo")


def test_the_echoing_bulk_sink_answers_each_item_with_its_whole_object(
    echoing_sinks: dict[str, Any], tmp_path: Path
) -> None:
    """`sinks.py --echo` answers as Prefactor's API does (each span create's agent span, payloads included), and
    the exporter reads those answers as delivered: every span exported, no contract error."""
    from prefactor_otel import PrefactorSpanExporter
    from prefactor_otel.model import ids

    sys.path.insert(0, str(BENCHMARKS))
    try:
        from workload import SpanSource
    finally:
        sys.path.remove(str(BENCHMARKS))
    spans = SpanSource(seed=3, workload="realistic").spans(60)
    exporter = PrefactorSpanExporter(
        api_url=echoing_sinks["bulk"],
        api_token="pf_bench_token",
        agent_id=ids.encode(1_765_000_000_000, 4249, 7),
        spool_dir=str(tmp_path / "spool"),
        finish_grace_seconds=0,
        compression="none",
    )
    assert exporter.export(spans).name == "SUCCESS"
    exporter.shutdown()
    stats = exporter.stats()
    assert stats["spans_exported"] == len(spans) and stats["spans_dropped"] == 0
    assert stats.get("contract_errors", 0) == 0
    with httpx.Client(timeout=10) as client:
        counts = client.get(echoing_sinks["bulk"] + "/_stats").json()
        body = json.dumps(
            {"items": [{"_type": "agent_spans/create", "idempotency_key": "key-0001", "details": {
                "id": "span-1", "agent_instance_id": "run-1", "schema_name": "otel:llm", "status": "complete",
                "payload": {"inputs": {"messages": ["hi"]}}, "result_payload": {"outputs": "ok"}}}]}
        ).encode()  # fmt: skip
        answer = client.post(echoing_sinks["bulk"] + "/api/v1/bulk", content=body).json()
    # The answers are about as large as the requests (the realistic spans' payloads come back)
    assert counts["items"] >= len(spans) and counts["answer_bytes"] > counts["decoded_bytes"] / 2
    details = answer["outputs"]["key-0001"]["details"]
    assert answer["outputs"]["key-0001"]["status"] == "success"
    assert details["type"] == "agent_span" and details["id"] == "span-1" and details["agent_instance_id"] == "run-1"
    assert details["payload"] == {"inputs": {"messages": ["hi"]}} and details["result_payload"] == {"outputs": "ok"}


def _measure_module() -> Any:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import measure
    finally:
        sys.path.remove(str(BENCHMARKS))
    return measure


def test_the_trend_of_a_run_reads_growth_and_not_one_noisy_batch() -> None:
    measure = _measure_module()
    flat = [50.0 + (3.0 if i % 2 else -3.0) for i in range(20)]  # +-6 % noise, no trend
    assert abs(measure.theil_sen_change(flat)) < 0.02
    spiky = [*flat[:-2], 80.0, 80.0]  # the last tenth (two batches) dear: the tenths would say +60 %
    assert abs(measure.theil_sen_change(spiky)) < 0.10
    growing = [50.0 * (1 + 0.2 * i / 19) for i in range(20)]  # +20 % from the first batch to the last
    assert abs(measure.theil_sen_change(growing) - 0.2) < 0.01
    # With a grace, the batches after the first grace period when there are 10 of them: a step when finishes begin
    # is steady work, not growth; with too few batches after it, the whole run.
    step = [40.0] * 10 + [50.0] * 30
    at = [i * 0.5 for i in range(40)]  # the grace (5 s) ends at the 11th batch
    assert measure.trend(step, at, 5.0) == {"change": 0.0, "batches": 30, "window": "after the first 5 s"}
    assert measure.trend(step[:15], at[:15], 5.0)["window"] == "whole run"
    ramp = [40.0] * 10 + [50.0 * (1 + 0.2 * i / 29) for i in range(30)]  # growth after the grace is read
    assert abs(measure.trend(ramp, at, 5.0)["change"] - 0.2) < 0.01


def test_the_scale_measurement_counts_spans_after_the_exporter_first_batch(sinks: dict[str, Any]) -> None:
    params = {"exporter": "prefactor", "spans": 1024, "warmup_spans": 512, **sinks}
    result = _measure("scale", params)
    assert result["ok"] and result["dropped"] == 0
    assert result["exported"] == 1024 + 512  # the first batch went too, uncounted
    assert result["lead_in_us"] > 0 and result["cpu_us"] > 0
    assert result["trend"]["batches"] == 2 and result["trend"]["window"] == "whole run"
