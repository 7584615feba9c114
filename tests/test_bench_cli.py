"""bin/bench as a user runs it: sweep works with array acks, no temp dir is left behind, help has defaults."""
from __future__ import annotations

import os

from test_cli import run


def test_sweep_runs_and_cleans_up_its_temp_dir(tmp_path, monkeypatch):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))             # the benchmark's temp dirs land here
    r = run("bench", "sweep", "--messages", 300, "--channels", 3, "--lifetime", 1, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "| expired            | 300" in r.stdout
    assert os.listdir(scratch) == []


def test_bench_help_shows_defaults_and_version():
    r = run("bench", "sweep", "--help")
    assert r.returncode == 0 and "(default: 100000)" in r.stdout and "bin/bench sweep" in r.stdout
    assert run("bench", "--version").stdout.startswith("bin/bench (imesh) ")
