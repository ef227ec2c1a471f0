"""Where `prefactor-otel serve` keeps its state, and how it writes it: one JSON file, locked, replaced atomically.

- `default_state_path()`: `$XDG_DATA_HOME/prefactor-otel/local-server.json`, else the platform's user data
  directory (`~/.local/share`, macOS `~/Library/Application Support`, Windows `%LOCALAPPDATA%`).
- `StateFile`: takes an exclusive lock on `<file>.lock` (a second server on the same file is refused with
  `StateLockedError`, not left to corrupt it), reads (`StateFileError` names the path and `--reset` for anything
  it cannot load: never a traceback, never a silent restart from nothing), and writes through a temporary file
  (`.<file>.<pid>.tmp`) and `os.replace` with mode 0600 (the file holds the API token), so a crash leaves the old
  or the new file whole. None of the three paths is followed if it is a symlink, nor used if it is not a regular
  file owned by this user (`UnsafePathError`, naming the path and why): each is opened with `O_NOFOLLOW` (the
  temporary file with `O_CREAT | O_EXCL` too) and set to 0600 on the descriptor, and the temporary file is
  renamed only while the path still names the file written; another user's planted link or file is never written
  through, truncated or made the state.
- `StateWriter`: a thread that saves at most every `interval_s` while the store changed (`Store.revision`), and
  once more on `stop()`: a SIGKILL loses at most the last interval. A large state (tens of MB) takes a while to
  encode, and the encoder holds the GIL, slowing request threads meanwhile: the writer then waits four times as long
  as its last save took, so saving never takes more than a fifth of the time (and a SIGKILL loses a little more).

Threads: `StateWriter` runs its own thread; the first save may come from the caller's thread at `stop()` after
that thread ended. Saves are serialised by the writer's lock; each takes the store's RLock while it copies the state
(persist.dump) and encodes it after releasing it (persist.as_text). `StateFile` itself is used by one thread at a time.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

from prefactor_otel.devserver import persist
from prefactor_otel.devserver.store import Store

STATE_FILE_NAME = "local-server.json"


class StateFileError(Exception):
    """The state file exists but cannot be used; the message names the path and what to do."""


class StateLockedError(StateFileError):
    """Another `prefactor-otel serve` holds the state file."""


class UnsafePathError(StateFileError):
    """The state file, its lock or its temporary file is a symlink, or not a regular file owned by this user."""


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)  # 0 on Windows: there a symlink is refused by an lstat first
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # a FIFO planted as the state must be refused, not block the open


def default_state_path(environ: Mapping[str, str] | None = None, platform: str | None = None) -> Path:
    """The user's data directory for prefactor-otel, plus `local-server.json`."""
    env = os.environ if environ is None else environ
    system = sys.platform if platform is None else platform
    xdg = env.get("XDG_DATA_HOME", "").strip()
    if xdg and os.path.isabs(xdg):  # the XDG spec: a relative value is invalid and ignored
        base = Path(xdg)
    elif system.startswith("win"):
        local = env.get("LOCALAPPDATA", "").strip()
        base = Path(local) if local else Path(env.get("USERPROFILE") or Path.home()) / "AppData" / "Local"
    elif system == "darwin":
        base = _home(env) / "Library" / "Application Support"
    else:
        base = _home(env) / ".local" / "share"
    return base / "prefactor-otel" / STATE_FILE_NAME


def _home(env: Mapping[str, str]) -> Path:
    home = env.get("HOME", "").strip()
    return Path(home) if home else Path.home()


def saved_token(path: str | os.PathLike[str]) -> str | None:
    """The token a state file holds, for `show`/`terminate` (no lock taken: a running server holds it); None when
    there is no file or it cannot be used (a symlink, another's file, not a state): the caller says what to do."""
    try:
        fd = _open_own(Path(path).expanduser().absolute(), os.O_RDONLY, "state file")
        with os.fdopen(fd, "r", encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, StateFileError, ValueError):
        return None
    token = data.get("token") if isinstance(data, dict) else None
    return token if isinstance(token, str) and token else None


