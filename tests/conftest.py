"""Shared fixtures: a started local Prefactor-compatible server and an authenticated client for it.

Every local server a test of the exporter starts must end with no strict-mode findings: the server answers as
the real API does (it drops unknown fields, stores payloads that break their schema, ...), so the findings are
what still catches the exporter's own mistakes. Tests of the server itself send such input on purpose.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from prefactor_otel.devserver import DevServer

_SENDS_BAD_INPUT_ON_PURPOSE = ("test_devserver", "test_conformance")


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
