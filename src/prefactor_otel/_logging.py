"""The exporter's own logger, rate-limited so a dead backend cannot flood the host application's logs.

Threads: any exporter thread logs. `RateLimitedLog._lock` guards its per-key table; a forked child must call
`reset_after_fork` (the parent may have held the lock at the fork).
"""

from __future__ import annotations

import logging
import threading
import time

logger = logging.getLogger("prefactor_otel")

LOG_LEVEL_ENV = "PREFACTOR_LOG_LEVEL"
LOG_LEVEL_ALIAS = "OTEL_EXPORTER_PREFACTOR_LOG_LEVEL"


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
