"""The value rules of redaction: secret-looking substrings (keys, tokens, JWTs, private keys, credentials in
URLs, `password=...` assignments) and the cheap literal gates that let most strings skip each regex.

`default_rules()` builds the defaults; `ValueRule(name, pattern)` a user's PREFACTOR_REDACT_PATTERNS entry.
redaction.py (the Redactor) decides which strings they run on. Pure: rules are immutable once built, so any
thread may apply them.
"""

from __future__ import annotations

import re


class ValueRule:
    """One value pattern and the cheap checks that let most strings skip it.

    `gate`: a literal every match contains (mostly one character); `c in text` for one character is a memchr, so it
    dismisses most values at almost no cost. `triggers`: literals of which every match contains one, searched in the
    lower-cased text when `lower` (for the case-insensitive rules, whose regexes are slow to scan); None: the regex is
    the scan, which is fast when it starts with a literal (CPython's `re` then searches for that prefix directly;
    a leading `\\b` would defeat that, so `boundary` checks the character before a match instead).
    """

    __slots__ = ("boundary", "gate", "lower", "marker", "name", "pattern", "triggers")

    def __init__(
        self,
        name: str,
        pattern: str,
        *,
        gate: str | None = None,
        triggers: tuple[str, ...] | None = None,
        lower: bool = False,
        boundary: bool = False,
        flags: int = 0,
    ) -> None:
        self.name = name
        self.pattern = re.compile(pattern, flags)
        self.gate = gate
        self.triggers = triggers
        self.lower = lower
        self.boundary = boundary
        self.marker = f"[REDACTED:{name}]"

    def apply(self, text: str, lowered: str | None) -> tuple[str, int]:
        """`(text with matches replaced, number replaced)`; `lowered` is `text.lower()` when the rule wants it."""
        if self.gate is not None and self.gate not in text:
            return text, 0
        if self.triggers is not None:
            haystack = lowered if self.lower and lowered is not None else text
            for trigger in self.triggers:
                if trigger in haystack:
                    break
            else:
                return text, 0
        if self.pattern.search(text) is None:
            return text, 0
        count = 0
        marker, boundary = self.marker, self.boundary
        has_secret_group = "secret" in self.pattern.groupindex

        def replace(match: re.Match[str]) -> str:
            nonlocal count
            start = match.start()
            if boundary and start > 0:
                before = match.string[start - 1]
                if before.isalnum() or before == "_":
                    return match.group(0)  # inside a longer word ("task-...", "risk-..."): not a key
            count += 1
            if has_secret_group:
                # Keep what frames the secret ("password=", "https://user:") so the text still reads.
                return (
                    match.string[start : match.start("secret")]
                    + marker
                    + match.string[match.end("secret") : match.end()]
                )
            return marker

        return self.pattern.sub(replace, text), count


class _AnchoredRule(ValueRule):
    """A case-insensitive rule located by its key words: `str.find` in the lowered text finds each occurrence and
    the regex is only matched at the few positions where such a key can start. Scanning a whole text with a
    case-insensitive alternation costs about a hundred times more, and key words such as `token` occur in ordinary
    GenAI text. `anchors`: (word, offsets): a match may start that many characters before the word."""

    __slots__ = ("anchors",)

    def __init__(self, name: str, pattern: str, anchors: tuple[tuple[str, tuple[int, ...]], ...]) -> None:
        super().__init__(name, pattern, triggers=tuple(word for word, _ in anchors), lower=True)
        self.anchors = anchors

    def apply(self, text: str, lowered: str | None) -> tuple[str, int]:
        haystack = lowered if lowered is not None else text.lower()
        if len(haystack) != len(text):
            return super().apply(text, haystack)  # lower() changed the length (rare scripts): positions differ
        starts: set[int] = set()
        for word, offsets in self.anchors:
            at = haystack.find(word)
            while at != -1:
                starts.update(at - offset for offset in offsets if at >= offset)
                at = haystack.find(word, at + 1)
        if not starts:
            return text, 0
        pieces: list[str] = []
        done = count = 0
        for start in sorted(starts):
            if start < done:
                continue  # inside the previous match
            match = self.pattern.match(text, start)
            if match is None:
                continue
            pieces.append(text[done : match.start("secret")])
            pieces.append(self.marker)
            done = match.end("secret")
            count += 1
        if not count:
            return text, 0
        pieces.append(text[done:])
        return "".join(pieces), count


