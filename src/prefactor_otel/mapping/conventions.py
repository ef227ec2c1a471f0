"""Classify a span into a Prefactor span type. Pure functions, plus one bounded cache (attribute name -> the
convention it marks) that any mapping thread may read and fill without a lock (a race only repeats a lookup).

Priority list (the order Langfuse's server uses), first hit wins:

1. `langfuse.observation.type`      6. `gen_ai.operation.name`, then Mastra's `mastra.span.type`
2. `openinference.span.kind`        7. `llm.request.type` (Traceloop before 0.60), then the AI SDK's `ai.operationId`
3. `mlflow.spanType` (JSON string)  8. `gen_ai.tool.name` / `gen_ai.tool.call.id` present -> tool
4. `langsmith.span.kind`            9. a model attribute present -> llm (embedding for `embedding.*`)
5. `traceloop.span.kind`           10. span-name patterns, only on spans that carry some GenAI attribute

A span may carry two conventions at once (pydantic-ai plus the OpenInference span processor writes both
`gen_ai.*` and `openinference.*`): the higher one decides. Known mislabels, handled on purpose:

- LangSmith writes `gen_ai.operation.name=embeddings` on retriever runs: `langsmith.span.kind` (4) is checked first.
- Traceloop (>= 0.60) labels the root `{name}.workflow` span of *every* LangChain run `invoke_agent`, even a plain
  prompt | model | parser chain. The mapping sees one span at a time (it is pure and children end before their
  parents), so it cannot look for LLM/tool descendants; it decides from the span's own markers instead: a
  Traceloop workflow/task is a chain unless its own operation names something specific. `invoke_agent` on a
  workflow counts only when the workflow's own name says agent (the rule OpenInference's LangChain
  instrumentation applies to every run), so `weather_agent.workflow` is an agent and `RunnableSequence.workflow`
  a chain. A `vector_db_retrieve` / `chat` / `execute_tool` task keeps its specific type.
- Usage-recording spans: some frameworks record a model call's usage on a span of its own beside the call's real
  span, with `gen_ai.response.model` and `gen_ai.usage.*` only. Rule 9 would make it a second `otel:llm` and count
  the call's tokens twice; a span whose only model attribute is the response model and which carries usage but
  nothing the call was asked or answered (no messages, no request attributes, no operation) is a plain span
  (`prefactor.classified_by: usage record`), its usage marked aggregated (usage.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from prefactor_otel.mapping.values import parse_json_maybe

SPAN = "otel:span"
LLM = "otel:llm"
TOOL = "otel:tool"
AGENT = "otel:agent"
RETRIEVER = "otel:retriever"
EMBEDDING = "otel:embedding"
CHAIN = "otel:chain"

ALL_SCHEMAS = (SPAN, LLM, TOOL, AGENT, RETRIEVER, EMBEDDING, CHAIN)

# Convention names recorded in `metadata.convention`.
GEN_AI = "gen_ai"
OPENINFERENCE = "openinference"
TRACELOOP = "traceloop"
LANGFUSE = "langfuse"
MLFLOW = "mlflow"
LANGSMITH = "langsmith"
VERCEL_AI = "vercel_ai"
MASTRA = "mastra"

_LANGFUSE = {
    "generation": LLM,
    "embedding": EMBEDDING,
    "agent": AGENT,
    "tool": TOOL,
    "retriever": RETRIEVER,
    "chain": CHAIN,
    "evaluator": CHAIN,
    "guardrail": CHAIN,
    "span": SPAN,
    "event": SPAN,
}
_OPENINFERENCE = {
    "LLM": LLM,
    "EMBEDDING": EMBEDDING,
    "AGENT": AGENT,
    "TOOL": TOOL,
    "RETRIEVER": RETRIEVER,
    "RERANKER": RETRIEVER,  # a query in, ranked documents out: the retriever payload fits
    "CHAIN": CHAIN,
    "GUARDRAIL": CHAIN,
    "EVALUATOR": CHAIN,
    "PROMPT": CHAIN,
    "DECISION": CHAIN,
    "UNKNOWN": SPAN,
}
_MLFLOW = {
    "LLM": LLM,
    "CHAT_MODEL": LLM,
    "EMBEDDING": EMBEDDING,
    "AGENT": AGENT,
    "TOOL": TOOL,
    "RETRIEVER": RETRIEVER,
    "RERANKER": RETRIEVER,
    "CHAIN": CHAIN,
    "PARSER": CHAIN,
    "MEMORY": CHAIN,
    "WORKFLOW": CHAIN,
    "TASK": CHAIN,
    "GUARDRAIL": CHAIN,
    "EVALUATOR": CHAIN,
    "UNKNOWN": SPAN,
}
_LANGSMITH = {
    "llm": LLM,
    "tool": TOOL,
    "retriever": RETRIEVER,
    "embedding": EMBEDDING,
    "chain": CHAIN,
    "prompt": CHAIN,
    "parser": CHAIN,
}
_TRACELOOP = {"agent": AGENT, "tool": TOOL, "workflow": CHAIN, "task": CHAIN}
_OPERATIONS = {
    "chat": LLM,
    "text_completion": LLM,
    "generate_content": LLM,
    "completion": LLM,  # older conventions
    "generate": LLM,
    "embeddings": EMBEDDING,
    "embedding": EMBEDDING,
    "execute_tool": TOOL,
    "invoke_agent": AGENT,
    "create_agent": AGENT,
    "retrieval": RETRIEVER,
    "retrieve": RETRIEVER,
    "vector_db_retrieve": RETRIEVER,  # Traceloop LangChain retrievers
    "invoke_workflow": CHAIN,
    "execute_task": CHAIN,
    "plan": CHAIN,
    "handoff": CHAIN,
}
_LEGACY_REQUEST_TYPES = {"chat": LLM, "completion": LLM, "embedding": EMBEDDING, "rerank": CHAIN}
# The Vercel AI SDK's `ai.*` spans (`ai.operationId`). A generateText / streamText / generateObject / streamObject
# call is the app's agent run (AI SDK 7's own GenAI integration names it `invoke_agent`): its prompt, its answer,
# the usage of its model calls summed (aggregated, usage.py). An embed / embedMany call is the embedding the app
# asked for; its `doEmbed` child is the provider call (the root's usage repeats the child's: aggregated). A rerank
# is a reranker call (the retriever payload).
_VERCEL_OPERATIONS = {
    "ai.generateText": AGENT,
    "ai.streamText": AGENT,
    "ai.generateObject": AGENT,
    "ai.streamObject": AGENT,
    "ai.embed": EMBEDDING,
    "ai.embedMany": EMBEDDING,
    "ai.rerank": RETRIEVER,  # documents in, their ranking out (on `doRerank`, the provider call)
    "ai.rerank.doRerank": RETRIEVER,
    "ai.generateText.doGenerate": LLM,
    "ai.streamText.doStream": LLM,
    "ai.generateObject.doGenerate": LLM,
    "ai.streamObject.doStream": LLM,
    "ai.embed.doEmbed": EMBEDDING,
    "ai.embedMany.doEmbed": EMBEDDING,
    "ai.toolCall": TOOL,
}
# Mastra (@mastra/otel-exporter) names model calls `chat`, tools `execute_tool`, agent runs `invoke_agent` and
# workflow runs `invoke_workflow` in gen_ai.operation.name; the other span types are its own (`mastra.span.type`):
# an agent's model generation and each of its steps (`agent_step`) wrap the `chat` span that carries the call's
# model and usage, so they are steps, not model calls. Chunks of a stream and unknown types stay plain spans.
_MASTRA_SPAN_TYPES = {
    "model_generation": CHAIN,
    "model_step": CHAIN,
    "workflow_step": CHAIN,
    "workflow_conditional": CHAIN,
    "workflow_conditional_eval": CHAIN,
    "workflow_parallel": CHAIN,
    "workflow_loop": CHAIN,
    "workflow_sleep": CHAIN,
    "workflow_wait_event": CHAIN,
    "processor_run": CHAIN,
}
_MODEL_KEYS = ("gen_ai.request.model", "gen_ai.response.model", "llm.model_name", "llm.request.model_name")
_RESPONSE_MODEL = "gen_ai.response.model"
# A model call's own attributes: what it was asked, what it answered. A span with a response model and usage but
# none of these (and no operation, no request model) records the usage of a model call whose own span is beside it.
_MODEL_CALL_CONTENT_PREFIXES = (
    "gen_ai.input.",
    "gen_ai.output.",
    "gen_ai.prompt",
    "gen_ai.completion",
    "gen_ai.request.",
    "gen_ai.system_instructions",
    "gen_ai.response.finish_reasons",
    "llm.",
)
_USAGE_PREFIX = "gen_ai.usage."
USAGE_RECORD = "usage record"  # decided_by of a usage-recording span
_NAME_PREFIXES = (
    ("chat ", LLM),
    ("text_completion ", LLM),
    ("generate_content ", LLM),
    ("embeddings ", EMBEDDING),
    ("execute_tool ", TOOL),
    ("invoke_agent ", AGENT),
    ("retrieval ", RETRIEVER),
)
_NAME_EXACT = {"agent run": AGENT, "running tool": TOOL, "call_llm": LLM, "openai.embeddings": EMBEDDING}
_NAME_SUFFIXES = ((".chat", LLM), (".completion", LLM), (".embeddings", EMBEDDING), (".tool", TOOL), (".agent", AGENT))
# Attribute prefixes that mark a span as GenAI at all; span-name patterns are trusted only on such spans.
GENAI_KEY_PREFIXES = (
    "gen_ai.",
    "llm.",
    "openinference.",
    "traceloop.",
    "langsmith.",
    "langfuse.",
    "mlflow.",
    "embedding.",
    "retrieval.",
    "reranker.",
    "ai.operationId",
    "pydantic_ai.",
    "gcp.vertex.agent.",
)


def _is_usage_record(attributes: Mapping[str, object]) -> bool:
    """A span that only records a model call's usage (a response model and `gen_ai.usage.*`, nothing the call was
    asked or answered): typing it `otel:llm` would count the call's tokens twice, beside its real span."""
    has_usage = False
    for key in attributes:
        if key.startswith(_MODEL_CALL_CONTENT_PREFIXES):
            return False
        if key.startswith(_USAGE_PREFIX):
            has_usage = True
    return has_usage


