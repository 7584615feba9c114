"""bin/bench logicturn: every send of a tiny run is acked once, its phases add up to its total,
and a send acked twice makes it fail (behaviour only: no timing thresholds)."""
from __future__ import annotations

import json
import os

from test_cli import run

import bench.logicturn as logicturn

PHASES = ("accept", "staging", "write", "commit")


def test_a_tiny_run_acks_every_send_once_and_its_phases_add_up(tmp_path, monkeypatch):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))             # the core's store lands here, and goes
    out = tmp_path / "logicturn.json"
    r = run("bench", "logicturn", "--messages", 300, "--per-turn", "1,7", "--repeats", 2, "--json", out,
            timeout=120)
    assert r.returncode == 0, r.stderr
    assert "| sends per turn | accept" in r.stdout
    data = json.loads(out.read_text())
    assert set(data["per_turn"]) == {"1", "7"}
    for per_turn, fig in data["per_turn"].items():
        assert fig["acked_once"] and fig["acks"] == 300 and fig["errors"] == 0
        assert fig["turns"] == -(-300 // int(per_turn))
        assert fig["fanout_items"] == 300 * 2                # every message to both brokers
        assert fig["frames"] == fig["turns"] * 2            # one PUB frame per broker per turn
        assert all(fig[p] > 0 for p in PHASES)
        phases = sum(fig[p] for p in PHASES)
        assert 0.7 * fig["total"] <= phases <= fig["total"] + 0.05, (phases, fig)
        assert len(fig["totals"]) == 2 and fig["best_total"] <= fig["total"]
    assert os.listdir(scratch) == []


def test_a_send_acked_twice_fails_the_run(tmp_path, monkeypatch):
    """The last request sent again (a retry of a stored send): its rid gets two acks."""
    requests = logicturn._requests
    monkeypatch.setattr(logicturn, "_requests", lambda n: [*requests(n), requests(n)[-1]])
    fig = logicturn.measure(str(tmp_path / "core"), 7, 70)
    assert not fig["acked_once"] and fig["acks"] == 71
    assert not (tmp_path / "core").exists()
    assert logicturn.main(["--messages", "70", "--per-turn", "7", "--repeats", "1"]) == 1
