"""Per stage of the exporter: what our code costs per span, and the floor of that stage with the allowed libraries.

    python benchmarks/floors.py                  # both workloads, prints the table
    python benchmarks/floors.py --write          # also writes benchmarks/floors_notes.md (run.py puts it in RESULTS.md)
    python benchmarks/floors.py --ref main       # our stages at a commit too, interleaved, for before/after
    python benchmarks/floors.py --spans 300 --rounds 1 --json FILE   # a tiny run (the smoke test's), raw figures

Issue 22, "If a target still cannot be met": per stage (mapping envelope, redaction, typed fields and message
parsing, planning, span ids, encoding, compression, response reading, HTTP) the measured cost of our code and the
**floor**: the least work that stage must do for the same spans with the libraries allowed (opentelemetry, httpx,
pydantic-core, zstandard, google-re2, the stdlib), measured beside it. Beside them OTLP's own two stages on the same
spans (protobuf encoding with `opentelemetry.exporter.otlp.proto.common`'s encoder, and its HTTP post), and OTLP's
whole export, so the reader sees what 1.0x OTLP means per stage.

How (everything in this process but the sinks; CPU is thread time, `time.thread_time`, of this thread only):
- Spans: workload.py's realistic and small-span workloads (`SpanSource`, seed 1, traces stretched to 8 s), made
  once, frozen out of the garbage collector's scans.
- Rounds: every measurement below runs once per round, the contenders (the work tree, and `--ref`'s commit) and
  the floors interleaved, their order reversed every other round; the table shows the **median of the rounds**
  (the JSON dump holds every round). A derived row (a difference) is the median of its per-round differences.
- Our mapping stages, from `map_span` on the same spans (options built afresh each round, outside the clock, as
  a fresh exporter builds them once: the redaction's cache of short texts starts empty every round):
  mapping total = `map_span` with the default options; redaction = that minus `map_span` with
  `MappingOptions(redact_defaults=False)`; typed fields and message parsing = `conventions.classify` +
  `typed.build` + `typed.token_usage` on a copy of each span's attributes (made before the clock starts), GenAI
  spans only, as map_span calls them; envelope = `map_span` without redaction minus the typed stage (ids, times,
  metadata, events, origin, the payload dicts).
- Our span ids: `model.ids.span_pfid` over the spans' ids. Payload encoding: where `map_span` takes `encoded` (the
  exporter's `_map` writes the payloads while mapping), `map_span(..., encoded=True)` minus `map_span` with the same
  options, per round; at an older commit, `transport.wire.encode_json` of each mapped record's two payloads (what its
  `_map` did after `map_span`).
- Our pipeline stages, from a real `PrefactorSpanExporter` (defaults, finish grace 0, its own spool directory)
  exporting the spans in batches of 512 into the fast bulk sink (sinks.py, its own process), with thread-time
  wrappers on `Planner.add` / `plan` / `apply` (planning = their sum minus the span ids above), `Delivery._encode`
  (+ the payload encoding = encoding), `BodyCompression.compress` (compression), `AnswerReader.bulk_outcomes`
  (response reading), `BulkTransport._post` (HTTP = it minus compression and response reading). Each wrapped
  call is per plan or per request, so the wrappers cost nothing measurable. "ours total" is the exporter's
  `export()` + `shutdown()` of the same run; "other" is the total minus every stage (the exporter's wiring, the
  garbage collector, the journal, and `map_span` inside it against the isolated one).
- Floors (from the work tree's run: its request bodies, items and answers, captured in the first round):
  envelope = read the span's properties, copy its attributes (`copy()`, a C-level dict copy) and build one payload
  dict and one result dict of the same keys; redaction = one google-re2 `Set` match (the prefilter's patterns,
  `secret_patterns.PREFILTER_PATTERNS`) over the span's name and string attributes joined; typed = one
  `pydantic_core.from_json` of each message-like string attribute (the GenAI message, tool argument, tool result
  and definition keys), nothing else; planning = one dict lookup per span by trace id and one item tuple per span,
  runs' register/start/finish tuples, roots first; ids = one `blake2b` (80 bits) + one `base64.b32encode` per span;
  encoding = one `pydantic_core.to_json` per plan of the same items (payloads as objects); compression = zstd at
  its fastest level (negative levels included) whose total bytes stay <= OTLP's protobuf bytes for the same spans,
  over the same bodies; response reading = `pydantic_core.from_json` of the same answers; HTTP = a bare
  `httpx.Client.post` of the same compressed bodies (same headers) to the same sink, which answers the same bytes.
- OTLP: `encode_spans(batch).SerializePartialToString()` per batch of 512 (what OTLPSpanExporter does) and
  `OTLPSpanExporter._client.export` (its HTTP post, where the SDK has that attribute; else whole export minus
  encoding) of those bodies to the fast OTLP sink; "OTLP total" is a fresh OTLPSpanExporter's export + shutdown.

A floor measured above our own cost (noise on a tiny run, or our code already at the floor) is shown as measured
and the row is marked "at floor"; every other floor is <= ours (the smoke test, tests/test_benchmark_floors.py,
checks exactly that on a tiny run's output, not any speed).

Depends on these names of `prefactor_otel` (on main, and kept by --ref commits since issue 22's second round):
`mapping.map_span`, `mapping.MappingOptions`, `mapping.conventions.classify`, `mapping.typed.build` /
`Context` / `token_usage`, `mapping.values.plain_attributes`, `mapping.secret_patterns.PREFILTER_PATTERNS`,
`model.ids.span_pfid` / `encode`, `transport.wire.encode_json`, `PrefactorSpanExporter`, `pipeline.planner.Planner`
(`add`, `plan`, `apply`), `pipeline.delivery.Delivery._encode` (returns `(encoded, sendable items)`, each with a
`.body`), `transport.compression.BodyCompression.compress(body)`, `transport.answers.AnswerReader.bulk_outcomes`,
`transport.client.BulkTransport._post` and `_request(path, body, deadline, encoding=)` (with its `_headers`,
`_encoded_headers` and `_config.api_base`: the floors' HTTP requests are the work tree's, captured there). A
stage whose names are missing at a `--ref` commit is shown "n/a" for it; the others are still measured.
Single-threaded orchestration; the sinks run in their own process on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import gc
import hashlib
import importlib
import inspect
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import httpx
import pydantic_core
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan
from workload import SpanSource

BATCH = 512
MEASURING_THREAD = threading.get_ident()  # the thread that exports and whose CPU time is measured
NOTES = HERE / "floors_notes.md"
WORKLOADS = ("realistic", "small")
# GenAI attributes whose values are JSON in a string (what the typed stage parses), the typed floor's keys.
MESSAGE_KEYS = (
    "gen_ai.input.messages",
    "gen_ai.output.messages",
    "gen_ai.system_instructions",
    "gen_ai.tool.definitions",
    "gen_ai.tool.call.arguments",
    "gen_ai.tool.call.result",
)
ZSTD_LEVELS = (-50, -20, -10, -7, -5, -3, -1, 1, 2, 3, 6, 9)  # fastest first; the floor takes the first <= OTLP

# (key, stage label, floor method); the order of the table.
STAGES: tuple[tuple[str, str, str], ...] = (
    (
        "envelope",
        "mapping: envelope (ids, times, metadata, payload dicts)",
        "copy the attributes (C copy), build one payload + one result dict of the same keys",
    ),
    ("redaction", "mapping: redaction", "one google-re2 Set match over the span's strings joined"),
    (
        "typed",
        "mapping: typed fields + message parsing",
        "pydantic_core.from_json of each message string (the other fields: the envelope's copy)",
    ),
    ("planning", "planning (add, plan, apply; without span ids)", "dict lookup by trace + one item tuple per span"),
    ("ids", "span ids (PFIDs)", "one blake2b (80 bits) + one base64.b32encode per span (Python code until 3.13)"),
    (
        "encoding",
        "encoding (payloads + items -> JSON)",
        "one pydantic_core.to_json per plan of the same items (the schema set encoded once per process)",
    ),
    ("compression", "compression (request bodies)", "zstd at its fastest level keeping bytes <= OTLP's"),
    ("response", "response reading (bulk answers)", "pydantic_core.from_json of the same answers"),
    ("http", "HTTP request + response", "bare httpx.Client.post of the same bodies to the same sink"),
)
STAGE_KEYS = tuple(key for key, _, _ in STAGES)


# ---------------------------------------------------------------------------------------------- the code measured


@dataclass
class Contender:
    """One version of our code: the work tree's `prefactor_otel`, or a commit's, imported under another name."""

    label: str
    package: str
    spent: dict[str, float] = field(default_factory=dict)  # wrapped stages' thread seconds, this run
    capture: dict[str, list[Any]] | None = None  # set while the run's bodies, items and answers are kept

    def module(self, name: str) -> Any:
        return importlib.import_module(f"{self.package}.{name}")

    def attr(self, module: str, name: str) -> Any:
        """`module.name` of this version, or None where this version does not have it."""
        try:
            return getattr(self.module(module), name, None)
        except ImportError:
            return None


OnCall = Callable[[float, tuple[Any, ...], dict[str, Any], Any], None]  # (thread seconds, args, kwargs, result)


def _wrap(owner: Any, name: str, on_call: OnCall) -> bool:
    """Replace `owner.name` by a wrapper that reports its thread seconds, arguments and result; False if missing."""
    original: Callable[..., Any] | None = getattr(owner, name, None)
    if original is None:
        return False
    call: Callable[..., Any] = original

    def timed(*args: Any, **kwargs: Any) -> Any:
        if threading.get_ident() != MEASURING_THREAD:  # the exporter's own threads: not this thread's time
            return call(*args, **kwargs)
        start = time.thread_time()
        result = call(*args, **kwargs)
        on_call(time.thread_time() - start, args, kwargs, result)
        return result

    setattr(owner, name, timed)
    return True


def instrument(contender: Contender) -> None:
    """Thread-time wrappers on the contender's pipeline stages (per plan or per request: a few calls per batch)."""
    spent = contender.spent

    def adder(label: str) -> OnCall:
        def on_call(seconds: float, args: tuple[Any, ...], kwargs: dict[str, Any], result: Any) -> None:
            spent[label] = spent.get(label, 0.0) + seconds

        return on_call

    planner = contender.attr("pipeline.planner", "Planner")
    for method in ("add", "plan", "apply"):
        _wrap(planner, method, adder("planner"))
    _wrap(contender.attr("transport.answers", "AnswerReader"), "bulk_outcomes", adder("response"))
    _wrap(contender.attr("transport.client", "BulkTransport"), "_post", adder("post"))

    def on_encode(seconds: float, args: tuple[Any, ...], kwargs: dict[str, Any], result: Any) -> None:
        spent["encode_items"] = spent.get("encode_items", 0.0) + seconds
        if contender.capture is not None:
            contender.capture["plans"].append([item.body for item in result[1]])

    def on_compress(seconds: float, args: tuple[Any, ...], kwargs: dict[str, Any], result: Any) -> None:
        spent["compression"] = spent.get("compression", 0.0) + seconds
        if contender.capture is not None:
            contender.capture["plain_bodies"].append(args[-1])

    def on_request(seconds: float, args: tuple[Any, ...], kwargs: dict[str, Any], result: Any) -> None:
        if contender.capture is not None:
            transport, path, body = args[0], args[1], args[2]
            encoding = kwargs.get("encoding", "identity")
            headers = transport._headers if encoding == "identity" else transport._encoded_headers[encoding]
            url = transport._config.api_base + path
            contender.capture["requests"].append((url, body, headers, result[1]))

    _wrap(contender.attr("pipeline.delivery", "Delivery"), "_encode", on_encode)
    _wrap(contender.attr("transport.compression", "BodyCompression"), "compress", on_compress)
    _wrap(contender.attr("transport.client", "BulkTransport"), "_request", on_request)


