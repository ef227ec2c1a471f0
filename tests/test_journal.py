"""The run journal: runs a dead process left open are found by a later one. Real processes, real files, real locks."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from prefactor_otel.durability.journal import RunJournal
from prefactor_otel.durability.journal_adoption import AbandonedRun

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="the journal needs fcntl")

HEADER = "# prefactor-otel run journal v1\n"

# A process that records runs, says where its journal is, then waits to be killed.
_RECORDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from prefactor_otel.durability.journal import RunJournal

    journal = RunJournal(Path(sys.argv[1]))
    journal.record({"run-a": 1_000, "run-b": 2_000})
    journal.record({"run-a": 3_000, "run-c": 1_700_000_000_123_456_789})
    journal.record({"run-b": None, "run-a": 2_500})  # an older time never moves a run back
    print(journal.path.name, flush=True)
    time.sleep(120)
    """
)

# A process that records a run, forks a child that outlives it, then waits to be killed.
_FORKING_RECORDER = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from prefactor_otel.durability.journal import RunJournal

    journal = RunJournal(Path(sys.argv[1]))
    journal.record({"parent-run": 5})
    ready_read, ready_write = os.pipe()
    child = os.fork()
    if child == 0:  # a worker that never traces: it must not keep the parent's journal locked
        os.write(ready_write, b"x")  # fork hooks have run once os.fork() returns here
        time.sleep(120)
        os._exit(0)
    os.read(ready_read, 1)
    print(journal.path.name, child, flush=True)
    time.sleep(120)
    """
)

# A process whose journal writes start failing (a file size limit, like a full disk), then recover.
_FAILING_RECORDER = textwrap.dedent(
    """
    import resource, signal, sys, time
    from pathlib import Path
    from prefactor_otel.durability.journal import RunJournal

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
    journal = RunJournal(Path(sys.argv[1]), sync_opens=False)
    hard_limit = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
    resource.setrlimit(resource.RLIMIT_FSIZE, (10, hard_limit))
    journal.record({"early-run": 1})  # the journal cannot even be created: kept in memory, created later
    assert journal.path is None
    resource.setrlimit(resource.RLIMIT_FSIZE, (2_000, hard_limit))
    for run in range(100):  # ~45 bytes a line: writes fail part-way through, and from then on
        journal.record({f"run-{run:036d}": run})
    failed_writes = journal.counters["journal_write_errors"]
    for run in range(97):  # as runs end, the journal fits again and is rewritten from memory
        journal.record({f"run-{run:036d}": None})
    print(failed_writes, journal.counters["journal_write_errors"] - failed_writes, flush=True)
    time.sleep(120)
    """
)

# A process that takes the abandoned journals, says how many runs it holds, then waits to be killed.
_TAKER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from prefactor_otel.durability.journal import RunJournal

    taken = RunJournal(Path(sys.argv[1])).take_abandoned()
    print(sum(len(journal.runs) for journal in taken), flush=True)
    time.sleep(120)
    """
)


