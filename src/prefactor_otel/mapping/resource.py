"""Resource -> agent version and runtime environment. Pure functions (plus a bounded cache).

The Resource attributes that leave the process (the selected ones in span metadata, service.name / .version /
.namespace in the agent version) go through the exporter's Redactor like any span string. Called from the exporting
thread; the cache is a plain dict whose races can only recompute an entry.
"""

from __future__ import annotations

import functools
import platform
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from importlib.metadata import distributions
from typing import Any

from opentelemetry.sdk.resources import Resource

from prefactor_otel.mapping.redaction import Redactor
from prefactor_otel.mapping.values import JsonValue, json_safe
from prefactor_otel.model.http import AgentVersionForRegister, RuntimeEnvironment

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

# Distributions that put spans on an agent's traces: the OTel contrib and OpenInference instrumentations, and the
# GenAI tracing SDKs built on OTel.
_INSTRUMENTATION_PREFIXES = ("opentelemetry-instrumentation-", "openinference-instrumentation-")
_INSTRUMENTATION_SDKS = frozenset({"traceloop-sdk", "logfire", "openlit", "openllmetry"})


@functools.lru_cache(maxsize=1)
def installed_instrumentations() -> tuple[str, ...]:
    """`name@version` of the OTel instrumentations installed here: the agent version's `agent_sdk`.

    Prefactor makes a new agent version for each combination of version details it has not seen, so the details
    must not depend on timing: the instrumentation scopes seen so far would (a run registered at its root's start
    has seen none), giving one deployment several versions. The installed set is the same for every run of a
    process, and of every process of one deployment. Read once per process (scanning the installed distributions
    takes milliseconds), on the exporting thread."""
    found: set[str] = set()
    for dist in distributions():
        # The stubs' PackageMetadata protocol has no `get`; the object is an email.message.Message, which has it.
        name = re.sub(r"[-_.]+", "-", str(dist.metadata.get("Name") or "")).lower()  # type: ignore[attr-defined]
        if name.startswith(_INSTRUMENTATION_PREFIXES) or name in _INSTRUMENTATION_SDKS:
            found.add(f"{name}@{dist.version}")
    return tuple(sorted(found))


def runtime_string() -> str:
    impl = sys.implementation.name
    return f"{impl}@{sys.version_info.major}.{sys.version_info.minor}"


def agent_version_from_resource(
    attributes: Mapping[str, object],
    *,
    sdk_version: str,
    agent_name: str | None = None,
    agent_identifier: str | None = None,
    agent_sdk: Iterable[str] = (),
    redactor: Redactor | None = None,
) -> AgentVersionForRegister:
    """`service.name` -> version name, `service.version` -> external identifier; config overrides both.

    `redactor`: the exporter's (MappingOptions.redactor), applied to the values taken from the Resource; without
    one, the built-in rules apply (a secret in a service name is never sent raw)."""
    redact = _resource_text(redactor if redactor is not None else _DEFAULT_REDACTOR)
    name = agent_name or redact(str(attributes.get("service.name") or "unknown_service"), "service.name")
    identifier = agent_identifier or redact(str(attributes.get("service.version") or UNVERSIONED), "service.version")
    description_parts = [
        f"{key}={redact(str(json_safe(attributes[key])), key)}" for key in ("service.namespace",) if key in attributes
    ]
    return AgentVersionForRegister(
        name=name,
        external_identifier=identifier,
        description=" ".join(description_parts) or None,
        runtime_environment=RuntimeEnvironment(
            os=platform.system().lower() or None,
            runtime=runtime_string(),
            prefactor_sdk=[f"prefactor-otel@{sdk_version}"],
            agent_sdk=sorted(set(agent_sdk)) or None,
        ),
    )


def selected_resource_attributes(attributes: Mapping[str, object]) -> dict[str, object]:
    return {key: attributes[key] for key in SELECTED_RESOURCE_ATTRIBUTES if key in attributes}


def _resource_text(redactor: Redactor) -> Callable[[str, str], str]:
    def redact(text: str, key: str) -> str:
        return redactor.redact_text(text, f'resource["{key}"]', []) if redactor.active else text

    return redact


def resource_metadata(
    resource: Resource | None, redactor: Redactor | None = None
) -> tuple[dict[str, JsonValue], list[dict[str, Any]]]:
    """`({"resource.service.name": ..., ...}, redactions)`: the selected Resource attributes as span metadata,
    redacted, and what was redacted (`resource["host.name"]` paths) to record on each span.

    A process has one Resource (or a few), shared by all its spans, and a Resource is immutable: the result is
    computed once per (Resource, Redactor) and shared (callers copy it into their own dict).
    """
    if resource is None:
        return {}, []
    key = (id(resource), id(redactor))
    cached = _RESOURCE_METADATA.get(key)
    if cached is not None and cached[0] is resource and cached[1] is redactor:
        return cached[2], cached[3]
    selected: dict[str, object] = dict(selected_resource_attributes(resource.attributes))
    log: list[dict[str, Any]] = []
    if redactor is not None:
        redactor.redact_owned(selected, "resource", log)
    metadata = {f"resource.{name}": json_safe(value) for name, value in selected.items()}
    if len(_RESOURCE_METADATA) >= _RESOURCE_CACHE_SIZE:
        _RESOURCE_METADATA.clear()  # more Resources than any process uses: start over rather than grow
    # Holding the Resource and the Redactor keeps their ids from being reused while the entry lives.
    _RESOURCE_METADATA[key] = (resource, redactor, metadata, log)
    return metadata, log


_RESOURCE_CACHE_SIZE = 64
_RESOURCE_METADATA: dict[
    tuple[int, int], tuple[Resource, Redactor | None, dict[str, JsonValue], list[dict[str, Any]]]
] = {}
_DEFAULT_REDACTOR = Redactor()
