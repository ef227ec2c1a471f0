"""The end of an outage, said once: after `cannot reach <host>: ...; retrying`, the line that says delivery resumed
and what was sent (`Prefactor export: delivery resumed after 12 s; 340 spans sent`).

The transport marks an outage when a request cannot reach the server (`failed`, where it logs the retry line) and
its end at the first successful answer (`answered`). Delivery then adds the spans delivered (`sent`) until the
source it drains has nothing ready left (`settled`: what waited has gone), and the line is logged once, at
WARNING, the level of the line it closes, so whoever saw the outage sees its end. An outage that resumes during
the wait (a failure before `settled`) goes on: the line is said when delivery has really resumed, with the
outage's whole length.

Threads: called by the sending thread (the one holding the exporter's send lock, or a gateway pipeline's worker):
one at a time, so no lock. Times are time.monotonic().
"""

from __future__ import annotations

import logging
import time

from prefactor_otel._logging import logger


class OutageReport:
    def __init__(self, host: str) -> None:
        self._host = host
        self._since: float | None = None  # the first failure of the outage going on
        self._resumed: tuple[float, float] | None = None  # (outage start, first answer) until said
        self._spans = 0  # delivered since the first answer

    @property
    def resuming(self) -> bool:
        """An outage ended and its line is not said yet: delivery counts what it sends (`sent`)."""
        return self._resumed is not None

    def failed(self) -> None:
        """A request could not reach the server."""
        if self._since is None:
            # A failure before the resumption was said: the same outage goes on.
            self._since = self._resumed[0] if self._resumed is not None else time.monotonic()
            self._resumed = None

    def answered(self) -> None:
        """The server answered a request with success."""
        if self._since is not None:
            self._resumed = (self._since, time.monotonic())
            self._since = None
            self._spans = 0

    def sent(self, spans: int) -> None:
        """Spans delivered while resuming."""
        if self._resumed is not None:
            self._spans += spans

    def settled(self) -> None:
        """What was ready has been delivered: say once that delivery resumed, and what was sent."""
        if self._resumed is None:
            return
        started, answered = self._resumed
        self._resumed = None
        logger.log(
            logging.WARNING,
            "Prefactor export: delivery to %s resumed after %s; %d span%s sent",
            self._host,
            _seconds(answered - started),
            self._spans,
            "" if self._spans == 1 else "s",
        )


def _seconds(value: float) -> str:
    return f"{value:.1f} s" if value < 10 else f"{round(value)} s"
