"""Tenancy and authentication through the gateway's Python API, against real local servers: two routes (two
accounts, each its own local server), the agent chosen by the resource attribute `prefactor.agent`, a client that
names another route's agent refused (partial success) and never written there; the settings' refusals (a
non-loopback gateway without ingress tokens, bad routes files) and an open loopback gateway."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from prefactor_otel.config.values import ConfigError
from prefactor_otel.devserver import DevServer
from prefactor_otel.gateway.service import Gateway, Unauthenticated
from prefactor_otel.gateway.settings import GatewaySettings
from tests.spans import wait_for
from tests.test_gateway_core import all_finished, request_of, start, stored_once, traced


@pytest.fixture
def started() -> Iterator[list[Gateway]]:
    gateways: list[Gateway] = []
    yield gateways
    for gateway in gateways:
        gateway.shutdown(5)


@pytest.fixture
def second() -> Iterator[DevServer]:
    with DevServer(token="pf_second_account") as server:
        yield server


def routes_file(tmp_path: Path, routes: list[dict[str, Any]]) -> Path:
    path = tmp_path / "routes.json"
    path.write_text(json.dumps({"routes": routes}))
    return path


def two_routes(srv: DevServer, second: DevServer, tmp_path: Path) -> tuple[GatewaySettings, str]:
    side_agent = srv.new_id()  # an id of the first account that is not its agent: the server refuses it
    path = routes_file(
        tmp_path,
        [
            {
                "name": "team-a",
                "ingress_tokens_env": ["TEAM_A_INGRESS"],
                "api_url": srv.url,
                "api_token_env": "TEAM_A_PREFACTOR",
                "environment_id": srv.environment_id,
                "agents": {"main": srv.agent_id, "side": side_agent},
                "default_agent": "main",
            },
            {
                "name": "team-b",
                "ingress_tokens": ["ingress-b"],
                "api_url": second.url,
                "api_token_env": "TEAM_B_PREFACTOR",
                "environment_id": second.environment_id,
                "agents": {"alpha": second.agent_id},
            },
        ],
    )
    environ = {
        "TEAM_A_INGRESS": "ingress-a1,ingress-a2",
        "TEAM_A_PREFACTOR": srv.token,
        "TEAM_B_PREFACTOR": second.token,
        "PREFACTOR_GATEWAY_ROUTES": str(path),
        "PREFACTOR_FINISH_GRACE_SECONDS": "0.3",
    }
    return GatewaySettings.load(environ, directory=tmp_path / "gw"), side_agent


def test_each_route_writes_to_its_own_account_and_agent(
    srv: DevServer, second: DevServer, tmp_path: Path, started: list[Gateway]
) -> None:
    settings, _side = two_routes(srv, second, tmp_path)
    gateway = start(started, settings)
    to_a, to_a_named, to_b = traced("a", runs=2), traced("a2", {"prefactor.agent": "main"}, runs=1), traced("b")
    assert gateway.accept("Bearer ingress-a1", request_of(to_a)).rejected_spans == 0
    assert gateway.accept("Bearer ingress-a2", request_of(to_a_named)).rejected_spans == 0
    assert gateway.accept("Bearer ingress-b", request_of(to_b)).rejected_spans == 0
    assert wait_for(lambda: all_finished(srv, 3) and all_finished(second, 2), 30)
    assert len(stored_once(srv)) == len(to_a) + len(to_a_named)
    assert len(stored_once(second)) == len(to_b)
    assert {span["payload"]["trace_id"] for span in second.spans()} == {
        f"{span.context.trace_id:032x}" for span in to_b if span.context is not None
    }


def test_a_client_cannot_write_into_another_routes_agent(
    srv: DevServer, second: DevServer, tmp_path: Path, started: list[Gateway]
) -> None:
    settings, _side = two_routes(srv, second, tmp_path)
    gateway = start(started, settings)
    foreign = traced("intruder", {"prefactor.agent": "alpha"}, runs=2)  # team-b's agent, with team-a's token
    own = traced("a", runs=1)
    answer = gateway.accept("Bearer ingress-a1", request_of([*foreign, *own]))
    assert answer.rejected_spans == len(foreign)
    assert "prefactor.agent='alpha'" in answer.message and "not an agent this token may write to" in answer.message
    assert wait_for(lambda: all_finished(srv, 1), 30)
    gateway.shutdown(5)
    assert second.spans() == [] and second.instances() == []  # nothing reached the other account
    assert len(stored_once(srv)) == len(own)  # nor was it written into the sender's own agent instead
    stats = gateway.stats()
    assert stats["spans_rejected"] == len(foreign) and stats["spans_accepted"] == len(own)
    assert stats["pipelines"]["team-b.alpha"]["spans_received"] == 0


def test_the_agent_is_chosen_by_the_resource_attribute(
    srv: DevServer, second: DevServer, tmp_path: Path, started: list[Gateway]
) -> None:
    settings, side_agent = two_routes(srv, second, tmp_path)
    gateway = start(started, settings)
    side = traced("side-service", {"prefactor.agent": "side"}, runs=1)
    main = traced("main-service", runs=1)
    assert gateway.accept("Bearer ingress-a1", request_of([*side, *main])).rejected_spans == 0
    assert wait_for(lambda: all_finished(srv, 1), 30)
    pipelines = wait_for(lambda: (p := gateway.stats()["pipelines"])["team-a.side"]["dropped_by_reason"] and p, 30)
    # The side agent's spans went to its own pipeline, which registered its runs for the side agent (the local
    # server has one agent per account: it refuses that id, so they are dropped there, counted) -- never to main.
    assert pipelines["team-a.side"]["spans_received"] == len(side)
    assert pipelines["team-a.main"]["spans_received"] == len(main)
    assert set(pipelines["team-a.side"]["dropped_by_reason"]) == {"instance_rejected:register_not_found"}
    assert len(stored_once(srv)) == len(main)
    assert f"side={side_agent}" in gateway.startup_line()


def test_an_unknown_token_of_any_route_is_unauthenticated(
    srv: DevServer, second: DevServer, tmp_path: Path, started: list[Gateway]
) -> None:
    settings, _side = two_routes(srv, second, tmp_path)
    gateway = start(started, settings)
    for header in (None, "Bearer ingress-c", "Bearer " + srv.token, "Bearer ingress-a1x"):
        with pytest.raises(Unauthenticated):
            gateway.accept(header, request_of(traced(runs=1)))


def test_an_open_gateway_on_loopback_takes_requests_without_a_token(
    srv: DevServer, tmp_path: Path, started: list[Gateway], caplog: pytest.LogCaptureFixture
) -> None:
    settings = GatewaySettings.load(
        {},
        api_url=srv.url,
        api_token=srv.token,
        agent_id=srv.agent_id,
        environment_id=srv.environment_id,
        directory=tmp_path,
        finish_grace_seconds=0.3,
    )
    assert settings.open
    with caplog.at_level("WARNING", logger="prefactor_otel"):
        gateway = start(started, settings)
    assert "no ingress token is configured" in caplog.text
    spans = traced(runs=1)
    assert gateway.accept(None, request_of(spans)).rejected_spans == 0
    assert wait_for(lambda: all_finished(srv, 1), 30)
    assert "no ingress token (loopback only)" in gateway.startup_line()
    assert srv.token not in gateway.startup_line() and srv.token not in caplog.text


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "::", "gateway.example"])
def test_a_gateway_on_another_address_without_ingress_tokens_refuses_to_load(host: str) -> None:
    with pytest.raises(ConfigError, match="PREFACTOR_GATEWAY_TOKENS"):
        GatewaySettings.load({"PREFACTOR_API_TOKEN": "pf_token", "PREFACTOR_AGENT_ID": _pfid()}, host=host)
    settings = GatewaySettings.load({"PREFACTOR_API_TOKEN": "pf_token", "PREFACTOR_GATEWAY_TOKENS": "a, b"}, host=host)
    assert settings.ingress_tokens == frozenset({"a", "b"}) and not settings.open


def _pfid() -> str:
    from prefactor_otel.model import ids

    return ids.encode(1_700_000_000_000, 7, 12345)


@pytest.mark.parametrize(
    ("routes", "environ", "message"),
    [
        ([{"name": "x", "api_token": "t", "agents": {"a": "P"}}], {}, "at least one ingress token"),
        ([{"name": "x", "ingress_tokens": ["i"], "agents": {"a": "P"}}], {}, "needs its Prefactor token"),
        ([{"name": "x", "ingress_tokens": ["i"], "api_token_env": "NOPE", "agents": {"a": "P"}}], {}, "NOPE"),
        ([{"name": "x", "ingress_tokens": ["i"], "api_token": "t", "agents": {}}], {}, '"agents"'),
        ([{"name": "x", "ingress_tokens": ["i"], "api_token": "t", "agents": {"a": "nope"}}], {}, "Prefactor id"),
        (
            [{"name": "x", "ingress_tokens": ["i"], "api_token": "t", "agents": {"a": "P", "b": "P"}}],
            {},
            "default_agent",
        ),
        ([{"name": "bad name", "ingress_tokens": ["i"], "api_token": "t", "agents": {"a": "P"}}], {}, "a name"),
        ([{"name": "a.b", "ingress_tokens": ["i"], "api_token": "t", "agents": {"c": "P"}}], {}, "a name"),
        ([{"name": "x", "ingress_tokens": ["i"], "api_token": "t", "agents": {"a": "P"}, "extra": 1}], {}, "extra"),
        (
            [
                {"name": "x", "ingress_tokens": ["same"], "api_token": "t", "agents": {"a": "P"}},
                {"name": "y", "ingress_tokens": ["same"], "api_token": "t", "agents": {"a": "P"}},
            ],
            {},
            "also another route's",
        ),
        (
            [
                {
                    "name": "x",
                    "ingress_tokens": ["i"],
                    "api_token": "t",
                    "api_url": "http://remote.example",
                    "agents": {"a": "P"},
                }
            ],
            {},
            "unencrypted",
        ),
    ],
)
def test_a_bad_routes_file_is_a_config_error_that_names_the_route(
    tmp_path: Path, routes: list[dict[str, Any]], environ: dict[str, str], message: str
) -> None:
    pfid = _pfid()
    for route in routes:
        route["agents"] = {key: (pfid if value == "P" else value) for key, value in route["agents"].items()}
    path = routes_file(tmp_path, routes)
    with pytest.raises(ConfigError, match=message) as caught:
        GatewaySettings.load({**environ, "PREFACTOR_GATEWAY_ROUTES": str(path)})
    assert "route 'x'" in str(caught.value) or "route 'y'" in str(caught.value) or "route #1" in str(caught.value)
    assert "'t'" not in str(caught.value)  # never the token


def test_a_routes_file_that_is_not_json_or_missing_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "routes.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        GatewaySettings.load({}, routes_file=path)
    with pytest.raises(ConfigError, match="cannot read it"):
        GatewaySettings.load({}, routes_file=tmp_path / "missing.json")
    with pytest.raises(ConfigError, match="nowhere to send spans"):
        GatewaySettings.load({})


def test_the_gateway_queue_bound_cannot_exceed_the_pipelines() -> None:
    with pytest.raises(ConfigError, match="must not exceed"):
        GatewaySettings.load({"PREFACTOR_API_TOKEN": "t"}, queue_max_spans=30_000)
    settings = GatewaySettings.load({"PREFACTOR_API_TOKEN": "t", "PREFACTOR_GATEWAY_MAX_QUEUED_SPANS": "500"})
    assert settings.queue_max_spans == 500 and settings.config.max_queued_spans == 20_000


def test_settings_come_from_the_environment_and_flags_win(tmp_path: Path) -> None:
    environ = {
        "PREFACTOR_API_TOKEN": "pf_token",
        "PREFACTOR_GATEWAY_TOKENS": "one,two",
        "PREFACTOR_GATEWAY_DIR": str(tmp_path / "from-env"),
        "PREFACTOR_GATEWAY_LOG_MAX_BYTES": "1000000",
        "PREFACTOR_GATEWAY_SEGMENT_BYTES": "50000",
        "PREFACTOR_GATEWAY_MAX_REQUEST_BYTES": "1234567",
        "PREFACTOR_SPOOL_DIR": str(tmp_path / "spools"),
    }
    settings = GatewaySettings.load(environ)
    assert settings.ingress_tokens == frozenset({"one", "two"})
    assert settings.directory == tmp_path / "from-env"
    assert (settings.log_max_bytes, settings.segment_bytes, settings.max_request_bytes) == (
        1_000_000,
        50_000,
        1_234_567,
    )
    assert settings.config.finish_grace_seconds == 15.0  # the gateway's default grace period
    assert settings.config.max_request_bytes == 4 * 1024 * 1024  # the exporter's bulk limit is another option
    flagged = GatewaySettings.load(
        {**environ, "PREFACTOR_FINISH_GRACE_SECONDS": "2"}, directory=tmp_path / "flag", ingress_tokens=["three"]
    )
    assert flagged.directory == tmp_path / "flag" and flagged.ingress_tokens == frozenset({"three"})
    assert flagged.config.finish_grace_seconds == 2.0
    del environ["PREFACTOR_GATEWAY_DIR"]
    assert GatewaySettings.load(environ).directory == tmp_path / "spools" / "gateway"
    with pytest.raises(ConfigError, match="PREFACTOR_GATEWAY_SEGMENT_BYTES"):
        GatewaySettings.load({**environ, "PREFACTOR_GATEWAY_SEGMENT_BYTES": "-1"})
    with pytest.raises(ConfigError, match="unknown gateway option"):
        GatewaySettings.load(environ, no_such_option=1)
