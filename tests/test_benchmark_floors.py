"""benchmarks/floors.py, the per-stage cost and floor table (issue 22, "If a target still cannot be met"), run for
real on a tiny workload: its own sinks process on 127.0.0.1, a real PrefactorSpanExporter and OTLPSpanExporter,
the work tree's source.

What it proves about the script's output (never a speed): every stage of the table is there for both workloads,
measured for our code and for its floor; each floor is at most our cost, or the row says "at floor"; the ratio
column is ours / floor; the sum of the floors printed is the sum of the rows (a row at floor counts at ours); the
compression floor keeps bytes at or under OTLP's; the notes file it writes for RESULTS.md holds both tables
between its markers.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
SRC = Path(__file__).resolve().parent.parent / "src"
STAGES = ("envelope", "redaction", "typed", "planning", "ids", "encoding", "compression", "response", "http")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PREFACTOR_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    return env


def test_the_floor_table_has_every_stage_and_no_floor_above_our_cost_unless_it_says_so(tmp_path: Path) -> None:
    dump, notes = tmp_path / "floors.json", tmp_path / "floors_notes.md"
    done = subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / "floors.py"),
            *("--spans", "120", "--rounds", "1", "--json", str(dump), "--write", "--notes", str(notes)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=_env(),
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(dump.read_text())
    assert set(result["rows"]) == {"realistic", "small"}
    printed = done.stdout
    for workload, rows in result["rows"].items():
        assert [row["key"] for row in rows] == list(STAGES), workload
        for row in rows:
            assert row["ours"] is not None and math.isfinite(row["ours"]), row
            assert row["floor"] is not None and row["floor"] > 0, row
            if row["at_floor"]:
                assert row["floor"] > row["ours"] and row["ratio"] is None, row
            else:
                assert row["floor"] <= row["ours"], row
                assert math.isclose(row["ratio"], row["ours"] / row["floor"]), row
            assert f"| {row['stage']} | " in printed, row["stage"]
        measured = next(r for r in result["results"] if r["workload"] == workload)
        assert measured["requests"] >= 1 and measured["spans"] >= 120
        assert 0 < measured["zstd_floor_bytes_per_span"] <= measured["otlp_bytes_per_span"]
        assert measured["otlp"]["total"] > 0 and measured["ours"]["work tree"]["total"] > 0
        # A row at floor counts at our cost: our code is itself a way to do that stage.
        floor_sum = sum(max(0.0, row["ours"]) if row["at_floor"] else row["floor"] for row in rows)
        table = printed.split(f"**{workload}** workload", 1)[1]
        printed_sum = re.search(r"\*\*sum of the floors\*\*[^|]*\| \| \*\*([0-9.]+)\*\*", table)
        assert printed_sum is not None and math.isclose(float(printed_sum.group(1)), floor_sum, abs_tol=0.006)
    text = notes.read_text()
    assert text.startswith("<!-- floors:start -->\n## ") and text.rstrip().endswith("<!-- floors:end -->")
    assert "**realistic** workload" in text and "**small** workload" in text and "load average" in text
