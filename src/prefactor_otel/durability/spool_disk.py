"""Spool directory mechanics: scans, atomic writes, the sender lock, the quarantine, stale temporary files, liveness,
and whether the directory changed since we last looked.

Threads: called only by `Spool`, under the spool's lock, which also guards the state of the parts defined here
(`SenderLock`'s descriptor, `DirectoryWatch`'s mtime and names): this module has no lock and no module state of its
own.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import tempfile
import time
from collections.abc import Container, Iterable
from dataclasses import dataclass, field
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock; one process per directory is assumed there
    fcntl = None  # type: ignore[assignment]

NAME_RE = re.compile(r"^(\d{20})-(\d+)-(\d+)\.json(?:\.lease-(\d+))?$")
_TMP_RE = re.compile(r"^\.tmp-(?:p(\d+)-)?")
_TMP_MAX_AGE_S = 60.0
_LOCK_FILE = ".sender.lock"
WRITE_LOCK_FILE = ".write.lock"
QUARANTINE = ".quarantine"
_LOCK_POLL_S = 0.002
MTIME_TICK_NS = 1_000_000_000  # the coarsest mtime clock we trust to tell two changes apart (ext4: ~4 ms)


def base_name(name: str) -> str:
    """A spool file's name without its lease suffix."""
    return name.split(".lease-")[0]


def make_private_directory(directory: Path) -> None:
    """Create the directory 0700 and check that it is ours and writable. Raises OSError otherwise."""
    # Both levels of the default <tmp>/prefactor-otel-<uid>/<hash> are private, so another user of a shared temp
    # dir can neither read spooled prompts nor swap the directory under us.
    for level in (directory.parent, directory):
        level.mkdir(mode=0o700, parents=True, exist_ok=True)
    for level in (directory.parent, directory) if directory.parent.name.startswith("prefactor-otel-") else (directory,):
        info = level.stat()
        if hasattr(os, "getuid") and info.st_uid != os.getuid():
            raise PermissionError("the spool directory belongs to another user")
        if stat.S_IMODE(info.st_mode) & 0o077:
            os.chmod(level, 0o700)
    probe = directory / f".probe-{os.getpid()}"
    probe.write_bytes(b"")
    probe.unlink()


def pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # a lease of ours from before a restart with the same pid: not in flight
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OSError, OverflowError):
        return False
    return True


