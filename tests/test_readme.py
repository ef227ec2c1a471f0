"""The README tells the truth to someone who has only the repository: its first screen, its install lines, and the
wheel that `pip install .` builds (package data and entry points included, which an editable install hides)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
TEST_COMMAND = "python -m pip install -e '.[test]' && python -m pytest -q"


def _fenced_commands(text: str) -> list[str]:
    blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", text, flags=re.DOTALL)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def test_first_screen_gives_exactly_the_two_set_up_commands_and_ci_runs_the_test_one() -> None:
    first_screen = README.split("\n---\n", 1)[0]
    assert _fenced_commands(first_screen) == ["pip install . && prefactor-otel demo", TEST_COMMAND]
    assert TEST_COMMAND in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


def test_no_install_line_asks_a_package_index_for_the_unpublished_package() -> None:
    # `pip install prefactor-otel` fails until the package is published: every install line names a path or URL.
    for line in _fenced_commands(README):
        for match in re.finditer(r"pip install\s+([^&;#]*)", line):
            arguments = match.group(1).split()
            assert "prefactor-otel" not in arguments, line
            assert "prefactor_otel" not in arguments, line
    assert "`pip install prefactor-otel` fails" in README  # and the Install section says so, with the way that works


def test_the_wheel_pip_builds_from_the_repository_carries_entry_points_and_package_data(tmp_path: Path) -> None:
    # Built from a copy: a build in the tree leaves build/ and an egg-info under src/ behind, which tests running at
    # the same time (with src/ on their path) would take for the package's installed metadata.
    tree = tmp_path / "tree"
    shutil.copytree(
        ROOT,
        tree,
        ignore=shutil.ignore_patterns(".git", "node_modules", "build", "*.egg-info", "__pycache__", ".venv", "dist"),
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", str(tree), "-w", str(tmp_path)],
        check=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("prefactor_otel-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (entry_points_name,) = (n for n in names if n.endswith(".dist-info/entry_points.txt"))
        entry_points = archive.read(entry_points_name).decode()
    assert "prefactor_otel/tools/cli.py" in names
    assert "prefactor_otel/devserver/server.py" in names
    # every file in the package's source tree that Python or the local server loads at run time is in the wheel
    source = ROOT / "src" / "prefactor_otel"
    shipped = {
        "prefactor_otel/" + path.relative_to(source).as_posix()
        for path in source.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix not in {".pyc", ".md"}
    }
    assert shipped - names == set()
    for group in ("opentelemetry_traces_exporter", "opentelemetry_distro", "opentelemetry_configurator"):
        assert re.search(rf"\[{group}\]\s*\nprefactor = ", entry_points), group
