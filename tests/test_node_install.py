"""tests/node_install.py's check of an installed npm project: a dependency pinned as an npm alias
(`"ai-v7": "npm:ai@7.0.185"`, as tests/fixtures/semconv/ts/ pins them) is installed under the alias's name with the
real package's version, and counts as installed, so the project is not installed again on every run. On a project
folder laid out as `npm ci` leaves it (package.json, node_modules/<name>/package.json, node_modules/.bin/node)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.node_install import node_project_installed, pinned_version


def _project(tmp_path: Path, dependencies: dict[str, str], installed: dict[str, str]) -> Path:
    project = tmp_path / "project"
    (project / "node_modules" / ".bin").mkdir(parents=True)
    (project / "node_modules" / ".bin" / "node").write_text("")
    (project / "package.json").write_text(json.dumps({"name": "p", "dependencies": dependencies}))
    for folder, version in installed.items():
        (project / "node_modules" / folder).mkdir(parents=True)
        (project / "node_modules" / folder / "package.json").write_text(json.dumps({"version": version}))
    return project


def test_the_pinned_version_of_an_npm_alias_is_the_part_after_the_last_at() -> None:
    assert pinned_version("2.12.1") == "2.12.1"
    assert pinned_version("npm:ai@7.0.185") == "7.0.185"
    assert pinned_version("npm:@ai-sdk/openai@4.0.126") == "4.0.126"


def test_a_project_with_aliases_at_their_pinned_versions_is_installed(tmp_path: Path) -> None:
    dependencies = {"ai": "6.0.333", "ai-v7": "npm:ai@7.0.185", "@ai-sdk/openai-v4": "npm:@ai-sdk/openai@4.0.126"}
    installed = {"ai": "6.0.333", "ai-v7": "7.0.185", "@ai-sdk/openai-v4": "4.0.126"}
    assert node_project_installed(_project(tmp_path, dependencies, installed))


def test_an_alias_at_another_version_or_missing_is_not_installed(tmp_path: Path) -> None:
    dependencies = {"ai": "6.0.333", "ai-v7": "npm:ai@7.0.185"}
    assert not node_project_installed(_project(tmp_path / "stale", dependencies, {"ai": "6.0.333", "ai-v7": "7.0.1"}))
    assert not node_project_installed(_project(tmp_path / "missing", dependencies, {"ai": "6.0.333"}))
