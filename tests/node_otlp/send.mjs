// Sends a small agent trace with the real OpenTelemetry JS OTLP exporters, and prints what the SDK recorded.
//
//   node send.mjs --url http://127.0.0.1:4318/v1/traces --protocol json|protobuf
//                 [--header "Authorization=Bearer t"]... [--compression gzip|none] [--service name]
//                 [--traces N]
//
// The trace (N of them, each with trace ids of its own: 1 unless --traces says): a root `invoke_agent support` span (linked to a remote span context) with an event, a `chat gpt-4o`
// LLM span with gen_ai.* attributes and token counts, an `execute_tool lookup` span, and a `execute_tool broken`
// span that ends in ERROR with an exception event. The spans go to a BatchSpanProcessor with the OTLP exporter of
// the protocol asked for, and to an InMemorySpanExporter beside it. The last line of stdout is one JSON object:
// {"ok", "node_version", "results": [each OTLP export's result], "spans": [what the SDK recorded]}.
// Exit code 0 once every export has been answered (whatever the answer); 1 on an error of the script itself.
import { SpanKind, SpanStatusCode, context, diag, DiagLogLevel, trace } from "@opentelemetry/api";
import { OTLPTraceExporter as JsonExporter } from "@opentelemetry/exporter-trace-otlp-http";
import { OTLPTraceExporter as ProtoExporter } from "@opentelemetry/exporter-trace-otlp-proto";
import { resourceFromAttributes } from "@opentelemetry/resources";
import {
  BatchSpanProcessor,
  InMemorySpanExporter,
  SimpleSpanProcessor,
  TracerProvider,
} from "@opentelemetry/sdk-trace";

function parseArgs(argv) {
  const options = { headers: {}, compression: "none", service: "node-agent", protocol: "json", traces: 1 };
  for (let i = 0; i < argv.length; i += 2) {
    const [flag, value] = [argv[i], argv[i + 1]];
    if (value === undefined) throw new Error(`${flag} needs a value`);
    if (flag === "--url") options.url = value;
    else if (flag === "--protocol") options.protocol = value;
    else if (flag === "--compression") options.compression = value;
    else if (flag === "--service") options.service = value;
    else if (flag === "--traces") options.traces = Number(value);
    else if (flag === "--header") {
      const at = value.indexOf("=");
      options.headers[value.slice(0, at)] = value.slice(at + 1);
    } else throw new Error(`unknown argument ${flag}`);
  }
  if (!options.url) throw new Error("--url is required");
  if (!["json", "protobuf"].includes(options.protocol)) throw new Error("--protocol is json or protobuf");
  if (!Number.isInteger(options.traces) || options.traces < 1 || options.traces > 1000) {
    throw new Error("--traces is a whole number from 1 to 1000");
  }
  return options;
}

const ns = (hrTime) => (BigInt(hrTime[0]) * 1_000_000_000n + BigInt(hrTime[1])).toString();

function recorded(span) {
  const ctx = span.spanContext();
  return {
    name: span.name,
    kind: span.kind,
    trace_id: ctx.traceId,
    span_id: ctx.spanId,
    trace_state: ctx.traceState ? ctx.traceState.serialize() : "",
    parent_span_id: span.parentSpanContext ? span.parentSpanContext.spanId : null,
    parent_is_remote: span.parentSpanContext ? Boolean(span.parentSpanContext.isRemote) : null,
    start_time: ns(span.startTime),
    end_time: ns(span.endTime),
    status: { code: span.status.code, message: span.status.message ?? null },
    attributes: span.attributes,
    events: span.events.map((e) => ({ name: e.name, time: ns(e.time), attributes: e.attributes ?? {} })),
    links: span.links.map((l) => ({
      trace_id: l.context.traceId,
      span_id: l.context.spanId,
      is_remote: Boolean(l.context.isRemote),
      attributes: l.attributes ?? {},
    })),
    dropped: [span.droppedAttributesCount, span.droppedEventsCount, span.droppedLinksCount],
    scope: { name: span.instrumentationScope.name, version: span.instrumentationScope.version ?? null },
    resource: span.resource.attributes,
  };
}

