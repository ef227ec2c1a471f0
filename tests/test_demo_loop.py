"""`prefactor-otel demo --loop` as a user runs it: the printed commands watch the run live and terminate it from
"another terminal", and the loop ends through PrefactorTerminatedError; also Ctrl-C, --max-steps, and a server
named by PREFACTOR_API_URL (whose token is never printed)."""

from __future__ import annotations

import os
import queue
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from prefactor_otel.devserver import DevServer

LIMIT_S = 90.0  # safety limit against a hang, not a timing assertion
EXIT_INTERRUPTED = 130


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PREFACTOR_"))}
    env.update(extra)
    return env


def _ignore_sigint() -> None:
    # The hardest start a user's Ctrl-C meets: SIGINT inherited ignored, as from a test runner or script started in
    # the background. `demo --loop` says "Ctrl-C to stop", so it must stop all the same.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class Demo:
    """The demo running in a subprocess; its stdout is read line by line on a thread (no blocking reads here)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def line_starting(self, prefix: str) -> str:
        """The first output line starting with `prefix` (leading spaces ignored); fails if the demo ends first."""
        stop = time.monotonic() + LIMIT_S
        for line in self.lines:
            if line.strip().startswith(prefix):
                return line.strip()
        while time.monotonic() < stop:
            try:
                line = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            if line is None:
                break
            self.lines.append(line)
            if line.strip().startswith(prefix):
                return line.strip()
        raise AssertionError(f"no line starting {prefix!r} in the demo's output:\n" + "\n".join(self.lines))

    def finish(self) -> tuple[int, str, str]:
        """Exit code, whole stdout and stderr once the demo has exited (killed after the safety limit)."""
        try:
            code = self.proc.wait(timeout=LIMIT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)
            raise AssertionError("the demo did not exit:\n" + "\n".join(self.lines)) from None
        while (line := self._queue.get(timeout=30)) is not None:
            self.lines.append(line)
        assert self.proc.stderr is not None
        return code, "\n".join(self.lines), self.proc.stderr.read()


@contextmanager
def demo(*args: str, **env: str) -> Iterator[Demo]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefactor_otel", "demo", "--loop", *args],
        env=_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_ignore_sigint,
    )
    try:
        yield Demo(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


def run_printed(command: str, *more: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command the demo printed (`VAR=value ... prefactor-otel ARGS`) as a shell would, with `more` args;
    `token` stands in for a token the demo printed as a placeholder."""
    words = shlex.split(command)
    env: dict[str, str] = {}
    while "=" in words[0]:
        name, value = words.pop(0).split("=", 1)
        env[name] = token if token is not None and name == "PREFACTOR_API_TOKEN" else value
    assert words[0] == "prefactor-otel", command
    return subprocess.run(
        [sys.executable, "-m", "prefactor_otel", *words[1:], *more],
        env=_env(**env),
        capture_output=True,
        text=True,
        timeout=LIMIT_S,
    )


def _run_id(stop_command: str) -> str:
    words = shlex.split(stop_command)
    return words[words.index("terminate") + 1]


def test_watch_the_run_live_then_terminate_it_from_another_terminal() -> None:
    # At most 60 s of steps: a loop ignoring the termination exits at --max-steps without the reason, and fails.
    with demo("--interval", "0.2", "--max-steps", "300") as running:
        watch = running.line_starting("watch it:").removeprefix("watch it:")
        stop = running.line_starting("stop it:").removeprefix("stop it:")
        run_id = _run_id(stop)

        seen = run_printed(watch, "--count", "1")
        assert seen.returncode == 0, seen.stderr
        assert f"agent run {run_id}  active" in seen.stdout
        assert "otel:agent  invoke_agent weather-watch  active" in seen.stdout  # the root span, in flight

        *command, reason_option, _ = shlex.split(stop)  # the printed command, with a reason of our own
        assert reason_option == "--reason"
        stopped = run_printed(shlex.join([*command, reason_option, "ops: budget spent"]))
        assert stopped.returncode == 0, stopped.stderr
        assert running.proc.poll() is None  # the loop was still going when the run was terminated

        code, out, err = running.finish()
    assert code == 0, out + err
    assert "stopped by Prefactor: ops: budget spent" in out
    assert f"run {run_id} on the server: terminated (ops: budget spent)" in out
    assert "reached --max-steps" not in out and "Traceback" not in err


def test_against_a_server_named_by_prefactor_api_url_the_token_is_never_printed() -> None:
    token = "pf_demo_loop_secret_token"
    with DevServer(token=token) as srv:
        with demo("--interval", "0.2", "--max-steps", "300", **srv.env()) as running:
            stop = running.line_starting("stop it:").removeprefix("stop it:")
            run_id = _run_id(stop)
            (run,) = srv.instances()
            assert run["id"] == run_id and run["status"] == "active"
            stopped = run_printed(stop, token=token)
            assert stopped.returncode == 0, stopped.stderr
            code, out, err = running.finish()
        (run,) = srv.instances()
    assert code == 0, out + err
    assert f"Exporting to {srv.url}" in out and "stopped by Prefactor: seen enough" in out
    assert run["status"] == "terminated" and run["termination_reason"] == "seen enough"
    assert token not in out + err and "<your token>" in stop


def test_ctrl_c_ends_the_run_cleanly() -> None:
    with demo("--interval", "0.2", "--max-steps", "300") as running:
        run_id = _run_id(running.line_starting("stop it:").removeprefix("stop it:"))
        running.line_starting("step 1:")
        running.proc.send_signal(signal.SIGINT)
        code, out, err = running.finish()
    assert code == EXIT_INTERRUPTED, out + err
    assert "interrupted after" in out and "Traceback" not in err
    assert f"run {run_id} on the server: failed" in out  # finished, not left active; marked interrupted


def test_max_steps_bounds_the_loop() -> None:
    with demo("--interval", "0.05", "--max-steps", "3") as running:
        run_id = _run_id(running.line_starting("stop it:").removeprefix("stop it:"))
        code, out, err = running.finish()
    assert code == 0, out + err
    assert "step 3:" in out and "step 4:" not in out
    assert "reached --max-steps 3" in out and f"run {run_id} on the server: complete" in out


@pytest.mark.parametrize("option", ["--max-steps", "--interval"])
def test_loop_options_refuse_nonsense(option: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "prefactor_otel", "demo", "--loop", option, "0"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=LIMIT_S,
    )
    assert proc.returncode == 2 and option in proc.stderr
