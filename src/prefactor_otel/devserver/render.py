"""Agent runs as plain-text trees (`prefactor-otel demo` / `show`), and the live frame of `show --watch`.

Both render the run views of runview.py (one reading of the payloads for every display): per run a header and a
totals line (spans, errors, tokens, models, tools); per span a line with type, name, status, timing and what is
there of model, tokens and tool, then indented detail lines for the error (`error: Type: message`) and the input
(`> ...`) and output (`< ...`) previews, cut to fit a 100-column terminal where the depth allows. A run that is a
part of a trace continued from another process says which span of which run it continues (`continues ...`).
A terminated run says so in its header with its reason (`terminated in Prefactor: <reason>`); the spans its
termination closed read `terminated`, not `failed`, and count as stopped, not as errors.

Pure functions: any thread may call them; no state, no locks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from prefactor_otel.devserver.runview import run_views, shorten, span_trees
from prefactor_otel.devserver.timefmt import format_timestamp, parse_timestamp

WIDTH = 100  # the terminal width detail lines are cut to (never below MIN_DETAIL characters of text)
MIN_DETAIL = 40
LIVE = ("pending", "active")  # a run or span in one of these is still in flight

View = dict[str, Any]


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _duration(view: Mapping[str, Any]) -> str:
    duration = view.get("duration_ms")
    return "-" if duration is None else f"{duration} ms"


def _tokens(tokens: Mapping[str, Any] | None) -> str | None:
    if not tokens:
        return None
    labels = (("input", "in"), ("output", "out"))
    counts = [f"{label} {tokens[key]}" for key, label in labels if tokens.get(key) is not None]
    if not counts and tokens.get("total") is not None:
        counts = [f"total {tokens['total']}"]
    text = "tokens " + " / ".join(counts)
    return text + " (sum of the calls below)" if tokens.get("aggregated") else text


def span_line(view: Mapping[str, Any], timing: str, *, mark_orphan: bool = True) -> str:
    """`type  name  status  timing` and what the span has of model, tokens and tool."""
    parts = [view.get("type") or "?"]
    if view.get("name"):
        parts.append(view["name"])
    # A span its run's termination closed says so, not `failed`: the agent was stopped, it did not fail.
    parts += ["terminated" if view.get("terminated") else view.get("status") or "?", timing]
    if view.get("model"):
        parts.append(f"model {view['model']}")
    tokens = _tokens(view.get("tokens"))
    if tokens:
        parts.append(tokens)
    if view.get("tool"):
        parts.append(f"tool {view['tool']}")
    if mark_orphan and view.get("orphan"):
        parts.append("[orphan]")
    if view.get("children_flattened"):
        parts.append("[nested too deep: the spans below it are listed flat]")
    return "  ".join(parts)


def detail_lines(view: Mapping[str, Any]) -> list[str]:
    """The error and the input/output previews of a span, one line each (uncut)."""
    lines: list[str] = []
    error = view.get("error")
    if error:
        text = ": ".join(part for part in (error.get("type"), error.get("message")) if part)
        lines.append(f"error: {text or '(no detail)'}")
    if view.get("input_preview"):
        lines.append(f"> {view['input_preview']}")
    if view.get("output_preview"):
        lines.append(f"< {view['output_preview']}")
    return lines


def render_tree(
    views: list[View], lines: list[str], timing: Callable[[View], str] = _duration, *, mark_orphans: bool = True
) -> None:
    """Append the span trees `views` (run views' `spans`) to `lines`; `timing(view)` gives each span's time."""
    # Iterative, not recursive: an agent can nest spans deeper than Python's recursion limit.
    stack: list[tuple[View, str, bool]] = [(v, "", i == len(views) - 1) for i, v in enumerate(views)][::-1]
    while stack:
        view, prefix, last = stack.pop()
        lines.append(f"{prefix}{'└─ ' if last else '├─ '}{span_line(view, timing(view), mark_orphan=mark_orphans)}")
        kids = view.get("children") or []
        below = prefix + ("   " if last else "│  ")
        detail_prefix = below + ("│  " if kids else "   ")
        room = max(MIN_DETAIL, WIDTH - len(detail_prefix))
        lines.extend(detail_prefix + shorten(text, room) for text in detail_lines(view))
        stack.extend((kid, below, i == len(kids) - 1) for i, kid in reversed(list(enumerate(kids))))


def _started(value: object) -> str:
    # To the second, in UTC: enough to tell runs apart, and the header stays within 100 columns.
    micros = _micros(value)
    if micros is None:
        return f"started {value}" if value else "not started"
    return f"{(format_timestamp(micros) or '')[:19].replace('T', ' ')}Z"


def terminated_text(run: Mapping[str, Any]) -> str:
    """Who stopped a terminated run and why. The API names no actor (an operator or a policy in Prefactor)."""
    return f"terminated in Prefactor: {run.get('terminated_reason') or 'no reason given'}"


def totals_line(run: Mapping[str, Any]) -> str:
    totals = run.get("totals") or {}
    parts = [_plural(totals.get("spans", 0), "span"), _plural(totals.get("errors", 0), "error")]
    if totals.get("terminated"):
        parts.append(f"{totals['terminated']} stopped by the termination")
    if totals.get("input_tokens") or totals.get("output_tokens") or totals.get("total_tokens"):
        parts.append(
            f"tokens in {totals.get('input_tokens', 0)} / out {totals.get('output_tokens', 0)}"
            f" / total {totals.get('total_tokens', 0)}"
        )
    if totals.get("models"):
        parts.append("models " + ", ".join(totals["models"]))
    if totals.get("tools"):
        parts.append("tools " + ", ".join(totals["tools"]))
    return "  " + "  ".join(parts)


def continues_lines(run: Mapping[str, Any]) -> list[str]:
    """For a part of a trace that crossed processes (docs/cross-process.md): the other processes' spans it
    continues, with their runs when known."""
    lines: list[str] = []
    for link in run.get("continues") or []:
        if not isinstance(link, Mapping):
            continue
        if link.get("run_id"):
            lines.append(f"  continues {link.get('span_name') or '(unnamed)'} of run {link['run_id']}")
        else:
            lines.append(f"  continues span {link.get('otel_span_id')} of trace {run.get('trace_id')} (no run here)")
    return lines


def render_views(runs: list[View]) -> str:
    """Run views (`run_views`) as text: each run's header, totals line and tree of spans."""
    if not runs:
        return "no agent runs\n"
    lines: list[str] = []
    for run in runs:
        if lines:
            lines.append("")
        if run.get("known", True):
            header = [
                f"agent run {run.get('id')}",
                run.get("status") or "?",
                run.get("agent") or "?",
                _started(run.get("started_at")),
                _duration(run),
            ]
            if run.get("status") == "terminated" or run.get("terminated_reason"):
                header.append(terminated_text(run))
        else:
            header = [f"spans of an unknown agent run {run.get('id')}"]
        lines.append("  ".join(header))
        lines.append(totals_line(run))
        lines.extend(continues_lines(run))
        render_tree(run.get("spans") or [], lines)
    return "\n".join(lines) + "\n"


def render_runs(snapshot: Mapping[str, Any]) -> str:
    """Every agent run in `snapshot`, newest first, as a header, a totals line and a tree of its spans."""
    return render_views(run_views(snapshot))


def _micros(value: object) -> int | None:
    try:
        return parse_timestamp(value)
    except ValueError:
        return None


def _elapsed(start: object, now_us: int) -> str:
    started = _micros(start)
    if started is None:
        return "not started"
    return f"{max(0, now_us - started) / 1_000_000:.1f} s"


def render_live(snapshot: Mapping[str, Any], *, now_us: int) -> str:
    """One frame of `prefactor-otel show --watch`: the runs still in flight (`pending`/`active`), each with its
    in-flight spans as a tree (the span lines of `render_runs`, timed since each started, at `now_us`); finished
    runs are only counted."""
    instances = [i for i in snapshot.get("instances") or [] if isinstance(i, Mapping)]
    live = [i for i in instances if i.get("status") in LIVE]
    in_flight: dict[str, list[Mapping[str, Any]]] = {}
    for span in snapshot.get("spans") or []:
        if isinstance(span, Mapping) and span.get("status") in LIVE:
            in_flight.setdefault(str(span.get("agent_instance_id")), []).append(span)
    versions = snapshot.get("agent_versions") or []
    views = run_views({"instances": live, "spans": [], "agent_versions": versions})

    lines: list[str] = [] if views else ["no live agent runs"]
    for run in views:
        own = in_flight.get(str(run.get("id")), [])
        started = run.get("started_at")
        if lines:
            lines.append("")
        lines.append(
            "  ".join(
                [
                    f"agent run {run.get('id')}",
                    run.get("status") or "?",
                    run.get("agent") or "?",
                    f"running {_elapsed(started, now_us)}" if started else "not started",
                    f"{_plural(len(own), 'span')} in flight",
                ]
            )
        )
        # A span whose parent already finished is drawn at the top level here: that is not an orphan.
        render_tree(span_trees(own), lines, lambda view: _elapsed(view.get("started_at"), now_us), mark_orphans=False)
    done = len(instances) - len(live)
    if done:
        lines += ["", f"{_plural(done, 'finished run')} not shown"]
    return "\n".join(lines) + "\n"
