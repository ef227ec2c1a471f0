"""The value rules of redaction: secret-looking substrings (keys, tokens, JWTs, private keys, credentials in
URLs, `password=...` assignments) and the cheap literal gates that let most strings skip each regex.

`default_rules()` builds the defaults; `PatternRule(name, pattern)` a user's PREFACTOR_REDACT_PATTERNS entry.
redaction.py (the Redactor) decides which strings they run on, through `ValueRule`: a name, a gate, whether it
wants the lowered text, and `apply`. Most rules are one regex (`PatternRule`); the few that locate a secret another
way are rules of their own with the same interface. Pure: rules are immutable once built, so any thread may apply
them.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Sequence
from typing import Protocol


class ValueRule(Protocol):
    """What the Redactor applies to a string: `gate`, a literal every match contains (None: no gate), checked by
    the Redactor before `apply`; `lower`, whether `apply` wants the lowered text; `name`, what its marker and the
    redaction log say."""

    name: str
    gate: str | None
    lower: bool

    def apply(self, text: str, lowered: str | None) -> tuple[str, int]:
        """`(text with matches replaced, number replaced)`; `lowered` is `text.lower()` when the rule wants it."""
        ...


class PatternRule:
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


class _AnchoredRule:
    """A case-insensitive rule located by its key words: `str.find` in the lowered text finds each occurrence and
    the regex is only matched at the few positions where such a key can start. Scanning a whole text with a
    case-insensitive alternation costs about a hundred times more, and key words such as `token` occur in ordinary
    GenAI text. `anchors`: (word, offsets): a match may start that many characters before the word."""

    __slots__ = ("anchors", "gate", "lower", "marker", "name", "pattern", "whole_text")

    def __init__(self, name: str, pattern: str, anchors: tuple[tuple[str, tuple[int, ...]], ...]) -> None:
        # The same pattern scanned over the whole text, its key words as triggers: for the rare text whose lowered
        # form has another length (positions found in it would not be the text's).
        self.whole_text = PatternRule(name, pattern, triggers=tuple(word for word, _ in anchors), lower=True)
        self.name = name
        self.gate: str | None = None
        self.lower = True
        self.pattern = self.whole_text.pattern
        self.marker = self.whole_text.marker
        self.anchors = anchors

    def apply(self, text: str, lowered: str | None) -> tuple[str, int]:
        haystack = lowered if lowered is not None else text.lower()
        if len(haystack) != len(text):
            return self.whole_text.apply(text, haystack)  # lower() changed the length (rare scripts)
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


class _AwsSecretRule:
    """An AWS secret access key cannot be told from other base64 by its shape alone; within 100 characters of its
    key id (`AKIA...`/`ASIA...`, either side, on the same line) it can. The id is the scan (a regex with a literal
    start, as cheap as the aws_access_key rule); only the few characters around an id are searched for the key."""

    __slots__ = ("gate", "lower", "marker", "name", "pattern")

    def __init__(self) -> None:
        self.name = "aws_secret_key"
        self.gate: str | None = "A"
        self.lower = False
        self.pattern = re.compile(_AWS_KEY_ID)  # the key id: where a secret key may be near
        self.marker = f"[REDACTED:{self.name}]"

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


KEY_BODY_RULE = "private_key"  # the body of a key is masked as the whole block is


class _PrivateKeyRule:
    """Private keys: a whole `-----BEGIN ... PRIVATE KEY-----` block (PEM, OpenSSH, PGP's `PRIVATE KEY BLOCK`), a
    BEGIN line and all that follows it when its END is not there, and key material without its BEGIN line: the
    markers were stripped, or a key was split over several values (each holding some of its lines):

    - a **PEM layout**: two or more consecutive lines of exactly 64 base64 characters (PEM, PGP armor) or 70
      (OpenSSH), and the shorter last line that follows them (`=` padding). Lines end with LF, CRLF, or the escaped
      `\n` / `\r\n` of JSON-in-a-string. A line counts only if it holds both upper and lower case letters (hex
      digests, DNA, upper-case identifiers do not). A body framed by a BEGIN line naming something public
      (`CERTIFICATE`, `PUBLIC KEY`, `PGP SIGNATURE`), or whose DER starts as a certificate or public key does, stays;
    - a **key header**: base64 starting where a private key's DER starts (a SEQUENCE holding version 0 or 1 then an
      INTEGER, SEQUENCE or OCTET STRING: PKCS#1, PKCS#8, SEC1, DSA; a PKCS#8 encryption algorithm; a PKCS#12 store),
      OpenSSH's `openssh-key-v1`, or the base64 of a whole `-----BEGIN ... PRIVATE KEY-----` block (Kubernetes
      secrets): that line, whatever its length (a key on one line, a one-line Ed25519 key), and the lines of the
      same width (64, 70, 76) after it;
    - the lines just before an `-----END ... PRIVATE KEY-----` line, whatever their width (the tail of a split key).

    Ordinary base64 stays: a single line of any width that is no key's start (a data: image, a JWT, an id), MIME's
    lines of 76 (unless a key's header starts them). Not recognised: a fragment of fewer than two lines holding
    neither a key's first line nor its END line (nothing tells it from other base64).

    Cheap on the hot path: probes that each start with a literal, so `re` / `in` scan for it in C (`-----` for the
    BEGIN and END lines, a line break followed by 64 base64 characters, the same escaped, an `M` starting a base64
    word, the base64 of `-----BEGIN` and of `openssh-key-v1`), decide whether anything else runs; GenAI text fails
    them all in about 2 us per KB. The few hits are then matched where they are (anchored), never by a scan of the
    whole text with a pattern that starts with a character class (about 100 times slower)."""

    __slots__ = ("gate", "lower", "marker", "name")

    def __init__(self) -> None:
        self.name = KEY_BODY_RULE
        self.gate: str | None = None
        self.lower = False
        self.marker = f"[REDACTED:{self.name}]"

    def apply(self, text: str, lowered: str | None) -> tuple[str, int]:
        found: list[tuple[int, int]] = []
        if "-" in text:
            _marked_blocks(text, found)
        # Each probe behind a one-character test (a memchr, ~50 times cheaper than a scan of the text): a line
        # break, a backslash, an `M`, the `X` of _OPENSSH and the `J` of _BASE64_PEM; GenAI text lacks most of them.
        if ("\n" in text and _WIDTH_PROBE.search(text) is not None) or (
            "\\" in text and _ESCAPED_WIDTH_PROBE.search(text) is not None
        ):
            _pem_layouts(text, found)
        header = "M" in text and _HEADER_PROBE.search(text) is not None
        literals = (
            [literal for literal, mark in ((_OPENSSH, "X"), (_BASE64_PEM, "J")) if mark in text and literal in text]
            if "X" in text or "J" in text  # most text has neither: no list built
            else _NO_LITERALS
        )
        if header or literals:
            _key_headers(text, found, header, literals)
        if not found:
            return text, 0
        found.sort()
        pieces: list[str] = []
        done = count = 0
        for start, end in found:
            if end <= done:
                continue  # inside the previous span
            if start < done:
                start = done  # overlapping: the previous marker already covers its head
            else:
                count += 1
                pieces.append(text[done:start])
                pieces.append(self.marker)
            done = end
        pieces.append(text[done:])
        return "".join(pieces), count


_B64_ALPHABET = "A-Za-z0-9+/"
_LINE_BREAK = r"(?:\r?\n|\\r\\n|\\n)"  # a line break: real, or escaped inside JSON-in-a-string
_LINE_BREAK_RE = re.compile(_LINE_BREAK)
_LINE_START = r"(?:(?<![A-Za-z0-9+/\\])|(?<=\\n))"  # not inside a longer base64 run (`key=` may precede)


def _width_run(width: int) -> str:
    full = f"[{_B64_ALPHABET}]{{{width}}}"
    last = f"(?:[{_B64_ALPHABET}]{{{width}}}|[{_B64_ALPHABET}]{{{width - 1}}}=|[{_B64_ALPHABET}]{{{width - 2}}}==)"
    tail = f"[{_B64_ALPHABET}]{{1,{width - 1}}}={{0,2}}"
    return f"{full}(?:{_LINE_BREAK}{full})*{_LINE_BREAK}{last}(?:{_LINE_BREAK}{tail})?(?![{_B64_ALPHABET}=])"


# The second line of any PEM layout: a line break, then (at least) 64 base64 characters. Each starts with a literal,
# so `re` scans for it in C and tries the class only after a line break (`(?:\n|\\n)` would be ten times slower).
_WIDTH_PROBE = re.compile(r"\n[A-Za-z0-9+/]{64}")
_ESCAPED_WIDTH_PROBE = re.compile(r"\\n[A-Za-z0-9+/]{64}")  # the same inside JSON-in-a-string
_PEM_LAYOUT = re.compile(_LINE_START + "(?:" + _width_run(64) + "|" + _width_run(70) + ")")
_PUBLIC_BEGIN = re.compile(r"-----BEGIN (?P<label>[A-Z0-9 ]+)-----(?:[ \t]*" + _LINE_BREAK + r"){1,2}\Z")
# `M` (DER's SEQUENCE) at the start of a base64 word, with a definite length (A-H: short form, I: long form) and
# enough characters to decode the header from.
_HEADER_PROBE = re.compile(r"M(?:(?<![A-Za-z0-9+/]M)|(?<=\\nM))[A-I][A-Za-z0-9+/]{30}")
_BASE64_PEM = "LS0tLS1CRUdJTi"  # base64 of "-----BEGIN"
_NO_LITERALS: list[str] = []  # never mutated
_OPENSSH = "b3BlbnNzaC1rZXktdjE"  # base64 of "openssh-key-v1" (an OpenSSH private key)
_B64_WORD = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_KEY_WIDTHS = (64, 70, 76)
_B64_START = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789/+")
# A BEGIN ... END block (PEM, OpenSSH, PGP's `PRIVATE KEY BLOCK`; a BEGIN line without its END: to the end of the
# value), or an END line alone (the lines before it are the tail of a key). One scan: the regex starts with "-----".
_MARKED = re.compile(
    r"-----(?:(?P<block>BEGIN[A-Z ]*PRIVATE KEY(?: BLOCK)?-----.*?(?:-----END[A-Z ]*PRIVATE KEY(?: BLOCK)?-----|\Z))"
    r"|END[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----)",
    re.DOTALL,
)
_REVERSED_BODY = re.compile(r"(?:n\\|r\\|[A-Za-z0-9+/=\r\n])*")  # base64 lines read backwards ("\\n" reversed)
_END_LOOKBACK = 16384  # characters searched backwards from an END line (a 4096-bit RSA key is about 3,300)
_PBE_OIDS = (b"\x06\x09\x2a\x86\x48\x86\xf7\x0d\x01\x05", b"\x06\x0a\x2a\x86\x48\x86\xf7\x0d\x01\x0c\x01")


def _mixed_case(line: str) -> bool:
    return line.upper() != line and line.lower() != line


def _decoded(text: str, start: int, size: int) -> bytes:
    """The bytes of (at most) the first `size` base64 characters from `start`, whole quartets only."""
    chars = _B64_WORD.match(text, start, start + size).group().rstrip("=")  # type: ignore[union-attr]
    try:
        return binascii.a2b_base64(chars[: len(chars) // 4 * 4])
    except (binascii.Error, ValueError):
        return b""


def _der_body(head: str) -> bytes:
    """What follows the outer SEQUENCE header of the DER that base64 starts with (its first 32 characters), or
    b"" when it does not start with one."""
    der = _decoded(head, 0, 32)
    if len(der) < 12 or der[0] != 0x30:
        return b""
    length = der[1]
    body = der[2:] if length < 0x80 else der[2 + (length & 0x7F) :] if 0x81 <= length <= 0x83 else b""
    return body if len(body) >= 4 else b""


def _public_der(head: str) -> bool:
    """Whether base64 starts with the DER of something public: a SEQUENCE opening with a SEQUENCE that starts with an
    OID (a public key's algorithm), a [0] version or an INTEGER (a certificate, a certificate request) and is no
    encryption algorithm."""
    body = _der_body(head)
    if body[:1] != b"\x30" or _private_der(head):
        return False
    inner = body[1]
    content = body[2:] if inner < 0x80 else body[2 + (inner & 0x7F) :]
    return content[:1] in (b"\x06", b"\xa0", b"\x02")


def _private_der(head: str) -> bool:
    """Whether base64 starts with the DER of a private key (decoded from its first 32 characters)."""
    body = _der_body(head)
    if not body:
        return False
    if body[0] == 0x02 and body[1] == 0x01:  # INTEGER version: PKCS#1, PKCS#8, SEC1, DSA; PKCS#12 (3)
        return (body[2] in (0, 1) and body[3] in (0x02, 0x30, 0x04)) or (body[2] == 3 and body[3] == 0x30)
    if body[0] == 0x30:  # EncryptedPrivateKeyInfo: SEQUENCE { AlgorithmIdentifier { a PKCS#5 / PKCS#12 PBE }, ...}
        inner = body[1]
        algorithm = body[2:] if inner < 0x80 else body[2 + (inner & 0x7F) :]
        return algorithm.startswith(_PBE_OIDS)
    return False


def _pem_layouts(text: str, found: list[tuple[int, int]]) -> None:
    """Each probe hit is a line break followed by a long line: the layout starts at the line before it (64 or 70
    characters back) or at the line after it. Anchored matches only: a scan of the whole text with a pattern that
    starts with a lookbehind would cost about 100 ns a character (a megabyte of one-line base64: 0.1 s)."""
    for probe, newline, carriage_return in ((_WIDTH_PROBE, "\n", "\r"), (_ESCAPED_WIDTH_PROBE, "\\n", "\\r")):
        if len(newline) == 2 and "\\" not in text:
            continue
        breadth = len(newline)
        hit = probe.search(text)
        while hit is not None:
            at = hit.start()
            resume = at + 1
            line_end = at - breadth if text[at - breadth : at] == carriage_return else at
            for start in (line_end - 64, line_end - 70, at + breadth):
                match = _PEM_LAYOUT.match(text, start) if start >= 0 else None
                if match is not None:
                    if _key_layout(text, match):
                        found.append(match.span())
                    resume = match.end()  # a layout that is no key (a certificate) is passed over whole
                    break
            hit = probe.search(text, resume)


def _key_layout(text: str, match: re.Match[str]) -> bool:
    lines = _LINE_BREAK_RE.split(match.group())
    if not all(_mixed_case(line) for line in lines if len(line) >= 64):
        return False  # hex digests, sequences, identifiers: not base64 of key material
    start = match.start()
    framed = _PUBLIC_BEGIN.search(text, max(0, start - 100), start)
    if framed is not None and "PRIVATE" not in framed.group("label") and not _private_der(lines[0]):
        return False  # a certificate's or a public key's body
    return not _public_der(lines[0])  # the same without its BEGIN line


def _key_headers(text: str, found: list[tuple[int, int]], header: bool, literals: list[str]) -> None:
    starts = [match.start() for match in _HEADER_PROBE.finditer(text) if _private_der(match.group())] if header else []
    for literal in literals:
        at = text.find(literal)
        while at != -1:
            word_start = at == 0 or text[at - 1] not in _B64_START or text[at - 2 : at] == "\\n"
            if word_start and (literal is _OPENSSH or b"PRIVATE KEY" in _decoded(text, at, 80)):
                starts.append(at)
            at = text.find(literal, at + 1)
    for start in starts:
        end = _B64_WORD.match(text, start).end()  # type: ignore[union-attr]
        width = end - start
        if width < 40:
            continue
        if width in _KEY_WIDTHS:  # a wrapped key: the following lines of the same width, and the last
            while True:
                brk = _LINE_BREAK_RE.match(text, end)
                if brk is None:
                    break
                line_end = _B64_WORD.match(text, brk.end()).end()  # type: ignore[union-attr]
                length = line_end - brk.end()
                if length == 0 or length > width:
                    break
                end = line_end
                if length < width:
                    break
        found.append((start, end))


def key_line_items(items: Sequence[object]) -> list[int]:
    """The indexes of the items of a sequence attribute that are lines of a key body: two or more consecutive strings
    of exactly 64 or 70 base64 characters (mixed case, as in `_pem_layouts`) and the shorter base64 string after
    them. A key split over a string array, one line per item, is as much a key as one split over values."""
    found: list[int] = []
    run: list[int] = []
    width = 0
    for index, item in enumerate([*items, None]):
        line = item if isinstance(item, str) else ""
        full = len(line) in (64, 70) and _mixed_case(line) and _B64_WORD.fullmatch(line) is not None
        if full and (not run or len(line) == width):
            run.append(index)
            width = len(line)
            continue
        if len(run) >= 2 and not _public_der(items[run[0]]):  # type: ignore[arg-type]
            found.extend(run)
            if 0 < len(line) < width and _B64_WORD.fullmatch(line) is not None:
                found.append(index)  # the last line
        run, width = ([index], len(line)) if full else ([], 0)
    return found


def _marked_blocks(text: str, found: list[tuple[int, int]]) -> None:
    done = 0  # each character is walked over once however many END lines there are
    for marker in _MARKED.finditer(text):
        if marker.group("block") is not None:
            found.append(marker.span())
            done = marker.end()
            continue
        low = max(done, marker.start() - _END_LOOKBACK)
        done = marker.end()
        body = _REVERSED_BODY.match(text[low : marker.start()][::-1])
        length = body.end() if body is not None else 0
        if text[marker.start() - length : marker.start()].strip("\r\n"):
            found.append((marker.start() - length, marker.end()))


class _WebhookRule:
    """Incoming-webhook URLs, whose path (or `sig`) is the credential: whoever has it can post as the app. Slack
    (`hooks.slack.com/services|workflows|triggers/...`), Discord (`discord.com/api/webhooks/<id>/<token>`), Microsoft
    Teams (`*.webhook.office.com/webhookb2/...`, `outlook.office.com/webhook/...`) and the Power Automate / Logic
    Apps workflow URLs Teams now uses (`...logic.azure.com/workflows/...&sig=<signature>`). The host and the route
    stay, the secret part becomes the marker.

    Hosts are case-insensitive: each shape is a case-sensitive regex starting with a literal, run on the lowered
    text (same positions as the text) and only when its trigger is in it; a `/` gate dismisses most text first. A
    case-insensitive alternation scanned over the text costs about 50 ns a character (a megabyte of base64 holding
    "hook" by chance: 50 ms)."""

    __slots__ = ("gate", "lower", "marker", "name")

    def __init__(self) -> None:
        self.name = "webhook_url"
        self.gate: str | None = "/"
        self.lower = True
        self.marker = f"[REDACTED:{self.name}]"

    def apply(self, text: str, lowered: str | None) -> tuple[str, int]:
        if "/" not in text:
            return text, 0  # (the Redactor checks the gate first; kept for a direct call)
        haystack = lowered if lowered is not None else text.lower()
        if len(haystack) != len(text):
            haystack = _ascii_lower(text)  # lower() changed the length (rare scripts): ASCII only, same positions
        spans: list[tuple[int, int]] = []
        for trigger, patterns in _WEBHOOKS:
            if trigger in haystack:
                for pattern in patterns:
                    spans.extend(match.span("secret") for match in pattern.finditer(haystack))
        if not spans:
            return text, 0
        spans.sort()
        pieces: list[str] = []
        done = count = 0
        for start, end in spans:
            if start < done:
                continue
            pieces.append(text[done:start])
            pieces.append(self.marker)
            done = end
            count += 1
        pieces.append(text[done:])
        return "".join(pieces), count


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _ascii_lower(text: str) -> str:
    return text.translate(_ASCII_LOWER)


# (trigger, patterns): on the lowered text, each pattern starting with a literal; `secret` is what is masked.
_SIGNED_WORKFLOW = r"[^\s\"'<>]*?(?:[?&]|\\u0026|&amp;)sig=(?P<secret>[a-z0-9%_-]{8,})"
_WEBHOOKS: tuple[tuple[str, tuple[re.Pattern[str], ...]], ...] = (
    (
        "hooks.slack",
        (re.compile(r"hooks\.slack\.com/(?:services|workflows|triggers)/(?P<secret>[a-z0-9]+(?:/[a-z0-9_-]+)+)"),),
    ),
    (
        "webhook",
        (
            re.compile(r"discord(?:app)?\.com/api/(?:v\d+/)?webhooks/\d+/(?P<secret>[a-z0-9_-]{16,})"),
            re.compile(r"\.webhook\.office\.com/webhookb2/(?P<secret>[a-z0-9@/_-]{16,})"),
            re.compile(r"outlook\.office(?:365)?\.com/webhook/(?P<secret>[a-z0-9@/_-]{16,})"),
        ),
    ),
    (
        "sig=",
        (re.compile(r"logic\.azure\.com" + _SIGNED_WORKFLOW), re.compile(r"powerplatform\.com" + _SIGNED_WORKFLOW)),
    ),
)


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
        PatternRule("api_key", r"sk-" + token + "{16,}", gate="-", boundary=True),  # OpenAI, Anthropic (sk-ant-)
        PatternRule("bearer_token", r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]{8,}", triggers=("bearer",), lower=True),
        # Authorization / Proxy-Authorization: Basic <base64 of user:password>
        PatternRule(
            "basic_auth",
            r"(?i)authorization" + _ASSIGNED + r"basic\s+(?P<secret>[A-Za-z0-9+/=._~-]{4,})",
            triggers=("authoriz",),
            lower=True,
        ),
        PatternRule("jwt", r"eyJ" + token + "{8,}\\." + token + "{8,}\\." + token + "{8,}", gate="J", boundary=True),
        # Runs before aws_access_key, which then masks the key id it looked for.
        _AwsSecretRule(),
        PatternRule("aws_access_key", _AWS_KEY_ID, gate="A", boundary=True),
        PatternRule(
            "github_token", r"(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,})", gate="_", boundary=True
        ),
        PatternRule("google_api_key", r"AIza" + token + "{35}", gate="z", boundary=True),
        PatternRule("slack_token", r"xox[abposr]-[A-Za-z0-9-]{10,}", gate="-", boundary=True),
        # Private keys: whole blocks, and a key's body without its BEGIN line (split over values, markers stripped).
        _PrivateKeyRule(),
        PatternRule(
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
        PatternRule("url_credentials", r"://[^\s:/@\"'\\]+:(?P<secret>[^\s@/\"'\\]+)@", gate="@"),
        _WebhookRule(),
    ]


# Literals of which every default match contains one (case variants of the case-insensitive rules included).
SHORT_GATE_LITERALS = (
    "sk-", "eyJ", "AKIA", "ASIA", "gh", "github_pat_", "AIza", "xox", "-----", "://",
    "bearer", "Bearer", "BEARER", "passw", "Passw", "PASSW", "pwd", "Pwd", "PWD",
    "uthoriz", "UTHORIZ", "ecret", "ECRET", ".com/", ".COM/",
)  # fmt: skip
# (Each literal costs every short string a little: "-----" stands for the BEGIN and END lines, ".com/" for the
# webhook hosts (`.com` alone is in most server addresses); a Power Automate URL with its `sig` and the base64 of a
# PEM block are longer than a short string.)
# Every default match that a short value can hold contains one of the literals or this: a key's DER header (a
# one-line Ed25519 key is 64 characters, the first line of a split key too).
SHORT_GATE_PATTERN = "|".join([*map(re.escape, SHORT_GATE_LITERALS), _HEADER_PROBE.pattern])


# For long strings, with google-re2 installed (prefilter.py): per default rule, an RE2 pattern that every text the
# rule can change contains, before lower-casing (`(?i)` in RE2 folds the Kelvin sign and the long s as `str.lower`
# does, and more), so that one pass over a text tells which of them can change it. A rule missing from both this
# table and ALWAYS_RUN turns the prefilter off (tests/test_redaction_prefilter.py checks that none is).
_B64_RUN = "[A-Za-z0-9+/]"
# The private-key rule changes nothing unless one of its probes hits (`_PrivateKeyRule.apply`): a BEGIN or END line
# (`_MARKED`), a line break then 64 base64 characters, real or escaped (`_WIDTH_PROBE`, `_ESCAPED_WIDTH_PROBE`), an
# `M` starting a base64 word then a DER length and 30 more (`_HEADER_PROBE`: its lookbehinds, which RE2 lacks, as the
# character before: none, a non-base64 one, or an escaped `\n`), or the base64 of `openssh-key-v1` or `-----BEGIN`.
# The runs are shortened to 16 and 8 (still necessary, rarely met by prose): the set's DFA tracks every pattern at
# once, so each position of a counted run multiplies its states on base64-heavy text (3.3 MB of PEM, base64 and
# key-like fragments: with 64 and 30 the set grew 5.2 MB and its first pass took 91 ms, 15x the set without the
# probes; with 16 and 8, 1.3 MB and 60 ms; on ordinary text the three cost the same).
# tests/test_redaction_prefilter.py checks each form against the Python probes.
_PRIVATE_KEY_PROBES = "|".join(
    (
        "-----(?:BEGIN[A-Z ]*|END[A-Z0-9 ]*)PRIVATE KEY",
        r"\n" + _B64_RUN + "{16}",
        r"\\n" + _B64_RUN + "{16}",
        "(?:^|[^A-Za-z0-9+/])M[A-I]" + _B64_RUN + "{8}",
        r"\\nM[A-I]" + _B64_RUN + "{8}",
        _OPENSSH,
        _BASE64_PEM,
    )
)
PREFILTER_PATTERNS: dict[str, str] = {
    "api_key": "sk-",
    "bearer_token": "(?i)bearer",  # its trigger, searched in the lowered text
    "basic_auth": "(?i)authoriz",
    "jwt": "eyJ",
    "aws_secret_key": "AKIA|ASIA",  # the key id it looks near
    "aws_access_key": "AKIA|ASIA",
    "github_token": "gh[pousr]_|github_pat_",
    "google_api_key": "AIza",
    "slack_token": "xox",
    KEY_BODY_RULE: _PRIVATE_KEY_PROBES,
    "password": "(?i)(?:passw|pwd)",
    "secret_assignment": "(?i)secret",  # its anchor word
    "url_credentials": "://[^/@]+@",  # `://user:password@`: no `/` or `@` between `://` and the `@`
    "webhook_url": r"(?i)(?:hooks\.slack|webhook|sig=)",
}
# Default rules the prefilter does not cover: run on every long string. None now: the private-key probes, once run on
# every long string (folding them into the set was unsafe while a set out of memory answered "no match"), are in
# the table since the set fails open (prefilter.py).
ALWAYS_RUN: frozenset[str] = frozenset()
