"""Installing a small pinned npm project for the tests (tests/node_client/, tests/node_otlp/): `npm ci` from its
lockfile when its node_modules is missing or stale, once per project folder however many test workers
(pytest-xdist) start at once. They take turns under a file lock in the folder, and the first installs; without npm
the tests FAIL (never skip), saying to install Node.js. Each project pins a Node binary through the npm package
`node` (the machine's Node may be older than what the project's packages need); `install_node_project` returns it.

Called from test fixtures (any worker's test thread); the file lock serializes the workers' processes.
"""

from __future__ import annotations

import fcntl
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

# Safety limits against a hang only; no test asserts anything about time.
INSTALL_LIMIT_S = 900.0
INSTALL_LOCK = ".npm-ci.lock"  # in the project folder (ignored by git)


def pinned_version(spec: str) -> str:
    """The version a package.json dependency pins: `1.2.3` as written, and for an npm alias (`npm:ai@7.0.185`,
    `npm:@ai-sdk/openai@4.0.126`, installed under the alias's name) the part after the last `@`, which is what the
    installed package's own package.json says."""
    return spec.rpartition("@")[2]


def node_project_installed(project: Path) -> bool:
    """Every dependency of `project`'s package.json is in node_modules at its pinned version."""
    pinned: dict[str, str] = json.loads((project / "package.json").read_text())["dependencies"]
    for name, spec in pinned.items():
        manifest = project / "node_modules" / name / "package.json"
        if not manifest.is_file() or json.loads(manifest.read_text()).get("version") != pinned_version(spec):
            return False
    return (project / "node_modules" / ".bin" / "node").exists()


@contextmanager
def install_lock(project: Path) -> Iterator[None]:
    """Held while `project`'s install is checked and, when needed, done. `npm ci` first empties node_modules, and
    the `node` package fetches its binary in an install script: a second worker checking or installing meanwhile
    would see a half-installed project or pull it from under the first. The lock goes with the holder's process,
    however it ends."""
    with open(project / INSTALL_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def install_node_project(project: Path, search_path: str | None = None, *, node_major: int = 22) -> Path:
    """The Node binary of `project`, installed from its lockfile first (`npm ci`) when missing or stale.
    Fails the test (never skips) when npm is missing, the install fails or the binary is older than `node_major`."""
    with install_lock(project):
        _install_unless_installed(project, search_path)
    node = project / "node_modules" / ".bin" / "node"
    version = subprocess.run([str(node), "--version"], capture_output=True, text=True, timeout=60, check=False)
    found = re.fullmatch(r"v(\d+)\..*", version.stdout.strip())
    if found is None or int(found.group(1)) < node_major:
        pytest.fail(f"{node} is not Node {node_major}+: {version.stdout!r} {version.stderr[-500:]!r}", pytrace=False)
    return node


def _install_unless_installed(project: Path, search_path: str | None) -> None:
    if not node_project_installed(project):
        npm = shutil.which("npm", path=search_path)
        if npm is None:
            pytest.fail(
                f"npm is not on PATH: install Node.js (which brings npm) to run the tests that use {project.name}/; "
                f"they install {project} with `npm ci` themselves",
                pytrace=False,
            )
        try:
            done = subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund", "--prefix", str(project)],
                capture_output=True,
                text=True,
                timeout=INSTALL_LIMIT_S,
                check=False,
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"`npm ci --prefix {project}` did not finish within {INSTALL_LIMIT_S:.0f} s", pytrace=False)
        if done.returncode != 0 or not node_project_installed(project):
            pytest.fail(
                f"`npm ci --prefix {project}` failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}", pytrace=False
            )
