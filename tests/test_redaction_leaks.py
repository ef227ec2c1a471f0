"""Secrets leave the process through no field: span and event names, bytes values, nested attribute values, Basic
credentials, AWS secret keys, deeply nested JSON, status, exceptions, links, scope and Resource; webhook URLs and a
private key split from its BEGIN/END lines over several attributes (issue 19). Checked on the mapped record, on what
a real local server stored (and `serve` would write to its state file), on the journal of open runs, and on the
bytes of spool files written while the server was down."""

from __future__ import annotations

import base64
import json
import math
import random
from pathlib import Path

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import Link, Status, StatusCode

from prefactor_otel.devserver import DevServer
from prefactor_otel.mapping import MappingOptions, map_span
from prefactor_otel.mapping.redaction import MAX_DEPTH
from tests.fixtures.semconv.checks import provider
from tests.spans import Collector, exporter_for

AWS_KEY_ID = "AKIAIOSFODNN7EXAMPLE"
AWS_SECRETS = [
    "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKE1",
    "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKE2",
    "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKE3",
    "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKE4",
]
BASIC = base64.b64encode(b"svc-user:basic-pass-8812").decode()
PROXY_BASIC = base64.b64encode(b"proxy:proxy-pass-1133").decode()
# Every string that must never be seen outside the process (each distinct, so a leak names its field).
SECRETS = {
    "bytes under a secret key": "bytes-api-key-VALUE-771",
    "bytes scanned as text": "sk-bytesabcdefghijklmnop99",
    "span name": "sk-spannameabcdefghijklm42",
    "event name": "evtnameBearerTok12345",
    "basic auth": BASIC,
    "proxy basic auth": PROXY_BASIC,
    "deep client_secret": "CS-deep-secret-4242",
    "deep cookie": "COOKIEdeepvalue9999",
    "mapping value": "pw-in-mapping-7777",
    "status description": "STATUSsecret1234",
    "exception message": "EXCsecretmsg5678",
    "link attribute": "LINKsecret321",
    "scope name": "sk-scopenameabcdefghijk77",
    "resource": "RESsecret555xyz",
    **{f"aws secret {index}": value for index, value in enumerate(AWS_SECRETS)},
}


def _nested(depth: int, leaf: dict[str, object]) -> dict[str, object]:
    value: dict[str, object] = leaf
    for level in range(depth):
        value = {f"level{level}": value}
    return value


def _emit(tracer_provider: TracerProvider) -> None:
    tracer = tracer_provider.get_tracer(f"plugin-{SECRETS['scope name']}", "1.0")
    with tracer.start_as_current_span("root") as root:
        root.set_attribute("note", "plain")
        root.set_status(Status(StatusCode.ERROR, f"login failed: secret={SECRETS['status description']}"))
    deep_arguments = {
        "task": "deploy",
        "config": _nested(40, {"client_secret": SECRETS["deep client_secret"]}),
        "jar": _nested(40, {"cookie": SECRETS["deep cookie"]}),
    }
    link = Link(root.get_span_context(), {"api_key": SECRETS["link attribute"]})
    with tracer.start_as_current_span(
        f"execute_tool deploy {SECRETS['span name']}",
        links=[link],
        attributes={
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": "deploy",
            "gen_ai.tool.call.arguments": json.dumps(deep_arguments),
            "api_key": SECRETS["bytes under a secret key"].encode(),
            "payload.raw": f"token {SECRETS['bytes scanned as text']}".encode(),
            "request.headers": f"Host: x\r\nAuthorization: Basic {BASIC}\r\nProxy-Authorization: Basic {PROXY_BASIC}",
            "env.dump": f"aws_secret_access_key={AWS_SECRETS[0]} AWS_SECRET_ACCESS_KEY: {AWS_SECRETS[1]}",
            "creds.csv": f"{AWS_KEY_ID},{AWS_SECRETS[2]}",
            "creds.note": f"key {AWS_SECRETS[3]} for id {AWS_KEY_ID}",
            "app.settings": {"db": {"password": SECRETS["mapping value"], "pool": 5}},  # type: ignore[dict-item]
        },
    ) as span:
        span.add_event(f"retry Bearer {SECRETS['event name']}", {"attempt": 1})
        span.add_event(
            "exception",
            {
                "exception.type": "AuthError",
                "exception.message": f"rejected client_secret={SECRETS['exception message']}",
                "exception.stacktrace": f"Traceback ...\nAuthError: Authorization: Basic {BASIC}",
            },
        )
        span.set_status(Status(StatusCode.ERROR, "deploy failed"))


def _resource() -> Resource:
    return Resource.create(
        {"service.name": "leaky-agent", "service.namespace": f"team secret={SECRETS['resource']}", "host.name": "h1"}
    )


