"""One pass over a long string that tells which default value rules can change it (google-re2's `Set`), so that
the per-rule scans run only on the few texts that hold a trigger, and then only the rules whose trigger is there.
Optional: without `google-re2` installed, `long_text_gate()` is None and the Redactor scans each long string rule by
rule, as it always did. The outcome is the same either way (tests/test_redaction_prefilter.py compares the two on
every rule's secrets and on fuzzed text).

Why: each 1 KB message string costs the stdlib path about 8 µs (a lowered copy and one substring search per
case-insensitive trigger, about 0.5 µs each, plus the gated regex scans); the RE2 set decides in about 1.8 µs,
whatever its patterns (its DFA walks about 2 ns a byte; a set of one literal costs the same). The stdlib
alternatives measured slower than the per-rule scans (an alternation of the triggers: 9 µs on the lowered text,
44 µs with IGNORECASE).

Fails open: RE2 answers "no match" when its DFA runs out of memory, so the set holds one more pattern, `\\z` (the
end of the text), which every text matches. An answer without it is a failed pass, and every rule then runs, as
without the prefilter. The patterns (`secret_patterns.PREFILTER_PATTERNS`: literals, a few simple classes and the
private-key probes' counted runs) keep the DFA small on ordinary text.

Signals: patterns that name no rule but something else the same pass can tell for free (redaction.py's one: that
the text may hold a JSON object key a key rule masks, so the walk of the parsed sections is needed). `select`
reports a signal's name beside the rule names; a failed pass (None) stands for every signal too.

Pure after construction: `LongTextGate.select` / `may_match` read a compiled RE2 set (thread-safe in RE2) and
immutable tables, from any mapping thread, without a lock.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

END_OF_TEXT = r"\z"  # matches every text once, at its end: its absence from an answer means a failed pass


class LongTextGate:
    """`select(text)`: the names of the rules that may change `text` (empty when none can: the common case), or None
    when the pass failed (then every rule must run)."""

    __slots__ = ("_always", "_match", "_nothing", "_rules_of", "signals")

    def __init__(
        self,
        re2: Any,
        patterns: Mapping[str, str],
        always: frozenset[str],
        signals: Mapping[str, str] | None = None,
    ) -> None:
        """`patterns`: rule name -> the RE2 pattern every text the rule can change contains; `always`: rules that
        may change any text (always reported); `signals`: name -> pattern of what else the pass reports (no rule)."""
        signals = dict(signals or {})
        self.signals = frozenset(signals)
        patterns = {**patterns, **signals}
        regex_set = re2.Set.SearchSet(re2.Options())
        distinct = list(dict.fromkeys(patterns.values()))  # each distinct pattern once
        for pattern in distinct:
            regex_set.Add(pattern)
        regex_set.Add(END_OF_TEXT)
        regex_set.Compile()
        self._match = _direct_match(regex_set)
        # pattern index -> the rules it stands for (two rules may share a pattern)
        self._rules_of = tuple(
            frozenset(name for name, own in patterns.items() if own == pattern) for pattern in distinct
        )
        self._nothing = [len(distinct)]  # an answer holding only the end of the text
        self._always = frozenset(always)

    def select(self, text: str) -> frozenset[str] | None:
        # UTF-8 bytes, lone surrogates kept as bytes no pattern's literal matches (`str.encode` would raise on them);
        # the literals are ASCII, which UTF-8 never hides inside another character. Either matcher answers a list of
        # the patterns found (an empty list, or None from the wrapper, when there are none: a failed pass).
        found = self._match(text.encode("utf-8", "surrogatepass"))
        if found == self._nothing:
            return self._always
        end = self._nothing[0]
        if not found or end not in found:
            return None  # out of memory (or another failure): fail open
        names: set[str] = set(self._always)
        for index in found:
            if index != end:
                names.update(self._rules_of[index])
        return frozenset(names)

    def may_match(self, text: str) -> bool:
        """Whether any rule may change `text` (a failed pass: True); signals are no rules."""
        names = self.select(text)
        return names is None or bool(names - self.signals)


# Texts both matchers must answer alike before the compiled set's own `Match` is used: none, and each probe.
_PROBES = (b"", b"plain text", b"sk-proj-abcdefghijklmnopqrstuvwxyz012345 Bearer abc.def-ghi password=hunter22")


def _direct_match(regex_set: Any) -> Callable[[bytes], Any]:
    """The compiled set's own `Match` (google-re2's `Set` wraps it in a Python method that tests the argument's
    type and turns an empty list into None: a frame per long string, ~0.1 us), when the wrapper holds one that
    answers as the wrapper does on the probes; else the wrapper's `Match` (another google-re2 layout)."""
    public = regex_set.Match
    inner = getattr(getattr(regex_set, "_set", None), "Match", None)
    if inner is None:
        return public  # type: ignore[no-any-return]
    try:
        for probe in _PROBES:
            found = inner(probe)
            if type(found) is not list or sorted(found) != sorted(public(probe) or []):
                return public  # type: ignore[no-any-return]
    except Exception:
        return public  # type: ignore[no-any-return]
    return inner  # type: ignore[no-any-return]


def long_text_gate(
    rule_names: Iterable[str],
    patterns: Mapping[str, str],
    always: frozenset[str],
    signals: Mapping[str, str] | None = None,
) -> LongTextGate | None:
    """The gate for these default rules (and signals), or None: google-re2 is not installed, or a rule has no
    pattern (a rule added without one must not be skipped)."""
    names = list(rule_names)
    if any(name not in patterns and name not in always for name in names):
        return None
    try:
        re2 = importlib.import_module("re2")
    except ImportError:
        return None
    return LongTextGate(re2, {name: patterns[name] for name in names if name in patterns}, always, signals)
