"""`prefactor-otel demo --loop`: a long-running agent run to watch live and stop from another terminal.

One agent run (an `invoke_agent` root span) takes a step every `interval` seconds -- a `chat` span and an
`execute_tool` span with GenAI attributes (demo_agent.py) -- through a PrefactorSpanProcessor, so the run and its
in-flight spans are on the server while they happen. Each step starts with `raise_if_terminated()` and every pause
waits on the run's termination event, so `prefactor-otel terminate` ends the loop through PrefactorTerminatedError
within about the control poll interval (1 s here), also while no span is being sent. `max_steps` bounds the run;
Ctrl-C ends it too (the run is finished, marked interrupted).

The run's id is printed with the commands to run elsewhere. The exporter does not publish it, so it is read from
the server: a local server's `/_dev/snapshot` lists every span with its OTel trace id. Against Prefactor itself
the id is not known here and the commands carry a placeholder.

Threads: everything here runs on the caller's thread; the exporter's threads record a termination and set the
run's event (control.py). No state is shared between threads here, no locks.
"""

from __future__ import annotations

import itertools
import os
import shlex
import sys
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple, TextIO

import httpx
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Status, StatusCode, Tracer

from prefactor_otel.control.terminations import PrefactorTerminatedError, raise_if_terminated, termination_event
from prefactor_otel.devserver.serve import PUBLIC_TOKEN
from prefactor_otel.tools.demo_agent import WEATHER, call_tool, chat

if TYPE_CHECKING:
    from prefactor_otel.devserver import DevServer

POLL_INTERVAL_S = 1.0  # polling each second, a termination is noticed even while no span is sent
FIND_RUN_LIMIT_S = 10.0  # how long to look for the run on the server before going on without its id
EXIT_INTERRUPTED = 130  # what a shell reports for a program ended by SIGINT
AGENT_NAME = "weather-watch"
MODEL = "demo-model-1"
RUN_ID_PLACEHOLDER = "<run id>"
# Shares of a step's interval: the model thinks, the tool works, then the agent idles until the next step.
THINK_SHARE, TOOL_SHARE, IDLE_SHARE = 0.4, 0.2, 0.4


class Target(NamedTuple):
    """The server the demo exports to: its base URL, the token the demo reads it with, and what the printed
    commands say for the token (the embedded server's own token, which dies with the demo, or the old public dev
    token, as is; any other token is never printed)."""

    url: str
    token: str
    token_shown: str


class LoopEnd(NamedTuple):
    steps: int
    interrupted: bool


def _get(target: Target, path: str) -> httpx.Response | None:
    base = target.url.rstrip("/").removesuffix("/api/v1")
    try:
        return httpx.get(base + path, headers={"Authorization": f"Bearer {target.token}"}, timeout=5)
    except httpx.HTTPError:
        return None


def _json_object(response: httpx.Response | None) -> Mapping[str, Any] | None:
    if response is None or response.status_code != 200:
        return None
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, Mapping) else None


def find_run_id(target: Target, trace_id: int, limit_s: float = FIND_RUN_LIMIT_S) -> str | None:
    """The id of the run holding OTel trace `trace_id`, from a local server's snapshot (every span's payload carries
    its trace id), once the run's first span is there; None after `limit_s` seconds or at once if the server has no
    snapshot (Prefactor itself)."""
    wanted = f"{trace_id:032x}"
    stop = time.monotonic() + limit_s
    while True:
        response = _get(target, "/_dev/snapshot")
        if response is not None and response.status_code == 404:
            return None
        snapshot = _json_object(response) or {}
        for span in snapshot.get("spans") or []:
            payload = span.get("payload") if isinstance(span, Mapping) else None
            if isinstance(payload, Mapping) and payload.get("trace_id") == wanted and span.get("agent_instance_id"):
                return str(span["agent_instance_id"])
        if time.monotonic() > stop:
            return None
        time.sleep(0.1)


