// Drives Prefactor's official Node client (@prefactor/core, pinned in package.json) against a local server and
// prints one JSON report of what the client saw on stdout. Run by tests/test_conformance_node_client.py:
//
//   node driver.mjs <scenario>
//
// with PREFACTOR_API_URL, PREFACTOR_API_TOKEN, PREFACTOR_AGENT_ID set (DevServer.env()). The client's own logs
// (console.*) are captured into the report and echoed to stderr, so stdout holds only the report. Every HTTP
// exchange the client makes is recorded by wrapping the global fetch it calls (the answers pass through unchanged).
// The token is never written to the report.
import { format } from 'node:util';
import {
  AgentInstanceClient,
  AgentSpanClient,
  createConfig,
  createCore,
  HttpClient,
  HttpClientError,
  HttpTransportConfigSchema,
  SpanType,
  withSpan,
} from '@prefactor/core';

const API_URL = process.env.PREFACTOR_API_URL;
const API_TOKEN = process.env.PREFACTOR_API_TOKEN;
const AGENT_ID = process.env.PREFACTOR_AGENT_ID;
// Bounds the polls below; the test's subprocess timeout is the outer safety limit.
const POLL_LIMIT = 2000;
const POLL_INTERVAL_MS = 10;

// The span types the driver's spans use, with schemas describing the payload envelope the client's
// HttpTransport sends (transformSpanToApiFormat) and the results it finishes with (buildSpanResultPayload).
const ENVELOPE = {
  type: 'object',
  properties: {
    span_id: { type: 'string' },
    trace_id: { type: 'string' },
    name: { type: 'string' },
    status: { type: 'string' },
    inputs: { type: 'object' },
    metadata: { type: 'object' },
    token_usage: { type: ['object', 'null'] },
    error: { type: ['object', 'null'] },
  },
  required: ['span_id', 'trace_id', 'name', 'status', 'inputs'],
};
const AGENT_SCHEMA = {
  external_identifier: 'node-conformance-schemas-1',
  span_type_schemas: [
    { name: SpanType.AGENT, title: 'Agent run', params_schema: ENVELOPE, result_schema: { type: 'object' } },
    {
      name: SpanType.LLM,
      title: 'LLM call',
      params_schema: ENVELOPE,
      result_schema: { type: 'object', properties: { response: { type: 'string' } } },
    },
    { name: SpanType.TOOL, title: 'Tool call', params_schema: ENVELOPE, result_schema: { type: 'object' } },
  ],
};

const report = { scenario: process.argv[2], requests: [], logs: [] };

// ------------------------------------------------------------------ observation (no behaviour changed)

const realFetch = globalThis.fetch;
globalThis.fetch = async (url, init = {}) => {
  const entry = { method: init.method ?? 'GET', path: new URL(url).pathname };
  report.requests.push(entry);
  try {
    const response = await realFetch(url, init);
    entry.status = response.status;
    return response;
  } catch (error) {
    entry.error = error?.cause?.code ?? error?.name ?? String(error);
    throw error;
  }
};

for (const level of ['debug', 'info', 'log', 'warn', 'error']) {
  console[level] = (...args) => {
    const text = format(...args);
    report.logs.push({ level, text });
    process.stderr.write(`[${level}] ${text}\n`);
  };
}

// ------------------------------------------------------------------ helpers

function httpConfig(overrides = {}) {
  // The client's own schema fills in its defaults; no retries unless a scenario asks for them.
  return HttpTransportConfigSchema.parse({ apiUrl: API_URL, apiToken: API_TOKEN, maxRetries: 0, ...overrides });
}

// What a rejected call looked like to the caller: the client's HttpClientError fields.
function describeError(error) {
  if (error instanceof HttpClientError) {
    return {
      name: error.name,
      status: error.status ?? null,
      code: error.responseBody?.code ?? null,
      message: error.message,
      retryable: error.retryable,
    };
  }
  return { name: error?.name ?? 'unknown', message: String(error?.message ?? error) };
}

