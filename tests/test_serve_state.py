"""`prefactor-otel serve` remembers (issue 14, item 2), logs each request (item 3) and explains its flags (item 6).

Every test runs the real CLI as a subprocess on `--port 0`, with XDG_DATA_HOME and HOME inside tmp_path, so the
default state file is the test's own and never the user's.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.spans import agent_trace, make_provider, server_options, wait_for

_SAFETY_S = 60.0  # only against a hang: no test waits this long when things work


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PREFACTOR_", "XDG_"))}
    env.update(XDG_DATA_HOME=str(tmp_path / "data"), HOME=str(tmp_path / "home"), PYTHONUNBUFFERED="1", **extra)
    return env


def _default_state(tmp_path: Path) -> Path:
    return tmp_path / "data" / "prefactor-otel" / "local-server.json"


class Serve:
    """One `prefactor-otel serve --port 0` process: its banner parsed, its stderr collected line by line."""

    def __init__(self, tmp_path: Path, *args: str, **env: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "prefactor_otel", "serve", "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(tmp_path, **env),
        )
        self.err_lines: list[str] = []
        self._err_thread = threading.Thread(target=self._read_err, daemon=True)
        self._err_thread.start()
        safety = threading.Timer(_SAFETY_S, self.proc.kill)  # a server that never prints its banner
        safety.start()
        self.banner: list[str] = []
        assert self.proc.stdout is not None
        try:
            for line in self.proc.stdout:
                self.banner.append(line.rstrip("\n"))
                if line.startswith("Press Ctrl-C"):
                    break
        finally:
            safety.cancel()
        assert self.banner and self.banner[-1].startswith("Press Ctrl-C"), self._failure()
        self.exports = dict(
            line.strip().removeprefix("export ").split("=", 1) for line in self.banner if "export " in line
        )

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.err_lines.append(line.rstrip("\n"))

    def _failure(self) -> str:
        self.proc.wait(timeout=_SAFETY_S)
        self._err_thread.join(timeout=_SAFETY_S)
        return "serve did not start: " + "\n".join(self.banner + self.err_lines)

    # What server_options() reads, so an exporter can be pointed at this process as at a DevServer.
    @property
    def url(self) -> str:
        return self.exports["PREFACTOR_API_URL"]

    @property
    def token(self) -> str:
        return self.exports["PREFACTOR_API_TOKEN"]

    @property
    def agent_id(self) -> str:
        return self.exports["PREFACTOR_AGENT_ID"]

    @property
    def environment_id(self) -> str:
        return self.exports["PREFACTOR_ENVIRONMENT_ID"]

    def snapshot(self) -> dict[str, Any]:
        response = httpx.get(self.url + "/_dev/snapshot", headers={"Authorization": f"Bearer {self.token}"})
        assert response.status_code == 200, response.text
        return dict(response.json())

    def bulk(self, items: list[dict[str, Any]], token: str | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token or self.token}"}
        return httpx.post(self.url + "/api/v1/bulk", json={"items": items}, headers=headers)

    def log_line(self, needle: str) -> str | None:
        found = wait_for(lambda: [line for line in self.err_lines if needle in line], _SAFETY_S)
        return found[0] if found else None

    def stop(self) -> str:
        """SIGTERM, as Ctrl-C or a service manager would; returns the rest of stdout."""
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=_SAFETY_S)
        self._err_thread.join(timeout=_SAFETY_S)
        assert self.proc.returncode == 0, self.err_lines
        return out

    def kill(self) -> None:
        self.proc.kill()
        self.proc.communicate(timeout=_SAFETY_S)


@pytest.fixture
def started() -> Any:
    """Start `Serve`s through this; whatever a failing test left running is killed."""
    servers: list[Serve] = []

    def start(tmp_path: Path, *args: str, **env: str) -> Serve:
        server = Serve(tmp_path, *args, **env)
        servers.append(server)
        return server

    yield start
    for server in servers:
        if server.proc.poll() is None:
            server.kill()


def _run_serve(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """A `serve` expected to refuse to start: it must exit on its own."""
    return subprocess.run(
        [sys.executable, "-m", "prefactor_otel", "serve", "--port", "0", *args],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=_SAFETY_S,
    )


def _export_one_run(server: Serve) -> dict[str, Any]:
    from prefactor_otel import PrefactorSpanExporter

    exporter = PrefactorSpanExporter(**server_options(server), finish_grace_seconds=0)
    provider, collector = make_provider()
    agent_trace(provider)
    exporter.export(collector.spans)
    exporter.shutdown()
    return exporter.stats()


def _register_item(server: Serve, key: str, name: str = "v1") -> dict[str, Any]:
    return {
        "_type": "agent_instances/register",
        "idempotency_key": key,
        "agent_id": server.agent_id,
        "agent_version": {"name": name},
        "agent_schema_version": {"external_identifier": "schema-1", "span_type_schemas": []},
    }


# --------------------------------------------------------------------------- the state survives restarts


def test_restart_keeps_token_agent_id_and_runs_and_an_app_with_the_old_ids_still_delivers(tmp_path, started):
    first = started(tmp_path)
    assert f"State: {_default_state(tmp_path)} (new)" in first.banner
    stats = _export_one_run(first)
    assert stats["spans_exported"] == 4 and stats["spans_dropped"] == 0, stats
    first.stop()

    second = started(tmp_path)
    assert second.exports == first.exports | {"PREFACTOR_API_URL": second.url}  # same token, agent, environment
    assert f"State: {_default_state(tmp_path)} (loaded: 1 runs, 4 spans)" in second.banner
    # The app restarted with its old PREFACTOR_* values (only the port moved): its run is accepted.
    stats = _export_one_run(second)
    assert stats["spans_exported"] == 4 and stats["spans_dropped"] == 0, stats
    assert not stats["instance_actions_dropped"], stats
    snapshot = second.snapshot()
    assert len(snapshot["instances"]) == 2 and len(snapshot["spans"]) == 8
    assert {i["status"] for i in snapshot["instances"]} == {"complete"}
    assert "stopped: 2 agent runs, 8 spans received; saved to" in second.stop()


def test_a_replayed_bulk_item_answers_after_a_restart_exactly_as_before(tmp_path, started):
    first = started(tmp_path)
    answer = first.bulk([_register_item(first, "replay-key-0001")])
    assert answer.status_code == 200
    first.stop()

    second = started(tmp_path)
    replay = second.bulk([_register_item(second, "replay-key-0001")])
    assert replay.status_code == 200
    assert replay.json() == answer.json()  # the same run id, timestamps and all: no second run
    assert len(second.snapshot()["instances"]) == 1
    # The key is remembered, not just the run: the same key for other content is refused.
    reused = second.bulk([_register_item(second, "replay-key-0001", name="v2")])
    assert reused.json()["outputs"]["replay-key-0001"]["code"] == "idempotency_key_already_used"


def test_memory_keeps_no_file_and_forgets(tmp_path, started):
    first = started(tmp_path, "--memory")
    assert any(line.startswith("State: in memory only") for line in first.banner)
    first.bulk([_register_item(first, "memory-key-0001")])
    first.stop()
    second = started(tmp_path, "--memory")
    assert second.agent_id != first.agent_id
    assert second.snapshot()["instances"] == []
    assert not (tmp_path / "data").exists()


def test_reset_discards_the_saved_state_and_says_so(tmp_path, started):
    first = started(tmp_path)
    first.bulk([_register_item(first, "reset-key-0001")])
    first.stop()
    second = started(tmp_path, "--reset")
    assert "--reset: discarded the saved state" in second.banner
    assert f"State: {_default_state(tmp_path)} (new)" in second.banner
    assert second.agent_id != first.agent_id and second.snapshot()["instances"] == []
    second.stop()
    third = started(tmp_path)  # what --reset started is what the next start loads
    assert third.agent_id == second.agent_id


def test_state_path_chooses_the_file_which_only_its_owner_can_read(tmp_path, started):
    chosen = tmp_path / "elsewhere" / "mine.json"
    first = started(tmp_path, "--state", str(chosen))
    assert f"State: {chosen} (new)" in first.banner
    first.stop()
    assert stat.S_IMODE(chosen.stat().st_mode) == 0o600  # it holds the token
    assert json.loads(chosen.read_text())["token"] == first.token
    assert not _default_state(tmp_path).exists()
    second = started(tmp_path, "--state", str(chosen))
    assert second.agent_id == first.agent_id


def test_a_new_token_given_explicitly_replaces_the_saved_one_and_is_announced(tmp_path, started):
    first = started(tmp_path)
    first.stop()
    second = started(tmp_path, "--token", "pf_other_token")
    assert second.token == "pf_other_token" and second.agent_id == first.agent_id
    assert any("Token: changed by --token" in line for line in second.banner)


def test_a_seed_agent_id_other_than_the_saved_one_is_refused(tmp_path, started):
    from prefactor_otel.model import ids

    first = started(tmp_path)
    first.stop()
    other = ids.encode(1_700_000_000_000, ids.extract_partition(first.agent_id), 7)
    proc = _run_serve(tmp_path, "--agent-id", other)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"--agent-id {other} differs from the saved {first.agent_id}" in proc.stderr and "--reset" in proc.stderr
    assert started(tmp_path, "--agent-id", first.agent_id).agent_id == first.agent_id  # the same one is fine


@pytest.mark.parametrize(
    ("content", "why"),
    [
        ("{not json", "not valid JSON"),
        ('{"format": 99, "account": {}}', "state format 99"),
        ('{"format": 1, "account": {"agent_id": "x"}}', "damaged state"),
        ("[1, 2]", "not a prefactor-otel local server state"),
    ],
)
def test_an_unusable_state_file_is_a_clear_error_naming_it_and_reset(tmp_path, content, why):
    path = _default_state(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text(content)
    proc = _run_serve(tmp_path)
    assert proc.returncode == 2
    assert str(path) in proc.stderr and "--reset" in proc.stderr and why in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert path.read_text() == content  # never silently replaced


def test_a_second_server_on_the_same_state_file_is_refused(tmp_path, started):
    first = started(tmp_path)
    first.bulk([_register_item(first, "lock-key-00001")])
    second = _run_serve(tmp_path)
    assert second.returncode == 2
    assert "another prefactor-otel serve" in second.stderr and str(_default_state(tmp_path)) in second.stderr
    assert "Traceback" not in second.stderr
    assert len(first.snapshot()["instances"]) == 1  # the first one is unaffected
    first.stop()
    assert len(started(tmp_path).snapshot()["instances"]) == 1  # and the file it wrote is whole


def test_a_killed_server_keeps_what_it_had_saved(tmp_path, started):
    first = started(tmp_path)
    run_id = first.bulk([_register_item(first, "kill-key-00001")]).json()["outputs"]["kill-key-00001"]["details"]["id"]
    path = _default_state(tmp_path)
    # The writer saves soon after a change, without any stop: wait (bounded) until the run is on disk.
    assert wait_for(lambda: run_id in path.read_text(), _SAFETY_S)
    first.proc.send_signal(signal.SIGKILL)
    first.proc.communicate(timeout=_SAFETY_S)
    second = started(tmp_path)  # the lock died with the process
    assert [i["id"] for i in second.snapshot()["instances"]] == [run_id]
    assert second.agent_id == first.agent_id


# --------------------------------------------------------------------------- the request log


def test_the_request_log_shows_bulks_rejected_items_and_401s_without_the_token(tmp_path, started):
    server = started(tmp_path, PREFACTOR_API_TOKEN="pf_secret_serve_token")
    assert server.token == "pf_secret_serve_token"
    good = server.bulk([_register_item(server, "log-key-000001")])
    run_id = good.json()["outputs"]["log-key-000001"]["details"]["id"]
    assert server.log_line("POST /api/v1/bulk 1 item -> 200 (1 ok)")

    bad_span = {"agent_instance_id": run_id, "schema_name": "nope", "status": "active", "payload": {}}
    items = [
        _register_item(server, "log-key-000002"),
        {"_type": "agent_spans/create", "idempotency_key": "log-span-key-0001", "details": bad_span},
        _register_item(server, "log-key-000003"),
    ]
    assert server.bulk(items).status_code == 200
    assert server.log_line("POST /api/v1/bulk 3 items -> 200 (1 ok, 1 rejected, 1 not run)")
    rejected = server.log_line("rejected agent_spans/create log-span-key-0001")
    assert rejected is not None and "invalid_value: schema_name is not registered" in rejected

    server.snapshot()  # what `show --watch` does every second: a tool's read, not logged
    assert server.bulk(items, token="pf_wrong_secret_value").status_code == 401
    # Refused before the body is read: no item count.
    assert server.log_line("POST /api/v1/bulk -> 401 bad or missing token (bad_authtoken)")
    assert httpx.get(server.url + "/api/v1/ping").status_code == 401
    assert server.log_line("GET /api/v1/ping -> 401 bad or missing token (not_authenticated)")
    server.stop()
    assert not [line for line in server.err_lines if "/_dev/" in line]
    printed = "\n".join(server.err_lines)
    assert "pf_secret_serve_token" not in printed and "pf_wrong_secret_value" not in printed
    assert "Bearer" not in printed and "Authorization" not in printed


def test_quiet_logs_no_request(tmp_path, started):
    server = started(tmp_path, "--quiet")
    server.bulk([_register_item(server, "quiet-key-0001")])
    assert httpx.get(server.url + "/api/v1/ping").status_code == 401
    server.stop()
    assert server.err_lines == []


# --------------------------------------------------------------------------- the token (issue 19, item 1)

PUBLIC_TOKEN = "pf_local_dev_token"  # what serve used to default to: known to every web page and local user


def _cli(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "prefactor_otel", *args],
        env=_env(tmp_path, **env),
        capture_output=True,
        text=True,
        timeout=_SAFETY_S,
    )


def test_a_new_state_gets_a_random_token_that_show_and_terminate_find_on_their_own(tmp_path, started):
    server = started(tmp_path)
    assert server.token != PUBLIC_TOKEN and len(server.token) >= 32, server.token
    assert json.loads(_default_state(tmp_path).read_text())["token"] == server.token
    other = started(tmp_path / "elsewhere")
    assert other.token != server.token  # each state its own
    item = _register_item(server, "token-key-00001")
    run_id = server.bulk([item]).json()["outputs"]["token-key-00001"]["details"]["id"]
    started_run = httpx.post(
        f"{server.url}/api/v1/agent_instance/{run_id}/start",
        json={},
        headers={"Authorization": f"Bearer {server.token}"},
    )
    assert started_run.status_code == 200, started_run.text
    # show and terminate, told only the URL, read the token from the same state file serve wrote
    shown = _cli(tmp_path, "show", "--json", PREFACTOR_API_URL=server.url)
    assert shown.returncode == 0, shown.stderr
    assert run_id in shown.stdout
    ended = _cli(tmp_path, "terminate", run_id, "--reason", "seen enough", PREFACTOR_API_URL=server.url)
    assert ended.returncode == 0, ended.stderr
    assert server.snapshot()["instances"][0]["status"] == "terminated"
    # a token never reaches their output
    assert server.token not in shown.stdout + shown.stderr + ended.stdout + ended.stderr
    # a stale token in the shell (the old public one, say) wins, and the refusal says where it came from
    stale = _cli(tmp_path, "show", PREFACTOR_API_URL=server.url, PREFACTOR_API_TOKEN=PUBLIC_TOKEN)
    assert stale.returncode == 2 and "HTTP 401 (the token from PREFACTOR_API_TOKEN was refused" in stale.stderr
    assert PUBLIC_TOKEN not in stale.stderr


def test_show_without_any_token_says_where_to_get_one(tmp_path):
    proc = _cli(tmp_path, "show", PREFACTOR_API_URL="http://127.0.0.1:9")
    assert proc.returncode == 2
    assert "no token" in proc.stderr and "--token" in proc.stderr and "PREFACTOR_API_TOKEN" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_saved_token_is_never_sent_to_a_server_that_is_not_local(tmp_path, started):
    server = started(tmp_path)
    server.stop()
    proc = _cli(tmp_path, "show", PREFACTOR_API_URL="http://prefactor.invalid:8787")
    assert proc.returncode == 2 and "no token" in proc.stderr, proc.stderr


def test_a_saved_public_token_is_replaced_by_a_random_one_and_the_banner_says_so(tmp_path, started):
    first = started(tmp_path, "--token", PUBLIC_TOKEN)
    assert first.token == PUBLIC_TOKEN
    assert any("public" in line for line in first.banner), first.banner  # chosen explicitly: kept, but warned
    first.stop()
    second = started(tmp_path)
    assert second.token != PUBLIC_TOKEN and second.agent_id == first.agent_id
    assert any("Token: the saved token was the public" in line for line in second.banner), second.banner
    assert json.loads(_default_state(tmp_path).read_text())["token"] == second.token


# --------------------------------------------------------------------------- --help


@pytest.mark.parametrize("command", ["serve", "show", "terminate"])
def test_help_shows_every_flag_with_its_default_but_never_a_token(tmp_path, command):
    env = _env(tmp_path, PREFACTOR_API_TOKEN="pf_help_secret_token")
    proc = subprocess.run(
        [sys.executable, "-m", "prefactor_otel", command, "--help"],
        env=env,
        capture_output=True,
        text=True,
        timeout=_SAFETY_S,
    )
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())  # argparse wraps lines
    assert "pf_help_secret_token" not in text
    assert "pf_local_dev_token" not in text  # no public default token any more (issue 19, item 1)
    if command == "serve":
        assert "from PREFACTOR_API_TOKEN, else a new random one" in text
    else:
        assert "from PREFACTOR_API_TOKEN, else the token saved in the state file" in text
    if command == "serve":
        for expected in (
            "(default: 127.0.0.1)",
            "(default: 8787)",
            f"(default: {_default_state(tmp_path)}",
            "--memory",
            "--reset",
            "--quiet",
        ):
            assert expected in text, expected
    else:
        assert "from PREFACTOR_API_URL, else http://127.0.0.1:8787" in text
    if command == "show":
        assert "(default: 1.0)" in text


# --------------------------------------------------------------------------- persist and state_file, in process


def _register_params(server: Any, name: str = "v1", **extra: Any) -> dict[str, Any]:
    """A register action's parameters (the bulk item without `_type` and key)."""
    item = _register_item(server, "unused-key-0000", name)
    return {k: v for k, v in item.items() if k not in ("_type", "idempotency_key")} | extra


