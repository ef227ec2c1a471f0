"""The durable spool: bulk items that could not be delivered wait on disk, oldest first, across restarts.

One file per hand-off, written atomically (temporary file + fsync + rename) in a 0700 directory. Files hold
only bulk items -- never the token or a header. A sender takes a file by renaming it to a lease
(`<name>.lease-<pid>`), so processes sharing the directory (pre-fork workers) never send one file twice at
once; a lease whose process died is taken back. Because every item carries a deterministic idempotency key,
a file sent twice (a crash between sending and deleting) still creates nothing twice.

Bounded: the total size is capped (oldest files dropped, counted) and files past the retention age are
dropped, counted. A directory that cannot be created or written disables the spool with one warning.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import stat
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefactor_otel._logging import RateLimitedLog, logger

FORMAT_VERSION = 1
_NAME_RE = re.compile(r"^(\d{20})-(\d+)-(\d+)\.json(?:\.lease-(\d+))?$")


def default_spool_dir(api_base: str, agent_key: str) -> Path:
    """Per user and per destination, so two configurations never replay each other's items."""
    digest = hashlib.sha256(f"{api_base}\x1f{agent_key}".encode()).hexdigest()[:16]
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(tempfile.gettempdir()) / f"prefactor-otel-{uid}" / digest


@dataclass(slots=True)
class SpoolFile:
    path: Path
    items: list[dict[str, Any]]


