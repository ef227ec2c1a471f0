"""Durability: what cannot be delivered now waits on disk, and is delivered from there first, across restarts.

`Backlog` joins the spool (spool.py: undelivered bulk items, oldest first) and the journal of open runs
(journal.py) to the delivery path:
- `spill` hands everything the planner has ready to the spool; the planner then treats it as delivered, so the
  run's later items follow it into the spool or, once the backlog is gone, go live behind it.
- `replay` delivers spool files oldest first, each one through `Delivery.drain` with a `SpooledSource`: the same
  chunking, fallbacks and outcome rules as live items. After a failure it backs off (1 s doubling to 30 s).
- `record_runs` writes to the journal which runs this process has opened (before their register is sent) and
  closed, with the live spans each has `active` in Prefactor; `adopt_abandoned` finds the journals of processes
  that died with runs open (SIGKILL, OOM, a pool worker terminated) and puts a `failed` finish for each of their
  live spans (error `SpanNotEnded`), then for each run, into the spool: no run or span stays `active`.
- the account partition learnt from the server is kept beside the spool, so a later process without an agent id
  can plan (and spool) its spans while the API is down. It is kept per token (`partition-<digest>`: a digest of
  the token, never the token), since one directory (one API URL) may serve several accounts one after the other;
  the pipeline checks a saved one with the server before trusting it (pipeline/partition.py). Before any partition
  was ever learnt (a deployment token, the API down since the first start), bulk items cannot be built at all: at
  shutdown the mapped span records themselves are kept (`keep_records`, `records-*.jsonl`) and the next process
  plans them.
- spool files of another account (their ids in another partition than `partition`, the account's as the server
  confirmed it) are never sent: `replay` sets them aside in `other-account-<partition>/` (outside the spool's
  queue), and `put_back` returns them to the spool once a process of that account uses the directory again.
  Set-aside files past the spool's retention are removed, counted (docs/reliability.md, "Another account").

Threads: `replay` runs on the thread holding the exporter's send lock. `spill` runs either there or, when
shutdown could not get the send lock in time, on the shutting-down thread; it takes the exporter's state lock
around the planner, and the spool serialises its own writers. The backoff fields are written by the sending
thread only. `record_runs` runs under the exporter's state lock (the journal has its own leaf lock). `partition`
is written by the sending thread only (the pipeline, when the server confirmed the partition) and read by `replay`
on that thread; `put_back` runs there too.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from prefactor_otel._logging import RateLimitedLog, logger
from prefactor_otel.durability.journal import RunJournal
from prefactor_otel.durability.spool import Spool
from prefactor_otel.durability.spool_disk import base_name
from prefactor_otel.durability.spool_format import CorruptFile, decode
from prefactor_otel.mapping.payload import SpanRecord
from prefactor_otel.mapping.values import RawJson
from prefactor_otel.model import ids
from prefactor_otel.pipeline.delivery import Delivery, SpooledSource
from prefactor_otel.pipeline.items import PlannedItem, finish_item, unended_span_finish_item
from prefactor_otel.pipeline.planner import Planner
from prefactor_otel.transport.wire import encode_item

BACKOFF_FIRST_S = 1.0
BACKOFF_CAP_S = 30.0
_LEGACY_PARTITION_FILE = "partition"  # before session six: one file for every token (removed when one is saved)
PARKED_PREFIX = "other-account-"  # + partition: spool files of that account, set aside (never sent elsewhere)


class Backlog:
    def __init__(
        self, spool: Spool, journal: RunJournal | None = None, *, retention_seconds: float = 24 * 3600.0
    ) -> None:
        self.spool = spool
        self._retention = retention_seconds  # the spool's: what waits aside for another account is kept as long
        self.journal = journal if journal is not None and journal.enabled else None
        self.retry_at = 0.0
        self._backoff = BACKOFF_FIRST_S
        self.counters: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()
        self.actions_dropped: Counter[str] = Counter()
        # The account's partition as the server confirmed it (or an agent id gives it): spool files in another
        # are set aside, not sent. None: not known yet, nothing is set aside.
        self.partition: int | None = None
        self._log = RateLimitedLog()

    def reset_after_fork(self) -> None:
        self.counters, self.dropped, self.actions_dropped = Counter(), Counter(), Counter()
        self.retry_at = 0.0
        self._backoff = BACKOFF_FIRST_S
        self._log.reset_after_fork()
        reset = getattr(self.spool, "reset_after_fork", None)
        if reset is not None:
            reset()
        if self.journal is not None:
            self.journal.reset_after_fork()

    @property
    def has_backlog(self) -> bool:
        return self.spool.has_backlog

    def retry_due(self, now: float) -> bool:
        return now >= self.retry_at

    # ------------------------------------------------------------------ writing

    def spill(self, planner: Planner, lock: threading.Lock, *, flush: bool, shutdown: bool) -> int:
        """Hand everything ready to the spool, in plan order. Returns the number of items written."""
        with lock:
            items = planner.plan(time.monotonic(), flush=flush, shutdown=shutdown)
            if not items:
                return 0
            # Register items as dicts: the spool stores their large shared schema set once per file.
            encoded: list[dict[str, Any] | bytes] = [_spooled(item) for item in items]
            if not self.spool.append(encoded):
                return 0
            planner.handoff(items, time.monotonic())
            self.record_runs(planner.take_run_changes(), planner.take_live_span_changes())
        self.retry_at = max(self.retry_at, time.monotonic() + self._backoff)
        return len(items)

    # ------------------------------------------------------------------ reading

    @property
    def has_own_backlog(self) -> bool:
        """Files this process wrote are still on disk: its live items must queue behind them (a run's finish
        must not overtake its register, whichever process sends the file)."""
        return self.spool.has_own_backlog

    def replay(self, delivery: Delivery, deadline: float, *, wait: bool = False) -> bool:
        """Deliver spool files oldest first, as the directory's one sender. True once the spool is empty; False
        when another process is the sender (`wait`: until the deadline), or on failure (then backing off)."""
        with self.spool.sending(deadline if wait else None) as acquired:
            return acquired and self._replay_files(delivery, deadline)

    def _replay_files(self, delivery: Delivery, deadline: float) -> bool:
        spool = self.spool
        while spool.has_backlog:
            if time.monotonic() >= deadline:
                return False
            file = spool.take_oldest(deadline)
            if file is None:
                break
            other = _partition_of(file.items)
            if self.partition is not None and other is not None and other != self.partition:
                self._set_aside(file.path, other)  # another account's: its API would refuse every item
                spool.complete(file)
                continue
            source = SpooledSource(file.items)
            delivered = delivery.drain(source, deadline)
            self._count(source)
            if not delivered:  # what is left keeps its place at the head of the spool
                spool.give_back(file, [item.body for item in source.pending])
                self._backoff = min(BACKOFF_CAP_S, max(BACKOFF_FIRST_S, self._backoff * 2))
                self.retry_at = time.monotonic() + self._backoff
                return False
            spool.complete(file)
        self._backoff = BACKOFF_FIRST_S
        return True

    def _count(self, source: SpooledSource) -> None:
        self.counters.update(source.counters)
        self.dropped.update(source.dropped)
        self.actions_dropped.update(source.actions_dropped)

    # ------------------------------------------------------------------ runs left open

    def record_runs(
        self, changes: dict[str, int | None], live_spans: dict[str, tuple[str, int] | None] | None = None
    ) -> None:
        if (changes or live_spans) and self.journal is not None:
            self.journal.record(changes, live_spans)

    def adopt_abandoned(self) -> int:
        """Finish (as `failed`, at their last known activity) the runs of dead processes: into the spool first,
        then the dead journal is discarded. Returns the number of runs adopted."""
        journal = self.journal
        if journal is None:
            return 0
        adopted = 0
        for abandoned in journal.take_abandoned():
            items: list[dict[str, Any] | bytes] = []
            for run in abandoned.runs:
                # Its live spans first (a finished run accepts no span finish), each ended no earlier than it
                # started; the run no earlier than any of them.
                end_ns = max([run.last_activity_ns, *(start_ns for _, start_ns in run.live_spans)])
                why = "the process ended (killed) before this span ended"
                items.extend(unended_span_finish_item(span_id, end_ns, why) for span_id, _ in run.live_spans)
                items.append(finish_item(run.instance_id, "failed", end_ns))
            if items and not self.spool.append(items):
                journal.release(abandoned)  # a later attempt (or process) takes it again
                continue
            journal.discard(abandoned)
            adopted += len(abandoned.runs)
            self.counters["live_spans_adopted_from_dead_processes"] += len(items) - len(abandoned.runs)
        if adopted:
            self.counters["runs_adopted_from_dead_processes"] += adopted
            logger.warning(
                "Prefactor: %d run(s) left open by a process that ended without finishing them will be finished "
                "as failed",
                adopted,
            )
        return adopted

    def close(self) -> int:
        """At shutdown: the journal is removed when no run is left open; returns the runs still open."""
        return self.journal.close() if self.journal is not None else 0

    # ------------------------------------------------------------------ span records without a partition

    def keep_records(self, records: list[SpanRecord]) -> bool:
        """Write mapped span records (not yet bulk items: no partition to build their ids) for the next process."""
        lines = [_record_line(record) for record in records]
        path = self.spool.directory / f"records-{time.time_ns():020d}-{os.getpid()}.jsonl"
        tmp = path.with_name(f".tmp-p{os.getpid()}-{path.name}")
        try:
            with open(tmp, "wb") as fh:
                fh.write(b"\n".join(lines) + b"\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            logger.warning("Prefactor: cannot keep %d span(s) on disk (%s)", len(records), type(exc).__name__)
            with contextlib.suppress(OSError):
                tmp.unlink()
            return False
        self.counters["spans_kept_unplanned"] += len(records)
        return True

    def take_records(self, limit: int) -> list[SpanRecord]:
        """The records earlier processes kept, oldest first, at most `limit` (the files read are removed)."""
        records: list[SpanRecord] = []
        resources: dict[str, dict[str, Any]] = {}  # one dict per distinct Resource, as the SDK shares them
        for path in sorted(self.spool.directory.glob("records-*.jsonl")):
            if len(records) >= limit:
                break
            try:
                data = path.read_bytes()
                path.unlink()
            except OSError:
                continue
            for line in data.splitlines():
                try:
                    records.append(_record_from_line(line, resources))
                except (ValueError, KeyError, TypeError):
                    self.dropped["spool_corrupt"] += 1
        return records[:limit]

    # ------------------------------------------------------------------ the account partition

    def load_partition(self, token: str) -> int | None:
        """The partition saved for this token (a digest of it names the file), or None."""
        with contextlib.suppress(OSError, ValueError):
            partition = int((self.spool.directory / partition_file_name(token)).read_text().strip())
            if 0 <= partition <= ids.MAX_PARTITION:
                return partition
        return None

    def save_partition(self, partition: int, token: str) -> None:
        directory = self.spool.directory
        path = directory / partition_file_name(token)
        tmp = path.with_name(f".tmp-partition-{os.getpid()}")
        with contextlib.suppress(OSError):
            tmp.write_text(str(partition))
            os.replace(tmp, path)
            # The file of every token before: whichever token reads it next may be another account's.
            (directory / _LEGACY_PARTITION_FILE).unlink(missing_ok=True)

    def _set_aside(self, lease: Path, partition: int) -> None:
        """A leased spool file of another account: moved out of the spool's queue, kept for that account."""
        directory = self.spool.directory / f"{PARKED_PREFIX}{partition}"
        try:
            directory.mkdir(mode=0o700, exist_ok=True)
            self._remove_expired(directory)
            os.replace(lease, directory / base_name(lease.name))
        except OSError as exc:
            # It cannot wait aside: it is not sent either (its API is not this one), so it goes, counted.
            with contextlib.suppress(OSError):
                lease.unlink()
            self.counters["partition:spool_files_removed"] += 1
            self._log.log(
                logging.WARNING,
                "set_aside",
                "Prefactor: a spool file of another account (partition %d) could not be set aside (%s): removed",
                partition,
                type(exc).__name__,
            )
            return
        self.counters["partition:spool_files_set_aside"] += 1
        self._log.log(
            logging.WARNING,
            "set_aside",
            "Prefactor: spooled spans of another account (PFID partition %d; this token's account is in %d) are "
            "not sent here: set aside in %s, sent when a process of that account uses this directory again, removed "
            "after the spool retention",
            partition,
            self.partition,
            directory,
        )

    def _remove_expired(self, directory: Path) -> None:
        oldest = time.time() - self._retention
        for path in directory.glob("*.json"):
            with contextlib.suppress(OSError):
                if path.stat().st_mtime < oldest:
                    path.unlink()
                    self.counters["partition:spool_files_expired_aside"] += 1

    def put_back(self, partition: int) -> int:
        """The files set aside for this account go back to the spool (oldest first), to be replayed. Returns how
        many."""
        directory = self.spool.directory / f"{PARKED_PREFIX}{partition}"
        if not directory.is_dir():
            return 0
        self._remove_expired(directory)
        returned = 0
        for path in sorted(directory.glob("*.json")):
            try:
                items = decode(path.read_bytes())
            except (OSError, CorruptFile):
                self.counters["partition:spool_files_unreadable_aside"] += 1
                with contextlib.suppress(OSError):
                    path.unlink()
                continue
            if not self.spool.append(list(items)):
                break  # the spool is full: the rest waits aside for a later process
            with contextlib.suppress(OSError):
                path.unlink()
            returned += 1
        with contextlib.suppress(OSError):
            directory.rmdir()  # only once empty
        if returned:
            self.counters["partition:spool_files_put_back"] += returned
            logger.info(
                "Prefactor: %d spool file(s) of this account set aside by a process of another one are sent now",
                returned,
            )
        return returned


