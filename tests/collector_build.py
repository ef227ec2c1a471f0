"""The project's OpenTelemetry Collector binary (`collector/builder-config.yaml`), built at most once per machine.

`collector_binary()` returns the path of `otelcol-prefactor`, building it when missing with the official builder
(ocb, the release named on the manifest's `# ocb:` line) into a cache directory outside the clone:

    ${XDG_CACHE_HOME:-~/.cache}/prefactor-otel/collector/<sha256 of the manifest, 16 hex>/otelcol-prefactor

A changed manifest is a new directory, so a stale binary is never used. The build runs under an exclusive file
lock (`fcntl.flock` on `<that directory>.lock`): parallel test workers (pytest-xdist) and `.ci/run` build it once,
the others wait and then find it. The binary is moved into place only once built whole (rename), so a build killed
half-way leaves nothing that looks finished. `PREFACTOR_COLLECTOR_BINARY` names a binary to use instead.

Run as `python -m tests.collector_build` (from the repo root) to build it ahead (`.ci/run`) and print its path.

Threads: called from test session fixtures (any worker process, one thread each); no shared state but the files,
guarded by the lock. A build failure raises `CollectorBuildError` with the end of the builder's log: the tests
that need the Collector then fail saying why, never skip.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MANIFEST = REPO / "collector" / "builder-config.yaml"
BINARY_NAME = "otelcol-prefactor"
BUILD_LIMIT_S = 45 * 60.0  # a safety limit for one builder run (a cold build takes ~12 min on 2 busy cores)
_OCB_LINE = re.compile(r"^# ocb: (\S+) (v\d+\.\d+\.\d+)", re.MULTILINE)
_OUTPUT_PATH = re.compile(r"^(\s*output_path:).*$", re.MULTILINE)


class CollectorBuildError(RuntimeError):
    """The Collector could not be built on this machine (the message says why)."""


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "prefactor-otel" / "collector"


def build_dir(manifest: Path = MANIFEST) -> Path:
    digest = hashlib.sha256(manifest.read_bytes()).hexdigest()[:16]
    return cache_root() / digest


def collector_binary(manifest: Path = MANIFEST) -> Path:
    """The built binary's path, building it first when missing (module docstring)."""
    given = os.environ.get("PREFACTOR_COLLECTOR_BINARY")
    if given:
        if not os.access(given, os.X_OK):
            raise CollectorBuildError(f"PREFACTOR_COLLECTOR_BINARY={given} is not an executable file")
        return Path(given)
    directory = build_dir(manifest)
    binary = directory / BINARY_NAME
    if binary.is_file():
        return binary
    directory.parent.mkdir(parents=True, exist_ok=True)
    with open(directory.parent / (directory.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # held until the file closes: one builder per machine at a time
        if not binary.is_file():  # another process may have built it while this one waited
            _build(manifest, directory)
    return binary


def _build(manifest: Path, directory: Path) -> None:
    text = manifest.read_text()
    ocb = _OCB_LINE.search(text)
    if ocb is None:
        raise CollectorBuildError(f"{manifest} has no '# ocb: <module> <version>' line naming the builder")
    go = shutil.which("go")
    if go is None:
        raise CollectorBuildError("the Collector needs Go (https://go.dev) on PATH to build; none was found")
    work = directory / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    log_path = directory / "build.log"
    env = dict(os.environ, GOFLAGS="-mod=mod", GOBIN=str(work / "bin"), CGO_ENABLED="0")
    config = work / "builder-config.yaml"
    config.write_text(_OUTPUT_PATH.sub(lambda m: f"{m.group(1)} {work / 'dist'}", text, count=1))
    started = time.monotonic()
    with open(log_path, "w") as log:
        steps = [
            [go, "install", f"{ocb.group(1)}@{ocb.group(2)}"],
            [str(work / "bin" / "builder"), "--config", str(config)],
        ]
        for step in steps:
            log.write(f"$ {' '.join(step)}\n")
            log.flush()
            try:
                done = subprocess.run(
                    step, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=BUILD_LIMIT_S
                )
            except subprocess.TimeoutExpired:
                took = f"building the Collector took over {BUILD_LIMIT_S:.0f} s; see {log_path}"
                raise CollectorBuildError(took) from None
            if done.returncode != 0:
                log.flush()
                tail = "\n".join(log_path.read_text().splitlines()[-25:])
                raise CollectorBuildError(
                    f"building the Collector failed ({' '.join(step[:2])}):\n{tail}\n(log: {log_path})"
                )
    built = work / "dist" / BINARY_NAME
    if not built.is_file():
        raise CollectorBuildError(f"the builder exited 0 but left no {built}; see {log_path}")
    os.replace(built, directory / BINARY_NAME)  # atomic: a half-built binary never sits at the final path
    with open(log_path, "a") as log:
        log.write(f"built in {time.monotonic() - started:.0f} s\n")
    shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    try:
        print(collector_binary())
    except CollectorBuildError as error:
        print(f"collector build: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