class Spool:
    def __init__(self, directory: Path, *, max_bytes: int, retention_seconds: float) -> None:
        self.directory = directory
        self._max_bytes = max_bytes
        self._retention = retention_seconds
        self._lock = threading.Lock()
        self._counter = 0
        self._index: dict[str, int] = {}  # file name -> size: the in-memory index, bounded by max_bytes
        self._total = 0
        self.counters: Counter[str] = Counter()
        self._log = RateLimitedLog()
        self.enabled = self._prepare()

    # ------------------------------------------------------------------ set-up

    def _prepare(self) -> bool:
        try:
            # Both levels of the default <tmp>/prefactor-otel-<uid>/<hash> are private, so another user of a
            # shared temp dir can neither read spooled prompts nor swap the directory under us.
            for directory in (self.directory.parent, self.directory):
                directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            for directory in (
                (self.directory.parent, self.directory)
                if self.directory.parent.name.startswith("prefactor-otel-")
                else (self.directory,)
            ):
                info = directory.stat()
                if hasattr(os, "getuid") and info.st_uid != os.getuid():
                    raise PermissionError("the spool directory belongs to another user")
                if stat.S_IMODE(info.st_mode) & 0o077:
                    os.chmod(directory, 0o700)
            probe = self.directory / f".probe-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            logger.warning(
                "Prefactor spool disabled: cannot use %s (%s); undeliverable spans stay in memory only",
                self.directory,
                type(exc).__name__,
            )
            return False
        self._rescan()
        return True

    def _rescan(self) -> None:
        now = time.time()
        index: dict[str, int] = {}
        for entry in os.scandir(self.directory):
            match = _NAME_RE.match(entry.name)
            if match is None:
                continue
            with contextlib.suppress(OSError):
                info = entry.stat()
                if now - info.st_mtime > self._retention:
                    self._discard(Path(entry.path), "spool_expired")
                    continue
                lease_pid = match.group(4)
                if lease_pid is not None and not _pid_alive(int(lease_pid)):
                    # The sender died holding the lease: the file is ours to send again.
                    unleased = self.directory / entry.name.split(".lease-")[0]
                    os.replace(entry.path, unleased)
                    index[unleased.name] = info.st_size
                elif lease_pid is None:
                    index[entry.name] = info.st_size
        self._index = dict(sorted(index.items()))
        self._total = sum(self._index.values())

    # ------------------------------------------------------------------ writing

    def append(self, items: Sequence[dict[str, Any] | bytes]) -> bool:
        """Write items (dicts, or their JSON already encoded) durably, in order. False (nothing written) if the
        spool is off or the write failed."""
        if not self.enabled or not items:
            return False
        data = _file_bytes(items)
        with self._lock:
            self._counter += 1
            name = f"{time.time_ns():020d}-{os.getpid()}-{self._counter}.json"
            try:
                fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-")
                try:
                    with os.fdopen(fd, "wb") as fh:
                        fh.write(data)
                        fh.flush()
                        os.fsync(fh.fileno())
                    os.replace(tmp, self.directory / name)
                except BaseException:
                    with contextlib.suppress(OSError):
                        os.unlink(tmp)
                    raise
            except OSError as exc:
                logger.warning("Prefactor spool write failed (%s); spans stay in memory", type(exc).__name__)
                self.counters["spool_write_errors"] += 1
                return False
            self._index[name] = len(data)
            self._total += len(data)
            self.counters["items_spooled"] += len(items)
            self._enforce_cap()
        return True

    def _enforce_cap(self) -> None:
        while self._total > self._max_bytes and len(self._index) > 1:
            oldest = next(iter(self._index))
            self._discard(self.directory / oldest, "spool_full")

    def _discard(self, path: Path, reason: str) -> None:
        """Drop a file, counting its items by reason (read before deleting: the count must be honest)."""
        count = 0  # spans, like every other drop counter (instance actions are not spans)
        with contextlib.suppress(OSError, ValueError, AttributeError):
            items = json.loads(path.read_bytes()).get("items", [])
            count = sum(1 for item in items if item.get("_type") == "agent_spans/create")
        with contextlib.suppress(OSError):
            path.unlink()
        size = self._index.pop(path.name, None)
        if size is not None:
            self._total -= size
        self.counters[f"dropped:{reason}"] += count
        self._log.log(
            logging.WARNING,
            reason,
            "Prefactor spool: dropped %d span(s) (%s); %d dropped for this reason so far",
            count,
            reason,
            self.counters[f"dropped:{reason}"],
        )

    # ------------------------------------------------------------------ reading

    @property
    def has_backlog(self) -> bool:
        return bool(self._index)

    @property
    def backlog_bytes(self) -> int:
        return self._total

    def take_oldest(self) -> SpoolFile | None:
        """Lease the oldest file for sending. None if there is none (or another process took it)."""
        with self._lock:
            while self._index:
                name = next(iter(self._index))
                path = self.directory / name
                lease = self.directory / f"{name}.lease-{os.getpid()}"
                try:
                    os.replace(path, lease)
                    items = json.loads(lease.read_bytes())["items"]
                except FileNotFoundError:
                    self._forget(name)  # another process took it
                    continue
                except (OSError, ValueError, KeyError, TypeError):
                    self._forget(name)
                    self._discard(lease, "spool_corrupt")
                    continue
                return SpoolFile(lease, items)
            return None

    def complete(self, file: SpoolFile) -> None:
        with self._lock:
            with contextlib.suppress(OSError):
                file.path.unlink()
            self._forget(file.path.name.split(".lease-")[0])

    def give_back(self, file: SpoolFile, remaining: Sequence[dict[str, Any]]) -> None:
        """Return the unsent rest of a leased file to the queue, keeping its place (its name)."""
        name = file.path.name.split(".lease-")[0]
        with self._lock:
            if not remaining:
                with contextlib.suppress(OSError):
                    file.path.unlink()
                self._forget(name)
                return
            data = _file_bytes(remaining)
            try:
                tmp = file.path.with_name(f".tmp-{name}")
                tmp.write_bytes(data)
                os.replace(tmp, self.directory / name)
                file.path.unlink(missing_ok=True)
            except OSError:
                return
            old = self._index.get(name, 0)
            self._index[name] = len(data)
            self._index = dict(sorted(self._index.items()))
            self._total += len(data) - old

    def _forget(self, name: str) -> None:
        size = self._index.pop(name, None)
        if size is not None:
            self._total -= size

    def refresh(self) -> None:
        """Pick up files other processes (or a previous run) left, and expire old ones."""
        with self._lock:
            self._rescan()


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # a lease of ours from before a restart with the same pid: not in flight
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def _file_bytes(items: Sequence[dict[str, Any] | bytes]) -> bytes:
    """A spool file: `{"version": N, "items": [...]}`, items already encoded kept as they are."""
    encoded = [
        item
        if isinstance(item, bytes)
        else json.dumps(item, ensure_ascii=False, separators=(",", ":")).encode("utf-8", errors="replace")
        for item in items
    ]
    return b'{"version":%d,"items":[%s]}' % (FORMAT_VERSION, b",".join(encoded))
