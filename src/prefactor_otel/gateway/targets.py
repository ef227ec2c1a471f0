"""One pipeline per (route, agent): `AgentPipeline`, built from its parts as the exporter builds its own.

Each holds a `Pipeline` (pipeline/pipeline.py) with the parts the exporter gives it -- the route's configuration for
that agent, a `Delivery` over its own `BulkTransport`, a `Backlog` over a `Spool` in a directory of its own (under
the gateway's directory: `spool/<route>.<agent>`), the partition of its agent id (or the one saved beside the spool
for its token, checked with the server first)
and the mapping options of the same configuration -- and maps decoded spans for it (`map_spans`: as the exporter's
`export` does, with one difference: a span whose parent is in another service is an ordinary child here, since the
gateway receives that service's spans too; see docs/gateway.md).

Not the exporter's: no journal of open runs (the ingress log keeps what the journal would: gateway/service.py), no
span starts, no control poller (no application here to tell of a terminated run).

Threads and locks: built by `Gateway.start`; everything else is called by the gateway's worker thread, the one
sender of every pipeline (so no send lock), except `queued_spans` and the counters, read by any thread without a
lock (an int read and dict copies: approximate, never torn). The pipeline's `state_lock` guards its planner and is
taken here around the readings of planner state (`done_traces`).

When a run is over is the planner's rule, the exporter's too (pipeline/planner.py): that includes a run whose root
never comes (its parent is in a service that never exports here), finished once idle through the pipeline's drains
(`background_due` asks the pipeline whether such a finish is due); `runs_finished_without_root` is its counter.
Unlike the exporter's, a gateway's pipeline opens the trace's next run for a span that comes after its run was
finished (`late_spans_open_a_run`: `runs_reopened_late`), and ignores a retried copy of a span already delivered
(`spans_duplicate_ignored`).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan

from prefactor_otel._logging import RateLimitedLog
from prefactor_otel._version import __version__
from prefactor_otel.config.options import PrefactorConfig
from prefactor_otel.durability.spool import Spool
from prefactor_otel.mapping import MappingOptions, SpanRecord, map_span
from prefactor_otel.model import ids
from prefactor_otel.pipeline.backlog import Backlog
from prefactor_otel.pipeline.counts import gather
from prefactor_otel.pipeline.delivery import Delivery
from prefactor_otel.pipeline.pipeline import Pipeline
from prefactor_otel.transport.client import BulkTransport

SDK_HEADER = f"prefactor-otel-gateway@{__version__}"
BACKOFF_FIRST_S = 0.5
BACKOFF_CAP_S = 30.0


class AgentPipeline:
    def __init__(
        self, route: str, agent: str, config: PrefactorConfig, spool_directory: Path, *, run_part: str
    ) -> None:
        self.route = route
        self.agent = agent
        self.key = f"{route}.{agent}"  # the ingress log's key and the spool directory's name
        self.config = config
        self.options = MappingOptions.from_config(config)
        self.transport = BulkTransport(config, sdk_header=SDK_HEADER)
        self.delivery = Delivery(self.transport, config)
        self.backlog: Backlog | None = None
        if config.spool:
            spool = Spool(
                spool_directory,
                max_bytes=config.spool_max_bytes,
                retention_seconds=config.spool_retention_seconds,
                max_item_bytes=config.max_request_bytes,
            )
            if spool.enabled:
                self.backlog = Backlog(spool, None, retention_seconds=config.spool_retention_seconds)
        partition = ids.extract_partition(config.agent_id) if config.agent_id else None
        # Without an agent id: the partition saved for this route's token, checked with the server before it is
        # trusted (pipeline/partition.py: the route's token may now be another account's).
        saved = self.backlog.load_partition(config.api_token.get()) if partition is None and self.backlog else None
        # `run_part`: the gateway's replica id, this replica's part of every trace (docs/gateway.md, "Run
        # identity"): a restart keeps its run ids, two replicas never derive the same one.
        self.run_part = run_part
        self.pipeline = Pipeline(
            config,
            self.delivery,
            self.backlog,
            partition=partition,
            saved_partition=saved,
            redactor=self.options.redactor,
            run_part=run_part,
            # Spans reach a gateway through retries and reorderings (a client's, the Collector's), after it
            # acknowledged them: one that comes after its run was finished opens the trace's next run, and a retried
            # copy of one already delivered is ignored (docs/gateway.md, "Late spans").
            late_spans_open_a_run=True,
        )
        if self.backlog is not None:
            # Span records an earlier gateway kept while no partition was known (Backlog.keep_records).
            self.pipeline.add(self.backlog.take_records(config.max_queued_spans))
        self.counters: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()
        self._log = RateLimitedLog()
        self.retry_at = 0.0  # after a failed drain, background work waits until then (new spans do not)
        self.spool_bytes_per_span = 0.0  # measured on spills (`_learn_spool_size`)
        self._backoff = BACKOFF_FIRST_S

    # ------------------------------------------------------------------ mapping

    def map_spans(self, spans: Sequence[ReadableSpan]) -> list[SpanRecord]:
        """Map decoded spans as the exporter does; a span that cannot be mapped is dropped, counted."""
        records: list[SpanRecord] = []
        for span in spans:
            try:
                # Payloads encoded as they are mapped (as the exporter's): one encoder call each, trees freed young.
                # One that cannot be encoded stays a dict: the send path reports it.
                record = map_span(span, self.options, encoded=True)
            except Exception as exc:  # one bad span must not cost the request
                self.dropped["mapping_error"] += 1
                self._log.log(
                    logging.WARNING, "map", "Prefactor gateway: a span could not be mapped (%s)", type(exc).__name__
                )
                continue
            # The gateway sees every service of the trace: a parent in another service is (or will be) received
            # here, so it is an ordinary parent link, not the top of a run of this service's own.
            record.parent_is_remote = False
            records.append(record)
        self.counters["spans_received"] += len(spans)
        return records

    # ------------------------------------------------------------------ sending (the worker thread)

    def drain(self, deadline: float, *, shutdown: bool = False, background: bool = False) -> bool:
        """Send what is ready (`background`: as the exporter's finisher does, the spool's backlog alone while no
        span has come -- no partition needed for that)."""
        before = self._spooled()
        pipeline = self.pipeline
        ok = pipeline.background_send(deadline) if background else pipeline.drain(deadline, shutdown=shutdown)
        self._learn_spool_size(before)
        if ok or (self.backlog is not None and self.pipeline.planner is not None):
            # With a spool, what was not delivered went there, and the spool's own backoff paces its replay.
            self._backoff = BACKOFF_FIRST_S
            self.retry_at = 0.0
        else:  # it waits in memory (no spool, or no partition yet): every drain would wait out its deadline again
            self.retry_at = time.monotonic() + self._backoff
            self._backoff = min(BACKOFF_CAP_S, self._backoff * 2)
        return ok

    def _spooled(self) -> tuple[int, int]:
        planner = self.pipeline.planner
        spans = planner.counters["spans_spooled"] if planner is not None else 0
        return spans, self.backlog.spool.disk_bytes if self.backlog is not None else 0

    def _learn_spool_size(self, before: tuple[int, int]) -> None:
        """Bytes the spool took per span in the last spill: what the gateway's admission expects a spill to take
        (kept high: slowly forgotten, at once raised)."""
        spans, disk = self._spooled()
        if spans > before[0] and disk > before[1]:
            seen = (disk - before[1]) / (spans - before[0])
            self.spool_bytes_per_span = max(seen, 0.95 * self.spool_bytes_per_span)

    def background_due(self, now: float) -> bool:
        return now >= self.retry_at and self.pipeline.has_due_work(now)

    @property
    def queued_spans(self) -> int:
        """Spans given to the pipeline and not yet planned into a request or the spool (approximate)."""
        planner = self.pipeline.planner
        return len(self.pipeline.unplanned) + (planner.queued_spans if planner is not None else 0)

    def spool_fill(self, coming_bytes: int | float = 0) -> float:
        """How full the spool would be (0..1) with `coming_bytes` more: every byte in its directory and those,
        against its cap."""
        if self.backlog is None:
            return 0.0
        return (self.backlog.spool.disk_bytes + coming_bytes) / max(1, self.config.spool_max_bytes)

    # ------------------------------------------------------------------ run state (the worker thread)

    def done_traces(self, trace_ids: Iterable[int]) -> list[int]:
        """Of these traces (every span of which has been given to the pipeline), those the pipeline is done with:
        finished (their finish delivered or in the spool), or refused by the server, with nothing of them waiting."""
        pipeline = self.pipeline
        with pipeline.state_lock:
            planner = pipeline.planner
            if planner is None:
                return []
            waiting = {record.trace_id for record in pipeline.unplanned}
            runs = planner.runs.traces
            done = []
            for trace_id in trace_ids:
                if trace_id in waiting:
                    continue
                run = runs.get(trace_id)
                if run is None or (run.rejected and not run.pending):
                    done.append(trace_id)
            return done

    # ------------------------------------------------------------------ visibility

    def dropped_by_reason(self) -> dict[str, int]:
        """Spans dropped so far, by reason, as `stats()["dropped_by_reason"]` counts them: this pipeline's, its
        planner's, its backlog's and spool's (dict copies; no lock but the pipeline's own in `collect`). Read by the
        worker's drop report (drops.py) once a second."""
        counts = gather(self.counters, self.dropped, self.pipeline, (), self.backlog)
        return dict(counts.dropped)

    def stats(self) -> dict[str, Any]:
        backlog = self.backlog
        counts = gather(self.counters, self.dropped, self.pipeline, (self.transport, self.delivery), backlog)
        counters, dropped, actions_dropped = counts.counters, counts.dropped, counts.actions_dropped
        queued, open_traces = counts.queued, counts.open_traces
        return {
            "route": self.route,
            "agent": self.agent,
            "agent_id": self.config.agent_id,
            "spans_received": counters["spans_received"],
            "spans_exported": counters["spans_exported"] + counters["spans_replayed"],
            "spans_dropped": sum(dropped.values()),
            "dropped_by_reason": dict(dropped),
            "instance_actions_dropped": dict(actions_dropped),
            "spans_orphaned": sum(v for k, v in counters.items() if k.startswith("spans_orphaned_")),
            "spans_queued": queued,
            "open_traces": open_traces,
            "instances_registered": counters["instances_registered"],
            "instances_finished": counters["instances_finished"],
            "runs_finished_without_root": counters["runs_finished_without_root"],
            # runs opened for spans that came after their trace's run was finished, and retried copies ignored
            "runs_reopened_late": counters["runs_reopened_late"],
            "spans_duplicate_ignored": counters["spans_duplicate_ignored"],
            "requests": counters["requests"],
            "retries": counters["retries"],
            "bytes_sent": counters["bytes_sent"],
            "auth_failed": self.transport.auth_failed,
            "spans_spooled": counters["spans_spooled"],
            "spans_replayed": counters["spans_replayed"],
            "spool_backlog_bytes": backlog.spool.backlog_bytes if backlog is not None else 0,
            "spool_disk_bytes": backlog.spool.disk_bytes if backlog is not None else 0,
            "spool_enabled": backlog is not None,
            # the account partition (no agent id): as the exporter's stats() (docs/reliability.md)
            "account_partition": {
                k.removeprefix("partition:"): v for k, v in counters.items() if k.startswith("partition:")
            },
        }

    def close(self) -> None:
        self.pipeline.close()
        self.transport.close()