def partition_file_name(token: str) -> str:
    """The file of the partition saved for one token: named by a digest of the token (the token is never written
    anywhere), so another token -- another account, or this one's rotated token -- learns its own (one request)."""
    digest = hashlib.sha256(b"prefactor-otel account partition\x1f" + token.encode("utf-8", "surrogatepass"))
    return f"partition-{digest.hexdigest()[:24]}"


def _spooled(item: PlannedItem) -> dict[str, Any] | bytes:
    """What the spool stores of a planned item: its bytes, or a register as its dict (the spool writes the shared
    schema set once per file), or any other dict encoded."""
    data = item.data
    if isinstance(data, bytes) or "agent_schema_version" in data:
        return data
    return encode_item(data)


def _partition_of(items: list[dict[str, Any]]) -> int | None:
    """The account partition of a spool file's items: of the first id found (a file is one process's, one account's)."""
    for item in items:
        details = item.get("details")
        for value in (
            item.get("id"),
            item.get("agent_instance_id"),
            item.get("agent_span_id"),
            details.get("id") if isinstance(details, dict) else None,
        ):
            if isinstance(value, str) and ids.is_pfid(value):
                return ids.extract_partition(value)
    return None


def _record_line(record: SpanRecord) -> bytes:
    def embedded(payload: Any) -> Any:
        return json.loads(payload) if isinstance(payload, bytes) else payload

    return json.dumps(
        {
            "trace_id": record.trace_id,
            "span_id": record.span_id,
            "parent_span_id": record.parent_span_id,
            "parent_is_remote": record.parent_is_remote,
            "name": record.name,
            "schema_name": record.schema_name,
            "status": record.status,
            "start": record.start_time_ns,
            "end": record.end_time_ns,
            "payload": embedded(record.payload),
            "result_payload": embedded(record.result_payload),
            "scope": record.scope,
            "resource": dict(record.resource),
            "convention": record.convention,
        },
        ensure_ascii=False,
        separators=(",", ":"),
        default=str,
    ).encode("utf-8", errors="replace")


def _record_from_line(line: bytes, resources: dict[str, dict[str, Any]]) -> SpanRecord:
    data = json.loads(line)
    resource_key = json.dumps(data["resource"], sort_keys=True)
    resource = resources.setdefault(resource_key, data["resource"])
    return SpanRecord(
        trace_id=int(data["trace_id"]),
        span_id=int(data["span_id"]),
        parent_span_id=None if data["parent_span_id"] is None else int(data["parent_span_id"]),
        parent_is_remote=bool(data["parent_is_remote"]),
        name=str(data["name"]),
        schema_name=str(data["schema_name"]),
        status=data["status"],
        start_time_ns=int(data["start"]),
        end_time_ns=int(data["end"]),
        payload=RawJson(json.dumps(data["payload"], ensure_ascii=False, separators=(",", ":")).encode()),
        result_payload=RawJson(json.dumps(data["result_payload"], ensure_ascii=False, separators=(",", ":")).encode()),
        scope=data["scope"],
        resource=resource,
        convention=data["convention"],
    )
