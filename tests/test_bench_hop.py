"""bin/bench hop on tiny runs: every variant and window answers every request and delivers every
msgs frame, the output is complete, and no temp dir or process is left behind (behaviour, not timing)."""
from __future__ import annotations

import json
import os

from test_cli import run

from bench import hop


def test_every_variant_answers_every_request_and_delivers_every_frame(tmp_path, monkeypatch):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))             # the ipc sockets' temp dirs land here
    out = tmp_path / "hop.json"
    r = run("bench", "hop", "--messages", 60, "--windows", "1,8", "--repeats", 1, "--codec-messages", 64,
            "--seconds", 20, "--json", out, timeout=120)
    assert r.returncode == 0, r.stderr
    data = json.loads(out.read_text())
    seen = {(row["variant"], row["window"], row["batch"]) for row in data["rows"]}
    assert seen == {(v, w, b) for v in hop.VARIANTS for w, b in ((1, True), (8, True), (8, False))}
    for row in data["rows"]:
        (counts,) = row["counts"]
        assert counts == {"sent": 60, "acked": 60, "delivered": 60, "answered": 60, "duplicates": 0,
                          "unanswered": 0}, row
        assert row["complete"] and 1 <= row["b_msgs_per_turn"] <= row["window"]   # never more than in flight
        if row["window"] == 1:
            assert row["b_msgs_per_turn"] == 1
        sides = ("broker_main", "logic_main", "shared_io") if row["variant"] == "inproc" else \
            ("broker_main", "broker_io", "logic_main", "logic_io")
        assert set(row["us_per_msg"]) == set(sides)
    assert [(c["window"], c["batch"]) for c in data["codec"]] == [(1, True), (8, True), (8, False)]
    assert all(c["broker"] > 0 and c["logic"] > 0 for c in data["codec"])
    assert r.stdout.count("| yes ") == 12 and "frame codec alone" in r.stdout
    assert os.listdir(scratch) == []


def test_the_frames_are_the_nodes_frames():
    """The request passes the logic's schema, the ack answers its rid, the msgs frame passes the
    broker's PUB schema and names every member; a batch of a turn decodes to all its messages."""
    frames = hop.Frames(members=10, size=100)
    reqs = frames.requests(frames.request(7))
    assert reqs[0]["t"] == "send" and len(reqs[0]["text"]) == 100
    reply, (item,) = frames.answer(reqs[0])
    assert frames.acked(reply) == [7]
    assert frames.delivered(frames.msgs([item, item])) == 2 and len(item[1]) == 10
    joined = [frames.request(r) for r in range(1, 4)]
    from nodes.protocol import wire
    assert [m["rid"] for m in frames.requests(wire.array_of_packed(joined))] == [1, 2, 3]


def test_two_broker_topics_deliver_each_message_twice(tmp_path, monkeypatch):
    """--brokers 2 (G1k's two-broker mesh): each message's members split over two msgs frames,
    both received, every request still answered once."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    r = hop.one_run("ipc", 40, 4, True, (10, 100, 2), seconds=20)
    assert (r["sent"], r["acked"], r["answered"], r["delivered"]) == (40, 40, 40, 80)
    assert r["duplicates"] == r["unanswered"] == 0 and os.listdir(tmp_path) == []
    frames = hop.Frames(10, 100, 2)
    _reply, per_broker = frames.answer(frames.requests(frames.request(1))[0])
    assert sorted(u for item in per_broker for u in item[1]) == sorted(frames.uins[0] + frames.uins[1])
    assert len(frames.uins[0]) == len(frames.uins[1]) == 5 and len(set(frames.uins[0] + frames.uins[1])) == 10
