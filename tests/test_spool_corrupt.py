"""Damaged spool files, written by a real exporter: every span they held is counted as lost (`spool_corrupt`),
each file is quarantined and named in one log line, and the intact files are still delivered."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from prefactor_otel.devserver import DevServer, Fault
from tests.spans import agent_trace, exporter_for, make_provider


def _spool_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.name.endswith(".json"))


def _spans_in(path: Path) -> int:
    document = json.loads(path.read_bytes())
    return sum(1 for item in document["items"] if item["_type"] == "agent_spans/create")


def test_damaged_spool_files_count_every_span_they_held_and_are_quarantined(
    srv: DevServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="prefactor_otel")
    # A process that could not deliver: four exports, four spills, four files.
    srv.add_fault(Fault(path="/api/v1/bulk", status=503, times=1_000_000))
    writer = exporter_for(srv, spool_dir=str(tmp_path), export_timeout=1)
    for _ in range(4):
        provider, collector = make_provider()
        for _ in range(5):
            agent_trace(provider)
        writer.export(collector.spans)
    writer.shutdown(timeout_millis=2_000)
    srv.clear_faults()
    files = _spool_files(tmp_path)
    assert len(files) >= 4
    spans = [_spans_in(path) for path in files]
    assert all(spans[:3])

    truncated, flipped, header = files[:3]
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 3])  # a crash mid-write (or a full disk)
    data = bytearray(flipped.read_bytes())
    for offset in range(len(data) // 2, len(data) // 2 + 40, 7):
        data[offset] ^= 0x01  # bits flipped inside the body: often still JSON, never what was written
    flipped.write_bytes(bytes(data))
    data = bytearray(header.read_bytes())
    data[5:9] = b"XXXX"  # the header itself: the span count is unknowable, the readable spans are counted
    header.write_bytes(bytes(data))

    reader = exporter_for(srv, spool_dir=str(tmp_path), export_timeout=5)
    assert reader.force_flush(10_000)
    stats = reader.stats()
    reader.shutdown()

    # Every span of the truncated and the flipped files, and the readable ones of the third (all of them here).
    assert stats["dropped_by_reason"]["spool_corrupt"] == spans[0] + spans[1] + spans[2]
    assert stats["spool_files_quarantined"] == 3
    assert stats["spool_corrupt_files_counted_partly"] == 1  # the file whose header was damaged
    quarantined = sorted(p.name for p in (tmp_path / ".quarantine").iterdir())
    assert quarantined == sorted(p.name for p in (truncated, flipped, header))
    lines = [r.getMessage() for r in caplog.records if "unreadable file" in r.getMessage()]
    assert len(lines) == 3
    for path in (truncated, flipped, header):
        assert sum(str(tmp_path / ".quarantine" / path.name) in line for line in lines) == 1
    assert stats["spans_replayed"] == sum(spans[3:])  # the intact files are still delivered
    assert not _spool_files(tmp_path)
