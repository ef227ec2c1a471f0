"""benchmarks/wire_cost.py at a toy size: the fast zstd levels are in its codec table, and `--http` reports the
request beside its floors (a bare httpx post, http.client) with every pass it promises. No figure is asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wire_cost_reports_the_fast_levels_and_the_request_beside_its_floors() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PREFACTOR_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "wire_cost.py"),
            "--spans",
            "40",
            "--repeat",
            "1",
            "--http",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout[done.stdout.index("{") :])
    sizes = result["bytes"]
    assert {"zstd-1", "zstd-fast1", "zstd-fast5", "zstd-fast10"} <= set(sizes)
    assert 0 < sizes["zstd-fast5"] < sizes["identity"]
    http = result["http_us"]
    assert {"httpx_post", "http_client", "request", "send_bulk", "compress", "answer"} <= set(http)
    assert http["requests"] >= 1 and http["spans"] == result["spans"]
    assert all(http[name] > 0 for name in ("httpx_post", "http_client", "request", "send_bulk"))
