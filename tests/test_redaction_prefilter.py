"""The one-pass prefilter of long strings (mapping/prefilter.py, google-re2's Set) changes nothing but the cost:
every default rule is covered by a prefilter pattern or always runs; each case-insensitive trigger is found
whatever character `str.lower()` reads as its letters; and the Redactor with the prefilter gives exactly what the
per-rule path gives (text and log) on every rule's secrets, their case variants, user patterns, a callback, the
rule that always runs and fuzzed text. Without google-re2 installed there is no prefilter (and the comparisons
compare the per-rule path with itself)."""

from __future__ import annotations

import base64
import importlib.util
import json
import random
import sys

import pytest

from prefactor_otel.mapping.prefilter import LongTextGate, _direct_match, long_text_gate
from prefactor_otel.mapping.redaction import _SHORT, Redactor
from prefactor_otel.mapping.secret_patterns import ALWAYS_RUN, PREFILTER_PATTERNS, default_rules

HAVE_RE2 = importlib.util.find_spec("re2") is not None
WORDS = (  # noqa: SIM905 -- a word list reads better as text
    "order refund shipping account invoice address tracking warranty return policy customer support delivery "
    "package payment card subscription plan upgrade cancel status update request ticket agent please thanks help "
    "issue problem resolved escalate priority standard express weekend business days the a to of and"
).split()
# One secret (or near-secret) of each default rule, in the forms the rules read.
KEY_BODY = base64.b64encode(bytes(range(256)) * 4).decode()
PEM_LINES = [KEY_BODY[i : i + 64] for i in range(0, 640, 64)]
SAMPLES = [
    "sk-proj-AbCdEf0123456789XyZaBcDeF",
    "Authorization: Bearer tok_live_9f8e7d6c5b4a3210",
    "BEARER abcdefgh12345678",
    "Proxy-Authorization: Basic " + base64.b64encode(b"user:pass-1234").decode(),
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    "AKIAIOSFODNN7EXAMPLE wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "ASIAIOSFODNN7EXAMPLE",
    "ghp_" + "a1B2c3D4e5" * 4,
    "github_pat_" + "11ABCDEFG0" * 4,
    "AIza" + "SyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q",
    "xoxb-1234567890-abcdefghij",
    "-----BEGIN RSA PRIVATE KEY-----\n" + "\n".join(PEM_LINES) + "\n-----END RSA PRIVATE KEY-----",
    "\n".join(PEM_LINES[2:6]) + "\nAbCd==",  # a key body without its BEGIN line
    "\\n".join(PEM_LINES[2:6]) + "\\nAbCd==",  # the same inside JSON-in-a-string
    "password=hunter2hunter2",
    '{"PassWord": "s3cr3t-value"}',
    "PWD: opensesame",
    "client_secret=abc123xyz",
    'AWS_SECRET_ACCESS_KEY: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"',
    "postgres://admin:pa55word@db.internal:5432/app",
    "https://hooks.slack.com/services/T0000/B0000/XXXXXXXXXXXXXXXXXXXXXXXX",
    "https://discord.com/api/webhooks/123456789/abcdefghijklmnopqrstuvwxyz",
    "https://prod-00.westus.logic.azure.com/workflows/abc/triggers/manual/paths/invoke?api-version=1&sig=AbCdEf0123456",
    "task-0123456789abcdefghij",  # `sk-` inside a word: not a key
    "the secretary: Jane",
    "authorization: pending review",
]


