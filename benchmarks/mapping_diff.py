"""Check that the mapping still produces exactly what it produced at an earlier commit (for performance work).

Usage: python benchmarks/mapping_diff.py [--ref HEAD] [--spans 3000]

Extracts `src/prefactor_otel` as committed at REF into a temporary directory under another package name, then
maps the same spans with both versions and compares every SpanRecord field (payloads compared as JSON) under
four option sets: defaults; short length limits with extra redaction keys and patterns; capture off; a redaction
callback. Spans: the benchmark workload, every recorded GenAI fixture (tests/fixtures/semconv/*.json) replayed,
random odd attribute shapes across the conventions, and the small-span workload of benchmarks/workload.py. Prints
counts and the first differences; exits 1 if any record differs.
Nothing leaves the process.
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import random
import re
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))  # tests.fixtures.semconv.replay
sys.path.insert(0, str(ROOT / "benchmarks"))

from workload import SpanSource

import prefactor_otel.mapping as current

REF_PACKAGE = "prefactor_otel_ref"
RECORD_FIELDS = (
    "trace_id",
    "span_id",
    "parent_span_id",
    "parent_is_remote",
    "name",
    "schema_name",
    "status",
    "start_time_ns",
    "end_time_ns",
    "payload",
    "result_payload",
    "scope",
)
OPTION_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "limits+redaction": {"max_input_length": 100, "redact_keys": ("order_id",), "redact_patterns": ("refund",)},
    "capture off": {"capture_inputs": False, "capture_outputs": False},
    # A callback sees every string, uncached: its path must give what it gave (and it must see what it saw).
    "callback": {"redact_callback": lambda path, value: value.replace("refund", "[r]") if "name" in path else value},
}
ODD_KEYS = (
    "gen_ai.operation.name",
    "gen_ai.input.messages",
    "gen_ai.output.messages",
    "gen_ai.tool.call.arguments",
    "gen_ai.tool.definitions",
    "gen_ai.request.model",
    "gen_ai.usage.input_tokens",
    "llm.input_messages.0.message.content",
    "llm.input_messages.0.message.role",
    "llm.output_messages.0.message.tool_calls.0.tool_call.function.arguments",
    "retrieval.documents.0.document.content",
    "embedding.embeddings.0.embedding.vector",
    "input.value",
    "output.value",
    "traceloop.entity.input",
    "traceloop.span.kind",
    "openinference.span.kind",
    "langsmith.span.kind",
    "mlflow.spanType",
    "pydantic_ai.all_messages",
    "final_result",
    "user.password",
    "note",
)
ODD_VALUES: tuple[object, ...] = (
    "chat",
    "LLM",
    "RETRIEVER",
    "execute_tool",
    "workflow",
    '[{"role": "user", "parts": [{"type": "text", "content": "hi sk-abcdefghijklmnopqrstuvwx"}]}]',
    '[{"role": 3, "parts": [{"type": "tool_call", "arguments": "[1, 2"}]}]',
    '{"messages": [[{"lc": 1, "type": "constructor", "id": ["x", "AIMessage"], "kwargs": {"content": "a"}}]]}',
    '[null, 1, "x", {"content": [1, {"type": "text"}]}]',
    '{"documents": [1, null, {"page_content": 2}]}',
    '"\\"LLM\\""',
    "{not json",
    "NaN",
    '{"a": NaN}',
    "password=hunter2 Bearer abcdefghijklmnop",
    12,
    -1.5,
    float("nan"),
    True,
    ("a", "b"),
    (1.5, 2.5),
    "",
)


class _Collect(SpanExporter):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def export(self, spans: Any) -> SpanExportResult:
        self.spans.extend(spans)
        return SpanExportResult.SUCCESS


def load_ref(ref: str, into: Path) -> Any:
    """The mapping package as committed at `ref`, importable as prefactor_otel_ref.mapping."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", ref, "src/prefactor_otel"],
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        try:
            tar.extractall(into, filter="data")
        except TypeError:  # a Python patch release older than the extraction filters: our own archive anyway
            tar.extractall(into)
    package = into / REF_PACKAGE
    (into / "src" / "prefactor_otel").rename(package)
    word = re.compile(r"\bprefactor_otel\b")
    for path in package.rglob("*.py"):
        path.write_text(word.sub(REF_PACKAGE, path.read_text(encoding="utf-8")), encoding="utf-8")
    sys.path.insert(0, str(into))
    return importlib.import_module(f"{REF_PACKAGE}.mapping")


def odd_spans(count: int, seed: int = 11) -> list[ReadableSpan]:
    rng = random.Random(seed)
    collector = _Collect()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(collector))
    tracer = provider.get_tracer("mapping-diff")
    for _ in range(count):
        attributes = {key: rng.choice(ODD_VALUES) for key in rng.sample(ODD_KEYS, rng.randint(1, 9))}
        name = rng.choice(["chat x", "execute_tool y", "invoke_agent z", "span", "x.workflow"])
        with tracer.start_as_current_span(name, attributes=attributes) as span:  # type: ignore[arg-type]
            if rng.random() < 0.2:
                span.record_exception(ValueError("boom"))
    return collector.spans


def all_spans(count: int) -> Iterator[tuple[str, ReadableSpan]]:
    from tests.fixtures.semconv import replay

    for span in SpanSource(seed=3).spans(count):
        yield "workload", span
    for fixture in sorted(path.name for path in replay.HERE.glob("*.json")):  # every recorded GenAI fixture
        for span in replay.load(fixture):
            yield fixture, span
    for span in odd_spans(count // 3):
        yield "odd shapes", span
    from mapping_cost import small_spans  # (mapping_cost imports this module)

    for span in small_spans(count // 3):
        yield "small spans", span


def dump(record: Any) -> str:
    return json.dumps({field: getattr(record, field) for field in RECORD_FIELDS}, default=repr)


def outcome(mapping: Any, span: ReadableSpan, options: Any) -> str:
    try:
        return dump(mapping.map_span(span, options))
    except Exception as exc:  # both versions must fail alike
        return f"{type(exc).__name__}: {exc}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", default="HEAD", help="the commit to compare the work tree's mapping with")
    parser.add_argument("--spans", type=int, default=3000, help="benchmark workload spans (odd shapes: a third)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mapping-diff-") as tmp:
        reference = load_ref(args.ref, Path(tmp))
        spans = list(all_spans(args.spans))
        compared = differ = 0
        for label, kwargs in OPTION_SETS.items():
            new_options = current.MappingOptions(**kwargs)
            old_options = reference.MappingOptions(**kwargs)
            for source, span in spans:
                compared += 1
                new, old = outcome(current, span, new_options), outcome(reference, span, old_options)
                if new != old:
                    differ += 1
                    if differ <= 3:
                        print(f"DIFFERS ({label}, {source}, span {span.name!r}):")
                        print(f"  {args.ref}: {old[:600]}\n  work tree: {new[:600]}")
        print(f"{compared:,} records compared ({len(spans):,} spans x {len(OPTION_SETS)} option sets): {differ} differ")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
