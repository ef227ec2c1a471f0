"""Span starts, as the processor hands them over: what the planner learns from a span that has only started.

`PrefactorSpanProcessor.on_start` (the application's thread) only appends the span to a bounded queue; everything
here runs later on the exporter's sending thread: reading the span's ids once (`read_start`), deciding whether it
goes live (`LivePolicy`), and mapping it as it is so far (`map_started`). Pure functions and one small immutable
policy object; no locks, no I/O.

A live span is created in Prefactor `active` at its start and finished (`agent_spans/finish`) at its end, so a run
and its in-flight steps show while they run. PREFACTOR_LIVE_SPANS: `agent` (default) = a run's local root and the
spans of the agent type; `all`; `none`. An ancestor of a live span goes live too (the planner sees to it), so a live
span's parent always exists in Prefactor before it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from opentelemetry.sdk.trace import ReadableSpan

from prefactor_otel.mapping import SpanRecord, map_span
from prefactor_otel.mapping.conventions import AGENT, classify
from prefactor_otel.mapping.options import MappingOptions
from prefactor_otel.mapping.values import plain_attributes


class StartedSpan(NamedTuple):
    """One started span, read once on the sending thread. `span` is kept for mapping it live later (while it is
    open the application holds it anyway; the planner drops it when the span ends, and bounds how many it keeps)."""

    trace_id: int
    span_id: int
    parent_span_id: int | None
    parent_is_remote: bool
    start_time_ns: int
    span: ReadableSpan

    @property
    def is_local_root(self) -> bool:
        return self.parent_span_id is None or self.parent_is_remote


def read_start(span: ReadableSpan) -> StartedSpan | None:
    """The ids of a started span, or None for one the exporter never sees (not sampled, no valid context)."""
    context = span.context
    if context is None or not context.is_valid or not context.trace_flags.sampled:
        return None
    start_ns = span.start_time
    if start_ns is None:
        return None
    parent = span.parent
    parent_id = parent.span_id if parent is not None and parent.is_valid else None
    remote = bool(parent_id is not None and parent is not None and parent.is_remote)
    return StartedSpan(context.trace_id, context.span_id, parent_id, remote, start_ns, span)


class LivePolicy:
    """PREFACTOR_LIVE_SPANS: which started spans are created live."""

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def wants(self, started: StartedSpan) -> bool:
        if self.mode == "none":
            return False
        if self.mode == "all" or started.is_local_root:
            return True
        span = started.span
        # The attributes given at start are what instrumentations classify by (operation name, span kind).
        return classify(plain_attributes(span.attributes), span.name).schema_name == AGENT


def live_mapper(options: MappingOptions) -> Callable[[ReadableSpan], SpanRecord]:
    """map_started with the exporter's mapping options (redaction, capture switches, limits)."""

    def map_started(span: ReadableSpan) -> SpanRecord:
        return map_span(span, options, started=True)

    return map_started
