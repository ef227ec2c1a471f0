"""`prefactor-otel show --watch` and `serve`'s testing flags as a user meets them: a real `prefactor-otel serve`
process, a real application sending spans live (its own process), and the CLI as a subprocess whose output is
read line by line with bounded waits.

`show --watch` follows a live run as it grows: finished children with their status and duration, tokens so far in
the totals line, in-flight spans marked `[in flight]` (render.render_live). `serve --refuse-encoding` and
`serve --register-without-schema` make the server differ from the API so an exporter's fallbacks can be seen.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

WAIT_S = 60.0  # the longest any one step may take on a loaded machine (a bound, not a speed asserted)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PREFACTOR_"))}
    env.update(PYTHONUNBUFFERED="1", **extra)
    return env


class Lines:
    """A process's output, read on a thread so the test waits on it with a bound."""

    def __init__(self, stream: object) -> None:
        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def until(self, done: object, what: str) -> list[str]:
        """Read until `done(lines so far)` holds; fail, with what was read, after WAIT_S or at the end."""
        deadline = time.monotonic() + WAIT_S
        while not done(self.seen):  # type: ignore[operator]
            left = deadline - time.monotonic()
            try:
                line = self._queue.get(timeout=max(0.0, left))
            except queue.Empty:
                line = None
            if line is None:
                raise AssertionError(f"never saw {what}:\n" + "\n".join(self.seen[-60:]))
            self.seen.append(line)
        return self.seen


