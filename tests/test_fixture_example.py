"""The README's "Test your agent with the local server" example, run as a user would (issue 14, item 6): copied
from README.md into a fresh directory and run with `python -m pytest` in a subprocess, so the example can never
rot; the `prefactor_server` fixture comes from the installed package's pytest plugin, not from this repository's
conftest. Also checks that the fixture's docstring documents what the README promises."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from prefactor_otel.devserver import pytest_plugin

README = Path(__file__).resolve().parents[1] / "README.md"
HEADING = "#### Test your agent with the local server"


def readme_example() -> str:
    text = README.read_text()
    section = text[text.index(HEADING) :]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None, "the README section has no python example"
    return match[1]


def run_as_a_user_test(tmp_path, source: str) -> subprocess.CompletedProcess[str]:
    """`python -m pytest` on `source` as the user's own test file, with the installed plugin and a clean env."""
    (tmp_path / "test_my_agent.py").write_text(source)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PREFACTOR_", "PYTEST_"))}
    env["TMPDIR"] = str(tmp_path)  # the default spool directory lives under the temp dir: keep it to this test
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_my_agent.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_the_readme_fixture_example_passes_as_a_pytest_run(tmp_path):
    proc = run_as_a_user_test(tmp_path, readme_example())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed" in proc.stdout


def test_a_broken_expectation_in_that_example_fails_the_run(tmp_path):
    # The example's assertions are real: the same run expecting a span that never came fails.
    broken = readme_example().replace('"invoke_agent my-agent"]', '"invoke_agent my-agent", "never sent"]')
    assert broken != readme_example()
    proc = run_as_a_user_test(tmp_path, broken)
    assert proc.returncode == 1 and "1 failed" in proc.stdout, proc.stdout + proc.stderr


def test_the_fixture_docstring_documents_each_attribute():
    doc = pytest_plugin.prefactor_server.__doc__ or ""
    for name in (
        ".url",
        ".api_url",
        ".token",
        ".env()",
        ".spans(",
        ".instances()",
        ".snapshot()",
        ".terminate(",
        ".add_fault(",
    ):
        assert name in doc, name
