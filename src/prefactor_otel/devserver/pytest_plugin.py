"""pytest fixture `prefactor_server`: a started `DevServer` per test, stopped afterwards.

Use it with `pytest_plugins = ["prefactor_otel.devserver.pytest_plugin"]` (or through the package's pytest
entry point once registered).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from prefactor_otel.devserver.server import DevServer


@pytest.fixture
def prefactor_server() -> Iterator[DevServer]:
    """A running local Prefactor API (token `pf_test_token`); inspect it with `.spans()`, `.instances()`."""
    with DevServer() as server:
        yield server
