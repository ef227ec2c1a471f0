"""`prefactor-otel` command line: demo | serve | show | terminate | doctor | spool | gateway.

`gateway` needs the `gateway` extra (grpcio, uvicorn, opentelemetry-proto): it is imported only when that command
runs, so every other command, and importing this module, loads none of them.

Output piped into a reader that stops early (`prefactor-otel show | head`) ends the command quietly, as a program
killed by SIGPIPE does (exit status 141), instead of a BrokenPipeError traceback (`main`).

Threads: the main thread only (a command may start a server or an exporter with threads of their own)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import textwrap
import threading
import time
from collections.abc import Sequence
from urllib.parse import urlsplit

import httpx


def _take_back_ctrl_c() -> None:
    """Let Ctrl-C (SIGINT) stop this process even when it was started with SIGINT ignored.

    A non-interactive shell starts its background jobs with SIGINT ignored, some runners pass that down to their
    children, and Python keeps an inherited SIG_IGN, so a loop that ends only on Ctrl-C would then run until killed
    (a test runner started in the background met this as a `show --watch` that outlived its SIGINT). The commands
    that say "Ctrl-C to stop" and are not services (`show --watch`, `demo --loop`) take SIGINT back, as procps'
    `watch` does; `serve` keeps what it inherited, as a server run in the background should, and stops on SIGTERM.
    Only the main thread may set a handler: called from another thread (an embedding test), this changes nothing."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _demo(args: argparse.Namespace) -> int:
    if args.loop:
        _take_back_ctrl_c()
        from prefactor_otel.tools.demo_loop import run_demo_loop

        return run_demo_loop(args.max_steps, args.interval)
    if args.gateway:
        from prefactor_otel.tools.demo_gateway import run_demo_gateway

        return run_demo_gateway()
    from prefactor_otel.tools.demo import run_demo

    return run_demo()


def _serve(args: argparse.Namespace) -> int:
    from prefactor_otel.devserver import serve
    from prefactor_otel.devserver.state_file import default_state_path

    return serve(
        args.host,
        args.port,
        args.token,
        agent_id=args.agent_id,
        environment_id=args.environment_id,
        state_path=None if args.memory else (args.state or default_state_path()),
        reset=args.reset,
        allowed_hosts=args.allow_host,
        refuse_encodings=args.refuse_encoding,
        register_without_schema=args.register_without_schema,
        request_log=None if args.quiet else sys.stderr,
    )


def _resolve_token(args: argparse.Namespace) -> bool:
    """Fill in `args.token` and `args.token_source` (named when the token is refused): `--token`, else
    OTEL_EXPORTER_PREFACTOR_API_TOKEN or PREFACTOR_API_TOKEN (as the exporter reads them), else (for a URL on this
    machine only) the token `serve` saved in its state file (`--state`, else the default). False, said on stderr,
    when there is none."""
    args.token_source = "--token"
    if args.token:
        return True
    from prefactor_otel.config.options import read_env

    found = read_env(os.environ, "PREFACTOR_API_TOKEN")  # OTEL_EXPORTER_PREFACTOR_API_TOKEN first, as the exporter
    if found is not None:
        args.token_source, token = found
        args.token = token.strip()
        return True
    from prefactor_otel.devserver.state_file import default_state_path, saved_token
    from prefactor_otel.devserver.webpage import host_allowed

    state = args.state or default_state_path()
    local = host_allowed(urlsplit(args.url).netloc, "127.0.0.1")  # a local server's token never goes elsewhere
    args.token = saved_token(state) if local else None
    args.token_source = f"the state file {state}"
    if args.token:
        return True
    if not local:
        where = f"{args.url} is not on this machine"
    elif not os.path.lexists(os.path.expanduser(state)):
        # Most often `serve` never ran (with this state file): say that first, it is the fix.
        where = f"no state file {state}: has `prefactor-otel serve` been started? It saves its token there"
    else:
        where = f"none saved in {state}"
    print(
        f"prefactor-otel {args.command}: no token ({where}): pass --token, or set PREFACTOR_API_TOKEN to the "
        "token `prefactor-otel serve` prints (or give the --state PATH it uses)",
        file=sys.stderr,
    )
    return False


