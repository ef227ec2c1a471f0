"""The durable spool: outage, crash and restart, caps, permissions. Local server over real HTTP."""

from __future__ import annotations

import json
import logging
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from opentelemetry.sdk.trace.export import SpanExportResult

from prefactor_otel import PrefactorSpanExporter
from prefactor_otel.devserver import DevServer, Fault
from prefactor_otel.durability.spool import Spool
from tests.spans import agent_trace, exporter_for, make_provider

TOKEN = "pf_spool_secret_token"


def _items(n: int, tag: str = "x") -> list[dict]:
    return [{"_type": "agent_spans/create", "idempotency_key": f"{tag}-key-{i:04d}", "details": {}} for i in range(n)]


def test_spool_keeps_order_across_instances_and_is_private(tmp_path):
    spool = Spool(tmp_path / "s", max_bytes=10_000_000, retention_seconds=3600)
    assert spool.enabled
    assert stat.S_IMODE((tmp_path / "s").stat().st_mode) == 0o700
    spool.append(_items(2, "a"))
    spool.append(_items(2, "b"))
    reopened = Spool(tmp_path / "s", max_bytes=10_000_000, retention_seconds=3600)  # a restart
    first = reopened.take_oldest()
    assert [i["idempotency_key"] for i in first.items] == ["a-key-0000", "a-key-0001"]
    reopened.give_back(first, first.items[1:])  # partly sent: the rest keeps its place
    again = reopened.take_oldest()
    assert [i["idempotency_key"] for i in again.items] == ["a-key-0001"]
    reopened.complete(again)
    last = reopened.take_oldest()
    assert last.items[0]["idempotency_key"] == "b-key-0000"
    reopened.complete(last)
    assert reopened.take_oldest() is None and not reopened.has_backlog


def test_size_cap_drops_oldest_counted(tmp_path):
    spool = Spool(tmp_path, max_bytes=600, retention_seconds=3600)
    for tag in "abcd":
        spool.append(_items(3, tag))
    assert spool.counters["dropped:spool_full"] >= 3
    assert spool.backlog_bytes <= 600
    newest = [spool.take_oldest() for _ in range(4)]
    tags = {f.items[0]["idempotency_key"][0] for f in newest if f is not None}
    assert "d" in tags and "a" not in tags


def test_retention_expires_old_files_counted(tmp_path):
    Spool(tmp_path, max_bytes=10**6, retention_seconds=3600).append(_items(2))
    for path in tmp_path.iterdir():
        os.utime(path, (time.time() - 7200, time.time() - 7200))
    spool = Spool(tmp_path, max_bytes=10**6, retention_seconds=3600)
    assert not spool.has_backlog
    assert spool.counters["dropped:spool_expired"] == 2


def test_lease_of_a_dead_process_is_taken_back(tmp_path):
    spool = Spool(tmp_path, max_bytes=10**6, retention_seconds=3600)
    spool.append(_items(1))
    (name,) = [p.name for p in tmp_path.iterdir() if p.name.endswith(".json")]
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    os.rename(tmp_path / name, tmp_path / f"{name}.lease-{dead.stdout.strip()}")
    assert Spool(tmp_path, max_bytes=10**6, retention_seconds=3600).take_oldest() is not None