def new_exporter(contender: Contender, bulk_url: str, spool_root: Path) -> Any:
    ids = contender.module("model.ids")
    exporter_class = contender.attr("sdk.exporter", "PrefactorSpanExporter")
    exporter = exporter_class(
        api_url=bulk_url,
        api_token="pf_bench_token",
        agent_id=ids.encode(int(time.time() * 1000), 4249, 0x5EED_0000_0007),
        spool_dir=tempfile.mkdtemp(dir=spool_root),
        finish_grace_seconds=0,
    )
    if not exporter.enabled:
        raise RuntimeError(f"exporter disabled: {exporter!r}")
    return exporter


def _timed(work: Callable[[], object]) -> float:
    """Thread CPU seconds of `work()` (a collection first, so no earlier garbage is charged to it)."""
    gc.collect()
    start = time.thread_time()
    work()
    return time.thread_time() - start


def _each(function: Callable[..., object], arguments: Sequence[tuple[Any, ...]]) -> Callable[[], None]:
    """`function(*a)` for each `a`, results dropped at once (as the exporter drops a span's mapped dicts once they
    are encoded: a list of every result would make the garbage collector scan a growing heap)."""

    def work() -> None:
        for args in arguments:
            function(*args)

    return work


# ---------------------------------------------------------------------------------------------- one workload


