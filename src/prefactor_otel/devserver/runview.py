"""Agent runs as views: what a person looks at first, out of a `snapshot()` dict (`GET /_dev/snapshot`).

`run_views(snapshot)` is the one place that reads span payloads for display: the text trees of `prefactor-otel show`
and `demo` (render.py), `GET /_dev/runs` and the local server's web page all use it. Each run view holds the run's
status, timings, agent, totals (spans, errors, tokens, models, tools) and its spans as a tree; each span view holds
type, name, status, timings, model, token usage, tool, short input/output previews and the error, and its children.

A terminated run (stopped from Prefactor) is not a failure: the spans its termination closed (`failed` or
`cancelled` in the API, which has no `terminated` span status) are marked `terminated` and counted in
`totals["terminated"]`, not in `totals["errors"]`; the run view carries the reason (`terminated_reason`).

The snapshot may come from another process or version (JSON read back over HTTP, or rebuilt from the API's list
endpoints), so every field is optional: a missing or odd value gives None, never an exception.

Ordering. Roots and children are listed in the order they ran: by start time, then end time, then the order the
server received them, then id. Start alone is not enough: the exporter sends times with millisecond precision, so
a tool that ran between two model calls often starts in the same millisecond as the second call (it ends there
too); ordering such ties by id (random past its time prefix) showed `chat, chat, execute_tool` for about half the
runs. Of two siblings started in one millisecond, the one that ran first ended no later than the other started.

Token totals add only usage a span carries as its own: usage marked `aggregated` (an agent span summing its model
calls, or a wrapper repeating its child's) is shown on its span but not added again.

Parts of one trace (docs/cross-process.md). A trace that crossed processes is one run per process's part. Each run
view names its OTel trace (`trace_id`: from the run's `external_identifier`, `otel:<trace id>:<part>`, else from its
spans' payloads) and lists, in `continues`, the spans of other processes its top spans continue: the OTel span id,
and when the snapshot holds that span, its run, Prefactor id and name. `run_views` lists the parts of one trace
together (where the newest of them would be, oldest part first), so the page and `show` can join them.

Pure functions: any thread may call them; no state, no locks.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from prefactor_otel.devserver.timefmt import parse_timestamp

JsonDict = Mapping[str, Any]

PREVIEW_CHARS = 80  # one line of a terminal tree, with its indent
ERROR_MESSAGE_CHARS = 500  # an error message is kept longer than a preview: it is often the whole story
MAX_NESTING = 200  # deeper spans are listed flat under their ancestor at this depth (JSON encoders recurse)


def _micros(value: object) -> int | None:
    try:
        return parse_timestamp(value)
    except ValueError:
        return None


def _duration_ms(start: object, end: object) -> int | None:
    started, finished = _micros(start), _micros(end)
    if started is None or finished is None:
        return None
    return (finished - started) // 1000


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _mapping(value: object) -> JsonDict:
    return value if isinstance(value, Mapping) else {}


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


# --------------------------------------------------------------------------- previews


def shorten(text: str, limit: int = PREVIEW_CHARS) -> str:
    """One line: whitespace collapsed, cut to `limit` characters with `…` when cut."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1].rstrip() + "…"


def _compact(value: object) -> str:
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    except (TypeError, ValueError):  # a cycle or an unorderable key in a hand-made snapshot
        return repr(value)


def _message_text(message: object) -> str:
    """`role: content`, with the tool calls a model asked for as `→ name(arguments)`."""
    if not isinstance(message, Mapping):
        return _compact(message)
    parts: list[str] = []
    content = message.get("content")
    if content not in (None, "", []):
        parts.append(_compact(content))
    for call in message.get("tool_calls") or []:
        if isinstance(call, Mapping):
            parts.append(f"→ {call.get('name') or '?'}({_compact(call.get('arguments', ''))})")
    role = _text(message.get("role"))
    body = " ".join(parts) if parts else "(empty)"
    return f"{role}: {body}" if role else body


# The field a payload's `inputs` / `outputs` holds its main value in, per span type (mapping/schemas.py).
_INPUT_FIELDS = ("messages", "arguments", "query", "texts", "value")
_OUTPUT_FIELDS = ("messages", "result", "value", "documents")


