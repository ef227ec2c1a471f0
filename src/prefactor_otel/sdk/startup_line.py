"""The exporter's start-up line (`prefactor-otel: spans go to ...`), said once it is true, and the one warning for
`SimpleSpanProcessor(PrefactorSpanExporter())`.

Live spans need PrefactorSpanProcessor: it alone sees span starts. The exporter cannot know at construction
whether one will hold it, so the line waits for the first sign: PrefactorSpanProcessor asks for the start queue
(`under_processor`, at once when it is built) -> `live spans <PREFACTOR_LIVE_SPANS>`; else the first export()
(`first_export`: BatchSpanProcessor's first batch, SimpleSpanProcessor's first span) or shutdown (`at_close`, an
exporter that never exported) -> `live spans none (not under PrefactorSpanProcessor)`.

SimpleSpanProcessor, which the README says never to use, exports on the application's thread at each span's end:
every span end waits for a request (up to PREFACTOR_EXPORT_TIMEOUT in an outage) and no run is live. The first
export() looks at its caller's frame, once: a SimpleSpanProcessor's `on_end` is one warning. No cost per span:
after the first export, `said` is all the exporter reads.

Threads: `under_processor` runs on the thread building the processor, `first_export` on the first exporting
thread, `at_close` on shutdown's caller; two racing may both log (announce() itself says a line once per
process). No lock: one flag, written once.
"""

from __future__ import annotations

from types import FrameType

from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from prefactor_otel._logging import announce, logger
from prefactor_otel.config.options import PrefactorConfig

WITHOUT_PROCESSOR = "none (not under PrefactorSpanProcessor)"


class StartupLine:
    def __init__(self, config: PrefactorConfig, spool_directory: str | None) -> None:
        self._config = config
        self._spool = spool_directory
        self.said = False

    def under_processor(self) -> None:
        """PrefactorSpanProcessor holds the exporter: live spans are as configured."""
        self._say(None)

    def first_export(self, caller: FrameType | None) -> None:
        """The first export() without PrefactorSpanProcessor; `caller`: the frame that called export()."""
        self._say(WITHOUT_PROCESSOR)
        if caller is not None and isinstance(caller.f_locals.get("self"), SimpleSpanProcessor):
            logger.warning(
                "Prefactor: PrefactorSpanExporter is under SimpleSpanProcessor: every span's end waits for a request "
                "to Prefactor on your application's thread (up to PREFACTOR_EXPORT_TIMEOUT when it cannot be "
                "reached), and no run is live. Use PrefactorSpanProcessor(exporter) instead (or "
                "BatchSpanProcessor(exporter))"
            )

    def at_close(self) -> None:
        """Shutdown of an exporter that never exported and no processor asked for: say where spans would go."""
        self._say(WITHOUT_PROCESSOR)

    def _say(self, live_spans: str | None) -> None:
        if not self.said:
            self.said = True
            announce(self._config.destination(self._spool, live_spans=live_spans))
