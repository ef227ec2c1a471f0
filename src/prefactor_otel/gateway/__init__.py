"""The OTLP gateway: `prefactor-otel gateway`, a receiver of OTLP/HTTP and OTLP/gRPC in front of the same
pipeline as the in-process exporter (decode, authenticate, route, acknowledge once durable, push back when full).

Installed with the `gateway` extra (`pip install 'prefactor-otel[gateway]'`). Beside `sdk/` on its layer: it
imports `pipeline/` and below, never the SDK exporter.
"""
