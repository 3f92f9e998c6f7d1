"""The README's set-up commands and CI stay in step."""

import os
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


def test_a_plain_pytest_starts_no_system_service(tmp_path, monkeypatch):
    """Without CI's DLKIT_CI=1 the Slurm fixture never runs .ci/start-slurm (which would apt-get install and
    start daemons as root): it says how to start Slurm instead."""
    import slurm_fixture

    marker = tmp_path / "started"
    fake = tmp_path / "start-slurm"
    fake.write_text(f"#!/bin/sh\ntouch {marker}\nexit 0\n")
    fake.chmod(0o755)
    monkeypatch.setattr(slurm_fixture, "START_SLURM", fake)
    monkeypatch.setattr(slurm_fixture, "slurm_up", lambda: False)  # a machine without Slurm
    monkeypatch.delenv("DLKIT_CI", raising=False)
    ok, why = slurm_fixture.ensure_slurm()
    assert not ok and "sudo .ci/start-slurm" in why and not marker.exists()
    monkeypatch.setenv("DLKIT_CI", "1")
    if os.geteuid() == 0:  # CI as root: start-slurm runs (here the fake one, after which no Slurm answers)
        with pytest.raises(RuntimeError, match="start-slurm failed"):
            slurm_fixture.ensure_slurm()
        assert marker.exists()
