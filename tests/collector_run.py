"""A real `otelcol-prefactor` (the project's Collector, tests/collector_build.py) as a subprocess for tests, run on
one of the shipped configurations in `collector/` exactly as shipped: only its environment variables differ.

    with CollectorProcess("fleet-static.yaml", {"PREFACTOR_GATEWAY_REPLICAS": "[127.0.0.1:1234]", ...}) as col:
        OTLPSpanExporter(endpoint=col.traces_url).export(spans)

Its OTLP receivers and its own metrics listen on free loopback ports picked here; it is ready once it logs
"Everything is ready". Its stderr (where it logs) is read on a thread, so a full pipe never blocks it. Every wait is
bounded (a safety limit against a hang, never a timing assertion).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

from tests.collector_build import REPO, collector_binary

CONFIG_DIR = REPO / "collector"
READY = "Everything is ready"
START_LIMIT_S = 60.0


def free_port() -> int:
    """A loopback TCP port free right now (a test binds it a moment later; the kernel does not hand it out again
    at once)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class CollectorProcess:
    """One Collector process on `collector/<config>` (module docstring)."""

    def __init__(
        self, config: str, env: Mapping[str, str], binary: Path | None = None, overrides: Sequence[Path] = ()
    ) -> None:
        self.config = CONFIG_DIR / config
        self.overrides = list(overrides)  # files merged over the shipped one, in order (re-read on SIGHUP)
        self.binary = binary or collector_binary()
        self.grpc_port, self.http_port, self.metrics_port = free_port(), free_port(), free_port()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PREFACTOR_"))}
        self.env.update(
            COLLECTOR_OTLP_GRPC_ENDPOINT=f"127.0.0.1:{self.grpc_port}",
            COLLECTOR_OTLP_HTTP_ENDPOINT=f"127.0.0.1:{self.http_port}",
            COLLECTOR_METRICS_HOST="127.0.0.1",
            COLLECTOR_METRICS_PORT=str(self.metrics_port),
        )
        self.env.update(env)
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._ended = False

    def start(self) -> CollectorProcess:
        command = [str(self.binary), "--config", str(self.config)]
        for override in self.overrides:
            command += ["--config", str(override)]
        self.proc = subprocess.Popen(
            command, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        )
        threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True).start()
        assert self.wait_line(READY, START_LIMIT_S), f"the Collector never became ready:\n{self.output()}"
        return self

    def _read(self, stream: IO[str] | None) -> None:
        assert stream is not None
        for line in stream:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._ended = True
            self._cond.notify_all()

    def wait_line(self, text: str, limit_s: float) -> bool:
        deadline = time.monotonic() + limit_s
        with self._cond:
            while True:
                if any(text in line for line in self.lines):
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._ended:
                    return False
                self._cond.wait(min(remaining, 0.2))

    def ready_count(self) -> int:
        with self._cond:
            return sum(READY in line for line in self.lines)

    def reload(self, limit_s: float = START_LIMIT_S) -> None:
        """SIGHUP: the Collector re-reads its configuration files and restarts its pipelines (draining the old)."""
        assert self.proc is not None
        before = self.ready_count()
        self.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + limit_s
        with self._cond:
            while sum(READY in line for line in self.lines) <= before:
                remaining = deadline - time.monotonic()
                assert remaining > 0 and not self._ended, f"the Collector did not reload:\n{self.output()}"
                self._cond.wait(min(remaining, 0.2))

    def output(self) -> str:
        with self._cond:
            return "\n".join(self.lines[-200:])

    def stop(self, limit_s: float = 60.0) -> int:
        """SIGTERM (the Collector drains its pipelines) and wait for the exit; returns the exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(limit_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"the Collector did not stop within {limit_s} s:\n{self.output()}") from None

    def kill(self) -> int:
        """SIGKILL: nothing is drained, what the Collector holds in memory is gone; returns the exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.kill()
        return self.proc.wait(30)

    def __enter__(self) -> CollectorProcess:
        return self if self.proc is not None else self.start()

    def __exit__(self, *exc_info: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    @property
    def traces_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/v1/traces"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        """The Collector's own Prometheus metrics (`otelcol_exporter_sent_spans`, `otelcol_exporter_send_failed_spans`,
        `otelcol_loadbalancer_backend_outcome`, ...)."""
        return f"http://127.0.0.1:{self.metrics_port}/metrics"