async function outcome(call) {
  try {
    return { ok: true, value: await call() };
  } catch (error) {
    return { ok: false, error: describeError(error) };
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function pollUntil(read, done) {
  for (let attempt = 0; attempt < POLL_LIMIT; attempt += 1) {
    const value = await read();
    if (done(value)) {
      return value;
    }
    await sleep(POLL_INTERVAL_MS);
  }
  throw new Error('poll limit reached');
}

// Waits until the one run is active on the server with one active span (the agent span); returns the run's id.
async function activeAgentSpan(http) {
  const page = await pollUntil(
    () => http.request(`/api/v1/agent_instance?agent_id=${AGENT_ID}`),
    ({ summaries }) =>
      summaries.length === 1 && summaries[0].status === 'active' && summaries[0].span_counts.active === 1,
  );
  return page.summaries[0].id;
}

// The local server's operator action (what Prefactor's UI does); not part of the client's API.
function terminate(http, agentInstanceId, reason) {
  return http.request('/_dev/terminate', { method: 'POST', body: { agent_instance_id: agentInstanceId, reason } });
}

function registerPayload(extra = {}) {
  return {
    agent_id: AGENT_ID,
    agent_version: { external_identifier: 'node-1.0.0', name: 'node-conformance', description: 'driver.mjs' },
    agent_schema_version: AGENT_SCHEMA,
    ...extra,
  };
}

function spanDetails(agentInstanceId, schemaName, status, extra = {}) {
  const now = new Date().toISOString();
  return {
    agent_instance_id: agentInstanceId,
    schema_name: schemaName,
    status,
    payload: { span_id: 'client-span', trace_id: 'client-trace', name: schemaName, status, inputs: {} },
    parent_span_id: null,
    started_at: now,
    finished_at: status === 'active' ? null : now,
    ...extra,
  };
}

// ------------------------------------------------------------------ scenarios

// The documented flow: createCore with an HttpTransport, a schema registered through the AgentInstanceManager,
// nested spans through withSpan (AsyncLocalStorage context), a failing span, token usage, finish and shutdown.
async function coreFlow() {
  const core = createCore(
    createConfig({
      httpConfig: {
        apiUrl: API_URL,
        apiToken: API_TOKEN,
        agentId: AGENT_ID,
        agentIdentifier: 'node-1.0.0',
        agentName: 'node-conformance',
        maxRetries: 0,
      },
    }),
  );
  core.agentManager.registerSchema(AGENT_SCHEMA);
  core.agentManager.startInstance();
  const { tracer } = core;
  const http = new HttpClient(httpConfig());
  await withSpan(tracer, { name: 'support-agent', spanType: SpanType.AGENT, inputs: { question: 'q' } }, async () => {
    // The agent span is created when it starts but sent by the transport's queue after the register and start:
    // wait until the server holds it active, so that its finish (not a create already complete) ends it.
    await activeAgentSpan(http);
    await withSpan(tracer, { name: 'plan', spanType: SpanType.LLM, inputs: { prompt: 'p' } }, async () => {
      await withSpan(tracer, { name: 'lookup', spanType: SpanType.TOOL, inputs: { q: 1 } }, async () => ({
        hits: 2,
      }));
      return { response: 'planned' };
    });
    report.thrown = await outcome(() =>
      withSpan(tracer, { name: 'broken-tool', spanType: SpanType.TOOL, inputs: {} }, async () => {
        throw new TypeError('tool exploded');
      }),
    );
    const chat = tracer.startSpan({ name: 'chat', spanType: SpanType.LLM, inputs: { prompt: 'hi' } });
    tracer.endSpan(chat, {
      outputs: { response: 'hello' },
      tokenUsage: { promptTokens: 3, completionTokens: 4, totalTokens: 7 },
    });
    return { answer: 'done' };
  });
  core.agentManager.finishInstance();
  await core.shutdown(); // drains the transport's queue
}

// Every call of the client's public HTTP classes: AgentInstanceClient and AgentSpanClient, with the options their
// types declare (timestamps, idempotency keys, statuses, result payloads), and the errors they raise.
async function httpClients() {
  const http = new HttpClient(httpConfig());
  const instances = new AgentInstanceClient(http);
  const spans = new AgentSpanClient(http);
  const seen = {};

  const registered = await instances.register(registerPayload({ idempotency_key: 'node-register-0001' }));
  const replayed = await instances.register(registerPayload({ idempotency_key: 'node-register-0001' }));
  const id = registered.details.id;
  seen.register = { id, status: registered.details.status, replayed_id: replayed.details.id };
  const startedAt = new Date(Date.now() - 1000).toISOString();
  const started = await instances.start(id, { timestamp: startedAt, idempotency_key: 'node-start-0001' });
  seen.start = { status: started.details.status, started_at: started.details.started_at, sent: startedAt };

  const parentCreate = {
    details: spanDetails(id, SpanType.AGENT, 'active'),
    idempotency_key: 'node-span-0001', // beside `details`, where the client's AgentSpanCreatePayload puts it
  };
  const parent = await spans.create(parentCreate);
  const parentId = parent.details.id;
  const child = await spans.create({
    details: spanDetails(id, SpanType.TOOL, 'complete', { parent_span_id: parentId, result_payload: { ok: true } }),
  });
  seen.create_replayed_id = (await spans.create(parentCreate)).details.id;
  seen.create_key_reused = await outcome(() =>
    spans.create({ details: spanDetails(id, SpanType.TOOL, 'active'), idempotency_key: 'node-span-0001' }),
  );
  seen.create = {
    parent_id: parentId,
    parent_status: parent.details.status,
    parent_started_at: parent.details.started_at,
    child_parent_span_id: child.details.parent_span_id,
    child_status: child.details.status,
  };
  const finishedAt = new Date().toISOString();
  seen.finish_span = await outcome(() =>
    spans.finish(parentId, finishedAt, {
      status: 'complete',
      result_payload: { answer: 42 },
      idempotency_key: 'node-span-finish-0001',
    }),
  );
  // The client swallows a 409 `invalid_action` on finish as "already finished" (isAlreadyFinishedError).
  seen.finish_span_again = await outcome(() =>
    spans.finish(parentId, new Date().toISOString(), { status: 'complete' }),
  );
  const [unknownSpan, unknownInstance] = (
    await http.request('/api/v1/pfid/generate', { method: 'POST', body: { count: 2 } })
  ).details.pfids;
  seen.finish_unknown_span = await outcome(() => spans.finish(unknownSpan, finishedAt));
  seen.create_unregistered_type = await outcome(() =>
    spans.create({ details: spanDetails(id, 'agent:nope', 'active') }),
  );
  seen.finish = await outcome(async () => {
    const finished = await instances.finish(id, { status: 'failed', idempotency_key: 'node-finish-0001' });
    return { status: finished.details.status, finished_at: finished.details.finished_at };
  });
  seen.finish_again = await outcome(() => instances.finish(id));
  seen.start_unknown = await outcome(() => instances.start(unknownInstance));

  // A second run, never started, cancelled.
  const pending = await instances.register(registerPayload());
  seen.cancel = await outcome(
    async () => (await instances.finish(pending.details.id, { status: 'cancelled' })).details.status,
  );

  const badToken = new HttpClient(httpConfig({ apiToken: 'not-the-token' }));
  seen.bad_token = await outcome(() => new AgentInstanceClient(badToken).register(registerPayload()));
  report.seen = seen;
}

// The client's retry policy (429 and 5xx, network errors) against the server's injected faults.
async function retries() {
  const http = new HttpClient(httpConfig({ maxRetries: 3, initialRetryDelay: 1, maxRetryDelay: 5 }));
  const instances = new AgentInstanceClient(http);
  const seen = {};
  const addFault = (fault) => http.request('/_dev/faults', { method: 'POST', body: fault });
  await addFault({ path: '/api/v1/agent_instance/register', status: 503, times: 1 });
  await addFault({ path: '/api/v1/agent_instance/register', status: 429, retry_after: '0', times: 1 });
  seen.register = await outcome(async () => (await instances.register(registerPayload())).details.id);
  const id = seen.register.value;
  await addFault({ path: `/api/v1/agent_instance/${id}/start`, drop_connection: true, times: 1 });
  seen.start = await outcome(async () => (await instances.start(id)).details.status);
  await addFault({ path: `/api/v1/agent_instance/${id}/finish`, status: 500, times: -1 });
  seen.finish = await outcome(() => instances.finish(id));
  await http.request('/_dev/faults', { method: 'DELETE' });
  report.seen = seen;
}

// Termination on the paths the client has: the span create answer (AgentSpanClient.create returns the whole
// body), the span finish (returns nothing), a read of the run through the client's generic HttpClient.request,
// and the instance finish.
async function termination() {
  const http = new HttpClient(httpConfig());
  const instances = new AgentInstanceClient(http);
  const spans = new AgentSpanClient(http);
  const seen = {};
  const id = (await instances.register(registerPayload())).details.id;
  await instances.start(id);
  const open = await spans.create({ details: spanDetails(id, SpanType.AGENT, 'active') });
  seen.terminate = (await terminate(http, id, 'budget exceeded')).details.status;
  const created = await spans.create({ details: spanDetails(id, SpanType.TOOL, 'complete') });
  seen.create = { status: created.status, span_status: created.details.status, control: created.control ?? null };
  seen.finish_span = await outcome(() =>
    spans.finish(open.details.id, new Date().toISOString(), { status: 'complete' }),
  );
  const read = await http.request(`/api/v1/agent_instance/${id}`);
  seen.read = { status: read.details.status, termination_reason: read.details.termination_reason };
  seen.finish = await outcome(() => instances.finish(id));
  report.seen = seen;
}

// The documented flow when an operator terminates the run half-way: the client's HttpTransport carries on.
async function coreFlowTerminated() {
  const http = new HttpClient(httpConfig());
  const core = createCore(
    createConfig({
      httpConfig: { apiUrl: API_URL, apiToken: API_TOKEN, agentId: AGENT_ID, agentSchema: AGENT_SCHEMA, maxRetries: 0 },
    }),
  );
  const { tracer } = core;
  core.agentManager.startInstance();
  await withSpan(tracer, { name: 'support-agent', spanType: SpanType.AGENT, inputs: {} }, async () => {
    // The start and the agent span are queued in the transport: wait until the run is active on the server.
    report.instance_id = await activeAgentSpan(http);
    await terminate(http, report.instance_id, 'stopped by operator');
    await withSpan(tracer, { name: 'late-tool', spanType: SpanType.TOOL, inputs: {} }, async () => ({ ok: true }));
    return {};
  });
  core.agentManager.finishInstance();
  await core.shutdown();
}

// A short run, as most are: the whole span tree ends before the transport's queue has sent anything, so the agent
// span's create already carries its final state and its queued finish meets a finished span (the client swallows
// that 409 `invalid_action` as "already finished").
async function coreFlowShortRun() {
  const core = createCore(
    createConfig({
      httpConfig: { apiUrl: API_URL, apiToken: API_TOKEN, agentId: AGENT_ID, agentSchema: AGENT_SCHEMA, maxRetries: 0 },
    }),
  );
  const { tracer } = core;
  core.agentManager.startInstance();
  await withSpan(tracer, { name: 'quick-agent', spanType: SpanType.AGENT, inputs: { q: 'x' } }, async () => {
    await withSpan(tracer, { name: 'quick-tool', spanType: SpanType.TOOL, inputs: {} }, async () => ({ ok: true }));
    return { answer: 'quick' };
  });
  core.agentManager.finishInstance();
  await core.shutdown();
}

// Spans without any schema and without startInstance (the README's manual-instrumentation shape): the transport
// registers without `agent_schema_version`, which the Python client's RegisterAgentInstanceRequest requires.
async function noSchema() {
  const core = createCore(
    createConfig({ httpConfig: { apiUrl: API_URL, apiToken: API_TOKEN, agentId: AGENT_ID, maxRetries: 0 } }),
  );
  await withSpan(core.tracer, { name: 'lonely-tool', spanType: SpanType.TOOL, inputs: {} }, async () => ({}));
  await core.shutdown();
}

const SCENARIOS = {
  core_flow: coreFlow,
  http_clients: httpClients,
  retries,
  termination,
  core_flow_terminated: coreFlowTerminated,
  core_flow_short_run: coreFlowShortRun,
  no_schema: noSchema,
};

async function main() {
  const scenario = SCENARIOS[report.scenario];
  if (!scenario || !API_URL || !API_TOKEN || !AGENT_ID) {
    const names = Object.keys(SCENARIOS).join('|');
    const env = 'PREFACTOR_API_URL=... PREFACTOR_API_TOKEN=... PREFACTOR_AGENT_ID=...';
    process.stderr.write(`usage: ${env} node driver.mjs <${names}>\n`);
    process.exitCode = 2;
    return;
  }
  report.node_version = process.version;
  try {
    await scenario();
    report.ok = true;
  } catch (error) {
    report.ok = false;
    report.error = { ...describeError(error), stack: error?.stack ?? null };
  }
  process.stdout.write(`${JSON.stringify(report)}\n`);
}

await main();