class StateFile:
    """One state file and its lock. `acquire()` first; `release()` when the server is gone."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).expanduser().absolute()
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self._lock_file: IO[str] | None = None

    @property
    def temporary_path(self) -> Path:
        """Where this process writes the next state before renaming it over the file (one per pid)."""
        return self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")

    def acquire(self) -> None:
        """Create the directory (0700) and take the lock, or raise `StateLockedError` / `StateFileError`."""
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = _open_own(self.lock_path, os.O_RDWR | os.O_CREAT, "lock file")
            lock_file = os.fdopen(fd, "r+", encoding="utf-8")
        except OSError as exc:
            raise StateFileError(f"cannot use the state file {self.path}: {exc.strerror or exc}") from None
        try:
            # Refused before anything is written: the state itself, and this process's temporary file.
            _check_existing(self.path, "state file")
            _check_existing(self.temporary_path, "temporary file")
        except BaseException:
            lock_file.close()
            raise
        if not _try_lock(lock_file):
            lock_file.seek(0)
            holder = lock_file.read().strip()
            lock_file.close()
            who = f" (pid {holder})" if holder.isdigit() else ""
            raise StateLockedError(
                f"another prefactor-otel serve{who} is using the state file {self.path}; stop it first, "
                "or give this one its own file with --state PATH (or --memory to keep nothing)"
            )
        lock_file.seek(0)
        lock_file.truncate()
        lock_file.write(str(os.getpid()))
        lock_file.flush()
        self._lock_file = lock_file

    def release(self) -> None:
        lock_file, self._lock_file = self._lock_file, None
        if lock_file is not None:
            with contextlib.suppress(OSError):
                lock_file.seek(0)
                lock_file.truncate()
            lock_file.close()  # closing drops the lock

    def read(self) -> persist.Loaded | None:
        """The saved state, or None when there is no file yet."""
        try:
            fd = _open_own(self.path, os.O_RDONLY, "state file")
            with os.fdopen(fd, "r", encoding="utf-8") as handle:
                text = handle.read()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise self._unusable(f"cannot read it ({getattr(exc, 'strerror', None) or exc})") from None
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise self._unusable(f"it is not valid JSON ({exc})") from None
        try:
            return persist.load(data)
        except persist.StateFormatError as exc:
            raise self._unusable(str(exc)) from None

    def _unusable(self, why: str) -> StateFileError:
        return StateFileError(
            f"the local server's state file {self.path} cannot be loaded: {why}. Move it away to keep it, or "
            "start over with --reset (discards its runs and mints a new agent id), or use --state PATH / --memory"
        )

    def remove(self) -> bool:
        """Delete the file (for `--reset`); True if there was one."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise StateFileError(f"cannot remove the state file {self.path}: {exc.strerror or exc}") from None
        return True

    def write_text(self, text: str) -> None:
        """Replace the file atomically: a new temporary file (0600) beside it, flushed to disk, then os.replace.
        Raises `UnsafePathError` (nothing written anywhere) if the temporary path is a symlink or another's file."""
        temporary = self.temporary_path
        _check_existing(temporary, "temporary file")
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()  # a regular file of ours (checked above): what a crash of a same-pid process left
        fd = _open_own(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, "temporary file")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
                written = os.fstat(handle.fileno())
            # The rename moves whatever the path names now: only the very file written may become the state.
            now = os.lstat(temporary)
            if (now.st_dev, now.st_ino) != (written.st_dev, written.st_ino):
                raise UnsafePathError(
                    f"refusing to save the state file {self.path}: its temporary file {temporary} was replaced "
                    "while being written (by another program or user); nothing was saved"
                )
            os.replace(temporary, self.path)
        except UnsafePathError:
            raise  # the path is not ours any more: leave it alone
        except BaseException:
            with contextlib.suppress(OSError):
                temporary.unlink()
            raise


def _unsafe(path: Path, what: str, why: str) -> UnsafePathError:
    return UnsafePathError(
        f"refusing the state's {what} {path}: {why}. The state file, its lock and its temporary file must be "
        "regular files owned by you (the state holds the API token); remove it if you put it there, or use "
        "another --state PATH"
    )


def _symlink_reason(path: Path) -> str:
    try:
        return f"it is a symbolic link (to {os.readlink(path)}), which is never followed"
    except OSError:
        return "it is a symbolic link, which is never followed"


