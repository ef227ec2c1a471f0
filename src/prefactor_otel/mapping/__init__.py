"""Pure mapping from OTel spans and resources to Prefactor payloads (no I/O, no state)."""

from prefactor_otel.mapping.conventions import Classification, classify
from prefactor_otel.mapping.options import MappingOptions
from prefactor_otel.mapping.payload import MappingError, SpanRecord, map_span
from prefactor_otel.mapping.resource import agent_version_from_resource
from prefactor_otel.mapping.schemas import agent_schema_version, schema_names, span_type_schemas
from prefactor_otel.mapping.values import iso_from_ns, json_safe

__all__ = [
    "Classification",
    "MappingError",
    "MappingOptions",
    "SpanRecord",
    "agent_schema_version",
    "agent_version_from_resource",
    "classify",
    "iso_from_ns",
    "json_safe",
    "map_span",
    "schema_names",
    "span_type_schemas",
]
