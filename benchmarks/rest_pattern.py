"""What the per-span REST pattern of Prefactor's own Python SDK would send for the same spans.

The Python SDK opens and finishes every span with its own requests (prefactor-core over prefactor-http) and runs
each agent instance through register, start and finish:

    POST /api/v1/agent_instance/register         flat register body (+ update_current_version, idempotency_key)
    POST /api/v1/agent_instance/{id}/start       {"timestamp": null, "idempotency_key": "<uuid>"}
    POST /api/v1/agent_spans                     {"details": {agent_instance_id, schema_name, status: "active",
                                                  payload, started_at, parent_span_id?}}           one per span
    POST /api/v1/agent_spans/{id}/finish         {"status", "result_payload", "timestamp"}         one per span
    POST /api/v1/agent_instance/{id}/finish      {"status", "timestamp"}

The bodies are built from the very items PrefactorSpanExporter produces for these spans (captured through an
in-memory httpx transport, nothing on the network), so mapping and payloads are identical and only the request
pattern differs. Bodies are compact JSON, as httpx encodes `json=`. Where the SDK's optional fields are unclear
we leave them out, so the REST figures are if anything too small.
"""

from __future__ import annotations

import inspect
import json
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from typing import Any

import httpx
from opentelemetry.sdk.trace import ReadableSpan

from prefactor_otel import PrefactorSpanExporter
from prefactor_otel.model import ids


def _encode(body: dict[str, Any]) -> int:
    return len(json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode())


# The items as JSON: both patterns' bodies are compared uncompressed (a commit before request compression, which
# `run.py --ref` may measure, has no such option).
UNCOMPRESSED: dict[str, Any] = (
    {"compression": "none"} if "compression" in inspect.signature(PrefactorSpanExporter).parameters else {}
)


def captured_bulk_items(spans: Sequence[ReadableSpan], batch: int = 512) -> list[dict[str, Any]]:
    """The bulk items PrefactorSpanExporter sends for these spans, in order."""
    items: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent = json.loads(request.content)["items"]
        items.extend(sent)
        outputs = {item["idempotency_key"]: {"status": "success", "details": {"id": "x"}} for item in sent}
        return httpx.Response(200, json={"status": "success", "outputs": outputs})

    agent_id = ids.encode(int(time.time() * 1000), 4242, 1)
    exporter = PrefactorSpanExporter(
        api_url="http://127.0.0.1:9",
        api_token="pf_bench_token",
        agent_id=agent_id,
        finish_grace_seconds=0,
        spool=False,
        **UNCOMPRESSED,
        http_client=httpx.Client(transport=httpx.MockTransport(handler)),
    )
    for start in range(0, len(spans), batch):
        exporter.export(spans[start : start + batch])
    exporter.shutdown()
    return items


def per_span_rest(spans: Sequence[ReadableSpan]) -> dict[str, Any]:
    """Requests and body bytes of the per-span REST pattern for these spans, and of our bulk items' bodies."""
    requests: Counter[str] = Counter()
    body_bytes: Counter[str] = Counter()
    path_bytes = 0

    def add(kind: str, path: str, body: dict[str, Any]) -> None:
        nonlocal path_bytes
        requests[kind] += 1
        body_bytes[kind] += _encode(body)
        path_bytes += len(path)

    items = captured_bulk_items(spans)
    for item in items:
        action = item["_type"]
        if action == "agent_instances/register":
            body = {k: v for k, v in item.items() if k != "_type"}
            body.update(update_current_version=True, idempotency_key=str(uuid.uuid4()))
            add("register", "/api/v1/agent_instance/register", body)
        elif action == "agent_instances/start":
            path = f"/api/v1/agent_instance/{item['agent_instance_id']}/start"
            add("start", path, {"timestamp": None, "idempotency_key": str(uuid.uuid4())})
        elif action == "agent_instances/finish":
            path = f"/api/v1/agent_instance/{item['agent_instance_id']}/finish"
            add("finish_instance", path, {"status": item["status"], "timestamp": item["timestamp"]})
        elif action == "agent_spans/create":
            details = item["details"]
            create = {
                key: details[key]
                for key in ("agent_instance_id", "schema_name", "payload", "started_at", "parent_span_id")
                if key in details
            }
            create["status"] = "active"
            add("create_span", "/api/v1/agent_spans", {"details": create})
            finish = {
                "status": details["status"],
                "result_payload": details["result_payload"],
                "timestamp": details["finished_at"],
            }
            add("finish_span", f"/api/v1/agent_spans/{details['id']}/finish", finish)
        else:
            raise ValueError(f"unexpected bulk action {action!r}")
    bulk_item_bytes = sum(_encode(item) for item in items)
    return {
        "spans": len(spans),
        "bulk_items": len(items),
        "bulk_item_bytes": bulk_item_bytes,
        "requests": dict(requests),
        "body_bytes": dict(body_bytes),
        "total_requests": sum(requests.values()),
        "total_body_bytes": sum(body_bytes.values()),
        "path_bytes": path_bytes,
    }
