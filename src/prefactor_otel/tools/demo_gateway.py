"""`prefactor-otel demo --gateway`: the demo's sample agent exported over OTLP to a `prefactor-otel gateway`.

What a user of any language does, in one command: the sample agent (demo_agent.py) is exported by the OTel
project's own OTLP/HTTP exporter (`OTLPSpanExporter` behind a `BatchSpanProcessor`, no Prefactor code in the
client) to a gateway the demo starts on 127.0.0.1 (ports picked free), which sends the spans on to the embedded
local server, or to `PREFACTOR_API_URL` when it is set (with the user's PREFACTOR_* settings), as `demo` does. The
gateway is then stopped with SIGTERM (it delivers, finishes every run, exits 0), and the runs are printed as trees
(`demo`'s read-back when they went to an API), followed by the next step: the OTEL_EXPORTER_OTLP_* variables that
point the user's own exporters at a gateway.

Why a subprocess (`python -m prefactor_otel gateway`), not `gateway/server.py` on threads: it is the very command
the user will run, started the way the user starts it, so the demo shows its real start-up and listening lines and
its real SIGTERM stop; `server.run` installs signal handlers only on the main thread and can be stopped from
outside only by a signal, and its uvicorn loop, gRPC server, worker and the directory lock would otherwise share
the demo's process and its OTel SDK. The gateway's ports come from the line it prints
(`gateway/server.py`'s `listening ...` line); its directory is a temporary one, removed at the end.

Without the `gateway` extra (the gateway's modules or the OTLP/HTTP exporter missing): one line naming the install,
exit status 2, nothing started.

Threads: the caller's thread runs the demo; the OTel SDK's batch thread exports (and counts, in `_CountingExporter`,
read only after the provider's shutdown has joined that thread); two reader threads per gateway relay its stdout
and stderr lines to the console. `_Console.lock` keeps each printed line whole; `_GatewayProcess._cond` guards
the listening ports and the end of its output.
"""

from __future__ import annotations

import importlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

import httpx
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from prefactor_otel.durability.spool_disk import NAME_RE

INSTALL = "pip install 'prefactor-otel[gateway]'"
# What the demo needs beyond the exporter's install: the gateway's modules (its extra) and the client's exporter.
EXTRA_MODULES = (
    "grpc",
    "uvicorn",
    "h11",
    "google.protobuf",
    "opentelemetry.proto",
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
)
START_LIMIT_S = 60.0  # bounded waits against a hang: for the listening line, and for /readyz
DEFAULT_SHUTDOWN_BUDGET_S = 5.0  # gateway/server.py's, when PREFACTOR_SHUTDOWN_TIMEOUT is 0
STOP_SLACK_S = 15.0  # beyond the gateway's own shutdown budget, before it is killed
LISTENING = re.compile(r"^prefactor-otel gateway: listening http=(\S+):(\d+) grpc=(\S+):(\d+)$")
EXIT_NO_EXTRA = 2


def missing_extra_module() -> str | None:
    """The first module of the gateway extra that cannot be imported, else None."""
    for name in EXTRA_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            return exc.name or name
    return None


def next_step(using_api: bool) -> str:
    """The demo's last lines: how to point the user's own OTLP exporters (any language) at a gateway."""
    where = (
        "with the same PREFACTOR_* settings"
        if using_api
        else "with the PREFACTOR_* settings that `prefactor-otel serve` prints (a local server that stays up)"
    )
    return "\n".join(
        [
            f"Next step: run a gateway {where}:",
            "  PREFACTOR_GATEWAY_TOKENS=ingress-secret prefactor-otel gateway",
            "and point your own OTLP exporters (Python, Node.js, Go, Java, the Collector) at it, no code change:",
            "  OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318",
            '  OTEL_EXPORTER_OTLP_HEADERS="Authorization=Bearer%20ingress-secret"',
            "  OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf",
            '  (README: "Gateway")',
        ]
    )


class _Console:
    """The demo's stdout, shared by the caller's thread and the gateway's relays: one whole line at a time."""

    def __init__(self) -> None:
        self.lock = threading.Lock()

    def say(self, text: str = "") -> None:
        with self.lock:
            print(text, flush=True)


