"""A real `prefactor-otel gateway` subprocess for tests: started on free ports (port 0), pointed at a DevServer,
its stdout and stderr read on threads (a full pipe never blocks it), its ports read from the line it prints.

    with GatewayProcess(srv, tmp_path) as gw:
        gw.wait_ready()
        httpx.post(gw.http_url + "/v1/traces", ...)

Every wait is bounded (a safety limit against a hang, never a timing assertion).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from prefactor_otel.devserver import DevServer

INGRESS_TOKEN = "gw-test-ingress-7c1e0b"
LISTENING = re.compile(r"^prefactor-otel gateway: listening http=(\S+):(\d+) grpc=(\S+):(\d+)$")
START_LIMIT_S = 60.0


def gateway_env(srv: DevServer | None, **extra: str) -> dict[str, str]:
    """This environment without OTEL_* / PREFACTOR_* variables, then the server's, runs finished at once, then
    `extra`. PYTHONPATH is kept: the worktree's source comes first."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PREFACTOR_"))}
    if srv is not None:
        env.update(srv.env())
    env["PREFACTOR_FINISH_GRACE_SECONDS"] = "0"
    env.update(extra)
    return env


class GatewayProcess:
    """One `prefactor-otel gateway` process (module docstring). `tokens`: PREFACTOR_GATEWAY_TOKENS (None: unset)."""

    def __init__(
        self,
        srv: DevServer | None,
        directory: Path,
        *,
        tokens: str | None = INGRESS_TOKEN,
        env: Mapping[str, str] | None = None,
        args: Sequence[str] = (),
    ) -> None:
        extra = dict(env or {})
        if tokens is not None:
            extra.setdefault("PREFACTOR_GATEWAY_TOKENS", tokens)
        self.env = gateway_env(srv, **extra)
        self.directory = directory
        self.args = [*args]
        self.proc: subprocess.Popen[str] | None = None
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._lines = threading.Condition()
        self._closed: set[int] = set()  # id() of the sinks whose stream has ended
        self.http_port = 0
        self.grpc_port = 0
        self.host = "127.0.0.1"

    # ---------------------------------------------------------------- lifecycle

    def start(self, *, expect_listening: bool = True) -> GatewayProcess:
        command = [sys.executable, "-m", "prefactor_otel", "gateway", "--http-port", "0", "--grpc-port", "0"]
        command += ["--dir", str(self.directory), *self.args]
        self.proc = subprocess.Popen(
            command, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1
        )
        for stream, sink in ((self.proc.stdout, self.stdout), (self.proc.stderr, self.stderr)):
            threading.Thread(target=self._read, args=(stream, sink), daemon=True).start()
        if expect_listening:
            line = self.wait_line(LISTENING.match, START_LIMIT_S)
            match = LISTENING.match(line or "")
            assert match, f"the gateway printed no listening line:\n{self.output()}"
            self.host = match.group(1)
            self.http_port, self.grpc_port = int(match.group(2)), int(match.group(4))
        return self

    def _read(self, stream: Any, sink: list[str]) -> None:
        for line in stream:
            with self._lines:
                sink.append(line.rstrip("\n"))
                self._lines.notify_all()
        with self._lines:
            self._closed.add(id(sink))
            self._lines.notify_all()

    def wait_line(self, matches: Any, limit_s: float = 30.0, *, stream: str = "stdout") -> str | None:
        """The first line of stdout (or stderr) for which `matches(line)` is truthy, waiting up to `limit_s`."""
        sink = self.stdout if stream == "stdout" else self.stderr
        deadline = time.monotonic() + limit_s
        with self._lines:
            while True:
                for line in sink:
                    if matches(line):
                        return line
                remaining = deadline - time.monotonic()
                if remaining <= 0 or id(sink) in self._closed:
                    return None
                self._lines.wait(min(remaining, 0.2))

    def output(self) -> str:
        with self._lines:
            return "stdout:\n" + "\n".join(self.stdout) + "\nstderr:\n" + "\n".join(self.stderr)

    def wait_ready(self, limit_s: float = START_LIMIT_S) -> None:
        deadline = time.monotonic() + limit_s
        last: object = None
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, f"the gateway exited:\n{self.output()}"
            try:
                response = httpx.get(self.http_url + "/readyz", timeout=5)
                last = (response.status_code, response.text)
                if response.status_code == 200:
                    return
            except httpx.HTTPError as exc:
                last = exc
            time.sleep(0.05)
        raise AssertionError(f"the gateway never became ready (last answer {last!r}):\n{self.output()}")

    def stop(self, sig: int = signal.SIGTERM, limit_s: float = 60.0) -> int:
        """Send `sig` and wait for the exit; returns the exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(limit_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"the gateway did not stop within {limit_s} s after {sig}:\n{self.output()}") from None

    def wait_exit(self, limit_s: float = 60.0) -> int:
        assert self.proc is not None
        return self.proc.wait(limit_s)

    def __enter__(self) -> GatewayProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    # ---------------------------------------------------------------- where it listens

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def traces_url(self) -> str:
        return self.http_url + "/v1/traces"

    @property
    def grpc_target(self) -> str:
        return f"{self.host}:{self.grpc_port}"


def bearer(token: str = INGRESS_TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
