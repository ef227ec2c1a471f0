"""The spool shared by processes: forks while a thread is inside it, one sender per directory, files of others."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from prefactor_otel._logging import RateLimitedLog
from prefactor_otel.durability.spool import Spool

MIB = 1 << 20
needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def _items(n: int, tag: str) -> list[dict]:
    return [{"_type": "agent_spans/create", "idempotency_key": f"{tag}-{i:04d}", "details": {}} for i in range(n)]


def _reap(pids: list[int], limit_s: float) -> list[int | None]:
    """Exit codes of forked children; None for a child still running after the limit (then killed)."""
    codes: dict[int, int] = {}
    deadline = time.monotonic() + limit_s
    while len(codes) < len(pids) and time.monotonic() < deadline:
        for pid in pids:
            if pid not in codes:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    codes[pid] = os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    for pid in pids:
        if pid not in codes:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    return [codes.get(pid) for pid in pids]


@needs_fork
def test_a_child_forked_while_a_thread_is_inside_append_can_use_the_spool(tmp_path):
    """Each child is forked while the parent's thread appends, resets as the exporter's fork hook will, then
    appends once that thread has stopped, one child at a time: what is under test is a lock held at the fork,
    not the directory's write lock under contention. (With the writer looping and forty children at once, a child
    polling for the write lock behind a busy machine waited past WRITE_LOCK_WAIT_S and was refused, as designed.)"""
    spool = Spool(tmp_path, max_bytes=100 * MIB, retention_seconds=3600)
    stop = threading.Event()

    def append_in_a_loop() -> None:
        while not stop.is_set():
            spool.append(_items(20, "parent"))

    writer = threading.Thread(target=append_in_a_loop)
    writer.start()
    children: list[tuple[int, int]] = []  # (pid, the write end of its go-ahead pipe)
    try:
        for _ in range(40):
            time.sleep(0.002)
            go, go_ahead = os.pipe()
            pid = os.fork()
            if pid == 0:  # the child: as the exporter's fork hook will, then use the spool and leave
                code = 1
                try:
                    os.close(go_ahead)
                    spool.reset_after_fork()
                    os.read(go, 1)  # the go-ahead, or end of file if the test has gone
                    code = 0 if spool.append(_items(1, f"child-{os.getpid()}")) else 2
                finally:
                    os._exit(code)
            os.close(go)
            children.append((pid, go_ahead))
    finally:
        stop.set()
        writer.join(timeout=30)
    codes: list[int | None] = []
    try:
        for pid, go_ahead in children:
            os.write(go_ahead, b"g")
            codes += _reap([pid], limit_s=60)
            if codes[-1] != 0:
                break  # the rest are killed below: one hung child says it, forty would take forty minutes
    finally:
        for _, go_ahead in children:
            os.close(go_ahead)
        _reap([pid for pid, _ in children[len(codes) :]], limit_s=0)
    assert codes == [0] * 40  # None: a child hung on a lock held at the fork; 2: its append was refused
    names = [p.name for p in tmp_path.iterdir() if p.name.endswith(".json")]
    assert sum(1 for pid, _ in children if any(f"-{pid}-" in name for name in names)) == 40


@needs_fork
def test_a_child_forked_while_the_rate_limited_log_is_held_can_log(tmp_path):
    log = RateLimitedLog(interval=0)
    with log._lock:  # a thread inside `log` at the moment of the fork
        pid = os.fork()
        if pid == 0:
            try:
                log.reset_after_fork()
                log.log(30, "key", "from the child")
            finally:
                os._exit(0)
    assert _reap([pid], limit_s=30) == [0]


SENDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from prefactor_otel.durability.spool import Spool

    directory, out = Path(sys.argv[1]), open(sys.argv[2], "a", buffering=1)
    spool = Spool(directory, max_bytes=100 << 20, retention_seconds=3600, rescan_seconds=0)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(p.name.endswith(".json") for p in directory.iterdir()):
        with spool.sending() as acquired:
            for _ in range(3):  # a few files per turn, so the two senders take turns
                file = acquired and spool.take_oldest()
                if not file:
                    break
                out.write(f"start {file.path.name.split('.lease-')[0]}\\n")
                time.sleep(0.002)  # "sending"
                out.write(f"end {file.path.name.split('.lease-')[0]}\\n")
                spool.complete(file)
        time.sleep(0.001)
    """
)


