"""Resource -> agent version and runtime environment. Pure functions."""

from __future__ import annotations

import platform
import sys
from collections.abc import Iterable, Mapping

from opentelemetry.sdk.resources import Resource

from prefactor_otel.mapping.values import JsonValue, json_safe
from prefactor_otel.models import AgentVersionForRegister, RuntimeEnvironment

# Resource attributes worth repeating in every span's metadata: they tell runs of one agent apart.
SELECTED_RESOURCE_ATTRIBUTES = (
    "service.name",
    "service.version",
    "service.namespace",
    "service.instance.id",
    "deployment.environment",
    "deployment.environment.name",
    "host.name",
    "process.pid",
)

UNVERSIONED = "unversioned"


def runtime_string() -> str:
    impl = sys.implementation.name
    return f"{impl}@{sys.version_info.major}.{sys.version_info.minor}"


def agent_version_from_resource(
    attributes: Mapping[str, object],
    *,
    sdk_version: str,
    agent_name: str | None = None,
    agent_identifier: str | None = None,
    scopes: Iterable[str] = (),
) -> AgentVersionForRegister:
    """`service.name` -> version name, `service.version` -> external identifier; config overrides both."""
    name = agent_name or str(attributes.get("service.name") or "unknown_service")
    identifier = agent_identifier or str(attributes.get("service.version") or UNVERSIONED)
    description_parts = [f"{key}={attributes[key]}" for key in ("service.namespace",) if key in attributes]
    return AgentVersionForRegister(
        name=name,
        external_identifier=identifier,
        description=" ".join(description_parts) or None,
        runtime_environment=RuntimeEnvironment(
            os=platform.system().lower() or None,
            runtime=runtime_string(),
            prefactor_sdk=[f"prefactor-otel@{sdk_version}"],
            agent_sdk=sorted(set(scopes)) or None,
        ),
    )


def selected_resource_attributes(attributes: Mapping[str, object]) -> dict[str, object]:
    return {key: attributes[key] for key in SELECTED_RESOURCE_ATTRIBUTES if key in attributes}


def resource_metadata(resource: Resource | None) -> dict[str, JsonValue]:
    """`{"resource.service.name": ..., ...}`: the selected Resource attributes as span metadata.

    A process has one Resource (or a few), shared by all its spans, and a Resource is immutable: the result is
    computed once per Resource object and shared (callers copy it into their own dict).
    """
    if resource is None:
        return {}
    cached = _RESOURCE_METADATA.get(id(resource))
    if cached is not None and cached[0] is resource:
        return cached[1]
    metadata = {
        f"resource.{key}": json_safe(value) for key, value in selected_resource_attributes(resource.attributes).items()
    }
    if len(_RESOURCE_METADATA) >= _RESOURCE_CACHE_SIZE:
        _RESOURCE_METADATA.clear()  # more Resources than any process uses: start over rather than grow
    _RESOURCE_METADATA[id(resource)] = (resource, metadata)  # holding the Resource keeps its id from being reused
    return metadata


_RESOURCE_CACHE_SIZE = 64
_RESOURCE_METADATA: dict[int, tuple[Resource, dict[str, JsonValue]]] = {}
