"""The OpenTelemetry face: the exporter and processor (the SDK's contracts), their threads and process
lifecycle (fork, exit), zero-code set-up, stats and metrics.
"""
