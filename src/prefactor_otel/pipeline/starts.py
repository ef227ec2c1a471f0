"""Span starts, as the processor hands them over: what the planner learns from a span that has only started.

`PrefactorSpanProcessor.on_start` (the application's thread) only appends the span to a bounded queue; everything
here runs later on the exporter's sending thread: reading the span's ids once (`read_start`), deciding whether it
goes live (`LivePolicy`), and mapping it as it is so far (`map_started`). Pure functions and one small immutable
policy object; no locks, no I/O.

Speed (measured, per started span on the sending thread): spans of the SDK's own classes are read through the
fields their properties return (`_context`, `_start_time`, `_parent`, `_name`, `_attributes`), and SpanContexts
as the 6-tuples they are, rather than through a property call per field. Which classes may be read so is decided
once, by the mapping's import-time probe (`mapping.payload.sdk_span_classes`: the fields hold what the properties
return, the SpanContext tuple has the layout unpacked here); any other span object (a wrapper, another SDK version
whose probe fails) is read through the public properties as before. The results are identical.

A live span is created in Prefactor `active` at its start and finished (`agent_spans/finish`) at its end, so a run
and its in-flight steps show while they run. PREFACTOR_LIVE_SPANS: `agent` (default) = a run's local root and the
spans of the agent type; `all`; `none`. An ancestor of a live span goes live too (the planner sees to it), so a live
span's parent always exists in Prefactor before it.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple, cast

from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanContext, TraceFlags

from prefactor_otel.mapping import SpanRecord, map_span
from prefactor_otel.mapping.conventions import AGENT, classify
from prefactor_otel.mapping.options import MappingOptions
from prefactor_otel.mapping.payload import SDK_SPAN_CLASSES
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
    if type(span) not in SDK_SPAN_CLASSES:
        return _read_start_public(span)
    context: Any = span._context  # the fields the properties return (module docstring: checked at import)
    if type(context) is not SpanContext:
        return _read_start_public(span)
    trace_id, span_id, _, flags, _, valid = context
    start_ns = span._start_time
    if not (valid and flags & _SAMPLED) or start_ns is None:
        return None
    parent: Any = span._parent
    if parent is None:
        return _new_started((trace_id, span_id, None, False, start_ns, span))
    if type(parent) is not SpanContext:
        return _read_start_public(span)
    _, parent_id, remote, _, _, parent_valid = parent
    if not parent_valid:
        return _new_started((trace_id, span_id, None, False, start_ns, span))
    return _new_started((trace_id, span_id, parent_id, bool(remote), start_ns, span))


def _read_start_public(span: ReadableSpan) -> StartedSpan | None:
    """read_start through the public properties: any span object."""
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


def _start_attributes(span: ReadableSpan) -> dict[str, object]:
    """A plain copy of a started span's attributes (the application's thread may still be adding to them): one
    C-level dict copy for the SDK's BoundedAttributes, as `plain_attributes(span.attributes)` makes it."""
    if type(span) in SDK_SPAN_CLASSES:
        attributes: Any = span._attributes
        if type(attributes) is BoundedAttributes and _BOUNDED_COPY:
            copied = attributes.copy()
            if type(copied) is dict:
                return copied
        elif not attributes:
            return {}
    return plain_attributes(span.attributes)


class LivePolicy:
    """PREFACTOR_LIVE_SPANS: which started spans are created live."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self._none = mode == "none"
        self._all = mode == "all"

    def wants(self, started: StartedSpan) -> bool:
        if self._none:
            return False
        if self._all or started.parent_span_id is None or started.parent_is_remote:  # all, or a local root
            return True
        span = started.span
        # The attributes given at start are what instrumentations classify by (operation name, span kind).
        name = span._name if type(span) in SDK_SPAN_CLASSES else span.name
        return classify(_start_attributes(span), name).schema_name == AGENT


def live_mapper(options: MappingOptions) -> Callable[[ReadableSpan], SpanRecord]:
    """map_started with the exporter's mapping options (redaction, capture switches, limits)."""

    def map_started(span: ReadableSpan) -> SpanRecord:
        return map_span(span, options, started=True)

    return map_started


_SAMPLED = int(TraceFlags.SAMPLED)
# BoundedAttributes.copy(): its dict copied in one C call (an SDK without it: the generic copy).
_BOUNDED_COPY = callable(getattr(BoundedAttributes, "copy", None))
# tuple.__new__ bound by a C-level partial: skips NamedTuple's Python-level __new__ (its fields are positional).
_new_started = cast(
    "Callable[[tuple[int, int, int | None, bool, int, ReadableSpan]], StartedSpan]",
    partial(tuple.__new__, StartedSpan),
)
