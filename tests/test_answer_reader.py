"""Bulk answers read by the fast reader (msgspec, when installed: transport/answers.py `_fast_decoder`) give exactly
the outcomes and counters of the reference reader (pydantic-core's TypeAdapter alone, `AnswerReader(fast=False)`):
on the real answers of the local server, which echo each item's whole object as Prefactor's API does, on those
answers cut short or with a byte changed, and on malformed answers (not UTF-8, bad escapes, NaN in a skipped field,
wrong types). What the reference refuses is refused once and counted once (`contract_errors`), whichever reads it.
Without msgspec both readers are the adapter: the comparison then holds trivially.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import httpx

from prefactor_otel.devserver import DevServer
from prefactor_otel.transport.answers import AnswerReader
from prefactor_otel.transport.outcomes import BulkResult
from tests.test_devserver_bulk import register_item

T0 = "2024-01-01T00:00:00.000Z"
T1 = "2024-01-01T00:00:01.000Z"


def _span(key: str, instance_id: str, span_id: str, parent: str | None, payload: dict[str, Any]) -> dict[str, Any]:
    details = {
        "agent_instance_id": instance_id,
        "schema_name": "otel:span",
        "status": "complete",
        "payload": payload,
        "result_payload": {"outputs": ["é", {"deep": [[["x"]]]}, 1.5e300, -0.0, 2**70]},
        "id": span_id,
        "parent_span_id": parent,
        "started_at": T0,
        "finished_at": T1,
    }
    return {"_type": "agent_spans/create", "idempotency_key": key, "details": details}


def _answers(srv: DevServer) -> list[tuple[bytes, list[str]]]:
    """Real answers of the local server (each output echoes its object) with the keys their requests sent: all
    delivered; one stopped at an unknown parent (the items after it not processed); one in a terminated run
    (`control`)."""
    out: list[tuple[bytes, list[str]]] = []
    with httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {srv.token}"}, timeout=10) as client:

        def post(items: list[dict[str, Any]]) -> None:
            answer = client.post("/api/v1/bulk", json={"items": items})
            assert answer.status_code == 200, answer.text
            out.append((answer.content, [item["idempotency_key"] for item in items]))

        run = srv.new_id()
        root, child = srv.new_id(), srv.new_id()
        payload = {"name": 'llm \u2603 \\ "quoted"', "inputs": {"messages": [{"role": "user", "content": "hi " * 300}]}}
        post(
            [
                register_item(srv, "reg-00000001", run),
                {"_type": "agent_instances/start", "idempotency_key": "start-000001", "agent_instance_id": run},
                _span("span-0000001", run, root, None, payload),
                _span("span-0000002", run, child, root, {"name": "child", "metadata": {"k": None, "n": [1, 2]}}),
            ]
        )
        post(
            [
                _span("span-0000003", run, srv.new_id(), srv.new_id(), {"name": "orphan"}),  # parent unknown
                _span("span-0000004", run, srv.new_id(), None, {"name": "never processed"}),
            ]
        )
        srv.terminate(run, "budget exceeded")
        post([_span("span-0000005", run, srv.new_id(), None, {"name": "after the termination"})])
    return out


def _read(reader: AnswerReader, answer: bytes, keys: list[str]) -> BulkResult | None:
    return reader.bulk_outcomes(200, answer, keys)


def _same(answer: bytes, keys: list[str]) -> tuple[BulkResult | None, Counter[str]]:
    """The fast reader's result and counters, after checking they are the reference's."""
    fast_counters: Counter[str] = Counter()
    reference_counters: Counter[str] = Counter()
    fast = _read(AnswerReader(fast_counters), answer, keys)
    reference = _read(AnswerReader(reference_counters, fast=False), answer, keys)
    assert (fast is None) == (reference is None), answer[:200]
    if fast is not None and reference is not None:
        assert fast.outcomes == reference.outcomes and fast.status_code == reference.status_code
        assert list(fast.outcomes) == keys  # every key has an outcome, in the request's order
    assert fast_counters == reference_counters
    return fast, fast_counters


def test_real_echoing_answers_read_the_same_by_both_readers(srv: DevServer) -> None:
    answers = _answers(srv)
    results = [_same(answer, keys)[0] for answer, keys in answers]
    delivered, stopped, terminated = results
    assert delivered is not None and {o.status for o in delivered.outcomes.values()} == {"success"}
    assert stopped is not None
    assert [(o.status, o.code) for o in stopped.outcomes.values()] == [("error", "not_found"), ("not_processed", None)]
    assert terminated is not None
    (outcome,) = terminated.outcomes.values()
    assert outcome.terminate and outcome.terminate_reason == "budget exceeded"
    # the answers are the API's echoing kind: the span creates' payloads come back
    assert "hi hi hi" in answers[0][0].decode() and len(answers[0][0]) > 1000


def test_answers_cut_short_or_with_a_byte_changed_read_the_same(srv: DevServer) -> None:
    refused = 0
    for answer, keys in _answers(srv):
        step = max(1, len(answer) // 60)
        for cut in range(0, len(answer), step):  # bounded: ~60 cuts per answer
            result, counters = _same(answer[:cut], keys)
            refused += result is None and counters["contract_errors"] == 1
        for index in range(0, len(answer), step):
            for byte in (b'"', b"{", b"]", b"\\", b"\xff", b"N", b"0", b" ", b"\x00"):
                _same(answer[:index] + byte + answer[index + 1 :], keys)
    assert refused > 100  # most cuts are malformed: refused once, counted once, by both


def test_malformed_answers_are_refused_and_counted_alike() -> None:
    def echo(details: bytes) -> bytes:
        return b'{"status":"success","outputs":{"k-000001":{"status":"success","details":' + details + b"}}}"

    refused = [
        echo(b'{"a":"\\q"}'),  # an invalid escape in a skipped field
        echo(b'{"a":"\xff\xfe"}'),  # not UTF-8 in a skipped field (msgspec alone would not look)
        echo(b'{"a":"\\ud800"}'),  # a lone surrogate
        echo(b'{"a":"x\x01y"}'),  # a raw control character in a string
        echo(b'{"a":1,}'),  # a trailing comma
        echo(b'{"a":01}'),
        echo(b"[" * 5000 + b"]" * 5000),  # past every parser's nesting bound
        b'{"outputs":{"k-000001":{"status":null}}}',
        b'{"outputs":{"k-000001":{"status":"Success"}}}',
        b'{"outputs":{"k-000001":{"code":"x"}}}',  # no status
        b'{"outputs":{"k-000001":[]}}',
        b'{"outputs":[]}',
        b'{"status":"success"}',
        b'{"outputs":{}} trailing',
        b"\xef\xbb\xbf" + b'{"outputs":{}}',
        b"[]",
        b"",
        b"not json",
    ]
    for answer in refused:
        result, counters = _same(answer, ["k-000001"])
        assert result is None and counters["contract_errors"] == 1, answer[:80]
    taken = {
        echo(b'{"a":NaN,"b":Infinity,"c":1e999}'): ("success", None),  # pydantic-core takes these; msgspec defers
        echo(b'{"a":123456789012345678901234567890,"b":"\\u0000"}'): ("success", None),
        b'{"outputs":{"k-000001":{"status":"error","status":"success"}}}': ("success", None),  # the last one wins
        b'{"outputs":{"k-000001":{"status":"error","code":12,"message":[1]}}}': ("error", 12),
        b'{"outputs":{"k-000001":{"status":"success","control":null}}}': ("success", None),
        b' \n{"outputs":{"other-key":{"status":"success"}}}\n': ("not_processed", None),
    }
    for answer, (status, code) in taken.items():
        result, counters = _same(answer, ["k-000001"])
        assert result is not None and not counters, answer[:80]
        assert (result.outcomes["k-000001"].status, result.outcomes["k-000001"].code) == (status, code)