def _refused(args: argparse.Namespace, response: httpx.Response) -> str:
    """What to add to an error answer: for a 401, where the refused token came from (never the token itself)."""
    if response.status_code != 401:
        return ""
    return f" (the token from {args.token_source} was refused; `prefactor-otel serve` prints the one it expects)"


def _local_server(
    args: argparse.Namespace, method: str, path: str, body: dict[str, str] | None = None, *, quiet: bool = False
) -> httpx.Response | None:
    """One call to a server (`--url`, `--token`); None (said on stderr unless `quiet`) if unreachable."""
    base = args.url.rstrip("/")
    base = base.removesuffix("/api/v1")  # the URL may be given with the API prefix, as users copy it
    try:
        return httpx.request(
            method, base + path, json=body, headers={"Authorization": f"Bearer {args.token}"}, timeout=10
        )
    except httpx.HTTPError as exc:
        if not quiet:
            print(f"cannot reach {args.url}: {_unreachable(exc)}", file=sys.stderr)
        return None


def _unreachable(exc: httpx.HTTPError) -> str:
    """Why a server could not be reached, and what to do: the exception's class name alone says neither."""
    if isinstance(exc, httpx.ConnectError):
        why = "nothing answers there (connection refused)" if "refused" in str(exc).lower() else "cannot connect"
        return f"{why}; is `prefactor-otel serve` running? (start it, or pass the --url it prints)"
    if isinstance(exc, httpx.TimeoutException):
        return "no answer in time; is the server busy, or is --url the right address?"
    return f"{type(exc).__name__}; check --url (or PREFACTOR_API_URL)"


def _show(args: argparse.Namespace) -> int:
    from prefactor_otel.devserver import render_runs

    if not _resolve_token(args):
        return 2
    if args.watch:
        return _watch(args)
    response = _local_server(args, "GET", "/_dev/snapshot")
    if response is None:
        return 2
    if response.status_code != 200:
        print(f"{args.url} answered HTTP {response.status_code}{_refused(args, response)}", file=sys.stderr)
        return 2
    snapshot = response.json()
    if args.json:
        print(json.dumps(snapshot, indent=2))
    else:
        print(render_runs(snapshot))
    return 0


def _watch(args: argparse.Namespace) -> int:
    """`show --watch`: one frame of the live runs as they grow (finished spans, tokens so far, spans in flight:
    render_live) every `--interval` seconds, until Ctrl-C or `--count` frames. A terminal is redrawn in place;
    other output gets the frames one after another."""
    from prefactor_otel.devserver import render_live
    from prefactor_otel.devserver.timefmt import now_us

    _take_back_ctrl_c()
    redraw = sys.stdout.isatty()
    frames = reached = 0
    try:
        while args.count is None or frames < args.count:
            if frames:
                time.sleep(args.interval)
            frames += 1
            response = _local_server(args, "GET", "/_dev/snapshot", quiet=True)
            if response is not None and response.status_code == 200:
                reached += 1
                body = render_live(response.json(), now_us=now_us())
            else:
                # A watch outlives a server restart: say so in the frame, with the fix, and keep polling.
                if response is None:
                    why = "nothing answers there; is `prefactor-otel serve` running? (or pass the --url it prints)"
                else:
                    why = f"HTTP {response.status_code}{_refused(args, response)}"
                body = f"cannot read {args.url}: {why}; trying again every {args.interval:g} s\n"
            head = f"{args.url}  {time.strftime('%H:%M:%S')}  every {args.interval:g} s (Ctrl-C to stop)\n\n"
            sys.stdout.write(("\x1b[H\x1b[2J" if redraw else "\n" if frames > 1 else "") + head + body)
            sys.stdout.flush()
    except KeyboardInterrupt:
        pass
    return 0 if reached else 2


def _terminate(args: argparse.Namespace) -> int:
    """Terminate a run, as an operator does in Prefactor: the API's `POST /agent_instance/{id}/terminate` (only an
    active run; a reason is required). The run's in-flight spans are closed and its later span calls carry control."""
    if not _resolve_token(args):
        return 2
    path = f"/api/v1/agent_instance/{args.instance_id}/terminate"
    response = _local_server(args, "POST", path, {"reason": args.reason})
    if response is None:
        return 2
    if response.status_code != 200:
        detail = response.json().get("message") if "json" in response.headers.get("content-type", "") else ""
        print(f"{args.url} answered HTTP {response.status_code}: {detail}{_refused(args, response)}", file=sys.stderr)
        return 1
    print(f"run {args.instance_id} terminated ({args.reason})")
    return 0


