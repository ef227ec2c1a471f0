"""Where `prefactor-otel serve` keeps its state, and how it writes it: one JSON file, locked, replaced atomically.

- `default_state_path()`: `$XDG_DATA_HOME/prefactor-otel/local-server.json`, else the platform's user data
  directory (`~/.local/share`, macOS `~/Library/Application Support`, Windows `%LOCALAPPDATA%`).
- `StateFile`: takes an exclusive lock on `<file>.lock` (a second server on the same file is refused with
  `StateLockedError`, not left to corrupt it), reads (`StateFileError` names the path and `--reset` for anything
  it cannot load: never a traceback, never a silent restart from nothing), and writes through a temporary file
  and `os.replace` with mode 0600 (the file holds the API token), so a crash leaves the old or the new file whole.
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
import json
import os
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


class StateFile:
    """One state file and its lock. `acquire()` first; `release()` when the server is gone."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).expanduser().absolute()
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self._lock_file: IO[str] | None = None

    def acquire(self) -> None:
        """Create the directory (0700) and take the lock, or raise `StateLockedError` / `StateFileError`."""
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            lock_file = open(self.lock_path, "a+", encoding="utf-8")  # noqa: SIM115 - held for the server's life
        except OSError as exc:
            raise StateFileError(f"cannot use the state file {self.path}: {exc.strerror or exc}") from None
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
            text = self.path.read_text(encoding="utf-8")
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
        """Replace the file atomically: a temporary file (0600) beside it, flushed to disk, then os.replace."""
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                temporary.unlink()
            raise


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
            with self._store._lock:
                revision = self._store.revision
                if revision == self._saved_revision and not force:
                    return True
                dumped = persist.dump(self._store, self._token)
            text = persist.as_text(dumped)  # outside the lock: request threads go on meanwhile
            try:
                self._file.write_text(text)
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