@contextmanager
def _process(script: str, directory: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """Run `script` in a new interpreter; yields it and the first line it printed. Always killed at the end."""
    proc = subprocess.Popen([sys.executable, "-c", script, str(directory)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        first_line = proc.stdout.readline().strip()  # "" if the process died before printing
        assert first_line, f"the helper process failed (exit code {proc.poll()})"
        yield proc, first_line
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=60)
        if proc.stdout is not None:
            proc.stdout.close()


def _kill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL


def _dead_journal(directory: Path, body: str | bytes, *, pid: int = 999_999) -> Path:
    """A journal file no process holds: what a process leaves behind when it dies."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"runs-{pid}-0badc0de.journal"
    path.write_bytes(body if isinstance(body, bytes) else body.encode())
    return path


def _journal_lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_runs_of_a_killed_process_are_taken_with_their_last_activity(tmp_path):
    taker = RunJournal(tmp_path)
    with _process(_RECORDER, tmp_path) as (proc, journal_name):
        assert (tmp_path / journal_name).exists()
        assert taker.take_abandoned() == []  # alive: its lock is held
        _kill(proc)
        taken = taker.take_abandoned()
    assert [journal.path.name for journal in taken] == [journal_name]
    assert taken[0].runs == [AbandonedRun("run-a", 3_000), AbandonedRun("run-c", 1_700_000_000_123_456_789)]
    assert taken[0].malformed_lines == 0 and not taken[0].truncated
    assert RunJournal(tmp_path).take_abandoned() == []  # held by its taker until discarded
    taker.discard(taken[0])
    assert not (tmp_path / journal_name).exists()
    assert RunJournal(tmp_path).take_abandoned() == []
    assert taker.counters["abandoned_runs_taken"] == 2


@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="needs RLIMIT_FSIZE")
def test_failed_writes_are_repaired_from_memory(tmp_path):
    with _process(_FAILING_RECORDER, tmp_path) as (proc, printed):
        failed_while_opening, failed_while_closing = map(int, printed.split())
        _kill(proc)
    assert failed_while_opening > 0 and failed_while_closing > 0  # the limit did bite, until runs ended
    taken = RunJournal(tmp_path).take_abandoned()
    expected = [AbandonedRun("early-run", 1), *(AbandonedRun(f"run-{run:036d}", run) for run in (97, 98, 99))]
    assert [journal.runs for journal in taken] == [expected]
    assert taken[0].malformed_lines == 0  # the half-written line was rewritten away


def test_a_journal_is_taken_again_when_its_taker_dies_before_discarding(tmp_path):
    path = _dead_journal(tmp_path, HEADER + "run-x 42\n")
    with _process(_TAKER, tmp_path) as (proc, runs_taken):
        assert runs_taken == "1"
        assert RunJournal(tmp_path).take_abandoned() == []  # the taker is alive and holds it
        _kill(proc)
    taken = RunJournal(tmp_path).take_abandoned()
    assert [(journal.path, journal.runs) for journal in taken] == [(path, [AbandonedRun("run-x", 42)])]


def test_the_lock_not_the_pid_says_whether_the_owner_is_alive(tmp_path):
    live = RunJournal(tmp_path)
    live.record({"live-run": 5})
    # Another journal object in this same process: flock locks of separate opens conflict, so it is not taken.
    assert RunJournal(tmp_path).take_abandoned() == []
    # A dead process's journal whose pid now belongs to a live process (ours): unlocked, so it is taken.
    reused = _dead_journal(tmp_path, HEADER + "old-run 7\n", pid=os.getpid())
    taken = RunJournal(tmp_path).take_abandoned()
    assert [(journal.path, journal.runs) for journal in taken] == [(reused, [AbandonedRun("old-run", 7)])]
    assert _journal_lines(live.path) == [HEADER.strip(), "live-run 5"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_writes_its_own_journal_and_leaves_the_parents_lock(tmp_path):
    journal = RunJournal(tmp_path)
    journal.record({"parent-run": 10})
    parent_path = journal.path
    assert parent_path is not None

    def child(body: Callable[[], int]) -> int:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = body()
            finally:
                os._exit(code)
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])

    def killed_worker() -> int:  # records a run and ends without closing anything, like a killed worker
        journal.record({"child-run": 20})
        return 0 if journal.path not in (None, parent_path) else 2

    def clean_worker() -> int:  # a run of its own, finished; "ends" the parent's run; closes cleanly
        journal.record({"child2-run": 30})
        journal.record({"child2-run": None, "parent-run": None})
        return 0 if journal.close() == 0 else 2

    assert child(killed_worker) == 0
    assert child(clean_worker) == 0
    # The parent's journal is untouched by both children, still exists and is still locked by the parent.
    assert _journal_lines(parent_path) == [HEADER.strip(), "parent-run 10"]
    taken = RunJournal(tmp_path).take_abandoned()
    assert [journal.runs for journal in taken] == [[AbandonedRun("child-run", 20)]]
    assert taken[0].path != parent_path
    journal.record({"parent-run": 11})
    assert _journal_lines(parent_path)[-1] == "parent-run 11"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_child_that_outlives_its_killed_parent_does_not_keep_the_parents_runs_locked(tmp_path):
    with _process(_FORKING_RECORDER, tmp_path) as (proc, printed):
        journal_name, child = printed.split()
        try:
            _kill(proc)
            os.kill(int(child), 0)  # the child is still running
            taken = RunJournal(tmp_path).take_abandoned()
        finally:
            os.kill(int(child), signal.SIGKILL)  # our own grandchild, by its pid
    assert [(journal.path.name, journal.runs) for journal in taken] == [(journal_name, [AbandonedRun("parent-run", 5)])]


_POOL_JOURNAL: RunJournal | None = None


def _pool_task(activity_ns: int) -> str:
    assert _POOL_JOURNAL is not None
    _POOL_JOURNAL.record({f"worker-run-{os.getpid()}": activity_ns})
    return str(_POOL_JOURNAL.path)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs the fork start method")
def test_runs_of_a_terminated_pool_worker_are_taken(tmp_path):
    global _POOL_JOURNAL
    _POOL_JOURNAL = journal = RunJournal(tmp_path)
    journal.record({"parent-run": 1})
    try:
        pool = multiprocessing.get_context("fork").Pool(1)
        try:
            worker_journal = pool.apply_async(_pool_task, (77,)).get(timeout=60)
        finally:
            pool.terminate()  # SIGTERM: the worker dies without any clean-up
            pool.join()
    finally:
        _POOL_JOURNAL = None
    assert worker_journal != str(journal.path)
    taken = RunJournal(tmp_path).take_abandoned()
    assert [str(t.path) for t in taken] == [worker_journal]
    assert [run.last_activity_ns for run in taken[0].runs] == [77]
    assert taken[0].runs[0].instance_id.startswith("worker-run-")
    assert _journal_lines(journal.path) == [HEADER.strip(), "parent-run 1"]


def test_a_half_written_last_line_and_malformed_lines_are_skipped(tmp_path):
    body = (
        HEADER.encode()
        + b"run-a 100\n"
        + b"not a record at all\n"
        + b"run-b 200\n"
        + b"\x00\x00\x00\x00\n"  # what an OS crash can leave where a line was
        + b"run-%s 5\n" % (b"x" * 5000)  # an over-long line, skipped whole
        + b"run-a -\n"
        + b"run-d 400\n"
        + b"run-c 3"  # the crash came mid-write: "run-c 300\n" never completed
    )
    _dead_journal(tmp_path, body)
    taken = RunJournal(tmp_path).take_abandoned()
    assert [journal.runs for journal in taken] == [[AbandonedRun("run-b", 200), AbandonedRun("run-d", 400)]]
    assert taken[0].malformed_lines == 4


def test_a_journal_past_the_read_bound_is_read_up_to_it_and_said_to_be_truncated(tmp_path, caplog):
    _dead_journal(tmp_path, HEADER + "".join(f"run-{i:05d} {i}\n" for i in range(10_000)))
    with caplog.at_level(logging.WARNING, logger="prefactor_otel"):
        taken = RunJournal(tmp_path, max_read_bytes=4096).take_abandoned()
    assert len(taken) == 1 and taken[0].truncated
    assert 0 < len(taken[0].runs) < 10_000
    assert taken[0].runs[0] == AbandonedRun("run-00000", 0)
    assert "runs past that point stay active" in caplog.text


def test_compaction_keeps_exactly_the_open_runs(tmp_path):
    journal = RunJournal(tmp_path, sync_opens=False)
    journal.record({"long-run": 1})
    compacted_after = None
    for round_no in range(1, 2_000):  # a steady service: each delivery round ends ten runs and opens ten
        ended = {f"run-{round_no - 1}-{i}": None for i in range(10)}
        journal.record({**ended, **{f"run-{round_no}-{i}": round_no for i in range(10)}, "long-run": round_no})
        if compacted_after is None and journal.counters["journal_rewrites"]:
            compacted_after = round_no
            path = journal.path
            assert path is not None
            assert _journal_lines(path) == [
                HEADER.strip(),
                f"long-run {round_no}",
                *(f"run-{round_no}-{i} {round_no}" for i in range(10)),
            ]
            assert RunJournal(tmp_path).take_abandoned() == []  # the compacted file is locked like the first
    assert compacted_after is not None
    assert journal.path == path and len(_journal_lines(path)) <= 4097  # bounded, while 2,000 rounds wrote 42,000
    # What a later process would find if this one died now: exactly the open runs.
    _dead_journal(tmp_path, path.read_bytes())
    taken = RunJournal(tmp_path).take_abandoned()
    assert sorted(run[:2] for run in taken[0].runs) == sorted(
        [("long-run", 1999), *((f"run-1999-{i}", 1999) for i in range(10))]
    )


def test_close_removes_the_journal_when_every_run_ended(tmp_path):
    journal = RunJournal(tmp_path)
    journal.record({"run-a": 1, "run-b": 2})
    path = journal.path
    assert path is not None and path.exists()
    journal.record({"run-a": None, "run-b": None})
    assert journal.close() == 0
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []
    journal.record({"run-after-close": 3})  # a late delivery still gets a journal (a new one)
    assert journal.path not in (None, path)
    assert _journal_lines(journal.path) == [HEADER.strip(), "run-after-close 3"]
    # Runs still open at close() stay in the journal, locked while this process lives (a request may still be
    # in flight on another thread); after it exits, a later process takes them.
    assert journal.close() == 1
    assert journal.path is not None and journal.path.exists()
    assert RunJournal(tmp_path).take_abandoned() == []
    journal.record({"run-after-close": None})  # the in-flight finish landed after all
    assert journal.close() == 0 and list(tmp_path.iterdir()) == []


def test_bad_updates_are_counted_and_never_written(tmp_path, caplog):
    journal = RunJournal(tmp_path)
    with caplog.at_level(logging.WARNING, logger="prefactor_otel"):
        journal.record(
            {
                "good-run": 5,
                "has space": 6,
                "line\nbreak": 6,
                "negative": -1,
                "flag": True,
                "text": "7",  # type: ignore[dict-item]
                3: 4,  # type: ignore[dict-item]
            }
        )
    assert _journal_lines(journal.path) == [HEADER.strip(), "good-run 5"]
    assert journal.counters["records_rejected"] == 6
    assert "not recorded" in caplog.text


def test_an_unwritable_directory_disables_the_journal_with_one_warning(tmp_path, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with caplog.at_level(logging.WARNING, logger="prefactor_otel"):
        journal = RunJournal(blocker / "spool")
        for i in range(5):
            journal.record({f"run-{i}": i})
        assert journal.take_abandoned() == []
        assert journal.close() == 0
    assert not journal.enabled and journal.path is None
    assert len(caplog.records) == 1 and "run journal disabled" in caplog.records[0].getMessage()


def test_empty_journals_and_stale_temporary_files_of_dead_processes_are_removed(tmp_path):
    empty = _dead_journal(tmp_path, HEADER + "run-a 1\nrun-a -\n")
    stale = tmp_path / ".runs-999999-0badc0de.journal.tmp"
    stale.write_text(HEADER)
    old = time.time() - 3600
    os.utime(stale, (old, old))
    fresh = tmp_path / ".runs-999998-0badc0de.journal.tmp"  # may be a creation in progress: left alone
    fresh.write_text(HEADER)
    assert RunJournal(tmp_path).take_abandoned() == []
    assert not empty.exists() and not stale.exists() and fresh.exists()


def test_live_spans_are_journaled_with_their_run_and_closed_with_their_finish_or_their_run(tmp_path):
    journal = RunJournal(tmp_path, sync_opens=False)
    journal.record({"run-a": 10, "run-b": 20}, {"span-a1": ("run-a", 11), "span-a2": ("run-a", 12)})
    journal.record({}, {"span-b1": ("run-b", 21), "span-a1": None})  # span-a1 finished
    journal.record({}, {"span-x": ("run-not-ours", 5)})  # a run this process does not finish: not journaled
    journal.record({"run-b": None}, {})  # the run is closed: so are its spans
    path = journal.path
    assert path is not None
    _dead_journal(tmp_path, path.read_bytes())
    (taken,) = RunJournal(tmp_path).take_abandoned()
    assert taken.runs == [AbandonedRun("run-a", 10, (("span-a2", 12),))]
    assert taken.malformed_lines == 0


def test_compaction_keeps_the_open_live_spans_and_their_number_is_bounded(tmp_path, monkeypatch):
    import prefactor_otel.durability.journal as journal_module

    monkeypatch.setattr(journal_module, "MAX_LIVE_SPANS", 3)
    journal = RunJournal(tmp_path, sync_opens=False)
    journal.record({"run-a": 1}, {f"span-{i}": ("run-a", i) for i in range(5)})
    assert journal.counters["live_spans_not_journaled"] == 2
    for round_no in range(2, 2_200):  # enough closed lines to compact
        journal.record({f"run-{round_no}": round_no, f"run-{round_no - 1}": None})
    assert journal.counters["journal_rewrites"]
    path = journal.path
    assert path is not None
    _dead_journal(tmp_path, path.read_bytes())
    taken = {run.instance_id: run for run in RunJournal(tmp_path).take_abandoned()[0].runs}
    assert taken["run-a"].live_spans == (("span-0", 0), ("span-1", 1), ("span-2", 2))
