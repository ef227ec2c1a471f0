"""Agent runs as plain-text trees (`prefactor-otel demo` / `show`), and the live frame of `show --watch`.

Both render the run views of runview.py (one reading of the payloads for every display): per run a header and a
totals line (spans, errors, tokens, models, tools); per span a line with type, name, status, timing and what is
there of model, tokens and tool, then indented detail lines for the error (`error: Type: message`) and the input
(`> ...`) and output (`< ...`) previews, cut to fit a 100-column terminal where the depth allows. A run that is a
part of a trace continued from another process says which span of which run it continues (`continues ...`).
A terminated run says so in its header with its reason (`terminated in Prefactor: <reason>`); the spans its
termination closed read `terminated`, not `failed`, and count as stopped, not as errors.
The live frame (`render_live`) draws only runs in flight, with the same lines: finished spans with status and
duration, in-flight ones timed so far and marked `[in flight]`, finished subtrees folded to one line so a frame
stays on a screen.

Pure functions: any thread may call them; no state, no locks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from prefactor_otel.devserver.runview import run_views, shorten, walk
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
    views: list[View],
    lines: list[str],
    timing: Callable[[View], str] = _duration,
    *,
    mark_orphans: bool = True,
    notes: Callable[[View], str] | None = None,
    details: Callable[[View], list[str]] = detail_lines,
) -> None:
    """Append the span trees `views` (run views' `spans`) to `lines`; `timing(view)` gives each span's time,
    `notes(view)` what to add at the end of its line, `details(view)` the lines under it."""
    # Iterative, not recursive: an agent can nest spans deeper than Python's recursion limit.
    stack: list[tuple[View, str, bool]] = [(v, "", i == len(views) - 1) for i, v in enumerate(views)][::-1]
    while stack:
        view, prefix, last = stack.pop()
        if view.get("not_shown"):  # a stand-in for spans left out (the live frame's earlier finished ones)
            line, note = f"… {view['not_shown']}", ""
        else:
            line = span_line(view, timing(view), mark_orphan=mark_orphans)
            note = notes(view) if notes is not None else ""
        lines.append(f"{prefix}{'└─ ' if last else '├─ '}{line}{'  ' + note if note else ''}")
        kids = view.get("children") or []
        below = prefix + ("   " if last else "│  ")
        detail_prefix = below + ("│  " if kids else "   ")
        room = max(MIN_DETAIL, WIDTH - len(detail_prefix))
        lines.extend(detail_prefix + shorten(text, room) for text in ([] if view.get("not_shown") else details(view)))
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
        text = f"tokens in {totals.get('input_tokens', 0)} / out {totals.get('output_tokens', 0)}"
        # Spans that report input and output counts only (no total) would read `total 0`: no total is shown then.
        parts.append(text + (f" / total {totals['total_tokens']}" if totals.get("total_tokens") else ""))
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


LIVE_FINISHED_SHOWN = 10  # of one span's finished children (or a run's finished top spans), the last ones shown


def _fold_finished(views: list[View]) -> None:
    """Shape a live run's trees for a frame: a finished span whose spans below all finished too keeps its line but
    not its children (`folded`: how many spans are under it), and of the finished siblings under one span only the
    last LIVE_FINISHED_SHOWN stay, the earlier ones replaced by one stand-in (`not_shown`: what render_tree prints
    in their place). In-flight spans, and every span on the way to one, always stay. Mutates `views`."""
    # Bottom-up (a reversed pre-order visits children before parents): the size of and whether anything is in
    # flight in each subtree. Iterative: an agent can nest spans deeper than Python's recursion limit.
    below: dict[int, int] = {}
    live_below: dict[int, bool] = {}
    for view, _ in reversed(walk(views)):
        kids = view.get("children") or []
        below[id(view)] = sum(below[id(kid)] + 1 for kid in kids)
        live_below[id(view)] = any(live_below[id(kid)] or kid.get("status") in LIVE for kid in kids)

    def keep(siblings: list[View]) -> list[View]:
        done = [v for v in siblings if v.get("status") not in LIVE and not live_below[id(v)]]
        dropped = {id(v) for v in done[: max(0, len(done) - LIVE_FINISHED_SHOWN)]}
        if not dropped:
            return siblings
        kept: list[View] = []
        left_out = 0  # of the dropped spans since the last one kept: one stand-in for each such stretch
        for view in [*siblings, None]:
            if view is not None and id(view) in dropped:
                left_out += 1
                continue
            if left_out:
                text = f"{_plural(left_out, 'earlier finished span')} (and the spans under them) not shown"
                kept.append({"not_shown": text, "children": []})
                left_out = 0
            if view is not None:
                kept.append(view)
        return kept

    views[:] = keep(views)
    stack = list(views)
    while stack:
        view = stack.pop()
        kids = view.get("children") or []
        if not kids:
            continue
        if view.get("status") not in LIVE and not live_below[id(view)]:
            view["folded"] = below[id(view)]
            view["children"] = []
            continue
        view["children"] = keep(kids)
        stack.extend(v for v in view["children"] if not v.get("not_shown"))


def _live_details(view: View) -> list[str]:
    # A finished span keeps its error, not its previews: what it was asked and answered is what `show` prints;
    # here the frame must stay on a screen. An in-flight span shows what it is working on.
    found = detail_lines(view)
    return found if view.get("status") in LIVE else [line for line in found if line.startswith("error: ")]


def _live_notes(view: View) -> str:
    notes = []
    if view.get("status") in LIVE:
        notes.append("[in flight]")
    if view.get("folded"):
        notes.append(f"[{_plural(view['folded'], 'finished span')} below]")
    return "  ".join(notes)


def render_live(snapshot: Mapping[str, Any], *, now_us: int) -> str:
    """One frame of `prefactor-otel show --watch`: the runs still in flight (`pending`/`active`) as they grow.

    Each run: a header (running for how long, how many spans in flight), the totals line of `render_runs` (spans,
    errors, tokens so far, models, tools), then its spans as a tree: finished spans with their status and duration,
    in-flight ones timed since they started (at `now_us`) and marked `[in flight]`. To keep a frame on a screen, a
    finished span shows its error but not its input/output previews, a finished span whose spans below all finished
    shows as one line (`[N finished spans below]`), and only the last LIVE_FINISHED_SHOWN finished spans under one
    span are listed (`_fold_finished`); the totals count them all.
    Finished runs are only counted."""
    instances = [i for i in snapshot.get("instances") or [] if isinstance(i, Mapping)]
    live = [i for i in instances if i.get("status") in LIVE]
    live_ids = {str(i.get("id")) for i in live}
    spans = [
        s for s in snapshot.get("spans") or [] if isinstance(s, Mapping) and str(s.get("agent_instance_id")) in live_ids
    ]
    versions = snapshot.get("agent_versions") or []
    views = run_views({"instances": live, "spans": spans, "agent_versions": versions})

    def timing(view: View) -> str:
        if view.get("status") in LIVE:
            return f"{_elapsed(view.get('started_at'), now_us)} so far"
        return _duration(view)

    lines: list[str] = [] if views else ["no live agent runs"]
    for run in views:
        trees = run.get("spans") or []
        flying = sum(1 for view, _ in walk(trees) if view.get("status") in LIVE)
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
                    f"{_plural(flying, 'span')} in flight",
                ]
            )
        )
        lines.append(totals_line(run))
        lines.extend(continues_lines(run))
        _fold_finished(trees)
        # A span whose parent has not arrived yet is drawn at the top level for now: that is not an orphan.
        render_tree(trees, lines, timing, mark_orphans=False, notes=_live_notes, details=_live_details)
    done = len(instances) - len(live)
    if done:
        lines += ["", f"{_plural(done, 'finished run')} not shown"]
    return "\n".join(lines) + "\n"