def test_unwritable_directory_disables_spool_with_one_warning(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    caplog.set_level(logging.WARNING, logger="prefactor_otel")
    exporter = PrefactorSpanExporter(environ={}, api_token=TOKEN, spool_dir=str(blocker / "spool"))
    assert exporter.stats()["spool_enabled"] is False
    assert len([r for r in caplog.records if "spool disabled" in r.getMessage()]) == 1
    exporter.shutdown(timeout_millis=100)


def _exporter(srv: DevServer, spool_dir: Path, **kw) -> PrefactorSpanExporter:
    return exporter_for(
        srv,
        finish_grace_seconds=0,
        export_timeout=1,
        spool_dir=str(spool_dir),
        **kw,
    )


def _assert_tree(srv: DevServer, otel_spans) -> None:
    stored = srv.spans()
    by_otel = {(s["payload"]["trace_id"], s["payload"]["span_id"]): s for s in stored}
    assert len(stored) == len(by_otel) == len(otel_spans)
    for otel in otel_spans:
        t = f"{otel.context.trace_id:032x}"
        s = by_otel[(t, f"{otel.context.span_id:016x}")]
        expected = None if otel.parent is None else by_otel[(t, f"{otel.parent.span_id:016x}")]["id"]
        assert s["parent_span_id"] == expected


def test_outage_then_recovery_nothing_lost_spool_drained(tmp_path):
    provider, collector = make_provider()
    for _ in range(5):
        agent_trace(provider)
    spans = collector.spans
    with DevServer(token=TOKEN) as srv:
        srv.add_fault(Fault(drop_connection=True, times=-1))
        exporter = _exporter(srv, tmp_path)
        assert exporter.export(spans[:8]) is SpanExportResult.FAILURE  # outage: spooled
        started = time.monotonic()
        assert exporter.export(spans[8:]) is SpanExportResult.FAILURE  # behind the backlog, no waiting
        assert time.monotonic() - started < 0.5
        assert exporter.stats()["spans_spooled"] == 20
        srv.clear_faults()
        deadline = time.monotonic() + 15
        while exporter.stats()["spool_backlog_bytes"] and time.monotonic() < deadline:
            time.sleep(0.05)  # the background sender replays with backoff
        exporter.shutdown()
        _assert_tree(srv, spans)
        assert all(i["status"] == "complete" for i in srv.instances()) and len(srv.instances()) == 5
        stats = exporter.stats()
        assert stats["spans_replayed"] == 20 and stats["spool_backlog_bytes"] == 0
        assert not [p for p in tmp_path.iterdir() if not p.name.startswith(".")]
        for path in tmp_path.rglob("*"):
            assert TOKEN.encode() not in path.read_bytes() if path.is_file() else True


CRASHING_APP = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {root!r})
    from prefactor_otel import PrefactorSpanExporter
    from tests.spans import agent_trace, make_provider

    provider, collector = make_provider()
    for _ in range(4):
        agent_trace(provider)
    exporter = PrefactorSpanExporter(finish_grace_seconds=0, export_timeout=1)
    exporter.export(collector.spans)
    print("SPOOLED", exporter.stats()["spans_spooled"], flush=True)
    with open({ids_file!r}, "w") as fh:
        for s in collector.spans:
            fh.write(f"{{s.context.trace_id:032x}} {{s.context.span_id:016x}} "
                     f"{{s.parent.span_id if s.parent else 0:016x}}\\n")
    print("READY", flush=True)
    time.sleep(60)
    """
)

RESTARTED_APP = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {root!r})
    from prefactor_otel import PrefactorSpanExporter

    exporter = PrefactorSpanExporter(finish_grace_seconds=0, export_timeout=5)
    print("FLUSHED", exporter.force_flush(10_000), flush=True)
    exporter.shutdown()
    print("REPLAYED", exporter.stats()["spans_replayed"], flush=True)
    """
)


def test_sigkill_while_server_down_then_restart_delivers_exactly_once(tmp_path):
    root = str(Path(__file__).resolve().parent.parent)
    ids_file = tmp_path / "ids.txt"
    spool_dir = tmp_path / "spool"
    with DevServer(token=TOKEN) as srv:
        # The first request is committed but its answer lost (the classic duplicate trap); then the server is "down".
        srv.add_fault(Fault(commit_then_fail=True, drop_connection=True, times=1))
        srv.add_fault(Fault(drop_connection=True, times=-1))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PREFACTOR_"))}
        env.update(
            PREFACTOR_API_URL=srv.url,
            PREFACTOR_API_TOKEN=TOKEN,
            PREFACTOR_AGENT_ID=srv.agent_id,
            PREFACTOR_SPOOL_DIR=str(spool_dir),
        )
        app = tmp_path / "crash.py"
        app.write_text(CRASHING_APP.format(root=root, ids_file=str(ids_file)))
        proc = subprocess.Popen([sys.executable, str(app)], env=env, stdout=subprocess.PIPE, text=True)
        try:
            lines = []
            for line in proc.stdout:  # bounded: the app prints two lines then sleeps
                lines.append(line)
                if line.startswith("READY"):
                    break
            assert lines[0].split() == ["SPOOLED", "16"], lines
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        # The trap is set: everything was committed once, yet the process believed it failed and spooled it.
        assert len(srv.spans()) == 16
        srv.clear_faults()
        restarted = tmp_path / "restart.py"
        restarted.write_text(RESTARTED_APP.format(root=root))
        out = subprocess.run(
            [sys.executable, str(restarted)], env=env, capture_output=True, text=True, timeout=60
        ).stdout
        assert "FLUSHED True" in out, out
        expected = [line.split() for line in ids_file.read_text().splitlines()]
        stored = srv.spans()
        by_otel = {(s["payload"]["trace_id"], s["payload"]["span_id"]): s for s in stored}
        assert len(stored) == len(by_otel) == len(expected) == 16  # exactly once
        for trace_hex, span_hex, parent_hex in expected:
            s = by_otel[(trace_hex, span_hex)]
            if parent_hex == "0" * 16:
                assert s["parent_span_id"] is None
            else:
                assert s["parent_span_id"] == by_otel[(trace_hex, parent_hex)]["id"]
        assert [i["status"] for i in srv.instances()] == ["complete"] * 4
        for path in spool_dir.rglob("*"):
            assert not path.is_file() or path.name.startswith(".")
        snapshot = json.dumps(srv.snapshot())
        assert TOKEN not in snapshot
