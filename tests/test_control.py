"""Control reaches the application: the termination registry and its public API (callbacks, checks in the current
span's context, a threading.Event, an asyncio wait)."""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest

from prefactor_otel import (
    PrefactorTerminatedError,
    Termination,
    is_terminated,
    on_terminate,
    raise_if_terminated,
    termination,
    termination_event,
    termination_reason,
    wait_for_termination,
)
from prefactor_otel.control.terminations import TERMINATIONS, TerminationRegistry
from tests.spans import make_provider

# Every test uses trace ids of fresh spans (random 128-bit) or of its own registry: the process-wide registry is
# shared by the whole test session.


def _tracer():  # type: ignore[no-untyped-def]
    provider, _ = make_provider()
    return provider.get_tracer("tests.control")


def test_raise_if_terminated_raises_in_the_terminated_runs_context_only():
    tracer = _tracer()
    with tracer.start_as_current_span("other run") as other:
        other_trace = other.get_span_context().trace_id
    with tracer.start_as_current_span("invoke_agent support") as span:
        trace_id = span.get_span_context().trace_id
        assert not is_terminated() and termination_reason() is None
        raise_if_terminated()  # nothing yet: returns
        assert TERMINATIONS.record("run-a", trace_id, "budget exceeded", "response") is True
        with tracer.start_as_current_span("execute_tool lookup"):  # a tool deep in the run sees it too
            assert is_terminated()
            assert termination_reason() == "budget exceeded"
            with pytest.raises(PrefactorTerminatedError) as raised:
                raise_if_terminated()
    error = raised.value
    assert (error.instance_id, error.trace_id, error.reason) == ("run-a", trace_id, "budget exceeded")
    assert str(error) == "run run-a terminated in Prefactor: budget exceeded"  # who and why, as a user knows them
    assert termination(trace_id) == Termination("run-a", trace_id, "budget exceeded", "response")
    assert not is_terminated(other_trace)
    # Outside any span: nothing is terminated, nothing raises.
    assert not is_terminated() and termination_reason() is None and termination() is None
    raise_if_terminated()


def test_callbacks_run_once_per_run_and_one_that_raises_does_not_stop_the_others(caplog):
    registry = TerminationRegistry()
    seen: list[Termination] = []

    def broken(_: Termination) -> None:
        raise RuntimeError("application bug")

    registry.add_callback(broken)
    unsubscribe = registry.add_callback(seen.append)
    with caplog.at_level(logging.WARNING, logger="prefactor_otel"):
        assert registry.record("run-a", 7, "stop", "response") is True
        assert registry.record("run-a", 7, "again", "poll") is False  # the same run: a no-op
        assert registry.record("run-b", 8, None, "poll") is True
    assert seen == [Termination("run-a", 7, "stop", "response"), Termination("run-b", 8, None, "poll")]
    assert registry.counters["callback_errors"] == 2
    assert [r.levelno for r in caplog.records] == [logging.WARNING]  # rate-limited: one line, not one per run
    unsubscribe()
    registry.record("run-c", 9, "late", "response")
    assert len(seen) == 2


def test_the_public_on_terminate_subscribes_to_the_process_registry():
    seen: list[Termination] = []
    unsubscribe = on_terminate(seen.append)
    try:
        TERMINATIONS.record("run-public-callback", None, "operator", "poll")
    finally:
        unsubscribe()
    assert Termination("run-public-callback", None, "operator", "poll") in seen


def test_a_trace_id_learned_later_is_attached_without_running_callbacks_again():
    registry = TerminationRegistry()
    seen: list[Termination] = []
    registry.add_callback(seen.append)
    registry.record("run-a", None, "stop", "response")  # e.g. a replayed item: its trace is not known
    event = registry.event(42)
    assert registry.for_trace(42) is None and not event.is_set()
    assert registry.record("run-a", 42, None, "poll") is False
    assert registry.for_trace(42) == Termination("run-a", 42, "stop", "response")
    assert event.is_set() and len(seen) == 1


def test_the_event_is_set_from_another_thread_and_is_already_set_once_terminated():
    registry = TerminationRegistry()
    event = registry.event(5)
    assert registry.event(5) is event  # one event per trace while someone holds it
    woke = threading.Event()

    def agent_thread() -> None:
        if event.wait(30):  # a safety limit only
            woke.set()

    waiter = threading.Thread(target=agent_thread)
    waiter.start()
    registry.record("run-a", 5, "stop", "poll")
    waiter.join(30)
    assert woke.is_set()
    assert registry.event(5).is_set()


def test_termination_event_uses_the_current_span_and_refuses_to_guess_outside_one():
    tracer = _tracer()
    with tracer.start_as_current_span("run") as span:
        event = termination_event()
        TERMINATIONS.record("run-event", span.get_span_context().trace_id, None, "response")
    assert event.is_set()
    with pytest.raises(ValueError, match="trace_id"):
        termination_event()


def test_an_asyncio_task_waits_without_blocking_its_loop_and_is_woken_from_an_exporter_thread():
    tracer = _tracer()

    async def agent() -> tuple[Termination | None, Termination | None, int]:
        with tracer.start_as_current_span("run") as span:
            trace_id = span.get_span_context().trace_id
            assert await wait_for_termination(timeout=0.01) is None  # not terminated: times out
            waiting = asyncio.create_task(wait_for_termination(timeout=30))  # 30 s: a safety limit only
            ticks = 0
            while not waiting.done() and ticks < 3000:  # the loop keeps running while the task waits
                ticks += 1
                if ticks == 5:  # the exporter learns of it on its own thread
                    threading.Thread(target=TERMINATIONS.record, args=("run-async", trace_id, "halt", "poll")).start()
                await asyncio.sleep(0.01)
            first = await waiting
            again = await wait_for_termination()  # already terminated: at once
            return first, again, ticks

    first, again, ticks = asyncio.run(agent())
    assert first is not None and first.instance_id == "run-async" and first.reason == "halt"
    assert again == first and ticks >= 5
    with pytest.raises(ValueError):
        asyncio.run(wait_for_termination())  # outside any span, without a trace id


def test_a_waiter_whose_loop_is_gone_does_not_break_recording():
    registry = TerminationRegistry()
    seen: list[Termination] = []
    registry.add_callback(seen.append)
    loop = asyncio.new_event_loop()
    task = loop.create_task(registry.wait(12))
    loop.run_until_complete(asyncio.sleep(0))  # the task starts waiting, then its loop is closed under it
    loop.close()
    assert registry.record("run-a", 12, None, "poll") is True
    assert len(seen) == 1 and registry.for_trace(12) is not None
    task._log_destroy_pending = False  # type: ignore[attr-defined]  # closed with a pending task on purpose


def test_the_registry_keeps_the_newest_terminations_only():
    registry = TerminationRegistry(max_terminations=3)
    for n in range(5):
        registry.record(f"run-{n}", n, None, "response")
    assert registry.for_instance("run-0") is None and registry.for_trace(1) is None
    assert [registry.for_trace(n) is not None for n in range(2, 5)] == [True, True, True]
    assert registry.counters["terminations_forgotten"] == 2


def test_a_long_reason_is_cut():
    registry = TerminationRegistry()
    registry.record("run-a", 1, "x" * 100_000, "response")
    found = registry.for_trace(1)
    assert found is not None and found.reason is not None and len(found.reason) == 2_000
