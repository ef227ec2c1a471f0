"""The command line and what it runs: `prefactor-otel` (cli.py), doctor, the demo."""
