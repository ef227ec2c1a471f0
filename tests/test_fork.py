"""Pre-fork servers (gunicorn --preload style): the exporter is created in the parent, spans come from workers."""

from __future__ import annotations

import os
import sys

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from prefactor_otel.devserver import DevServer
from tests.spans import agent_trace, exporter_for


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_spans_from_forked_workers_are_delivered():
    with DevServer(token="pf_fork_token") as srv:
        exporter = exporter_for(
            srv,
            finish_grace_seconds=0,
        )
        provider = TracerProvider(resource=Resource.create({"service.name": "prefork"}))
        provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=50))
        agent_trace(provider)  # the parent exports too, so its client and ticker exist before the fork
        provider.force_flush()
        assert exporter.stats()["spans_exported"] == 4
        children = []
        for _ in range(3):
            pid = os.fork()
            if pid == 0:  # worker
                code = 1
                try:
                    for _ in range(5):
                        agent_trace(provider)
                    provider.shutdown()
                    # a child starts with counters of its own, not its parent's
                    code = 0 if exporter.stats()["spans_exported"] == 20 else 2
                finally:
                    sys.stdout.flush()
                    os._exit(code)
            children.append(pid)
        codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in children]
        provider.shutdown()
        assert codes == [0, 0, 0]
        assert len(srv.spans()) == 4 + 3 * 5 * 4
        assert len(srv.instances()) == 1 + 15
        assert all(i["status"] == "complete" for i in srv.instances())