def test_two_processes_replaying_one_directory_send_its_files_one_at_a_time_in_order(tmp_path):
    spool_dir = tmp_path / "spool"
    writer = Spool(spool_dir, max_bytes=100 * MIB, retention_seconds=3600)
    for n in range(120):
        writer.append(_items(1, f"file-{n:03d}"))
    expected = sorted(p.name for p in spool_dir.iterdir() if p.name.endswith(".json"))
    log = tmp_path / "sent.log"
    script = tmp_path / "sender.py"
    script.write_text(SENDER)
    senders = [subprocess.Popen([sys.executable, str(script), str(spool_dir), str(log)]) for _ in range(2)]
    try:
        assert [proc.wait(timeout=90) for proc in senders] == [0, 0]
    finally:
        for proc in senders:
            proc.kill()
    events = [line.split() for line in log.read_text().splitlines()]
    # Strictly one file at a time (each start followed by its own end), each once, oldest first.
    assert events == [[kind, name] for name in expected for kind in ("start", "end")]


HOLDER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from prefactor_otel.durability.spool import Spool

    spool = Spool(Path(sys.argv[1]), max_bytes=1 << 20, retention_seconds=3600)
    with spool.sending() as acquired:
        print("HELD" if acquired else "BUSY", flush=True)
        sys.stdin.readline()
    """
)


def _try_sending_elsewhere(spool_dir: Path, script: Path) -> str:
    proc = subprocess.run(
        [sys.executable, str(script), str(spool_dir)], input="\n", capture_output=True, text=True, timeout=60
    )
    return proc.stdout.strip()


def _spool_and_a_holder(tmp_path):
    """A spool, and another process that holds its directory's sender lock until it reads a line."""
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    spool = Spool(tmp_path / "spool", max_bytes=MIB, retention_seconds=3600)
    holder = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "spool")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    return spool, holder, script


def test_one_sender_per_directory_across_processes(tmp_path):
    spool, holder, script = _spool_and_a_holder(tmp_path)
    try:
        assert holder.stdout.readline().strip() == "HELD"
        with spool.sending() as acquired:
            assert not acquired
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.wait(timeout=30) == 0
    finally:
        holder.kill()
    with spool.sending() as acquired:
        assert acquired
        with spool.sending() as again:  # another thread of this process: not a second sender either
            assert not again
        assert _try_sending_elsewhere(tmp_path / "spool", script) == "BUSY"
    assert _try_sending_elsewhere(tmp_path / "spool", script) == "HELD"


@needs_fork
def test_a_forked_child_never_releases_the_parents_sender_lock(tmp_path):
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    spool = Spool(tmp_path / "spool", max_bytes=MIB, retention_seconds=3600)
    with spool.sending() as acquired:
        assert acquired
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                spool.reset_after_fork()
                with spool.sending() as child_acquired:  # the parent is the sender
                    code = 3 if child_acquired else 0
            finally:
                os._exit(code)
        assert _reap([pid], limit_s=30) == [0]
        assert _try_sending_elsewhere(tmp_path / "spool", script) == "BUSY"  # still held after the child left
    assert _try_sending_elsewhere(tmp_path / "spool", script) == "HELD"


WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from prefactor_otel.durability.spool import Spool

    spool = Spool(Path(sys.argv[1]), max_bytes=1 << 20, retention_seconds=3600)
    spool.append([{"_type": "agent_spans/create", "idempotency_key": "other-process", "details": {}}])
    """
)


def test_files_another_process_leaves_behind_are_replayed_by_a_running_one(tmp_path):
    spool = Spool(tmp_path / "spool", max_bytes=MIB, retention_seconds=3600, rescan_seconds=0)
    assert not spool.has_backlog
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    subprocess.run([sys.executable, str(script), str(tmp_path / "spool")], check=True, timeout=60)
    assert spool.has_backlog and not spool.has_own_backlog
    with spool.sending() as acquired:
        assert acquired
        file = spool.take_oldest()
    assert file is not None and file.items[0]["idempotency_key"] == "other-process"


LEASER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from prefactor_otel.durability.spool import Spool

    spool = Spool(Path(sys.argv[1]), max_bytes=1 << 20, retention_seconds=3600)
    file = spool.take_oldest()
    print("LEASED" if file else "NONE", flush=True)
    sys.stdin.readline()
    spool.complete(file)
    """
)


