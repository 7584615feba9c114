"""CI runs exactly the test command README gives (with ``--durations=15``), and README names the
fast lane: a newcomer's command and CI's never drift apart."""
from __future__ import annotations

import os
import re

from conftest import ROOT


def test_ci_runs_readmes_test_command_and_readme_names_the_fast_lane():
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        last = [line for line in f.read().splitlines() if line.strip()][-1]
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    blocks = re.findall(r"```sh\n(.*?)```", readme, re.S)
    assert last in [line for block in blocks for line in block.splitlines()], last
    assert "pytest" in last and "--durations=15" in last
    assert '.venv/bin/python -m pytest -q -m "not slow"' in readme


def test_ci_lints_and_type_checks_before_the_tests_with_readmes_commands():
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        lines = [line.strip() for line in f.read().splitlines()]
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    tests = max(i for i, line in enumerate(lines) if "pytest" in line)
    for command in (".venv/bin/ruff check .", ".venv/bin/mypy"):
        assert command in lines[:tests], command
        assert command in readme, command
