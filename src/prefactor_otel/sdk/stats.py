"""The exporter's counters, gathered from the parts that keep them, as one dict (`PrefactorSpanExporter.stats()`).

Each part counts in its own Counter, written by the thread doing the work. Reading happens on any thread (the
application, a metrics reader): every Counter is copied with `dict(counter)` first, one C call that a key added
meanwhile by another thread cannot break (iterating a live Counter in Python could).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from prefactor_otel.control.poll import InstancePoller
from prefactor_otel.pipeline.backlog import Backlog
from prefactor_otel.pipeline.counts import gather
from prefactor_otel.pipeline.delivery import Delivery
from prefactor_otel.pipeline.pipeline import Pipeline
from prefactor_otel.transport.client import BulkTransport


def collect_stats(
    *,
    enabled: bool,
    disabled_reason: str | None,
    counters: Counter[str],
    dropped: Counter[str],
    pipeline: Pipeline | None,
    transport: BulkTransport | None,
    delivery: Delivery | None,
    backlog: Backlog | None,
    poller: InstancePoller | None = None,
) -> dict[str, Any]:
    """`spans_dropped` counts spans only; rejected instance actions are in `instance_actions_dropped`."""
    counts = gather(counters, dropped, pipeline, (transport, delivery, poller), backlog)
    all_dropped, actions_dropped = counts.dropped, counts.actions_dropped
    queued, open_traces = counts.queued, counts.open_traces
    c = counts.counters
    return {
        "enabled": enabled,
        "disabled_reason": disabled_reason,
        "spans_received": c["spans_received"],
        "spans_exported": c["spans_exported"] + c["spans_replayed"],
        "spans_dropped": sum(all_dropped.values()),
        "dropped_by_reason": dict(all_dropped),
        "instance_actions_dropped": dict(actions_dropped),
        "spans_filtered_out": c["spans_filtered_out"],
        "spans_reparented": c["spans_reparented"],
        "spans_orphaned": sum(v for k, v in c.items() if k.startswith("spans_orphaned_")),
        "spans_ignored_forked_copy": c["spans_ignored_forked_copy"],
        # live runs (PrefactorSpanProcessor): spans created active, starts the queue had no room for, started spans
        # forgotten because too many were open at once, runs terminated in Prefactor
        "spans_live": c["spans_live_created"],
        "starts_dropped": c["starts_dropped"],
        "open_spans_forgotten": c["open_spans_forgotten"],
        "runs_terminated": c["runs_terminated"],
        # control: span answers that carried control.terminate, and polls of run status (docs/control.md)
        "control_terminate_answers": c["control_terminate_answers"],
        "control_polls": c["control_polls"],
        # terminations of runs this process did not open (replayed from the spool of a process that ended): their
        # spooled items are dropped (`run_terminated`), this process's callbacks are not called
        "control_terminations_not_ours": c["control_terminations_not_ours"],
        "spans_queued": queued,
        "open_traces": open_traces,
        "instances_registered": c["instances_registered"],
        "instances_finished": c["instances_finished"],
        # runs finished although their root never came (idle max_wait + grace: docs/live-runs.md)
        "runs_finished_without_root": c["runs_finished_without_root"],
        # runs opened again for a span (not a new part's) that came after its trace's run was finished
        "runs_reopened_late": c["runs_reopened_late"],
        "runs_adopted_from_dead_processes": c["runs_adopted_from_dead_processes"],
        "live_spans_adopted_from_dead_processes": c["live_spans_adopted_from_dead_processes"],
        "requests": c["requests"],
        "retries": c["retries"],
        "contract_errors": c["contract_errors"],  # answers that did not fit the API contract
        "empty_bulk_answers": c["empty_bulk_answers"],
        "bytes_sent": c["bytes_sent"],  # request bodies as sent (compressed: docs/wire.md)
        "bytes_uncompressed": c["bytes_uncompressed"],  # the same bodies before compression
        # request encodings a server refused (415, or a 400 the plain body did not get): learned once each
        # registers sent without the schema set (the server had it from an earlier one), and whether a server
        # refused that (then every register carries it again)
        "schema_sets_omitted": c["schema_sets_omitted"],
        "schema_omission_refused": c["schema_omission_refused"],
        "compression_refused": {
            k.removeprefix("compression_refused:"): v for k, v in c.items() if k.startswith("compression_refused:")
        },
        "auth_failed": bool(transport and transport.auth_failed),
        "spans_spooled": c["spans_spooled"],
        "spans_replayed": c["spans_replayed"],
        "spans_kept_unplanned": c["spans_kept_unplanned"],
        "spool_backlog_bytes": backlog.spool.backlog_bytes if backlog is not None else 0,
        # every byte in the spool directory as last counted (what spool_max_bytes bounds)
        "spool_disk_bytes": backlog.spool.disk_bytes if backlog is not None else 0,
        # items the spool could not take (they did not fit under the cap even after dropping the oldest files, or
        # another process held the spool's write lock too long): kept in memory, not dropped
        "spool_refused_items": c["spool_refused_items"],
        "spool_write_lock_busy": c["spool_write_lock_busy"],
        # spool files found unreadable (moved to the quarantine or deleted): their spans are in
        # dropped_by_reason["spool_corrupt"], exactly for files whose checked header survived; for the files
        # counted here too (no intact header) only the span items still readable in them are counted
        "spool_files_quarantined": c["spool_files_quarantined"],
        "spool_corrupt_files_counted_partly": c["spool_corrupt_files_counted_partly"],
        "spool_enabled": backlog is not None,
        "requests_by_outcome": {k.removeprefix("outcome:"): v for k, v in c.items() if k.startswith("outcome:")},
        # the account partition (no agent id): learnt again when the one known was another account's (relearnt),
        # runs planned again in it (runs_replanned), spool files of another account set aside / put back for it
        "account_partition": {k.removeprefix("partition:"): v for k, v in c.items() if k.startswith("partition:")},
    }
