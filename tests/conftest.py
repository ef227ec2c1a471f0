"""Shared fixtures: a started local Prefactor-compatible server and an authenticated client for it."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from prefactor_otel.devserver import DevServer


@pytest.fixture
def srv() -> Iterator[DevServer]:
    with DevServer() as server:
        yield server


@pytest.fixture
def client(srv: DevServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {srv.token}"}, timeout=10) as c:
        yield c