@dataclass
class Prepared:
    """What the measurements of one workload share, made before any clock starts."""

    spans: list[ReadableSpan]
    batches: list[list[ReadableSpan]]
    otlp_bodies: list[bytes]
    otlp_bytes: int
    # per contender: its mapped records (the payload encoding's input); "<label>:capture": its run's captures
    mapping: dict[str, Any] = field(default_factory=dict)


def prepare(workload: str, count: int, contenders: Sequence[Contender]) -> Prepared:
    spans = SpanSource(seed=1, workload=workload).spans(count)
    batches = [spans[i : i + BATCH] for i in range(0, len(spans), BATCH)]
    bodies = [encode_spans(batch).SerializePartialToString() for batch in batches]
    prepared = Prepared(spans, batches, bodies, sum(len(body) for body in bodies))
    for contender in contenders:
        mapping = contender.module("mapping")
        records = [mapping.map_span(span, mapping.MappingOptions()) for span in spans]
        prepared.mapping[contender.label] = records
    return prepared


def _typed_inputs(contender: Contender, spans: Sequence[ReadableSpan]) -> list[tuple[Any, ...]] | None:
    """Fresh attribute copies (the typed stage reads and marks them) with what `Context` takes, or None."""
    plain = contender.attr("mapping.values", "plain_attributes")
    if plain is None:
        return None
    return [
        (plain(span.attributes), span.events, span.name, [(e.name, e.attributes or {}) for e in span.events], span)
        for span in spans
    ]


