"""The package's version, in one place below every other module (pyproject.toml's `version` holds the same)."""

__version__ = "0.1.0"
