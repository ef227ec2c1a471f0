"""The local server's web page, in a real headless browser: Debian's chromium driven by Playwright.

Real DevServers on 127.0.0.1, real OTel spans through the real exporter and processor, the real page: it lists
the runs, shows a run as a tree (model, tokens, tool, previews, errors), follows a live run without a reload,
terminates a run, asks for a token it lacks, refuses a rebinding host name, and shows hostile text as text.

Playwright rather than Selenium: one Python package drives the Debian binary directly (`executable_path`), with
no second system package (chromium-driver) to keep in step with the browser, and it waits for what the page shows
(`expect(...)`) instead of tests sleeping. Playwright's own browser download is never used.
"""

from __future__ import annotations

import http.server
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

import prefactor_otel
from prefactor_otel import PrefactorSpanProcessor
from prefactor_otel.devserver import DevServer
from prefactor_otel.devserver.runview import run_views
from prefactor_otel.devserver.timefmt import format_timestamp, now_us, parse_timestamp
from tests.spans import agent_trace, exporter_for, make_provider, processor_for, wait_for
from tests.test_demo_loop import demo
from tests.test_devserver import create_span, register

CHROMIUM = "/usr/bin/chromium"
INSTALL = "apt-get update && apt-get install -y chromium"
REBIND_NAME = "rebind.example"  # resolved to 127.0.0.1 by the browser only: what a DNS-rebinding page achieves
_CHROMIUM_NETWORK_GUARDS = (
    "LocalNetworkAccessChecks",
    "BlockInsecurePrivateNetworkRequests",
    "PrivateNetworkAccessSendPreflights",
    "PrivateNetworkAccessRespectPreflightResults",
)
LIMIT_MS = 15_000  # a safety limit against a hang, not a timing assertion


