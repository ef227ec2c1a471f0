"""The dev server's parts on their own: the store's parts over one account, the request body reader, the hostile
writer and the traffic record, each driven without an HTTP server."""

from __future__ import annotations

import gzip
import io
import socket
import threading
from email.message import Message

import pytest

from prefactor_otel.devserver import store as st
from prefactor_otel.devserver.findings import MAX_FINDINGS, Findings
from prefactor_otel.devserver.hostile import HostileWriter
from prefactor_otel.devserver.instance_actions import RunActions
from prefactor_otel.devserver.reads import Reads
from prefactor_otel.devserver.registration import Registration
from prefactor_otel.devserver.request_body import BadRequest, BodyReader, BodyTooLarge
from prefactor_otel.devserver.request_log import RequestLog, Traffic
from prefactor_otel.devserver.span_actions import SpanActions
from prefactor_otel.devserver.state import Account
from prefactor_otel.devserver.validation import ApiError
from prefactor_otel.model import ids

PARTITION = 12345


def _account() -> Account:
    made = [ids.encode(1_700_000_000_000, PARTITION, n) for n in (1, 2, 3)]
    return Account(account_id=made[0], agent_id=made[1], environment_id=made[2], partition=PARTITION)


def _register_params() -> dict[str, object]:
    return {
        "agent_version": {"name": "v1"},
        "agent_schema_version": {
            "span_type_schemas": [{"name": "llm", "params_schema": {"type": "object", "required": ["model"]}}]
        },
    }


def test_the_action_parts_share_one_account_and_report_to_one_findings() -> None:
    account = _account()
    findings = Findings(account)
    registration = Registration(account, findings)
    runs = RunActions(account, findings)
    spans = SpanActions(account, findings)
    with account.lock:
        instance_id = registration.register(_register_params())["details"]["id"]
        runs.start({"agent_instance_id": instance_id})
        created = spans.create(
            {"details": {"agent_instance_id": instance_id, "schema_name": "llm", "status": "active"}}
        )
    span_id = created["details"]["id"]
    assert account.instances[instance_id].status == "active"
    assert account.instances[instance_id].span_ids == [span_id]
    assert account.instances[instance_id].counts["active"] == 1
    # The payload lacks the schema's required field: accepted, and a finding says so.
    (finding,) = findings.read()
    assert finding["rule"] == "schema_violation"
    reads = Reads(account, findings)
    assert reads.counts() == (1, 1)
    assert reads.snapshot()["findings"] == [finding]


def test_an_account_refuses_ids_outside_its_partition() -> None:
    account = _account()
    fresh = account.new_id()
    assert account.check_id("id", fresh) == fresh
    with pytest.raises(ApiError) as caught:
        account.check_id("id", ids.encode(1, PARTITION + 1, 1))
    assert caught.value.status == 422


def test_findings_stop_at_their_cap_and_each_one_moves_the_revision() -> None:
    account = _account()
    findings = Findings(account)
    findings.begin("test")
    for n in range(MAX_FINDINGS + 5):
        findings.find("rule", f"finding {n}")
    assert len(findings.read()) == MAX_FINDINGS
    assert account.revision == MAX_FINDINGS
    assert findings.read()[0]["action"] == "test"
    findings.clear()
    assert findings.read() == []
    assert account.revision == MAX_FINDINGS + 1


def test_the_store_dispatches_to_its_parts_with_idempotent_replay() -> None:
    account = _account()
    store = st.Store(
        account_id=account.account_id,
        agent_id=account.agent_id,
        environment_id=account.environment_id,
        partition=PARTITION,
    )
    first = store.execute(st.REGISTER, _register_params(), "register-key-0001")
    again = store.execute(st.REGISTER, _register_params(), "register-key-0001")
    assert first == again
    assert store.counts() == (1, 0)
    assert store.revision == 1


def _headers(**values: str) -> Message:
    headers = Message()
    for name, value in values.items():
        headers[name.replace("_", "-")] = value
    return headers


def test_the_body_reader_reads_content_length_and_chunked_bodies() -> None:
    plain = BodyReader(io.BytesIO(b'{"a":1}rest'), _headers(Content_Length="7"))
    assert plain.read(100) == b'{"a":1}'
    chunked = BodyReader(
        io.BytesIO(b"3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\nTrailer: x\r\n\r\n"),
        _headers(Transfer_Encoding="chunked"),
    )
    assert chunked.read(100) == b"abcde"


def test_the_body_reader_bounds_what_it_reads_and_what_it_inflates() -> None:
    too_long = BodyReader(io.BytesIO(b"x" * 50), _headers(Content_Length="50"))
    with pytest.raises(BodyTooLarge) as caught:
        too_long.read(10)
    assert (caught.value.size, caught.value.drained) == (50, True)
    bomb = gzip.compress(b" " * 100_000)
    reader = BodyReader(io.BytesIO(bomb), _headers(Content_Encoding="gzip"))
    with pytest.raises(BodyTooLarge):
        reader.decode(bomb, 1000)
    assert reader.decode(gzip.compress(b"small"), 1000) == b"small"
    with pytest.raises(BadRequest):
        BodyReader(io.BytesIO(), _headers(Content_Length="-1")).read(10)


def test_the_hostile_writer_counts_every_byte_it_writes() -> None:
    traffic = Traffic()
    out = io.BytesIO()
    left, right = socket.socketpair()
    try:
        writer = HostileWriter(
            out,
            left,
            stopping=threading.Event(),
            count_bytes=traffic.count_fault_bytes,
            server_version="test",
            date=lambda: "today",
        )
        assert writer.send_filler(200, 100_000)
    finally:
        left.close()
        right.close()
    written = out.getvalue()
    assert written.startswith(b"HTTP/1.1 200 OK\r\nServer: test\r\nDate: today\r\n")
    assert written.endswith(b" " * 100_000)
    assert traffic.fault_bytes == len(written)


def test_an_endless_hostile_answer_ends_when_the_server_stops() -> None:
    stopping = threading.Event()
    written: list[int] = []

    def count(size: int) -> None:
        written.append(size)
        if len(written) == 5:
            stopping.set()

    left, right = socket.socketpair()
    try:
        writer = HostileWriter(
            io.BytesIO(),
            left,
            stopping=stopping,
            count_bytes=count,
            server_version="test",
            date=lambda: "today",
        )
        assert writer.send(200, None)
    finally:
        left.close()
        right.close()
    assert len(written) == 5  # the head and four chunks: nothing after the stop


def test_traffic_keeps_the_last_entries_and_tells_its_listener() -> None:
    heard: list[RequestLog] = []
    traffic = Traffic(keep=2, on_request=heard.append)
    assert traffic.describes
    entries = [RequestLog("GET", f"/{n}", 200, 0, None) for n in range(3)]
    for entry in entries:
        traffic.log(entry)
    assert traffic.requests() == entries[1:]
    assert heard == entries
    traffic.clear_requests()
    assert traffic.requests() == []
    assert not Traffic().describes