def _prose(rng: random.Random, size: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(size // 6 + 1))


def _long_texts() -> list[str]:
    """Each sample inside ordinary prose (long enough for the prefilter), as text and as JSON-in-a-string, and in
    upper and lower case."""
    rng = random.Random(7)
    texts = []
    for sample in SAMPLES:
        for variant in (sample, sample.upper(), sample.lower(), json.dumps(sample)[1:-1]):
            texts.append(f"{_prose(rng, 200)} {variant} {_prose(rng, 300)}")
            texts.append(json.dumps([{"role": "user", "parts": [{"type": "text", "content": texts[-1]}]}]))
    return texts


def _both(text: str, **options: object) -> None:
    fast_log: list[dict[str, object]] = []
    slow_log: list[dict[str, object]] = []
    fast = Redactor(**options).redact_text(text, "p", fast_log)  # type: ignore[arg-type]
    slow = Redactor(prefilter=False, **options).redact_text(text, "p", slow_log)  # type: ignore[arg-type]
    assert (fast, fast_log) == (slow, slow_log), text[:200]


def test_every_default_rule_has_a_prefilter_pattern_or_always_runs() -> None:
    names = {rule.name for rule in default_rules()}
    assert names == set(PREFILTER_PATTERNS) | ALWAYS_RUN
    assert not set(PREFILTER_PATTERNS) & ALWAYS_RUN
    # A rule without a pattern turns the prefilter off rather than go unscanned.
    assert long_text_gate([*names, "new_rule"], PREFILTER_PATTERNS, ALWAYS_RUN) is None


def test_the_prefilter_is_there_exactly_when_google_re2_is() -> None:
    gate = long_text_gate((rule.name for rule in default_rules()), PREFILTER_PATTERNS, ALWAYS_RUN)
    assert (gate is not None) == HAVE_RE2
    assert Redactor(prefilter=False)._long_gate is None
    assert Redactor(defaults=False, patterns=[r"ACME-\d{4}"])._long_gate is None


def _gate() -> LongTextGate:
    gate = long_text_gate((rule.name for rule in default_rules()), PREFILTER_PATTERNS, ALWAYS_RUN)
    assert gate is not None or not HAVE_RE2
    return gate  # type: ignore[return-value]


# Letters `str.lower()` produces from characters other than themselves and their upper case (K KELVIN SIGN -> k,
# and the like), computed from this Python's Unicode tables: the case-insensitive triggers are searched in the
# lowered text, so the prefilter must find a trigger spelled with any of them.
def _lowering_sources() -> dict[str, list[str]]:
    sources: dict[str, list[str]] = {}
    for code in range(sys.maxunicode + 1):
        if 0xD800 <= code <= 0xDFFF:
            continue
        char = chr(code)
        lowered = char.lower()
        if len(lowered) == 1 and lowered.isascii() and lowered.isalpha() and char != lowered:
            sources.setdefault(lowered, []).append(char)
    return sources


CASE_INSENSITIVE_TRIGGERS = ("bearer", "authoriz", "passw", "pwd", "secret", "hooks.slack", "webhook", "sig=")


def test_case_insensitive_triggers_are_found_however_lower_reads_them() -> None:
    if not HAVE_RE2:
        assert _gate() is None
        return
    gate = _gate()
    sources = _lowering_sources()
    assert "\u212a" in sources["k"]  # KELVIN SIGN: the one non-ASCII character lower() turns into an ASCII letter
    padding = "x" * _SHORT
    checked = 0
    for trigger in CASE_INSENSITIVE_TRIGGERS:
        exotic = "".join(sources.get(char, [char])[-1] for char in trigger)
        variants = {trigger, trigger.upper(), exotic}
        for index, char in enumerate(trigger):
            for source in sources.get(char, []):
                variants.add(trigger[:index] + source + trigger[index + 1 :])
        for variant in variants:
            text = f"{padding} {variant} {padding}"
            assert trigger in text.lower()
            assert gate.may_match(text), variant
            checked += 1
    assert checked > 40


def test_ordinary_long_text_passes_the_prefilter_unscanned() -> None:
    if not HAVE_RE2:
        return
    rng = random.Random(3)
    assert not _gate().may_match(_prose(rng, 2000))
    assert not _gate().may_match(json.dumps([{"role": "user", "content": _prose(rng, 1000)}]))


@pytest.mark.parametrize("text", _long_texts())
def test_the_prefilter_changes_no_outcome_on_each_rules_secrets(text: str) -> None:
    _both(text)


def test_each_secret_is_still_redacted_in_a_long_text() -> None:
    rng = random.Random(11)
    for sample in SAMPLES[:-3]:  # the last three are no secrets
        text = f"{_prose(rng, 300)} {sample} {_prose(rng, 300)}"
        log: list[dict[str, object]] = []
        out = Redactor().redact_text(text, "p", log)
        assert "[REDACTED:" in out and log, sample


def test_user_patterns_and_the_callback_run_on_long_text_without_a_trigger() -> None:
    rng = random.Random(5)
    text = f"{_prose(rng, 400)} ticket ACME-1234 {_prose(rng, 400)}"
    _both(text, patterns=[r"ACME-\d{4}"])
    log: list[dict[str, object]] = []
    assert "[REDACTED:user_pattern_1]" in Redactor(patterns=[r"ACME-\d{4}"]).redact_text(text, "p", log)
    seen: list[str] = []

    def callback(path: str, value: str) -> str:
        seen.append(value)
        return value.replace("ticket", "T")

    _both(text, callback=callback)
    assert seen == [text, text]  # once per Redactor, with the text unchanged by the rules


def test_the_rule_that_always_runs_with_and_without_other_triggers() -> None:
    rng = random.Random(9)
    body = "\n".join(PEM_LINES[1:5]) + "\nAbCd=="
    for extra in ("", " password=hunter2", " sk-proj-AbCdEf0123456789XyZaBcDeF", " ACME-0001"):
        text = f"{_prose(rng, 200)}\n{body}\n{_prose(rng, 200)}{extra}"
        _both(text)
        _both(text, patterns=[r"ACME-\d{4}"])
    assert "[REDACTED:private_key]" in Redactor().redact_text(f"{_prose(rng, 200)}\n{body}\n", "p", [])


FRAGMENTS = [
    *PEM_LINES[:3],
    "sk-", "sk-AbCdEfGhIjKlMnOpQr", "Bearer ", "bearer", "BEARER x", "eyJ",
    "eyJhbGciOiJIUzI1.eyJzdWIiOiIx.c2lnbmF0dXJl", "AKIA", "AKIAIOSFODNN7EXAMPLE", "ASIA", "ghp_", "github_pat_",
    "AIza", "xoxb-", "xox", "-----",
    "-----BEGIN RSA PRIVATE KEY-----", "-----END PRIVATE KEY-----", "password=", "PassWd: ", "pwd=", "PWD",
    "secret", "client_secret=", "SECRET_KEY: ", "://", "user:pw@", "@", "/", "hooks.slack.com/services/",
    "webhook", "discord.com/api/webhooks/1/", "sig=", "&sig=", "\n", "\\n", "\r\n", "Authorization: Basic ",
    "authoriz", "\u212a", "\u017f", "\u0130", "\ud800", "é", "=", '"', ":", " ", "M", "MI", "MIIE",
]  # fmt: skip


def test_fuzzed_text_gets_the_same_outcome_with_and_without_the_prefilter() -> None:
    rng = random.Random(2026)
    fast, slow = Redactor(), Redactor(prefilter=False)
    for _ in range(1500):  # bounded
        pieces = []
        while sum(map(len, pieces)) < _SHORT + rng.randrange(400):
            pieces.append(rng.choice(FRAGMENTS) if rng.random() < 0.3 else rng.choice(WORDS) + " ")
        text = "".join(pieces)
        fast_log: list[dict[str, object]] = []
        slow_log: list[dict[str, object]] = []
        assert (fast.redact_text(text, "p", fast_log), fast_log) == (
            slow.redact_text(text, "p", slow_log),
            slow_log,
        ), text


def test_a_trigger_at_the_end_of_a_large_text_is_found() -> None:
    # Long varied text must not exhaust the set's DFA (RE2 would then report no match).
    rng = random.Random(1)
    alphabet = "".join(chr(c) for c in range(32, 127)) + "\n\u212a\u017fé漢"
    noise = "".join(rng.choice(alphabet) for _ in range(300_000))
    text = noise + " client_secret=abc123xyz"
    if HAVE_RE2:
        assert _gate().may_match(text)
    _both(text)


class _WrapperOnly:
    """A set wrapper laid out otherwise than google-re2's (no `_set` inside): its public `Match` is used."""

    def Match(self, text: bytes) -> list[int] | None:
        return [0] if b"sk-" in text else None


class _DisagreeingInner:
    def Match(self, text: bytes) -> list[int]:
        return [1]  # answers a match on every text: not what the wrapper says


class _WrapperWithOddInner(_WrapperOnly):
    _set = _DisagreeingInner()


def test_the_gate_matches_with_the_compiled_set_only_when_it_answers_as_the_wrapper_does() -> None:
    # google-re2's own layout: the compiled set's Match, which answers every text as the wrapper does.
    gate = _gate()
    if HAVE_RE2:
        import re2

        regex_set = re2.Set.SearchSet(re2.Options())
        for pattern in dict.fromkeys(PREFILTER_PATTERNS.values()):
            regex_set.Add(pattern)
        regex_set.Compile()
        direct = _direct_match(regex_set)
        assert direct is not regex_set.Match and type(direct(b"")) is list
        rng = random.Random(11)
        texts = [*SAMPLES, *(" ".join(rng.choices(WORDS, k=200)) for _ in range(50))]
        for text in texts:
            data = text.encode()
            assert sorted(direct(data)) == sorted(regex_set.Match(data) or [])
            assert gate.may_match(text) == (regex_set.Match(data) is not None)
    # Another layout, or an inner matcher that answers otherwise: the wrapper's public Match.
    plain = _WrapperOnly()
    assert _direct_match(plain) == plain.Match
    odd = _WrapperWithOddInner()
    assert _direct_match(odd) == odd.Match


# --------------------------------------------------------------------------- the private-key probes in the set

_PK_BODY = "IIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7"  # base64 after an `M` (a PKCS#8 header)


def _python_probes_hit(text: str) -> bool:
    """Whether any of the private-key rule's own probes finds something to look at (what the set must cover)."""
    from prefactor_otel.mapping import secret_patterns as sp

    return (
        sp._MARKED.search(text) is not None
        or sp._WIDTH_PROBE.search(text) is not None
        or sp._ESCAPED_WIDTH_PROBE.search(text) is not None
        or sp._HEADER_PROBE.search(text) is not None
        or sp._OPENSSH in text
        or sp._BASE64_PEM in text
    )


_SHARED_GATE: list[LongTextGate] = []


def _names(text: str) -> frozenset[str] | None:
    """The default gate's answer (one gate, compiled once for all these tests)."""
    if not _SHARED_GATE:
        _SHARED_GATE.append(_gate())
    return _SHARED_GATE[0].select(text)


def test_the_header_probe_is_covered_whatever_character_comes_before_it() -> None:
    # The Python probe's lookbehind (`M` starting a base64 word) is, in RE2, the character before the `M`: every
    # code point below U+0800, every surrogate (lone ones are sent as surrogatepass bytes), and a stride of the rest.
    if not HAVE_RE2:
        return
    from prefactor_otel.mapping.secret_patterns import _HEADER_PROBE, KEY_BODY_RULE

    points = [*range(0x800), *range(0xD800, 0xE000), *range(0x800, 0x110000, 97), 0xFFFF, 0x10000, 0x10FFFF]
    checked = 0
    for code in points:
        for head in ("", "\\n", "x\\n"):
            text = f"{head}{chr(code)}M{_PK_BODY}"
            if _HEADER_PROBE.search(text) is not None:
                names = _names(text)
                assert names is None or KEY_BODY_RULE in names, (hex(code), head)
                checked += 1
    assert checked > 5000
    assert KEY_BODY_RULE in (_names(f"M{_PK_BODY}") or {KEY_BODY_RULE})  # at the very start


def test_each_private_key_probe_names_the_rule_and_plain_text_does_not() -> None:
    if not HAVE_RE2:
        return
    from prefactor_otel.mapping.secret_patterns import _BASE64_PEM, _OPENSSH, KEY_BODY_RULE

    line = PEM_LINES[3]
    hits = [
        "-----BEGIN RSA PRIVATE KEY-----",
        "-----BEGIN PRIVATE KEY-----",
        "-----END OPENSSH PRIVATE KEY-----",
        "-----BEGIN PGP PRIVATE KEY BLOCK-----",
        f"x\n{line}",
        f"x\r\n{line}",
        f"x\\n{line}",
        f"x\\r\\n{line}",
        f" M{_PK_BODY}",
        f"\\nM{_PK_BODY}",
        f"x {_OPENSSH}",
        f"x {_BASE64_PEM}",
    ]
    rng = random.Random(4)
    for hit in hits:
        text = f"{_prose(rng, 200)} {hit} {_prose(rng, 200)}"
        assert _python_probes_hit(text), hit
        assert KEY_BODY_RULE in (_names(text) or set()), hit
    plain = _prose(rng, 3000).replace(" ", "\n")  # line breaks, but short words after them
    assert not _python_probes_hit(plain)
    assert _names(plain) == frozenset()
    assert _names(f"{_prose(rng, 300)} -----BEGIN CERTIFICATE----- {_prose(rng, 300)}") == frozenset()


KEYISH = [
    *PEM_LINES, *(line[:40] for line in PEM_LINES[:3]), "\n", "\r\n", "\\n", "\\r\\n", " ", "M", "MII", "MIIE",
    _PK_BODY, "-----", "-----BEGIN ", "-----END ", "PRIVATE KEY-----", "RSA ", "CERTIFICATE-----", "=", "==",
    "b3BlbnNzaC1rZXktdjE", "LS0tLS1CRUdJTi", "\ud800", "é", "漢", "+/", "sk-", "secret=", "x",
    *("\n".join(PEM_LINES[i : i + 3]) for i in range(0, 9, 3)), "\\n".join(PEM_LINES[4:7]),
]  # fmt: skip


def test_fuzzed_key_material_the_rule_would_change_is_always_named() -> None:
    from prefactor_otel.mapping.secret_patterns import KEY_BODY_RULE

    rule = next(rule for rule in default_rules() if rule.name == KEY_BODY_RULE)
    rng = random.Random(2027)
    fast, slow = Redactor(), Redactor(prefilter=False)
    changed = 0
    for _ in range(600):  # bounded
        pieces: list[str] = []
        while sum(map(len, pieces)) < _SHORT + rng.randrange(600):
            pieces.append(rng.choice(KEYISH) if rng.random() < 0.7 else rng.choice(WORDS) + " ")
        text = "".join(pieces)
        if rule.apply(text, None)[1]:
            changed += 1
            if HAVE_RE2:
                names = _names(text)
                assert names is None or KEY_BODY_RULE in names, text
        fast_log: list[dict[str, object]] = []
        slow_log: list[dict[str, object]] = []
        assert (fast.redact_text(text, "p", fast_log), fast_log) == (
            slow.redact_text(text, "p", slow_log),
            slow_log,
        ), text
    assert changed > 100


def test_the_gate_names_only_the_rules_whose_trigger_is_there() -> None:
    if not HAVE_RE2:
        return
    rng = random.Random(8)
    prose = _prose(rng, 400)
    assert _names(f"{prose} the secretary {prose}") == {"secret_assignment"}
    assert _names(f"{prose} AKIA {prose}") == {"aws_secret_key", "aws_access_key"}
    assert _names(f"{prose} \u212aBEARER x {prose}") == {"bearer_token"}
    # A named rule that changes nothing: nothing else runs, nothing is recorded; one that does: the whole list.
    for text in (f"{prose} the secretary: Jane {prose}", f"{prose} BEARER abcdefgh12345678 {prose}"):
        _both(text)
        _both(text, patterns=[r"ACME-\d{4}"])


class _FailingSet:
    """What RE2 gives when its DFA runs out of memory: no match at all (the wrapper's None, the compiled set's
    empty list), whatever the text."""

    def __init__(self, answer: list[int] | None) -> None:
        self._answer = answer

    def Add(self, pattern: str) -> int:
        return 0

    def Compile(self) -> bool:
        return True

    def Match(self, text: bytes) -> list[int] | None:
        return self._answer


class _FailingRe2:
    """A module laid out as google-re2 is, whose set fails every pass."""

    def __init__(self, answer: list[int] | None) -> None:
        answer_ = answer

        class _Set:
            @staticmethod
            def SearchSet(options: object) -> _FailingSet:
                return _FailingSet(answer_)

        self.Set = _Set

    @staticmethod
    def Options() -> object:
        return object()


@pytest.mark.parametrize("answer", [None, []])
def test_a_failed_pass_runs_every_rule(answer: list[int] | None) -> None:
    # RE2 answers "no match" when its DFA runs out of memory: the end-of-text pattern is then missing too, and the
    # gate fails open (every rule runs) instead of letting a secret through.
    gate = LongTextGate(_FailingRe2(answer), PREFILTER_PATTERNS, ALWAYS_RUN)
    rng = random.Random(6)
    text = f"{_prose(rng, 300)} password=hunter2hunter2 {_prose(rng, 300)}"
    assert gate.select(text) is None and gate.may_match(text)
    redactor = Redactor()
    redactor._long_gate = gate
    log: list[dict[str, object]] = []
    assert "[REDACTED:password]" in redactor.redact_text(text, "p", log)
    assert log == [{"path": "p", "rule": "password", "count": 1}]
    if HAVE_RE2:
        assert _gate().select("") == frozenset()  # a real pass always finds the end of the text


def test_a_short_text_the_short_gate_passes_is_remembered_as_the_rules_leave_it() -> None:
    # `_remember` decides a short text by the short gate alone when no user pattern or callback can change it: the
    # same outcome as the rules' on every rule's secrets, their pieces and fuzzed short text.
    rng = random.Random(12)
    texts = [*SAMPLES, *FRAGMENTS, *(sample[:n] for sample in SAMPLES for n in (4, 5, 9, 20, 40, 127))]
    for _ in range(2000):  # bounded
        pieces: list[str] = []
        while sum(map(len, pieces)) < rng.randrange(1, _SHORT):
            pieces.append(rng.choice(FRAGMENTS) if rng.random() < 0.4 else rng.choice(WORDS) + " ")
        texts.append("".join(pieces)[: _SHORT - 1])
    quick, full = Redactor(), Redactor()
    assert quick._plain_short_search is not None
    for text in texts:
        log: list[dict[str, object]] = []
        expected = (full._text(text, "", None, log), tuple((e["rule"], e.get("count", 1)) for e in log))
        assert quick._remember(text) == (*expected, '"' in text), text
    # With a user pattern the gate alone cannot decide: every short text goes through the rules.
    user = Redactor(patterns=[r"order_\d+"])
    assert user._plain_short_search is None
    assert user._remember("see order_1234 now") == (
        "see [REDACTED:user_pattern_1] now",
        (("user_pattern_1", 1),),
        False,
    )
