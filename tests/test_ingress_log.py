"""The gateway's ingress log (durability/ingress_log.py) on a real directory: records read back in order across
segments, a torn last record and a corrupt checksum counted and skipped, fsyncs shared by concurrent writers, the
byte cap, and one owner per directory (a second process refused, the lock freed when its holder is SIGKILLed)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from prefactor_otel.durability.ingress_log import (
    SEGMENT_MAGIC,
    IngressLog,
    IngressLogBroken,
    IngressLogFull,
    IngressLogLocked,
    segment_name,
)


def opened(directory: Path, *, max_bytes: int = 1 << 20, segment_bytes: int = 1 << 16) -> IngressLog:
    log = IngressLog(directory, max_bytes=max_bytes, segment_bytes=segment_bytes)
    log.open()
    return log


def written(log: IngressLog, records: list[tuple[str, bytes]]) -> None:
    for key, data in records:
        log.sync(log.write(key, data))


def read_back(directory: Path) -> tuple[list[tuple[int, str, bytes]], IngressLog]:
    log = opened(directory)
    records = [(record.segment, record.key, record.data) for record in log.replay()]
    return records, log


def test_records_come_back_in_write_order_across_segments(tmp_path: Path) -> None:
    log = opened(tmp_path, segment_bytes=200)
    records = [(f"route.agent{i % 3}", bytes([i]) * (10 + i)) for i in range(40)]
    written(log, records)
    assert len(log.segments()) > 3  # rotated
    log.close()
    back, again = read_back(tmp_path)
    assert [(key, data) for _, key, data in back] == records
    segments = [segment for segment, _, _ in back]
    assert segments == sorted(segments)
    assert again.counters["records_replayed"] == 40 and not again.counters["records_torn"]
    # A new gateway never appends to an old segment: its first write begins the next one.
    ticket = again.write("k", b"new")
    assert ticket.segment == segments[-1] + 1
    again.close()


def test_a_torn_last_record_is_counted_and_the_rest_replayed(tmp_path: Path) -> None:
    log = opened(tmp_path)
    written(log, [("k", b"first"), ("k", b"second"), ("k", b"third-and-torn")])
    (segment,) = log.segments()
    log.close()
    path = tmp_path / segment_name(segment)
    content = path.read_bytes()
    path.write_bytes(content[:-5])  # the crash tore the last write
    back, again = read_back(tmp_path)
    assert [data for _, _, data in back] == [b"first", b"second"]
    assert again.counters["records_torn"] == 1
    again.close()


def test_a_header_cut_short_is_torn_too(tmp_path: Path) -> None:
    log = opened(tmp_path)
    written(log, [("k", b"only")])
    (segment,) = log.segments()
    log.close()
    path = tmp_path / segment_name(segment)
    path.write_bytes(path.read_bytes() + b"\x00\x00\x01")  # three bytes of a next header
    back, again = read_back(tmp_path)
    assert [data for _, _, data in back] == [b"only"]
    assert again.counters["records_torn"] == 1
    again.close()


def test_a_corrupt_record_is_counted_and_skipped(tmp_path: Path) -> None:
    log = opened(tmp_path)
    written(log, [("k", b"a" * 50), ("k", b"b" * 50), ("k", b"c" * 50)])
    (segment,) = log.segments()
    log.close()
    path = tmp_path / segment_name(segment)
    content = bytearray(path.read_bytes())
    middle = content.index(b"b" * 50)
    content[middle + 10] ^= 0xFF  # a flipped bit in the second record's data
    path.write_bytes(bytes(content))
    back, again = read_back(tmp_path)
    assert [data for _, _, data in back] == [b"a" * 50, b"c" * 50]
    assert again.counters["records_corrupt"] == 1
    again.close()


def test_a_file_that_is_not_a_segment_is_counted_and_left_out(tmp_path: Path) -> None:
    (tmp_path / segment_name(1)).write_bytes(b"not a segment at all")
    (tmp_path / segment_name(2)).write_bytes(b"")  # created at a crash before its header
    log = opened(tmp_path)
    assert list(log.replay()) == []
    assert log.counters["segments_unreadable"] == 1
    log.close()


def test_one_fsync_covers_every_record_written_before_it(tmp_path: Path) -> None:
    log = opened(tmp_path)
    tickets = [log.write("k", bytes([i])) for i in range(5)]
    assert log.synced_seq == 0
    log.sync(tickets[-1])
    assert log.counters["fsyncs"] == 1 and log.synced_seq == 5
    for ticket in tickets[:-1]:
        log.sync(ticket)  # already durable: no fsync of its own
    assert log.counters["fsyncs"] == 1
    log.close()


def test_concurrent_writers_share_fsyncs_and_all_come_back(tmp_path: Path) -> None:
    log = opened(tmp_path, max_bytes=64 << 20, segment_bytes=1 << 20)
    threads, per_thread = 16, 25
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for i in range(per_thread):
                log.sync(log.write(f"t{n}", f"{n}:{i}".encode()))
        except BaseException as exc:  # reported below
            errors.append(exc)

    workers = [threading.Thread(target=writer, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert not errors
    assert log.synced_seq == threads * per_thread
    assert 1 <= log.counters["fsyncs"] <= threads * per_thread
    log.close()
    back, again = read_back(tmp_path)
    assert len(back) == threads * per_thread
    for n in range(threads):  # each writer's records in its own order
        mine = [data for _, key, data in back if key == f"t{n}"]
        assert mine == [f"{n}:{i}".encode() for i in range(per_thread)]
    again.close()


def test_the_cap_refuses_a_record_and_retiring_a_segment_makes_room(tmp_path: Path) -> None:
    log = opened(tmp_path, max_bytes=2_000, segment_bytes=600)
    count = 0
    with pytest.raises(IngressLogFull):
        for _ in range(100):
            log.sync(log.write("k", b"x" * 100))
            count += 1
    assert 10 <= count < 20 and log.bytes <= 2_000
    assert log.counters["refused_full"] == 1
    oldest = log.segments()[0]
    assert log.retire(oldest) and not (tmp_path / segment_name(oldest)).exists()
    log.sync(log.write("k", b"x" * 100))  # room again
    sealed = log.seal()
    assert sealed is not None and log.current_segment is None
    assert log.retire(sealed)
    log.close()
    with pytest.raises(IngressLogBroken):
        log.write("k", b"after close")


def test_a_second_owner_is_refused_in_process_and_from_another_process(tmp_path: Path) -> None:
    log = opened(tmp_path)
    with pytest.raises(IngressLogLocked, match=f"pid {os.getpid()}"):
        opened(tmp_path)
    probe = (
        "import sys\nfrom pathlib import Path\n"
        "from prefactor_otel.durability.ingress_log import IngressLog, IngressLogLocked\n"
        "try:\n    IngressLog(Path(sys.argv[1]), max_bytes=1000, segment_bytes=100).open()\n"
        "except IngressLogLocked as exc:\n    print('locked:', exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, str(tmp_path)], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.startswith("locked:") and "one gateway per directory" in result.stdout
    log.close()
    opened(tmp_path).close()  # free again once closed


def test_the_lock_is_freed_when_its_holder_is_killed(tmp_path: Path) -> None:
    holder = (
        "import sys, time\nfrom pathlib import Path\n"
        "from prefactor_otel.durability.ingress_log import IngressLog\n"
        "log = IngressLog(Path(sys.argv[1]), max_bytes=1000, segment_bytes=100)\nlog.open()\n"
        "print('held', flush=True)\ntime.sleep(600)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", holder, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "held"
        with pytest.raises(IngressLogLocked):
            opened(tmp_path)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(60)
    opened(tmp_path).close()


def test_segments_start_with_the_magic(tmp_path: Path) -> None:
    log = opened(tmp_path)
    ticket = log.write("k", b"v")
    log.sync(ticket)
    assert (tmp_path / segment_name(ticket.segment)).read_bytes().startswith(SEGMENT_MAGIC)
    log.close()
