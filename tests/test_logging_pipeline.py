"""The exporter's own log lines, when the application ships logs through OTel, stay few: no flood, no loop."""

from __future__ import annotations

import logging
import socket

from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor

from prefactor_otel import PrefactorSpanExporter
from prefactor_otel.model.ids import encode
from tests.spans import agent_trace, make_provider


def test_failing_exports_do_not_flood_an_otel_log_pipeline(tmp_path):
    logs = InMemoryLogRecordExporter()
    logger_provider = LoggerProvider()
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(logs))
    handler = LoggingHandler(level=logging.DEBUG, logger_provider=logger_provider)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            url = f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens: every attempt fails
        exporter = PrefactorSpanExporter(
            environ={},
            api_url=url,
            api_token="pf_log_loop_token",
            agent_id=encode(1_700_000_000_000, 8, 8),
            export_timeout=0.2,
            spool=False,
        )
        provider, collector = make_provider()
        for _ in range(30):
            agent_trace(provider)
            exporter.export(collector.spans[-4:])
        exporter.shutdown(timeout_millis=200)
        ours = [r for r in logs.get_finished_logs() if "Prefactor" in str(r.log_record.body)]
        assert 1 <= len(ours) <= 6  # one line per kind per minute, whatever the number of failures
        assert all("pf_log_loop_token" not in str(r.log_record.body) for r in ours)
    finally:
        root.removeHandler(handler)
        logger_provider.shutdown()
