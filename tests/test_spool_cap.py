"""`spool_max_bytes` is a hard cap on the bytes in the spool directory: every file in it (waiting items, leases,
the quarantine, journals of open runs, lock and temporary files) counts, at every moment a file is written, and
every span the cap keeps out is counted with its reason."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from pathlib import Path

import pytest

from prefactor_otel.devserver import DevServer, Fault
from prefactor_otel.durability import spool as spool_module
from prefactor_otel.durability import spool_disk
from prefactor_otel.durability.spool import Spool
from tests.spans import agent_trace, exporter_for, make_provider, wait_for

CAP = 1_000_000


def directory_bytes(directory: Path) -> int:
    """What is on disk: the size of every regular file in the directory and below it."""
    total = 0
    for root, _dirs, files in os.walk(directory):
        for name in files:
            with contextlib.suppress(FileNotFoundError):  # removed meanwhile
                total += os.lstat(os.path.join(root, name)).st_size
    return total


class HighWater:
    """The directory's size measured each time the spool has just written a file (before anything is removed),
    the moment it holds the most."""

    def __init__(self, directory: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.directory = directory
        self.most = 0
        self.writes = 0
        self._lock = threading.Lock()
        real = spool_disk.write_atomic

        def measured(path: Path, data: bytes, mtime: float | None = None) -> None:
            real(path, data, mtime)
            with self._lock:
                self.writes += 1
                self.most = max(self.most, directory_bytes(self.directory))

        for module in (spool_module, spool_disk):
            monkeypatch.setattr(module, "write_atomic", measured)


def _span(n: int) -> dict[str, object]:
    return {"_type": "agent_spans/create", "idempotency_key": f"s-{n}", "details": {"x": "y" * 500}}


def _span_creates(path: Path) -> int:
    items = json.loads(path.read_bytes())["items"]
    return sum(1 for item in items if item["_type"] == "agent_spans/create")


def test_the_cap_holds_at_every_write_and_every_span_kept_out_is_counted(
    srv: DevServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    high = HighWater(tmp_path, monkeypatch)
    # A damaged file left by an earlier crash: it is set aside in the quarantine, which is in the directory too.
    (tmp_path / f"{time.time_ns():020d}-1-1.json").write_bytes(b'{"version":1,"items":[' + b"7" * 90_000)
    exporter = exporter_for(srv, spool_dir=str(tmp_path), export_timeout=2, spool_max_bytes=CAP)
    created = 0

    def export_traces(rounds: int) -> None:
        nonlocal created
        for _ in range(rounds):
            provider, collector = make_provider()
            for _ in range(12):
                agent_trace(provider)
            created += len(collector.spans)
            exporter.export(collector.spans)
            assert directory_bytes(tmp_path) <= CAP

    assert wait_for(lambda: exporter.force_flush(5_000), 60)  # the damaged file is set aside
    assert directory_bytes(tmp_path / ".quarantine") > 80_000
    srv.add_fault(Fault(path="/api/v1/bulk", status=503, times=1_000_000))
    export_traces(30)  # an outage: the spool fills up to the cap (the quarantine's room included)
    srv.clear_faults()
    assert wait_for(lambda: exporter.force_flush(5_000), 60)  # back: everything waiting is delivered
    srv.add_fault(Fault(path="/api/v1/bulk", status=503, times=1_000_000))
    export_traces(30)  # a second outage
    srv.clear_faults()
    srv.add_fault(Fault(path="/api/v1/bulk", status=503, times=1))
    exporter.force_flush(1_000)  # the replay fails once: its file is given back while the spool is full
    assert directory_bytes(tmp_path) <= CAP
    srv.clear_faults()
    assert wait_for(lambda: exporter.force_flush(5_000), 60)
    stats = exporter.stats()
    exporter.shutdown()

    assert high.writes > 10 and high.most <= CAP
    assert directory_bytes(tmp_path) <= CAP
    assert stats["dropped_by_reason"].get("spool_full", 0) > 0
    # Every span is on the server or counted as dropped, with its reason.
    assert len(srv.spans()) + stats["spans_dropped"] == created
    assert set(stats["dropped_by_reason"]) <= {"spool_full", "spool_corrupt"}  # the damaged file held no span


def test_files_of_other_parts_count_the_spool_gives_way_counted_and_refuses_what_cannot_fit(tmp_path):
    spool = Spool(tmp_path, max_bytes=100_000, retention_seconds=3600)
    spans = [
        {"_type": "agent_spans/create", "idempotency_key": f"s-{n}", "details": {"x": "y" * 500}} for n in range(20)
    ]
    assert spool.append(spans)
    (first,) = [p for p in tmp_path.iterdir() if p.name.endswith(".json")]
    assert _span_creates(first) == 20
    # Another part's file in the directory (a journal of open runs grows in place), now near the cap by itself.
    (tmp_path / "runs-1-abcd.journal").write_bytes(b"j" * 95_000)
    assert not spool.append(spans)  # cannot fit even with the spool empty: refused, kept in memory by the caller
    assert spool.counters["spool_refused_items"] == 20
    assert spool.counters["dropped:spool_full"] == 20  # the waiting file made way for the journal, counted
    assert directory_bytes(tmp_path) <= 100_000
