"""Running an application under `opentelemetry-instrument` against a local server, as a user would: only
`OTEL_*` and `PREFACTOR_*` settings, no set-up code (shared by the zero-code tests).

Whether opentelemetry-distro is visible, and whose distro Python lists first, is fixed per run through PYTHONPATH
(it precedes site-packages, and Python keeps the first distribution it finds of each name): a stand-in
`opentelemetry-distro` metadata directory without entry points hides the installed one; a link to an installed
distribution's metadata lists it first.

`InstrumentedApp` runs the application beside the test, for steps the test must observe while the application is
still running: the application prints one JSON event per line (`say`) and waits for the test's go-ahead lines on
stdin (`wait_for_go`). Threads: one daemon reader thread per application moves its stdout lines into a queue; the
test thread reads the queue and writes stdin. No lock: the queue is the only shared state.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
import textwrap
import threading
import time
from importlib.metadata import distribution
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal

from prefactor_otel.devserver import DevServer

Distros = Literal["without-opentelemetry-distro", "ours-listed-first", "theirs-listed-first"]

# What every application run by InstrumentedApp starts with: how it talks to the test.
APP_PRELUDE = textwrap.dedent(
    """
    import json as _json
    import sys as _sys


    def say(event, **data):
        print(_json.dumps({"event": event, **data}), flush=True)


    def wait_for_go(word):
        line = _sys.stdin.readline()  # '' when the test has gone: end rather than run on unobserved
        if line.strip() != word:
            _sys.exit(f"expected {word!r} from the test, got {line!r}")
    """
)


def _metadata_dir(name: str) -> Path:
    dist = distribution(name)
    metadata = next(f for f in dist.files or () if f.name == "METADATA" and f.parent.name.endswith(".dist-info"))
    return Path(str(dist.locate_file(metadata))).parent


def distribution_order(tmp_path: Path, distros: Distros) -> Path:
    """A directory for PYTHONPATH that fixes which distros the run sees, and in which order."""
    path = tmp_path / "dists"
    path.mkdir()
    # The OTLP/gRPC exporter is installed here for the gateway's tests, not in the applications these tests stand
    # for: hidden the same way (a stand-in without entry points listed first), so `otlp` metrics still need it.
    hidden = path / "opentelemetry_exporter_otlp_proto_grpc-0.0.0.dist-info"
    hidden.mkdir()
    (hidden / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: opentelemetry-exporter-otlp-proto-grpc\nVersion: 0.0.0\n"
    )
    if distros == "without-opentelemetry-distro":
        stand_in = path / "opentelemetry_distro-0.0.0.dist-info"
        stand_in.mkdir()
        (stand_in / "METADATA").write_text("Metadata-Version: 2.1\nName: opentelemetry-distro\nVersion: 0.0.0\n")
    else:
        first = _metadata_dir("prefactor-otel" if distros == "ours-listed-first" else "opentelemetry-distro")
        (path / first.name).symlink_to(first, target_is_directory=True)
    return path


def run_path(tmp_path: Path, distros: Distros) -> str:
    """PYTHONPATH for a run: the distro order, then the source tree of the prefactor_otel this test imported (a
    worktree's `src` comes before the editable install's, so its subprocesses run the code under test)."""
    import prefactor_otel

    source = Path(prefactor_otel.__file__).resolve().parent.parent
    return os.pathsep.join([str(distribution_order(tmp_path, distros)), str(source)])


def instrumented_env(tmp_path: Path, server: DevServer, distros: Distros, **env_extra: str) -> dict[str, str]:
    """This process's environment without any OTEL_* or PREFACTOR_* variable, plus the server's PREFACTOR_*
    settings, the distro order and `env_extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PREFACTOR_"))}
    env.update(
        PREFACTOR_API_URL=server.url,
        PREFACTOR_API_TOKEN=server.token,
        PREFACTOR_AGENT_ID=server.agent_id,
        PREFACTOR_ENVIRONMENT_ID=server.environment_id,
        PYTHONPATH=run_path(tmp_path, distros),
        **env_extra,
    )
    return env


def instrument_command(app: Path) -> list[str]:
    """`opentelemetry-instrument python app.py`, both from this environment."""
    return [os.path.join(os.path.dirname(sys.executable), "opentelemetry-instrument"), sys.executable, str(app)]


class InstrumentedApp:
    """`opentelemetry-instrument python app.py` running beside the test; `source` follows APP_PRELUDE. Use it as a
    context manager: an application still running at the end is killed."""

    def __init__(self, tmp_path: Path, source: str, env: dict[str, str]) -> None:
        app = tmp_path / "app.py"
        app.write_text(APP_PRELUDE + textwrap.dedent(source))
        self._stderr_path = tmp_path / "app.stderr"
        self._stderr_file = self._stderr_path.open("w")
        self.proc = subprocess.Popen(
            instrument_command(app),
            env=env,
            cwd=tmp_path,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr_file,
            text=True,
            bufsize=1,
        )
        self.stdout: list[str] = []  # every line the application printed, events or not
        self._lines: queue.Queue[str | None] = queue.Queue()
        assert self.proc.stdout is not None
        threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self._lines.put(line)
        self._lines.put(None)  # end of output

    def stderr(self) -> str:
        self._stderr_file.flush()
        return self._stderr_path.read_text()

    def expect(self, event: str, limit_s: float = 60.0) -> dict[str, Any]:
        """The application's next event, which must be `event` (a safety limit against a hang, not a timing
        assertion: the application is slow to start on a loaded machine)."""
        stop = time.monotonic() + limit_s
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, stop - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {event!r} from the application: {self._so_far()}") from None
            if line is None:
                self._lines.put(None)  # later calls see the end too
                raise AssertionError(f"the application ended before {event!r}: {self._so_far()}")
            self.stdout.append(line)
            if line.startswith("{"):
                found: dict[str, Any] = json.loads(line)
                assert found["event"] == event, f"expected {event!r}, got {found}: {self._so_far()}"
                return found

    def go(self, word: str) -> None:
        """Let the application past its `wait_for_go(word)`."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(word + "\n")
        self.proc.stdin.flush()

    def running(self) -> bool:
        return self.proc.poll() is None

    def wait(self, limit_s: float = 60.0) -> int:
        """The exit code, once the application has ended (bounded: a safety limit against a hang)."""
        code = self.proc.wait(limit_s)
        while (line := self._lines.get(timeout=limit_s)) is not None:
            self.stdout.append(line)
        return code

    def _so_far(self) -> str:
        return f"stdout: {''.join(self.stdout)!r}, stderr: {self.stderr()!r}"

    def __enter__(self) -> InstrumentedApp:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):  # the application may have gone with unread input
                self.proc.stdin.close()
        self._stderr_file.close()