# The modules the `gateway` extra brings: one of them missing means the extra is not installed.
_GATEWAY_EXTRA_MODULES = ("grpc", "uvicorn", "opentelemetry.proto", "google.protobuf", "h11")


def _gateway(args: argparse.Namespace) -> int:
    """`prefactor-otel gateway`: the settings from the PREFACTOR_* variables and the flags given, then run."""
    from prefactor_otel._logging import configure_level
    from prefactor_otel.config.values import ConfigError

    try:
        from prefactor_otel.gateway.server import run
        from prefactor_otel.gateway.settings import GatewaySettings
    except ModuleNotFoundError as exc:  # not an ImportError of a module that is there: that is a broken install
        missing = exc.name or ""
        if not missing.startswith(_GATEWAY_EXTRA_MODULES):
            raise
        print(
            f"prefactor-otel gateway: {missing} is not installed; the gateway needs the gateway extra: "
            "pip install 'prefactor-otel[gateway]'",
            file=sys.stderr,
        )
        return 2
    overrides = {
        name: value
        for name, value in (
            ("host", args.host),
            ("http_port", args.http_port),
            ("grpc_port", args.grpc_port),
            ("routes_file", args.routes),
            ("directory", args.dir),
        )
        if value is not None
    }
    configure_level(os.environ)
    try:
        settings = GatewaySettings.load(os.environ, **overrides)
    except ConfigError as exc:
        print(f"prefactor-otel gateway: {exc}", file=sys.stderr)
        return 2
    return run(settings)


def _port(value: str) -> int:
    port = int(value)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError("must be a port number from 0 to 65535 (0 picks a free one)")
    return port


def _add_gateway_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from pathlib import Path

    gateway = sub.add_parser(
        "gateway",
        formatter_class=_HelpFormatter,
        help="receive OTLP traces (HTTP and gRPC) from apps in any language and send them to Prefactor "
        "(needs the gateway extra)",
        description="Run an OTLP receiver in the foreground until Ctrl-C or SIGTERM: OTLP/HTTP POST /v1/traces "
        "(protobuf or JSON, gzip) and OTLP/gRPC TraceService/Export, answered once the spans are on disk or "
        "delivered, then mapped and delivered as the in-process exporter does. Configured by the exporter's "
        "PREFACTOR_* variables (PREFACTOR_API_TOKEN, PREFACTOR_AGENT_ID, ...) and PREFACTOR_GATEWAY_TOKENS (the "
        "ingress tokens clients send as Authorization: Bearer; required on a non-loopback address). "
        "GET /healthz and GET /readyz on the HTTP port. Needs: pip install 'prefactor-otel[gateway]'.",
    )
    gateway.add_argument("--host", default=None, help="address to listen on (default: 127.0.0.1)")
    gateway.add_argument(
        "--http-port", type=_port, default=None, help="OTLP/HTTP port; 0 picks a free one (default: 4318)"
    )
    gateway.add_argument(
        "--grpc-port", type=_port, default=None, help="OTLP/gRPC port; 0 picks a free one (default: 4317)"
    )
    gateway.add_argument(
        "--routes",
        metavar="FILE",
        type=Path,
        default=None,
        help="routes file: ingress tokens to Prefactor tokens, agents and environments (default: from "
        "PREFACTOR_GATEWAY_ROUTES, else one route from the PREFACTOR_* variables)",
    )
    gateway.add_argument(
        "--dir",
        metavar="DIR",
        type=Path,
        default=None,
        help="where the gateway keeps what it acknowledged until delivered (default: from PREFACTOR_GATEWAY_DIR, "
        "else under the exporter's spool directory)",
    )
    gateway.set_defaults(func=_gateway)


def _positive_seconds(value: str) -> float:
    seconds = float(value)
    if not 0 < seconds <= 3600:
        raise argparse.ArgumentTypeError("must be more than 0 and at most 3600 seconds")
    return seconds