def test_a_dumped_and_loaded_store_answers_every_read_and_replay_as_the_original():
    from prefactor_otel.devserver import DevServer
    from prefactor_otel.devserver import store as st
    from prefactor_otel.devserver.persist import dump, load
    from tests.spans import exporter_for

    with DevServer() as original:
        exporter = exporter_for(original)
        provider, collector = make_provider()
        with pytest.raises(RuntimeError):
            agent_trace(provider, fail=True)
        exporter.export(collector.spans)
        exporter.shutdown()
        registered = original.store.execute(
            st.REGISTER, _register_params(original, external_identifier="ext-1"), "persist-key-001"
        )
        assert registered[0] == 200
        live = registered[1]["details"]["id"]
        assert original.store.execute(st.START, {"agent_instance_id": live})[0] == 200
        original.terminate(live, "enough")  # its spans' later finishes answer with control: kept too
        original.store.execute(st.REGISTER, _register_params(original, surprise=1))  # an unknown field: a finding
        assert original.findings()
        saved = original.snapshot()
        data = json.loads(json.dumps(dump(original.store, original.token)))  # what the file holds
        original.clear_findings()  # this module's servers must end without findings (conftest)

    token, store = load(data)
    with DevServer(token=token, store=store) as restored:
        assert restored.snapshot() == saved
        assert (restored.agent_id, restored.environment_id) == (original.agent_id, original.environment_id)
        replay = restored.store.execute(
            st.REGISTER, _register_params(original, external_identifier="ext-1"), "persist-key-001"
        )
        assert replay == registered
        taken = restored.store.execute(st.REGISTER, _register_params(original, "v2", external_identifier="ext-1"))
        assert taken[0] == 409  # the external identifier is still in use
        assert restored.store.list_instances({}) == original.store.list_instances({})
        restored.clear_findings()


