"""`prefactor-otel demo` on a machine with no network: embedded server, trees printed, exit 0."""

from __future__ import annotations

import os
import subprocess
import sys


def test_demo_runs_offline_and_prints_trees():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PREFACTOR_"))}
    proc = subprocess.run(
        [sys.executable, "-m", "prefactor_otel", "demo"], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "embedded local Prefactor-compatible server" in out
    assert "otel:agent" in out and "otel:llm" in out and "otel:tool" in out
    assert "complete" in out and "failed" in out
    assert "dropped 0" in out