def _is_langchain_agent_run(metadata: object, name: str) -> bool:
    """OpenInference's LangChain.js instrumentation labels a `createAgent` run CHAIN (the Python one says AGENT when
    the run's name says agent): the run whose name is the `lc_agent_name` LangChain puts in every span's metadata
    (its graph nodes have names of their own) is the agent's run."""
    if not isinstance(metadata, str) or '"lc_agent_name"' not in metadata:
        return False
    parsed = parse_json_maybe(metadata)
    return isinstance(parsed, dict) and parsed.get("lc_agent_name") == name


class Classification(NamedTuple):  # a NamedTuple: immutable like a frozen dataclass, several times cheaper to build
    schema_name: str
    convention: str | None  # which convention decided, None for the generic fallback
    operation: str | None
    decided_by: str | None = None  # the attribute (or "span.name") that decided


_PLAIN = Classification(SPAN, None, None, None)


def _mlflow_type(value: object) -> str | None:
    # MLflow JSON-encodes every attribute value, plain strings too: '"LLM"'.
    if isinstance(value, str):
        return value.strip().strip('"').upper()
    return None


def _name_pattern(name: str) -> str | None:
    for prefix, schema in _NAME_PREFIXES:
        if name.startswith(prefix):
            return schema
    exact = _NAME_EXACT.get(name)
    if exact is not None:
        return exact
    for suffix, schema in _NAME_SUFFIXES:
        if name.endswith(suffix):
            return schema
    return None


