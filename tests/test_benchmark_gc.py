"""The benchmark's garbage-collection figures (benchmarks/run.py's summaries and tables, measure.py's ContainerCount).

What it proves (never a speed): collections per 10,000 spans are all collections over all spans (a mean of whole
counts, not a median that rounds a full collection away); the set-ups' GC summary puts each mode beside OTLP's and
has no ratio where OTLP's count is 0; a summary made before these figures existed (an older `--json` dump) renders
without the tables or target rows, and one made after renders both; ContainerCount, run in its own process, sees
the containers a call holds at its peak and what it still holds when it returns.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
SRC = Path(__file__).resolve().parent.parent / "src"


@pytest.fixture
def run_module() -> Iterator[ModuleType]:
    """benchmarks/run.py (standard library only at import: nothing starts)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import run

        yield run
    finally:
        sys.path.remove(str(BENCHMARKS))


def _round(mode: str, spans: int, collections: list[int], app_us: float, other_us: float) -> dict[str, Any]:
    return {"mode": mode, "spans": spans, "gc_collections": collections, "gc_app_us": app_us, "gc_other_us": other_us}


def test_collections_per_10k_spans_are_all_collections_over_all_spans(run_module: ModuleType) -> None:
    rows = [{"gc_collections": [20, 2, 1]}, {"gc_collections": [22, 2, 0]}, {"gc_collections": [21, 3, 1]}]
    assert run_module.collections_per_10k(rows, 5_000) == pytest.approx([42.0, 4.666_666, 1.333_333])
    # a full collection in 1 round of 3 still shows (a median of rounds would say 0)
    assert run_module.collections_per_10k([*rows[:1], *[{"gc_collections": [20, 2, 0]}] * 2], 5_000)[2] > 0
    assert run_module.collections_per_10k([{"cpu_us": 1.0}], 5_000) is None  # a run made before the figure
    assert run_module.collections_per_10k([rows[0], {"cpu_us": 1.0}], 5_000) is None  # half of them: no figure
    assert run_module.collections_per_10k([], 5_000) is None


def test_the_set_ups_gc_summary_sits_beside_otlps_and_renders(run_module: ModuleType) -> None:
    rounds = []
    for _ in range(3):
        rounds += [
            _round("none", 6_000, [50, 5, 0], 1.0, 0.0),
            _round("otlp", 6_000, [52, 5, 0], 1.0, 0.5),
            _round("bsp", 6_000, [60, 6, 1], 1.5, 5.5),
            _round("processor", 6_000, [58, 6, 1], 1.0, 5.0),
        ]
    gc = run_module.summarize_setup_gc(rounds, 6_000)
    assert set(gc) == {"none", "otlp", "bsp", "processor"}
    assert gc["bsp"]["collections_per_10k"] == pytest.approx([100.0, 10.0, 1.666_666])
    assert gc["bsp"]["total_us"] == pytest.approx(7.0) and gc["bsp"]["total_x_otlp"] == pytest.approx(7.0 / 1.5)
    assert gc["bsp"]["gen2_x_otlp"] is None  # OTLP had no full collection: no ratio, the counts say it
    assert gc["otlp"]["total_x_otlp"] == pytest.approx(1.0)

    title, header, rows, note = run_module.gc_setup_table({"realistic": {"spans": 6_000, "gc": gc}})
    assert title.startswith("Garbage collection in the set-ups")
    assert "more than 16.7 gen1 per 10k spans" in note  # the full collection's threshold at this round size
    assert len(rows) == 4 and all(len(row) == len(header) for row in rows)
    bsp = next(row for row in rows if row[1] == run_module.SETUP_LABELS["bsp"])
    assert bsp[2:5] == ["100.0", "10.0", "1.7"] and bsp[5] == "-" and bsp[-1] == "4.67x"
    targets = run_module.gc_targets({"setup": {"realistic": {"gc": gc}}})
    assert [name for name, _, _ in targets] == [
        "full (gen2) collections per 10k spans, realistic workload, set-ups (BSP / processor), x OTLP",
        "GC CPU us/span, every thread, realistic workload, set-ups (BSP / processor), x OTLP",
    ]
    assert all(ok is None for _, ok, _ in targets)  # informational: no threshold
    assert targets[0][2] == "1.7 / 1.7 vs 0.0 (no processor: 0.0)"


def test_a_summary_from_before_the_gc_figures_renders_without_them(run_module: ModuleType) -> None:
    old_rounds = [{"mode": mode, "spans": 100, "process_us": 1.0} for mode in run_module.SETUP_MODES]
    assert run_module.summarize_setup_gc(old_rounds, 100) is None
    assert run_module.summarize_containers({"spans": 100, "runs": {"otlp": []}}) is None
    assert run_module.gc_setup_table({"realistic": {"otlp": {}}}) is None
    assert run_module.gc_setup_table({"realistic": {"gc": None}}) is None
    assert run_module.gc_exporting_table({"small": None}) is None
    assert run_module.gc_targets({"setup": {"realistic": {}}, "small": None}) == []


def test_the_exporting_threads_containers_render_beside_otlps(run_module: ModuleType) -> None:
    cpu = {
        "spans": 2_000,
        "runs": {
            "otlp": [{"gc_collections": [10, 1, 0]}, {"gc_collections": [10, 1, 0]}],
            "prefactor": [{"gc_collections": [40, 4, 0]}, {"gc_collections": [40, 4, 2]}],
        },
        "containers": {
            "otlp": {"batch": 512, "peak": 600, "held_after": 100},
            "prefactor": {"batch": 512, "peak": 1_500, "held_after": 300},
            "prefactor_default_grace": {"batch": 512, "peak": 1_400, "held_after": 1_000},
        },
    }
    gc = run_module.summarize_containers(cpu)
    assert gc["prefactor"]["peak_x_otlp"] == pytest.approx(2.5)
    assert gc["prefactor"]["collections_per_10k"] == pytest.approx([200.0, 20.0, 5.0])
    assert gc["prefactor_default_grace"]["collections_per_10k"] is None  # counted, not timed
    title, header, rows, _ = run_module.gc_exporting_table({"gc": gc, "small": None})
    assert "containers" in title and len(rows) == 3 and all(len(row) == len(header) for row in rows)
    assert rows[1][2:] == ["1,500", "300", "2.50x", "200.0", "20.0", "5.0"]
    assert rows[2][-3:] == ["-", "-", "-"]
    (row,) = run_module.gc_targets({"gc": gc})
    assert row[1] is None and row[2] == "1,500 vs 600 = 2.50x (default finish grace: 1,400, 1,000 held after)"


CONTAINER_PROBE = """
import json, measure
counter = measure.ContainerCount()
kept = []
def makes_and_drops():
    pairs = [{"n": [i]} for i in range(1000)]  # 2,000 containers, all freed on return
    kept.extend({"n": i} for i in range(300))  # 300 kept
print(json.dumps([counter.count(makes_and_drops) for _ in range(3)]))
"""


def test_container_count_sees_the_peak_of_a_call_and_what_it_still_holds() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PREFACTOR_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-c", CONTAINER_PROBE],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=BENCHMARKS,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for peak, held in json.loads(done.stdout.strip().splitlines()[-1]):
        # the 2,000 in flight at once, plus the 300 kept and a few frames; CPython's free lists (80 dicts, 80 lists)
        # keep a few freed ones counted, as they count towards the next collection
        assert 2_000 <= peak <= 2_000 + 300 + 100
        assert 300 <= held <= 300 + 200
