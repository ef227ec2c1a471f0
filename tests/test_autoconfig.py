"""`opentelemetry-instrument` with OTEL_TRACES_EXPORTER=prefactor and only PREFACTOR_* settings."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from importlib.metadata import entry_points

from prefactor_otel import PrefactorSpanExporter
from prefactor_otel.devserver import DevServer

APP = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests_parent!r})
    from opentelemetry import trace
    from tests.test_exporter_e2e import three_traces

    three_traces(trace.get_tracer_provider())
    print("app done")
    """
)


def test_entry_point_is_registered_and_loads_the_class():
    (ep,) = entry_points(group="opentelemetry_traces_exporter", name="prefactor")
    assert ep.load() is PrefactorSpanExporter


def test_opentelemetry_instrument_delivers(tmp_path):
    from tests.test_exporter_e2e import TOKEN

    # Run the same workload in-process only to know which OTel spans to expect (names/parents).
    collector_provider_spans = _expected_spans()
    with DevServer(token=TOKEN) as server:
        app = tmp_path / "app.py"
        app.write_text(APP.format(tests_parent=os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PREFACTOR_"))}
        env.update(
            OTEL_TRACES_EXPORTER="prefactor",
            OTEL_METRICS_EXPORTER="none",
            OTEL_LOGS_EXPORTER="none",
            OTEL_SERVICE_NAME="autoconf-agent",
            PREFACTOR_API_URL=server.url,
            PREFACTOR_API_TOKEN=TOKEN,
            PREFACTOR_AGENT_ID=server.agent_id,
            PREFACTOR_ENVIRONMENT_ID=server.environment_id,
            PREFACTOR_FINISH_GRACE_SECONDS="0",
        )
        instrument = shutil.which("opentelemetry-instrument") or os.path.join(
            os.path.dirname(sys.executable), "opentelemetry-instrument"
        )
        proc = subprocess.run(
            [instrument, sys.executable, str(app)], env=env, capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 0, proc.stderr
        assert "app done" in proc.stdout
        assert TOKEN not in proc.stdout + proc.stderr
        spans = server.spans()
        assert len(spans) == len(collector_provider_spans)
        instances = server.instances()
        assert sorted(i["status"] for i in instances) == ["complete", "complete", "failed"]
        names = sorted(s["payload"]["name"] for s in spans)
        assert names == sorted(s.name for s in collector_provider_spans)
        # parent links survive: every non-root span's parent is a span of the same instance
        by_id = {s["id"]: s for s in spans}
        for s in spans:
            if s["payload"]["parent_span_id"] is not None:
                parent = by_id[s["parent_span_id"]]
                assert parent["payload"]["span_id"] == s["payload"]["parent_span_id"]


def _expected_spans():
    from tests.spans import make_provider
    from tests.test_exporter_e2e import three_traces

    provider, collector = make_provider()
    three_traces(provider)
    return collector.spans
