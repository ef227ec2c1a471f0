"""The dev server judged by Prefactor's own Python clients: `prefactor-http` 0.4.3 and `prefactor-core` 0.5.3.

Every endpoint the official HTTP client offers is driven against a DevServer on 127.0.0.1, and `prefactor-core`'s
documented flow (queued start, span context managers, queued finishes) runs end to end. An answer the official
client cannot parse raises `PrefactorResponseContractError` here, exactly as it would in a user's program.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from typing import Any, TypeVar

import pytest
from prefactor_core import PrefactorCoreClient, PrefactorCoreConfig, QueueConfig, SchemaRegistry
from prefactor_core.monitoring.termination_monitor import TerminationMonitor
from prefactor_http import HttpClientConfig, PrefactorHttpClient
from prefactor_http.exceptions import PrefactorApiError, PrefactorNotFoundError
from prefactor_http.models import AgentInstance, AgentSpan, BulkItem, BulkRequest
from prefactor_http.models.base import ListResponse

from prefactor_otel.devserver import DevServer, Fault

T = TypeVar("T")
# Only a safety limit against a hang; no test asserts anything about time.
SAFETY_LIMIT_S = 60.0

SPAN_TYPES = [
    {
        "name": "agent:llm",
        "title": "LLM Call",
        "params_schema": {
            "type": "object",
            "properties": {"model": {"type": "string"}, "prompt": {"type": "string"}},
            "required": ["model", "prompt"],
        },
        "result_schema": {"type": "object", "properties": {"response": {"type": "string"}}},
    },
    {"name": "agent:tool", "params_schema": {"type": "object"}},
]
QUALITY_SCHEMAS = [
    {
        "name": "helpfulness",
        "schema": {"type": "object", "properties": {"score": {"type": "number"}}, "required": ["score"]},
        "title": "Helpfulness",
        "template": "score {{score}}",
    }
]


def run(make: Callable[[], Awaitable[T]]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(make(), SAFETY_LIMIT_S)

    return asyncio.run(bounded())


async def until(condition: Callable[[], bool]) -> None:
    # Bounded by run()'s safety limit; yields to the client's own tasks between checks.
    while not condition():
        await asyncio.sleep(0.01)


def http_config(srv: DevServer) -> HttpClientConfig:
    return HttpClientConfig(api_url=srv.url, api_token=srv.token, max_retries=0, request_timeout=10.0)


@asynccontextmanager
async def http_client(srv: DevServer) -> AsyncIterator[PrefactorHttpClient]:
    async with PrefactorHttpClient(http_config(srv)) as client:
        yield client


async def register(client: PrefactorHttpClient, srv: DevServer, **extra: Any) -> AgentInstance:
    return await client.agent_instances.register(
        agent_id=srv.agent_id,
        environment_id=srv.environment_id,
        agent_version={"name": "conformance", "external_identifier": "1.0.0"},
        agent_schema_version={
            "external_identifier": "schemas-1",
            "span_type_schemas": SPAN_TYPES,
            "quality_schemas": QUALITY_SCHEMAS,
        },
        purpose="smoke_test",
        **{"idempotency_key": "register-0001", **extra},
    )


@pytest.fixture
def srv() -> DevServer:
    with DevServer() as server:
        yield server


# --------------------------------------------------------------------------- prefactor-http


def test_ping_and_pfid_generate(srv: DevServer) -> None:
    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        async with http_client(srv) as client:
            # pfid generation has no typed method in 0.4.3; the client's generic request is how users call it.
            return await client.validate_token(), await client.request(
                "POST", "/api/v1/pfid/generate", json_data={"count": 3}
            )

    ping, pfids = run(scenario)
    assert ping["status"] == "success"
    assert len(pfids["details"]["pfids"]) == 3


def test_instance_lifecycle_register_get_start_finish(srv: DevServer) -> None:
    async def scenario() -> list[AgentInstance]:
        async with http_client(srv) as client:
            registered = await register(client, srv, external_identifier="run-1")
            fetched = await client.agent_instances.get(registered.id)
            started = await client.agent_instances.start(registered.id, idempotency_key="start-0001")
            finished = await client.agent_instances.finish(registered.id, status="failed", idempotency_key="fin-0001")
            with pytest.raises(PrefactorNotFoundError):
                await client.agent_instances.get(srv.new_id())
            return [registered, fetched, started, finished]

    registered, fetched, started, finished = run(scenario)
    assert registered.status == "pending" and registered.agent_deployment_id == srv.agent_deployment_id
    assert registered.purpose == "smoke_test" and registered.external_identifier == "run-1"
    assert fetched.id == registered.id and fetched.status == "pending"
    assert started.status == "active" and started.started_at is not None
    assert finished.status == "failed" and finished.finished_at is not None
    assert [i["status"] for i in srv.instances()] == ["failed"]


def test_span_create_and_finish(srv: DevServer) -> None:
    async def scenario() -> tuple[AgentSpan, AgentSpan, AgentSpan, AgentSpan]:
        async with http_client(srv) as client:
            instance = await register(client, srv)
            await client.agent_instances.start(instance.id)
            parent = await client.agent_spans.create(
                agent_instance_id=instance.id,
                schema_name="agent:llm",
                status="active",
                payload={"model": "m", "prompt": "p"},
                idempotency_key="span-create-0001",
            )
            child = await client.agent_spans.create(
                agent_instance_id=instance.id, schema_name="agent:tool", status="pending", parent_span_id=parent.id
            )
            cancelled = await client.agent_spans.finish(child.id, status="cancelled")
            done = await client.agent_spans.finish(parent.id, status="complete", result_payload={"response": "r"})
            return parent, child, cancelled, done

    parent, child, cancelled, done = run(scenario)
    assert parent.status == "active" and parent.schema_title == "LLM Call"
    assert child.parent_span_id == parent.id and cancelled.status == "cancelled"
    assert done.status == "complete" and done.result_payload == {"response": "r"}
    assert sorted(s["status"] for s in srv.spans()) == ["cancelled", "complete"]


def test_span_create_in_a_pending_run_is_accepted(srv: DevServer) -> None:
    # prefactor-core POSTs span creates at once while the run's start waits in its queue.
    async def scenario() -> AgentSpan:
        async with http_client(srv) as client:
            instance = await register(client, srv)
            span = await client.agent_spans.create(
                agent_instance_id=instance.id, schema_name="agent:tool", status="active"
            )
            await client.agent_instances.start(instance.id)
            await client.agent_spans.finish(span.id, status="complete")
            return span

    span = run(scenario)
    assert span.status == "active"
    assert [s["status"] for s in srv.spans()] == ["complete"]


def test_bulk_with_the_flat_span_create_form_of_the_official_docstring(srv: DevServer) -> None:
    async def scenario() -> Any:
        async with http_client(srv) as client:
            instance = await register(client, srv)
            request = BulkRequest(
                items=[
                    BulkItem(  # the form prefactor-http's BulkClient docstring shows
                        _type="agent_spans/create",
                        idempotency_key="create-span-001",
                        agent_instance_id=instance.id,
                        schema_name="agent:llm",
                        status="active",
                    ),
                    BulkItem(
                        _type="agent_spans/create",
                        idempotency_key="create-span-002",
                        details={"agent_instance_id": instance.id, "schema_name": "agent:tool", "status": "active"},
                    ),
                    BulkItem(
                        _type="agent_instances/register",
                        idempotency_key="register-instance-001",
                        agent_id=srv.agent_id,
                        agent_version={"name": "My Agent", "external_identifier": "v1.0.0"},
                        agent_schema_version={"external_identifier": "v1.0.0", "span_type_schemas": SPAN_TYPES},
                    ),
                ]
            )
            return await client.bulk.execute(request)

    response = run(scenario)
    assert {k: v.status for k, v in response.outputs.items()} == {
        "create-span-001": "success",
        "create-span-002": "success",
        "register-instance-001": "success",
    }
    assert sorted(s["schema_name"] for s in srv.spans()) == ["agent:llm", "agent:tool"]
    assert all(s["payload"] == {} for s in srv.spans())


def test_errors_reach_the_official_client_as_its_typed_errors(srv: DevServer) -> None:
    async def scenario() -> None:
        async with http_client(srv) as client:
            instance = await register(client, srv)
            await client.agent_instances.start(instance.id)
            await client.agent_instances.finish(instance.id)
            with pytest.raises(PrefactorApiError) as conflict:
                await client.agent_instances.finish(instance.id)
            assert conflict.value.status_code == 409
            with pytest.raises(PrefactorNotFoundError):
                await client.agent_spans.finish(srv.new_id(), status="complete")

    run(scenario)


# --------------------------------------------------------------------------- prefactor-core


def core_config(srv: DevServer, registry: SchemaRegistry) -> PrefactorCoreConfig:
    return PrefactorCoreConfig(
        http_config=http_config(srv),
        queue_config=QueueConfig(num_workers=1, max_retries=0, retry_delay_base=0.01),
        schema_registry=registry,
    )


def registry() -> SchemaRegistry:
    reg = SchemaRegistry()
    for entry in SPAN_TYPES:
        reg.register_type(**entry)
    for quality in QUALITY_SCHEMAS:
        reg.register_quality_schema(**quality)
    return reg


def test_core_documented_flow_with_spans_racing_the_queued_start(srv: DevServer) -> None:
    async def scenario() -> str:
        async with PrefactorCoreClient(core_config(srv, registry())) as client:
            instance = await client.create_agent_instance(
                agent_id=srv.agent_id, agent_version={"name": "core-agent"}, environment_id=srv.environment_id
            )
            # Hold the queued start so the span creates certainly reach the server while the run is pending,
            # the order prefactor-core allows (its start is queued, its span creates are not).
            srv.add_fault(Fault(path=f"/api/v1/agent_instance/{instance.id}/start", delay_s=0.5))
            await instance.start()
            async with instance.span("agent:llm") as llm:
                await llm.start({"model": "m", "prompt": "hello"})
                async with instance.span("agent:tool") as tool:
                    await tool.start({"q": 1})
                    await tool.complete({"ok": True})
                await llm.complete({"response": "hi"})
            async with instance.span("agent:tool") as skipped:
                await skipped.cancel()
            await instance.record_quality("helpfulness", {"score": 1})
            await instance.finish()
            return instance.id

    instance_id = run(scenario)  # leaving the client raises PrefactorTelemetryFailureError if any call failed
    (instance,) = srv.instances()
    assert instance["id"] == instance_id and instance["status"] == "complete"
    assert instance["quality_payloads"] == {"helpfulness": {"score": 1}}
    spans = {(s["schema_name"], s["status"]) for s in srv.spans(instance_id)}
    assert spans == {("agent:llm", "complete"), ("agent:tool", "complete"), ("agent:tool", "cancelled")}
    llm = next(s for s in srv.spans(instance_id) if s["schema_name"] == "agent:llm")
    tool = next(s for s in srv.spans(instance_id) if s["status"] == "complete" and s["schema_name"] == "agent:tool")
    assert tool["parent_span_id"] == llm["id"]
    assert llm["result_payload"] == {"response": "hi"}


def test_record_quality_over_rest_and_bulk_agree(srv: DevServer) -> None:
    async def scenario() -> tuple[AgentInstance, AgentInstance, Any, AgentInstance]:
        async with http_client(srv) as client:
            rest_run = await register(client, srv)
            bulk_run = await register(client, srv, idempotency_key=None)
            recorded = await client.agent_instances.record_quality(
                rest_run.id, name="helpfulness", payload={"score": 0.8}, idempotency_key="quality-0001"
            )
            cleared = await client.agent_instances.record_quality(rest_run.id, name="helpfulness", payload=None)
            with pytest.raises(PrefactorApiError) as unknown:
                await client.agent_instances.record_quality(rest_run.id, name="nonsense", payload={"score": 1})
            assert unknown.value.status_code == 422
            with pytest.raises(PrefactorNotFoundError):
                await client.agent_instances.record_quality(srv.new_id(), name="helpfulness", payload={"score": 1})
            bulk = await client.bulk.execute(
                BulkRequest(
                    items=[
                        BulkItem(
                            _type="agent_instances/record_quality",
                            idempotency_key="bulk-quality-01",
                            agent_instance_id=bulk_run.id,
                            name="helpfulness",
                            payload={"score": 0.8},
                        )
                    ]
                )
            )
            return recorded, cleared, bulk, await client.agent_instances.get(bulk_run.id)

    recorded, cleared, bulk, bulk_run = run(scenario)
    assert recorded.quality_payloads == {"helpfulness": {"score": 0.8}}
    assert recorded.quality_summaries == {"helpfulness": "score 0.8"}
    assert cleared.quality_payloads == {} and cleared.quality_summaries == {}
    output = bulk.outputs["bulk-quality-01"]
    assert output.status == "success", output
    assert AgentInstance.model_validate(output.model_extra["details"]).quality_payloads == recorded.quality_payloads
    assert bulk_run.quality_payloads == recorded.quality_payloads
    assert bulk_run.quality_summaries == recorded.quality_summaries


def test_agent_reads(srv: DevServer) -> None:
    async def scenario() -> tuple[Any, ...]:
        async with http_client(srv) as client:
            await register(client, srv)
            listed = await client.agents.list_agents(page_size=10)
            got = await client.agents.get(srv.agent_id)
            shown = await client.agents.show(agent_id=srv.agent_id, include_counts=True)
            with pytest.raises(PrefactorNotFoundError):
                await client.agents.get(srv.new_id())
            with pytest.raises(PrefactorNotFoundError):
                await client.agents.show(external_identifier="nobody")
            with pytest.raises(PrefactorApiError) as write:
                await client.agents.retire(srv.agent_id)
            return listed, got, shown, write.value

    listed, got, shown, write = run(scenario)
    assert [a.id for a in listed] == [srv.agent_id]
    assert got.id == srv.agent_id and got.status == "active"
    assert shown.instance_counts is not None and shown.instance_counts.pending == 1
    assert write.status_code == 501 and write.code == "not_implemented"


def test_times_keep_their_microseconds_and_lists_parse_with_one_based_pages(srv: DevServer) -> None:
    started = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=timezone.utc)

    async def scenario() -> tuple[AgentSpan, dict[str, Any]]:
        async with http_client(srv) as client:
            instance = await register(client, srv)
            span = await client.agent_spans.create(
                agent_instance_id=instance.id, schema_name="agent:tool", status="active", started_at=started
            )
            listed = await client.request(
                "GET", "/api/v1/agent_instance", params={"agent_id": srv.agent_id, "pagination[page_size]": 1}
            )
            return span, listed

    span, listed = run(scenario)
    assert span.started_at == started  # prefactor-core sends datetime.isoformat(): microseconds
    page = ListResponse[AgentInstance].model_validate(listed)
    assert page.pagination is not None and page.pagination.page_index == 1
    assert page.summaries[0].agent_deployment_id == srv.agent_deployment_id


def test_termination_reaches_the_official_clients_on_all_three_paths(srv: DevServer) -> None:
    async def scenario() -> tuple[list[str | None], str | None, AgentSpan, int]:
        async with http_client(srv) as client:
            instance = await register(client, srv)
            await client.agent_instances.start(instance.id)
            open_span = await client.agent_spans.create(
                agent_instance_id=instance.id, schema_name="agent:tool", status="active"
            )
            srv.terminate(instance.id, "budget exceeded")
            signals: list[str | None] = []
            # 1. span create in the terminated run: a success carrying `control` (the only answer the client reads)
            created = await client.agent_spans.create(
                agent_instance_id=instance.id,
                schema_name="agent:tool",
                status="active",
                control_signal_callback=signals.append,
            )
            # 2. span finish
            await client.agent_spans.finish(open_span.id, status="complete", control_signal_callback=signals.append)
            # 3. prefactor-core's termination poll over GET /agent_instance/{id}
            monitor = TerminationMonitor(fetch_instance=client.agent_instances.get, poll_interval=0.05)
            monitor.sync(instance.id)
            await monitor.get_termination_event().wait()
            reason = monitor.termination_reason
            monitor.destroy()
            # Finishing a terminated run is a 409, which prefactor-core's finish skips on purpose.
            with pytest.raises(PrefactorApiError) as finish:
                await client.agent_instances.finish(instance.id)
            return signals, reason, created, finish.value.status_code

    signals, polled_reason, created, finish_status = run(scenario)
    assert signals == ["budget exceeded", "budget exceeded"]
    assert polled_reason == "budget exceeded"
    assert created.status == "active"
    assert finish_status == 409
    assert srv.instances()[0]["status"] == "terminated"


def test_core_client_learns_of_termination_from_a_queued_span_finish(srv: DevServer) -> None:
    async def scenario() -> tuple[str | None, bool]:
        async with PrefactorCoreClient(core_config(srv, registry())) as client:
            instance = await client.create_agent_instance(
                agent_id=srv.agent_id, agent_version={"name": "core-agent"}, environment_id=srv.environment_id
            )
            await instance.start()
            terminated = asyncio.Event()
            # prefactor-core keeps its monitor in `_termination_monitor` (no public accessor); subscribe() is the
            # monitor's callback API.
            monitor = client._termination_monitor
            assert monitor is not None
            monitor.subscribe(terminated.set)
            async with instance.span("agent:tool") as span:
                await span.start({"q": 1})
                # The run's start is queued: terminate once it has landed (only an active run can be terminated).
                await until(lambda: srv.instances()[0]["status"] == "active")
                srv.terminate(instance.id, "stopped by operator")
                await span.complete({"ok": True})
            await terminated.wait()
            reason = monitor.termination_reason
            await instance.finish()  # the 409 is skipped by prefactor-core, not a telemetry failure
            return reason, terminated.is_set()

    reason, fired = run(scenario)
    assert fired and reason == "stopped by operator"
    assert srv.instances()[0]["status"] == "terminated"


def test_terminate_over_the_dev_endpoint(srv: DevServer) -> None:
    async def scenario() -> tuple[dict[str, Any], AgentInstance]:
        async with http_client(srv) as client:
            instance = await register(client, srv)
            await client.agent_instances.start(instance.id)
            answer = await client.request(
                "POST", "/_dev/terminate", json_data={"agent_instance_id": instance.id, "reason": "from a script"}
            )
            return answer, await client.agent_instances.get(instance.id)

    answer, instance = run(scenario)
    assert answer["details"]["status"] == "terminated"
    assert instance.status == "terminated" and instance.termination_reason == "from a script"