def _sync_api() -> Any:
    try:
        from playwright import sync_api
    except ImportError as exc:  # the test extra installs it: a missing one is an error, not a skip
        raise RuntimeError("playwright is missing: pip install -e '.[test]'") from exc
    return sync_api


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not os.access(CHROMIUM, os.X_OK):
        raise RuntimeError(f"the web page tests need Debian's chromium at {CHROMIUM}: {INSTALL}")
    sync_api = _sync_api()
    sync_api.expect.set_options(timeout=LIMIT_MS)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            # --no-sandbox: CI and this machine run as root, where chromium's sandbox cannot start
            args=[
                "--no-sandbox",
                f"--host-resolver-rules=MAP {REBIND_NAME} 127.0.0.1",
                # Chromium's own guard (Local/Private Network Access) blocks a public page's fetches to 127.0.0.1;
                # Firefox and Safari have none, so it is turned off: the server's guard is what is tested.
                f"--disable-features={','.join(_CHROMIUM_NETWORK_GUARDS)}",
            ],
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    page.set_default_timeout(LIMIT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert not errors, f"the page raised: {errors}"


def expect(locator: Any) -> Any:
    return _sync_api().expect(locator)


def _finished_runs(srv: DevServer) -> None:
    provider, _ = make_provider()
    provider.add_span_processor(SimpleSpanProcessor(exporter_for(srv)))
    agent_trace(provider)
    with pytest.raises(RuntimeError):
        agent_trace(provider, fail=True)
    provider.shutdown()


def _live(srv: DevServer, **options: Any) -> tuple[TracerProvider, PrefactorSpanProcessor]:
    provider = TracerProvider(resource=Resource.create({"service.name": "live-agent", "service.version": "2.0"}))
    processor = processor_for(srv, **options)
    provider.add_span_processor(processor)
    return provider, processor


def _active_run_id(srv: DevServer) -> str:
    active = wait_for(lambda: [i for i in srv.instances() if i["status"] == "active"])
    assert len(active) == 1, srv.instances()
    return str(active[0]["id"])


def test_the_page_lists_runs_and_shows_a_run_as_a_tree_with_model_tokens_tool_previews_and_errors(
    srv: DevServer, page: Any
) -> None:
    _finished_runs(srv)
    page.goto(srv.page_url)

    rows = page.locator("#runs-body tr")
    expect(rows).to_have_count(2)
    # newest first: the failed run was sent second
    expect(rows.nth(0)).to_contain_text("test-agent@1.2.3")
    expect(rows.nth(0).locator(".badge")).to_have_text("failed")
    expect(rows.nth(1).locator(".badge")).to_have_text("complete")
    expect(rows.nth(0)).to_contain_text("invoke_agent support")
    expect(rows.nth(0).locator("td").nth(6)).to_have_text("3")  # errors: agent, tool and its child failed
    expect(rows.nth(0).locator("td").nth(7)).to_have_text("17")  # tokens

    page.get_by_role("button", name="invoke_agent support").first.click()
    tree = page.locator("#tree")
    expect(page.locator("#run-heading")).to_have_text("test-agent@1.2.3 · invoke_agent support")
    chat = tree.locator("li[role=treeitem]", has_text="chat gpt-4o").last
    expect(chat.locator(".type").first).to_have_text("llm")
    expect(chat.locator(".fact-model .value")).to_have_text("gpt-4o")
    expect(chat.locator(".fact-tokens .value")).to_have_text("in 12 / out 5 / total 17")
    expect(chat.locator(".preview-in .value")).to_contain_text("hi")
    tool = tree.locator("li[role=treeitem]", has_text="execute_tool lookup").last
    expect(tool.locator(".fact-tool .value").first).to_have_text("lookup")
    expect(tool.locator(":scope > .span-error")).to_have_text("error RuntimeError: tool broke")
    # the tree's shape: the chat and the tool under the agent, the db query under the tool, in the order they ran
    names = tree.locator(".span-name").all_text_contents()
    assert names == ["invoke_agent support", "chat gpt-4o", "execute_tool lookup", "db query"]
    levels = tree.locator("li[role=treeitem]").evaluate_all("items => items.map(i => i.getAttribute('aria-level'))")
    assert levels == ["1", "2", "2", "3"]
    expect(page.locator("#run-summary")).to_contain_text("in 12 / out 5 / total 17")
    expect(page.locator("#run-summary")).to_contain_text("lookup")

    # collapse and expand: the tool's child hides and comes back
    db_query = tree.get_by_text("db query")
    page.get_by_role("button", name="Collapse execute_tool lookup").click()
    expect(db_query).to_be_hidden()
    page.get_by_role("button", name="Expand execute_tool lookup").click()
    expect(db_query).to_be_visible()


def test_the_parts_of_a_trace_that_crossed_processes_are_listed_together_and_linked(srv: DevServer, page: Any) -> None:
    """Two exporters (two processes' parts, docs/cross-process.md) share a trace through a `traceparent`: the list
    heads their runs with a trace line, and the called part shows the span it continues, a link to its run."""
    from opentelemetry import propagate

    caller = TracerProvider(resource=Resource.create({"service.name": "caller"}))
    caller.add_span_processor(SimpleSpanProcessor(exporter_for(srv)))
    callee = TracerProvider(resource=Resource.create({"service.name": "callee"}))
    callee.add_span_processor(SimpleSpanProcessor(exporter_for(srv)))
    with caller.get_tracer("a").start_as_current_span("invoke_agent planner") as root:
        with caller.get_tracer("a").start_as_current_span("call tool service"):
            carrier: dict[str, str] = {}
            propagate.inject(carrier)
            with callee.get_tracer("b").start_as_current_span(
                "handle tool request", context=propagate.extract(carrier)
            ):
                pass
    caller.shutdown()
    callee.shutdown()
    trace_hex = f"{root.get_span_context().trace_id:032x}"
    assert wait_for(lambda: len(srv.instances()) == 2 and all(i["status"] == "complete" for i in srv.instances()))

    page.goto(srv.page_url)
    rows = page.locator("#runs-body tr")
    expect(rows).to_have_count(3)
    expect(rows.nth(0)).to_have_class("trace-row")
    expect(rows.nth(0)).to_contain_text(f"trace {trace_hex} · 2 parts")
    expect(rows.nth(1)).to_contain_text("invoke_agent planner")  # the caller's part first
    expect(rows.nth(2)).to_contain_text("handle tool request")

    page.get_by_role("button", name="handle tool request").click()
    continues = page.locator("#run-summary .fact.continues dd")
    expect(continues).to_have_text("call tool service of run invoke_agent planner")
    expect(page.locator("#run-summary")).to_contain_text(trace_hex)
    continues.get_by_role("button", name="invoke_agent planner").click()
    expect(page.locator("#run-heading")).to_contain_text("invoke_agent planner")
    expect(page.locator("#run-summary .fact.continues")).to_have_count(0)


def test_a_live_run_shows_active_then_complete_without_a_reload_keeping_the_selected_run(
    srv: DevServer, page: Any
) -> None:
    provider, _ = _live(srv)
    tracer = provider.get_tracer("t")
    try:
        with tracer.start_as_current_span("invoke_agent helper", attributes={"gen_ai.operation.name": "invoke_agent"}):
            _active_run_id(srv)
            page.goto(srv.page_url)
            row = page.locator("#runs-body tr").first
            expect(row.locator(".badge")).to_have_text("active")
            row.get_by_role("button").click()
            expect(page.locator("#run-actions")).to_be_visible()  # the terminate form, for an active run
            page.evaluate("window.loadedOnce = true")  # gone if the page reloaded
        provider.force_flush(LIMIT_MS)
        expect(row.locator(".badge")).to_have_text("complete")
        expect(page.locator("#run-summary .badge")).to_have_text("complete")
        expect(page.locator("#run-actions")).to_be_hidden()
        assert page.evaluate("window.loadedOnce") is True
        assert page.locator("#runs-body tr.selected").count() == 1
    finally:
        provider.shutdown()


def test_the_terminate_button_terminates_an_active_run_and_the_app_sees_it(srv: DevServer, page: Any) -> None:
    provider, _ = _live(srv, control_poll_interval=0.2)
    tracer = provider.get_tracer("t")
    try:
        with tracer.start_as_current_span("invoke_agent helper", attributes={"gen_ai.operation.name": "invoke_agent"}):
            run_id = _active_run_id(srv)
            page.goto(srv.page_url)
            page.get_by_role("button", name="invoke_agent helper").click()
            page.get_by_label("Reason").fill("stopped from the page")
            page.get_by_role("button", name="Terminate run").click()
            expect(page.locator("#terminate-result")).to_have_text("Run terminated: stopped from the page")
            instance = next(i for i in srv.instances() if i["id"] == run_id)
            assert instance["status"] == "terminated"
            assert instance["termination_reason"] == "stopped from the page"
            # the application learns of it through the exporter's control (polled here)
            assert wait_for(prefactor_otel.is_terminated)
            assert prefactor_otel.termination_reason() == "stopped from the page"
            expect(page.locator("#run-summary .badge")).to_have_text("terminated")
            expect(page.locator("#run-summary")).to_contain_text("stopped from the page")
            expect(page.locator("#run-actions")).to_be_hidden()
    finally:
        provider.shutdown()


def test_terminating_a_run_that_already_ended_shows_the_servers_answer(srv: DevServer, page: Any) -> None:
    provider, _ = _live(srv)
    tracer = provider.get_tracer("t")
    try:
        with tracer.start_as_current_span("invoke_agent helper", attributes={"gen_ai.operation.name": "invoke_agent"}):
            run_id = _active_run_id(srv)
            page.clock.install()  # the page's refresh timers wait for the test: it still shows the run active
            page.goto(srv.page_url)
            page.get_by_role("button", name="invoke_agent helper").click()
            expect(page.locator("#run-actions")).to_be_visible()
            srv.terminate(run_id, "stopped elsewhere first")
            page.get_by_label("Reason").fill("too late")
            page.get_by_role("button", name="Terminate run").click()
            expect(page.locator("#terminate-result")).to_have_text(
                "Not terminated: HTTP 409: only an active instance can be terminated, not terminated"
            )
            expect(page.locator("#terminate-result")).to_have_class("message error")
    finally:
        provider.shutdown()


def test_without_a_token_the_page_asks_for_one_and_a_wrong_token_is_refused_clearly(srv: DevServer, page: Any) -> None:
    _finished_runs(srv)
    page.goto(srv.url + "/")
    expect(page.locator("#token-form")).to_be_visible()
    expect(page.locator("#app")).to_be_hidden()

    page.get_by_label("API token").fill("pf_not_the_token")
    page.get_by_role("button", name="Show runs").click()
    expect(page.get_by_role("alert")).to_have_text(
        "The server refused this token (HTTP 401: invalid API token). Use the token prefactor-otel serve "
        "printed, or open the page URL it printed."
    )
    expect(page.get_by_role("alert").locator("code")).to_have_text("prefactor-otel serve")  # a command, no backticks
    expect(page.locator("#app")).to_be_hidden()

    page.get_by_label("API token").fill(srv.token)
    page.get_by_role("button", name="Show runs").click()
    expect(page.locator("#runs-body tr")).to_have_count(2)


def test_the_token_travels_in_the_fragment_only_and_leaves_the_address_bar(srv: DevServer, page: Any) -> None:
    _finished_runs(srv)
    sent: list[str] = []
    page.on("request", lambda request: sent.append(request.url))
    page.goto(srv.page_url)
    expect(page.locator("#runs-body tr")).to_have_count(2)
    assert "#token=" in srv.page_url
    assert page.url == srv.url + "/"  # removed from the address bar (and so from history and bookmarks)
    assert page.evaluate("sessionStorage.getItem('prefactor-otel.token')") == srv.token
    # what the server saw: the page's files and the runs, never the token in a request line
    paths = [entry.path for entry in srv.requests]
    assert {"/", "/app.js", "/style.css", "/_dev/runs"} <= set(paths)
    assert not [path for path in paths if srv.token in path]
    assert not [url for url in sent if srv.token in url]
    # a reload keeps the session's token without it ever being in the URL again
    page.reload()
    expect(page.locator("#runs-body tr")).to_have_count(2)


def test_the_page_files_carry_strict_headers_and_need_no_token(srv: DevServer) -> None:
    expected = {
        "/": "text/html; charset=utf-8",
        "/app.js": "text/javascript; charset=utf-8",
        "/style.css": "text/css; charset=utf-8",
    }
    for path, content_type in expected.items():
        response = httpx.get(srv.url + path, timeout=10)
        assert response.status_code == 200, path
        assert response.headers["Content-Type"] == content_type
        assert response.headers["Cache-Control"] == "no-store"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Content-Security-Policy"].startswith("default-src 'self'")
    # the data itself still needs the token
    assert httpx.get(srv.url + "/_dev/runs", timeout=10).status_code == 401
    assert httpx.post(srv.url + "/", timeout=10).status_code == 401


def test_a_host_name_that_is_not_this_server_is_refused_dns_rebinding_guard(srv: DevServer, page: Any) -> None:
    response = page.goto(f"http://{REBIND_NAME}:{srv.port}/")
    assert response is not None
    assert response.status == 403
    expect(page.locator("body")).to_contain_text("DNS rebinding")
    assert page.locator("#app").count() == 0
    for host in (REBIND_NAME, f"{REBIND_NAME}:{srv.port}", "192.168.1.20"):
        assert httpx.get(srv.url + "/app.js", headers={"Host": host}, timeout=10).status_code == 403, host
    for host in (f"127.0.0.1:{srv.port}", f"localhost:{srv.port}", "[::1]:8787", "localhost"):
        assert httpx.get(srv.url + "/", headers={"Host": host}, timeout=10).status_code == 200, host


# What an attacker's page runs: read the runs with the token (public or stolen), then terminate the run, as the
# page's own script does; each step reports what the browser let it see.
_ATTACK = """async ([base, token, runId]) => {
  const out = {};
  try {
    const runs = await fetch(base + "/_dev/runs", { headers: { Authorization: "Bearer " + token } });
    out.read = runs.status + " " + (await runs.text());
  } catch (error) { out.read = "blocked: " + error.name; }
  try {
    const done = await fetch(base + "/api/v1/agent_instance/" + runId + "/terminate", {
      method: "POST", headers: { Authorization: "Bearer " + token, "Content-Type": "application/json" },
      body: JSON.stringify({ reason: "attacker" }) });
    out.terminate = done.status + " " + (await done.text());
  } catch (error) { out.terminate = "blocked: " + error.name; }
  // a "simple" request needs no CORS preflight: unless the browser blocks it, only the server can refuse it
  try {
    const simple = await fetch(base + "/_dev/terminate", { method: "POST", mode: "no-cors",
      headers: { "Content-Type": "text/plain" }, body: JSON.stringify({ agent_instance_id: runId, reason: "x" }) });
    out.simple = simple.type;
  } catch (error) { out.simple = "blocked: " + error.name; }
  return out;
}"""


def _one_active_run(srv: DevServer) -> str:
    client = httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {srv.token}"}, timeout=10)
    with client:
        return register(client, srv)


def test_a_dns_rebinding_page_can_neither_read_the_runs_nor_terminate_a_run(srv: DevServer, page: Any) -> None:
    run_id = _one_active_run(srv)
    before = len(srv.requests)
    # The attacker's document is served under its own name; the name then resolves to 127.0.0.1 (the browser's
    # resolver rule), so its fetches reach this server as same-origin requests: only the Host header gives it away.
    attacker = f"http://{REBIND_NAME}:{srv.port}"
    page.route(f"{attacker}/attack.html", lambda route: route.fulfill(status=200, body="<p>cat pictures</p>"))
    page.goto(f"{attacker}/attack.html")
    seen = page.evaluate(_ATTACK, [attacker, srv.token, run_id])
    assert seen["read"].startswith("403 ") and "forbidden_host" in seen["read"], seen
    assert '"runs"' not in seen["read"]
    assert seen["terminate"].startswith("403 ") and "DNS rebinding" in seen["terminate"], seen
    assert [i["status"] for i in srv.instances()] == ["active"]
    reached = [(r.method, r.path, r.status) for r in srv.requests[before:]]
    assert reached[:2] == [("GET", "/_dev/runs", 403), ("POST", f"/api/v1/agent_instance/{run_id}/terminate", 403)]
    assert all(status == 403 for _, _, status in reached), reached  # the simple POST too, if the browser sent it


@pytest.fixture
def other_origin() -> Iterator[str]:
    """A second, unrelated web server on 127.0.0.1 (another port: another origin), serving an innocent page."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"<p>another local app</p>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_a_page_on_another_origin_can_neither_read_the_runs_nor_terminate_a_run(
    srv: DevServer, page: Any, other_origin: str
) -> None:
    run_id = _one_active_run(srv)
    before = len(srv.requests)
    page.goto(other_origin + "/")
    seen = page.evaluate(_ATTACK, [srv.url, srv.token, run_id])
    # the browser withholds the answers (no CORS grant), and the server refused the requests themselves
    assert seen["read"] == "blocked: TypeError" and seen["terminate"] == "blocked: TypeError", seen
    assert [i["status"] for i in srv.instances()] == ["active"]
    reached = [(r.method, r.path, r.status) for r in srv.requests[before:]]
    if seen["simple"] == "opaque":  # the browser sent the simple POST: the server refused it, not the missing token
        assert ("POST", "/_dev/terminate", 403) in reached, reached
    assert all(status == 403 for _, _, status in reached), reached  # nothing else got through
    # the server's own page, in the same browser, still terminates it
    page.goto(srv.page_url)
    page.get_by_role("button").first.click()
    page.get_by_label("Reason").fill("from our own page")
    page.get_by_role("button", name="Terminate run").click()
    expect(page.locator("#terminate-result")).to_have_text("Run terminated: from our own page")
    assert [i["status"] for i in srv.instances()] == ["terminated"]


def test_hostile_text_in_a_span_renders_as_text(srv: DevServer, page: Any) -> None:
    hostile = '<img src=x onerror="window.pwned=1">'
    provider, _ = make_provider(service="<b>bold</b>")
    provider.add_span_processor(SimpleSpanProcessor(exporter_for(srv)))
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span(
        hostile,
        attributes={
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": "<script>window.pwned=2</script>",
            "gen_ai.input.messages": '[{"role":"user","parts":[{"type":"text","content":"<svg onload=alert(1)>"}]}]',
        },
    ):
        pass
    provider.shutdown()
    page.goto(srv.page_url)
    page.get_by_role("button", name=hostile).click()
    expect(page.locator("#tree .span-name")).to_have_text(hostile)
    expect(page.locator("#tree .fact-model .value")).to_have_text("<script>window.pwned=2</script>")
    expect(page.locator("#tree .preview-in .value")).to_contain_text("<svg onload=alert(1)>")
    expect(page.locator("#runs-body td.agent")).to_contain_text("<b>bold</b>")
    assert page.locator("img, svg, script:not([src]), b").count() == 0
    assert page.evaluate("window.pwned") is None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_serve_prints_the_page_url_and_the_page_shows_what_the_server_received(page: Any, tmp_path: Path) -> None:
    port = _free_port()
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    env.pop("PREFACTOR_API_TOKEN", None)
    command = shutil.which("prefactor-otel", path=str(Path(sys.executable).parent)) or "prefactor-otel"
    server = subprocess.Popen(
        [command, "serve", "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    try:
        assert server.stdout is not None
        banner: list[str] = []
        for line in server.stdout:  # bounded: the banner ends with this line, or the process exits
            banner.append(line.rstrip("\n"))
            if line.startswith("Press Ctrl-C"):
                break
        urls = [line.split(": ", 1)[1] for line in banner if line.startswith("Watch runs in a browser: ")]
        assert len(urls) == 1, banner
        assert urls[0].startswith(f"http://127.0.0.1:{port}/#token=")
        token = urls[0].split("#token=", 1)[1]
        page.goto(urls[0])
        expect(page.locator("#no-runs")).to_be_visible()
        expect(page.locator("#connection")).to_contain_text("Updated")
        page.reload()  # a second load: the token now comes from the session, still never from a request
        expect(page.locator("#connection")).to_contain_text("Updated")
    finally:
        server.terminate()
        rest, _ = server.communicate(timeout=30)
    # whatever `serve` prints after its banner (a request log, the summary) never shows the token
    assert token not in rest


def test_demo_loop_prints_the_page_url_and_the_pages_terminate_button_stops_the_running_agent(page: Any) -> None:
    # the real CLI: `prefactor-otel demo --loop` runs an agent that checks raise_if_terminated() between steps
    with demo("--interval", "0.2", "--max-steps", "300") as running:
        url = running.line_starting("Watch it in a browser:").split(": ", 1)[1]
        page.goto(url)
        row = page.locator("#runs-body tr").first
        expect(row.locator(".badge")).to_have_text("active")
        row.get_by_role("button").click()
        expect(page.locator("#tree .span-name").first).to_have_text("invoke_agent weather-watch")
        expect(page.locator("#tree .fact-tool .value").first).to_be_visible()  # a step's tool call, live
        page.get_by_label("Reason").fill("ops: stopped from the page")
        page.get_by_role("button", name="Terminate run").click()
        expect(page.locator("#terminate-result")).to_have_text("Run terminated: ops: stopped from the page")
        code, out, err = running.finish()
    assert code == 0, out + err
    assert "stopped by Prefactor: ops: stopped from the page" in out
    assert "reached --max-steps" not in out and "Traceback" not in err


def _terminated_run_with_a_late_span(srv: DevServer) -> str:
    """A run terminated in Prefactor while its agent span and a model call were in flight, and a tool span the
    agent sent after the termination, which ended 3 s after it (the server keeps it as sent)."""
    with httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {srv.token}"}, timeout=10) as client:
        run_id = register(client, srv, start=False)
        assert client.post(f"/api/v1/agent_instance/{run_id}/start", json={}).status_code == 200
        now = {"started_at": format_timestamp(now_us()), "finished_at": None, "result_payload": None}
        agent = {"name": "invoke_agent stopper"}
        root = create_span(client, run_id, schema_name="otel:agent", status="active", payload=agent, **now)
        root_id = root.json()["details"]["id"]
        chat = {"name": "chat gpt-4o", "model": "gpt-4o"}
        assert create_span(client, run_id, parent_span_id=root_id, status="active", payload=chat, **now)
        srv.terminate(run_id, "seen enough")
        stopped_at = parse_timestamp(next(i for i in srv.instances() if i["id"] == run_id)["finished_at"])
        late = {"name": "execute_tool late", "tool_name": "late"}
        answer = create_span(
            client,
            run_id,
            parent_span_id=root_id,
            payload=late,
            result_payload=None,
            started_at=format_timestamp(stopped_at + 1_000_000),
            finished_at=format_timestamp(stopped_at + 3_000_000),
        )
        assert answer.status_code == 200 and answer.json()["control"]["terminate"] is True, answer.text
    return run_id


def test_a_terminated_run_shows_terminated_with_its_reason_not_failed_and_late_spans_keep_their_bars(
    srv: DevServer, page: Any
) -> None:
    run_id = _terminated_run_with_a_late_span(srv)
    page.goto(srv.page_url)
    row = page.locator("#runs-body tr").first
    expect(row.locator(".badge")).to_have_text("terminated")
    expect(row.locator("td").nth(6)).to_have_text("0")  # stopped on purpose: no error counted
    row.get_by_role("button").first.click()
    expect(page.locator("#run-summary")).to_contain_text("Terminated in Prefactor")
    expect(page.locator("#run-summary")).to_contain_text("seen enough")
    root = page.locator("#tree > li")
    expect(root.locator(":scope > .span-line .badge")).to_have_text("terminated")
    expect(root.locator(":scope > .span-terminated")).to_have_text("stopped terminated in Prefactor: seen enough")
    expect(page.locator("#tree .badge", has_text="failed")).to_have_count(0)
    expect(page.locator("#tree .span-error")).to_have_count(0)
    # The tool that ended after the termination: its bar lies inside its track, with a width, at the end.
    late = page.locator("li[role=treeitem]", has_text="execute_tool late").last.locator(":scope > .span-line")
    track = late.locator(".timebar").bounding_box()
    fill = late.locator(".timebar-fill").bounding_box()
    assert track is not None and fill is not None
    assert fill["width"] >= 0.3 * track["width"]  # 2 of the window's 3+ s
    assert track["x"] <= fill["x"] and fill["x"] + fill["width"] <= track["x"] + track["width"] + 1
    assert run_id in page.locator("#run-summary").inner_text()


def test_at_800_px_the_run_list_fits_the_width_and_tells_runs_apart(srv: DevServer, page: Any) -> None:
    _finished_runs(srv)
    with httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {srv.token}"}, timeout=10) as client:
        for _ in range(12):  # more runs than a small box would show
            run_id = register(client, srv)
            assert create_span(client, run_id, payload={"name": "invoke_agent support", "model": "gpt-4o"})
    page.set_viewport_size({"width": 800, "height": 700})
    page.goto(srv.page_url)
    rows = page.locator("#runs-body tr")
    expect(rows).to_have_count(14)
    runs = page.locator("section.runs")
    fits = "(el) => [el.scrollWidth <= el.clientWidth, el.scrollHeight <= el.clientHeight]"
    assert runs.evaluate(fits) == [True, True]  # not a scrolled box: the page scrolls
    for column in (6, 7):  # Errors and Tokens, in view on the first row
        box = rows.first.locator("td").nth(column).bounding_box()
        assert box is not None and box["x"] + box["width"] <= 800
    # Runs with one root span name are told apart by the end of their run id, their model and start time.
    ids = [str(run["id"]) for run in run_views(srv.snapshot())]
    expect(rows.nth(0).locator(".run-id")).to_have_text("…" + ids[0][-8:])
    expect(rows.nth(0).locator(".run-model")).to_have_text("gpt-4o")
    tags = rows.locator(".run-id").all_inner_texts()
    assert len(set(tags)) == 14
    expect(rows.nth(0).locator("td.start")).not_to_have_text("-")
