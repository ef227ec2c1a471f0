"""Backpressure instead of loss, through the gateway's Python API against a real local server: the queue bound
answers 429 (Overloaded, unavailable=False), a full ingress log and a spool near its cap answer 503
(unavailable=True), both with a Retry-After of at least a second; once the server answers again every span the
gateway acknowledged is delivered exactly once and every run finished, and the gateway takes requests again."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from prefactor_otel.devserver import DevServer
from prefactor_otel.devserver.faults import Fault
from prefactor_otel.gateway.service import Gateway, Overloaded
from tests.spans import wait_for
from tests.test_gateway_core import all_finished, request_of, settings_for, start, stored_once, traced

RUNS_PER_REQUEST = 2


@pytest.fixture
def started() -> Iterator[list[Gateway]]:
    gateways: list[Gateway] = []
    yield gateways
    for gateway in gateways:
        gateway.shutdown(5)


def push_until_refused(gateway: Gateway, limit: int = 200) -> tuple[set[tuple[str, str]], int, Overloaded]:
    """Accept requests until one is refused; returns the spans acknowledged, the runs in them, and the refusal."""
    acked: set[tuple[str, str]] = set()
    runs = 0
    for _ in range(limit):
        spans = traced(runs=RUNS_PER_REQUEST)
        try:
            answer = gateway.accept("Bearer ingress-1", request_of(spans))
        except Overloaded as refusal:
            return acked, runs, refusal
        assert answer.rejected_spans == 0
        acked |= {(f"{s.context.trace_id:032x}", f"{s.context.span_id:016x}") for s in spans if s.context is not None}
        runs += RUNS_PER_REQUEST
    raise AssertionError(f"no request refused in {limit}")


def delivered_once(srv: DevServer, acked: set[tuple[str, str]], runs: int) -> None:
    assert wait_for(lambda: all_finished(srv, runs), 60), (len(srv.instances()), runs)
    assert set(stored_once(srv)) == acked  # every acknowledged span, once; nothing else
    assert all(instance["status"] == "complete" for instance in srv.instances())


def test_the_queue_bound_answers_429_and_nothing_acknowledged_is_lost(
    srv: DevServer, tmp_path: Path, started: list[Gateway]
) -> None:
    # The server swallows the first bulk request: the worker waits out its deadline, the queue fills meanwhile.
    srv.add_fault(Fault(black_hole=True, times=1))
    gateway = start(started, settings_for(srv, tmp_path, queue_max_spans=40, export_timeout=3))
    acked, runs, refusal = push_until_refused(gateway)
    assert not refusal.unavailable and refusal.retry_after_s >= 1
    assert "queued" in refusal.reason
    assert 0 < len(acked) <= 40
    assert gateway.stats()["overloaded_429"] == 1
    delivered_once(srv, acked, runs)
    # The queue emptied: requests are taken again.
    more = traced(runs=1)
    assert wait_for(lambda: _accepted(gateway, more), 30)
    assert wait_for(lambda: all_finished(srv, runs + 1), 30)


def _accepted(gateway: Gateway, spans: list) -> bool:  # type: ignore[type-arg]
    try:
        gateway.accept("Bearer ingress-1", request_of(spans))
    except Overloaded:
        return False
    return True


def test_a_full_ingress_log_answers_503_until_its_segments_are_retired(
    srv: DevServer, tmp_path: Path, started: list[Gateway]
) -> None:
    srv.add_fault(Fault(status=503, times=-1))  # Prefactor unavailable: nothing finishes, nothing is retired
    gateway = start(
        started,
        settings_for(srv, tmp_path, log_max_bytes=12_000, segment_bytes=3_000, export_timeout=1, spool=False),
    )
    acked, runs, refusal = push_until_refused(gateway)
    assert refusal.unavailable and refusal.retry_after_s >= 1 and "ingress log is full" in refusal.reason
    assert acked and gateway.stats()["overloaded_503"] >= 1
    srv.clear_faults()
    delivered_once(srv, acked, runs)
    assert wait_for(lambda: gateway.stats()["log_bytes"] < 3_000, 30)  # retired as the runs finished
    more = traced(runs=1)
    assert wait_for(lambda: _accepted(gateway, more), 30)


def test_a_spool_near_its_cap_answers_503_and_everything_spooled_is_delivered_later(
    srv: DevServer, tmp_path: Path, started: list[Gateway]
) -> None:
    srv.add_fault(Fault(status=503, times=-1))
    gateway = start(
        started,
        settings_for(srv, tmp_path, spool_max_bytes=400_000, export_timeout=1, queue_max_spans=16),
    )
    acked: set[tuple[str, str]] = set()
    runs = 0
    refusal: Overloaded | None = None
    for _ in range(400):  # 429s while the worker is busy spilling; a 503 once the spool is near its cap
        more, more_runs, refusal = push_until_refused(gateway)
        acked |= more
        runs += more_runs
        if refusal.unavailable:
            break
        wait_for(lambda: gateway.stats()["spans_queued"] == 0, 10)
    assert refusal is not None and refusal.unavailable and "spool" in refusal.reason
    pipeline = gateway.stats()["pipelines"]["default.default"]
    assert pipeline["spool_disk_bytes"] > 0 and not pipeline["dropped_by_reason"]
    srv.clear_faults()
    delivered_once(srv, acked, runs)
