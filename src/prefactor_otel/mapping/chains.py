"""The attribute chains: which attribute, of which convention, fills which typed field. Pure data.

A chain is a tuple of attribute names, first hit wins (A6 of the semantic-conventions design). Every attribute a
chain uses is "consumed" and does not appear again in `metadata`; so is a lower-priority attribute of the same
chain that holds the very same value (`gen_ai.system` next to an equal `gen_ai.provider.name`). An attribute with
a different value stays in `metadata`, so nothing is lost. A new convention is usually one name added to a chain
here (mapping/README.md); the builders in mapping/builders/ read the chains, never attribute names of their own.
No state: read by any thread.
"""

from __future__ import annotations

MODEL = (
    "gen_ai.request.model",
    "llm.request.model_name",
    "llm.model_name",
    "embedding.model_name",
    "langfuse.observation.model.name",
    "mlflow.llm.model",
    "langsmith.metadata.ls_model_name",
    "model_name",  # pydantic-ai agent run
    "ai.model.id",  # Vercel AI SDK (every span of a call; beside an equal gen_ai.request.model on model calls)
)
RESPONSE_MODEL = ("gen_ai.response.model", "llm.response.model_name", "ai.response.model")
RESPONSE_ID = ("gen_ai.response.id", "ai.response.id")
FINISH_REASONS = (
    "gen_ai.response.finish_reasons",
    "llm.finish_reason",
    "anthropic.message.stop_reason",
    "ai.response.finishReason",  # Vercel AI SDK: one reason, a string
)
# Messages in the OTel GenAI JSON shape (flattened families of other conventions: FAMILIES below).
SYSTEM_INSTRUCTIONS = ("gen_ai.system_instructions", "gen_ai.agent.system_prompt")  # the second: Strands agents
INPUT_MESSAGES = ("gen_ai.input.messages", "ai.prompt.messages")  # the second: Vercel AI SDK model calls
OUTPUT_MESSAGES = ("gen_ai.output.messages",)
# Google ADK's call_llm spans: the whole request (`contents` in Gemini's shape, `config.system_instruction`) and the
# whole response (`content`, `finish_reason`) as JSON.
ADK_LLM_REQUEST = ("gcp.vertex.agent.llm_request",)
ADK_LLM_RESPONSE = ("gcp.vertex.agent.llm_response",)
TOOL_DEFINITIONS = ("gen_ai.tool.definitions", "mlflow.chat.tools", "ai.prompt.tools")  # the AI SDK's: one JSON each
# Vercel AI SDK: what a call answered (model calls and the call's root span alike), the object of generateObject /
# streamObject, and its tool choice.
AI_RESPONSE_TEXT = ("ai.response.text",)
AI_RESPONSE_TOOL_CALLS = ("ai.response.toolCalls",)
AI_RESPONSE_REASONING = ("ai.response.reasoning",)
AI_RESPONSE_OBJECT = ("ai.response.object",)
AI_TOOL_CHOICE = ("ai.prompt.toolChoice",)
# Vercel AI SDK embeddings: the values embedded (`ai.values`: one JSON per value; `ai.value` on `ai.embed`) and the
# vectors (counted, not sent).
AI_EMBED_VALUES = ("ai.values", "ai.value")
AI_EMBED_VECTORS = ("ai.embeddings", "ai.embedding")
# A run's prompt and its answer, when a framework records them as one value each: the Vercel AI SDK's root span
# (`ai.prompt`: {system, prompt | messages}) and Mastra's agent run (`mastra.agent_run.input`: text or messages;
# `.output`: {text, object?, files}). builders/agent.py turns them into messages.
RUN_PROMPT = ("ai.prompt", "mastra.agent_run.input")
RUN_OUTPUT = ("mastra.agent_run.output",)
# Span events that carry a conversation (when it is not in attributes): the OTel GenAI details event holds the
# same JSON attributes as the span would; the older per-message events hold one message each (Strands:
# `content` is the JSON of its content blocks; `gen_ai.choice` holds the answer in `message`).
DETAILS_EVENT = "gen_ai.client.inference.operation.details"
MESSAGE_EVENTS = {
    "gen_ai.system.message": "system",
    "gen_ai.user.message": "user",
    "gen_ai.assistant.message": "assistant",
    "gen_ai.tool.message": "tool",
}
CHOICE_EVENT = "gen_ai.choice"
COMPLETION_START_TIME = ("langfuse.observation.completion_start_time", "mastra.completion_start_time")
EMBEDDING_DIMENSION = ("gen_ai.embeddings.dimension.count", "mastra.rag_embedding.dimensions")
PROVIDER = (
    "gen_ai.provider.name",
    "gen_ai.system",
    "llm.provider",
    "llm.system",
    "mlflow.llm.provider",
    "langsmith.metadata.ls_provider",
    "ai.model.provider",  # Vercel AI SDK: `openai.chat`, beside an equal gen_ai.system on model calls
)
# The Vercel AI SDK writes its own counts beside the gen_ai.* ones on model calls, and only its own on the root
# span: `inputTokens` (v5+), `promptTokens` (v4, and generateObject in v6), `tokens` (embeddings).
PROMPT_TOKENS = (
    "gen_ai.usage.input_tokens",
    "gen_ai.usage.prompt_tokens",
    "llm.token_count.prompt",
    "ai.usage.inputTokens",
    "ai.usage.promptTokens",
    "ai.usage.tokens",
)
COMPLETION_TOKENS = (
    "gen_ai.usage.output_tokens",
    "gen_ai.usage.completion_tokens",
    "llm.token_count.completion",
    "ai.usage.outputTokens",
    "ai.usage.completionTokens",
)
TOTAL_TOKENS = ("gen_ai.usage.total_tokens", "llm.usage.total_tokens", "llm.token_count.total", "ai.usage.totalTokens")
AGGREGATED_PROMPT = ("gen_ai.aggregated_usage.input_tokens",)
AGGREGATED_COMPLETION = ("gen_ai.aggregated_usage.output_tokens",)
CACHE_READ_TOKENS = (
    "gen_ai.usage.cache_read.input_tokens",
    "gen_ai.usage.cache_read_input_tokens",
    "llm.token_count.prompt_details.cache_read",
    "ai.usage.cachedInputTokens",
    "ai.usage.inputTokenDetails.cacheReadTokens",
)
CACHE_WRITE_TOKENS = (
    "gen_ai.usage.cache_creation.input_tokens",
    "gen_ai.usage.cache_creation_input_tokens",
    "llm.token_count.prompt_details.cache_write",
    "ai.usage.inputTokenDetails.cacheWriteTokens",
)
REASONING_TOKENS = (
    "gen_ai.usage.reasoning.output_tokens",
    "gen_ai.usage.reasoning_tokens",
    "llm.token_count.completion_details.reasoning",
    "ai.usage.reasoningTokens",
    "ai.usage.outputTokenDetails.reasoningTokens",
)
USAGE_JSON = ("langfuse.observation.usage_details", "mlflow.chat.tokenUsage")
SESSION = (
    "gen_ai.conversation.id",
    "session.id",
    "traceloop.association.properties.session_id",
    "langsmith.trace.session_id",
    "langfuse.session.id",
    "gcp.vertex.agent.session_id",
)
USER = ("user.id", "enduser.id", "traceloop.association.properties.user_id", "langfuse.user.id")
TAGS = ("tag.tags", "langfuse.trace.tags", "langsmith.span.tags")
GENERIC_INPUT = (
    "input.value",
    "traceloop.entity.input",
    "gen_ai.task.input",
    "gen_ai.prompt",  # LangSmith: JSON of the run's inputs
    "mlflow.spanInputs",
    "langfuse.observation.input",
    "ai.prompt",
    # Mastra (@mastra/otel-exporter) writes `mastra.<span type>.input` / `.output` on every span but model calls
    # and tools (those carry gen_ai.*)
    "mastra.agent_run.input",
    "mastra.workflow_run.input",
    "mastra.workflow_step.input",
    "mastra.model_step.input",
    "mastra.model_generation.input",
    "mastra.processor_run.input",
    "mastra.generic.input",
)
GENERIC_OUTPUT = (
    "output.value",
    "traceloop.entity.output",
    "gen_ai.task.output",
    "gen_ai.completion",  # LangSmith: JSON of the run's outputs
    "mlflow.spanOutputs",
    "langfuse.observation.output",
    "ai.response",
    "mastra.agent_run.output",
    "mastra.workflow_run.output",
    "mastra.workflow_step.output",
    "mastra.model_step.output",
    "mastra.model_generation.output",
    "mastra.model_chunk.output",
    "mastra.processor_run.output",
    "mastra.generic.output",
)
TOOL_NAME = ("gen_ai.tool.name", "tool.name", "traceloop.entity.name", "ai.toolCall.name")
TOOL_CALL_ID = ("gen_ai.tool.call.id", "tool_call.id", "ai.toolCall.id")
TOOL_ARGUMENTS = (
    "gen_ai.tool.call.arguments",
    "tool_arguments",  # pydantic-ai formats 1/2
    "gcp.vertex.agent.tool_call_args",
    "ai.toolCall.args",  # Vercel AI SDK
    *GENERIC_INPUT,
)
TOOL_RESULT = (
    "gen_ai.tool.call.result",
    "tool_response",
    "gcp.vertex.agent.tool_response",
    "anthropic.tool_result.content",  # the Anthropic SDK's own tool spans: the tool_result content blocks
    "ai.toolCall.result",  # Vercel AI SDK
    *GENERIC_OUTPUT,
)
TOOL_TYPE = ("gen_ai.tool.type",)
TOOL_DESCRIPTION = ("gen_ai.tool.description", "tool.description")
AGENT_NAME = (
    "gen_ai.agent.name",
    "agent.name",
    "agent_name",
    "traceloop.entity.name",
    "ai.telemetry.functionId",  # Vercel AI SDK: the name the app gives the call (`experimental_telemetry.functionId`)
)
# A span named after a method of its object (`weather_agent.run`, DSPy's `get_weather.__call__`) names the object:
# these suffixes are dropped when the name comes from the span name (sync and async entry points of the agent and
# tool frameworks; `.agent` / `.tool` are Traceloop's kinds).
AGENT_NAME_SUFFIXES = (
    ".agent",
    ".run",
    ".run_sync",
    ".run_async",
    ".arun",
    ".run_stream",
    ".invoke",
    ".ainvoke",
    ".stream",
    ".astream",
    ".__call__",
    ".acall",
    ".forward",
    ".aforward",
    ".kickoff",
    ".kickoff_async",
)
TOOL_NAME_SUFFIXES = (".tool", ".__call__", ".acall", ".call", ".run", ".arun", ".invoke", ".ainvoke", ".forward")
AGENT_ID = ("gen_ai.agent.id", "graph.node.id")
AGENT_DESCRIPTION = ("gen_ai.agent.description",)
AGENT_VERSION = ("gen_ai.agent.version",)
AGENT_CONVERSATION = ("pydantic_ai.all_messages",)  # the whole conversation of a run
AGENT_RESULT = ("final_result",)  # pydantic-ai: the run's final output
ENTITY_NAME = ("traceloop.entity.name",)
RETRIEVAL_DOCUMENTS = ("gen_ai.retrieval.documents",)
RETRIEVAL_QUERY = ("gen_ai.retrieval.query.text", "reranker.query")
RETRIEVAL_TOP_K = ("gen_ai.request.top_k", "reranker.top_k", "gen_ai.retrieval.top_k")
RERANKER_MODEL = ("reranker.model_name", "ai.model.id")
# Vercel AI SDK rerank: the documents (one JSON each) and, on `doRerank`, the ranking (`{index, relevanceScore}` each)
AI_RERANK_DOCUMENTS = ("ai.documents",)
AI_RANKING = ("ai.ranking",)
DATA_SOURCE_ID = ("gen_ai.data_source.id",)
# gen_ai.request.* -> params
REQUEST_PARAMS = (
    ("gen_ai.request.temperature", "temperature"),
    ("gen_ai.request.max_tokens", "max_tokens"),
    ("gen_ai.request.top_p", "top_p"),
    ("gen_ai.request.top_k", "top_k"),
    ("gen_ai.request.stop_sequences", "stop"),
    ("gen_ai.request.seed", "seed"),
    ("gen_ai.request.frequency_penalty", "frequency_penalty"),
    ("gen_ai.request.presence_penalty", "presence_penalty"),
    ("gen_ai.request.choice.count", "n"),
    ("gen_ai.request.encoding_formats", "encoding_formats"),
    ("gen_ai.request.reasoning_effort", "reasoning_effort"),
    ("gen_ai.is_streaming", "stream"),
    ("llm.is_streaming", "stream"),
    # Vercel AI SDK call settings: on the root span alone; on model calls beside the equal gen_ai.request.*
    ("ai.settings.maxOutputTokens", "max_tokens"),
    ("ai.settings.maxTokens", "max_tokens"),  # v4
    ("ai.settings.temperature", "temperature"),
    ("ai.settings.topP", "top_p"),
    ("ai.settings.topK", "top_k"),
    ("ai.settings.stopSequences", "stop"),
    ("ai.settings.seed", "seed"),
    ("ai.settings.frequencyPenalty", "frequency_penalty"),
    ("ai.settings.presencePenalty", "presence_penalty"),
)
INVOCATION_PARAMS = (
    "llm.invocation_parameters",
    "embedding.invocation_parameters",
    "langfuse.observation.model.parameters",
)
UNKNOWN_MODEL = "unknown"
# Request-body keys that are not parameters (they have their own fields).
NOT_PARAMS = frozenset({"model", "messages", "input", "tools", "functions", "prompt", "_type", "responses"})
TTFT_EVENTS = frozenset(
    {
        "First Token Stream Event",
        "gen_ai.content.completion.chunk",
        "llm.content.completion.chunk",
        "first_token",
        "ai.stream.firstChunk",  # Vercel AI SDK doStream spans
    }
)

# Flattened attribute families, grouped by index: prefix -> {index: {rest: value}}.
FAMILIES = (
    "llm.input_messages.",
    "llm.output_messages.",
    "gen_ai.prompt.",
    "gen_ai.completion.",
    "retrieval.documents.",
    "reranker.output_documents.",
    "reranker.input_documents.",
    "embedding.embeddings.",
    "llm.tools.",
    "llm.request.functions.",
    "llm.prompts.",
)
