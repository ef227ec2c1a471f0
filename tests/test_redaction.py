"""Content controls: redaction (default rules, user patterns and keys, callback failing closed), capture switches,
UTF-8-safe truncation, the configuration options, and secrets never reaching the server end to end."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import random
import sys
import types
from collections.abc import Iterator

import httpx
import pytest
import zstandard
from opentelemetry.sdk.trace import TracerProvider

from prefactor_otel.config.options import ConfigError, PrefactorConfig
from prefactor_otel.devserver import DevServer
from prefactor_otel.mapping import MappingOptions, map_span
from tests.fixtures.semconv.checks import check_record, provider
from tests.fixtures.semconv.fake_openai import SECRET_IN_PROMPT, FakeOpenAI, openai_workload
from tests.spans import exporter_for

BEARER = "Bearer tok_live_9f8e7d6c5b4a3210"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"


def _chat_span(**extra: object):  # type: ignore[no-untyped-def]
    tracer_provider, collector = provider()
    attributes = {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "gpt-4o",
        "gen_ai.input.messages": json.dumps(
            [{"role": "user", "parts": [{"type": "text", "content": f"use {SECRET_IN_PROMPT} and {JWT}"}]}]
        ),
        "gen_ai.output.messages": json.dumps([{"role": "assistant", "parts": [{"type": "text", "content": "ok"}]}]),
        "gen_ai.usage.input_tokens": 12,
        "gen_ai.usage.output_tokens": 3,
        "http.request.header.authorization": (BEARER,),
        "Authorization": BEARER,
        **extra,
    }
    with tracer_provider.get_tracer("t").start_as_current_span("chat gpt-4o", attributes=attributes) as span:  # type: ignore[arg-type]
        span.add_event("exception", {"exception.type": "E", "exception.message": f"auth failed with {BEARER}"})
    return collector.spans[0]


def test_default_rules_mask_secrets_but_never_token_counts() -> None:
    record = map_span(_chat_span())
    check_record(record)
    text = json.dumps([record.payload, record.result_payload])
    assert SECRET_IN_PROMPT not in text and JWT not in text and "tok_live_9f8e7d6c5b4a3210" not in text
    content = record.payload["inputs"]["messages"][0]["content"]
    assert content == "use [REDACTED:api_key] and [REDACTED:jwt]"
    metadata = record.payload["metadata"]
    assert metadata["Authorization"] == "[REDACTED:secret_key]"
    assert metadata["http.request.header.authorization"] == ["[REDACTED:secret_key]"]
    assert record.payload["token_usage"] == {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}
    assert "[REDACTED:bearer_token]" in record.payload["events"][0]["attributes"]["exception.message"]
    # what was redacted: path and rule, never the value
    redactions = metadata["prefactor.redactions"]
    assert {"path": 'attributes["Authorization"]', "rule": "secret_key"} in redactions
    assert {"path": 'attributes["gen_ai.input.messages"]', "rule": "api_key", "count": 1} in redactions
    assert {"path": 'attributes["gen_ai.input.messages"]', "rule": "jwt", "count": 1} in redactions
    assert {"path": 'events[0].attributes["exception.message"]', "rule": "bearer_token", "count": 1} in redactions
    assert "sk-" not in json.dumps(redactions)


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("key sk-ant-api03-abcdefghijklmnopqrstuv", "api_key"),
        ("AKIAIOSFODNN7EXAMPLE", "aws_access_key"),
        ("ghp_" + "a1" * 18, "github_token"),
        ("AIza" + "B" * 35, "google_api_key"),
        ("xoxb-123456789012-abcdef", "slack_token"),
        ("-----BEGIN PRIVATE KEY-----\nMIIEvQ\n-----END PRIVATE KEY-----", "private_key"),
        ("login with password=hunter2!", "password"),
        ("postgres://admin:s3cret@db:5432/app", "url_credentials"),
        ("Authorization: BEARER abcdefghijkl", "bearer_token"),
    ],
)
def test_each_default_value_rule(text: str, rule: str) -> None:
    redactor = MappingOptions().redactor
    log: list[dict[str, object]] = []
    out = redactor.redact_text(text, "p", log)
    assert f"[REDACTED:{rule}]" in out
    assert [entry["rule"] for entry in log] == [rule]


@pytest.mark.parametrize(
    "text",
    ["the risk-assessment-framework-document", "a basic password reset question", "https://example.com/a:b", "eyJ"],
)
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert MappingOptions().redactor.redact_text(text, "p", []) == text


def test_secret_keys_inside_json_values() -> None:
    tracer_provider, collector = provider()
    arguments = {"user": "ann", "password": "hunter2", "auth": {"api_key": "k-123"}, "retries": 3}
    with tracer_provider.get_tracer("t").start_as_current_span(
        "execute_tool login",
        attributes={"gen_ai.operation.name": "execute_tool", "gen_ai.tool.call.arguments": json.dumps(arguments)},
    ):
        pass
    record = map_span(collector.spans[0])
    assert record.payload["inputs"]["arguments"] == {
        "user": "ann",
        "password": "[REDACTED:secret_key]",
        "auth": "[REDACTED:secret_key]",
        "retries": 3,
    }
    paths = {entry["path"] for entry in record.payload["metadata"]["prefactor.redactions"]}
    # the password value was caught in the raw string already (value rule); the keys mask whole values
    assert {"inputs.arguments.password", "inputs.arguments.auth"} <= paths


def test_user_patterns_keys_and_callback() -> None:
    seen: list[str] = []

    def callback(path: str, value: str) -> str:
        seen.append(path)
        return value.replace("ACME-", "[acme]-")

    options = MappingOptions(
        redact_patterns=(r"\bcust-\d{6}\b",), redact_keys=("user.email",), redact_callback=callback
    )
    record = map_span(_chat_span(**{"note": "customer cust-123456 of ACME-corp", "user.email": "a@b.c"}), options)
    metadata = record.payload["metadata"]
    assert metadata["note"] == "customer [REDACTED:user_pattern_1] of [acme]-corp"
    assert metadata["user.email"] == "[REDACTED:user_key]"
    rules = {entry["rule"] for entry in metadata["prefactor.redactions"]}
    assert {"user_pattern_1", "user_key", "callback"} <= rules
    assert 'attributes["note"]' in seen


@pytest.mark.parametrize("behaviour", ["raise", "not-a-string"])
def test_a_failing_callback_fails_closed(behaviour: str) -> None:
    def callback(path: str, value: str) -> str:
        if "messages" in path:
            if behaviour == "raise":
                raise RuntimeError("redaction service down")
            return None  # type: ignore[return-value]
        return value

    record = map_span(_chat_span(), MappingOptions(redact_callback=callback))  # never raises
    text = json.dumps(record.payload)
    assert "redaction service down" not in text
    # the values the callback could not vouch for are masked, not sent raw
    assert record.payload["inputs"]["messages"] == "[REDACTED]"
    assert {"path": 'attributes["gen_ai.input.messages"]', "rule": "callback_error"} in record.payload["metadata"][
        "prefactor.redactions"
    ]
    assert record.payload["token_usage"]["prompt_tokens"] == 12


def test_capture_switches_drop_content_without_leaking_it_into_metadata() -> None:
    record = map_span(_chat_span(), MappingOptions(capture_inputs=False, capture_outputs=False))
    check_record(record)
    assert record.payload["inputs"] == {} and record.result_payload["outputs"] == {}
    assert "gen_ai.input.messages" not in record.payload["metadata"]
    assert "gen_ai.output.messages" not in record.payload["metadata"]
    assert record.payload["metadata"]["prefactor.content_omitted"] == ["inputs", "outputs"]
    assert record.payload["model"] == "gpt-4o" and record.payload["token_usage"]["total_tokens"] == 15


def test_truncation_is_utf8_safe_and_recorded() -> None:
    long_text = "é" * 300 + "漢" * 300  # 600 + 900 bytes
    tracer_provider, collector = provider()
    with tracer_provider.get_tracer("t").start_as_current_span(
        "chat m",
        attributes={
            "gen_ai.operation.name": "chat",
            "gen_ai.input.messages": json.dumps([{"role": "user", "content": long_text}], ensure_ascii=False),
            "gen_ai.output.messages": json.dumps([{"role": "assistant", "content": "short"}]),
        },
    ):
        pass
    record = map_span(collector.spans[0], MappingOptions(max_input_length=1001, max_output_length=10))
    check_record(record)
    content = record.payload["inputs"]["messages"][0]["content"]
    kept, _, marker = content.partition("…")
    assert kept == "é" * 300 + "漢" * 133  # 600 + 399 bytes: the cut never splits a character
    assert marker == "[truncated: 1500 bytes]"
    assert record.payload["metadata"]["prefactor.truncated"] == [
        {"path": "inputs.messages[0].content", "original_bytes": 1500}
    ]
    assert record.result_payload["outputs"]["messages"][0]["content"] == "short"
    unlimited = map_span(collector.spans[0], MappingOptions(max_input_length=0))
    assert unlimited.payload["inputs"]["messages"][0]["content"] == long_text


def test_configuration_options(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("semconv_test_redact_hook")
    module.scrub = lambda path, value: value.upper()  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    config = PrefactorConfig.load(
        {
            "PREFACTOR_CAPTURE_INPUTS": "false",
            "PREFACTOR_CAPTURE_OUTPUTS": "yes",
            "PREFACTOR_MAX_INPUT_LENGTH": "0",
            "PREFACTOR_MAX_OUTPUT_LENGTH": "2048",
            "PREFACTOR_REDACT_DEFAULTS": "off",
            "PREFACTOR_REDACT_PATTERNS": '["cust-\\\\d+", "order/[0-9]+"]',
            "PREFACTOR_REDACT_KEYS": "user.email, x-tenant",
            "PREFACTOR_REDACT_CALLBACK": "semconv_test_redact_hook:scrub",
        }
    )
    options = MappingOptions.from_config(config)
    assert (options.capture_inputs, options.capture_outputs) == (False, True)
    assert (options.max_input_length, options.max_output_length) == (0, 2048)
    assert options.redact_defaults is False
    assert options.redact_patterns == ("cust-\\d+", "order/[0-9]+")
    assert options.redact_keys == ("user.email", "x-tenant")
    assert options.redact_callback is module.scrub  # type: ignore[attr-defined]
    defaults = MappingOptions.from_config(PrefactorConfig.load({}))
    assert defaults == MappingOptions()

    with pytest.raises(ConfigError, match="PREFACTOR_REDACT_PATTERNS: pattern 2"):
        PrefactorConfig.load({"PREFACTOR_REDACT_PATTERNS": '["ok", "(unclosed"]'})
    with pytest.raises(ConfigError, match="PREFACTOR_REDACT_CALLBACK"):
        PrefactorConfig.load({"PREFACTOR_REDACT_CALLBACK": "no_colon_here"})
    with pytest.raises(ConfigError, match="PREFACTOR_REDACT_CALLBACK: cannot load"):
        MappingOptions.from_config(PrefactorConfig.load({"PREFACTOR_REDACT_CALLBACK": "no_such_module_x:fn"}))
    with pytest.raises(ConfigError, match="PREFACTOR_MAX_INPUT_LENGTH"):
        PrefactorConfig.load({"PREFACTOR_MAX_INPUT_LENGTH": "-1"})


@pytest.fixture
def recorded_bodies() -> Iterator[tuple[httpx.Client, list[bytes]]]:
    bodies: list[bytes] = []

    def record(request: httpx.Request) -> None:
        # As the server reads it: request bodies go compressed (docs/wire.md), a secret must not be in the JSON.
        body, encoding = request.read(), request.headers.get("content-encoding", "identity")
        if encoding == "zstd":
            body = zstandard.ZstdDecompressor().decompress(body)
        elif encoding == "gzip":
            body = gzip.decompress(body)
        bodies.append(body)

    client = httpx.Client(event_hooks={"request": [record]})
    yield client, bodies
    client.close()


def test_secrets_never_reach_the_server(
    monkeypatch: pytest.MonkeyPatch, recorded_bodies: tuple[httpx.Client, list[bytes]]
) -> None:
    import opentelemetry.instrumentation.openai_v2  # noqa: F401  (the test extra installs it; missing = fail, not skip)
    from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor

    monkeypatch.setenv("OTEL_SEMCONV_STABILITY_OPT_IN", "gen_ai_latest_experimental")
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "SPAN_ONLY")
    client, bodies = recorded_bodies
    with DevServer() as server:
        exporter = exporter_for(
            server,
            finish_grace_seconds=0,
            spool=False,
            http_client=client,
        )
        tracer_provider = TracerProvider()
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        tracer_provider.add_span_processor(BatchSpanProcessor(exporter))
        instrumentor = OpenAIInstrumentor()
        instrumentor.instrument(tracer_provider=tracer_provider)
        try:
            tracer = tracer_provider.get_tracer("app")
            with (
                FakeOpenAI() as fake,
                tracer.start_as_current_span(
                    "handle request",
                    attributes={"Authorization": BEARER, "http.request.header.authorization": (BEARER,)},
                ),
            ):
                openai_workload(fake.base_url)
        finally:
            instrumentor.uninstrument()
        tracer_provider.shutdown()
        stored = server.spans()
    sent = b"".join(bodies).decode()
    assert sent, "the exporter sent nothing"
    assert SECRET_IN_PROMPT not in sent
    assert "tok_live_9f8e7d6c5b4a3210" not in sent
    chat = next(s for s in stored if s["payload"]["name"] == "chat gpt-tools")
    assert chat["payload"]["token_usage"]["prompt_tokens"] == 11  # gen_ai.usage.input_tokens arrived
    root = next(s for s in stored if s["payload"]["name"] == "handle request")
    assert root["payload"]["metadata"]["Authorization"] == "[REDACTED:secret_key]"


def test_a_signature_is_masked_when_shaped_like_a_credential_and_kept_when_it_is_a_program() -> None:
    """`signature` names an HMAC or a request signature (masked) and a DSPy or function signature (kept, still
    value-scanned); other secret keys mask whatever they hold."""
    from prefactor_otel.mapping.redaction import Redactor

    redactor = Redactor()
    hmac = "t=1492774577,v1=5257a869e7ecebeda32affa62cdca3fa51cad7e77a0e56ff536d0ce8e108d8bd"
    program = "StringSignature(question -> answer\n    instructions='Answer briefly.')"
    leaky = "StringSignature(question -> answer) # key sk-proj-abcdefghijklmnopqrstuvwxyz012345"
    log: list[dict[str, object]] = []
    attributes = redactor.redact_attributes(
        {"webhook.signature": hmac, "dspy.signature": program, "fn.signature": leaky, "password": "hunter two"},
        "attributes",
        log,
    )
    assert attributes["webhook.signature"] == "[REDACTED:signature_key]"
    assert attributes["dspy.signature"] == program
    assert "sk-proj" not in str(attributes["fn.signature"]) and attributes["fn.signature"].startswith("StringSig")
    assert attributes["password"] == "[REDACTED:secret_key]"  # whitespace spares only the signature key
    nested: dict[str, object] = {"call": {"signature": program, "request": {"signature": hmac}}}
    redactor.redact_keys_in(nested, "inputs", log)
    assert nested == {"call": {"signature": program, "request": {"signature": "[REDACTED:signature_key]"}}}
    walked = redactor.redact_attributes({"args": ({"signature": program}, {"signature": hmac})}, "attributes", log)
    assert walked["args"] == ({"signature": program}, {"signature": "[REDACTED:signature_key]"})


# --------------------------------------------------------------------------- webhook URLs and key bodies (issue 19)


def _b64_lines(der: bytes, width: int = 64) -> list[str]:
    text = base64.b64encode(der).decode()
    return [text[at : at + width] for at in range(0, len(text), width)]


_RNG = random.Random(1919)
# Key-shaped fakes (a private key's DER header, then random bytes): the rules look at layout and header only.
RSA_PKCS8 = _b64_lines(bytes.fromhex("308204bd020100300d06092a864886f70d0101010500") + _RNG.randbytes(1195))
ED25519_PKCS8 = base64.b64encode(bytes.fromhex("302e020100300506032b657004220420") + _RNG.randbytes(32)).decode()
EC_SEC1 = _b64_lines(bytes.fromhex("30770201010420") + _RNG.randbytes(114))
EC_PEM = "-----BEGIN EC PRIVATE KEY-----\n" + "\n".join(EC_SEC1) + "\n-----END EC PRIVATE KEY-----\n"
MIDDLE = RSA_PKCS8[5:9]  # four lines from inside the body: no header, no marker
OPENSSH = _b64_lines(b"openssh-key-v1\x00" + _RNG.randbytes(400), 70)
CERTIFICATE = _b64_lines(bytes.fromhex("308203a130820289a003020102") + _RNG.randbytes(920))
PUBLIC_KEY = _b64_lines(bytes.fromhex("30820122300d06092a864886f70d01010105000382010f00") + _RNG.randbytes(270))
ORDINARY_64 = base64.b64encode(b"The quick brown fox jumps over the lazy dog, twice").decode()[:64]
PNG = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAA" + base64.b64encode(_RNG.randbytes(3000)).decode()


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("\n".join(MIDDLE), ""),  # a split body: lines of 64 without markers
        ("\r\n".join(MIDDLE) + "\r\n", ""),  # CRLF
        ("-----BEGIN RSA PRIVATE KEY-----\r\n" + "\r\n".join(RSA_PKCS8) + "\r\n-----END RSA PRIVATE KEY-----", ""),
        ("\r\n".join(RSA_PKCS8[-3:]) + "\r\n-----END PRIVATE KEY-----", ""),  # the tail with its END line
        (RSA_PKCS8[-1] + "\n-----END PRIVATE KEY-----", ""),  # only a short last line before the END line
        (json.dumps({"pem": "\n".join(MIDDLE)}), '{"pem": "'),  # escaped line breaks (JSON-in-a-string)
        (json.dumps({"pem": "\r\n".join(MIDDLE)}), '{"pem": "'),
        ("the key is " + "\n".join(MIDDLE[:2]) + "\nthanks", "the key is "),  # two lines suffice
        ("\n".join(EC_SEC1[:1]), ""),  # the first line of a split key: its DER header says what it is
        (ED25519_PKCS8, ""),  # a whole Ed25519 key is one line of 64
        ("PRIVATE_KEY=" + "".join(RSA_PKCS8), "PRIVATE_KEY="),  # a key on one line (an environment variable)
        ("\n".join(OPENSSH), ""),  # OpenSSH: lines of 70
        ("tls.key: " + base64.b64encode(EC_PEM.encode()).decode(), "tls.key: "),  # a Kubernetes secret
        ("-----BEGIN PGP PRIVATE KEY BLOCK-----\n\nlQOYBGA\n=abcd\n-----END PGP PRIVATE KEY BLOCK-----", ""),
        ("\n".join([*MIDDLE[:2], "-----BEGIN CERTIFICATE-----"]), ""),  # a marker after: still a body
    ],
)
def test_a_private_key_body_is_masked_with_or_without_its_markers(text: str, kept: str) -> None:
    log: list[dict[str, object]] = []
    out = MappingOptions().redactor.redact_text(text, "p", log)
    assert out.startswith(kept + "[REDACTED:private_key]"), out
    assert {entry["rule"] for entry in log} == {"private_key"}
    for line in [*MIDDLE, *RSA_PKCS8, *EC_SEC1[:1], *OPENSSH, ED25519_PKCS8]:
        assert line[:16] not in out


@pytest.mark.parametrize(
    "text",
    [
        ORDINARY_64,  # a single line of 64 base64 characters is no key
        f"token {ORDINARY_64}\nnext line",
        f"{ORDINARY_64}\nshort",
        PNG,  # an image: one long line
        f'{{"type": "image_url", "image_url": {{"url": "{PNG}"}}}}',
        "\n".join(hashlib.sha256(bytes([n])).hexdigest() for n in range(4)),  # SHA-256 digests, one per line
        "\n".join(hashlib.sha256(bytes([n])).hexdigest().upper() for n in range(4)),
        "\n".join(base64.encodebytes(_RNG.randbytes(300)).decode().splitlines()),  # MIME: lines of 76
        "-----BEGIN CERTIFICATE-----\n" + "\n".join(CERTIFICATE) + "\n-----END CERTIFICATE-----",
        "\n".join(CERTIFICATE),  # a certificate's body alone: its DER says it is public
        "\n".join(PUBLIC_KEY),
        "ACGT" * 16 + "\n" + "TTGA" * 16 + "\n" + "GATC" * 8,  # a DNA sequence in lines of 64
        "Post it with a Slack incoming webhook (hooks.slack.com/services/...) or a Discord webhook.",
        "https://discord.com/invite/abcdefghijklmnopqrstuvwxyz and https://api.slack.com/messaging/webhooks",
        "Microsoft Teams: create an Incoming Webhook connector; the sig= parameter signs the request.",
        "MIT licence, MIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIII and MD5",
    ],
)
def test_ordinary_base64_and_webhook_prose_are_left_alone(text: str) -> None:
    log: list[dict[str, object]] = []
    assert MappingOptions().redactor.redact_text(text, "p", log) == text
    assert log == []


def test_a_jwt_is_the_jwt_rule_s_alone() -> None:
    log: list[dict[str, object]] = []
    assert MappingOptions().redactor.redact_text(f"{JWT}\n{JWT}", "p", log) == "[REDACTED:jwt]\n[REDACTED:jwt]"
    assert [entry["rule"] for entry in log] == ["jwt"]


@pytest.mark.parametrize(
    ("url", "kept"),
    [
        ("https://hooks.slack.com/services/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", "/services/"),
        ("HTTPS://Hooks.Slack.com/services/T0AB12CD3/B0EF45GH6/q1w2e3r4t5y6u7i8o9p0a1s2", "/services/"),
        ("hooks.slack.com/workflows/T0AB12CD3/A0FLOW123/412345678901234567/q1w2e3r4t5y6u7i8", "/workflows/"),
        ("https://hooks.slack.com/triggers/T0AB12CD3/412345678901234567/q1w2e3r4t5y6u7i8o9p0", "/triggers/"),
        ("https://discord.com/api/webhooks/1234567890123456789/" + "Ab_-9" * 13, "/1234567890123456789/"),
        ("https://discordapp.com/api/v10/webhooks/1234567890123456789/" + "Ab_-9" * 13, "/1234567890123456789/"),
        (
            "https://contoso.webhook.office.com/webhookb2/0f5c3b9e-1111-4a2b-9c3d-aaaaaaaaaaaa@72f988bf-86f1-41af"
            "-91ab-2d7cd011db47/IncomingWebhook/0123456789abcdef0123456789abcdef/0f5c3b9e-2222-4a2b-9c3d-bbbb",
            "/webhookb2/",
        ),
        ("https://outlook.office.com/webhook/0f5c3b9e-1111-4a2b@72f988bf-86f1/IncomingWebhook/0123abcd", "/webhook/"),
        (
            "https://prod-00.westus.logic.azure.com:443/workflows/0123abcd/triggers/manual/paths/invoke?api-version="
            "2016-06-01&sp=%2Ftriggers%2Fmanual%2Frun&sv=1.0&sig=AbCdEfGhIjKlMnOpQrStUvWxYz0123456789-_abcd",
            "&sig=",
        ),
    ],
)
def test_a_webhook_url_keeps_its_route_and_loses_its_secret(url: str, kept: str) -> None:
    log: list[dict[str, object]] = []
    out = MappingOptions().redactor.redact_text(f"notify {url} now", "p", log)
    assert out.startswith("notify ") and out.endswith(f"{kept}[REDACTED:webhook_url] now"), out
    assert log == [{"path": "p", "rule": "webhook_url", "count": 1}]


def test_a_key_split_over_the_items_of_a_string_array_is_masked_item_by_item() -> None:
    tracer_provider, collector = provider()
    lines = (*RSA_PKCS8[10:14], RSA_PKCS8[-1])
    attributes = {"deploy.key": lines, "tags": (ORDINARY_64, "blue"), "hashes": ("a" * 64, "b" * 64)}
    with tracer_provider.get_tracer("t").start_as_current_span("deploy", attributes=attributes):  # type: ignore[arg-type]
        pass
    metadata = map_span(collector.spans[0]).payload["metadata"]
    assert metadata["deploy.key"] == ["[REDACTED:private_key]"] * 5
    assert metadata["tags"] == [ORDINARY_64, "blue"] and metadata["hashes"] == ["a" * 64, "b" * 64]


def test_the_recorded_genai_fixtures_have_nothing_masked_by_the_key_body_and_webhook_rules() -> None:
    from tests.fixtures.semconv import replay

    fixtures = sorted(path.name for path in replay.HERE.glob("*.json"))
    assert len(fixtures) >= 9
    masked = []
    for fixture in fixtures:
        for span in replay.load(fixture):
            record = map_span(span)
            for entry in record.payload.get("metadata", {}).get("prefactor.redactions", []):
                if entry["rule"] in ("private_key", "webhook_url"):
                    masked.append((fixture, span.name, entry))
    assert masked == []