def _refusal(path: Path, what: str, info: os.stat_result) -> UnsafePathError | None:
    """Why an existing path (lstat'ed or fstat'ed) is not a regular file of ours, or None."""
    if stat.S_ISLNK(info.st_mode):
        return _unsafe(path, what, _symlink_reason(path))
    if not stat.S_ISREG(info.st_mode):
        kind = "a directory" if stat.S_ISDIR(info.st_mode) else "a FIFO" if stat.S_ISFIFO(info.st_mode) else "special"
        return _unsafe(path, what, f"it is not a regular file ({kind})")
    if hasattr(os, "geteuid") and info.st_uid != os.geteuid():
        return _unsafe(path, what, f"it belongs to another user (uid {info.st_uid})")
    return None


def _check_existing(path: Path, what: str) -> None:
    """Refuse `path` if it exists and is not a regular file of ours (a missing one is fine)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StateFileError(f"cannot use the state's {what} {path}: {exc.strerror or exc}") from None
    refusal = _refusal(path, what, info)
    if refusal is not None:
        raise refusal


def _open_own(path: Path, flags: int, what: str) -> int:
    """os.open without following a symlink at `path`; the descriptor of a regular file owned by this user, set to
    0600 (when opened for writing), or `UnsafePathError`. Other OSErrors (a missing file, a full disk) pass."""
    if not _NOFOLLOW and os.path.islink(path):
        raise _unsafe(path, what, _symlink_reason(path))
    try:
        fd = os.open(path, flags | _NOFOLLOW | _CLOEXEC | _NONBLOCK, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP or (exc.errno != errno.ENOENT and os.path.islink(path)):
            raise _unsafe(path, what, _symlink_reason(path)) from None
        if exc.errno == errno.EISDIR:
            raise _unsafe(path, what, "it is not a regular file (a directory)") from None
        raise
    try:
        refusal = _refusal(path, what, os.fstat(fd))
        if refusal is not None:
            raise refusal
        if flags & (os.O_WRONLY | os.O_RDWR) and hasattr(os, "fchmod"):
            os.fchmod(fd, 0o600)  # the umask cannot widen it, nor an older file's mode stay wider
    except BaseException:
        os.close(fd)
        raise
    return fd


def _try_lock(lock_file: IO[str]) -> bool:
    try:
        if sys.platform.startswith("win"):
            import msvcrt

            lock_file.seek(0)
            msvcrt.locking(lock_file.fileno(), msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined]
        else:
            import fcntl

            fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


class StateWriter:
    """Saves `store` (with `token`) to `state_file` while it changes: at most every `interval_s`, and on stop."""

    def __init__(
        self,
        store: Store,
        token: str,
        state_file: StateFile,
        *,
        interval_s: float = 0.5,
        on_error: Callable[[str], Any] | None = None,
    ) -> None:
        self._store = store
        self._token = token
        self._file = state_file
        self._interval_s = interval_s
        self._on_error = on_error
        self._saved_revision: int | None = None
        self._last_save_s = 0.0
        self._save_lock = threading.Lock()
        self._failing = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prefactor-devserver-state", daemon=True)

    def start(self) -> StateWriter:
        self._thread.start()
        return self

    def save(self, *, force: bool = False) -> bool:
        """Write now if the store changed since the last save (or `force`); False if the write failed."""
        with self._save_lock:
            started = time.monotonic()
            with self._store.account.lock:
                revision = self._store.revision
                if revision == self._saved_revision and not force:
                    return True
                dumped = persist.dump(self._store, self._token)
            text = persist.as_text(dumped)  # outside the lock: request threads go on meanwhile
            try:
                self._file.write_text(text)
            except UnsafePathError as exc:
                if not self._failing and self._on_error is not None:
                    self._on_error(f"{exc}; retrying")
                self._failing = True
                return False
            except OSError as exc:
                if not self._failing and self._on_error is not None:
                    # Once per failing streak: a full disk must not flood the terminal every half second.
                    self._on_error(f"cannot save the state to {self._file.path}: {exc.strerror or exc}; retrying")
                self._failing = True
                return False
            if self._failing and self._on_error is not None:
                self._on_error(f"state saved to {self._file.path} again")
            self._failing = False
            self._saved_revision = revision
            self._last_save_s = time.monotonic() - started
            return True

    def _run(self) -> None:
        while not self._stop.wait(max(self._interval_s, 4 * self._last_save_s)):
            self.save()

    def stop(self) -> bool:
        """End the thread and save a last time; False if that save failed."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        return self.save()
