"""Shared fixtures: a started local Prefactor-compatible server and an authenticated client for it; and how many
parallel test workers `-n auto` starts (pyproject's addopts).

Every local server a test of the exporter starts must end with no strict-mode findings: the server answers as
the real API does (it drops unknown fields, stores payloads that break their schema, ...), so the findings are
what still catches the exporter's own mistakes. Tests of the server itself send such input on purpose.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import httpx
import pytest

from prefactor_otel.devserver import DevServer

_SENDS_BAD_INPUT_ON_PURPOSE = ("test_devserver", "test_conformance")
WORKERS_PER_CORE = 2


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """`-n auto`: two pytest-xdist workers per core this process may run on. Much of the suite's time is waiting,
    not computing (subprocesses starting and exiting, retry backoff, servers that are slow or silent on purpose),
    so a second worker per core fills it. Measured on 2 cores shared with other work (whole suite, pytest time):
    2 workers 197 s, 3 workers 147 s and 152 s, 4 workers 129 s and 127 s, 6 workers 128 s.
    PYTEST_XDIST_AUTO_NUM_WORKERS, when set, decides instead (xdist's own hook reads it)."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return WORKERS_PER_CORE * cores


@pytest.fixture(autouse=True)
def no_strict_findings(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    if request.module.__name__.rsplit(".", 1)[-1].startswith(_SENDS_BAD_INPUT_ON_PURPOSE):
        yield
        return
    found: list[dict[str, object]] = []
    stop = DevServer.stop

    def stop_and_collect(self: DevServer) -> None:
        if self.running:
            found.extend(self.findings())
        stop(self)

    monkeypatch.setattr(DevServer, "stop", stop_and_collect)
    yield
    assert not found, f"the local server found what a stricter API would refuse: {found[:3]}"


@pytest.fixture
def srv() -> Iterator[DevServer]:
    with DevServer() as server:
        yield server


@pytest.fixture
def client(srv: DevServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {srv.token}"}, timeout=10) as c:
        yield c
