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
  can plan (and spool) its spans while the API is down. Before any partition was ever learnt (a deployment
  token, the API down since the first start), bulk items cannot be built at all: at shutdown the mapped span
  records themselves are kept (`keep_records`, `records-*.jsonl`) and the next process plans them.

Threads: `replay` runs on the thread holding the exporter's send lock. `spill` runs either there or, when
shutdown could not get the send lock in time, on the shutting-down thread; it takes the exporter's state lock
around the planner, and the spool serialises its own writers. The backoff fields are written by the sending
thread only. `record_runs` runs under the exporter's state lock (the journal has its own leaf lock).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections import Counter
from typing import Any

from prefactor_otel._logging import logger
from prefactor_otel.durability.journal import RunJournal
from prefactor_otel.durability.spool import Spool
from prefactor_otel.mapping.payload import SpanRecord
from prefactor_otel.mapping.values import RawJson
from prefactor_otel.pipeline.delivery import Delivery, SpooledSource
from prefactor_otel.pipeline.items import finish_item, unended_span_finish_item
from prefactor_otel.pipeline.planner import Planner
from prefactor_otel.transport.wire import encode_item

BACKOFF_FIRST_S = 1.0
BACKOFF_CAP_S = 30.0
_PARTITION_FILE = "partition"


class Backlog:
    def __init__(self, spool: Spool, journal: RunJournal | None = None) -> None:
        self.spool = spool
        self.journal = journal if journal is not None and journal.enabled else None
        self.retry_at = 0.0
        self._backoff = BACKOFF_FIRST_S
        self.counters: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()
        self.actions_dropped: Counter[str] = Counter()

    def reset_after_fork(self) -> None:
        self.counters, self.dropped, self.actions_dropped = Counter(), Counter(), Counter()
        self.retry_at = 0.0
        self._backoff = BACKOFF_FIRST_S
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
            encoded: list[dict[str, Any] | bytes] = [
                item.body if "agent_schema_version" in item.body else encode_item(item.body) for item in items
            ]
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

    def load_partition(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int((self.spool.directory / _PARTITION_FILE).read_text().strip())
        return None

    def save_partition(self, partition: int) -> None:
        path = self.spool.directory / _PARTITION_FILE
        tmp = path.with_name(f".tmp-partition-{os.getpid()}")
        with contextlib.suppress(OSError):
            tmp.write_text(str(partition))
            os.replace(tmp, path)


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
