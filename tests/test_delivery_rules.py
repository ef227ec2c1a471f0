"""One delivery path: items read back from the spool are judged and re-sent exactly like live ones; the stats
stay honest under threads and odd outcomes."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

from opentelemetry.sdk.trace.export import SpanExportResult

from prefactor_otel.devserver import DevServer, Fault
from prefactor_otel.model.http import BULK_CREATE_SPAN
from tests.spans import agent_trace, exporter_for, make_provider

TOKEN = "pf_rules_token"
# the stats race: enough new keys to race many times at a short switch interval, few enough to stay quick
NEW_COUNTER_KEYS = 50_000
SWITCH_INTERVAL_S = 0.00001


def _spooled_items(directory: Path) -> list[tuple[Path, list[dict]]]:
    files = []
    for path in sorted(directory.iterdir()):
        if path.name[0].isdigit() and path.suffix == ".json":
            files.append((path, json.loads(path.read_bytes())["items"]))
    return files


def test_a_replayed_span_whose_parent_is_gone_is_sent_as_an_orphan_in_its_place(tmp_path):
    """root -> tool -> db: the spooled create of `execute_tool` is lost; on replay the server does not know the
    parent of `db query`, which is re-sent without the link, right where it was, and nothing is sent twice."""
    provider, collector = make_provider()
    agent_trace(provider)
    with DevServer(token=TOKEN) as srv:
        srv.add_fault(Fault(drop_connection=True, times=-1))
        first = exporter_for(srv, spool_dir=str(tmp_path), export_timeout=1)
        assert first.export(collector.spans) is SpanExportResult.FAILURE
        first.shutdown(timeout_millis=500)
        (path, items), *_ = _spooled_items(tmp_path)
        names = [i["details"]["payload"]["name"] if i["_type"] == BULK_CREATE_SPAN else i["_type"] for i in items]
        lost = names.index("execute_tool lookup")
        del items[lost]
        path.write_bytes(json.dumps({"version": 1, "items": items}).encode())
        srv.clear_faults()
        later = exporter_for(srv, spool_dir=str(tmp_path))
        later.shutdown()
        stored = {s["payload"]["name"]: s for s in srv.spans()}
        assert set(stored) == {"invoke_agent support", "chat gpt-4o", "db query"}
        assert stored["db query"]["parent_span_id"] is None and stored["db query"]["payload"]["metadata"]["orphaned"]
        assert stored["chat gpt-4o"]["parent_span_id"] == stored["invoke_agent support"]["id"]
        assert [i["status"] for i in srv.instances()] == ["complete"]
        stats = later.stats()
        assert stats["spans_replayed"] == 3 and stats["spans_orphaned"] == 1 and stats["spans_dropped"] == 0
        assert not _spooled_items(tmp_path)  # settled: nothing left to send again


def test_instance_actions_rejected_are_not_counted_as_dropped_spans():
    provider, collector = make_provider()
    agent_trace(provider)
    with DevServer(token=TOKEN) as srv:
        exporter = exporter_for(srv, spool=False)
        srv.add_fault(Fault(path="/api/v1/bulk", status=422, body='{"code":"validation_errors","message":"no"}'))
        exporter.export(collector.spans)
        exporter.shutdown()
        stats = exporter.stats()
        assert stats["spans_dropped"] == sum(stats["dropped_by_reason"].values())
        assert all("finish" not in reason for reason in stats["dropped_by_reason"])


def test_spans_trimmed_while_waiting_for_the_account_are_counted_as_received_and_dropped():
    provider, collector = make_provider()
    for _ in range(3):
        agent_trace(provider)
    with DevServer(token=TOKEN) as srv:
        srv.add_fault(Fault(path="/api/v1/pfid/generate", drop_connection=True, times=-1))
        # a deployment token (no agent id): ids need the account partition, which the server cannot give now
        exporter = exporter_for(
            srv, agent_id=None, environment_id=None, spool=False, max_queued_spans=5, export_timeout=1
        )
        exporter.export(collector.spans)
        stats = exporter.stats()
        assert stats["spans_received"] == 12
        assert stats["dropped_by_reason"].get("queue_full") == 7 and stats["spans_queued"] == 5
        exporter.shutdown(timeout_millis=200)


def test_stats_can_be_read_while_other_threads_add_counters():
    """stats() must never iterate a Counter another thread is growing (RuntimeError: dictionary changed size).
    The race is made likely rather than long: a short GIL switch interval interleaves the three threads every few
    microseconds, so a bounded number of new keys gives the readers many chances to be caught mid-iteration, were
    stats() to iterate a live Counter (checked by reverting its `dict(counter)` copies: this test then fails)."""
    with DevServer(token=TOKEN) as srv:
        exporter = exporter_for(srv, spool=False)
        start = threading.Barrier(3)
        grown = threading.Event()
        errors: list[BaseException] = []

        def add_keys() -> None:
            start.wait()
            for n in range(NEW_COUNTER_KEYS):
                exporter._counters[f"k{n}"] += 1  # as delivery does for a new outcome key
            grown.set()

        def read() -> None:
            start.wait()
            try:
                while True:  # at least once, then for as long as the writer adds keys
                    exporter.stats()
                    if grown.is_set():
                        return
            except BaseException as exc:  # the failure under test
                errors.append(exc)

        threads = [threading.Thread(target=add_keys), *(threading.Thread(target=read) for _ in range(2))]
        switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        try:
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
        finally:
            sys.setswitchinterval(switch_interval)
        exporter.shutdown()
        assert grown.is_set() and errors == []


def test_two_concurrent_shutdowns_run_once(caplog):
    provider, collector = make_provider()
    agent_trace(provider)
    with DevServer(token=TOKEN) as srv:
        srv.add_fault(Fault(drop_connection=True, times=-1))  # nothing can be delivered: the close reports it
        exporter = exporter_for(srv, spool=False, export_timeout=0.5)
        exporter.export(collector.spans)
        barrier = threading.Barrier(2)

        def stop() -> None:
            barrier.wait()
            exporter.shutdown(timeout_millis=500)

        caplog.set_level("WARNING", logger="prefactor_otel")
        threads = [threading.Thread(target=stop) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        closes = [r for r in caplog.records if r.getMessage().startswith("Prefactor exporter shut down")]
        assert len(closes) == 1


def test_with_a_deployment_token_and_the_api_down_from_the_start_spans_are_kept_on_disk(tmp_path):
    """No agent id and no partition ever learnt: bulk items cannot be built, so the span records themselves are
    kept at shutdown, and the next process plans and delivers them."""
    provider, collector = make_provider()
    for _ in range(2):
        agent_trace(provider)
    with DevServer(token=TOKEN) as srv:
        srv.add_fault(Fault(drop_connection=True, times=-1, method="*", path="/api/v1/"))
        first = exporter_for(srv, agent_id=None, environment_id=None, spool_dir=str(tmp_path), export_timeout=0.5)
        assert first.export(collector.spans) is SpanExportResult.FAILURE
        first.shutdown(timeout_millis=1000)
        assert first.stats()["spans_queued"] == 0 and first.stats()["spans_dropped"] == 0
        srv.clear_faults()
        later = exporter_for(srv, agent_id=None, environment_id=None, spool_dir=str(tmp_path))
        later.shutdown()
        assert len(srv.spans()) == 8
        assert [i["status"] for i in srv.instances()] == ["complete", "complete"]
        assert not list(tmp_path.glob("records-*"))


def test_the_id_keyed_caches_never_mix_up_resources():
    """Agent versions and resource metadata are cached per Resource object (keyed by id, holding the object so
    the id is not reused while cached, and cleared past 64 entries). 70 services one after another, each
    Resource dropped after use, must each land under their own agent version with their own metadata."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    with DevServer(token=TOKEN) as srv:
        exporter = exporter_for(srv, spool=False)
        for n in range(70):
            provider = TracerProvider(resource=Resource.create({"service.name": f"svc-{n}"}))
            provider.add_span_processor(SimpleSpanProcessor(exporter))
            with provider.get_tracer("t").start_as_current_span(f"run of svc-{n}"):
                pass
            del provider  # its Resource may be freed: a new one could get its id
        exporter.shutdown()
        snap = srv.snapshot()
        versions = {v["id"]: v["name"] for v in snap["agent_versions"]}
        by_instance = {i["id"]: versions[i["agent_version_id"]] for i in snap["instances"]}
        for span in snap["spans"]:
            service = span["payload"]["name"].removeprefix("run of ")
            assert by_instance[span["agent_instance_id"]] == service
            assert span["payload"]["metadata"]["resource.service.name"] == service
        assert len(snap["spans"]) == 70


def test_the_agent_version_cache_survives_id_reuse():
    """Resource attribute mappings that are freed right after use get their ids reused at once: the cache must
    hold what it keys by id, or it would hand one service's agent version to the next."""
    from prefactor_otel.config.options import PrefactorConfig
    from prefactor_otel.pipeline.delivery import Delivery
    from prefactor_otel.pipeline.pipeline import Pipeline
    from prefactor_otel.transport.client import BulkTransport

    config = PrefactorConfig.load({}, api_url="http://127.0.0.1:9", api_token="t")  # nothing is sent
    pipeline = Pipeline(
        config,
        Delivery(BulkTransport(config, sdk_header="test"), config),
        None,
        partition=1,
        redactor=None,
    )
    planner = pipeline.ensure_planner(deadline=0.0)
    assert planner is not None
    for n in range(200):
        version = planner._agent_version_for({"service.name": f"svc-{n}"})  # the mapping dies right here
        assert version["name"] == f"svc-{n}"