def _positive_count(value: str) -> int:
    count = int(value)
    if count < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return count


def _doctor(args: argparse.Namespace) -> int:
    from prefactor_otel.tools.doctor import run_doctor

    return run_doctor(quiet=args.quiet, as_json=args.json, api=args.api)


def _spool(args: argparse.Namespace) -> int:
    """`spool` (what waits) and `spool send` (send it now), for the configuration in this environment."""
    from prefactor_otel.config.options import PrefactorConfig
    from prefactor_otel.config.values import ConfigError
    from prefactor_otel.tools.spool_report import SEND_COMMAND, send_now, spool_directory, waiting

    if args.action == "send":
        return send_now(os.environ)
    try:
        config = PrefactorConfig.load(os.environ)
    except ConfigError as exc:
        print(f"prefactor-otel spool: invalid configuration: {exc}", file=sys.stderr)
        return 2
    directory = spool_directory(config)
    if directory is None:
        print("PREFACTOR_SPOOL is off: nothing undeliverable is kept on disk")
        return 0
    found = waiting(directory)
    if found.empty:
        print(f"nothing waits for delivery in {directory}")
    else:
        print(f"{found.summary()} wait for delivery in {directory}; to send them now: {SEND_COMMAND}")
    return 0


def _package_version() -> str:
    from prefactor_otel._version import __version__

    return __version__


# The help of serve/show/terminate shows every default, except where the default comes from a token: a real token
# must never reach a terminal or a screenshot through --help, so those say where it comes from instead.
_URL_HELP = "the local server's URL (default: from PREFACTOR_API_URL, else http://127.0.0.1:8787)"
_TOKEN_HELP = (
    "the API token to send (default: from PREFACTOR_API_TOKEN, else the token saved in the state file of "
    "`prefactor-otel serve`, for a server on this machine; OTEL_EXPORTER_PREFACTOR_API_TOKEN wins over "
    "PREFACTOR_API_TOKEN, as for the exporter)"
)
_STATE_HELP = "the state file of `prefactor-otel serve` to read the token from (default: serve's default)"


