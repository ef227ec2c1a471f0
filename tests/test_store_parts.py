"""The parts the spool, the run journal and the transport are composed of, each driven alone: the spool's
`DirectoryWatch`, the journal's `JournalAdoption`, the transport's `AnswerReader`."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from prefactor_otel.durability.journal_adoption import AbandonedRun, JournalAdoption
from prefactor_otel.durability.journal_file import HEADER
from prefactor_otel.durability.spool_disk import DirectoryWatch
from prefactor_otel.transport.answers import AnswerReader, ResponseTooLarge
from prefactor_otel.transport.outcomes import NOT_PROCESSED, SUCCESS


def test_the_directory_watch_sees_a_file_added_removed_or_renamed_since_it_looked(tmp_path: Path) -> None:
    watch = DirectoryWatch(tmp_path)
    assert watch.changed()  # never looked: unknown is a change
    (tmp_path / "a").write_bytes(b"1")
    watch.note()
    assert not watch.changed()
    (tmp_path / "a").write_bytes(b"22")  # a file growing in place is not a change of the directory
    assert not watch.changed()
    (tmp_path / "b").write_bytes(b"")
    assert watch.changed()
    watch.note()
    os.rename(tmp_path / "b", tmp_path / "c")
    assert watch.changed()
    watch.note()
    os.unlink(tmp_path / "c")
    assert watch.changed()


def _journal_of_an_ended_process(directory: Path, name: str, lines: str) -> Path:
    path = directory / name
    path.write_bytes(HEADER + lines.encode("ascii"))
    return path


def test_the_adoption_takes_unlocked_journals_but_never_its_owners_and_counts_into_the_owners_counters(
    tmp_path: Path,
) -> None:
    ended = _journal_of_an_ended_process(tmp_path, "runs-1-0000000a.journal", "run-a 10\nrun-b 20\nrun-b -\n")
    own = _journal_of_an_ended_process(tmp_path, "runs-2-0000000b.journal", "run-own 5\n")
    empty = _journal_of_an_ended_process(tmp_path, "runs-3-0000000c.journal", "run-c 1\nrun-c -\n")
    counters: Counter[str] = Counter()
    adoption = JournalAdoption(tmp_path, max_read_bytes=1 << 20, own_journal=lambda: own.name, counters=counters)

    (taken,) = adoption.take()
    assert (taken.path, taken.runs) == (ended, [AbandonedRun("run-a", 10)])
    assert not empty.exists() and own.exists()  # a journal with no open run is deleted; the owner's is never read
    assert adoption.take() == []  # held by this process until discarded or released
    adoption.release(taken)
    (again,) = adoption.take()
    adoption.discard(again)
    assert not ended.exists()
    assert counters["journals_taken"] == 2 and counters["abandoned_runs_taken"] == 2
    assert counters["journals_removed_empty"] == 1 and counters["journals_discarded"] == 1


def test_release_all_gives_back_every_journal_still_taken(tmp_path: Path) -> None:
    ended = _journal_of_an_ended_process(tmp_path, "runs-1-0000000a.journal", "run-a 10\n")
    adoption = JournalAdoption(tmp_path, max_read_bytes=1 << 20, own_journal=lambda: None, counters=Counter())
    assert len(adoption.take()) == 1
    adoption.release_all()
    (taken,) = adoption.take()
    assert taken.path == ended


def test_the_answer_reader_latches_the_first_refusal_of_the_token() -> None:
    counters: Counter[str] = Counter()
    reader = AnswerReader(counters)
    assert reader.status_result(200, b"") is None
    assert not reader.auth_failed and reader.auth_status is None
    first = reader.status_result(403, b"")
    assert first is not None and (first.error, first.status_code) == ("auth", 403)
    later = reader.status_result(401, b"")
    assert later is not None and later.error == "auth"
    assert reader.auth_failed and reader.auth_status == 403  # the first refusal is the one reported


def test_the_answer_reader_tells_retryable_final_and_rejected_answers_apart() -> None:
    counters: Counter[str] = Counter()
    reader = AnswerReader(counters)
    assert reader.status_result(503, b"") is None  # retryable
    assert counters["http_503"] == 1
    redirect = reader.status_result(302, b"")
    assert redirect is not None and redirect.error == "redirect"
    too_large = reader.status_result(413, b"")
    assert too_large is not None and too_large.error == "too_large"
    body = b'{"code": "bad_request", "message": "no"}'
    rejected = reader.status_result(400, body)
    assert rejected is not None and (rejected.error, rejected.code, rejected.message) == (
        "rejected",
        "bad_request",
        "no",
    )
    reader.count_unreadable(ResponseTooLarge("declared 9999999999 bytes"))
    assert counters["contract_errors"] == 1 and counters["outcome:response_too_large"] == 1
    assert not reader.auth_failed


def test_the_answer_reader_reads_each_items_outcome_and_what_is_missing_was_not_processed() -> None:
    counters: Counter[str] = Counter()
    reader = AnswerReader(counters)
    body = b'{"outputs": {"k1": {"status": "success"}, "k2": {"status": "error", "code": "invalid", "message": "m"}}}'
    result = reader.bulk_outcomes(200, body, ["k1", "k2", "k3"])
    assert result is not None
    assert result.outcomes["k1"] == SUCCESS and result.outcomes["k3"] == NOT_PROCESSED
    assert (result.outcomes["k2"].code, result.outcomes["k2"].message) == ("invalid", "m")
    assert reader.bulk_outcomes(200, b"{}", ["k1"]) is None  # off contract: retried
    assert counters["contract_errors"] == 1


def test_after_a_fork_the_reader_counts_into_the_new_counters_and_a_refused_token_stays_refused() -> None:
    reader = AnswerReader(Counter())
    reader.status_result(401, b"")
    child_counters: Counter[str] = Counter()
    reader.reset_after_fork(child_counters)
    reader.status_result(503, b"")
    assert child_counters["http_503"] == 1 and reader.auth_failed and reader.auth_status == 401
