"""Self-diagnostics as OTel metrics through the application's MeterProvider."""

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from prefactor_otel.devserver import DevServer, Fault
from prefactor_otel.sdk.metrics import register_metrics
from tests.spans import agent_trace, exporter_for, make_provider


def _points(reader: InMemoryMetricReader) -> dict[str, list]:
    out: dict[str, list] = {}
    data = reader.get_metrics_data()
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                out[metric.name] = [(dict(p.attributes), p.value) for p in metric.data.data_points]
    return out


def test_counters_are_reported_as_otel_metrics(monkeypatch):
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    from opentelemetry import metrics

    monkeypatch.setattr(metrics, "get_meter", meter_provider.get_meter)

    with DevServer(token="pf_metrics_token") as srv:
        srv.add_fault(Fault(status=503, times=1))
        exporter = exporter_for(
            srv,
            finish_grace_seconds=0,
            spool=False,
        )
        provider, collector = make_provider()
        agent_trace(provider)
        exporter.export(collector.spans)
        exporter.shutdown()
        points = _points(reader)
        assert ({"outcome": "exported"}, 4) in points["prefactor_otel.spans"]
        requests = dict((p[0]["outcome"], p[1]) for p in points["prefactor_otel.requests"])
        assert requests["http_503"] == 1 and requests["http_200"] >= 1
        assert points["prefactor_otel.retries"] == [({}, 1)]


def test_metrics_do_not_keep_the_exporter_alive():
    import gc
    import weakref

    class Owner:
        def stats(self):
            raise AssertionError("must not be called after the owner is gone")

    owner = Owner()
    register_metrics(owner.stats, "0")
    ref = weakref.ref(owner)
    del owner
    gc.collect()
    assert ref() is None