def _preview(side: object, fields: tuple[str, ...]) -> str | None:
    values = _mapping(side)
    if not values:
        return None
    for name in fields:
        if name not in values or values[name] in (None, "", [], {}):
            continue
        value = values[name]
        if name == "messages" and isinstance(value, list):
            # The newest message is what this step added: the question, the tool result, the answer.
            return shorten(_message_text(value[-1]))
        if name in ("texts", "documents") and isinstance(value, list):
            more = f" (+{len(value) - 1} more)" if len(value) > 1 else ""
            first = value[0].get("content") if isinstance(value[0], Mapping) else value[0]
            return shorten(_compact(first) + more)
        return shorten(_compact(value))
    return shorten(_compact(dict(values)))


# --------------------------------------------------------------------------- one span


def _tokens(payload: JsonDict, result: JsonDict) -> dict[str, Any] | None:
    # The finish's usage wins: a span created live carries none at its start.
    usage = result.get("token_usage") if isinstance(result.get("token_usage"), Mapping) else None
    if usage is None:
        usage = _mapping(payload.get("token_usage"))
    counts = {
        "input": _count(usage.get("prompt_tokens")),
        "output": _count(usage.get("completion_tokens")),
        "total": _count(usage.get("total_tokens")),
    }
    if all(v is None for v in counts.values()):
        return None
    if counts["total"] is None and counts["input"] is not None and counts["output"] is not None:
        counts["total"] = counts["input"] + counts["output"]
    return {**counts, "aggregated": usage.get("aggregated") is True}


def _error(payload: JsonDict, result: JsonDict) -> dict[str, str | None] | None:
    for error in (result.get("error"), payload.get("error")):
        if isinstance(error, Mapping):
            message = error.get("message")
            return {
                "type": _text(error.get("error_type")),
                "message": shorten(_compact(message), ERROR_MESSAGE_CHARS) if message not in (None, "") else None,
            }
    return None


def _is_marked_orphan(span: JsonDict) -> bool:
    # The exporter sends a child whose parent never arrived without parent_span_id and says so here.
    return _mapping(_mapping(span.get("payload")).get("metadata")).get("orphaned") is True


def span_view(span: JsonDict, *, orphan: bool = False) -> dict[str, Any]:
    """One span as a view, without children (`children` is an empty list to fill)."""
    payload = _mapping(span.get("payload"))
    result = _mapping(span.get("result_payload"))
    return {
        "id": span.get("id"),
        "type": _text(span.get("schema_name")),
        "name": _text(payload.get("name")),
        "status": _text(span.get("status")),
        "started_at": span.get("started_at"),
        "finished_at": span.get("finished_at"),
        "duration_ms": _duration_ms(span.get("started_at"), span.get("finished_at")),
        "model": _text(payload.get("model")) or _text(result.get("response_model")),
        "tokens": _tokens(payload, result),
        "tool": _text(payload.get("tool_name")),
        "input_preview": _preview(payload.get("inputs"), _INPUT_FIELDS),
        "output_preview": _preview(result.get("outputs"), _OUTPUT_FIELDS),
        "error": _error(payload, result),
        "terminated": False,  # closed by its run's termination (run_view sets it: see _mark_terminated)
        "orphan": orphan,
        "children": [],
    }


# --------------------------------------------------------------------------- trees


def _order_key(row: JsonDict, position: int) -> tuple[bool, int, bool, int, bool, int, int, str]:
    # In the order they ran (see the module docstring); a missing time sorts after every known one. `position`
    # (in the snapshot, which lists spans as the server received them) stands in for a missing arrival time.
    started, finished, inserted = (_micros(row.get(f)) for f in ("started_at", "finished_at", "inserted_at"))
    return (
        started is None,
        started or 0,
        finished is None,
        finished or 0,
        inserted is None,
        inserted or 0,
        position,
        str(row.get("id", "")),
    )