def _leaks(text: str) -> list[str]:
    return [field for field, secret in SECRETS.items() if secret in text]


def test_every_field_of_a_mapped_span_is_redacted() -> None:
    collector = Collector()
    tracer_provider = TracerProvider(resource=_resource())
    tracer_provider.add_span_processor(SimpleSpanProcessor(collector))
    _emit(tracer_provider)
    for span in collector.spans:
        record = map_span(span, MappingOptions())
        text = json.dumps([record.payload, record.result_payload, record.name, record.scope])
        assert _leaks(text) == [], span.name
    tool = map_span(collector.spans[-1], MappingOptions())
    payload = tool.payload
    metadata = payload["metadata"]
    assert metadata["api_key"] == "[REDACTED:secret_key]"
    assert "[REDACTED:api_key]" in metadata["payload.raw"] and "[REDACTED:api_key]" in payload["name"]
    assert metadata["request.headers"].count("Basic [REDACTED:basic_auth]") == 2
    assert metadata["app.settings"] == {"db": {"password": "[REDACTED:secret_key]", "pool": 5}}
    assert payload["tool_name"] == "deploy"
    rules = {entry["rule"] for entry in metadata["prefactor.redactions"]}
    assert {"basic_auth", "aws_secret_key", "secret_assignment", "depth_limit", "secret_key", "api_key"} <= rules
    assert metadata["resource.service.namespace"] == "team secret=[REDACTED:secret_assignment]"
    root = map_span(collector.spans[0], MappingOptions())
    assert root.payload["error"]["message"] == "login failed: secret=[REDACTED:secret_assignment]"


def test_nesting_beyond_the_depth_limit_is_masked_not_sent() -> None:
    tracer_provider, collector = provider()
    arguments = {"shallow": {"cookie": "c1"}, "deep": _nested(MAX_DEPTH + 8, {"cookie": SECRETS["deep cookie"]})}
    attributes = {
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.call.arguments": json.dumps(arguments),
        "app.tree": _nested(MAX_DEPTH + 8, {"leaf": "x"}),
    }
    with tracer_provider.get_tracer("t").start_as_current_span("execute_tool t", attributes=attributes):  # type: ignore[arg-type]
        pass
    record = map_span(collector.spans[0])
    assert _leaks(json.dumps(record.payload)) == []
    assert record.payload["inputs"]["arguments"]["shallow"] == {"cookie": "[REDACTED:secret_key]"}
    assert "[REDACTED:depth_limit]" in json.dumps(record.payload["inputs"]["arguments"]["deep"])
    assert "[REDACTED:depth_limit]" in json.dumps(record.payload["metadata"]["app.tree"])


def test_secrets_reach_neither_the_server_nor_the_spool(tmp_path: Path) -> None:
    with DevServer() as server:
        exporter = exporter_for(server, spool=False)
        tracer_provider = TracerProvider(resource=_resource())
        tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
        _emit(tracer_provider)
        tracer_provider.shutdown()
        stored = json.dumps(server.snapshot())
        assert len(server.spans()) == 2  # both spans arrived, redacted
    assert _leaks(stored) == []
    assert "[REDACTED:basic_auth]" in stored and "[REDACTED:depth_limit]" in stored

    down = DevServer().start()
    down.stop()  # a refused port: everything the exporter cannot deliver goes to the spool
    spool_dir = tmp_path / "spool"
    exporter = exporter_for(down, spool_dir=str(spool_dir), export_timeout=1, shutdown_timeout=1)
    tracer_provider = TracerProvider(resource=_resource())
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    _emit(tracer_provider)
    tracer_provider.shutdown()
    files = [path for path in spool_dir.rglob("*") if path.is_file()]
    spooled = b"".join(path.read_bytes() for path in files)
    assert b"execute_tool deploy" in spooled  # the spans were spooled...
    assert [field for field, secret in SECRETS.items() if secret.encode() in spooled] == []  # ...without a secret


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, -3, 2.5])
def test_a_bad_usage_count_is_absent_and_the_other_typed_fields_stay(bad: float) -> None:
    tracer_provider, collector = provider()
    attributes = {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "gpt-4o",
        "gen_ai.input.messages": json.dumps([{"role": "user", "parts": [{"type": "text", "content": "hi"}]}]),
        "gen_ai.usage.input_tokens": bad,
        "gen_ai.usage.output_tokens": 7,
    }
    with tracer_provider.get_tracer("t").start_as_current_span("chat gpt-4o", attributes=attributes):  # type: ignore[arg-type]
        pass
    record = map_span(collector.spans[0])
    payload = record.payload
    assert payload["model"] == "gpt-4o" and payload["inputs"]["messages"][0]["content"] == "hi"
    assert payload["token_usage"] == {"completion_tokens": 7}  # the bad count is absent, not an invented 0
    metadata = payload["metadata"]
    assert "prefactor.mapping_error" not in metadata
    assert metadata["prefactor.invalid_counts"] == ["gen_ai.usage.input_tokens"]
    assert "gen_ai.usage.input_tokens" in metadata  # kept as it came, so nothing is lost