_PREFIX_CONVENTIONS = (
    ("gen_ai.", GEN_AI),
    ("traceloop.", TRACELOOP),
    ("langsmith.", LANGSMITH),
    ("langfuse.", LANGFUSE),
    ("mlflow.", MLFLOW),
    ("ai.", VERCEL_AI),
    ("pydantic_ai.", GEN_AI),
    ("gcp.vertex.agent.", GEN_AI),
)


def genai_attribute_convention(attributes: Mapping[str, object]) -> str | None:
    """The convention of the first GenAI-marked attribute, or None for a span without any."""
    if _PLAIN_NAMES.issuperset(attributes):
        return None  # every name already known to mark nothing (most spans): one C-level pass, no Python loop
    known = _KEY_CONVENTIONS
    for key in attributes:
        convention = known.get(key, _UNKNOWN)
        if convention is _UNKNOWN:
            convention = _key_convention(key)
        if convention is not None:
            return convention
    return None


def _key_convention(key: str) -> str | None:
    """The convention an attribute name marks, or None, remembered: attribute names repeat on every span of an
    instrumentation, and a dict lookup is a third of the prefix tests (most spans are not GenAI: every name of
    theirs is tested)."""
    convention: str | None = None
    if key.startswith(GENAI_KEY_PREFIXES):
        convention = OPENINFERENCE  # llm.*, embedding.*, retrieval.*, reranker.*, openinference.*
        for prefix, marked in _PREFIX_CONVENTIONS:
            if key.startswith(prefix):
                convention = marked
                break
    if len(_KEY_CONVENTIONS) >= _KEY_CONVENTIONS_LIMIT:
        _KEY_CONVENTIONS.clear()  # bounded: names with ids in them (flattened families) must not grow it
        _PLAIN_NAMES.clear()
    _KEY_CONVENTIONS[key] = convention
    if convention is None:
        _PLAIN_NAMES.add(key)
    return convention


