"""The spool's bounds: files within the per-file limit, a cap that holds, bounded reads, corrupt files quarantined."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from prefactor_otel.durability.spool import Spool

MIB = 1 << 20


def _schema_set() -> dict:
    """About 10 KB, like the agent_schema_version every register item carries."""
    return {"span_type_schemas": [{"name": f"type-{i}", "params_schema": {"k": "v" * 100}} for i in range(80)]}


def _register(n: int, schema: dict) -> dict:
    return {
        "_type": "agent_instances/register",
        "idempotency_key": f"reg-{n:05d}",
        "agent_id": "agent",
        "agent_version": {"name": "svc", "external_identifier": f"v-{n}"},
        "agent_schema_version": schema,
    }


def _span(n: int, size: int = 200) -> dict:
    return {"_type": "agent_spans/create", "idempotency_key": f"span-{n:05d}", "details": {"payload": "p" * size}}


_PEAK_OF_TAKE_OLDEST = """
import json, pathlib, sys, tracemalloc
from prefactor_otel.durability.spool import Spool
spool = Spool(pathlib.Path(sys.argv[1]), **json.loads(sys.argv[2]))
tracemalloc.start()
file = spool.take_oldest()
_, peak = tracemalloc.get_traced_memory()
tracemalloc.stop()
print(json.dumps({"peak": peak, "first_key": file and file.items[0]["idempotency_key"]}))
"""


def _peak_of_take_oldest(directory: Path, spool_args: dict) -> dict:
    """Peak traced memory of one `take_oldest` on a copy of this spool, measured in a fresh interpreter: in this one,
    threads other tests left behind (an exporter's worker, a server) may allocate inside the traced window."""
    copy = directory.parent / f"{directory.name}-peak"
    shutil.copytree(directory, copy)
    done = subprocess.run(
        [sys.executable, "-c", _PEAK_OF_TAKE_OLDEST, str(copy), json.dumps(spool_args)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _drain(spool: Spool) -> list[dict]:
    items = []
    for _ in range(10_000):  # bounded
        file = spool.take_oldest()
        if file is None:
            break
        items.extend(file.items)
        spool.complete(file)
    return items


def _spool_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_file() and not p.name.startswith("."))


def test_a_large_handoff_is_split_into_bounded_files_with_the_schema_set_stored_once_per_file(tmp_path):
    schema = _schema_set()
    assert len(json.dumps(schema)) > 9000
    items = []
    for n in range(512):  # one batch: a register and a span per run
        items += [_register(n, schema), _span(n)]
    spool = Spool(tmp_path, max_bytes=100 * MIB, retention_seconds=3600)
    assert spool.append(items)
    files = _spool_files(tmp_path)
    assert len(files) >= 1
    assert all(p.stat().st_size <= MIB for p in files)
    # Was 5.7 MB in one file: the schema set repeated 512 times. Now once per file.
    assert sum(p.stat().st_size for p in files) < 512 * 1000
    assert spool.backlog_bytes == sum(p.stat().st_size for p in files)
    assert _drain(spool) == items  # every item, in order, the shared schema restored


def test_files_of_one_handoff_keep_their_order_across_a_restart(tmp_path):
    spool = Spool(tmp_path, max_bytes=100 * MIB, retention_seconds=3600, max_file_bytes=4096)
    first, second = [_span(n) for n in range(100)], [_span(n) for n in range(100, 150)]
    assert spool.append(first) and spool.append(second)
    assert len(_spool_files(tmp_path)) > 5
    reopened = Spool(tmp_path, max_bytes=100 * MIB, retention_seconds=3600, max_file_bytes=4096)
    assert _drain(reopened) == first + second


def test_an_item_larger_than_the_file_limit_gets_a_file_of_its_own_and_one_past_the_item_limit_is_dropped(tmp_path):
    spool = Spool(tmp_path, max_bytes=100 * MIB, retention_seconds=3600, max_file_bytes=4096, max_item_bytes=20_000)
    items = [_span(0), _span(1, size=10_000), _span(2), _span(3, size=50_000), _span(4)]
    assert spool.append(items)
    sizes = [p.stat().st_size for p in _spool_files(tmp_path)]
    assert len(sizes) == 3 and sizes[1] > 10_000
    assert spool.counters["dropped:spool_item_too_large"] == 1
    assert [i["idempotency_key"] for i in _drain(spool)] == ["span-00000", "span-00001", "span-00002", "span-00004"]


def test_the_cap_holds_and_a_handoff_bigger_than_the_cap_is_refused(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="prefactor_otel")
    spool = Spool(tmp_path, max_bytes=20_000, retention_seconds=3600, max_file_bytes=4096)
    for n in range(30):
        assert spool.append([_span(n * 10 + k) for k in range(10)])
        assert sum(p.stat().st_size for p in _spool_files(tmp_path)) <= 20_000
    assert spool.counters["dropped:spool_full"] > 0
    before = {p.name for p in _spool_files(tmp_path)}
    assert spool.append([_span(1000 + k, size=1000) for k in range(30)]) is False  # ~33 KB against 20 KB
    assert {p.name for p in _spool_files(tmp_path)} == before  # nothing dropped for it, nothing written
    assert spool.counters["spool_refused_items"] == 30
    assert any("refused 30 item(s)" in r.getMessage() for r in caplog.records)


def test_version_1_files_are_still_read(tmp_path):
    items = [_span(0), _register(0, _schema_set())]
    body = b'{"version":1,"items":[%s]}' % b",".join(json.dumps(i).encode() for i in items)
    (tmp_path / f"{time.time_ns():020d}-1-1.json").write_bytes(body)
    assert _drain(Spool(tmp_path, max_bytes=100 * MIB, retention_seconds=3600)) == items


def test_a_file_over_the_read_limit_is_never_loaded_and_its_spans_are_counted(tmp_path):
    # 30 MB, and not a shape the spool ever wrote (so it cannot be rewritten as bounded files either).
    span = json.dumps(_span(0, size=10_000)).encode()
    body = b'{"items": [%s], "version": 1}' % b", ".join([span] * 3000)
    (tmp_path / f"{time.time_ns():020d}-1-1.json").write_bytes(body)
    time.sleep(0.001)
    spool_args = {"max_bytes": 100 * MIB, "retention_seconds": 3600, "max_file_bytes": 64 << 10}
    Spool(tmp_path, **spool_args, max_item_bytes=64 << 10).append([_span(7)])
    measured = _peak_of_take_oldest(tmp_path, {**spool_args, "max_item_bytes": 64 << 10})
    assert measured["first_key"] == "span-00007"
    assert measured["peak"] < 4 * MIB  # the 30 MB file was counted in bounded chunks, not read whole
    spool = Spool(tmp_path, **spool_args, max_item_bytes=64 << 10)
    file = spool.take_oldest()
    assert file is not None and file.items[0]["idempotency_key"] == "span-00007"  # the next file is served
    assert spool.counters["dropped:spool_corrupt"] == 3000


def test_malformed_and_truncated_files_are_quarantined_counted_logged_each_and_the_next_is_served(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="prefactor_otel")
    good = [_span(0), _span(1)]
    whole = json.dumps({"version": 1, "items": [_span(n) for n in range(3)]}, separators=(",", ":")).encode()
    bad = [
        b"not json at all",
        whole[: len(whole) - 20],  # truncated by a crash: 3 spans, counted from the raw bytes
        b'{"version":1,"items":{"a":1}}',
        b'{"version":1,"items":["a string"]}',
        b'{"version":1,"items":[{"_type":"agent_spans/create"}]}',  # no idempotency key
        b'{"version":2,"shared":{},"refs":[[5,"x","nope"]],"items":[]}',
    ]
    stamp = time.time_ns()
    for n, body in enumerate(bad):
        (tmp_path / f"{stamp + n:020d}-1-1.json").write_bytes(body)
    Spool(tmp_path, max_bytes=MIB, retention_seconds=3600).append(good)
    spool = Spool(tmp_path, max_bytes=MIB, retention_seconds=3600)
    file = spool.take_oldest()
    assert file is not None and file.items == good
    spool.complete(file)
    assert spool.counters["dropped:spool_corrupt"] == 3 + 1  # the truncated file and the keyless span
    assert spool.counters["spool_files_quarantined"] == len(bad)
    assert len(list((tmp_path / ".quarantine").iterdir())) == len(bad)
    lines = [r.getMessage() for r in caplog.records if "unreadable file" in r.getMessage()]
    assert len(lines) == len(bad)  # one line per file, naming where it went
    assert all(str(tmp_path / ".quarantine") in line for line in lines)
    assert spool.counters["spool_corrupt_files_counted_partly"] == len(bad)  # none has a checked header
    restarted = Spool(tmp_path, max_bytes=MIB, retention_seconds=3600)
    assert not restarted.has_backlog and restarted.take_oldest() is None
    assert not _spool_files(tmp_path)  # nothing left leased


def test_the_quarantine_is_bounded(tmp_path):
    stamp = time.time_ns()
    for n in range(20):
        (tmp_path / f"{stamp + n:020d}-1-1.json").write_bytes(b"x" * 15_000)
    spool = Spool(tmp_path, max_bytes=400_000, retention_seconds=3600, max_file_bytes=50_000)
    assert spool.take_oldest() is None
    assert spool.counters["spool_files_quarantined"] == 20
    assert sum(p.stat().st_size for p in (tmp_path / ".quarantine").iterdir()) <= 50_000


def test_stale_temporary_files_of_dead_writers_are_removed_at_start_up(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead = subprocess.run(
            [sys.executable, "-c", "print(__import__('os').getpid())"], capture_output=True, text=True
        )
        old = time.time() - 120
        names = {
            "legacy": ".tmp-abc123xy",  # written before temporary names carried the pid
            "dead": f".tmp-p{dead.stdout.strip()}-abcdefgh",
            "live": f".tmp-p{sleeper.pid}-abcdefgh",  # another live writer's: not ours to remove
            "fresh": f".tmp-p{dead.stdout.strip()}-fresh123",
        }
        for key, name in names.items():
            (tmp_path / name).write_bytes(b"{")
            if key != "fresh":
                os.utime(tmp_path / name, (old, old))
        spool = Spool(tmp_path, max_bytes=MIB, retention_seconds=3600)
        left = {p.name for p in tmp_path.iterdir()}
        assert names["legacy"] not in left and names["dead"] not in left
        assert names["live"] in left and names["fresh"] in left
        assert spool.counters["spool_tmp_removed"] == 2
    finally:
        sleeper.kill()
        sleeper.wait(timeout=10)


def test_give_back_keeps_the_file_age_for_retention(tmp_path):
    spool = Spool(tmp_path, max_bytes=MIB, retention_seconds=3600)
    spool.append([_span(0), _span(1)])
    (path,) = _spool_files(tmp_path)
    old = time.time() - 3000
    os.utime(path, (old, old))
    file = spool.take_oldest()
    spool.give_back(file, file.items[1:])
    assert abs(path.stat().st_mtime - old) < 2


def test_dict_items_may_hold_payloads_already_encoded_and_unencodable_items_are_counted(tmp_path):
    from prefactor_otel.mapping.values import RawJson

    spool = Spool(tmp_path, max_bytes=MIB, retention_seconds=3600)
    encoded = {"_type": "agent_spans/create", "idempotency_key": "k", "details": {"payload": RawJson(b'{"a":1}')}}
    broken = {"_type": "agent_spans/create", "idempotency_key": "j", "details": {"payload": object()}}
    assert spool.append([encoded, broken])
    assert _drain(spool) == [{"_type": "agent_spans/create", "idempotency_key": "k", "details": {"payload": {"a": 1}}}]
    assert spool.counters["dropped:spool_unencodable"] == 1


def test_a_backlog_over_the_cap_is_trimmed_oldest_first_at_start_up(tmp_path):
    big = Spool(tmp_path, max_bytes=100 * MIB, retention_seconds=3600, max_file_bytes=4096)
    big.append([_span(n) for n in range(300)])  # ~80 KB, e.g. written before the cap was lowered
    spool = Spool(tmp_path, max_bytes=20_000, retention_seconds=3600, max_file_bytes=4096)
    assert spool.backlog_bytes <= 20_000
    assert sum(p.stat().st_size for p in _spool_files(tmp_path)) <= 20_000
    kept = [i["idempotency_key"] for i in _drain(spool)]
    assert kept == [f"span-{n:05d}" for n in range(300 - len(kept), 300)]  # the newest
    assert spool.counters["dropped:spool_full"] == 300 - len(kept)


def _v1_file(path: Path, items: list[dict]) -> None:
    path.write_bytes(
        b'{"version":1,"items":[%s]}' % b",".join(json.dumps(i, ensure_ascii=False).encode() for i in items)
    )


def test_an_oversized_version_1_file_is_rewritten_as_bounded_files_in_its_place_with_bounded_memory(tmp_path):
    # As the unbounded spool wrote it: a whole hand-off in one file, here ~12 MB against a 64 KiB file limit.
    schema = _schema_set()
    legacy = []
    for n in range(600):
        legacy += [_register(n, schema), _span(n, size=9000), {**_span(10_000 + n), "details": {"text": "é€😀" * 5}}]
    stamp = time.time_ns()
    _v1_file(tmp_path / f"{stamp:020d}-1-1.json", legacy)
    _v1_file(tmp_path / f"{stamp + 1:020d}-1-2.json", [_span(99_999)])  # written after it: must stay after it
    limits = {"max_bytes": 100 * MIB, "retention_seconds": 3600, "max_file_bytes": 64 << 10}
    measured = _peak_of_take_oldest(tmp_path, {**limits, "max_item_bytes": 64 << 10})
    assert measured["peak"] < 4 * MIB  # never the whole 12 MB file (nor its decoded items) at once
    spool = Spool(tmp_path, **limits, max_item_bytes=64 << 10)
    first = spool.take_oldest()
    assert spool.counters["spool_files_split"] == 1 and not spool.counters["dropped:spool_corrupt"]
    assert all(p.stat().st_size <= (64 << 10) for p in _spool_files(tmp_path))
    items = first.items
    spool.complete(first)
    items += _drain(spool)
    assert items == [*legacy, _span(99_999)]


def test_a_truncated_oversized_version_1_file_is_quarantined_with_its_spans_counted(tmp_path):
    path = tmp_path / f"{time.time_ns():020d}-1-1.json"
    _v1_file(path, [_span(n, size=1000) for n in range(100)])
    path.write_bytes(path.read_bytes()[:-3000])
    spool = Spool(tmp_path, max_bytes=MIB, retention_seconds=3600, max_file_bytes=8192, max_item_bytes=8192)
    assert spool.take_oldest() is None
    assert spool.counters["dropped:spool_corrupt"] == 98  # counted from the raw bytes
    assert not _spool_files(tmp_path)  # no pieces left behind


def test_take_oldest_stops_at_its_deadline_even_with_files_to_set_aside(tmp_path):
    stamp = time.time_ns()
    for n in range(5):
        (tmp_path / f"{stamp + n:020d}-1-1.json").write_bytes(b"garbage")
    Spool(tmp_path, max_bytes=MIB, retention_seconds=3600).append([_span(0)])
    spool = Spool(tmp_path, max_bytes=MIB, retention_seconds=3600)
    assert spool.take_oldest(deadline=time.monotonic() - 1) is None  # past: nothing read, nothing moved
    assert spool.counters["spool_files_quarantined"] == 0 and len(_spool_files(tmp_path)) == 6
    file = spool.take_oldest(deadline=time.monotonic() + 60)
    assert file is not None and file.items == [_span(0)]


def test_the_cap_counts_what_other_writers_of_the_directory_added_since_the_last_scan(tmp_path):
    limits = {"max_bytes": 20_000, "retention_seconds": 3600, "max_file_bytes": 4096}
    first, second = Spool(tmp_path, **limits), Spool(tmp_path, **limits)  # two workers, both started empty
    assert first.append([_span(n) for n in range(40)])  # ~10 KB
    assert second.append([_span(100 + n) for n in range(40)])
    assert first.append([_span(200 + n) for n in range(40)])
    assert sum(p.stat().st_size for p in _spool_files(tmp_path)) <= 20_000


def test_a_changed_byte_that_leaves_valid_json_is_caught_by_the_checksum_and_every_span_counted(tmp_path):
    Spool(tmp_path, max_bytes=MIB, retention_seconds=3600).append([_span(n) for n in range(7)])
    Spool(tmp_path, max_bytes=MIB, retention_seconds=3600).append([_span(n) for n in range(10, 15)])
    changed, truncated = _spool_files(tmp_path)
    data = changed.read_bytes()
    assert b"span-00003" in data
    changed.write_bytes(data.replace(b"span-00003", b"span-00004"))  # still JSON, still the right shape
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    spool = Spool(tmp_path, max_bytes=MIB, retention_seconds=3600)
    assert spool.take_oldest() is None
    assert spool.counters["spool_files_quarantined"] == 2
    assert spool.counters["dropped:spool_corrupt"] == 7 + 5  # from the headers, though half a file is gone
    assert spool.counters["spool_corrupt_files_counted_partly"] == 0