def span_trees(spans: list[JsonDict]) -> list[dict[str, Any]]:
    """The spans of one run as trees of span views, roots and children in the order they ran.

    A span whose parent is not among `spans` is a root marked `orphan`; so is the earliest span of a parent cycle
    (impossible from the server, possible in a hand-edited snapshot), so every span appears exactly once."""
    keyed = sorted(((_order_key(s, i), s) for i, s in enumerate(spans)), key=lambda pair: pair[0])
    ordered = [s for _, s in keyed]
    by_id = {str(s.get("id")): s for s in ordered}
    children: dict[str, list[JsonDict]] = {}
    roots: list[tuple[JsonDict, bool]] = []
    for span in ordered:
        parent = span.get("parent_span_id")
        if parent is None:
            roots.append((span, _is_marked_orphan(span)))
        elif str(parent) in by_id and str(parent) != str(span.get("id")):
            children.setdefault(str(parent), []).append(span)
        else:
            roots.append((span, True))

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
    for span in ordered:
        if str(span.get("id")) not in reached:
            roots.append((span, True))
            reach(str(span.get("id")))
    positions = {id(s): i for i, s in enumerate(ordered)}
    roots.sort(key=lambda entry: positions[id(entry[0])])  # a cycle's root among the others, where it ran

    # Iterative, not recursive: an agent can nest spans deeper than Python's recursion limit.
    top: list[dict[str, Any]] = []
    seen: set[str] = set()
    stack: list[tuple[JsonDict, bool, list[dict[str, Any]], int]] = [(s, o, top, 0) for s, o in reversed(roots)]
    while stack:
        span, orphan, siblings, depth = stack.pop()
        span_id = str(span.get("id"))
        if span_id in seen:
            continue
        seen.add(span_id)
        view = span_view(span, orphan=orphan)
        siblings.append(view)
        kids = [k for k in children.get(span_id, []) if str(k.get("id")) not in seen]
        if depth + 1 >= MAX_NESTING:
            # Too deep to nest further: this span's descendants go flat under it, in the order they ran.
            view["children_flattened"] = True
            flat: list[JsonDict] = []
            pending = list(reversed(kids))
            while pending:
                kid = pending.pop()
                flat.append(kid)
                pending.extend(reversed(children.get(str(kid.get("id")), [])))
            flat.sort(key=lambda s: positions[id(s)])
            for kid in flat:
                if str(kid.get("id")) not in seen:
                    seen.add(str(kid.get("id")))
                    view["children"].append(span_view(kid))
            continue
        stack.extend((kid, False, view["children"], depth + 1) for kid in reversed(kids))
    return top


def walk(views: list[dict[str, Any]]) -> list[tuple[dict[str, Any], int]]:
    """Every span view of a forest with its depth, depth-first in order (iterative)."""
    out: list[tuple[dict[str, Any], int]] = []
    stack = [(v, 0) for v in reversed(views)]
    while stack:
        view, depth = stack.pop()
        out.append((view, depth))
        stack.extend((kid, depth + 1) for kid in reversed(view.get("children") or []))
    return out


# --------------------------------------------------------------------------- runs


def _agent_label(instance: JsonDict, versions: Mapping[str, JsonDict]) -> str | None:
    version = versions.get(str(instance.get("agent_version_id")))
    if not version:
        return None
    name = _text(version.get("name"))
    if name is None:
        return None
    identifier = version.get("external_identifier")
    return f"{name}@{identifier}" if identifier else name


def _mark_terminated(instance: JsonDict, views: list[dict[str, Any]]) -> None:
    """Mark the spans the run's termination closed (`terminated: true`). The API has no `terminated` span status:
    termination closes an in-flight span as `failed` (or a pending one as `cancelled`), with no error of its own,
    at the moment of the termination (the run's `finished_at`). So is a span that ended with the application's
    PrefactorTerminatedError (the agent stopping as asked). A span that failed with another error, or before the
    termination, failed on its own."""
    if instance.get("status") != "terminated":
        return
    stopped_at = _micros(instance.get("finished_at"))
    for view, _ in walk(views):
        if view["status"] not in ("failed", "cancelled"):
            continue
        error = view["error"]
        if error is not None:
            view["terminated"] = (error.get("type") or "").endswith("PrefactorTerminatedError")
            continue
        finished = _micros(view["finished_at"])
        if stopped_at is None or finished is None or finished >= stopped_at:
            view["terminated"] = True


def _totals(views: list[dict[str, Any]]) -> dict[str, Any]:
    totals: dict[str, Any] = {
        "spans": 0,
        "errors": 0,
        "terminated": 0,
        "input_tokens": 0,
        "output_tokens": 0,
        "total_tokens": 0,
        "models": [],
        "tools": [],
    }
    for view, _ in walk(views):
        totals["spans"] += 1
        if view["terminated"]:
            totals["terminated"] += 1  # stopped from outside: not an error of the agent's
        elif view["status"] == "failed" or view["error"] is not None:
            totals["errors"] += 1
        tokens = view["tokens"]
        if tokens is not None and not tokens["aggregated"]:
            totals["input_tokens"] += tokens["input"] or 0
            totals["output_tokens"] += tokens["output"] or 0
            totals["total_tokens"] += tokens["total"] or 0
        if view["model"] and view["model"] not in totals["models"]:
            totals["models"].append(view["model"])
        if view["tool"] and view["tool"] not in totals["tools"]:
            totals["tools"].append(view["tool"])
    return totals


