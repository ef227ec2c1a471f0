"""prefactor-otel: an OpenTelemetry SpanExporter that ships agent traces to Prefactor."""

from __future__ import annotations

__version__ = "0.1.0"
