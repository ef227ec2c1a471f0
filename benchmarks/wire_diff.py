"""Check that bulk items encode to exactly the bytes an earlier commit wrote, and what encoding them costs.

Usage: python benchmarks/wire_diff.py [--ref main] [--spans 2000] [--rounds 7]

The items are those a real `PrefactorSpanExporter` plans for the benchmark's two workloads and for the odd span
shapes of benchmarks/mapping_diff.py, sent to the local server in this process (benchmarks/wire_cost.py captures
them), plus hand-made span creates that take every other path of the encoder: values to escape (quotes,
backslashes, control characters), non-ASCII and lone surrogates, keys in other orders, a payload still a dict, a
string subclass, a value of another type, a key to escape. Each item is encoded by the work tree's
`transport.wire.encode_item` and by the one committed at REF (`src/prefactor_otel` imported under another name,
as mapping_diff.py does; encoded payloads are handed to it as its own RawJson), and the bytes compared. Then both
encode the workloads' items, rounds interleaved, best round reported in CPU µs per span create (the span creates
alone) and per span (every item: registers, starts, finishes too), with the ratio work tree / REF. Prints the
first differences; exits 1 if any item differs. The payloads too: every span of both workloads and the odd shapes
mapped (`map_span`), its payload and result encoded by both `encode_json`s (what the exporter does right after
mapping), compared, and timed per span. Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from mapping_cost import workloads
from mapping_diff import load_ref, odd_spans
from wire_cost import _captured

from prefactor_otel.mapping import map_span
from prefactor_otel.mapping.values import RawJson
from prefactor_otel.transport import wire

CREATE = "agent_spans/create"


def _payload(text: str) -> RawJson:
    return RawJson(text.encode("utf-8", "surrogatepass"))


class _Text(str):
    """A string subclass: the encoder's fast paths take exact strings only."""


def hand_made() -> list[dict[str, Any]]:
    """Span creates for the encoder's other paths (see the module docstring)."""
    payload, result = _payload('{"span_id":"00000000000000ab","name":"x"}'), _payload('{"outputs":{}}')

    def create(**details: Any) -> dict[str, Any]:
        base: dict[str, Any] = {
            "agent_instance_id": "01instance",
            "id": "01span",
            "schema_name": "otel:span",
            "status": "complete",
            "payload": payload,
            "started_at": "2026-12-07T10:00:00.000Z",
            "result_payload": result,
            "finished_at": "2026-12-07T10:00:01.000Z",
        }
        base.update(details)
        return {"_type": CREATE, "idempotency_key": "agent-spans-create-01span", "details": base}

    items = [create(), create(parent_span_id="01parent")]
    for odd in (
        'a "quoted" name',
        "back\\slash",
        "line\nbreak",
        "tab\there",
        "\x00\x1f",
        "naïve 漢字 😀",
        "a\udc80b",
        "\x7f del",
        "%s %d {}",
        "",
    ):
        items.append(create(schema_name=odd))
        items.append(create(parent_span_id=odd))
    items.append({"idempotency_key": "k", "_type": CREATE, "details": create()["details"]})  # keys in another order
    items.append({"_type": CREATE, "details": create()["details"], "idempotency_key": "k"})  # details not last
    live = create(status="active")
    del live["details"]["result_payload"], live["details"]["finished_at"]
    items.append(live)
    reordered = create()
    reordered["details"] = dict(reversed(list(reordered["details"].items())))
    items.append(reordered)
    items.append(create(payload={"name": "still a dict"}))
    items.append(create(result_payload={"outputs": {"x": 1}}))
    items.append(create(schema_name=_Text("otel:span")))
    items.append(create(started_at=None))
    items.append(create(**{'odd"key': "v"}))
    items.append(create(**{"odd\\key": _payload('{"a":1}')}))
    items.append(create(**{"naïve": "v"}))
    items.append(create(**{"\udc80": "v"}))
    lone = create()
    lone["idempotency_key"] = "key \udc80"
    items.append(lone)
    items.append({"_type": CREATE, "idempotency_key": "k", "details": {}})
    items.append({"_type": CREATE, "details": {"payload": payload}})
    items.append({"details": {"id": "x"}})
    items.append({"_type": CREATE, "idempotency_key": 7, "details": create()["details"]})
    return items


def as_ref(item: dict[str, Any], ref_raw: type) -> dict[str, Any]:
    """The item with its encoded payloads as the reference's own RawJson (its encoder embeds only those)."""
    details = item.get("details")
    if type(details) is not dict:
        return item
    converted = {key: ref_raw(value) if type(value) is RawJson else value for key, value in details.items()}
    return {**item, "details": converted}


