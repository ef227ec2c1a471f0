"""A gateway in a process of its own, for tests/test_gateway_core_kill.py: configured by the environment (the
PREFACTOR_* variables and PREFACTOR_GATEWAY_DIR), it accepts requests built by the OTel encoder from real SDK spans
and prints, after each acknowledged request, one JSON line with the (trace id, span id) of every span in it. Traces
are spread over requests as batching exporters spread them: a trace's children in one request, its root in a
later one. It runs until killed (the test SIGKILLs it mid-stream). With the argument `late` or `late-held`: see
`late_span`."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable

from opentelemetry import trace as trace_api
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from prefactor_otel.gateway.ledger import FINISHED_FILE
from prefactor_otel.gateway.service import Gateway, Overloaded
from prefactor_otel.gateway.settings import GatewaySettings
from tests.spans import Collector


def main() -> None:
    gateway = Gateway(GatewaySettings.load())
    if sys.argv[1:2] in (["late"], ["late-held"]):
        late_span(gateway, held=sys.argv[1] == "late-held")
        return
    gateway.start()
    if not gateway.wait_ready(60):
        print(json.dumps({"error": gateway.not_ready_reason()}), flush=True)
        sys.exit(2)
    print(json.dumps({"ready": True}), flush=True)
    collector = Collector()
    provider = TracerProvider(resource=Resource.create({"service.name": "killed-gateway-client"}))
    provider.add_span_processor(SimpleSpanProcessor(collector))
    tracer = provider.get_tracer("child")
    held_roots: list[ReadableSpan] = []
    for n in range(100_000):
        with tracer.start_as_current_span(
            f"invoke_agent run-{n}", attributes={"gen_ai.operation.name": "invoke_agent"}
        ):
            for i in range(3):
                with tracer.start_as_current_span(f"step {i}"):
                    pass
        *children, root = collector.spans
        collector.spans.clear()
        batch = [*held_roots, *children]  # the previous run's root comes with this run's children
        held_roots = [root]
        request = encode_spans(batch)
        for _ in range(600):
            try:
                gateway.accept("Bearer ingress-kill", request)
                break
            except Overloaded as exc:
                time.sleep(min(exc.retry_after_s, 0.2))
        else:
            sys.exit(3)
        acked = [[f"{s.context.trace_id:032x}", f"{s.context.span_id:016x}"] for s in batch if s.context is not None]
        print(json.dumps({"acked": acked}), flush=True)


def wait(condition: Callable[[], bool]) -> None:
    for _ in range(3000):
        if condition():
            return
        time.sleep(0.01)
    sys.exit(4)


def late_span(gateway: Gateway, *, held: bool) -> None:
    """Trace X finishes, and its ingress-log segment is retired; then a span of X comes late (after its run was
    finished: it opens X's second run), in one request with a child of trace Y, whose root never comes, and (`held`)
    a retried copy of X's `step`, delivered in X's first run. Prints the two trace ids once X's second run is
    finished too (`held`: as soon as it is opened, held for the grace period before anything of it is sent), then
    waits to be killed."""
    gateway.start()
    wait(lambda: gateway.wait_ready(1))
    collector = Collector()
    provider = TracerProvider(resource=Resource.create({"service.name": "late-spans"}))
    provider.add_span_processor(SimpleSpanProcessor(collector))
    tracer = provider.get_tracer("child")
    root = tracer.start_span("invoke_agent x", attributes={"gen_ai.operation.name": "invoke_agent"})
    inside = trace_api.set_span_in_context(root)
    tracer.start_span("step", context=inside).end()
    step = collector.spans[-1]
    time.sleep(0.005)  # a later millisecond than X's first span: a run of its own if it ever opened one
    late = tracer.start_span("late tool", context=inside)
    root.end()
    gateway.accept("Bearer ingress-kill", encode_spans(collector.spans))
    collector.spans.clear()
    wait(lambda: gateway.stats()["log_segments_retired"] >= 1)  # X is done, its segment gone
    late.end()
    root_y = tracer.start_span("invoke_agent y")
    tracer.start_span("waits for y", context=trace_api.set_span_in_context(root_y)).end()
    gateway.accept("Bearer ingress-kill", encode_spans([*collector.spans, *([step] if held else [])]))
    # Acknowledged: the finished-traces file already carries X (the worker may not have taken the record yet).
    finished_file = gateway.settings.directory / FINISHED_FILE
    carried_at_ack = [trace for _, trace, _, _ in json.loads(finished_file.read_text(encoding="utf-8"))["runs"]]
    pipeline = lambda: gateway.stats()["pipelines"]["default.default"]  # noqa: E731
    wait(
        lambda: (
            pipeline()["runs_reopened_late"] == 1
            and pipeline()["spans_duplicate_ignored"] == (1 if held else 0)
            and (held or pipeline()["instances_finished"] == 2)
        )
    )
    x, y = root.get_span_context().trace_id, root_y.get_span_context().trace_id
    print(json.dumps({"x": f"{x:032x}", "y": f"{y:032x}", "carried_at_ack": carried_at_ack}), flush=True)
    time.sleep(600)


if __name__ == "__main__":
    main()