def write_atomic(path: Path, data: bytes, mtime: float | None = None) -> None:
    """Temporary file (named with our pid, so a rescan can tell a live writer's) + fsync + rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".tmp-p{os.getpid()}-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if mtime is not None:
            os.utime(tmp, (mtime, mtime))  # a rewritten file keeps its age (retention counts from the first write)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def remove_if_stale_tmp(entry: os.DirEntry[str], now: float) -> bool:
    """Remove a `.tmp-*` file older than a minute unless another live process is writing it. True if removed.

    The caller holds the spool's lock, under which all our own writes happen: a tmp with our pid is a crash's."""
    match = _TMP_RE.match(entry.name)
    writer = int(match.group(1)) if match and match.group(1) else None
    try:
        if now - entry.stat().st_mtime < _TMP_MAX_AGE_S:
            return False
        if writer is not None and writer != os.getpid() and pid_alive(writer):
            return False  # another live writer (a slow disk): not ours to judge
        os.unlink(entry.path)
    except OSError:
        return False
    return True


@dataclass(slots=True)
class Scan:
    index: dict[str, int] = field(default_factory=dict)  # unleased name -> size, sorted by name
    foreign_bytes: int = 0  # leased by other live processes
    expired: list[tuple[Path, str]] = field(default_factory=list)  # (path, name) past the retention age
    tmp_removed: int = 0
    # Every other regular file in the directory (journals of open runs, kept records, the partition, lock files,
    # temporary files being written or left by a crash): name -> size. They take room under the cap too.
    other: dict[str, int] = field(default_factory=dict)
    quarantined: dict[str, int] = field(default_factory=dict)  # name -> size in the quarantine, sorted by name


def scan(directory: Path, leased_by_us: Container[str], retention_seconds: float) -> Scan:
    """What the directory holds for sending. Leases of dead processes (or with our pid but not one we hold: a
    restart that reused it) are taken back on the way; stale temporary files are removed."""
    now = time.time()
    pid = os.getpid()
    found = Scan()
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.name.startswith(".tmp-") and remove_if_stale_tmp(entry, now):
                found.tmp_removed += 1
                continue
            match = NAME_RE.match(entry.name)
            if match is None:
                with contextlib.suppress(OSError):
                    if entry.name == QUARANTINE and entry.is_dir(follow_symlinks=False):
                        found.quarantined = quarantine_files(Path(entry.path))
                    elif entry.is_file(follow_symlinks=False):
                        found.other[entry.name] = entry.stat(follow_symlinks=False).st_size
                continue
            name = base_name(entry.name)
            try:
                info = entry.stat()
            except OSError:
                continue  # gone meanwhile
            lease_pid = int(match.group(4)) if match.group(4) is not None else None
            if lease_pid is not None and (
                (lease_pid == pid and name in leased_by_us) or (lease_pid != pid and pid_alive(lease_pid))
            ):
                if lease_pid != pid:  # in flight: another live process's (it counts for the cap) or ours
                    found.foreign_bytes += info.st_size
                continue
            if now - info.st_mtime > retention_seconds:
                found.expired.append((Path(entry.path), name))
                continue
            if lease_pid is not None:
                try:
                    os.replace(entry.path, directory / name)  # the sender died holding it: to be sent again
                except OSError:
                    continue  # another process took it back first
            found.index[name] = info.st_size
    found.index = dict(sorted(found.index.items()))
    return found


def write_pieces(
    directory: Path, stem: str, pieces: Iterable[bytes], mtime: float, budget: int
) -> list[tuple[str, int]]:
    """Write files `<stem><6-digit piece>.json` (they sort right after `<stem>.json` and before any later stamp),
    at most `budget` bytes in all, all or none: on an error (OSError past the budget) the pieces written are
    removed and the error raised."""
    written: list[tuple[str, int]] = []
    try:
        for data in pieces:
            budget -= len(data)
            if budget < 0:
                raise OSError("the pieces do not fit under the spool's cap")
            name = f"{stem}{len(written):06d}.json"
            write_atomic(directory / name, data, mtime=mtime)
            written.append((name, len(data)))
    except BaseException:
        for name, _ in written:
            with contextlib.suppress(OSError):
                os.unlink(directory / name)
        raise
    return written


def names_present(directory: Path) -> set[str]:
    """Spool file names in the directory, leased by anyone or not."""
    with os.scandir(directory) as entries:
        return {base_name(entry.name) for entry in entries if NAME_RE.match(entry.name)}


def quarantine_files(directory: Path) -> dict[str, int]:
    """The files in the quarantine: name -> size, oldest (smallest name) first."""
    with os.scandir(directory) as entries:
        found = {entry.name: entry.stat().st_size for entry in entries if entry.is_file(follow_symlinks=False)}
    return dict(sorted(found.items()))


def quarantine(path: Path, directory: Path, name: str, budget: int) -> bool:
    """Move a file into the quarantine directory (oldest removed beyond `budget` bytes); delete it if it is larger
    than the budget or cannot be moved. True if it was kept."""
    try:
        if os.stat(path).st_size > budget:
            raise OSError("larger than the quarantine")
        directory.mkdir(mode=0o700, exist_ok=True)
        os.replace(path, directory / name)
        with os.scandir(directory) as entries:
            files = sorted((entry.name, entry.stat().st_size) for entry in entries if entry.is_file())
        total = sum(size for _, size in files)
        for oldest, size in files:
            if total <= budget:
                break
            with contextlib.suppress(OSError):
                os.unlink(directory / oldest)
            total -= size
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(path)
        return False
    return True


class SenderLock:
    """An exclusive flock on a lock file of the directory: `.sender.lock` (at most one sender per directory across
    processes, held through a replay) or `.write.lock` (one writer at a time, held while the spool checks the cap
    and writes, so processes sharing the directory never take it over the cap together).

    The flock belongs to the open file description, which a fork shares: `release` unlocks explicitly (closing
    alone would leave a forked child's inherited copy holding it) and a child's `reset_after_fork` only closes its
    copy (unlocking would release the parent's lock)."""

    def __init__(self, directory: Path, name: str = _LOCK_FILE) -> None:
        self._path = directory / name
        self._fd: int | None = None
        self._pid = 0

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, wait_s: float = 0.0) -> bool:
        """True if this process now holds the lock; False if another process (or thread) does (after trying for
        `wait_s` seconds: flock has no timed wait, so it polls). Raises OSError if the lock file cannot be
        opened."""
        if self._fd is not None:
            return False  # another thread of this process holds it
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
        if fcntl is not None:
            deadline = time.monotonic() + wait_s
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError:
                    if time.monotonic() + _LOCK_POLL_S > deadline:
                        os.close(fd)
                        return False
                    time.sleep(_LOCK_POLL_S)
        self._fd, self._pid = fd, os.getpid()
        return True

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        if fcntl is not None and self._pid == os.getpid():
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
        with contextlib.suppress(OSError):
            os.close(fd)

    def reset_after_fork(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)  # never LOCK_UN: the lock belongs to the description the parent still uses


class DirectoryWatch:
    """Whether anyone added, removed or renamed a file in a directory since `note()`: its mtime then and, when that
    mtime was too young to prove anything, its names.

    File systems stamp mtimes from a coarse clock: a change made in the same tick as ours leaves the mtime as it
    is, so an mtime younger than `MTIME_TICK_NS` is backed by the list of names (a listing, no stat)."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._mtime_ns = 0  # the directory's mtime after our last scan or write (0: unknown)
        self._names: frozenset[str] | None = None

    def note(self) -> None:
        """Remember the directory as of now (after a scan or a write of ours)."""
        self._mtime_ns = self._directory_mtime_ns()
        self._names = None
        if time.time_ns() - self._mtime_ns < MTIME_TICK_NS:
            try:
                self._names = frozenset(os.listdir(self._directory))
            except OSError:
                self._mtime_ns = 0  # the next check rescans

    def changed(self) -> bool:
        """Whether anyone added, removed or renamed a file in the directory since `note`."""
        if not self._mtime_ns or self._directory_mtime_ns() != self._mtime_ns:
            return True
        if self._names is None:
            return False
        try:
            return frozenset(os.listdir(self._directory)) != self._names
        except OSError:
            return True

    def _directory_mtime_ns(self) -> int:
        try:
            return os.stat(self._directory).st_mtime_ns
        except OSError:
            return 0
