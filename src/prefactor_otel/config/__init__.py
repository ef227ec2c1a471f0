"""Configuration: the options (options.py), how their values are parsed and checked (values.py), how they
are shown to people (text.py), and their OTEL_EXPORTER_PREFACTOR_* aliases (environment_variables.py, loaded by
`opentelemetry-instrument` on every run: this package imports nothing on import).
"""