_UNKNOWN = "?"  # not a convention name: the "not looked up yet" marker of _KEY_CONVENTIONS
_KEY_CONVENTIONS_LIMIT = 4096
# Attribute name -> the convention it marks (None: none). Shared by every thread that maps: a plain dict whose races
# can only repeat a computation (item assignment and clear() are atomic under the GIL).
_KEY_CONVENTIONS: dict[str, str | None] = {}
# The names of _KEY_CONVENTIONS that mark no convention, as a set (a span's names tested against it in C). Filled and
# cleared with it (so bounded by it), under the same rule: a race only repeats a lookup.
_PLAIN_NAMES: set[str] = set()


def _traceloop(attributes: Mapping[str, object], kind: str, operation: str | None) -> Classification:
    schema = _TRACELOOP[kind]
    if schema is CHAIN and operation is not None:
        specific = _OPERATIONS.get(operation)
        if specific is AGENT:
            # The mislabel: every LangChain root workflow says invoke_agent. Trust it only when the run's own
            # name says agent.
            name = attributes.get("traceloop.entity.name") or attributes.get("gen_ai.agent.name") or ""
            if "agent" in str(name).lower():
                return Classification(AGENT, TRACELOOP, operation, "traceloop.span.kind")
        elif specific is not None and specific is not CHAIN:
            return Classification(specific, GEN_AI, operation, "gen_ai.operation.name")
    # The operation reported is what the span is: "workflow" / "task" (an invoke_agent mislabel stays in metadata).
    return Classification(schema, TRACELOOP, kind if schema is CHAIN else operation or kind, "traceloop.span.kind")


def _agreeing(operation: str | None, schema: str, fallback: str) -> str:
    # `operation` reports the gen_ai operation only when it agrees with the type that was decided; a mislabel
    # (LangSmith's retriever "embeddings") gives way to the deciding convention's own kind and stays in metadata.
    if operation is not None and _OPERATIONS.get(operation) == schema:
        return operation
    return fallback


# What rule 6 decides for each known operation, built once (a NamedTuple costs a Python-level __new__ per build).
_BY_OPERATION = {
    operation: Classification(schema, GEN_AI, operation, "gen_ai.operation.name")
    for operation, schema in _OPERATIONS.items()
}


