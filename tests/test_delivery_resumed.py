"""After an outage, the application's stderr says once that delivery resumed and what was sent (issue 24, item 8):
a real application in a subprocess sending spans the whole time, its local server stopped and started again on
the same port, and what the user reads on stderr."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from pathlib import Path

from prefactor_otel.devserver import DevServer
from tests.spans import wait_for

APP = """
import sys, time
from pathlib import Path
from opentelemetry.sdk.trace import TracerProvider
from prefactor_otel import PrefactorSpanProcessor

stop = Path(sys.argv[1])
provider = TracerProvider()
provider.add_span_processor(PrefactorSpanProcessor(schedule_delay_millis=100))
tracer = provider.get_tracer("outage")
agent = {"gen_ai.operation.name": "invoke_agent"}
for step in range(6000):  # bounded: the test creates the stop file well before
    with tracer.start_as_current_span(f"invoke_agent step {step}", attributes=agent):
        pass
    if stop.exists():
        break
    time.sleep(0.05)
provider.shutdown()
print("app done", flush=True)
"""

RESUMED = re.compile(r"^Prefactor export: delivery to 127\.0\.0\.1:(\d+) resumed after [\d.]+ s; (\d+) spans? sent$")


def test_after_an_outage_stderr_says_once_that_delivery_resumed_and_what_was_sent(tmp_path: Path) -> None:
    srv = DevServer(token="pf_outage_token").start()
    stop = tmp_path / "stop"
    app = tmp_path / "app.py"
    app.write_text(APP)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PREFACTOR_"))}
    env.update(srv.env(), PREFACTOR_SPOOL_DIR=str(tmp_path / "spool"), PREFACTOR_FINISH_GRACE_SECONDS="0")
    env["PREFACTOR_EXPORT_TIMEOUT"] = "2"  # an outage costs each export at most this, not the default 10 s
    lines: list[str] = []
    proc = subprocess.Popen(
        [sys.executable, str(app), str(stop)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stderr is not None
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        assert wait_for(lambda: len(srv.spans()) >= 3, 30)
        srv.stop()  # the outage
        assert wait_for(lambda: any("cannot reach" in line for line in lines), 30), lines
        stored_before = len(srv.spans())
        srv.start()  # the same port, the same store: Prefactor is back
        assert wait_for(lambda: any("resumed after" in line for line in lines), 60), lines
        stop.touch()
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        srv.stop()
    reader.join(10)
    assert "app done" in out
    text = [line.rstrip("\n") for line in lines]
    outage = [i for i, line in enumerate(text) if "cannot reach" in line]
    resumed = [i for i, line in enumerate(text) if "resumed after" in line]
    assert len(resumed) == 1, text  # said once
    assert resumed[0] > outage[-1], text  # after the last "cannot reach": nothing says the outage goes on
    match = RESUMED.match(text[resumed[0]])
    assert match is not None, text[resumed[0]]
    assert int(match.group(1)) == srv.port
    assert int(match.group(2)) >= 1  # what waited through the outage went
    assert len(srv.spans()) > stored_before
    assert srv.token not in "".join(text)
