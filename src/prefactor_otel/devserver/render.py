"""Agent runs as plain-text trees (`prefactor-otel demo` / `show`), and the live frame of `show --watch`.

Works on a `snapshot()` dict, possibly loaded from JSON written by another process, so every field is
treated as optional and nothing here assumes the snapshot came from this exact server version. Pure functions:
any thread may call them; no state, no locks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from prefactor_otel.devserver.timefmt import parse_timestamp

JsonDict = Mapping[str, Any]


def _micros(value: object) -> int | None:
    try:
        return parse_timestamp(value)
    except ValueError:
        return None


def _duration(start: object, end: object) -> str:
    started, finished = _micros(start), _micros(end)
    if started is None or finished is None:
        return "-"
    return f"{(finished - started) // 1000} ms"


def _order_key(row: JsonDict, *fields: str) -> tuple[int, int, str]:
    # Deterministic: by time (missing times last), then by id.
    for name in fields:
        micros = _micros(row.get(name))
        if micros is not None:
            return (0, micros, str(row.get("id", "")))
    return (1, 0, str(row.get("id", "")))


def _is_marked_orphan(span: JsonDict) -> bool:
    # The exporter sends a child whose parent never arrived without parent_span_id and says so here.
    payload = span.get("payload")
    metadata = payload.get("metadata") if isinstance(payload, Mapping) else None
    return isinstance(metadata, Mapping) and metadata.get("orphaned") is True


def _span_line(span: JsonDict, orphan: bool) -> str:
    parts = [str(span.get("schema_name") or "?")]
    payload = span.get("payload")
    name = payload.get("name") if isinstance(payload, Mapping) else None
    if isinstance(name, str) and name:
        parts.append(name)
    parts.append(str(span.get("status") or "?"))
    parts.append(_duration(span.get("started_at"), span.get("finished_at")))
    if orphan:
        parts.append("[orphan]")
    return "  ".join(parts)


def _version_label(instance: JsonDict, versions: Mapping[str, JsonDict]) -> str:
    version = versions.get(str(instance.get("agent_version_id")))
    if not version:
        return "?"
    name = version.get("name") or "?"
    identifier = version.get("external_identifier")
    return f"{name}@{identifier}" if identifier else str(name)


def _render_tree(
    spans: list[JsonDict], lines: list[str], span_line: Callable[[JsonDict, bool], str] = _span_line
) -> None:
    by_id = {str(s.get("id")): s for s in spans}
    children: dict[str, list[JsonDict]] = {}
    roots: list[tuple[JsonDict, bool]] = []
    for span in spans:
        parent = span.get("parent_span_id")
        if parent is None:
            roots.append((span, _is_marked_orphan(span)))
        elif str(parent) in by_id and str(parent) != str(span.get("id")):
            children.setdefault(str(parent), []).append(span)
        else:
            roots.append((span, True))
    for group in children.values():
        group.sort(key=lambda s: _order_key(s, "started_at", "inserted_at"))
    roots.sort(key=lambda entry: _order_key(entry[0], "started_at", "inserted_at"))

    # A parent cycle (impossible from the server, possible in a hand-edited snapshot) has no root: break it
    # at its earliest span, shown at top level as an orphan, so every span is printed exactly once.
    reached: set[str] = set()

    def reach(span_id: str) -> None:
        stack = [span_id]
        while stack:
            current = stack.pop()
            if current not in reached:
                reached.add(current)
                stack.extend(str(k.get("id")) for k in children.get(current, []))

    for span, _ in roots:
        reach(str(span.get("id")))
    for span in sorted(spans, key=lambda s: _order_key(s, "started_at", "inserted_at")):
        if str(span.get("id")) not in reached:
            roots.append((span, True))
            reach(str(span.get("id")))

    # Iterative, not recursive: an agent can nest spans deeper than Python's recursion limit.
    seen: set[str] = set()
    stack = [(span, orphan, "", i == len(roots) - 1) for i, (span, orphan) in enumerate(roots)][::-1]
    while stack:
        span, orphan, prefix, last = stack.pop()
        span_id = str(span.get("id"))
        if span_id in seen:
            continue
        seen.add(span_id)
        lines.append(f"{prefix}{'└─ ' if last else '├─ '}{span_line(span, orphan)}")
        kids = [k for k in children.get(span_id, []) if str(k.get("id")) not in seen]
        below = prefix + ("   " if last else "│  ")
        stack.extend((kid, False, below, i == len(kids) - 1) for i, kid in reversed(list(enumerate(kids))))


def render_runs(snapshot: Mapping[str, Any]) -> str:
    """Every agent run in `snapshot` as a header line and a tree of its spans."""
    instances = [i for i in snapshot.get("instances") or [] if isinstance(i, Mapping)]
    spans = [s for s in snapshot.get("spans") or [] if isinstance(s, Mapping)]
    versions = {str(v.get("id")): v for v in snapshot.get("agent_versions") or [] if isinstance(v, Mapping)}
    by_instance: dict[str, list[JsonDict]] = {}
    for span in spans:
        by_instance.setdefault(str(span.get("agent_instance_id")), []).append(span)

    if not instances and not spans:
        return "no agent runs\n"
    lines: list[str] = []
    known: set[str] = set()
    for instance in sorted(instances, key=lambda i: _order_key(i, "started_at", "inserted_at")):
        instance_id = str(instance.get("id"))
        known.add(instance_id)
        own = by_instance.get(instance_id, [])
        started = instance.get("started_at")
        header = [
            f"agent run {instance_id}",
            str(instance.get("status") or "?"),
            _version_label(instance, versions),
            f"started {started}" if started else "not started",
            _duration(started, instance.get("finished_at")),
            f"{len(own)} span{'' if len(own) == 1 else 's'}",
        ]
        if instance.get("termination_reason"):
            header.append(f"terminated: {instance['termination_reason']}")
        if lines:
            lines.append("")
        lines.append("  ".join(header))
        _render_tree(own, lines)
    strays = [s for key, group in by_instance.items() if key not in known for s in group]
    if strays:
        if lines:
            lines.append("")
        lines.append(f"spans of unknown agent runs  {len(strays)} span{'' if len(strays) == 1 else 's'}")
        _render_tree(strays, lines)
    return "\n".join(lines) + "\n"


LIVE = ("pending", "active")  # a run or span in one of these is still in flight


def _elapsed(start: object, now_us: int) -> str:
    started = _micros(start)
    if started is None:
        return "not started"
    return f"{max(0, now_us - started) / 1_000_000:.1f} s"


def render_live(snapshot: Mapping[str, Any], *, now_us: int) -> str:
    """One frame of `prefactor-otel show --watch`: the runs still in flight (`pending`/`active`), each with its
    in-flight spans as a tree (status and time since each started, at `now_us`); finished runs are only counted."""
    instances = [i for i in snapshot.get("instances") or [] if isinstance(i, Mapping)]
    versions = {str(v.get("id")): v for v in snapshot.get("agent_versions") or [] if isinstance(v, Mapping)}
    in_flight: dict[str, list[JsonDict]] = {}
    for span in snapshot.get("spans") or []:
        if isinstance(span, Mapping) and span.get("status") in LIVE:
            in_flight.setdefault(str(span.get("agent_instance_id")), []).append(span)
    live = [i for i in instances if i.get("status") in LIVE]

    def span_line(span: JsonDict, _orphan: bool) -> str:
        # A span whose parent already finished is drawn at the top level here: that is not an orphan.
        parts = [str(span.get("schema_name") or "?")]
        payload = span.get("payload")
        name = payload.get("name") if isinstance(payload, Mapping) else None
        if isinstance(name, str) and name:
            parts.append(name)
        parts += [str(span.get("status") or "?"), _elapsed(span.get("started_at"), now_us)]
        return "  ".join(parts)

    lines: list[str] = [] if live else ["no live agent runs"]
    for instance in sorted(live, key=lambda i: _order_key(i, "started_at", "inserted_at")):
        own = in_flight.get(str(instance.get("id")), [])
        started = instance.get("started_at")
        if lines:
            lines.append("")
        lines.append(
            "  ".join(
                [
                    f"agent run {instance.get('id')}",
                    str(instance.get("status") or "?"),
                    _version_label(instance, versions),
                    f"running {_elapsed(started, now_us)}" if started else "not started",
                    f"{len(own)} span{'' if len(own) == 1 else 's'} in flight",
                ]
            )
        )
        _render_tree(own, lines, span_line)
    done = len(instances) - len(live)
    if done:
        lines += ["", f"{done} finished run{'' if done == 1 else 's'} not shown"]
    return "\n".join(lines) + "\n"
