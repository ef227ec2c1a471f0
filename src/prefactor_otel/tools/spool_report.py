"""What waits on disk for delivery, for `prefactor-otel doctor` and `prefactor-otel spool`, and sending it now.

After an outage a process that exits keeps what it could not deliver in its spool directory (durability/spool.py),
and only the next process with the same configuration sends it. `waiting` lists that directory as the exporter
would choose it (`spool_directory`: `PREFACTOR_SPOOL_DIR`, else the per-URL-and-agent default) and says how many
files wait, how many spans they hold (from each file's checked header, else counted in its bytes) and when the
oldest was written (from its name: names are write stamps). `spool_findings` turns that into the doctor's PF401
note. `send_now` is `prefactor-otel spool send`: it builds the exporter with the same configuration, which replays
the spool first (the same delivery and outcome rules as any process: nothing here sends by itself), flushes until
the directory is empty or no longer shrinks, shuts it down and says what it sent and what is left.

Reading is lock-free and read-only: a listing can count a file another process is sending at that moment (shown
as being sent); nothing is taken, moved or removed. The token is never printed (the API base only).

Threads: the CLI's main thread only (the exporter `send_now` builds has its own threads, stopped by its shutdown).
No shared state, no lock.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from prefactor_otel.config.options import PrefactorConfig
from prefactor_otel.config.values import ConfigError
from prefactor_otel.durability.spool import default_spool_dir
from prefactor_otel.durability.spool_disk import NAME_RE
from prefactor_otel.durability.spool_format import spans_in
from prefactor_otel.pipeline.backlog import PARKED_PREFIX
from prefactor_otel.transport.api_check import Finding

SEND_COMMAND = "prefactor-otel spool send"
# `spool send` flushes again while files are left and the last round sent some: bounded rounds (each round is
# bounded by PREFACTOR_EXPORT_TIMEOUT inside the exporter), so a backlog that cannot shrink ends the command.
_MAX_SEND_ROUNDS = 1000


@dataclass(frozen=True)
class Waiting:
    """What one spool directory holds for delivery: files of bulk items (spans, run starts and finishes), the
    spans among them (`exact` False when a damaged file's spans were counted in its bytes), the oldest file's write
    time, files a live process is sending now, and kept span records (written before any partition was known)."""

    directory: Path
    files: int = 0
    spans: int = 0
    exact: bool = True
    size: int = 0
    oldest_ns: int | None = None
    being_sent: int = 0
    kept_records: int = 0
    # spool files of another account, set aside in `other-account-<partition>/` (pipeline/backlog.py): not sent
    # with this configuration's token, so not counted as waiting; sent when a process of that account uses it
    set_aside: int = 0

    @property
    def empty(self) -> bool:
        return self.files == 0 and self.kept_records == 0

    def aside_note(self) -> str:
        """e.g. `; 2 file(s) of another account set aside (other-account-*/), sent only with that account's token`."""
        if not self.set_aside:
            return ""
        return (
            f"; {self.set_aside} file(s) of another account set aside ({PARKED_PREFIX}*/), sent only with that "
            "account's token"
        )

    def summary(self, now_ns: int | None = None) -> str:
        """e.g. `12 span(s) in 3 file(s) (4.1 KiB, oldest written 2026-12-07 08:30:12 UTC, 5 min ago)`."""
        spans = f"{self.spans}{'' if self.exact else '+'} span(s)"
        parts = [f"{self.size / 1024:.1f} KiB"]
        if self.oldest_ns is not None:
            age_s = max(0, ((now_ns or time.time_ns()) - self.oldest_ns) // 1_000_000_000)
            stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.oldest_ns / 1e9))
            parts.append(f"oldest written {stamp}, {_age(age_s)} ago")
        if self.being_sent:
            parts.append(f"{self.being_sent} being sent by a running process")
        text = f"{spans} in {self.files} file(s) ({', '.join(parts)})"
        if self.kept_records:
            text += f", and {self.kept_records} file(s) of span records not yet planned"
        return text + self.aside_note()


def _age(seconds: int) -> str:
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h"


def spool_directory(config: PrefactorConfig) -> Path | None:
    """The directory the exporter with `config` spools to (its `_open_spool` rule); None when the spool is off."""
    if not config.spool:
        return None
    if config.spool_dir:
        return Path(config.spool_dir)
    return default_spool_dir(config.api_base, config.agent_id or "deployment")


def waiting(directory: Path) -> Waiting:
    """A read-only listing of `directory` (missing: nothing waits)."""
    files = spans = size = being_sent = kept = aside = 0
    exact = True
    oldest: int | None = None
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return Waiting(directory)
    for entry in entries:
        if entry.name.startswith(PARKED_PREFIX):
            with contextlib.suppress(OSError):
                aside += sum(1 for parked in os.scandir(entry.path) if NAME_RE.match(parked.name))
            continue
        if entry.name.startswith("records-") and entry.name.endswith(".jsonl"):
            kept += 1
            continue
        match = NAME_RE.match(entry.name)
        if match is None:
            continue
        try:
            size += entry.stat(follow_symlinks=False).st_size
        except OSError:
            continue  # sent and removed since the listing
        files += 1
        being_sent += match[4] is not None
        stamp = int(match[1])
        oldest = stamp if oldest is None else min(oldest, stamp)
        count, counted_exactly = spans_in(Path(entry.path))
        spans += count
        exact = exact and counted_exactly
    return Waiting(directory, files, spans, exact, size, oldest, being_sent, kept, aside)


def spool_findings(config: PrefactorConfig | None) -> list[Finding]:
    """The doctor's word on the spool: PF401 when something waits, else one `info` line (none without a config)."""
    if config is None:
        return []
    directory = spool_directory(config)
    if directory is None:
        return [Finding("info", "PREFACTOR_SPOOL is off: nothing undeliverable is kept on disk")]
    found = waiting(directory)
    if found.empty:
        return [Finding("info", f"spool {directory}: nothing waits for delivery{found.aside_note()}")]
    return [
        Finding(
            "note",
            f"{found.summary()} wait for delivery in {directory}: the next process with this configuration sends them",
            "PF401",
            f"to send them now: {SEND_COMMAND} (with this environment)",
        )
    ]


def send_now(environ: Mapping[str, str], write: Callable[[str], None] = print) -> int:
    """`prefactor-otel spool send`: 0 when the directory was emptied (or nothing waited), 1 when files are left,
    2 when the configuration cannot send."""
    try:
        config = PrefactorConfig.load(environ)
    except ConfigError as exc:
        write(f"prefactor-otel spool send: invalid configuration: {exc} (prefactor-otel doctor lists every problem)")
        return 2
    directory = spool_directory(config)
    if directory is None:
        write("PREFACTOR_SPOOL is off: nothing is kept on disk, so nothing waits to be sent")
        return 0
    before = waiting(directory)
    if before.empty:
        write(f"nothing waits for delivery in {directory}{before.aside_note()}")
        return 0
    if not config.api_token:
        write(f"{before.summary()} wait in {directory}, but {config.token_source} is not set: set it to send them")
        return 2
    write(f"sending {before.summary()} from {directory} to {config.api_base}")
    from prefactor_otel.sdk.exporter import PrefactorSpanExporter

    exporter = PrefactorSpanExporter(config=config)
    try:
        left = before
        for _ in range(_MAX_SEND_ROUNDS):
            exporter.force_flush()
            now = waiting(directory)
            shrank = (now.files, now.kept_records) < (left.files, left.kept_records)
            left = now
            if left.empty or not shrank:
                break
    finally:
        exporter.shutdown()
    stats = exporter.stats()
    left = waiting(directory)
    sent_files = max(0, before.files - left.files)
    dropped = stats["dropped_by_reason"]
    refused = f"; {sum(dropped.values())} span(s) not accepted ({dropped})" if dropped else ""
    write(f"sent {stats['spans_replayed']} span(s) from {sent_files} file(s) to {config.api_base}{refused}")
    if left.empty:
        write(f"nothing left in {directory}")
        return 0
    write(
        f"still waiting: {left.summary()}: the API could not take them now (prefactor-otel doctor says why); "
        f"they are sent by the next process with this configuration, or by {SEND_COMMAND} again"
    )
    return 1