def classify(attributes: Mapping[str, object], name: str | None = None) -> Classification:
    """The span type of a span with these attributes (and, for the last-resort patterns, this name)."""
    if genai_attribute_convention(attributes) is None:
        return _PLAIN  # every rule below reads a GenAI-prefixed attribute: a span without one is plain
    raw_operation = attributes.get("gen_ai.operation.name")
    operation = raw_operation.strip().lower() if isinstance(raw_operation, str) else None
    if attributes.keys().isdisjoint(_KIND_NAMES):
        # None of the five conventions' span kinds there (OTel GenAI spans): five lookups in C (a dict's key view
        # walks the smaller side) instead of five in Python whose values would each be None (rules 1-5 below read
        # only those names, and skip a None).
        if operation is not None:
            known = _BY_OPERATION.get(operation)
            if known is not None:
                return known
        return _after_kinds(attributes, name, operation)

    value = attributes.get("langfuse.observation.type")
    if isinstance(value, str) and value.lower() in _LANGFUSE:
        schema = _LANGFUSE[value.lower()]
        return Classification(
            schema, LANGFUSE, _agreeing(operation, schema, value.lower()), "langfuse.observation.type"
        )
    value = attributes.get("openinference.span.kind")
    if isinstance(value, str) and value.upper() in _OPENINFERENCE:
        schema = _OPENINFERENCE[value.upper()]
        kind = value.lower()
        if schema is CHAIN and name and _is_langchain_agent_run(attributes.get("metadata"), name):
            return Classification(AGENT, OPENINFERENCE, "agent", "metadata.lc_agent_name")
        return Classification(schema, OPENINFERENCE, _agreeing(operation, schema, kind), "openinference.span.kind")
    mlflow = _mlflow_type(attributes.get("mlflow.spanType"))
    if mlflow in _MLFLOW:
        schema = _MLFLOW[mlflow]
        return Classification(schema, MLFLOW, _agreeing(operation, schema, mlflow.lower()), "mlflow.spanType")
    value = attributes.get("langsmith.span.kind")
    if isinstance(value, str) and value.lower() in _LANGSMITH:
        schema = _LANGSMITH[value.lower()]
        return Classification(schema, LANGSMITH, _agreeing(operation, schema, value.lower()), "langsmith.span.kind")
    value = attributes.get("traceloop.span.kind")
    if isinstance(value, str) and value.lower() in _TRACELOOP:
        return _traceloop(attributes, value.lower(), operation)
    return _after_kinds(attributes, name, operation)


# The span kinds classify's rules 1-5 read (Langfuse, OpenInference, MLflow, LangSmith, Traceloop).
_KIND_NAMES = frozenset(
    (
        "langfuse.observation.type",
        "openinference.span.kind",
        "mlflow.spanType",
        "langsmith.span.kind",
        "traceloop.span.kind",
    )
)


def _after_kinds(attributes: Mapping[str, object], name: str | None, operation: str | None) -> Classification:
    """classify's rules after the conventions' span kinds: the operation, then the other conventions' markers."""
    if operation is not None:
        known = _BY_OPERATION.get(operation)
        if known is not None:
            return known  # the OTel GenAI operations: one shared, immutable Classification each
        if "memory" in operation:
            return Classification(CHAIN, GEN_AI, operation, "gen_ai.operation.name")
        value = attributes.get("mastra.span.type")
        if isinstance(value, str) and value.lower() in _MASTRA_SPAN_TYPES:
            return Classification(_MASTRA_SPAN_TYPES[value.lower()], MASTRA, operation, "mastra.span.type")
    value = attributes.get("llm.request.type")
    if isinstance(value, str) and value.lower() in _LEGACY_REQUEST_TYPES:
        return Classification(_LEGACY_REQUEST_TYPES[value.lower()], TRACELOOP, value.lower(), "llm.request.type")
    value = attributes.get("ai.operationId")
    if isinstance(value, str) and value in _VERCEL_OPERATIONS:
        return Classification(_VERCEL_OPERATIONS[value], VERCEL_AI, value, "ai.operationId")
    if "gen_ai.tool.name" in attributes or "gen_ai.tool.call.id" in attributes:
        return Classification(TOOL, GEN_AI, operation, "gen_ai.tool.name")
    for key in _MODEL_KEYS:
        if key in attributes:
            if key == _RESPONSE_MODEL and _is_usage_record(attributes):
                return Classification(SPAN, GEN_AI, operation, USAGE_RECORD)
            return Classification(LLM, GEN_AI if key.startswith("gen_ai.") else OPENINFERENCE, operation, key)
    if "embedding.model_name" in attributes:
        return Classification(EMBEDDING, OPENINFERENCE, operation, "embedding.model_name")
    convention = genai_attribute_convention(attributes)
    if convention is not None:
        if name:
            by_name = _name_pattern(name)
            if by_name is not None:
                return Classification(by_name, convention, operation, "span.name")
        # Some convention, no type we know (gen_ai.operation.name=unknown, custom operations): a plain span
        # that still says which convention it came from.
        return Classification(SPAN, convention, operation, None)
    return Classification(SPAN, None, operation, None)