def test_every_run_field_is_kept():
    """A field added to a run record must reach the file (dump walks the dataclass) and come back."""
    import dataclasses

    from prefactor_otel.devserver import DevServer
    from prefactor_otel.devserver import store as st
    from prefactor_otel.devserver.model import _Instance
    from prefactor_otel.devserver.persist import dump, load

    with DevServer() as srv:
        srv.store.execute(st.REGISTER, _register_params(srv))
        data = json.loads(json.dumps(dump(srv.store, srv.token)))
    names = {f.name for f in dataclasses.fields(_Instance)} - {"schema_version"} | {"schema_version_id"}
    assert set(data["instances"][0]) == names
    (restored,) = load(data).store.account.instances.values()
    (kept,) = srv.store.account.instances.values()
    assert restored == dataclasses.replace(kept, schema_version=restored.schema_version)
    assert restored.schema_version.data == kept.schema_version.data


@pytest.mark.parametrize(
    ("environ", "platform", "expected"),
    [
        ({"XDG_DATA_HOME": "/x/data", "HOME": "/h"}, "linux", "/x/data/prefactor-otel/local-server.json"),
        ({"XDG_DATA_HOME": "relative", "HOME": "/h"}, "linux", "/h/.local/share/prefactor-otel/local-server.json"),
        ({"HOME": "/h"}, "linux", "/h/.local/share/prefactor-otel/local-server.json"),
        ({"HOME": "/h"}, "darwin", "/h/Library/Application Support/prefactor-otel/local-server.json"),
        ({"LOCALAPPDATA": "/w/Local"}, "win32", "/w/Local/prefactor-otel/local-server.json"),
    ],
)
def test_the_default_state_file_is_in_the_user_data_directory(environ, platform, expected):
    from prefactor_otel.devserver.state_file import default_state_path

    assert default_state_path(environ, platform) == Path(expected)


def test_serve_allow_host_answers_that_name_and_still_refuses_others(tmp_path, started):
    server = started(tmp_path, "--allow-host", "host.docker.internal")
    auth = {"Authorization": f"Bearer {server.token}"}
    allowed = httpx.get(server.url + "/api/v1/ping", headers={**auth, "Host": "host.docker.internal"})
    assert allowed.status_code == 200, allowed.text
    refused = httpx.get(server.url + "/api/v1/ping", headers={**auth, "Host": "rebind.attacker.example"})
    assert refused.status_code == 403 and refused.json()["code"] == "forbidden_host"
    assert server.log_line("GET /api/v1/ping -> 403 forbidden_host")