@contextmanager
def serve(*flags: str) -> Iterator[dict[str, str]]:
    """`prefactor-otel serve --memory --port 0 --quiet` with `flags`; yields its banner's exports and banner."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefactor_otel", "serve", "--memory", "--port", "0", "--quiet", *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(),
    )
    try:
        out = Lines(proc.stdout)
        banner = out.until(lambda seen: seen and seen[-1].startswith("Press Ctrl-C"), "serve's banner")
        exports = dict(line.strip().removeprefix("export ").split("=", 1) for line in banner if "export " in line)
        yield {**exports, "banner": "\n".join(banner)}
    finally:
        proc.terminate()
        proc.wait(timeout=WAIT_S)
        if proc.stdout is not None:
            proc.stdout.close()


# An agent that calls a model (finished, with tokens), then a tool that stays in flight until the test says go.
LIVE_APP = textwrap.dedent(
    """
    import sys
    from opentelemetry.sdk.trace import TracerProvider
    from prefactor_otel import PrefactorSpanProcessor

    provider = TracerProvider()
    provider.add_span_processor(PrefactorSpanProcessor(schedule_delay_millis=100))
    tracer = provider.get_tracer("watched")
    agent = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "watched-agent"}
    chat = {"gen_ai.operation.name": "chat", "gen_ai.request.model": "demo-model-1",
            "gen_ai.usage.input_tokens": 42, "gen_ai.usage.output_tokens": 9}
    tool = {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "get_weather"}
    with tracer.start_as_current_span("invoke_agent watched-agent", attributes=agent):
        with tracer.start_as_current_span("chat demo-model-1", attributes=chat):
            pass
        with tracer.start_as_current_span("execute_tool get_weather", attributes=tool):
            print("tool running", flush=True)
            sys.stdin.readline()  # the test has seen the frame it wants: finish
    provider.shutdown()
    print("done", flush=True)
    """
)


def _frames(seen: list[str], url: str) -> list[list[str]]:
    """The frames printed so far (each headed by the URL and the time), the last one possibly not whole yet."""
    frames: list[list[str]] = []
    for line in seen:
        if line.startswith(f"{url}  "):
            frames.append([])
        elif frames and line:
            frames[-1].append(line)
    return frames


def _line(frame: list[str], text: str) -> str:
    return next((line for line in frame if text in line), "")


def test_show_watch_follows_a_live_run_as_it_grows(tmp_path: Path) -> None:
    with serve() as server:
        url = server["PREFACTOR_API_URL"]
        env = _env(**{k: v for k, v in server.items() if k.startswith("PREFACTOR_")})
        app_file = tmp_path / "app.py"
        app_file.write_text(LIVE_APP)
        app = subprocess.Popen(
            [sys.executable, str(app_file)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**env, "PREFACTOR_LIVE_SPANS": "all"},  # the tool too is created when it starts (default: agents)
        )
        watch = subprocess.Popen(
            [sys.executable, "-m", "prefactor_otel", "show", "--watch", "--interval", "0.2"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        try:
            app_out = Lines(app.stdout)
            app_out.until(lambda seen: "tool running" in seen, "the app's tool start")
            frames = Lines(watch.stdout)

            def grown(frame: list[str]) -> bool:
                return "complete" in _line(frame, "chat demo-model-1") and bool(_line(frame, "get_weather  active"))

            # A whole frame (another one began after it) showing the finished model call and the tool in flight.
            seen = frames.until(
                lambda seen: any(grown(f) for f in _frames(seen, url)[:-1]),
                "a frame with the finished model call and the tool in flight",
            )
            frame = next(f for f in _frames(seen, url)[:-1] if grown(f))
            header = frame[0]
            assert header.startswith("agent run ") and "  active  " in header and "2 spans in flight" in header
            assert "3 spans  0 errors  tokens in 42 / out 9 / total 51" in frame[1]  # tokens so far
            root, chat, tool = (
                _line(frame, name) for name in ("invoke_agent", "chat demo-model-1", "execute_tool get_weather")
            )
            assert "active" in root and "s so far" in root and root.endswith("  [in flight]")
            assert "complete" in chat and " ms" in chat and "model demo-model-1" in chat and "[in flight]" not in chat
            assert "tokens in 42 / out 9" in chat
            assert "active" in tool and "s so far" in tool and tool.endswith("  [in flight]")
            # Children under their parent, in the order they ran.
            assert frame.index(root) < frame.index(chat) < frame.index(tool)
            assert chat.startswith("   ├─ ") and tool.startswith("   └─ ")

            assert app.stdin is not None
            app.stdin.write("go\n")
            app.stdin.flush()
            app_out.until(lambda seen: "done" in seen, "the app's end")
            assert app.wait(timeout=WAIT_S) == 0
            # The run finished: the watch says so in a later frame, and goes on until Ctrl-C.
            frames.until(lambda seen: "1 finished run not shown" in seen, "the finished run counted")
            watch.send_signal(signal.SIGINT)
            assert watch.wait(timeout=WAIT_S) == 0
        finally:
            for proc in (app, watch):
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(timeout=WAIT_S)


def _bulk_body() -> bytes:
    return b'{"items": []}'


def test_serve_refuse_encoding_answers_415_and_the_exporter_falls_back() -> None:
    from prefactor_otel import PrefactorSpanExporter
    from tests.spans import agent_trace, make_provider

    with serve("--refuse-encoding", "zstd") as server:
        assert "request bodies encoded zstd are answered 415 (--refuse-encoding)" in server["banner"]
        url, token = server["PREFACTOR_API_URL"], server["PREFACTOR_API_TOKEN"]
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        gzip = zlib.compressobj(wbits=31)
        gzipped = gzip.compress(_bulk_body()) + gzip.flush()
        taken = httpx.post(
            f"{url}/api/v1/bulk", content=gzipped, headers={**headers, "Content-Encoding": "gzip"}, timeout=10
        )
        assert taken.status_code != 415, taken.text  # only the encoding named is refused
        refused = httpx.post(
            f"{url}/api/v1/bulk",
            content=b"\x28\xb5\x2f\xfd",
            headers={**headers, "Content-Encoding": "zstd"},
            timeout=10,
        )
        assert refused.status_code == 415 and "zstd" not in refused.headers.get("Accept-Encoding", "zstd")

        exporter = PrefactorSpanExporter(
            api_url=url, api_token=token, agent_id=server["PREFACTOR_AGENT_ID"], finish_grace_seconds=0
        )
        provider, collector = make_provider()
        agent_trace(provider)
        exporter.export(collector.spans)
        exporter.shutdown()
        stats = exporter.stats()
    assert stats["spans_dropped"] == 0 and stats["spans_exported"] > 0, stats
    assert stats["compression_refused"].get("zstd", 0) >= 1, stats  # it met the 415 and sent gzip instead


REGISTER = {"agent_version": {"name": "schema-once"}}
SCHEMA = {"span_type_schemas": [{"name": "agent:llm", "params_schema": {"type": "object"}}]}


def _register(url: str, token: str, body: dict[str, object]) -> httpx.Response:
    return httpx.post(
        f"{url}/api/v1/agent_instance/register", json=body, headers={"Authorization": f"Bearer {token}"}, timeout=10
    )


def test_serve_register_without_schema_takes_a_register_the_api_would_refuse() -> None:
    with serve() as strict:
        url, token = strict["PREFACTOR_API_URL"], strict["PREFACTOR_API_TOKEN"]
        assert _register(url, token, {**REGISTER, "agent_schema_version": SCHEMA}).status_code == 200
        assert _register(url, token, REGISTER).status_code == 422  # as the API: the set is required
        assert "--register-without-schema" not in strict["banner"]
    with serve("--register-without-schema") as lenient:
        url, token = lenient["PREFACTOR_API_URL"], lenient["PREFACTOR_API_TOKEN"]
        assert "--register-without-schema; the API requires it" in lenient["banner"]
        assert _register(url, token, REGISTER).status_code == 422  # the agent has no schema version yet
        assert _register(url, token, {**REGISTER, "agent_schema_version": SCHEMA}).status_code == 200
        answer = _register(url, token, REGISTER)
        assert answer.status_code == 200, answer.text  # the run gets the agent's latest schema version
