"""A wrong token: what the 401/403 stops is kept on disk like an outage and sent by a later process with a valid
token, exactly once; a run the server never accepted is never adopted as abandoned; the log says so, never the
token. Real servers, real processes, real files."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExportResult

from prefactor_otel import PrefactorSpanExporter, PrefactorSpanProcessor
from prefactor_otel.devserver import DevServer
from tests.spans import agent_trace, make_provider, server_options

WRONG = "pf_wrong_token_never_logged"

# A process with a wrong token: an agent trace through the usual processors, then a clean exit. Its log goes to
# stderr; argv: api url, agent id, environment id, spool dir, spool max bytes.
_WRONG_TOKEN_PROCESS = textwrap.dedent(
    f"""
    import json, logging, sys
    from opentelemetry.sdk.trace import TracerProvider
    from prefactor_otel import PrefactorSpanExporter, PrefactorSpanProcessor
    from tests.spans import agent_trace

    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    url, agent, environment, spool_dir, max_bytes = sys.argv[1:6]
    exporter = PrefactorSpanExporter(
        environ={{}}, api_url=url, api_token={WRONG!r}, agent_id=agent, environment_id=environment,
        spool_dir=spool_dir, spool_max_bytes=int(max_bytes), finish_grace_seconds=0, export_timeout=5,
    )
    provider = TracerProvider()
    provider.add_span_processor(PrefactorSpanProcessor(exporter))
    agent_trace(provider)
    try:
        agent_trace(provider, fail=True)
    except RuntimeError:
        pass
    provider.shutdown()
    print(json.dumps(exporter.stats()), flush=True)
    """
)


def _run_wrong_token_process(srv: DevServer, spool_dir: Path, max_bytes: int = 64 * 1024 * 1024) -> tuple[dict, str]:
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            _WRONG_TOKEN_PROCESS,
            srv.url,
            srv.agent_id,
            srv.environment_id,
            str(spool_dir),
            str(max_bytes),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def _messages(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.name == "prefactor_otel")


def test_a_wrong_token_keeps_the_spans_on_disk_and_a_valid_token_sends_them_once(
    srv: DevServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool_dir = tmp_path / "spool"
    stats, log = _run_wrong_token_process(srv, spool_dir)

    # Nothing reached the server; every span was kept, none dropped or left in memory; the log says where.
    assert srv.spans() == [] and srv.instances() == []
    assert {r.status for r in srv.requests} == {401}
    assert stats["auth_failed"] is True
    assert stats["spans_received"] == 8
    assert stats["spans_spooled"] == 8, stats
    assert stats["spans_dropped"] == 0 and stats["spans_queued"] == 0, stats
    assert f"refused the API token (HTTP 401): 8 span(s) kept on disk in {spool_dir}" in log, log
    assert "sent when a process starts with a valid token" in log
    assert "Check the api_token argument and its scope" in log and WRONG not in log  # where the token came from
    assert "left undelivered" not in log
    assert sorted(p.name for p in spool_dir.glob("*.json")), "the refused items are on disk"
    assert not list(spool_dir.glob("runs-*.journal")), "every run is closed: its finish is in the spool"

    # A later process with the same wrong token and no span of its own: it says so once and keeps the files.
    caplog.set_level(logging.INFO, logger="prefactor_otel")
    still_wrong = PrefactorSpanExporter(
        **{**server_options(srv), "api_token": WRONG}, spool_dir=str(spool_dir), finish_grace_seconds=0
    )
    still_wrong.force_flush(5_000)  # its own spans (none) are flushed: True; the files are not its own
    still_wrong.shutdown()
    errors = [r.getMessage() for r in caplog.records if r.name == "prefactor_otel" and r.levelno >= logging.ERROR]
    assert (
        len(errors) == 1
        and f"refused the API token (HTTP 401): what it stops is kept on disk in {spool_dir}" in errors[0]
    )
    assert WRONG not in caplog.text
    assert srv.spans() == [] and list(spool_dir.glob("*.json"))
    caplog.clear()

    # A later process with the valid token sends them: every span once, both runs finished, nothing adopted.
    exporter = PrefactorSpanExporter(**server_options(srv), spool_dir=str(spool_dir), finish_grace_seconds=0)
    assert exporter.force_flush(10_000)
    exporter.shutdown()
    messages = _messages(caplog)
    assert "left open by a process" not in messages
    after = exporter.stats()
    assert after["runs_adopted_from_dead_processes"] == 0
    assert after["spans_replayed"] == 8 and after["spans_dropped"] == 0, after
    assert after["instance_actions_dropped"] == {}, after  # no finish answered not_found
    spans = srv.spans()
    assert len(spans) == 8
    assert len({(s["payload"]["trace_id"], s["payload"]["span_id"]) for s in spans}) == 8
    assert sorted(i["status"] for i in srv.instances()) == ["complete", "failed"]
    assert not [r for r in srv.requests if r.status not in (200, 401)]
    assert not list(spool_dir.glob("*.json"))


def test_a_run_refused_with_the_token_and_not_kept_is_never_adopted(
    srv: DevServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A spool too small for the items: they cannot be kept, so they are dropped with reason auth, and the runs
    the server never accepted are not left in the journal for a later process to finish (not_found)."""
    spool_dir = tmp_path / "spool"
    stats, log = _run_wrong_token_process(srv, spool_dir, max_bytes=1_000)
    assert stats["spans_spooled"] == 0
    assert stats["dropped_by_reason"] == {"auth": 8}, stats
    assert stats["spans_queued"] == 0
    assert WRONG not in log

    caplog.set_level(logging.INFO, logger="prefactor_otel")
    exporter = PrefactorSpanExporter(**server_options(srv), spool_dir=str(spool_dir), finish_grace_seconds=0)
    assert exporter.force_flush(10_000)
    exporter.shutdown()
    assert "left open by a process" not in _messages(caplog)
    assert exporter.stats()["runs_adopted_from_dead_processes"] == 0
    assert not [r for r in srv.requests if r.status not in (200, 401)]