async function main() {
  const options = parseArgs(process.argv.slice(2));
  const errors = [];
  diag.setLogger(
    { error: (...a) => errors.push(a.join(" ")), warn: () => {}, info: () => {}, debug: () => {}, verbose: () => {} },
    DiagLogLevel.ERROR,
  );
  const Exporter = options.protocol === "json" ? JsonExporter : ProtoExporter;
  const otlp = new Exporter({
    url: options.url,
    headers: options.headers,
    compression: options.compression,
    timeoutMillis: 20_000,
  });
  const results = [];
  const answering = {
    export(spans, done) {
      otlp.export(spans, (result) => {
        results.push({ code: result.code, spans: spans.length, error: result.error ? String(result.error) : null });
        done(result);
      });
    },
    shutdown: () => otlp.shutdown(),
    forceFlush: () => otlp.forceFlush(),
  };
  const memory = new InMemorySpanExporter();
  const provider = new TracerProvider({
    resource: resourceFromAttributes({ "service.name": options.service, "service.version": "4.5.6" }),
    spanProcessors: [
      new SimpleSpanProcessor({ exporter: memory }),
      new BatchSpanProcessor({ exporter: answering, scheduledDelayMillis: 60_000, maxExportBatchSize: 512 }),
    ],
  });
  const tracer = provider.getTracer("tests.node.agent", "0.3.0");

  for (let n = 0; n < options.traces; n += 1) {
    const remote = { traceId: "4bf92f3577b34da6a3ce929d0e0e4736", spanId: "00f067aa0ba902b7", traceFlags: 1, isRemote: true };
    const root = tracer.startSpan("invoke_agent support", {
      kind: SpanKind.SERVER,
      attributes: { "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "support", "app.tags": ["a", "b"] },
      links: [{ context: remote, attributes: { "link.reason": "follows the request" } }],
    });
    root.addEvent("agent.started", { "agent.step": 1 });
    const inRoot = trace.setSpan(context.active(), root);

    const chat = tracer.startSpan(
      "chat gpt-4o",
      {
        kind: SpanKind.CLIENT,
        attributes: {
          "gen_ai.operation.name": "chat",
          "gen_ai.request.model": "gpt-4o",
          "gen_ai.usage.input_tokens": 12,
          "gen_ai.usage.output_tokens": 5,
          "gen_ai.request.temperature": 0.25,
          "gen_ai.input.messages": JSON.stringify([{ role: "user", parts: [{ type: "text", content: "hi" }] }]),
          "gen_ai.output.messages": JSON.stringify([
            { role: "assistant", parts: [{ type: "text", content: "hello" }], finish_reason: "stop" },
          ]),
        },
      },
      inRoot,
    );
    chat.end();

    const tool = tracer.startSpan(
      "execute_tool lookup",
      { attributes: { "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "lookup" } },
      inRoot,
    );
    tool.end();

    const broken = tracer.startSpan(
      "execute_tool broken",
      { attributes: { "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "broken" } },
      inRoot,
    );
    broken.recordException(new TypeError("tool exploded"));
    broken.setStatus({ code: SpanStatusCode.ERROR, message: "tool exploded" });
    broken.end();

    root.setStatus({ code: SpanStatusCode.OK });
    root.end();
  }

  await provider.forceFlush();
  const spans = memory.getFinishedSpans().map(recorded);
  await provider.shutdown();
  console.log(JSON.stringify({ ok: true, node_version: process.version, results, errors, spans }));
}

main().catch((error) => {
  console.log(JSON.stringify({ ok: false, node_version: process.version, error: String(error && error.stack) }));
  process.exit(1);
});