def typed_stage(contender: Contender, inputs: list[tuple[Any, ...]]) -> float | None:
    classify = contender.attr("mapping.conventions", "classify")
    typed = contender.module("mapping.typed")
    build, context, usage = (getattr(typed, name, None) for name in ("build", "Context", "token_usage"))
    if classify is None or build is None or context is None or usage is None:
        return None

    def work() -> None:
        for attributes, span_events, name, events, span in inputs:
            classification = classify(attributes, name)
            if classification.convention is not None:
                ctx = context(attributes, span_events, name, events)
                try:
                    build(ctx, classification, span)
                except Exception:  # map_span keeps such a span generic; the cost so far counts
                    continue
                usage(ctx, classification.schema_name)

    return _timed(work)


def measure_contender(
    contender: Contender, prepared: Prepared, bulk_url: str, spool_root: Path, capture: bool
) -> dict[str, float | None]:
    """One round of every stage of one version of our code: µs/span (None where the version lacks the names)."""
    spans = prepared.spans
    count = len(spans)
    mapping = contender.module("mapping")
    records = prepared.mapping[contender.label]
    # Fresh options each round, as a fresh exporter has: a Redactor caches the outcome of short texts, and the
    # same spans mapped again must not find their unique values (ids) there, as real spans would not.
    default, unredacted = mapping.MappingOptions(), mapping.MappingOptions(redact_defaults=False)
    map_span = mapping.map_span
    out: dict[str, float | None] = {}
    out["map_full"] = _timed(_each(map_span, [(span, default) for span in spans]))
    out["map_unredacted"] = _timed(_each(map_span, [(span, unredacted) for span in spans]))
    inputs = _typed_inputs(contender, spans)
    out["typed"] = typed_stage(contender, inputs) if inputs is not None else None
    span_pfid = contender.attr("model.ids", "span_pfid")
    keys = [(span.context.trace_id, span.context.span_id, span.start_time) for span in spans if span.context]
    out["ids"] = _timed(_each(span_pfid, [(4249, *key) for key in keys])) if span_pfid else None
    encode_json = contender.attr("transport.wire", "encode_json")
    if "encoded" in inspect.signature(map_span).parameters:
        # The exporter writes the payloads while it maps (`map_span(..., encoded=True)`): their encoding is that
        # call minus the same mapping without it, this round.
        fresh = mapping.MappingOptions()  # its own empty text cache, as map_full's had
        encoded = _timed(_each(lambda span: map_span(span, fresh, encoded=True), [(span,) for span in spans]))
        out["payload_encoding"] = encoded - out["map_full"]
    else:  # a version whose exporter encodes a mapped record's two payloads after mapping
        out["payload_encoding"] = (
            _timed(_each(lambda r: (encode_json(r.payload), encode_json(r.result_payload)), [(r,) for r in records]))
            if encode_json
            else None
        )
    contender.spent.clear()
    contender.capture = {"plans": [], "plain_bodies": [], "requests": []} if capture else None
    exporter = new_exporter(contender, bulk_url, spool_root)
    gc.collect()
    start = time.thread_time()
    for batch in prepared.batches:
        exporter.export(batch)
    exporter.shutdown()
    out["total"] = time.thread_time() - start
    for key in ("planner", "encode_items", "compression", "response", "post"):
        out[key] = contender.spent.get(key)
    if capture:
        out_capture = contender.capture
        prepared.mapping[f"{contender.label}:capture"] = out_capture
    contender.capture = None
    return {key: (None if value is None else value / count * 1e6) for key, value in out.items()}


def stages_of(rounds: Sequence[dict[str, float | None]]) -> dict[str, float | None]:
    """Our stage table (µs/span) from a contender's rounds: medians, differences taken per round."""

    def median_of(pick: Callable[[dict[str, float | None]], float | None]) -> float | None:
        values = [pick(r) for r in rounds]
        kept = [v for v in values if v is not None]
        return statistics.median(kept) if kept and len(kept) == len(values) else None

    def diff(a: float | None, *rest: float | None) -> float | None:
        if a is None or any(r is None for r in rest):
            return None
        return a - sum(r for r in rest if r is not None)

    def added(*parts: float | None) -> float | None:
        return None if any(p is None for p in parts) else sum(p for p in parts if p is not None)

    table = {
        "mapping_total": median_of(lambda r: r["map_full"]),
        "envelope": median_of(lambda r: diff(r["map_unredacted"], r["typed"])),
        "redaction": median_of(lambda r: diff(r["map_full"], r["map_unredacted"])),
        "typed": median_of(lambda r: r["typed"]),
        "planning": median_of(lambda r: diff(r["planner"], r["ids"])),
        "ids": median_of(lambda r: r["ids"]),
        "encoding": median_of(lambda r: added(r["payload_encoding"], r["encode_items"])),
        "compression": median_of(lambda r: r["compression"]),
        "response": median_of(lambda r: r["response"]),
        "http": median_of(lambda r: diff(r["post"], r["compression"], r["response"])),
        "total": median_of(lambda r: r["total"]),
    }
    staged = [table[key] for key in STAGE_KEYS]
    table["other"] = (
        None
        if table["total"] is None or any(v is None for v in staged)
        else median_of(
            lambda r: diff(
                r["total"],
                r["map_full"],
                diff(r["planner"], r["ids"]),
                r["ids"],
                added(r["payload_encoding"], r["encode_items"]),
                r["post"],
            )
        )
    )
    return table


