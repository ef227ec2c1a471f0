"""Redaction of secrets before anything leaves the process. Pure functions over one span's values.

Three kinds of rules, applied in this order:
1. **Key rules**: an attribute (or a key inside a JSON attribute value) whose name looks like a secret
   (`authorization`, `password`, `api_key`, `cookie`, ...; plus the user's PREFACTOR_REDACT_KEYS) has its whole
   string value masked. Key rules never touch numbers or booleans, so token counts (`gen_ai.usage.input_tokens`,
   `llm.token_count.prompt`) always survive. A `signature` is masked only when shaped like a credential (no
   whitespace inside): DSPy's `StringSignature(question -> answer ...)` is a program, not an HMAC.
2. **Value rules**: secret-looking substrings anywhere in a string (OpenAI-style `sk-...` keys, bearer tokens,
   `Authorization` / `Proxy-Authorization: Basic ...`, JWTs, cloud keys, an AWS secret access key next to its
   `AKIA`/`ASIA` key id, private-key blocks, and a key's body without its BEGIN line (a key split over several
   values: PEM-width base64 lines, a key's DER header, the lines before an END line), `password=...`, secret
   assignments such as `client_secret=...`, `"secret_key": "..."` or `AWS_SECRET_ACCESS_KEY: ...`, credentials in
   URLs, incoming-webhook URLs (Slack, Discord, Teams, Power Automate's `sig`); plus the user's
   PREFACTOR_REDACT_PATTERNS) are replaced by `[REDACTED:<rule>]` (the rules are in secret_patterns.py). Where a
   rule has a `secret` group only that part is replaced, so `password=[REDACTED:password]` still reads. An assigned
   JSON literal (`null`, a number, an object) is left alone: it is no credential, and masking it would break the JSON
   it sits in. Each default rule has literal trigger strings; a value that contains none of them is not scanned by
   the rule's regex at all (this runs in the export hot path). Two gates in front decide for all rules at once:
   below 128 characters one stdlib regex of every default literal; from 128 up, with google-re2 installed, one
   RE2 set pass (prefilter.py) over each rule's necessary pattern (the private-key probes' too), which names the
   rules that may match and fails open (a failed pass runs every rule). When a gate says no default rule can
   match, only the user's patterns run; when it names some, the list runs without the others until a rule changes
   the text, and whole from there on (the others cannot change the original text), so the outcome never depends
   on the gates (tests/test_redaction_prefilter.py compares).
3. The user's **callback** `(path, value) -> value`, last. If it raises or returns a non-string, the value is masked
   (fail closed): an unreviewed value is never sent.

Value rules run on the raw attribute strings, before JSON-in-string values are parsed: the replacements contain no
quote or backslash, so JSON stays valid, and one scan per attribute replaces a walk of every parsed value; a rule
such as `client_secret": "..."` therefore catches a secret at any nesting depth. Key rules inside JSON values need the
parsed structure: they run on the mapped inputs, outputs and params (in place, no copy).
Every redaction is recorded as `{path, rule}`, never with the value.

What goes through it (the mapping calls it; see payload.py): every attribute of the span, its events and links; the
span name, event names, status description, instrumentation scope name/version, the Resource attributes that are
sent (span metadata and the agent version). Non-string values are not exempt:
- `bytes` / `bytearray` / `memoryview` (OTel allows bytes) are sent as their lenient UTF-8 decoding (invalid bytes
  become U+FFFD), so they are decoded first and then treated exactly like a string: masked under a secret key,
  value-scanned otherwise.
- Sequences and mappings (OTel allows both, nested) are walked: key rules on mapping keys, value rules on strings.
  The items of a string array that are the lines of a key (one line per item) are masked as a key body is.
- Fail closed on depth: whatever lies deeper than `MAX_DEPTH` containers is replaced by `[REDACTED:depth_limit]`
  (recorded), never sent unexamined.

Called from the mapping threads (map_span: the exporting thread, the gateway's workers); the Redactor's mutable
pieces, the key-decision cache and the text cache (names and short values -> the value rules' outcome; not used with
a callback), are bounded plain dicts whose races can only repeat a decision (no lock needed).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from prefactor_otel.mapping.prefilter import long_text_gate
from prefactor_otel.mapping.secret_patterns import (
    ALWAYS_RUN,
    KEY_BODY_RULE,
    PREFILTER_PATTERNS,
    SHORT_GATE_PATTERN,
    PatternRule,
    ValueRule,
    default_rules,
    key_line_items,
)

RedactCallback = Callable[[str, str], str]
MASK = "[REDACTED]"
MAX_DEPTH = 32  # containers deeper than this are masked whole (fail closed), not walked
DEPTH_MASK = "[REDACTED:depth_limit]"
_BINARY = (bytes, bytearray, memoryview)
_UNKNOWN = "\x00unknown"  # a key-cache miss (no rule is named so)
# The text cache's entry: the redacted text, (rule, count) of each replacement, whether the text holds a quote.
_Outcome = tuple[str, tuple[tuple[str, int], ...], bool]
_JSON_SCALARS = frozenset({int, float, bool, type(None)})  # exact types: never masked by a key rule, never walked

# Last segment of an attribute key (lower case, '-' -> '_') that names a secret.
_SECRET_KEYS = frozenset(
    {
        "password",
        "passwd",
        "pwd",
        "passphrase",
        "secret",
        "client_secret",
        "token",
        "access_token",
        "refresh_token",
        "id_token",
        "auth_token",
        "session_token",
        "bearer_token",
        "api_token",
        "csrf_token",
        "x_csrf_token",
        "x_auth_token",
        "auth",
        "authorization",
        "proxy_authorization",
        "cookie",
        "set_cookie",
        "credential",
        "credentials",
        "api_key",
        "apikey",
        "x_api_key",
        "access_key",
        "secret_key",
        "private_key",
        "connection_string",
        "signature",
    }
)
_SECRET_KEY_SUFFIXES = (
    "_password",
    "_passwd",
    "_secret",
    "_api_key",
    "_apikey",
    "_access_token",
    "_refresh_token",
    "_auth_token",
    "_private_key",
    "_secret_key",
    "_access_key",
    "_credentials",
)
# Secret-named keys that also name things no credential is: a `signature` is an HMAC or a cloud request signature,
# or a DSPy program's `StringSignature(question -> answer ...)` or a function's signature. Their string values are
# masked only when shaped like a credential (no whitespace inside); anything else is value-scanned as usual.
_SHAPED_KEYS = frozenset({"signature"})
SHAPED_KEY_RULE = "signature_key"
_WHITESPACE = re.compile(r"\s")
_KEY_CACHE_LIMIT = 4096
_TEXT_CACHE_LIMIT = 4096  # entries of at most _SHORT characters (names: any length), about 1 MB at most
_MIN_SECRET_LENGTH = 5  # shorter strings cannot hold any default value pattern
_SHORT = 128  # below this length one combined regex decides whether any default rule can match
# Convention attributes that hold identifiers and enumerations (operation, model, provider, ids, span kinds), never
# free text: the default value patterns skip them (key rules, user patterns and the callback still apply).
_STRUCTURAL_KEYS = frozenset(
    {
        "gen_ai.operation.name",
        "gen_ai.provider.name",
        "gen_ai.system",
        "gen_ai.request.model",
        "gen_ai.response.model",
        "gen_ai.response.id",
        "gen_ai.response.finish_reasons",
        "gen_ai.tool.name",
        "gen_ai.tool.type",
        "gen_ai.tool.call.id",
        "gen_ai.agent.name",
        "gen_ai.agent.id",
        "gen_ai.conversation.id",
        "openinference.span.kind",
        "llm.system",
        "llm.provider",
        "llm.model_name",
        "llm.request.type",
        "traceloop.span.kind",
        "server.address",
    }
)


# Whether a long string may name a secret key once parsed as JSON (at any depth of JSON-in-a-string): what lets the
# walk of a span's parsed sections (`redact_keys_in`) be skipped, told by the long-text gate's pass (a signal in its
# RE2 set, so at no cost of its own; a shorter string with a quote in it is simply walked). A JSON object key is
# quoted, so a key that a default key rule masks (its last `.` segment, lowered, `-` read as `_`, one of _SECRET_KEYS
# or ending in one of _SECRET_KEY_SUFFIXES) ends, in the raw text, with that word or suffix written out (any case;
# the Kelvin sign reads as `k`, as `str.lower` has it) just before its closing quote (`"`, or `\"`, `\\\"`, ...
# deeper), an exact word right after the opening quote or a `.`. The one way to write such a key otherwise is a `\u`
# escape of an ASCII character or of the Kelvin sign, which is reported too. No other character lowers to an ASCII
# letter (U+0130 lowers to two characters, the second no key word holds). A string value spelled like a key word
# (`"auth"`) is reported too: the walk then runs, as it did before.
SECRET_KEY_SIGNAL = "secret_key_name"  # the long-text gate's signal (prefilter.py) for this test
_SIGNAL_ONLY = frozenset({SECRET_KEY_SIGNAL})


def _words_pattern(words: Iterable[str]) -> str:
    return "|".join(word.replace("_", "[-_]") for word in sorted(words, key=len, reverse=True))


_ASCII_ESCAPE = r"\\u(?:00[0-7][0-9a-fA-F]|212[aA])"
# The same test as one RE2 pattern (case-insensitive: RE2 folds the Kelvin sign with `k`), in the long-text gate.
SECRET_KEY_NAME_PATTERN = (
    r"(?i)(?:(?:^|[\".])(?:" + _words_pattern(_SECRET_KEYS) + r")|(?:" + _words_pattern(_SECRET_KEY_SUFFIXES) + r"))"
    r"\\*\"|" + _ASCII_ESCAPE
)


def _path(where: str, key: str | None) -> str:
    return where if key is None else f'{where}["{key}"]'


def _normalize_key(key: str) -> str:
    return key.rsplit(".", 1)[-1].lower().replace("-", "_")


class Redactor:
    """Compiled rules for one exporter. Holds only a bounded cache of key decisions (pure otherwise)."""

    def __init__(
        self,
        *,
        defaults: bool = True,
        patterns: Iterable[str] = (),
        keys: Iterable[str] = (),
        callback: RedactCallback | None = None,
        prefilter: bool = True,
    ) -> None:
        """`prefilter=False`: no one-pass prefilter on long strings even with google-re2 installed (the outcome is
        the same; tests compare the two)."""
        rules = default_rules() if defaults else []
        user_rules = [PatternRule(f"user_pattern_{i}", p) for i, p in enumerate(patterns, start=1)]  # re.error: config
        self._rules = (*rules, *user_rules)
        self._user_rules = tuple(user_rules)
        self._any_lower = any(rule.lower for rule in self._rules)
        # One regex over every default literal (and a key's DER header): cheaper than the per-rule checks on short
        # strings (identifiers, model names), which are most values; long strings go through the per-rule gates.
        self._short_gate = re.compile(SHORT_GATE_PATTERN) if defaults else None
        # The short gate alone decides a short text when nothing else can change it (no user pattern, no callback):
        # its "no" leaves the text as it is (`_remember`).
        self._plain_short_search = (
            self._short_gate.search if self._short_gate is not None and not user_rules and callback is None else None
        )
        # Long strings (messages): one RE2 pass tells which default rules can change the text (prefilter.py; None
        # without google-re2). When none can, only the user's patterns run; when some can, the list runs without
        # the others up to the first change, and whole after it (`_apply_named`), so the outcome is the per-rule
        # path's whatever the rules are.
        self._long_gate = (
            long_text_gate(
                (rule.name for rule in rules),
                PREFILTER_PATTERNS,
                ALWAYS_RUN,
                {SECRET_KEY_SIGNAL: SECRET_KEY_NAME_PATTERN},
            )
            if defaults and prefilter
            else None
        )
        self._defaults_count = len(rules)
        self._structural = _STRUCTURAL_KEYS if defaults and not user_rules else frozenset()
        self._defaults = defaults
        user_keys = {k.strip().lower() for k in keys if k.strip()}
        self._user_keys = frozenset(user_keys | {_normalize_key(k) for k in user_keys})
        self._callback = callback
        # Whether key rules exist at all (without them `redact_keys_in` masks nothing), and whether `redact_owned`
        # can tell that a span's attributes hold nothing a key rule masks once parsed (`needs_key_walk`): with the
        # defaults' key rules alone (a user's key may be any word), the long-text gate (its signal decides long
        # strings) and no callback (which may return any text).
        self.masks_keys = defaults or bool(self._user_keys)
        self._tracks_keys = defaults and self._long_gate is not None and not self._user_keys and callback is None
        # The last attribute dict `redact_owned` found free of anything a key rule masks, or None: one slot, by
        # identity (another span's call replaces it, and a race can only make the walk run).
        self._key_free: dict[str, object] | None = None
        self._key_cache: dict[str, str | None] = {}
        # Outcome of the value rules by text, for names and short values (not with a callback: see _remember).
        self._text_cache: dict[str, _Outcome] = {}
        self.active = bool(self._rules or self._user_keys or callback)
        # Whether the outcome on a string depends on the string alone (no callback): what callers may cache.
        self.caches_texts = callback is None

    # ------------------------------------------------------------------ keys

    def key_rule(self, key: str) -> str | None:
        """The rule that masks the value of an attribute or JSON key with this name, or None."""
        cached = self._key_cache.get(key, False)
        if cached is not False:
            return cached  # type: ignore[return-value]
        rule: str | None = None
        last = _normalize_key(key)
        if key.lower() in self._user_keys or last in self._user_keys:
            rule = "user_key"
        elif self._defaults and last in _SHAPED_KEYS:
            rule = SHAPED_KEY_RULE
        elif self._defaults and (last in _SECRET_KEYS or last.endswith(_SECRET_KEY_SUFFIXES)):
            rule = "secret_key"
        if len(self._key_cache) >= _KEY_CACHE_LIMIT:
            self._key_cache.clear()  # bounded: attribute names repeat, so this almost never happens
        self._key_cache[key] = rule
        return rule

    # ------------------------------------------------------------------ strings

    def redact_text(self, text: str, path: str, log: list[dict[str, Any]]) -> str:
        """Value rules and the callback on one string."""
        return self._text(text, path, None, log)

    def redact_label(self, text: str, path: str, log: list[dict[str, Any]]) -> str:
        """`redact_text` for names that repeat (span and event names, scopes): the outcome is cached by text, as
        key decisions are. Not cached with a callback (called on every string, as documented)."""
        if self._callback is not None:
            return self._text(text, path, None, log)
        cached = self._text_cache.get(text)
        if cached is None:
            cached = self._remember(text)
        for rule, count in cached[1]:
            log.append({"path": path, "rule": rule, "count": count})
        return cached[0]

    def _remember(self, text: str) -> _Outcome:
        """The value rules' outcome on `text` (the redacted text, the (rule, count) of each replacement, and whether
        the text holds a quote, so may be JSON with keys in it: `redact_owned`'s `keyed`), kept
        in the bounded text cache: names and short attribute values repeat (a database system, a query, a route,
        a host), and a dict lookup costs a tenth of the short gate's scan. Cleared whole when full: values with
        ids in them must not grow it without end, and each repeated value then costs one scan again."""
        plain = self._plain_short_search
        if plain is not None and len(text) < _SHORT and plain(text) is None:
            # What `_text` decides for it, without its calls and log (a one-off id costs the scan and little more)
            cached: _Outcome = (text, (), '"' in text)
        else:
            own: list[dict[str, Any]] = []
            result = self._text(text, "", None, own)
            cached = (result, tuple((entry["rule"], entry.get("count", 1)) for entry in own), '"' in text)
        if len(self._text_cache) >= _TEXT_CACHE_LIMIT:
            self._text_cache.clear()
        self._text_cache[text] = cached
        return cached

    def _text(self, text: str, where: str, key: str | None, log: list[dict[str, Any]]) -> str:
        # The recorded path is `where` alone, or `where["key"]`: built only when something is recorded.
        size = len(text)
        if size >= _MIN_SECRET_LENGTH:
            rules = self._rules
            if size < _SHORT:
                if self._short_gate is not None and self._short_gate.search(text) is None:
                    rules = self._user_rules
            elif self._long_gate is not None:
                return self._long_text(text, self._long_gate.select(text), where, key, log)
            if rules:
                text = self._apply(text, rules, where, key, log)
        if self._callback is not None:
            text = self._call(text, _path(where, key), log)
        return text

    def _long_text(
        self, text: str, names: frozenset[str] | None, where: str, key: str | None, log: list[dict[str, Any]]
    ) -> str:
        """`_text` on a long string, given the gate's answer on it (`LongTextGate.select`: rule names, and the
        secret-key signal, which names no rule)."""
        if names is None:  # the pass failed: every rule runs
            text = self._apply(text, self._rules, where, key, log)
        elif names and names != _SIGNAL_ONLY:
            text = self._apply_named(text, names, where, key, log)
        elif self._user_rules:
            text = self._apply(text, self._user_rules, where, key, log)
        if self._callback is not None:
            text = self._call(text, _path(where, key), log)
        return text

    def _apply_named(
        self, text: str, names: frozenset[str], where: str, key: str | None, log: list[dict[str, Any]]
    ) -> str:
        """The per-rule path on a long text of which the gate named the default rules that may change it: until a
        rule changes the text, it is the original, which no other default rule can change, so those are skipped;
        from the first change on, every rule that follows runs on what the previous ones left, as in `_apply`.
        Rare on GenAI text (most texts hold no rule's trigger), and no rule runs twice."""
        rules = self._rules
        defaults = self._defaults_count
        lowered: str | None = None
        for index, rule in enumerate(rules):
            if index < defaults and rule.name not in names:
                continue
            gate = rule.gate
            if gate is not None and gate not in text:
                continue
            if rule.lower and lowered is None:
                lowered = text.lower()
            new, count = rule.apply(text, lowered if rule.lower else None)
            if count:
                log.append({"path": _path(where, key), "rule": rule.name, "count": count})
                return self._apply(new, rules[index + 1 :], where, key, log) if index + 1 < len(rules) else new
        return text

    def _apply(
        self, text: str, rules: Sequence[ValueRule], where: str, key: str | None, log: list[dict[str, Any]]
    ) -> str:
        """The value rules, in order, each on what the previous ones left."""
        lowered = (
            text.lower() if self._any_lower and (rules is self._rules or any(rule.lower for rule in rules)) else None
        )
        for rule in rules:
            # The rule's gate inline: most rules stop here, and a method call per rule and string cost more than
            # the one-character search itself.
            gate = rule.gate
            if gate is not None and gate not in text:
                continue
            new, count = rule.apply(text, lowered)
            if count:
                text = new
                if lowered is not None:
                    lowered = text.lower()
                log.append({"path": _path(where, key), "rule": rule.name, "count": count})
        return text

    def _call(self, text: str, path: str, log: list[dict[str, Any]]) -> str:
        try:
            result = self._callback(path, text)  # type: ignore[misc]
        except Exception:
            log.append({"path": path, "rule": "callback_error"})
            return MASK
        if not isinstance(result, str):
            log.append({"path": path, "rule": "callback_error"})
            return MASK
        if result != text:
            log.append({"path": path, "rule": "callback"})
        return result

    # ------------------------------------------------------------------ attribute sets

    def redact_attributes(
        self, attributes: Mapping[str, object], where: str, log: list[dict[str, Any]]
    ) -> dict[str, object]:
        """A redacted copy of an attribute mapping; `where` prefixes recorded paths (`events[0].attributes`)."""
        out = dict(attributes)
        self.redact_owned(out, where, log)
        return out

    def redact_owned(self, attributes: dict[str, object], where: str, log: list[dict[str, Any]]) -> int:
        """Redact, in place, an attribute dict the caller owns (a copy made for this span). Returns the length of the
        longest string it holds afterwards, a value or an item of a sequence value (`payload._longest_string`'s
        answer, which the length limits need: measured here on the way, the mapping need not walk them again).

        On the way it tells whether anything built from these attributes may hold a key a key rule masks
        (`needs_key_walk`): a secret-named attribute (whatever its value), a redaction, a string that may name a
        secret key once parsed (the long-text gate's signal; any shorter one with a quote in it: tool arguments are
        walked, a test per short string costs more than their walk),
        a value of another kind (bytes, a nested or long sequence), or a failed gate pass."""
        cache = self._key_cache
        texts = self._text_cache
        scan_all = self._callback is not None
        structural = self._structural
        long_select = self._long_gate.select if self._long_gate is not None else None
        user_rules = self._user_rules
        longest = 0
        logged = len(log)
        keyed = False  # whether something here may give a parsed section a key that a key rule masks
        items: Iterable[tuple[str, Any]] = attributes.items()  # Any: the type tests below narrow what mypy cannot
        for key, value in items:
            # One type() per value: exact str first, then the scalars by set membership (a type test costs less
            # than an isinstance call; str subclasses still take the string path).
            value_type = type(value)
            if value_type is str or (value_type not in _JSON_SCALARS and isinstance(value, str)):
                rule = cache[key] if key in cache else self.key_rule(key)
                if rule is not None:
                    keyed = True  # a builder may name a field after it (a flattened family's last segment)
                    if masks_string(rule, value):
                        value = attributes[key] = f"[REDACTED:{rule}]"
                        log.append({"path": _path(where, key), "rule": rule})
                        if len(value) > longest:
                            longest = len(value)
                        continue
                if scan_all:
                    value = attributes[key] = self._text(value, where, key, log)
                elif len(value) >= _MIN_SECRET_LENGTH and key not in structural:
                    if len(value) >= _SHORT:
                        if long_select is None:
                            keyed = True
                            value = attributes[key] = self._text(value, where, key, log)
                        else:
                            # The gate called here, not through `_text`: a message string that no rule can change
                            # (most) costs the pass and nothing more.
                            names = long_select(value)
                            if names is None or names or user_rules:
                                if names is None or SECRET_KEY_SIGNAL in names:
                                    keyed = True
                                value = attributes[key] = self._long_text(value, names, where, key, log)
                    else:
                        known = texts.get(value)  # a short value: most repeat (hosts, queries, routes, enum values)
                        if known is None:
                            known = self._remember(value)
                        if known[1]:
                            value = attributes[key] = known[0]
                            path = _path(where, key)
                            for name, count in known[1]:
                                log.append({"path": path, "rule": name, "count": count})
                        elif known[2]:
                            keyed = True  # it may be JSON (tool arguments): the walk decides (see above)
                elif '"' in value:
                    keyed = True  # an identifier (or too short for any value rule) that may be JSON all the same
                # else: an identifier or too short for any value rule, the common case: kept as it is
                if len(value) > longest:
                    longest = len(value)
            elif value_type in _JSON_SCALARS:
                # Numbers, booleans and None: never secrets (token counts stay). Under a secret name a builder
                # may still make a field of one (NaN becomes a string): the walk then runs.
                rule = cache.get(key, _UNKNOWN)  # one lookup: most names are cached, and name no rule
                if rule is not None and (rule is not _UNKNOWN or self.key_rule(key) is not None):
                    keyed = True
            else:
                # bytes, sequences, mappings: rare, walked in full
                rule = cache[key] if key in cache else self.key_rule(key)
                if rule is None and type(value) is tuple and not scan_all:
                    # An OTel array (a tuple): short strings that the text cache says stay as they are, and numbers,
                    # keep the tuple itself (what `_items` would rebuild, equal). No string of a key's line width
                    # (a run of them is masked), no long string, nothing else: the walk below.
                    for item in value:
                        kind = type(item)
                        if kind is str:
                            size = len(item)
                            if size >= _SHORT or size == 64 or size == 70:
                                break
                            known = texts.get(item)
                            if known is None:
                                known = self._remember(item)
                            if known[1]:
                                break
                            if known[2]:
                                keyed = True
                            if size > longest:
                                longest = size
                        elif kind is not int and kind is not float and kind is not bool and item is not None:
                            break
                    else:
                        continue
                keyed = True
                path = _path(where, key)
                if rule is not None:
                    masked = _masked(value, rule)
                    if masked is not value:
                        attributes[key] = masked
                        log.append({"path": path, "rule": rule})
                else:
                    attributes[key] = self._nested(value, path, log, 0)
                longest = max(longest, _longest_in(attributes[key]))
        if self._tracks_keys:
            self._key_free = None if keyed or len(log) != logged else attributes
        return longest

    def needs_key_walk(self, attributes: Mapping[str, object]) -> bool:
        """Whether the sections parsed and built from this span's attributes (inputs, outputs, params) must be
        walked for keys a key rule masks (`redact_keys_in`). False when no key rule exists, and when the last
        `redact_owned` call was on this very dict and found nothing there that could give a section such a key:
        the sections come from the attribute names (a field is named after a name's last segment, or a tail of
        it), the JSON in their string values, and the builders' own constant names (none secret-named: a test
        holds them to it). The caller walks anyway when the span has events (their attributes are sources too).
        Any doubt (no RE2 gate, a user's key, a callback, a failed pass, another span's call in between) walks."""
        if not self.masks_keys:
            return False
        if self._key_free is attributes:
            self._key_free = None  # read once: the slot holds no span's attributes longer than needed
            return False
        return True

    def _nested(self, value: object, path: str, log: list[dict[str, Any]], depth: int) -> object:
        """A redacted copy of one non-string attribute value (or a part of one). Tuples stay tuples (what the SDK
        gives and the chains expect), other containers become lists and dicts; bytes become text."""
        if isinstance(value, str):
            return self._text(value, path, None, log)
        if value is None or isinstance(value, (bool, int, float)):
            return value
        if isinstance(value, _BINARY):
            return self._text(bytes(value).decode("utf-8", errors="replace"), path, None, log)
        if depth >= MAX_DEPTH:
            log.append({"path": path, "rule": "depth_limit"})
            return DEPTH_MASK
        if type(value) is tuple or type(value) is list:  # OTel arrays: before the (slow) ABC checks
            return self._items(value, path, log, depth)
        if isinstance(value, Mapping):
            out: dict[str, object] = {}
            for raw_key, item in value.items():
                key = str(raw_key)
                rule = self.key_rule(key)
                masked = item if rule is None else _masked(item, rule)
                if masked is not item:
                    out[key] = masked
                    log.append({"path": f"{path}.{key}", "rule": rule})
                else:
                    out[key] = self._nested(item, f"{path}.{key}", log, depth + 1)
            return out
        if isinstance(value, Sequence):
            return self._items(value, path, log, depth)
        return self._text(str(value), path, None, log)  # what json_safe would send: its str()

    def _items(self, value: Sequence[object], path: str, log: list[dict[str, Any]], depth: int) -> object:
        """A redacted copy of a sequence: a tuple for a tuple, a list otherwise. Numbers stay as they are and short
        strings read the text cache (an item's path is built only when something is recorded)."""
        # OTel arrays are homogeneous: only string arrays can hold a key's lines (vectors of floats are walked
        # once, as before)
        strings = self._defaults and len(value) >= 2 and isinstance(value[0], str)
        key_lines = frozenset(key_line_items(value)) if strings else frozenset()
        texts = self._text_cache if self.caches_texts else None
        items: list[object] = []
        for index, item in enumerate(value):
            kind = type(item)
            if index in key_lines:
                items.append(self._key_line(f"{path}[{index}]", log))
            elif kind is str and texts is not None and len(text := str(item)) < _SHORT:
                known = texts.get(text)
                if known is None:
                    known = self._remember(text)
                if known[1]:
                    item_path = f"{path}[{index}]"
                    for name, count in known[1]:
                        log.append({"path": item_path, "rule": name, "count": count})
                items.append(known[0])
            elif item is None or kind is int or kind is float or kind is bool:
                items.append(item)
            else:
                items.append(self._nested(item, f"{path}[{index}]", log, depth + 1))
        return tuple(items) if isinstance(value, tuple) else items

    @staticmethod
    def _key_line(path: str, log: list[dict[str, Any]]) -> str:
        """A sequence item that is a line of a private key (secret_patterns.key_line_items)."""
        log.append({"path": path, "rule": KEY_BODY_RULE})
        return f"[REDACTED:{KEY_BODY_RULE}]"

    def redact_keys_in(self, value: Any, path: str, log: list[dict[str, Any]], depth: int = 0) -> None:
        """Mask, in place, string values under secret-named keys inside parsed JSON (tool arguments, results,
        request bodies). The strings themselves were value-scanned as raw attributes already. The structures
        are the mapping's own (fresh from json.loads or built by it), so mutating them is safe. Child paths are
        built only where a container is entered or a value is masked. A container deeper than MAX_DEPTH is masked
        whole: it is not examined, so it is not sent."""
        # Exact types first (parsed JSON holds only dicts, lists, strings, numbers, booleans and None): a type
        # test costs a third of an isinstance test with a tuple, and most entries are strings or numbers.
        if isinstance(value, dict):
            cache = self._key_cache
            for key, item in value.items():
                item_type = type(item)
                if item_type is str:
                    if type(key) is not str and not isinstance(key, str):
                        continue
                elif item_type in _JSON_SCALARS:
                    continue
                elif item_type is dict or item_type is list or isinstance(item, (dict, list)):
                    rule = (cache[key] if key in cache else self.key_rule(key)) if isinstance(key, str) else None
                    if rule is not None:
                        value[key] = f"[REDACTED:{rule}]"  # a whole credentials object
                        log.append({"path": f"{path}.{key}", "rule": rule})
                    elif depth >= MAX_DEPTH:
                        value[key] = DEPTH_MASK
                        log.append({"path": f"{path}.{key}", "rule": "depth_limit"})
                    else:
                        self.redact_keys_in(item, f"{path}.{key}", log, depth + 1)
                    continue
                elif not isinstance(item, str) or not isinstance(key, str):
                    continue
                rule = cache[key] if key in cache else self.key_rule(key)
                if rule is not None and masks_string(rule, item):
                    value[key] = f"[REDACTED:{rule}]"
                    log.append({"path": f"{path}.{key}", "rule": rule})
        elif isinstance(value, list):
            for index, item in enumerate(value):
                item_type = type(item)
                if (
                    item_type is dict
                    or item_type is list
                    or (item_type is not str and item_type not in _JSON_SCALARS and isinstance(item, (dict, list)))
                ):
                    if depth >= MAX_DEPTH:
                        value[index] = DEPTH_MASK
                        log.append({"path": f"{path}[{index}]", "rule": "depth_limit"})
                    else:
                        self.redact_keys_in(item, f"{path}[{index}]", log, depth + 1)


def _longest_in(value: object) -> int:
    """The length of a string, or of the longest string item of a list or tuple; 0 for anything else."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, (list, tuple)):
        return max((len(item) for item in value if isinstance(item, str)), default=0)
    return 0


def _masked(value: object, rule: str) -> object:
    """A value under a secret key, masked: strings, bytes and containers; numbers and booleans stay (token counts
    are never secrets), and a value with nothing to mask is returned as it is (the same object). A sequence keeps
    its length (one marker per item), as string arrays always did."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str) and not masks_string(rule, value):
        return value  # a `signature` that is prose or code: value-scanned by the caller instead
    marker = f"[REDACTED:{rule}]"
    if isinstance(value, (tuple, list)):
        if all(item is None or isinstance(item, (bool, int, float)) for item in value):
            return value
        return tuple(item if item is None or isinstance(item, (bool, int, float)) else marker for item in value)
    return marker


def masks_string(rule: str, text: str) -> bool:
    """Whether a key rule masks this string: always, except a credential-shaped key's value that holds whitespace."""
    return rule != SHAPED_KEY_RULE or _WHITESPACE.search(text) is None
