"""The exit budget of one exporter in one process: once the interpreter exits, everything the exporter still does
shares PREFACTOR_SHUTDOWN_TIMEOUT from the moment the exit is noticed.

`begin` sets the exit deadline once and caps the HTTP client's requests there (`cap`, given by the exporter); no
deadline computed through `deadline` passes it. Who notices the exit first depends on the set-up order (atexit is
LIFO): the exporter's atexit hook when the exporter was created after its TracerProvider; otherwise the provider's
hook (flush, shutdown) runs first, and the exit is noticed by `deadline` itself (on every call) and by the finisher
thread (every half second), both through `lifecycle.interpreter_exiting`.

One ExitBudget per process: a forked child builds its own (the parent's exit is not the child's).

Threads and locks: `begin` is called by the exporter's atexit hook, a multiprocessing worker's finalizer, the
finisher thread, or any thread computing a deadline (`deadline`: the exporting thread, `force_flush`, `shutdown`, the
finisher). No lock: the deadline is set once, and threads noticing the exit together set deadlines as close as they
are (the later write wins, microseconds apart); readers see either None or a deadline.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prefactor_otel.sdk import lifecycle


class ExitBudget:
    def __init__(self, shutdown_timeout: float, cap: Callable[[float], None]) -> None:
        """`shutdown_timeout`: the budget in seconds (PREFACTOR_SHUTDOWN_TIMEOUT); `cap(at)`: keep every request
        of the exporter's HTTP client within `at` (time.monotonic())."""
        self._shutdown_timeout = shutdown_timeout
        self._cap = cap
        self._at: float | None = None

    @property
    def started(self) -> bool:
        """True once the exit was noticed: the deadline is set."""
        return self._at is not None

    def deadline(self, seconds: float) -> float:
        """now + seconds, but never past the exit budget once the interpreter is exiting."""
        if self._at is None and lifecycle.interpreter_exiting():
            self.begin()
        deadline = time.monotonic() + seconds
        at = self._at
        return deadline if at is None else min(deadline, at)

    def begin(self) -> None:
        """The interpreter is exiting: from now on, PREFACTOR_SHUTDOWN_TIMEOUT for everything. Idempotent."""
        if self._at is not None:
            return
        at = time.monotonic() + self._shutdown_timeout
        self._at = at
        self._cap(at)