def outcome(encode: Callable[[dict[str, Any]], bytes], item: dict[str, Any]) -> bytes | str:
    try:
        return encode(item)
    except Exception as exc:  # both versions must fail alike
        return f"{type(exc).__name__}: {exc}"


def _round(encode: Callable[[dict[str, Any]], bytes], items: list[dict[str, Any]]) -> float:
    start = time.thread_time_ns()
    for item in items:
        encode(item)
    return (time.thread_time_ns() - start) / 1000


def measure(
    ref_encode: Callable[[dict[str, Any]], bytes],
    mine: list[dict[str, Any]],
    theirs: list[dict[str, Any]],
    rounds: int,
    tree_encode: Callable[[dict[str, Any]], bytes] = wire.encode_item,
) -> tuple[float, float]:
    """Best total µs of the work tree's and the reference's encoder over the same items, rounds interleaved."""
    tree, ref = [], []
    for index in range(rounds):
        pair = [(tree_encode, mine, tree), (ref_encode, theirs, ref)]
        for encode, items, out in pair if index % 2 == 0 else reversed(pair):
            out.append(_round(encode, items))
    return min(tree), min(ref)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", default="main", help="the commit to compare with (default main)")
    parser.add_argument("--spans", type=int, default=2000, help="spans per workload")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds per contender (best is reported)")
    args = parser.parse_args(argv)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    with tempfile.TemporaryDirectory(prefix="wire-diff-") as tmp:
        load_ref(args.ref, Path(tmp))
        ref_wire = importlib.import_module("prefactor_otel_ref.transport.wire")
        ref_raw = importlib.import_module("prefactor_otel_ref.mapping.values").RawJson
        captured: dict[str, list[dict[str, Any]]] = {}
        for label, spans in workloads(args.spans).items():
            captured[label] = [item for request in _captured(spans, 512, False)[1] for item in request]
        captured["odd shapes"] = [
            item for request in _captured(odd_spans(args.spans // 3), 512, False)[1] for item in request
        ]
        captured["hand-made"] = hand_made()
        compared = differ = 0
        for label, items in captured.items():
            for item in items:
                compared += 1
                new, old = outcome(wire.encode_item, item), outcome(ref_wire.encode_item, as_ref(item, ref_raw))
                if new != old:
                    differ += 1
                    if differ <= 3:
                        print(
                            f"DIFFERS ({label}): {item!r:.300}\n  {args.ref}: {old!r:.400}\n  work tree: {new!r:.400}"
                        )
        print(f"{compared:,} items compared: {differ} differ")
        # The payloads, as PrefactorSpanExporter._map encodes them right after mapping (the items above hold the
        # work tree's bytes of them): each mapped payload and result by both encoders.
        payloads: dict[str, list[dict[str, Any]]] = {}
        for label, spans in {**workloads(args.spans), "odd shapes": odd_spans(args.spans // 3)}.items():
            records = [map_span(span) for span in spans]
            payloads[label] = [payload for record in records for payload in (record.payload, record.result_payload)]
        payloads_compared = payloads_differ = 0
        for label, values in payloads.items():
            for value in values:
                payloads_compared += 1
                new, old = outcome(wire.encode_json, value), outcome(ref_wire.encode_json, value)
                if type(new) is not str and type(old) is not str:
                    new, old = bytes(new), bytes(old)
                if new != old:
                    payloads_differ += 1
                    if payloads_differ <= 3:
                        print(f"PAYLOAD DIFFERS ({label}): {value!r:.300}")
                        print(f"  {args.ref}: {old!r:.400}\n  work tree: {new!r:.400}")
        differ += payloads_differ
        print(f"{payloads_compared:,} payloads compared: {payloads_differ} differ")
        print(f"encode_item; load average {load:.2f}; {args.spans} spans per workload, CPU µs, best of {args.rounds}")
        for label in ("realistic", "small spans"):
            items = captured[label]
            creates = [item for item in items if item.get("_type") == CREATE]
            for what, chosen in (("per span create", creates), ("per span, all items", items)):
                tree, ref = measure(
                    ref_wire.encode_item, chosen, [as_ref(item, ref_raw) for item in chosen], args.rounds
                )
                per = len(creates)
                print(
                    f"{label:>12} {what:>20}: work tree {tree / per:5.2f}   {args.ref} {ref / per:5.2f}"
                    f"   ratio {tree / ref:.3f}"
                )
        for label in ("realistic", "small spans"):
            values = payloads[label]
            tree, ref = measure(ref_wire.encode_json, values, values, args.rounds, wire.encode_json)
            per = len(values) / 2
            print(
                f"{label:>12} {'payloads per span':>20}: work tree {tree / per:5.2f}   {args.ref} {ref / per:5.2f}"
                f"   ratio {tree / ref:.3f}"
            )
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
