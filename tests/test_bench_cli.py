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


def test_history_pages_a_long_channel_at_every_depth(tmp_path, monkeypatch):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    r = run("bench", "history", "--messages", 500, "--depths", "0,450", "--calls", 3, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "| 450   | 51     | 100   |" in r.stdout and os.listdir(scratch) == []


def test_bench_help_shows_defaults_and_version():
    r = run("bench", "sweep", "--help")
    assert r.returncode == 0 and "(default: 100000)" in r.stdout and "bin/bench sweep" in r.stdout
    assert run("bench", "--version").stdout.startswith("bin/bench (imesh) ")


def test_every_benchmark_answers_version_as_the_usage_promises():
    import bench.__main__ as usage
    commands = [line.split()[1] for line in usage.__doc__.splitlines() if line.startswith("    bin/bench ")]
    assert len(commands) >= 12 and "handoff" in commands
    for name in commands:
        r = run("bench", name, "--version")
        assert r.returncode == 0 and r.stdout.startswith(f"bin/bench {name} (imesh) "), (name, r.stdout, r.stderr)


def test_e2e_asyncio_with_baseline_reports_both_and_their_ratios(tmp_path, monkeypatch):
    """The asyncio generator speaks protocol 2 to a real mesh and to the baseline server in one
    run; every message reaches every member once and the JSON carries both sets of figures."""
    import json
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    out = tmp_path / "e2e.json"
    r = run("bench", "e2e", "--client", "asyncio", "--baseline", "--users", 40, "--channels", 4,
            "--messages", 3, "--curve", "off", "--json", out, timeout=240)
    assert r.returncode == 0, r.stderr
    data = json.loads(out.read_text())
    assert data["acked"] == 120 and data["deliveries"] == 40 * 9 * 3
    assert data["lost"] == data["duplicates"] == data["errors"] == 0
    assert data["baseline_lost"] == data["baseline_duplicates"] == data["baseline_errors"] == 0
    for key in ("acked_per_s", "server_cpu_us_per_msg", "ack_p99_ms", "deliveries_per_s"):
        assert data[key] is not None and data["baseline_" + key] is not None
    assert data["ratio_acked_per_s"] > 0 and data["ratio_server_cpu"] is not None
    assert data["workload"]["client"] == "asyncio" and "imesh / baseline" in r.stdout
    assert os.listdir(scratch) == []


def test_fanout_and_sessions_benchmarks_run(tmp_path):
    r = run("bench", "fanout", "--members", 200, "--messages", 20, "--repeats", 1, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "logic CPU µs per message" in r.stdout
    r = run("bench", "sessions", "--sessions", 50, "--core", 100, "--processes", 1, "--repeats", 1,
            timeout=180)
    assert r.returncode == 0, r.stderr
    assert "| whole broker (mesh, real connections) | 50 " in r.stdout
    assert "| broker Python state only (core)       | 100 " in r.stdout


def test_conv_measures_reads_channels_and_a_typing_storm_that_stores_nothing(tmp_path, monkeypatch):
    """bin/bench conv on a tiny shape: reads answered and receipts pushed, every group listed by
    ``channels``, typing notices pushed (or RATE_LIMITED at the default rate) and nothing stored."""
    import json
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    out = tmp_path / "conv.json"
    r = run("bench", "conv", "--users", 20, "--members", 10, "--messages", 2, "--typing", 4, "--channels", 30,
            "--calls", 3, "--repeats", 1, "--processes", 1, "--curve", "off", "--json", out, timeout=300)
    assert r.returncode == 0, r.stderr
    data = json.loads(out.read_text())
    plain, reads = data["reads"]["without reads"], data["reads"]["read after every message"]
    assert plain["reads"] == 0 and reads["reads"] == 20 * 2 * 9 and reads["receipts"] > 0
    assert plain["lost"] == reads["lost"] == reads["read_errors"] == 0
    assert data["channels"]["items"] == 31 and data["channels"]["unread"] == 30
    raised, default = data["typing"].values()
    assert raised["codes"] == {"ok": 80} and raised["pushes"] == 80 * 9
    assert default["codes"]["RATE_LIMITED"] > 0 and default["pushes"] == 9 * default["codes"]["ok"]
    assert raised["stored_moved"] == default["stored_moved"] == 0
    assert raised["newest_moved"] == default["newest_moved"] == 0
    assert os.listdir(scratch) == []