class _AwsSecretRule(ValueRule):
    """An AWS secret access key cannot be told from other base64 by its shape alone; within 100 characters of its
    key id (`AKIA...`/`ASIA...`, either side, on the same line) it can. The id is the scan (a regex with a literal
    start, as cheap as the aws_access_key rule); only the few characters around an id are searched for the key."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__("aws_secret_key", _AWS_KEY_ID, gate="A")

    def apply(self, text: str, lowered: str | None) -> tuple[str, int]:
        found: set[tuple[int, int]] = set()
        for key_id in self.pattern.finditer(text):
            line_start = text.rfind("\n", 0, key_id.start()) + 1
            line_end = text.find("\n", key_id.end())
            low = max(line_start, key_id.start() - _AWS_NEAR - 40)
            high = min(len(text) if line_end == -1 else line_end, key_id.end() + _AWS_NEAR + 40)
            for candidate in _AWS_SECRET_RE.finditer(text, low, high):
                start, end = candidate.span()
                if end < len(text) and text[end] in _BASE64_CHARS:
                    continue  # cut by the window's end: part of a longer run, not a key
                found.add((start, end))
        if not found:
            return text, 0
        pieces: list[str] = []
        done = 0
        for start, end in sorted(found):
            pieces.append(text[done:start])
            pieces.append(self.marker)
            done = end
        pieces.append(text[done:])
        return "".join(pieces), len(found)


# `key": "value`, `key=value`, `key: value` (also with escaped quotes, inside JSON-in-a-string): the value only.
_ASSIGNED = r"(?:\\?[\"'])?\s*[:=]\s*(?:\\?[\"'])?"
# An assigned value that is a secret: not a JSON literal, number, object or array (masking those would break the
# JSON they sit in, and they are not credentials).
_ASSIGNED_VALUE = r"(?P<secret>(?![\[{]|(?:null|true|false|-?\d+(?:\.\d+)?)(?![^\s\"'\\,;&}]))[^\s\"'\\,;&}]+)"
_AWS_SECRET_RE = re.compile(r"(?<![A-Za-z0-9/+=])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])")  # 40 characters of base64
_BASE64_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789/+=")
_AWS_NEAR = 100  # characters between a key id and its secret key
_AWS_KEY_ID = r"(?:AKIA|ASIA)[0-9A-Z]{16}(?![0-9A-Z])"


def default_rules() -> list[ValueRule]:
    token = r"[A-Za-z0-9_-]"
    return [
        ValueRule("api_key", r"sk-" + token + "{16,}", gate="-", boundary=True),  # OpenAI, Anthropic (sk-ant-)
        ValueRule("bearer_token", r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]{8,}", triggers=("bearer",), lower=True),
        # Authorization / Proxy-Authorization: Basic <base64 of user:password>
        ValueRule(
            "basic_auth",
            r"(?i)authorization" + _ASSIGNED + r"basic\s+(?P<secret>[A-Za-z0-9+/=._~-]{4,})",
            triggers=("authoriz",),
            lower=True,
        ),
        ValueRule("jwt", r"eyJ" + token + "{8,}\\." + token + "{8,}\\." + token + "{8,}", gate="J", boundary=True),
        # Runs before aws_access_key, which then masks the key id it looked for.
        _AwsSecretRule(),
        ValueRule("aws_access_key", _AWS_KEY_ID, gate="A", boundary=True),
        ValueRule(
            "github_token", r"(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,})", gate="_", boundary=True
        ),
        ValueRule("google_api_key", r"AIza" + token + "{35}", gate="z", boundary=True),
        ValueRule("slack_token", r"xox[abposr]-[A-Za-z0-9-]{10,}", gate="-", boundary=True),
        ValueRule(
            "private_key",
            r"-----BEGIN[A-Z ]*PRIVATE KEY-----.*?(?:-----END[A-Z ]*PRIVATE KEY-----|\Z)",
            gate="-",
            flags=re.DOTALL,
        ),
        ValueRule(
            "password",
            # password=..., "password": "...", also inside JSON-in-a-string where quotes are escaped
            r"(?i)\b(?:password|passwd|pwd)(?:\\?[\"'])?\s*[:=]\s*(?:\\?[\"'])?(?P<secret>[^\s\"'\\,;&}]+)",
            triggers=("passw", "pwd"),
            lower=True,
        ),
        # client_secret=..., "secret_key": "...", AWS_SECRET_ACCESS_KEY: ... in free text and in JSON-in-a-string at
        # any depth (the key rules see parsed JSON only to MAX_DEPTH). Keys with "secret" only: each further key word
        # is one more scan of every long text (api_key, token, ... inside parsed JSON are the key rules' part).
        _AnchoredRule(
            "secret_assignment",
            r"(?i)secret(?:[_-]?(?:access[_-]?)?key)?" + _ASSIGNED + _ASSIGNED_VALUE,
            anchors=(("secret", (0,)),),
        ),
        # scheme://user:password@host: the password only
        ValueRule("url_credentials", r"://[^\s:/@\"'\\]+:(?P<secret>[^\s@/\"'\\]+)@", gate="@"),
    ]


# Literals of which every default match contains one (case variants of the case-insensitive rules included).
SHORT_GATE_LITERALS = (
    "sk-", "eyJ", "AKIA", "ASIA", "gh", "github_pat_", "AIza", "xox", "-----BEGIN", "://",
    "bearer", "Bearer", "BEARER", "passw", "Passw", "PASSW", "pwd", "Pwd", "PWD",
    "uthoriz", "UTHORIZ", "ecret", "ECRET",
)  # fmt: skip