class _CountingExporter(SpanExporter):
    """The OTLP exporter, counting what it exported and what failed (composition: every call is the inner one's)."""

    def __init__(self, inner: SpanExporter) -> None:
        self._inner = inner
        self.requests = 0
        self.spans_exported = 0
        self.spans_failed = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        result = self._inner.export(spans)
        self.requests += 1
        if result is SpanExportResult.SUCCESS:
            self.spans_exported += len(spans)
        else:
            self.spans_failed += len(spans)
        return result

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)


class _GatewayProcess:
    """`prefactor-otel gateway` in a subprocess: started on free ports, its output relayed, stopped with SIGTERM."""

    def __init__(self, env: Mapping[str, str], directory: Path, console: _Console) -> None:
        self._env = dict(env)
        self._directory = directory
        self._console = console
        self._cond = threading.Condition()
        self._streams_open = 0
        self._proc: subprocess.Popen[str] | None = None
        self._readers: list[threading.Thread] = []
        self.host = "127.0.0.1"
        self.http_port: int | None = None
        self.grpc_port: int | None = None

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    def start(self) -> bool:
        """Start it and wait for its listening line (bounded); False (said on the console) if it never came."""
        command = [sys.executable, "-m", "prefactor_otel", "gateway", "--host", self.host]
        command += ["--http-port", "0", "--grpc-port", "0", "--dir", str(self._directory)]
        self._proc = subprocess.Popen(
            command, env=self._env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1
        )
        self._streams_open = 2
        for stream in (self._proc.stdout, self._proc.stderr):
            assert stream is not None
            reader = threading.Thread(target=self._relay, args=(stream,), name="prefactor-demo-gateway-out")
            reader.daemon = True
            reader.start()
            self._readers.append(reader)
        deadline = time.monotonic() + START_LIMIT_S
        with self._cond:
            while self.http_port is None and self._streams_open and time.monotonic() < deadline:
                self._cond.wait(0.2)
            listening = self.http_port is not None
        if not listening:
            self._console.say("The gateway did not start (its output is above).")
        return listening

    def _relay(self, stream: IO[str]) -> None:
        """On a reader thread: each line to the console, marked as the gateway's; the listening line's ports kept."""
        for raw in stream:
            line = raw.rstrip("\n")
            match = LISTENING.match(line)
            if match:
                with self._cond:
                    self.http_port, self.grpc_port = int(match.group(2)), int(match.group(4))
                    self._cond.notify_all()
            self._console.say(f"  [gateway] {line}")
        with self._cond:
            self._streams_open -= 1
            self._cond.notify_all()

    def wait_ready(self) -> bool:
        """GET /readyz until 200 (the gateway replays its directory first; a new one at once), bounded."""
        deadline = time.monotonic() + START_LIMIT_S
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                return False
            try:
                if httpx.get(self.http_url + "/readyz", timeout=5).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        return False

    def stop(self, budget_s: float) -> int:
        """SIGTERM, then wait for its exit (killed after `budget_s` + slack); its exit status (-9 when killed)."""
        proc = self._proc
        if proc is None:
            return 0
        if proc.poll() is None:
            self._console.say("Stopping the gateway (SIGTERM): it delivers what it acknowledged and finishes every run")
            proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(budget_s + STOP_SLACK_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait(10)
            self._console.say("The gateway did not stop in time after SIGTERM: killed.")
        for reader in self._readers:
            reader.join(5.0)  # its pipes are closed with it: the last lines are relayed before the demo goes on
        return code


def gateway_env(base: Mapping[str, str], server_env: Mapping[str, str] | None, ingress_token: str) -> dict[str, str]:
    """The gateway's environment: `base` without the user's own gateway settings (routes, tokens, directory), the
    local server's PREFACTOR_* variables when it is the target, and the demo's ingress token."""
    env = {k: v for k, v in base.items() if not k.startswith("PREFACTOR_GATEWAY_")}
    if server_env is not None:
        env.update(server_env)
    env["PREFACTOR_GATEWAY_TOKENS"] = ingress_token
    return env


def undelivered_files(directory: Path) -> list[Path]:
    """What a stopped gateway left in its directory undelivered: ingress-log segments (acknowledged, not yet done)
    and spool files (what it could not deliver before its shutdown budget ran out)."""
    left = sorted((directory / "log").glob("seg-*.log"))
    spool = directory / "spool"
    if spool.is_dir():
        left += sorted(path for path in spool.rglob("*") if path.is_file() and NAME_RE.match(path.name))
    return left


def run_demo_gateway() -> int:
    """The whole demo (module docstring): 0 when every span reached the gateway and it stopped cleanly, having
    delivered everything."""
    missing = missing_extra_module()
    if missing is not None:
        print(
            f"prefactor-otel demo --gateway: {missing} is not installed; install the gateway extra: {INSTALL}",
            file=sys.stderr,
        )
        return EXIT_NO_EXTRA
    from prefactor_otel.config.options import PrefactorConfig
    from prefactor_otel.config.values import ConfigError
    from prefactor_otel.devserver import DevServer, render_runs
    from prefactor_otel.devserver.serve import new_token

    console = _Console()
    server: DevServer | None = None
    api_url = os.environ.get("PREFACTOR_API_URL")
    if api_url:
        console.say(f"The gateway will send to {api_url} (from PREFACTOR_API_URL)")
    else:
        server = DevServer(token=new_token()).start()  # lives as long as the demo; nobody else needs its token
        console.say(f"No PREFACTOR_API_URL set: started the embedded local Prefactor-compatible server at {server.url}")
    try:
        env = gateway_env(os.environ, server.env() if server is not None else None, secrets.token_urlsafe(24))
        try:
            budget = PrefactorConfig.load(env).shutdown_timeout or DEFAULT_SHUTDOWN_BUDGET_S  # as the gateway reads it
        except ConfigError:
            budget = DEFAULT_SHUTDOWN_BUDGET_S  # the gateway itself will say what is wrong, and not start
        directory = Path(tempfile.mkdtemp(prefix="prefactor-demo-gateway-"))
        code = _through_gateway(console, env, directory, budget, api=server is None)
        left = undelivered_files(directory)
        if left:
            # What the gateway acknowledged is in its directory until delivered: removing it would lose those spans.
            console.say(
                f"The gateway kept {len(left)} file(s) of spans it could not deliver in {directory}: "
                f"`prefactor-otel gateway --dir {directory}` with the same PREFACTOR_* settings sends them."
            )
            code = code or 1
        else:
            shutil.rmtree(directory, ignore_errors=True)
        if server is not None:
            console.say(render_runs(server.snapshot()))
        console.say(next_step(using_api=server is None))
        return code
    finally:
        if server is not None:
            server.stop()


def _through_gateway(console: _Console, env: Mapping[str, str], directory: Path, budget: float, *, api: bool) -> int:
    """Start the gateway, export the agent's runs to it, stop it; 0 when all went well. Read back when `api`."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from prefactor_otel.devserver.timefmt import now_us
    from prefactor_otel.tools.demo import RootTraces, print_read_back
    from prefactor_otel.tools.demo_agent import run_agent

    gateway = _GatewayProcess(env, directory, console)
    exported = failed = 0
    began_us = now_us()
    roots = RootTraces()
    try:
        if not gateway.start() or not gateway.wait_ready():
            console.say("The gateway is not serving: nothing was exported.")
        else:
            console.say(
                f"Started `prefactor-otel gateway`: OTLP/HTTP {gateway.http_url}, OTLP/gRPC {gateway.host}:"
                f"{gateway.grpc_port}; the agent exports to it with OTLPSpanExporter "
                "(opentelemetry-exporter-otlp-proto-http)"
            )
            exporter = _CountingExporter(
                OTLPSpanExporter(
                    endpoint=gateway.http_url + "/v1/traces",
                    headers={"Authorization": f"Bearer {env['PREFACTOR_GATEWAY_TOKENS']}"},
                )
            )
            resource = Resource.create({"service.name": "weather-bot", "service.version": "0.1.0"})
            provider = TracerProvider(resource=resource)
            provider.add_span_processor(roots)
            provider.add_span_processor(BatchSpanProcessor(exporter))
            tracer = provider.get_tracer("prefactor_otel.demo_agent", "0.1.0")
            for question, city in (("What's the weather in Paris?", "Paris"), ("And on Mars?", "Mars")):
                console.say(f"agent run: {question!r} -> {run_agent(tracer, question, city)!r}")
            provider.shutdown()  # flushes: every span is acknowledged by the gateway (durable) or failed
            exported, failed = exporter.spans_exported, exporter.spans_failed
            console.say(
                f"exported {exported} span(s) over OTLP/HTTP in {exporter.requests} request(s), failed {failed}"
            )
    finally:
        status = gateway.stop(budget)
    console.say(f"The gateway exited with status {status}")
    console.say()
    if api and exported:
        print_read_back(roots.trace_ids, began_us)
    return 0 if status == 0 and exported and not failed else 1
