"""`OTEL_EXPORTER_PREFACTOR_*`: the aliases of the PREFACTOR_* variables, as names `opentelemetry-instrument` knows.

Registered in the `opentelemetry_environment_variables` entry-point group (entry_points.txt), as
`opentelemetry.sdk.environment_variables` is: `opentelemetry-instrument` loads every module of that group and makes
each `OTEL_*` name in it a command-line flag, the `OTEL_` prefix removed and lower-cased, which sets that variable
for the run. So `opentelemetry-instrument --exporter_prefactor_api_token ... python app.py` sets
`OTEL_EXPORTER_PREFACTOR_API_TOKEN`, which the exporter reads before `PREFACTOR_API_TOKEN` (config.py says why).

Every option has its alias, plus the log level's. The names are generated from `OPTIONS`, so a new option gets its
flag without a second list to keep. Each constant's value is its own name, as in the SDK's module.
No state beyond the constants; imported by `opentelemetry-instrument` before the application starts.
"""

from __future__ import annotations

from prefactor_otel._logging import LOG_LEVEL_ALIAS
from prefactor_otel.config import OPTIONS, alias_of

ALIASES: tuple[str, ...] = (*(alias_of(option.env) for option in OPTIONS.values()), LOG_LEVEL_ALIAS)

globals().update({name: name for name in ALIASES})

__all__ = ["ALIASES", *ALIASES]
