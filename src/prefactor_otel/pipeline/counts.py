"""The counters of one pipeline and the parts around it, gathered into one set of Counters.

The exporter's `stats()` (sdk/stats.py) and each gateway pipeline's (gateway/targets.py) read the same parts the
same way: every part counts in its own Counter, written by the thread doing the work; here each is copied with
`dict(counter)` first (one C call, which a key added meanwhile by another thread cannot break) and summed. The
spool's counters carry its drops as `dropped:<reason>`. Called on any thread; takes no lock of its own (the
pipeline's `collect` takes its state lock).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from prefactor_otel.pipeline.backlog import Backlog
from prefactor_otel.pipeline.pipeline import Pipeline


class Counting(Protocol):
    @property
    def counters(self) -> Counter[str]: ...


@dataclass
class Counts:
    counters: Counter[str] = field(default_factory=Counter)
    dropped: Counter[str] = field(default_factory=Counter)  # spans only, by reason
    actions_dropped: Counter[str] = field(default_factory=Counter)  # rejected instance actions
    queued: int = 0
    open_traces: int = 0


def gather(
    counters: Counter[str],
    dropped: Counter[str],
    pipeline: Pipeline | None,
    parts: Iterable[Counting | None],
    backlog: Backlog | None,
) -> Counts:
    """The owner's own `counters` and `dropped`, the pipeline's, each part's, and the backlog's and its spool's."""
    counts = Counts(Counter(dict(counters)), Counter(dict(dropped)))
    if pipeline is not None:
        counts.queued, counts.open_traces = pipeline.collect(counts.counters, counts.dropped, counts.actions_dropped)
    for part in parts:
        if part is not None:
            counts.counters.update(dict(part.counters))
    if backlog is not None:
        counts.counters.update(dict(backlog.counters))
        counts.dropped.update(dict(backlog.dropped))
        counts.actions_dropped.update(dict(backlog.actions_dropped))
        for key, value in dict(backlog.spool.counters).items():
            if key.startswith("dropped:"):
                counts.dropped[key.removeprefix("dropped:")] += value
            else:
                counts.counters[key] += value
    return counts