def run_state(target: Target, run_id: str) -> str | None:
    """`<status>` or `<status> (<termination reason>)` of a run, from the API's `GET /agent_instance/{id}`."""
    details = (_json_object(_get(target, f"/api/v1/agent_instance/{run_id}")) or {}).get("details")
    if not isinstance(details, Mapping) or not details.get("status"):
        return None
    reason = details.get("termination_reason")
    return f"{details['status']} ({reason})" if reason else str(details["status"])


def commands(target: Target, run_id: str) -> tuple[str, str]:
    """The two shell commands for another terminal: watch the live runs, and terminate this one."""
    env = f"PREFACTOR_API_URL={shlex.quote(target.url)} PREFACTOR_API_TOKEN={shlex.quote(target.token_shown)}"
    watch = f"{env} prefactor-otel show --watch"
    stop = f"{env} prefactor-otel terminate {shlex.quote(run_id)} --reason {shlex.quote('seen enough')}"
    return watch, stop


def _step(tracer: Tracer, step: int, city: str, pause: Callable[[float], object]) -> str:
    """One step of the agent: the model picks the tool call, the tool answers."""
    call_id = f"call-{step}"
    user = {"role": "user", "parts": [{"type": "text", "content": f"Weather in {city}? (check {step})"}]}
    call = {
        "role": "assistant",
        "parts": [{"type": "tool_call", "id": call_id, "name": "get_weather", "arguments": {"city": city}}],
    }
    chat(tracer, MODEL, [user], call, (30, 9), think=lambda: pause(THINK_SHARE))
    raise_if_terminated()  # at a tool's start too, as docs/control.md advises
    return call_tool(tracer, "get_weather", call_id, {"city": city}, work=lambda: pause(TOOL_SHARE))


def watch_weather(
    tracer: Tracer,
    *,
    max_steps: int,
    interval: float,
    on_run_started: Callable[[int], None],
    say: Callable[[str], None],
) -> LoopEnd:
    """The agent loop: one run (`on_run_started(trace_id)` is called inside it first), a step every `interval`
    seconds until Prefactor terminates the run (PrefactorTerminatedError propagates), `max_steps` steps are done,
    or Ctrl-C."""
    attributes = {
        "gen_ai.operation.name": "invoke_agent",
        "gen_ai.agent.name": AGENT_NAME,
        "gen_ai.conversation.id": f"watch-{os.getpid()}",
    }
    with tracer.start_as_current_span(f"invoke_agent {AGENT_NAME}", attributes=attributes) as root:
        stopped = termination_event()  # set by an exporter thread the moment the termination is known
        cities = itertools.cycle(sorted(WEATHER))
        steps = 0
        try:
            on_run_started(root.get_span_context().trace_id)
            while steps < max_steps:
                raise_if_terminated()
                city = next(cities)
                weather = _step(tracer, steps + 1, city, lambda share: stopped.wait(share * interval))
                steps += 1
                say(f"step {steps}: {city}: {weather}")
                stopped.wait(IDLE_SHARE * interval)
        except KeyboardInterrupt:
            # The SDK records only Exceptions: say on the run why it ended before its work was done.
            root.set_status(Status(StatusCode.ERROR, "interrupted (Ctrl-C)"))
            return LoopEnd(steps, interrupted=True)
        return LoopEnd(steps, interrupted=False)