# --------------------------------------------------------------------------- parts of a trace

_TRACE_HEX = frozenset("0123456789abcdef")
# OTel (trace id, span id), both lower-case hex as payloads carry them -> the span: what a part's top span continues.
SpanIndex = Mapping[tuple[str, str], JsonDict]


def _hex(value: object, length: int) -> str | None:
    if isinstance(value, str) and len(value) == length and not set(value) - _TRACE_HEX and value != "0" * length:
        return value
    return None


def trace_of_run(instance: JsonDict, spans: list[JsonDict]) -> str | None:
    """The OTel trace id (32 hex) a run is part of: the one its `external_identifier` names, else its spans'."""
    name = instance.get("external_identifier")
    if isinstance(name, str) and name.startswith("otel:"):
        found = _hex(name.split(":")[1] if name.count(":") >= 2 else None, 32)
        if found is not None:
            return found
    for span in spans:
        found = _hex(_mapping(span.get("payload")).get("trace_id"), 32)
        if found is not None:
            return found
    return None


def span_index(spans: list[JsonDict]) -> dict[tuple[str, str], JsonDict]:
    """Every span by its OTel (trace id, span id), from its payload: how a part's top span finds what it continues."""
    index: dict[tuple[str, str], JsonDict] = {}
    for span in spans:
        payload = _mapping(span.get("payload"))
        trace, otel_span = _hex(payload.get("trace_id"), 32), _hex(payload.get("span_id"), 16)
        if trace is not None and otel_span is not None:
            index.setdefault((trace, otel_span), span)
    return index


def continued_spans(spans: list[JsonDict], index: SpanIndex) -> list[dict[str, Any]]:
    """What a run's top spans continue: for each span of it whose parent is in another run — another process's span
    (its payload's `metadata["otel.parent.is_remote"]`) or, for the gateway's run of late spans, a span of the
    trace's earlier run (`metadata["prefactor.parent_in_earlier_run"]`) — that parent's OTel id and, when `index`
    holds the span, its run, Prefactor id and name. In the order the top spans ran; one entry per parent."""
    found: list[dict[str, Any]] = []
    seen: set[str] = set()
    for _, span in sorted(enumerate(spans), key=lambda pair: _order_key(pair[1], pair[0])):
        payload = _mapping(span.get("payload"))
        metadata = _mapping(payload.get("metadata"))
        if span.get("parent_span_id") is not None or (
            metadata.get("otel.parent.is_remote") is not True
            and metadata.get("prefactor.parent_in_earlier_run") is not True
        ):
            continue
        trace, parent = _hex(payload.get("trace_id"), 32), _hex(payload.get("parent_span_id"), 16)
        if trace is None or parent is None or parent in seen:
            continue
        seen.add(parent)
        held = index.get((trace, parent))
        own_run = span.get("agent_instance_id")
        if held is not None and held.get("agent_instance_id") == own_run:
            held = None  # not another part's span (a hand-made snapshot)
        found.append(
            {
                "otel_span_id": parent,
                "run_id": held.get("agent_instance_id") if held is not None else None,
                "span_id": held.get("id") if held is not None else None,
                "span_name": _text(_mapping(held.get("payload")).get("name")) if held is not None else None,
            }
        )
    return found


def run_view(
    instance: JsonDict,
    spans: list[JsonDict],
    versions: Mapping[str, JsonDict],
    *,
    known: bool = True,
    index: SpanIndex | None = None,
) -> dict[str, Any]:
    """One run (agent instance) with its spans; `known=False` for spans of a run the snapshot does not list
    (`instance` is then `{"id": ...}` alone). `index` (span_index of the whole snapshot) finds the spans of other
    runs this one continues; without it only their OTel ids are known."""
    trees = span_trees(spans)
    _mark_terminated(instance, trees)
    root_names = [v["name"] for v in trees if v["name"] and not v["orphan"]]
    return {
        "id": instance.get("id"),
        "known": known,
        "status": _text(instance.get("status")),
        "started_at": instance.get("started_at"),
        "finished_at": instance.get("finished_at"),
        "duration_ms": _duration_ms(instance.get("started_at"), instance.get("finished_at")),
        "agent": _agent_label(instance, versions),
        "name": root_names[0] if root_names else None,
        "terminated_reason": _text(instance.get("termination_reason")),
        "trace_id": trace_of_run(instance, spans),
        "continues": continued_spans(spans, index or {}),
        "totals": _totals(trees),
        "spans": trees,
    }