class _HelpFormatter(argparse.HelpFormatter):
    """Wraps help at spaces only: a path or URL shown as a default stays whole (argparse breaks at hyphens)."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False, break_long_words=False)


def _add_serve_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from prefactor_otel.devserver.state_file import default_state_path

    serve = sub.add_parser(
        "serve",
        formatter_class=_HelpFormatter,
        help="run the local Prefactor-compatible API server (keeps its runs and ids across restarts)",
        description="Run the local Prefactor-compatible API server in the foreground until Ctrl-C. Its state (token, "
        "agent and environment ids, runs, spans, idempotency keys) is saved to a file and loaded at the next start, "
        "so apps keep working across restarts; each request is logged to stderr.",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    serve.add_argument(
        "--port", type=int, default=8787, help="port to listen on; 0 picks a free one (default: %(default)s)"
    )
    serve.add_argument(
        "--allow-host",
        metavar="NAME",
        action="append",
        default=[],
        help="also answer requests addressed to this host name (e.g. host.docker.internal from a container); "
        "repeatable. Other names are refused, a guard against DNS rebinding (default: loopback names and --host only)",
    )
    serve.add_argument(
        "--token",
        default=None,
        help="the API token clients must send; given, it replaces the saved one (default: the saved token, else from "
        "PREFACTOR_API_TOKEN, else a new random one, saved with the state and printed)",
    )
    serve.add_argument(
        "--agent-id",
        default=None,
        help="seed this agent id for a new state; its partition becomes the account's (default: the saved one, "
        "else a new id)",
    )
    serve.add_argument(
        "--environment-id", default=None, help="seed this environment id (default: the saved one, else a new id)"
    )
    where = serve.add_mutually_exclusive_group()
    where.add_argument(
        "--state",
        metavar="PATH",
        default=None,
        help=f"the state file to load and keep saving (default: {default_state_path()}, from XDG_DATA_HOME or the "
        "user data directory)",
    )
    where.add_argument("--memory", action="store_true", help="keep no state file: everything is lost when it stops")
    serve.add_argument(
        "--reset", action="store_true", help="discard the saved state and start over (new agent id, no runs)"
    )
    serve.add_argument("--quiet", action="store_true", help="do not log each request to stderr")
    testing = serve.add_argument_group(
        "testing an exporter's fallbacks", "make the server differ from the API, to see what a client does then"
    )
    testing.add_argument(
        "--refuse-encoding",
        metavar="NAME",
        action="append",
        choices=("zstd", "gzip", "deflate"),
        default=[],
        help="answer request bodies with this Content-Encoding 415, as a server without it would (choices: zstd, "
        "gzip, deflate; repeatable): the exporter should fall back to gzip, then to no compression",
    )
    testing.add_argument(
        "--register-without-schema",
        action="store_true",
        help="accept a run registered without agent_schema_version once the agent has one (the run gets the "
        "latest); the API requires it, so this is for measuring the exporter's PREFACTOR_SCHEMA_ONCE saving",
    )
    serve.set_defaults(func=_serve)


def _add_show_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    show = sub.add_parser(
        "show",
        help="print the agent runs a local server holds",
        formatter_class=_HelpFormatter,
        description="Print the agent runs a local Prefactor-compatible server (prefactor-otel serve) holds, as "
        "trees of spans with their status, type and tokens; --json prints the raw snapshot, --watch redraws the "
        "live runs as they grow until Ctrl-C. The token comes from --token, OTEL_EXPORTER_PREFACTOR_API_TOKEN or "
        "PREFACTOR_API_TOKEN, else from the state file of prefactor-otel serve.",
    )
    show.add_argument("--url", default=os.environ.get("PREFACTOR_API_URL") or "http://127.0.0.1:8787", help=_URL_HELP)
    show.add_argument("--token", default=None, help=_TOKEN_HELP)
    show.add_argument("--state", metavar="PATH", default=None, help=_STATE_HELP)
    show.add_argument("--json", action="store_true", help="print the raw snapshot instead of trees")
    show.add_argument(
        "--watch",
        action="store_true",
        help="follow the live runs as they grow (finished spans with their status, tokens so far, spans in flight) "
        "until Ctrl-C",
    )
    show.add_argument(
        "--interval", type=_positive_seconds, default=1.0, help="seconds between --watch frames (default: %(default)s)"
    )
    show.add_argument(
        "--count", type=_positive_count, default=None, help="stop --watch after this many frames (default: never)"
    )
    show.set_defaults(func=_show)


def _add_terminate_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    terminate = sub.add_parser(
        "terminate",
        help="terminate an active run (its in-flight spans close; its span calls then carry control)",
        formatter_class=_HelpFormatter,
        description="Terminate an active agent run on a server, as an operator does in Prefactor (the API's POST "
        "/agent_instance/{id}/terminate). Its in-flight spans are closed, and the application hears of it at its "
        "next span call or poll (on_terminate, raise_if_terminated: README, Stop an agent from Prefactor). The run "
        "ids are those prefactor-otel show prints.",
    )
    terminate.add_argument("instance_id", help="the agent run's id")
    terminate.add_argument("--reason", required=True, help="why (required by the API; shown with the run)")
    terminate.add_argument(
        "--url", default=os.environ.get("PREFACTOR_API_URL") or "http://127.0.0.1:8787", help=_URL_HELP
    )
    terminate.add_argument("--token", default=None, help=_TOKEN_HELP)
    terminate.add_argument("--state", metavar="PATH", default=None, help=_STATE_HELP)
    terminate.set_defaults(func=_terminate)


_DESCRIPTION = (
    "prefactor-otel: ship OpenTelemetry agent traces to Prefactor. The exporter itself needs no command (see the "
    "README); these commands try it out locally (demo, serve, show, terminate), check a set-up (doctor), send what "
    "an outage left on disk (spool send) and run the OTLP gateway (gateway, with the gateway extra)."
)


def _add_demo_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = sub.add_parser(
        "demo",
        help="run a small instrumented agent and export it (local server by default)",
        formatter_class=_HelpFormatter,
        description="Run a small instrumented agent (no model is called) and export its spans: to an embedded "
        "local server started for the demo, or to the API PREFACTOR_API_URL names, then print the agent runs it "
        "received. --loop runs one long live run to watch and terminate; --gateway exports over OTLP through a "
        "prefactor-otel gateway.",
    )
    mode = demo.add_mutually_exclusive_group()
    mode.add_argument(
        "--loop",
        action="store_true",
        help="run one long agent run, live, until it is terminated (prefactor-otel terminate), --max-steps or Ctrl-C",
    )
    mode.add_argument(
        "--gateway",
        action="store_true",
        help="export the agent over OTLP/HTTP (the OTel exporter, as any language does) to a prefactor-otel gateway "
        "started for the demo (needs the gateway extra)",
    )
    demo.add_argument(
        "--max-steps",
        type=_positive_count,
        default=600,
        help="with --loop: end after this many steps (default: %(default)s)",
    )
    demo.add_argument(
        "--interval", type=_positive_seconds, default=1.0, help="with --loop: seconds per step (default: %(default)s)"
    )
    demo.set_defaults(func=_demo)


def _add_doctor_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    doctor = sub.add_parser(
        "doctor",
        help="check configuration, what opentelemetry-instrument will do, API access and the spool (sends no "
        "span); reports every problem",
        formatter_class=_HelpFormatter,
        description="Check a set-up without sending any span, and report every problem, each with a stable code "
        "(README, Troubleshooting) and a fix line: the PREFACTOR_* (and OTEL_EXPORTER_PREFACTOR_*) configuration, "
        "what opentelemetry-instrument will do with the OTEL_* variables and the packages installed here, API "
        "access with the token (GET /ping, the agent and environment ids), and spans waiting in the spool. It "
        "reads this environment only: run it where (or with the variables with which) your application runs. "
        "The token is never printed. Exit status: 1 if any finding is a problem, else 0.",
    )
    form = doctor.add_mutually_exclusive_group()
    form.add_argument(
        "--quiet",
        action="store_true",
        help="print only what needs attention (problems and notes, each with its fix) and the last line",
    )
    form.add_argument(
        "--json",
        action="store_true",
        help="print the findings as one JSON document (problems, then each finding's level, code, text and fix), "
        "for a script or a CI step",
    )
    doctor.add_argument(
        "--no-api",
        dest="api",
        action="store_false",
        help="skip the API checks and send no request: check the configuration, the zero-code set-up and the spool "
        "where the API cannot be reached (an image build, a CI step without the token's network)",
    )
    doctor.set_defaults(func=_doctor)


def _add_spool_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    spool = sub.add_parser(
        "spool",
        help="show the spans an outage left on disk; spool send sends them now",
        formatter_class=_HelpFormatter,
        description="Spans the exporter could not deliver (an outage, a refused token) wait on disk in its spool "
        "directory, and the next process with the same configuration sends them first. prefactor-otel spool shows "
        "what waits (files, spans, the oldest); prefactor-otel spool send sends it now, with the configuration in "
        "this environment (PREFACTOR_API_URL, the token, PREFACTOR_AGENT_ID, PREFACTOR_SPOOL_DIR: the same as the "
        "application's), and says what it sent. Exit status of send: 0 when nothing is left, 1 when files are "
        "left (the API could not take them), 2 when the configuration cannot send.",
    )
    spool.add_argument(
        "action",
        nargs="?",
        choices=("show", "send"),
        default="show",
        help="show: what waits (the default); send: deliver it now",
    )
    spool.set_defaults(func=_spool)


def _run(argv: Sequence[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="prefactor-otel", description=_DESCRIPTION, formatter_class=_HelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_package_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_demo_parser(sub)
    _add_serve_parser(sub)
    _add_show_parser(sub)
    _add_terminate_parser(sub)
    _add_doctor_parser(sub)
    _add_spool_parser(sub)
    _add_gateway_parser(sub)
    args = parser.parse_args(argv)
    return int(args.func(args))


def main(argv: Sequence[str] | None = None) -> int:
    """The console script. Output piped into a reader that stopped early ends the command quietly: stdout is
    pointed at /dev/null so the interpreter's final flush cannot fail again, and the status is SIGPIPE's (141)."""
    try:
        code = _run(argv)
        sys.stdout.flush()  # inside the try: a pipe closed after the last write fails here, not at exit
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 128 + signal.SIGPIPE.value
    return code


if __name__ == "__main__":
    raise SystemExit(main())