@pytest.mark.parametrize(
    ("text", "rule", "kept"),
    [
        (f"Authorization: Basic {BASIC}", "basic_auth", "Authorization: Basic "),
        (f'{{"Proxy-Authorization": "basic {PROXY_BASIC}"}}', "basic_auth", '"Proxy-Authorization": "basic '),
        (f"aws_secret_access_key = {AWS_SECRETS[0]}", "secret_assignment", "aws_secret_access_key = "),
        (f"AWS_SECRET_ACCESS_KEY: {AWS_SECRETS[0]}", "secret_assignment", "AWS_SECRET_ACCESS_KEY: "),
        (f"{AWS_KEY_ID} / {AWS_SECRETS[0]}", "aws_secret_key", "[REDACTED:aws_access_key] / "),
        ('{\\"client_secret\\": \\"abc123xyz\\"}', "secret_assignment", '{\\"client_secret\\": \\"'),
        ("client-secret: cs-0123456789", "secret_assignment", "client-secret: "),
    ],
)
def test_new_value_rules(text: str, rule: str, kept: str) -> None:
    log: list[dict[str, object]] = []
    out = MappingOptions().redactor.redact_text(text, "p", log)
    assert f"[REDACTED:{rule}]" in out and kept in out, out
    assert rule in {entry["rule"] for entry in log}


@pytest.mark.parametrize(
    "text",
    [
        "the secretary: Jane",
        "Basic authentication is described in RFC 7617",
        '{"max_tokens": 100, "client_secret": null, "secret": 5, "secret_key": {"a": 1}}',
        "authorization: pending review",
    ],
)
def test_new_value_rules_leave_ordinary_text_and_json_literals_alone(text: str) -> None:
    assert MappingOptions().redactor.redact_text(text, "p", []) == text


# --------------------------------------------------------------------------- webhook URLs and split key bodies


def _key_lines(seed: int, der_head: bytes, size: int) -> list[str]:
    """A key-shaped PEM body: a private key's DER header, random bytes, base64 in lines of 64 (a fake: no real key
    is kept in the repository, and none is needed: the rules look at the layout and the header only)."""
    der = der_head + random.Random(seed).randbytes(size - len(der_head))
    text = base64.b64encode(der).decode()
    return [text[at : at + 64] for at in range(0, len(text), 64)]


PKCS8_RSA_HEAD = bytes.fromhex("308204be020100300d06092a864886f70d0101010500048204a8")  # PrivateKeyInfo, rsaEncryption
KEY_LINES = _key_lines(19, PKCS8_RSA_HEAD, 1218)  # 25 lines of 64 and a last one of 24
# Assembled from parts so that no scanner takes this file for a leak; each secret part is distinct.
SLACK_SECRET = "T0PF19LEAK/B0PF19LEAK/pf19SlackHookSecretVal42"
SLACK_URL = "https://hooks.slack" + ".com/services/" + SLACK_SECRET
SLACK_WORKFLOW_SECRET = "T0PF19LEAK/A0PF19FLOW/461234567890123456/pf19WorkflowSecretVal77"
DISCORD_SECRET = "pf19DiscordWebhookToken_" + "x9Y8z7W6v5U4t3S2r1Q0" * 3
DISCORD_URL = "https://discord" + ".com/api/webhooks/1234567890123456789/" + DISCORD_SECRET
TEAMS_SECRET = (
    "0f5c3b9e-1111-4a2b-9c3d-aaaaaaaaaaaa@72f988bf-86f1-41af-91ab-2d7cd011db47/IncomingWebhook/"
    "pf19teams0123456789abcdef0123456/0f5c3b9e-2222-4a2b-9c3d-bbbbbbbbbbbb"
)
TEAMS_URL = "https://contoso.webhook.office" + ".com/webhookb2/" + TEAMS_SECRET
FLOW_SIG = "pf19FlowSig-AbCdEfGhIjKlMnOpQrStUvWxYz0123456"
FLOW_URL = (
    "https://prod-12.westus.logic.azure.com:443/workflows/0123456789abcdef0123456789abcdef/triggers/manual/paths/"
    f"invoke?api-version=2016-06-01&sp=%2Ftriggers%2Fmanual%2Frun&sv=1.0&sig={FLOW_SIG}"
)
WEBHOOK_SECRETS = {
    "slack webhook": SLACK_SECRET,
    "slack workflow": SLACK_WORKFLOW_SECRET,
    "discord webhook": DISCORD_SECRET,
    "teams webhook": TEAMS_SECRET,
    "power automate sig": FLOW_SIG,
}


