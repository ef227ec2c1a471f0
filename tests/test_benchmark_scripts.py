"""The benchmark scripts that performance work leans on (mapping_diff, wire_diff, mapping_cost, wire_cost) run,
and report what their docstrings say they report.

benchmarks/ lives outside the suite's imports: without these runs, a renamed function or a changed wire format
breaks a script silently until the next person measures (twice on one day so far). Each runs at a toy size in a
subprocess with the work tree's source first on the path; no figure is asserted (speed is never asserted in
tests), only the shape and the internal consistency of what is printed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"


def _run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PREFACTOR_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
        env=env,
    )


def test_mapping_diff_compares_records_against_a_commit_and_its_exit_status_says_whether_any_differ() -> None:
    done = _run("mapping_diff.py", "--ref", "HEAD", "--spans", "30")
    found = re.search(r"(\d+) records compared \((\d+) spans x (\d+) option sets\): (\d+) differ", done.stdout)
    assert found, done.stdout + done.stderr
    records, spans, option_sets, differ = map(int, found.groups())
    assert spans > 0 and records == spans * option_sets
    assert done.returncode == (1 if differ else 0)


def test_wire_diff_compares_encoded_items_against_a_commit_and_its_exit_status_says_whether_any_differ() -> None:
    done = _run("wire_diff.py", "--ref", "HEAD", "--spans", "20", "--rounds", "1")
    found = re.search(r"^(\d+) items compared: (\d+) differ$", done.stdout, re.MULTILINE)
    assert found, done.stdout + done.stderr
    items, differ = map(int, found.groups())
    assert items > 20
    assert done.returncode == (1 if differ else 0)


def test_mapping_cost_prints_both_workloads_beside_the_reference() -> None:
    done = _run("mapping_cost.py", "--ref", "HEAD", "--spans", "30", "--rounds", "1")
    assert done.returncode == 0, done.stderr
    rows = re.findall(
        r"^\s*(realistic|small spans): work tree\s+([\d.]+) µs/span\s+HEAD\s+([\d.]+) µs/span\s+ratio ([\d.]+)$",
        done.stdout,
        re.MULTILINE,
    )
    assert [row[0] for row in rows] == ["realistic", "small spans"], done.stdout
    for _, tree, ref, ratio in rows:
        assert float(tree) > 0 and float(ref) > 0
        assert abs(float(ratio) - float(tree) / float(ref)) < 0.01


def test_wire_cost_reports_bytes_per_encoding_and_compression_makes_them_smaller() -> None:
    done = _run("wire_cost.py", "--spans", "40", "--repeat", "1", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout[done.stdout.index("{") :])
    assert result["spans"] >= 40 and result["requests"] >= 1
    sizes = result["bytes"]
    assert set(sizes) >= {"identity", "gzip-1", "zstd-1"}
    assert 0 < sizes["zstd-1"] < sizes["identity"] and 0 < sizes["gzip-1"] < sizes["identity"]
    assert set(result["cpu_us"]) == set(sizes)