def _run_time(instance: JsonDict, spans: list[JsonDict]) -> int | None:
    for value in (instance.get("started_at"), instance.get("inserted_at")):
        micros = _micros(value)
        if micros is not None:
            return micros
    starts = [m for m in (_micros(s.get("started_at")) for s in spans) if m is not None]
    return min(starts) if starts else None


def run_views(snapshot: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every run of `snapshot` as a JSON-ready view, newest first (runs without any time last), the parts of one
    trace together (see the module docstring). Spans of runs the snapshot does not list are grouped per run id in
    views with `known: false` and no status."""
    instances = [i for i in snapshot.get("instances") or [] if isinstance(i, Mapping)]
    spans = [s for s in snapshot.get("spans") or [] if isinstance(s, Mapping)]
    versions = {str(v.get("id")): v for v in snapshot.get("agent_versions") or [] if isinstance(v, Mapping)}
    by_instance: dict[str, list[JsonDict]] = {}
    for span in spans:
        by_instance.setdefault(str(span.get("agent_instance_id")), []).append(span)
    index = span_index(spans)

    entries: list[tuple[int | None, str, dict[str, Any]]] = []
    known: set[str] = set()
    for instance in instances:
        key = str(instance.get("id"))
        known.add(key)
        own = by_instance.get(key, [])
        view = run_view(instance, own, versions, index=index)
        entries.append((_run_time(instance, own), key, view))
    for key, own in by_instance.items():
        if key not in known:
            stray = {"id": own[0].get("agent_instance_id")}
            view = run_view(stray, own, versions, known=False, index=index)
            entries.append((_run_time(stray, own), key, view))
    entries.sort(key=lambda e: (e[0] is not None, e[0] or 0, e[1]), reverse=True)
    return _parts_together([(time, view) for time, _, view in entries])


def _parts_together(entries: list[tuple[int | None, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Newest first, but the runs of one trace listed together where its newest run is, oldest part first (the
    caller's part before the parts it called)."""
    parts: dict[str, list[tuple[int | None, dict[str, Any]]]] = {}
    for entry in entries:
        trace = entry[1].get("trace_id")
        if trace is not None:
            parts.setdefault(trace, []).append(entry)
    out: list[dict[str, Any]] = []
    placed: set[str] = set()
    for _, view in entries:
        trace = view.get("trace_id")
        group = parts.get(trace) if isinstance(trace, str) else None
        if group is None or len(group) == 1:
            out.append(view)
        elif isinstance(trace, str) and trace not in placed:
            placed.add(trace)
            # Oldest first, a part never before the part it continues: times share a millisecond easily across
            # processes, and hosts' clocks differ. Reversed first: equal keys keep the order of the caller's list.
            ordered = sorted(
                reversed(group), key=_after_callers([v for _, v in group], dict((id(v), t) for t, v in group))
            )
            out.extend(v for _, v in ordered)
    return out


def _after_callers(
    views: list[dict[str, Any]], times: dict[int, int | None]
) -> Callable[[tuple[int | None, dict[str, Any]]], tuple[float, int]]:
    """The sort key of one trace's parts: (the latest time along the chain of parts that call it, how many calls
    deep it is). A part is listed after every part of the group it continues, otherwise by its time (none: last).
    Bounded by the group's size, so a cycle in a hand-made snapshot cannot loop."""
    by_run = {view.get("id"): view for view in views}

    def callers(view: dict[str, Any]) -> list[dict[str, Any]]:
        found = (by_run.get(c.get("run_id")) for c in view.get("continues") or [] if isinstance(c, dict))
        return [v for v in found if v is not None and v is not view]

    def time_of(view: dict[str, Any]) -> float:
        time = times.get(id(view))
        return float("inf") if time is None else float(time)

    keys: dict[int, tuple[float, int]] = {}
    for view in views:
        latest, depth, frontier = time_of(view), 0, callers(view)
        while frontier and depth < len(views):
            depth += 1
            latest = max([latest, *(time_of(v) for v in frontier)])
            frontier = list({id(up): up for v in frontier for up in callers(v)}.values())
        keys[id(view)] = (latest, depth)
    return lambda entry: keys[id(entry[1])]