def _emit_split_key_and_webhooks(tracer_provider: TracerProvider) -> None:
    """The issue's leak: a Slack webhook URL, and a PEM key body split from its BEGIN/END lines over several
    attributes (LF, CRLF, escaped inside JSON, one line per item of a string array, the tail with the END line)."""
    tracer = tracer_provider.get_tracer("leaky-tools", "1.0")
    arguments = {"host": "web-1", "pem": "\n".join(KEY_LINES[12:18]), "notify": SLACK_URL}
    with tracer.start_as_current_span("invoke_agent ops", attributes={"gen_ai.operation.name": "invoke_agent"}):
        with tracer.start_as_current_span(
            "execute_tool install_key",
            attributes={
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": "install_key",
                "gen_ai.tool.call.arguments": json.dumps(arguments),
                "deploy.key.begin": "-----BEGIN PRIVATE KEY-----",
                "deploy.key.part1": "\n".join(KEY_LINES[0:6]),
                "deploy.key.part2": "\r\n".join(KEY_LINES[6:12]) + "\r\n",
                "deploy.key.lines": tuple(KEY_LINES[18:24]),
                "deploy.key.end": "\n".join(KEY_LINES[24:]) + "\n-----END PRIVATE KEY-----\n",
                "notify.url": SLACK_URL,
                "notify.teams": TEAMS_URL,
            },
        ) as span:
            span.add_event("exception", {"exception.message": f"POST {DISCORD_URL} answered 429"})
            span.set_status(Status(StatusCode.ERROR, f"webhook {SLACK_URL} failed"))
        with tracer.start_as_current_span(
            "chat gpt-4o",
            attributes={
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": "gpt-4o",
                "gen_ai.input.messages": json.dumps(
                    [
                        {
                            "role": "user",
                            "parts": [
                                {
                                    "type": "text",
                                    "content": f"Post to https://hooks.slack.com/workflows/{SLACK_WORKFLOW_SECRET} "
                                    f"and to {FLOW_URL}; the key ends with\r\n"
                                    + "\r\n".join(KEY_LINES[20:])
                                    + "\r\n-----END PRIVATE KEY-----",
                                }
                            ],
                        }
                    ]
                ),
            },
        ):
            pass


def _split_key_leaks(text: str) -> list[str]:
    """What of the key and the webhook secrets `text` holds: a line of the key, or 20 characters of one."""
    leaks = [f"key line {index}" for index, line in enumerate(KEY_LINES) if line[:20] in text or line[-20:] in text]
    return leaks + [field for field, secret in WEBHOOK_SECRETS.items() if secret in text or secret[-16:] in text]


def test_a_split_key_body_and_webhook_urls_reach_no_sink(tmp_path: Path) -> None:
    from prefactor_otel.devserver.persist import dump

    spool_dir = tmp_path / "spool"
    with DevServer() as server:
        exporter = exporter_for(server, spool_dir=str(spool_dir))
        tracer_provider = TracerProvider(resource=_resource())
        tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
        _emit_split_key_and_webhooks(tracer_provider)
        journals = list(spool_dir.glob("runs-*.journal"))  # the run is open: its journal is on disk
        journaled = b"".join(path.read_bytes() for path in journals)
        tracer_provider.shutdown()
        stored = json.dumps(server.snapshot())
        state_file = json.dumps(dump(server.store, server.token))  # what `serve --state` writes
        assert len(server.spans()) == 3  # every span arrived, redacted
    assert journals and journaled.startswith(b"# prefactor-otel run journal")
    assert _split_key_leaks(stored) == []
    assert _split_key_leaks(state_file) == []
    assert _split_key_leaks(journaled.decode("utf-8", "replace")) == []
    assert "[REDACTED:private_key]" in stored and "[REDACTED:webhook_url]" in stored
    assert "https://hooks.slack.com/services/[REDACTED:webhook_url]" in stored  # the route stays readable

    down = DevServer().start()
    down.stop()  # a refused port: everything goes to the spool, runs to the journal
    spool_dir = tmp_path / "spool-down"
    exporter = exporter_for(down, spool_dir=str(spool_dir), export_timeout=1, shutdown_timeout=1)
    tracer_provider = TracerProvider(resource=_resource())
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    _emit_split_key_and_webhooks(tracer_provider)
    tracer_provider.shutdown()
    files = [path for path in spool_dir.rglob("*") if path.is_file()]
    spooled = b"".join(path.read_bytes() for path in files)
    assert b"execute_tool install_key" in spooled  # the spans were spooled...
    assert _split_key_leaks(spooled.decode("utf-8", "replace")) == []  # ...without the key or a webhook