# ---------------------------------------------------------------------------------------------- the floors


def _decoded(value: Any) -> Any:
    """An item body with every pre-encoded JSON value (RawJson: bytes) as the object it holds."""
    if isinstance(value, bytes):
        return pydantic_core.from_json(value)
    if isinstance(value, dict):
        return {key: _decoded(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_decoded(item) for item in value]
    return value


@dataclass
class FloorInputs:
    """What the floors work on: the work tree's run's plans, bodies and answers, and the spans themselves."""

    spans: list[ReadableSpan]
    attributes: list[dict[str, Any]]  # each span's attributes, copied beforehand (the envelope floor paid for it)
    plans: list[list[dict[str, Any]]]
    plain_bodies: list[bytes]
    requests: list[tuple[str, bytes, dict[str, str], bytes]]
    otlp_bytes: int
    zstd_level: int = 0
    zstd_bytes: int = 0
    regex_set: Any = None
    origins: dict[Any, dict[str, Any]] = field(default_factory=dict)  # scope -> its metadata keys and the Resource's


def floor_inputs(prepared: Prepared, capture: dict[str, list[Any]]) -> FloorInputs:
    import zstandard

    spans = prepared.spans
    inputs = FloorInputs(
        spans=spans,
        attributes=[dict(span.attributes or {}) for span in spans],
        # The schema set a register carries is the same ~10 KB on every run: encoded once per process (ours caches
        # it too), so it costs the floor nothing per span and is left out of its items.
        plans=[
            [_decoded({k: v for k, v in body.items() if k != "agent_schema_version"}) for body in plan]
            for plan in capture["plans"]
        ],
        plain_bodies=list(capture["plain_bodies"]),
        requests=list(capture["requests"]),
        otlp_bytes=prepared.otlp_bytes,
    )
    for span in spans:
        scope = span.instrumentation_scope
        if scope not in inputs.origins:
            resource = dict(span.resource.attributes) if span.resource is not None else {}
            inputs.origins[scope] = {"otel.scope.name": getattr(scope, "name", None), **resource}
    for level in ZSTD_LEVELS:  # the fastest level whose bytes stay <= OTLP's (sizes do not depend on the load)
        compressor = zstandard.ZstdCompressor(level=level)
        size = sum(len(compressor.compress(body)) for body in inputs.plain_bodies)
        inputs.zstd_level, inputs.zstd_bytes = level, size
        if size <= inputs.otlp_bytes:
            break
    try:
        import re2

        from prefactor_otel.mapping.secret_patterns import PREFILTER_PATTERNS

        regex_set = re2.Set.SearchSet(re2.Options())
        for pattern in dict.fromkeys(PREFILTER_PATTERNS.values()):
            regex_set.Add(pattern)
        regex_set.Compile()
        inputs.regex_set = regex_set
    except ImportError:
        inputs.regex_set = None
    return inputs


def floor_envelope(inputs: FloorInputs) -> None:
    origins = inputs.origins
    for span in inputs.spans:
        context, parent = span.context, span.parent
        attributes = span.attributes
        metadata = attributes.copy() if attributes is not None else {}  # type: ignore[attr-defined]
        metadata.update(origins[span.instrumentation_scope])  # the scope and Resource keys, made once per scope
        events = (
            [{"name": e.name, "timestamp": e.timestamp, "attributes": e.attributes} for e in span.events]
            if span._events  # type: ignore[attr-defined]
            else []
        )
        status = span.status.status_code
        failed = status.value == 2
        error = {"error_type": "error", "message": span.status.description} if failed else None
        payload = {
            "span_id": context.span_id.to_bytes(8, "big").hex(),  # type: ignore[union-attr]
            "trace_id": context.trace_id.to_bytes(16, "big").hex(),  # type: ignore[union-attr]
            "parent_span_id": parent.span_id.to_bytes(8, "big").hex() if parent is not None else None,
            "name": span.name,
            "kind": span.kind.name,
            "status": "failed" if failed else "complete",
            "inputs": {},
            "metadata": metadata,
            "token_usage": None,
            "error": error,
            "events": events,
            "links": [],
        }
        result = {"outputs": {}, "token_usage": None, "error": error}
        times = (span.start_time, span.end_time)  # read, as ours reads them (the record holds them)
        del payload, result, times


def floor_redaction(inputs: FloorInputs) -> None:
    match = inputs.regex_set.Match
    for span, attributes in zip(inputs.spans, inputs.attributes, strict=True):
        strings = [value for value in attributes.values() if type(value) is str]
        strings.append(span.name)
        if span._events:  # type: ignore[attr-defined]
            for event in span.events:  # exception messages and stack traces
                strings.append(event.name)
                strings.extend(v for v in (event.attributes or {}).values() if type(v) is str)
            if span.status.description:
                strings.append(span.status.description)
        match("\x1f".join(strings).encode("utf-8", "surrogatepass"))


def floor_typed(inputs: FloorInputs) -> None:
    from_json = pydantic_core.from_json
    for attributes in inputs.attributes:
        for key in MESSAGE_KEYS:
            value = attributes.get(key)
            if type(value) is str:
                from_json(value)


def floor_planning(inputs: FloorInputs) -> None:
    runs: dict[int, list[tuple[int, int | None]]] = {}
    for span in inputs.spans:
        context, parent = span.context, span.parent
        spans = runs.get(context.trace_id)  # type: ignore[union-attr]
        if spans is None:
            spans = runs[context.trace_id] = []  # type: ignore[union-attr]
        spans.append((context.span_id, parent.span_id if parent is not None else None))  # type: ignore[union-attr]
    items: list[tuple[str, int, int | None]] = []
    for trace_id, spans in runs.items():
        items.append(("register", trace_id, None))
        items.append(("start", trace_id, None))
        items.extend(("span", span_id, parent_id) for span_id, parent_id in reversed(spans))  # ended children first
        items.append(("finish", trace_id, None))


def floor_ids(inputs: FloorInputs) -> None:
    blake2b, b32 = hashlib.blake2b, base64.b32encode
    for span in inputs.spans:
        context = span.context
        b32(blake2b(b"%032x%016x" % (context.trace_id, context.span_id), digest_size=10).digest())  # type: ignore[union-attr]


def floor_encoding(inputs: FloorInputs) -> None:
    to_json = pydantic_core.to_json
    for plan in inputs.plans:
        to_json({"items": plan})


def floor_compression(inputs: FloorInputs) -> None:
    import zstandard

    compress = zstandard.ZstdCompressor(level=inputs.zstd_level).compress
    for body in inputs.plain_bodies:
        compress(body)


def floor_response(inputs: FloorInputs) -> None:
    from_json = pydantic_core.from_json
    for _, _, _, answer in inputs.requests:
        from_json(answer)


def floor_http(inputs: FloorInputs, client: httpx.Client) -> None:
    for url, body, headers, _ in inputs.requests:
        client.post(url, content=body, headers=headers).read()


FLOORS: dict[str, Callable[[FloorInputs], None]] = {
    "envelope": floor_envelope,
    "redaction": floor_redaction,
    "typed": floor_typed,
    "planning": floor_planning,
    "ids": floor_ids,
    "encoding": floor_encoding,
    "compression": floor_compression,
    "response": floor_response,
}


def measure_floors(inputs: FloorInputs, client: httpx.Client) -> dict[str, float | None]:
    count = len(inputs.spans)
    out: dict[str, float | None] = {}
    for key, work in FLOORS.items():
        if key == "redaction" and inputs.regex_set is None:
            out[key] = None
            continue
        out[key] = _timed(lambda work=work: work(inputs)) / count * 1e6  # type: ignore[misc]
    out["http"] = _timed(lambda: floor_http(inputs, client)) / count * 1e6
    return out


# ---------------------------------------------------------------------------------------------- OTLP


def measure_otlp(prepared: Prepared, otlp_url: str) -> dict[str, float]:
    count = len(prepared.spans)
    encode_s = _timed(_each(lambda b: encode_spans(b).SerializePartialToString(), [(b,) for b in prepared.batches]))
    poster = OTLPSpanExporter(endpoint=otlp_url + "/v1/traces", timeout=10)
    client = getattr(poster, "_client", None)
    post = getattr(client, "export", None) or getattr(poster, "_export", None)
    http_s = _timed(_each(post, [(body,) for body in prepared.otlp_bodies])) if post is not None else None
    poster.shutdown()
    exporter = OTLPSpanExporter(endpoint=otlp_url + "/v1/traces", timeout=10)

    def whole() -> None:
        for batch in prepared.batches:
            exporter.export(batch)
        exporter.shutdown()

    total_s = _timed(whole)
    if http_s is None:
        http_s = max(0.0, total_s - encode_s)
    return {"encode": encode_s / count * 1e6, "http": http_s / count * 1e6, "total": total_s / count * 1e6}


# ---------------------------------------------------------------------------------------------- orchestration


@contextmanager
def fast_sinks() -> Iterator[dict[str, str]]:
    """benchmarks/sinks.py's fast bulk and OTLP sinks in their own process (they decode Content-Encoding)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PREFACTOR_"))}
    process = subprocess.Popen(
        [sys.executable, str(HERE / "sinks.py"), "--max-seconds", "3600"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        yield json.loads(process.stdout.readline())
    finally:
        assert process.stdin is not None
        process.stdin.close()
        process.wait(timeout=30)


def measure_workload(
    workload: str, count: int, rounds: int, contenders: Sequence[Contender], sinks: dict[str, str], spool: Path
) -> dict[str, Any]:
    prepared = prepare(workload, count, contenders)
    gc.collect()
    gc.freeze()  # the spans and their mapped records stand in for what BatchSpanProcessor holds: not scanned
    ours: dict[str, list[dict[str, float | None]]] = {c.label: [] for c in contenders}
    floors: list[dict[str, float | None]] = []
    otlp: list[dict[str, float]] = []
    tree = contenders[0]
    # Warm-up round (imports, first connections, caches, the capture of what the floors work on): not counted.
    for contender in contenders:
        measure_contender(contender, prepared, sinks["bulk"], spool, capture=contender is tree)
    inputs = floor_inputs(prepared, prepared.mapping[f"{tree.label}:capture"])
    gc.collect()
    gc.freeze()  # the floors' inputs too
    with httpx.Client() as client:
        measure_floors(inputs, client)
        measure_otlp(prepared, sinks["otlp"])
        for index in range(rounds):
            steps: list[Callable[[], None]] = [
                *(
                    (lambda c=c: ours[c.label].append(measure_contender(c, prepared, sinks["bulk"], spool, False)))
                    for c in contenders
                ),
                lambda: floors.append(measure_floors(inputs, client)),
                lambda: otlp.append(measure_otlp(prepared, sinks["otlp"])),
            ]
            for step in steps if index % 2 == 0 else reversed(steps):
                step()
    gc.unfreeze()
    floor_median = {
        key: (statistics.median(values) if None not in values else None)
        for key in FLOORS.keys() | {"http"}
        for values in [[f[key] for f in floors]]
    }
    return {
        "workload": workload,
        "spans": len(prepared.spans),
        "rounds": rounds,
        "ours": {label: stages_of(r) for label, r in ours.items()},
        "ours_rounds": ours,
        "floors": floor_median,
        "floor_rounds": floors,
        "otlp": {key: statistics.median(o[key] for o in otlp) for key in ("encode", "http", "total")},
        "otlp_rounds": otlp,
        "otlp_bytes_per_span": prepared.otlp_bytes / len(prepared.spans),
        "zstd_floor_level": inputs.zstd_level,
        "zstd_floor_bytes_per_span": inputs.zstd_bytes / len(prepared.spans),
        "requests": len(inputs.requests),
    }


def rows(result: dict[str, Any], label: str) -> list[dict[str, Any]]:
    """The table's rows for one workload and one contender: stage, ours, floor, method, ratio, at_floor."""
    ours, floors = result["ours"][label], result["floors"]
    out = []
    for key, stage, method in STAGES:
        mine, floor = ours[key], floors[key]
        if key == "compression":
            method = f"zstd level {result['zstd_floor_level']} ({result['zstd_floor_bytes_per_span']:.0f} B/span)"
            method += f" <= OTLP {result['otlp_bytes_per_span']:.0f}"
        at_floor = mine is not None and floor is not None and floor > mine
        ratio = mine / floor if mine is not None and floor and floor > 0 and not at_floor else None
        out.append(
            {"key": key, "stage": stage, "ours": mine, "floor": floor, "method": method, "ratio": ratio,
             "at_floor": at_floor}
        )  # fmt: skip
    return out


def least(row: dict[str, Any]) -> float:
    """What a row adds to the sum of the floors: its floor, or our cost where ours is already below the floor
    measured (our code is itself a way to do that stage with the allowed libraries); 0 where not measured."""
    values = [value for value in (row["floor"], row["ours"]) if value is not None]
    if not values:
        return 0.0
    return max(0.0, min(values)) if row["at_floor"] else max(0.0, row["floor"] or 0.0)


def _fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def table(result: dict[str, Any], label: str, refs: Sequence[str] = ()) -> list[str]:
    """Markdown lines: the stage table of one workload, our columns, then the sums and OTLP's stages."""
    lines = [
        f"**{result['workload']}** workload: {result['spans']:,} spans, {result['requests']} bulk requests, "
        f"median of {result['rounds']} rounds, CPU µs/span (thread time)",
        "",
        "| stage | ours | floor | floor method | ours/floor |" + "".join(f" {ref} | {label}/{ref} |" for ref in refs),
        "| --- | ---: | ---: | --- | ---: |" + " ---: | ---: |" * len(refs),
    ]
    floor_sum = 0.0
    for row in rows(result, label):
        floor_sum += least(row)
        ratio = "at floor" if row["at_floor"] else (f"{row['ratio']:.1f}x" if row["ratio"] is not None else "n/a")
        line = f"| {row['stage']} | {_fmt(row['ours'])} | {_fmt(row['floor'])} | {row['method']} | {ratio} |"
        for ref in refs:
            theirs = result["ours"][ref][row["key"]]
            ours_value = row["ours"]
            versus = f"{ours_value / theirs:.2f}" if ours_value is not None and theirs else "n/a"
            line += f" {_fmt(theirs)} | {versus} |"
        lines.append(line)
    ours = result["ours"][label]
    otlp = result["otlp"]
    staged = sum(v for key in STAGE_KEYS if (v := ours[key]) is not None)
    extra = "".join(f" {_fmt(result['ours'][ref]['other'])} | |" for ref in refs)
    lines.append(f"| other (exporter wiring, GC, journal) | {_fmt(ours['other'])} | | | |{extra}")
    extra = "".join(f" {_fmt(result['ours'][ref]['total'])} | |" for ref in refs)
    lines.append(f"| **ours total** (export + shutdown) | **{_fmt(ours['total'])}** | | | |{extra}")
    lines += [
        f"| **sum of the floors** (a row at floor counts at ours) | | **{floor_sum:.2f}** | | |" + " | |" * len(refs),
        f"| OTLP: protobuf encoding (its own stage) | {otlp['encode']:.2f} | | `encode_spans(batch)`, serialized | |"
        + " | |" * len(refs),
        f"| OTLP: HTTP post (its own stage) | {otlp['http']:.2f} | | its `_client.export` of those bodies | |"
        + " | |" * len(refs),
        f"| **OTLP total** (export + shutdown) | **{otlp['total']:.2f}** | | | |" + " | |" * len(refs),
        "",
        f"OTLP on the same spans, same rounds: protobuf encoding {otlp['encode']:.2f}, HTTP post {otlp['http']:.2f}, "
        f"whole export {otlp['total']:.2f} µs/span ({result['otlp_bytes_per_span']:.0f} B/span protobuf). "
        f"Ours: {_fmt(ours['total'])} = {_ratio(ours['total'], otlp['total'])} OTLP "
        f"(stages {staged:.2f}, mapping {_fmt(ours['mapping_total'])}). "
        f"**Sum of the floors {floor_sum:.2f} = {floor_sum / otlp['total']:.2f}x OTLP**; "
        f"ours = {_ratio(ours['total'], floor_sum)} the sum of the floors.",
    ]
    gaps = sorted(
        ((row["ours"] - least(row), row["key"]) for row in rows(result, label) if row["ours"] is not None),
        reverse=True,
    )
    if ours["total"] is not None:
        lines.append(
            f"To reach 1.0x OTLP ours must shed {ours['total'] - otlp['total']:.1f} µs/span; the stages' gaps to "
            f"their floors (ours - floor), largest first: " + ", ".join(f"{key} {gap:.1f}" for gap, key in gaps) + "."
        )
    return lines


def _ratio(value: float | None, base: float) -> str:
    return "n/a" if value is None or not base else f"{value / base:.2f}x"


def machine_load() -> str:
    try:
        one, five, fifteen = Path("/proc/loadavg").read_text().split()[:3]
    except OSError:
        return "load unknown"
    return f"load average {one} / {five} / {fifteen} (1 / 5 / 15 min) at the end"


def commit() -> str:
    done = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    )
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--", "src"], capture_output=True, text=True, check=False
    )
    return done.stdout.strip() + (" (src/ modified)" if dirty.stdout.strip() else "")


