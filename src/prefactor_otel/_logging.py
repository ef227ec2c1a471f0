"""The exporter's own logger (`prefactor_otel`), its level from the environment, and where its lines go.

Rate-limited (`RateLimitedLog`) so a dead backend cannot flood the host application's logs.

Where the lines go (decided for issue 14: users must see where their spans go without configuring anything):
- Everything is logged on the `prefactor_otel` logger, so an application that configured logging gets our lines
  through its own handlers, filtered by its own levels, once.
- `PREFACTOR_LOG_LEVEL` (alias `OTEL_EXPORTER_PREFACTOR_LOG_LEVEL`), one of debug, info, warning, error, off, sets
  the level of the `prefactor_otel` logger; when it is unset, `OTEL_PYTHON_LOG_LEVEL` (as `opentelemetry-instrument`
  users set it) does. Unset both: the logger keeps the level it inherits (the application's).
- When no handler would take a record (the application configured no logging, as under a plain
  `opentelemetry-instrument` run), `StderrWhenUnconfigured`, the one handler this package adds, writes it to stderr
  instead: warnings and errors (as Python's own last-resort handler would), lower levels when PREFACTOR_LOG_LEVEL
  asks for them. It stands aside as soon as the application has a handler of its own.
- `announce()` is for the one start-up line saying where spans go: logged at INFO, and with nothing configured
  (no handler, no level set for `prefactor_otel`) written to stderr even though INFO is below the default WARNING:
  that single line is the confirmation users look for. `PREFACTOR_LOG_LEVEL=warning` (or higher) silences it.

Threads: any exporter thread logs. `RateLimitedLog._lock` guards its per-key table (a forked child must call
`reset_after_fork`, the parent may have held the lock at the fork); `_announced_lock` the set of lines already said
in this process (renewed in a forked child; the set is kept: the child's spans go where the parent said);
`configure_level` runs where an exporter is built (usually once, on the main thread).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Mapping

logger = logging.getLogger("prefactor_otel")

LOG_LEVEL_ENV = "PREFACTOR_LOG_LEVEL"
LOG_LEVEL_ALIAS = "OTEL_EXPORTER_PREFACTOR_LOG_LEVEL"
OTEL_LOG_LEVEL_ENV = "OTEL_PYTHON_LOG_LEVEL"
OFF = logging.CRITICAL + 1
LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
    "off": OFF,
    "none": OFF,
}


def _other_handler(start: logging.Logger, ignore: logging.Handler | None) -> bool:
    """True when a handler other than `ignore` would see a record logged on `start` (the chain logging walks)."""
    current: logging.Logger | None = start
    while current is not None:
        if any(handler is not ignore for handler in current.handlers):
            return True
        if not current.propagate:
            return False
        current = current.parent
    return False


class StderrWhenUnconfigured(logging.Handler):
    """Writes a record to stderr only when no other handler would take it (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if _other_handler(logger, self):
            return
        threshold = logger.level if logger.level != logging.NOTSET else logging.WARNING
        if record.levelno < threshold and not getattr(record, "prefactor_announce", False):
            return
        write_stderr(self.format(record))


def write_stderr(line: str) -> None:
    try:
        stream = sys.stderr  # looked up at each write: the application may have replaced it
        if stream is not None:
            stream.write(line + "\n")
            stream.flush()
    except Exception:  # never fail the host application over a log line
        pass


def _install_fallback() -> StderrWhenUnconfigured:
    for handler in logger.handlers:
        if isinstance(handler, StderrWhenUnconfigured):
            return handler
    handler = StderrWhenUnconfigured()
    logger.addHandler(handler)
    return handler


_FALLBACK = _install_fallback()


def configure_level(environ: Mapping[str, str] | None = None) -> None:
    """Set the `prefactor_otel` logger's level from PREFACTOR_LOG_LEVEL (its alias first), else
    OTEL_PYTHON_LOG_LEVEL; leave it alone when neither is set. An unknown value: one warning, level unchanged."""
    env = os.environ if environ is None else environ
    for name in (LOG_LEVEL_ALIAS, LOG_LEVEL_ENV, OTEL_LOG_LEVEL_ENV):
        raw = env.get(name)
        if raw is None or not raw.strip():
            continue
        level = LEVELS.get(raw.strip().lower())
        if level is None:
            logger.warning(
                "Prefactor: %s: expected one of debug, info, warning, error, off, got %r; the level is unchanged",
                name,
                raw.strip()[:40],
            )
            return
        logger.setLevel(level)
        return


_announced: set[str] = set()
_announced_lock = threading.Lock()


def _new_announced_lock() -> None:
    global _announced_lock
    _announced_lock = threading.Lock()  # another thread of the parent may have held it at the fork


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_announced_lock)


def announce(line: str) -> None:
    """Say `line` once per process (the same line again is not repeated): logged at INFO, and written to stderr
    when nothing is configured to show it (module docstring)."""
    with _announced_lock:
        if line in _announced:
            return
        _announced.add(line)
    if logger.isEnabledFor(logging.INFO):
        # to the application's handlers, or to stderr through StderrWhenUnconfigured (INFO is below its threshold)
        logger.info(line, extra={"prefactor_announce": True})
    elif logger.level == logging.NOTSET and not _other_handler(logger, _FALLBACK):
        write_stderr(line)


class RateLimitedLog:
    """Logs each distinct key at most once per `interval` seconds, and says how many were suppressed."""

    def __init__(self, interval: float = 60.0) -> None:
        self._interval = interval
        self._last: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def reset_after_fork(self) -> None:
        """In a forked child: a new lock (the parent's may have been held at the fork); the table is kept."""
        self._lock = threading.Lock()

    def log(self, level: int, key: str, message: str, *args: object) -> None:
        now = time.monotonic()
        with self._lock:
            last, suppressed = self._last.get(key, (float("-inf"), 0))
            if now - last < self._interval:
                self._last[key] = (last, suppressed + 1)
                return
            self._last[key] = (now, 0)
        if suppressed:
            message += " (%d similar messages suppressed)"
            args = (*args, suppressed)
        logger.log(level, message, *args)
