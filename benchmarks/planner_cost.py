"""A/B of the planner's cost (add, plan, apply outcomes, span ids) and of the items it plans, against a commit.

Usage: python benchmarks/planner_cost.py [--ref main] [--spans 4000] [--rounds 7] [--workload realistic|small]
                                        [--grace 6] [--starts]

Extracts `src/prefactor_otel` as committed at REF under another package name (as mapping_diff.py does), maps the
same workload spans with each version's own mapping (then encodes the payloads, as the exporter's `_map` does), and
drives each version's `Planner` the way the sending thread does: batches of 512 records added, a plan, every item
answered with the shared SUCCESS outcome, then a shutdown plan. Clock: simulated, 60 µs per span, so runs finish in
the plans while spans of others still come (`--grace 0`, every run finished as soon as its root is in) or at the end
(`--grace 6`, the default: finishes in the shutdown plan). `--starts`: PrefactorSpanProcessor's path too, each
batch's next spans started before it ends (live spans at their default, mapped at their start). Both versions
alternate in one process, GC as in production; reports µs/span of thread CPU per stage (median of rounds) and the
ratio, GC-tracked objects created per span and still alive after the plan and after the outcomes, and checks that
both versions plan the same items in the same order (key, action, body as JSON, trace and span ids) and the same
span PFIDs on 20,000 random inputs: exits 1 if either differs. Run it with the work tree first on the path
(`PYTHONPATH=$PWD/src`).

Instruction counts (immune to load): `--only ref|work --passes N` maps the records and drives only that version's
planner N times, nothing timed or checked; under `valgrind --tool=cachegrind --cache-sim=no` (the real interpreter,
not a shim), (I refs at N=3 - I refs at N=1) / 2 / spans is the planner's instructions per span, harness included.
Nothing leaves the process.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from mapping_diff import REF_PACKAGE, load_ref
from pydantic_core import to_json
from workload import SpanSource

BATCH = 512
SPAN_SECONDS = 60e-6  # simulated exporting thread: about what a span costs end to end


class Version:
    """One version of the package: its mapping, planner and SUCCESS outcome."""

    def __init__(self, name: str, package: str) -> None:
        self.name = name
        self.mapping = importlib.import_module(f"{package}.mapping")
        self.wire = importlib.import_module(f"{package}.transport.wire")
        self.planner_module = importlib.import_module(f"{package}.pipeline.planner")
        self.outcomes = importlib.import_module(f"{package}.transport.outcomes")
        self.ids = importlib.import_module(f"{package}.model.ids")
        self.starts = importlib.import_module(f"{package}.pipeline.starts")
        self.options = self.mapping.MappingOptions()

    def records(self, spans: list[Any]) -> list[Any]:
        out = []
        for span in spans:
            record = self.mapping.map_span(span, self.options)
            record.payload = self.wire.encode_json(record.payload)
            record.result_payload = self.wire.encode_json(record.result_payload)
            out.append(record)
        return out

    def planner(self, grace: float, starts: bool) -> Any:
        version = {"name": "bench", "external_identifier": "bench-1"}
        live: dict[str, Any] = {}
        if starts:  # PrefactorSpanProcessor's: live spans at their default
            live = {
                "live_policy": self.starts.LivePolicy("agent"),
                "map_started": self.starts.live_mapper(self.options),
            }
        return self.planner_module.Planner(
            partition=123456,
            agent_key="agent-key",
            agent_id="01234567890123456789012345678901",
            environment_id=None,
            purpose=None,
            agent_version_for=lambda resource: version,
            schema_version=self.mapping.agent_schema_version(),
            finish_grace_seconds=grace,
            run_part="0123abcd",
            **live,
        )


def run_once(
    version: Version, records: list[Any], spans: list[Any] | None, grace: float, keep_items: bool
) -> tuple[dict[str, int], list]:
    """One pass over the records; thread CPU ns per stage, and the planned items (when asked). With `spans`, their
    starts too (PrefactorSpanProcessor): those of the next batch read and given before each batch ends."""
    planner = version.planner(grace, spans is not None)
    success = version.outcomes.SUCCESS
    read_start = version.starts.read_start
    stages = {"start": 0, "add": 0, "plan": 0, "apply": 0}
    planned: list[Any] = []
    clock = time.thread_time_ns
    now = 1000.0
    for start in range(0, len(records), BATCH):
        batch = records[start : start + BATCH]
        now += len(batch) * SPAN_SECONDS
        t0 = clock()
        if spans is not None:
            first = 0 if start == 0 else start + BATCH
            planner.start([read_start(span) for span in spans[first : start + 2 * BATCH]], now)
        ts = clock()
        planner.add(batch, now)
        t1 = clock()
        items = planner.plan(now)
        t2 = clock()
        planner.apply({item.key: success for item in items}, now)
        t3 = clock()
        stages["start"] += ts - t0
        stages["add"] += t1 - ts
        stages["plan"] += t2 - t1
        stages["apply"] += t3 - t2
        if keep_items:
            planned.extend(items)
    t0 = clock()
    items = planner.plan(now, shutdown=True)
    t1 = clock()
    planner.apply({item.key: success for item in items}, now)
    t2 = clock()
    stages["plan"] += t1 - t0
    stages["apply"] += t2 - t1
    if keep_items:
        planned.extend(items)
    assert planner.open_traces == 0 and planner.queued_spans == 0, "everything planned is delivered"
    return stages, planned


def tracked_objects(version: Version, records: list[Any], grace: float) -> tuple[float, float]:
    """GC-tracked objects created per span and alive after the plans (items held) and after the outcomes."""
    planner = version.planner(grace, False)
    success = version.outcomes.SUCCESS
    gc.collect()
    gc.disable()
    try:
        after_plan = after_apply = 0
        now = 1000.0
        for start in range(0, len(records), BATCH):
            batch = records[start : start + BATCH]
            now += len(batch) * SPAN_SECONDS
            before = len(gc.get_objects())
            planner.add(batch, now)
            items = planner.plan(now)
            after_plan += len(gc.get_objects()) - before
            planner.apply({item.key: success for item in items}, now)
            del items
            after_apply += len(gc.get_objects()) - before
    finally:
        gc.enable()
    return after_plan / len(records), after_apply / len(records)


def item_view(item: Any) -> tuple[Any, ...]:
    """An item as both versions can show it: its body as plain JSON values in its key order (payloads encoded as
    bytes, or a whole item's wire bytes since session seven, decoded), its key, action and ids. The bytes on the wire
    are benchmarks/wire_diff.py's to compare."""
    return (item.key, item.action, to_json(_plain(item.body), fallback=repr), item.trace_id, item.span_id)


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return json.loads(value)
    if isinstance(value, dict):
        return {key: _plain(inner) for key, inner in value.items()}
    if isinstance(value, list):
        return [_plain(inner) for inner in value]
    return value


def span_ids_differ(ref: Version, new: Version, count: int) -> int:
    """Span PFIDs of random inputs (edge values included) from both versions: how many differ."""
    import random

    rng = random.Random(7)
    edges = [0, 1, (1 << 30) - 1]
    differ = 0
    for i in range(count):
        partition = rng.choice(edges) if i % 7 == 0 else rng.randrange(1 << 30)
        trace_id = rng.choice([0, 1, (1 << 128) - 1]) if i % 11 == 0 else rng.getrandbits(128)
        span_id = rng.choice([0, 1, (1 << 64) - 1]) if i % 13 == 0 else rng.getrandbits(64)
        start = rng.choice([None, -5, 0, 1, (1 << 48) * 1_000_000 + 7]) if i % 5 == 0 else rng.getrandbits(62)
        if ref.ids.span_pfid(partition, trace_id, span_id, start) != new.ids.span_pfid(
            partition, trace_id, span_id, start
        ):
            differ += 1
    return differ


def ids_cost(version: Version, records: list[Any]) -> float:
    """µs per span PFID on the records' ids."""
    span_pfid = version.ids.span_pfid
    args = [(123456, r.trace_id, r.span_id, r.start_time_ns) for r in records]
    best = float("inf")
    for _ in range(5):
        t0 = time.thread_time_ns()
        for a in args:
            span_pfid(*a)
        best = min(best, (time.thread_time_ns() - t0) / 1000 / len(args))
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", default="main")
    parser.add_argument("--spans", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--workload", default="realistic", choices=("realistic", "small"))
    parser.add_argument("--grace", type=float, default=6.0)
    parser.add_argument("--starts", action="store_true", help="span starts too (PrefactorSpanProcessor's path)")
    parser.add_argument("--only", choices=("ref", "work"), help="drive only this version (instruction counts)")
    parser.add_argument("--passes", type=int, default=1, help="with --only: planner passes over the records")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="planner-cost-") as tmp:
        load_ref(args.ref, Path(tmp))
        ref, new = Version(args.ref, REF_PACKAGE), Version("work tree", "prefactor_otel")
        spans = SpanSource(seed=3, workload=args.workload).spans(args.spans)[: args.spans]
        if args.only is not None:
            version = ref if args.only == "ref" else new
            mapped = version.records(spans)
            for _ in range(args.passes):
                gc.collect()
                run_once(version, mapped, spans if args.starts else None, args.grace, False)
            return 0
        records = {version.name: version.records(spans) for version in (ref, new)}
        count = len(spans)
        with_starts = spans if args.starts else None

        views = {
            v.name: [item_view(i) for i in run_once(v, records[v.name], with_starts, args.grace, True)[1]]
            for v in (ref, new)
        }
        same = views[ref.name] == views[new.name]
        first = next(
            (i for i, (a, b) in enumerate(zip(views[ref.name], views[new.name], strict=False)) if a != b), None
        )
        ids_differ = span_ids_differ(ref, new, 20_000)

        results: dict[str, list[dict[str, int]]] = {ref.name: [], new.name: []}
        for _ in range(args.rounds):
            for version in (ref, new):
                gc.collect()
                results[version.name].append(
                    run_once(version, records[version.name], with_starts, args.grace, False)[0]
                )

        def per_span(name: str, stage: str | None) -> float:
            values = [sum(r.values()) if stage is None else r[stage] for r in results[name]]
            return statistics.median(values) / 1000 / count

        print(
            f"{args.workload} workload, {count} spans, grace {args.grace} s, starts {args.starts}, "
            f"{args.rounds} rounds, "
            f"ref {args.ref}"
        )
        print(f"{'stage (µs/span)':<24}{args.ref:>10}{'work tree':>12}{'ratio':>8}")
        for stage in ("start", "add", "plan", "apply", None):
            old, cur = per_span(ref.name, stage), per_span(new.name, stage)
            print(f"{stage or 'total':<24}{old:>10.2f}{cur:>12.2f}{cur / old:>8.2f}")
        old_ids, new_ids = ids_cost(ref, records[ref.name]), ids_cost(new, records[new.name])
        print(f"{'span_pfid (isolated)':<24}{old_ids:>10.2f}{new_ids:>12.2f}{new_ids / old_ids:>8.2f}")
        for version in (ref, new):
            plan_alive, apply_alive = tracked_objects(version, records[version.name], args.grace)
            print(f"tracked objects/span {version.name}: {plan_alive:.2f} after plan, {apply_alive:.2f} after outcomes")
        print(
            f"items: {len(views[ref.name])} vs {len(views[new.name])}, identical: {same}"
            + ("" if same else f" (first difference at {first})")
        )
        print(f"span PFIDs of 20,000 random inputs differing: {ids_differ}")
        return 0 if same and not ids_differ else 1


if __name__ == "__main__":
    raise SystemExit(main())