def test_own_backlog_lasts_while_another_process_holds_our_file(tmp_path):
    spool = Spool(tmp_path / "spool", max_bytes=MIB, retention_seconds=3600)
    assert not spool.has_own_backlog
    spool.append(_items(2, "ours"))
    assert spool.has_own_backlog
    script = tmp_path / "leaser.py"
    script.write_text(LEASER)
    leaser = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "spool")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert leaser.stdout.readline().strip() == "LEASED"
        assert spool.has_own_backlog  # leased by another process: still ahead of our live items
        assert spool.take_oldest() is None  # we find it gone from its place...
        assert spool.has_own_backlog  # ...yet it is still ours, still unsent
        leaser.stdin.write("\n")
        leaser.stdin.flush()
        assert leaser.wait(timeout=30) == 0
    finally:
        leaser.kill()
    assert not spool.has_own_backlog


def test_sending_with_a_deadline_waits_for_the_other_sender_to_finish(tmp_path):
    spool, holder, _script = _spool_and_a_holder(tmp_path)
    try:
        assert holder.stdout.readline().strip() == "HELD"
        with spool.sending(deadline=time.monotonic() + 0.3) as acquired:
            assert not acquired  # held throughout: gives up at the deadline
        threading.Timer(0.3, lambda: (holder.stdin.write("\n"), holder.stdin.flush())).start()
        with spool.sending(deadline=time.monotonic() + 60) as acquired:
            assert acquired  # taken as soon as the other sender let go
        assert holder.wait(timeout=30) == 0
    finally:
        holder.kill()


CAPPED_WRITER = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path
    from prefactor_otel.durability import spool as spool_module
    from prefactor_otel.durability import spool_disk
    from prefactor_otel.durability.spool import Spool

    directory, tag = Path(sys.argv[1]), sys.argv[2]
    most = 0
    real = spool_disk.write_atomic

    def measured(path, data, mtime=None):  # the directory's size the moment a file has been written
        global most
        real(path, data, mtime)
        total = 0
        for root, _dirs, files in os.walk(directory):
            for name in files:
                try:
                    total += os.lstat(os.path.join(root, name)).st_size
                except FileNotFoundError:
                    pass
        most = max(most, total)

    spool_module.write_atomic = measured
    spool = Spool(directory, max_bytes=150_000, retention_seconds=3600)
    appended = 0
    for n in range(150):
        items = [
            {"_type": "agent_spans/create", "idempotency_key": f"{tag}-{n}-{i}", "details": {"x": "y" * 600}}
            for i in range(5)
        ]
        appended += 5 * spool.append(items)
    dropped = spool.counters["dropped:spool_full"]
    print(json.dumps({"most": most, "appended": appended, "dropped": dropped}))
    """
)


def test_two_processes_writing_one_directory_never_take_it_over_the_cap_together(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(CAPPED_WRITER)
    spool_dir = tmp_path / "spool"
    writers = [
        subprocess.Popen([sys.executable, str(script), str(spool_dir), tag], stdout=subprocess.PIPE, text=True)
        for tag in ("a", "b")
    ]
    try:
        outputs = [proc.communicate(timeout=120)[0] for proc in writers]
    finally:
        for proc in writers:
            proc.kill()
    reports = [json.loads(out) for out in outputs]
    assert all(report["most"] <= 150_000 for report in reports), reports
    left = 0
    for path in spool_dir.iterdir():
        if path.name.endswith(".json"):
            left += len(json.loads(path.read_bytes())["items"])
    # Every span written is still there or was dropped to make room (counted by whichever process dropped it).
    assert left + sum(report["dropped"] for report in reports) == sum(report["appended"] for report in reports)
