"""The README's set-up commands and CI stay in step."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    readme = ROOT / "README.md"
    ci = ROOT / ".ci" / "run"
    if not readme.exists() or not ci.exists():
        pytest.skip("not running from a source checkout")
    commands = re.findall(r"^python3 -m venv \.venv && \. \.venv/bin/activate && (.+)$", readme.read_text(), re.M)
    assert len(commands) == 2, "README must open with the install+run and install+test commands"
    test_command = commands[1]
    assert "pytest" in test_command
    assert test_command in ci.read_text().splitlines()