def _options_and_target(say: Callable[[str], None]) -> tuple[dict[str, Any], Target, DevServer | None]:
    """Exporter options, the target server, and the embedded local server started when PREFACTOR_API_URL is unset
    (else None)."""
    from prefactor_otel.devserver import DevServer
    from prefactor_otel.devserver.serve import new_token

    options: dict[str, Any] = {}
    # Live spans and a short poll make the demo; a value the user set in the environment still wins.
    if not os.environ.get("PREFACTOR_LIVE_SPANS"):
        options["live_spans"] = "all"
    if not os.environ.get("PREFACTOR_CONTROL_POLL_INTERVAL"):
        options["control_poll_interval"] = POLL_INTERVAL_S
    url = os.environ.get("PREFACTOR_API_URL")
    if url:
        say(f"Exporting to {url} (from PREFACTOR_API_URL)")
        token = os.environ.get("PREFACTOR_API_TOKEN", "").strip()
        return options, Target(url, token, token if token == PUBLIC_TOKEN else "<your token>"), None
    server = DevServer(token=new_token()).start()  # printed in the commands below: the demo's own
    say(f"No PREFACTOR_API_URL set: started the embedded local Prefactor-compatible server at {server.url}")
    say(f"Watch it in a browser: {server.page_url}")
    options.update(
        api_url=server.url,
        api_token=server.token,
        agent_id=server.agent_id,
        environment_id=server.environment_id,
        finish_grace_seconds=0,
        spool=False,  # the server ends with this process: nothing to re-send to it later
    )
    return options, Target(server.url, server.token, server.token), server


def run_demo_loop(max_steps: int, interval: float, out: TextIO | None = None) -> int:
    """`prefactor-otel demo --loop`. 0 when the run was terminated or took `max_steps` steps, 130 after Ctrl-C,
    1 when the exporter is disabled (nothing could reach a server, so nothing could stop the loop)."""
    from prefactor_otel.sdk.processor import PrefactorSpanProcessor

    stream = out if out is not None else sys.stdout

    def say(text: str = "") -> None:
        print(text, file=stream, flush=True)  # flushed: another program may be reading this line by line

    server: DevServer | None = None
    try:
        options, target, server = _options_and_target(say)
        processor = PrefactorSpanProcessor(schedule_delay_millis=500, **options)
        exporter = processor.exporter
        if not exporter.enabled:
            say(f"The exporter is disabled ({exporter.stats()['disabled_reason']}): nothing would reach a server.")
            processor.shutdown()
            return 1
        provider = TracerProvider(resource=Resource.create({"service.name": AGENT_NAME, "service.version": "0.1.0"}))
        provider.add_span_processor(processor)
        tracer = provider.get_tracer("prefactor_otel.demo_loop", "0.1.0")
        run_id = RUN_ID_PLACEHOLDER

        def announce(trace_id: int) -> None:
            nonlocal run_id
            found = find_run_id(target, trace_id)
            if found is None:
                say(f"The run's id could not be read from {target.url} (only a local server lists it): find it there.")
            else:
                run_id = found
            watch, stop = commands(target, run_id)
            say(f"Agent run {run_id} is live: one step every {interval:g} s, at most {max_steps} steps.")
            say("In another terminal,")
            say(f"  watch it:  {watch}")
            say(f"  stop it:   {stop}")
            say("(Ctrl-C here ends it too.)")
            say()

        code = 0
        try:
            end = watch_weather(tracer, max_steps=max_steps, interval=interval, on_run_started=announce, say=say)
        except PrefactorTerminatedError as stop:
            say(f"stopped by Prefactor: {stop.reason or 'no reason given'}")
        else:
            if end.interrupted:
                say(f"interrupted after {end.steps} step(s): finishing the run")
                code = EXIT_INTERRUPTED
            else:
                say(f"reached --max-steps {max_steps}: the run completes")
        provider.shutdown()
        stats = exporter.stats()
        dropped = ", ".join(f"{n} {why}" for why, n in sorted(stats["dropped_by_reason"].items()) if n) or "none"
        say(f"exported {stats['spans_exported']} span(s) in {stats['requests']} request(s); dropped: {dropped}")
        state = run_state(target, run_id) if run_id != RUN_ID_PLACEHOLDER else None
        if state is not None:
            say(f"run {run_id} on the server: {state}")
        return code
    except KeyboardInterrupt:  # before the run started, or a second Ctrl-C while the last spans are sent
        say("interrupted")
        return EXIT_INTERRUPTED
    finally:
        if server is not None:
            server.stop()
