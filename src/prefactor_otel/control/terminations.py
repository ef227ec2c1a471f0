"""Control: what Prefactor tells a run to do (terminate), and how the application learns of it.

Prefactor can terminate a run (an operator in the UI, a policy). The exporter learns of it in two ways: a span
answer carries `control: {"terminate": true, "reason": ...}`, or a poll of the run finds it `terminated` (see
poll.py). Either way it calls `TerminationRegistry.record`; the application then sees it through
callbacks (`on_terminate`), checks in the current OTel context (`is_terminated`, `termination_reason`,
`raise_if_terminated`), a `threading.Event` (`termination_event`) or an awaitable (`wait_for_termination`).

Threads and locks: `record` runs on the exporter thread that learned of the termination (a sender, or the
thread polling runs); the checks run on any application thread, and `wait_for_termination` on any event loop.
`TerminationRegistry._lock` guards every table of a registry (terminations by run and by trace, events,
asyncio waiters, callbacks) and is held only for dict operations: callbacks run, events are set and loops are
woken after it is released, so a callback may call back into the registry. Callbacks run on the recording
exporter thread and must be quick (set a flag, cancel a task); one that raises is logged (rate-limited) and
counted, and the others still run.

Runs of other processes: items replayed from the spool may belong to a run of a process that ended (the spool
is shared by every process with the same configuration). A termination of such a run is recorded apart
(`record_not_ours`): the replay drops that run's items (`run_terminated`), it is logged and counted, and it never
reaches this process's callbacks, checks, events or waiters (they are about the application's own runs).

Cheap when nothing is terminated: a check is one context lookup and one dict lookup, no lock (a dict read is
atomic under the GIL; a stale miss only delays what the next check sees).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import weakref
from collections import Counter, OrderedDict
from collections.abc import Callable
from typing import NamedTuple

from opentelemetry import trace

from prefactor_otel._logging import RateLimitedLog
from prefactor_otel.transport.outcomes import MAX_REASON_CHARS

SOURCE_RESPONSE = "response"  # `control` in a span create/finish answer
SOURCE_POLL = "poll"  # GET /api/v1/agent_instance/{id} found the run terminated

MAX_TERMINATIONS = 10_000  # newest kept; an older run's termination is forgotten (its run is long over)


class Termination(NamedTuple):
    """One terminated run: its Prefactor id, its OTel trace id when known, the operator's reason, and how the
    exporter learned of it (`"response"` or `"poll"`)."""

    instance_id: str
    trace_id: int | None
    reason: str | None
    source: str


class PrefactorTerminatedError(Exception):
    """Raised by `raise_if_terminated` in a run Prefactor has terminated (the name Prefactor's Python SDK uses).

    Its message says who and why as a user knows them: `run <id> terminated in Prefactor: <reason>`. Prefactor's
    answers name no actor (an operator in the UI, or a policy), so "in Prefactor" is all that is known of who;
    Prefactor's own SDK says `terminated by p2`, an internal name that means nothing to a user."""

    def __init__(self, termination: Termination) -> None:
        reason = termination.reason or "no reason given"
        super().__init__(f"run {termination.instance_id} terminated in Prefactor: {reason}")
        self.termination = termination
        self.instance_id = termination.instance_id
        self.trace_id = termination.trace_id
        self.reason = termination.reason


TerminationCallback = Callable[[Termination], None]


def clean_reason(value: object) -> str | None:
    """A reason as the registry keeps it: text, at most MAX_REASON_CHARS; None when absent."""
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    return text[:MAX_REASON_CHARS]


def current_trace_id() -> int | None:
    """The trace id of the span current in this context (thread or asyncio task), or None outside any span."""
    context = trace.get_current_span().get_span_context()
    return context.trace_id if context.is_valid else None


class TerminationRegistry:
    """Terminated runs, by Prefactor instance id and by OTel trace id, and who waits for them. Bounded: the newest
    `max_terminations` are kept. Events are held weakly (an event the application dropped costs nothing)."""

    def __init__(self, max_terminations: int = MAX_TERMINATIONS) -> None:
        self._max = max_terminations
        self._lock = threading.Lock()
        self._by_instance: OrderedDict[str, Termination] = OrderedDict()
        self._by_trace: dict[int, Termination] = {}
        self._events: weakref.WeakValueDictionary[int, threading.Event] = weakref.WeakValueDictionary()
        self._waiters: dict[int, list[tuple[asyncio.AbstractEventLoop, asyncio.Future[Termination]]]] = {}
        self._callbacks: tuple[TerminationCallback, ...] = ()  # replaced, never mutated: iterated without the lock
        # Terminated runs this process did not start (replayed from another process's spool): instance id -> reason.
        self._not_ours: OrderedDict[str, str | None] = OrderedDict()
        self._log = RateLimitedLog()
        self.counters: Counter[str] = Counter()  # under _lock

    def reset_after_fork(self) -> None:
        """In a forked child: new locks (the parent may have held them at the fork); the asyncio waiters belong to
        the parent's loops and are dropped. Terminations, events and callbacks are kept."""
        self._lock = threading.Lock()
        self._log = RateLimitedLog()
        self._waiters = {}

    # ------------------------------------------------------------------ the exporter's side

    def record(self, instance_id: str, trace_id: int | None, reason: object, source: str) -> bool:
        """Note that Prefactor terminated this run. True the first time; later calls for the same run are no-ops,
        except that a trace id learned later is attached (its waiters are then woken; callbacks do not run
        twice). Never raises; callbacks run on this thread before it returns."""
        with self._lock:
            known = self._by_instance.get(instance_id)
            if known is not None:
                if known.trace_id is not None or trace_id is None:
                    return False
                termination = known._replace(trace_id=trace_id)
                self._by_instance[instance_id] = termination
                first = False
            else:
                termination = Termination(instance_id, trace_id, clean_reason(reason), source)
                self._by_instance[instance_id] = termination
                self.counters[f"terminations:{source}"] += 1
                first = True
                while len(self._by_instance) > self._max:
                    _, old = self._by_instance.popitem(last=False)
                    if old.trace_id is not None and self._by_trace.get(old.trace_id) is old:
                        del self._by_trace[old.trace_id]
                    self.counters["terminations_forgotten"] += 1
            event = waiters = None
            if trace_id is not None:
                self._by_trace[trace_id] = termination
                event = self._events.pop(trace_id, None)
                waiters = self._waiters.pop(trace_id, None)
            callbacks = self._callbacks if first else ()
        if event is not None:
            event.set()
        for loop, future in waiters or ():
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
                loop.call_soon_threadsafe(_resolve, future, termination)
        for callback in callbacks:
            try:
                callback(termination)
            except Exception as exc:  # the application's code must not break the exporter thread
                with self._lock:
                    self.counters["callback_errors"] += 1
                self._log.log(
                    logging.WARNING,
                    "callback",
                    "Prefactor: an on_terminate callback raised %s; the other callbacks still ran",
                    type(exc).__name__,
                )
        return first

    def record_not_ours(self, instance_id: str, reason: object, source: str) -> bool:
        """Note that Prefactor terminated a run this process did not start (its items came from the spool of a
        process that ended). Only remembered, so the replay drops the run's other items (`run_terminated`),
        logged and counted: no callback, event, waiter or check of this process hears of it. True the first
        time. Never raises."""
        with self._lock:
            if instance_id in self._not_ours or instance_id in self._by_instance:
                return False
            self._not_ours[instance_id] = clean_reason(reason)
            while len(self._not_ours) > self._max:
                self._not_ours.popitem(last=False)
            self.counters[f"terminations_not_ours:{source}"] += 1
        self._log.log(
            logging.WARNING,
            "not_ours",
            "Prefactor: run %s, whose items were replayed from the spool of a process that ended, was terminated in "
            "Prefactor (%s); its remaining spooled items are dropped (counted as run_terminated). It is not a run of "
            "this process: on_terminate callbacks are not called for it",
            instance_id,
            clean_reason(reason) or "no reason given",
        )
        return True

    def run_terminated(self, instance_id: str) -> bool:
        """Whether the run was terminated, this process's or not: what the spool replay asks before sending."""
        return instance_id in self._by_instance or instance_id in self._not_ours

    # ------------------------------------------------------------------ the application's side

    def for_trace(self, trace_id: int | None) -> Termination | None:
        return None if trace_id is None else self._by_trace.get(trace_id)

    def for_instance(self, instance_id: str) -> Termination | None:
        return self._by_instance.get(instance_id)

    def add_callback(self, callback: TerminationCallback) -> Callable[[], None]:
        """Call `callback(termination)` for every run terminated from now on; returns the unsubscribe function."""
        if not callable(callback):
            raise TypeError("on_terminate needs a callable taking one Termination")
        with self._lock:
            self._callbacks = (*self._callbacks, callback)

        def unsubscribe() -> None:
            with self._lock:
                callbacks = list(self._callbacks)
                if callback in callbacks:
                    callbacks.remove(callback)
                    self._callbacks = tuple(callbacks)

        return unsubscribe

    def event(self, trace_id: int) -> threading.Event:
        """An event set when the run of `trace_id` is terminated (already set if it is). The same event is handed
        out while someone holds it."""
        with self._lock:
            if trace_id in self._by_trace:
                done = threading.Event()
                done.set()
                return done
            event = self._events.get(trace_id)
            if event is None:
                event = threading.Event()
                self._events[trace_id] = event
            return event

    async def wait(self, trace_id: int, timeout: float | None = None) -> Termination | None:
        """The run's termination once it happens; None after `timeout` seconds (None: wait as long as it takes).
        Cancelling the awaiting task cancels only the wait."""
        loop = asyncio.get_running_loop()
        with self._lock:
            known = self._by_trace.get(trace_id)
            if known is not None:
                return known
            future: asyncio.Future[Termination] = loop.create_future()
            entry = (loop, future)
            self._waiters.setdefault(trace_id, []).append(entry)
        try:
            return await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            return None
        finally:
            with self._lock:
                waiting = self._waiters.get(trace_id)
                if waiting is not None and entry in waiting:
                    waiting.remove(entry)
                    if not waiting:
                        del self._waiters[trace_id]


def _resolve(future: asyncio.Future[Termination], termination: Termination) -> None:
    if not future.done():  # it may have timed out or been cancelled meanwhile
        future.set_result(termination)


# The process's registry: every exporter records here, so the application needs no handle on the exporter.
TERMINATIONS = TerminationRegistry()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=TERMINATIONS.reset_after_fork)


