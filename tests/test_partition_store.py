"""The account partition saved beside the spool never outlives its account (issue 22, session six).

Without an agent id the exporter learns the account's PFID partition from `POST /api/v1/pfid/generate` and keeps it
beside the spool, so a later process can plan (and spool) while the API is down. The spool directory is keyed by
the API URL and the agent key only, so another account at the same URL (another token), or the same account reset
(a local server started again, a restored API), must not make a later process plan its runs in the old partition:
every register would be refused and every span dropped. Each test runs real local servers, one after the other on
one port, and real exporters sharing one spool directory (what the default directory is for one URL).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from prefactor_otel import PrefactorSpanExporter
from prefactor_otel.config.options import PrefactorConfig
from prefactor_otel.devserver import DevServer, Fault
from prefactor_otel.gateway.service import Gateway
from prefactor_otel.model import ids
from prefactor_otel.pipeline import partition as partition_module
from prefactor_otel.tools.spool_report import spool_findings, waiting
from tests.spans import agent_trace, make_provider, wait_for
from tests.test_gateway_core import request_of, settings_for, traced

SPANS_PER_TRACE = 4
ITEMS_PER_TRACE = SPANS_PER_TRACE + 3  # register, start, the spans, finish
PARKED_PREFIX = "other-account-"  # pipeline/backlog.py: where another account's spool files wait


def _export_one_trace(url: str, token: str, spool: Path, **kw: object) -> PrefactorSpanExporter:
    provider, collector = make_provider()
    agent_trace(provider)
    exporter = PrefactorSpanExporter(
        environ={}, api_url=url, api_token=token, finish_grace_seconds=0, spool_dir=str(spool), **kw
    )
    exporter.export(collector.spans)
    exporter.shutdown()
    return exporter


def _closed_port_server(port: int) -> str:
    return f"http://127.0.0.1:{port}"


def _partitions_of(server: DevServer) -> set[int]:
    return {ids.extract_partition(instance["id"]) for instance in server.instances()}


def _first_account(spool: Path, token: str = "pf_account_a") -> tuple[int, int]:
    """An account's server on a fresh port; one process exports a trace there (the partition is learnt and saved).
    Returns (port, partition); the server is stopped."""
    with DevServer(token=token) as first:
        _export_one_trace(first.url, token, spool)
        assert len(first.spans()) == SPANS_PER_TRACE
        return first.port, first.partition


def _again_at(port: int, **kw: Any) -> DevServer:
    """A server at the URL of the one before (its port) -- or, should a test running beside this one have taken the
    port meanwhile, at a fresh one: the spool directory, not the URL, is what the processes share here."""
    try:
        return DevServer(port=port, **kw).start()
    except OSError:
        return DevServer(**kw).start()


def _other_partition(partition: int) -> int:
    return (partition + 1) % (ids.MAX_PARTITION + 1)


def test_another_account_at_the_same_url_loses_no_span(tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="prefactor_otel")
    port, partition = _first_account(tmp_path)
    # Another account (another token, its own partition) answers at the same URL now.
    with _again_at(port, token="pf_account_b", partition=_other_partition(partition)) as second:
        exporter = _export_one_trace(second.url, "pf_account_b", tmp_path)
        assert len(second.spans()) == SPANS_PER_TRACE
        assert _partitions_of(second) == {second.partition}
        assert exporter.stats()["dropped_by_reason"] == {}
    # The token itself is never written beside the spool, nor logged; the file is named by a digest of it.
    for path in tmp_path.rglob("*"):
        assert "pf_account" not in path.name
        if path.is_file():
            assert b"pf_account" not in path.read_bytes()
    assert "pf_account" not in caplog.text
    assert len(list(tmp_path.glob("partition-*"))) == 2  # one per token


def test_the_same_token_on_a_reset_account_loses_no_span(tmp_path):
    """A server whose partition changed under the same token (a local server started anew, a restored API)."""
    port, partition = _first_account(tmp_path, token="pf_same")
    with _again_at(port, token="pf_same", partition=_other_partition(partition)) as second:
        exporter = _export_one_trace(second.url, "pf_same", tmp_path)
        assert len(second.spans()) == SPANS_PER_TRACE
        assert _partitions_of(second) == {second.partition}
        assert exporter.stats()["dropped_by_reason"] == {}


def test_a_refused_register_relearns_the_partition_and_replans_the_run(tmp_path):
    """The saved partition could not be checked at the start (the id request failed once): the run is planned
    in it, its register refused for its partition -- the run is planned again in the account's partition, nothing
    dropped."""
    port, partition = _first_account(tmp_path, token="pf_same")
    with _again_at(port, token="pf_same", partition=_other_partition(partition)) as second:
        second.add_fault(Fault(path="/api/v1/pfid/generate", status=503, times=1))
        exporter = _export_one_trace(second.url, "pf_same", tmp_path)
        assert len(second.spans()) == SPANS_PER_TRACE
        assert _partitions_of(second) == {second.partition}
        stats = exporter.stats()
        assert stats["dropped_by_reason"] == {}
        assert stats["account_partition"].get("runs_replanned", 0) >= 1


def _spool_one_trace_while_down(port: int, token: str, spool: Path) -> None:
    """The API down: the saved partition plans the trace, and its items go to the spool."""
    _export_one_trace(_closed_port_server(port), token, spool, shutdown_timeout=2, export_timeout=1)
    assert list(spool.glob("0*.json")), "the trace was spooled"


def test_a_rotated_token_of_the_same_account_delivers_the_backlog(tmp_path):
    port, partition = _first_account(tmp_path, token="pf_old_token")
    _spool_one_trace_while_down(port, "pf_old_token", tmp_path)
    # The same account (its partition), its token rotated: one id request relearns the partition, the backlog goes.
    with _again_at(port, token="pf_new_token", partition=partition) as same:
        _export_one_trace(same.url, "pf_new_token", tmp_path)
        assert len(same.spans()) == 2 * SPANS_PER_TRACE
        assert len(same.instances()) == 2
    assert not list(tmp_path.glob("0*.json"))


def test_another_accounts_backlog_is_set_aside_not_sent_and_goes_when_that_account_comes_back(tmp_path):
    port, partition = _first_account(tmp_path)
    _spool_one_trace_while_down(port, "pf_account_a", tmp_path)
    with _again_at(port, token="pf_account_b", partition=_other_partition(partition)) as other:
        exporter = _export_one_trace(other.url, "pf_account_b", tmp_path)
        assert len(other.spans()) == SPANS_PER_TRACE  # its own trace only
        # Nothing of account A was sent to account B's API: only its own trace's items.
        assert sum(r.item_count or 0 for r in other.requests if r.path.endswith("/bulk")) == ITEMS_PER_TRACE
        assert _partitions_of(other) == {other.partition}
        assert exporter.stats()["account_partition"].get("spool_files_set_aside", 0) >= 1
    parked = list(tmp_path.glob(f"{PARKED_PREFIX}{partition}/*.json"))
    assert parked, "account A's backlog waits aside"
    # `prefactor-otel spool` and `doctor` say so: not waiting for this account's token, but not hidden either.
    shown = waiting(tmp_path)
    assert shown.set_aside == len(parked) and shown.empty
    assert (
        f"{len(parked)} file(s) of another account set aside"
        in spool_findings(PrefactorConfig(spool_dir=str(tmp_path)))[0].text
    )
    # Account A at the URL again: its backlog is put back and delivered.
    with _again_at(port, token="pf_account_a", partition=partition) as back:
        _export_one_trace(back.url, "pf_account_a", tmp_path)
        assert len(back.spans()) == 2 * SPANS_PER_TRACE
    assert not list(tmp_path.glob(f"{PARKED_PREFIX}{partition}/*.json"))


def test_a_gateway_route_whose_token_is_now_another_accounts_loses_no_span(tmp_path):
    """The gateway learns its partition the same way (one spool directory per route and agent, kept across
    restarts): its route's token now another account's at the same URL."""

    def run_gateway(server: DevServer) -> dict[str, Any]:
        settings = settings_for(server, tmp_path, agent_id=None, environment_id=None, finish_grace_seconds=0.1)
        gateway = Gateway(settings)
        gateway.start()
        try:
            assert gateway.wait_ready(30), gateway.not_ready_reason()
            assert gateway.accept("Bearer ingress-1", request_of(traced(runs=1))).rejected_spans == 0
            assert wait_for(lambda: len(server.instances()) == 1 and server.instances()[0]["finished_at"], 30)
            return dict(gateway.stats()["pipelines"]["default.default"])
        finally:
            gateway.shutdown(5)

    with DevServer(token="pf_account_a") as first:
        run_gateway(first)
        port, partition = first.port, first.partition
    with _again_at(port, token="pf_account_b", partition=_other_partition(partition)) as second:
        stats = run_gateway(second)
        assert len(second.spans()) == SPANS_PER_TRACE
        assert stats["dropped_by_reason"] == {} and stats["account_partition"] == {}  # another token: learnt anew
        assert _partitions_of(second) == {second.partition}


def test_an_account_reset_under_a_running_process_is_relearnt_after_one_refusal(tmp_path, monkeypatch):
    """The server answered the partition at the start, then the account was reset under the running process: the
    refused run is counted (nothing watched the requests), the server asked after that drain, and the next runs go
    to the new partition. (The check is at most once a minute; made immediate here so the test need not wait.)"""
    monkeypatch.setattr(partition_module, "RECHECK_AFTER_S", 0.0)
    provider, collector = make_provider()
    with DevServer(token="pf_same") as first:
        exporter = PrefactorSpanExporter(
            environ={}, api_url=first.url, api_token="pf_same", finish_grace_seconds=0, spool_dir=str(tmp_path)
        )
        agent_trace(provider)
        exporter.export(collector.spans)
        exporter.force_flush()
        assert len(first.spans()) == SPANS_PER_TRACE
        port, partition = first.port, first.partition
    try:
        with DevServer(token="pf_same", port=port, partition=_other_partition(partition)) as second:
            for _ in range(2):
                collector.spans.clear()
                agent_trace(provider)
                exporter.export(collector.spans)
                exporter.force_flush()
            stats = exporter.stats()
            assert stats["account_partition"]["relearnt"] == 1
            assert stats["dropped_by_reason"] == {"instance_rejected:register_invalid_value": SPANS_PER_TRACE}
            assert len(second.spans()) == SPANS_PER_TRACE  # the run after the refused one
            assert _partitions_of(second) == {second.partition}
    finally:
        exporter.shutdown()