def test_without_a_spool_a_refused_token_counts_the_spans_dropped_with_reason_auth(
    srv: DevServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="prefactor_otel")
    exporter = PrefactorSpanExporter(
        **{**server_options(srv), "api_token": WRONG}, spool=False, finish_grace_seconds=0, export_timeout=5
    )
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    agent_trace(provider)
    provider.force_flush()
    agent_trace(provider)  # after the refusal: dropped at once, not held in memory
    provider.shutdown()
    stats = exporter.stats()
    assert stats["dropped_by_reason"] == {"auth": 8}, stats
    assert stats["spans_queued"] == 0 and stats["spans_exported"] == 0
    messages = _messages(caplog)
    assert "refused the API token (HTTP 401): 4 span(s) dropped" in messages, messages
    assert "PREFACTOR_SPOOL is off" in messages
    assert WRONG not in caplog.text
    assert srv.spans() == []


def test_the_processor_alone_with_a_wrong_token_keeps_live_runs_on_disk(srv: DevServer, tmp_path: Path) -> None:
    """PrefactorSpanProcessor sends a run's register at its root's start, before any span ended."""
    spool_dir = tmp_path / "spool"
    exporter = PrefactorSpanExporter(
        **{**server_options(srv), "api_token": WRONG}, spool_dir=str(spool_dir), finish_grace_seconds=0
    )
    provider = TracerProvider()
    provider.add_span_processor(PrefactorSpanProcessor(exporter))
    agent_trace(provider)
    provider.shutdown()
    stats = exporter.stats()
    assert stats["spans_spooled"] == 4 and stats["spans_dropped"] == 0 and stats["spans_queued"] == 0, stats

    good = PrefactorSpanExporter(**server_options(srv), spool_dir=str(spool_dir), finish_grace_seconds=0)
    assert good.force_flush(10_000)
    good.shutdown()
    assert len(srv.spans()) == 4
    assert [i["status"] for i in srv.instances()] == ["complete"]


def test_a_wrong_deployment_token_keeps_the_span_records_for_a_valid_one(srv: DevServer, tmp_path: Path) -> None:
    """No agent id: ids need the account partition, which a refused token cannot get; the mapped records are kept."""
    spool_dir = tmp_path / "spool"
    provider, collector = make_provider()
    agent_trace(provider)
    options = {"environ": {}, "api_url": srv.url, "spool_dir": str(spool_dir), "finish_grace_seconds": 0}
    wrong = PrefactorSpanExporter(**options, api_token=WRONG)
    assert wrong.export(collector.spans) is SpanExportResult.FAILURE
    wrong.shutdown()
    stats = wrong.stats()
    assert stats["spans_kept_unplanned"] == 4 and stats["spans_dropped"] == 0 and stats["spans_queued"] == 0, stats

    good = PrefactorSpanExporter(**options, api_token=srv.token)
    assert good.force_flush(10_000)
    good.shutdown()
    assert len(srv.spans()) == 4
    assert [i["status"] for i in srv.instances()] == ["complete"]


def test_the_planner_takes_a_refused_run_out_of_the_journal_and_only_that() -> None:
    """Between a 401 and the spill (a kill there), the journal must not hold a run the server never accepted."""
    from prefactor_otel.mapping import map_span
    from prefactor_otel.transport.outcomes import SUCCESS
    from tests.test_planner import _planner

    planner = _planner(finish_grace_seconds=60.0)  # the run stays open through the test
    provider, collector = make_provider()
    agent_trace(provider)
    planner.add([map_span(s) for s in collector.spans], 0.0)
    items = planner.plan(1.0)
    opened = planner.take_run_changes()
    assert len(opened) == 1 and None not in opened.values()  # journaled before its register is sent
    planner.refused([item.key for item in items])
    assert planner.take_run_changes() == dict.fromkeys(opened)  # closed: it does not exist on the server
    again = planner.plan(2.0)
    assert planner.take_run_changes().keys() == opened.keys()  # the next hand-on journals it again
    planner.apply({item.key: SUCCESS for item in again}, 3.0)
    planner.take_run_changes()
    planner.refused([item.key for item in again])  # accepted once: a later refusal cannot un-create it
    assert planner.take_run_changes() == {}
