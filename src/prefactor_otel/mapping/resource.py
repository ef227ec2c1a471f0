"""Resource -> agent version and runtime environment. Pure functions."""

from __future__ import annotations

import platform
import sys
from collections.abc import Iterable, Mapping

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