def _trace_or_current(trace_id: int | None) -> int | None:
    return current_trace_id() if trace_id is None else trace_id


def on_terminate(callback: TerminationCallback) -> Callable[[], None]:
    """Call `callback(termination)` whenever Prefactor terminates a run from now on (any run; compare
    `termination.trace_id` with yours). Runs on an exporter thread: keep it quick, never block. Returns a
    function that unsubscribes."""
    return TERMINATIONS.add_callback(callback)


def termination(trace_id: int | None = None) -> Termination | None:
    """The termination of the run of `trace_id` (default: the current span's trace), or None."""
    return TERMINATIONS.for_trace(_trace_or_current(trace_id))


def is_terminated(trace_id: int | None = None) -> bool:
    """True when Prefactor has terminated the run of `trace_id` (default: the current span's trace). Outside any
    span, False."""
    return TERMINATIONS.for_trace(_trace_or_current(trace_id)) is not None


def termination_reason(trace_id: int | None = None) -> str | None:
    """The reason Prefactor gave for terminating the run (default: the current span's), or None."""
    found = TERMINATIONS.for_trace(_trace_or_current(trace_id))
    return None if found is None else found.reason


def raise_if_terminated(trace_id: int | None = None) -> None:
    """Raise PrefactorTerminatedError when the run of `trace_id` (default: the current span's trace) has been
    terminated; otherwise return at once. For agent loops and tools: call it between steps."""
    found = TERMINATIONS.for_trace(_trace_or_current(trace_id))
    if found is not None:
        raise PrefactorTerminatedError(found)


def _required_trace(trace_id: int | None, what: str) -> int:
    resolved = _trace_or_current(trace_id)
    if resolved is None:
        raise ValueError(f"{what}: no span is current here; pass trace_id (span.get_span_context().trace_id)")
    return resolved


def termination_event(trace_id: int | None = None) -> threading.Event:
    """A threading.Event set when the run of `trace_id` (default: the current span's trace) is terminated.
    Raises ValueError outside any span without a trace_id."""
    return TERMINATIONS.event(_required_trace(trace_id, "termination_event"))


async def wait_for_termination(trace_id: int | None = None, timeout: float | None = None) -> Termination | None:
    """Wait (without blocking the event loop) until the run of `trace_id` (default: the current span's trace) is
    terminated; the Termination, or None after `timeout` seconds. Raises ValueError outside any span without a
    trace_id."""
    return await TERMINATIONS.wait(_required_trace(trace_id, "wait_for_termination"), timeout)