def notes(results: list[dict[str, Any]], args: argparse.Namespace, load: str) -> str:
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    refs = [args.ref] if args.ref else []
    parts = [
        "<!-- floors:start -->",
        "## Per stage: our cost and the floor",
        "",
        f"`python benchmarks/floors.py{' --ref ' + args.ref if args.ref else ''}` on {when}, commit {commit()}, "
        f"{os.cpu_count()} cores; {load}. Method: benchmarks/floors.py's docstring (thread CPU of one thread, "
        "rounds interleaved, medians; a derived row is the median of its per-round differences). The floor is "
        "the least work the stage must do for the same spans with the libraries allowed, measured beside ours; "
        "ratios are from the same run, read them rather than the absolute figures.",
        "",
    ]
    for result in results:
        parts += [*table(result, "work tree", refs), ""]
    parts.append("<!-- floors:end -->")
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spans", type=int, default=6000, help="spans per workload (whole traces)")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds (median reported)")
    parser.add_argument("--workload", choices=WORKLOADS, action="append", help="only this workload (repeatable)")
    parser.add_argument("--ref", help="also measure our stages as committed at this git ref (interleaved)")
    parser.add_argument("--write", action="store_true", help="write benchmarks/floors_notes.md (or --notes)")
    parser.add_argument("--notes", type=Path, default=NOTES, help="where --write writes (default %(default)s)")
    parser.add_argument("--json", type=Path, help="dump the raw figures (every round) as JSON here")
    args = parser.parse_args(argv)
    contenders = [Contender("work tree", "prefactor_otel")]
    scratch = Path(tempfile.mkdtemp(prefix="prefactor-floors-"))
    try:
        if args.ref:
            from mapping_diff import REF_PACKAGE, load_ref

            load_ref(args.ref, scratch / "ref")
            contenders.append(Contender(args.ref, REF_PACKAGE))
        for contender in contenders:
            instrument(contender)
        spool = scratch / "spool"
        spool.mkdir()
        results = []
        with fast_sinks() as sinks:
            for workload in args.workload or WORKLOADS:
                print(f"measuring the {workload} workload ...", file=sys.stderr, flush=True)
                results.append(measure_workload(workload, args.spans, args.rounds, contenders, sinks, spool))
        load = machine_load()
        refs = [args.ref] if args.ref else []
        for result in results:
            print("\n".join(table(result, "work tree", refs)) + "\n")
        print(load)
        if args.json:
            args.json.write_text(json.dumps({"load": load, "results": results, "rows": {
                r["workload"]: rows(r, "work tree") for r in results}}, indent=1))  # fmt: skip
        if args.write:
            args.notes.write_text(notes(results, args, load))
            print(f"wrote {args.notes}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
