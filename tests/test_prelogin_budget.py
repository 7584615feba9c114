"""The pre-login budget's rules (nodes/broker/prelogin.py) with a fake clock, and the client
socket's byte bound (issue 23.2, 23.3): no sockets, no processes."""
from __future__ import annotations

from nodes.broker.node import client_hwm
from nodes.broker.prelogin import PreLoginBudget
from nodes.cluster.topology import DEFAULT_LIMITS
from nodes.runtime.outbox import Outbox


def budget(**kw):
    args = {"rate": 2.0, "burst": 3, "reply_bytes": 1000, "window": 10.0, "max_idents": 100}
    args.update(kw)
    return PreLoginBudget(**args)


def test_replies_cost_tokens_and_a_peer_out_of_tokens_is_dropped_unread():
    b = budget()
    assert b.admit(b"a", 0.0)
    assert [b.charge(b"a", 10, 0.0) for _ in range(4)] == [True, True, True, False]
    assert not b.admit(b"a", 0.1)                       # 0.2 tokens: the frame is not read
    assert b.admit(b"a", 0.5)                           # refilled at 2/s
    assert b.charge(b"a", 10, 0.5)
    assert b.dropped == {"reply": 1, "rate": 1}


def test_reply_bytes_are_a_total_not_a_rate():
    b = budget(rate=1000.0, burst=1000)
    assert b.charge(b"a", 600, 0.0)
    assert not b.charge(b"a", 600, 5.0)                 # 400 left, whatever the time
    assert b.charge(b"a", 400, 5.0)
    assert not b.admit(b"a", 6.0)                       # nothing left: frames dropped unread
    assert b.dropped["bytes"] == 1


def test_a_peer_that_does_not_log_in_in_time_is_dropped_until_it_falls_silent():
    b = budget(rate=100.0, burst=100)
    assert b.admit(b"a", 0.0)
    for t in range(1, 10):
        assert b.admit(b"a", float(t))
    assert not b.admit(b"a", 10.0)                      # window over: late
    assert not b.admit(b"a", 19.0)                      # still talking: still late
    assert b.admit(b"a", 29.5)                          # silent for a window: a new start
    assert b.dropped["late"] == 2


def test_state_is_forgotten_by_time_and_bounded_by_count():
    b = budget(max_idents=3)
    for i in range(5):
        b.admit(bytes([i]), 0.0)
    assert len(b) == 3 and b.dropped["forgotten"] == 2
    assert list(b.peers) == [b"\x02", b"\x03", b"\x04"]  # the least recently heard went first
    b.admit(b"\x02", 5.0)
    assert b.prune(10.0) == 2 and list(b.peers) == [b"\x02"]
    assert b.prune(15.0) == 1 and len(b) == 0


def test_a_peer_that_logs_in_leaves_the_budget():
    b = budget()
    b.admit(b"a", 0.0)
    b.forget(b"a")
    assert len(b) == 0


def test_the_client_queue_is_bounded_in_bytes():
    limits = dict(DEFAULT_LIMITS)
    hwm = client_hwm(limits)
    assert hwm * limits["max_frame"] <= limits["session_queue_bytes"]
    assert client_hwm(dict(limits, session_queue=10)) == 10           # the frame bound still holds
    assert client_hwm(dict(limits, session_queue_bytes=1)) == 1


class FakeSock:
    def __init__(self):
        self.frames = []


def test_joined_client_frames_stay_within_the_socket_frame_limit(monkeypatch):
    sent = []
    monkeypatch.setattr("nodes.runtime.outbox.send_pair", lambda sock, key, frame: sent.append(frame))
    out = Outbox(max_frame=16 * 2**20)
    client, internal = FakeSock(), FakeSock()
    out.frame_limits[client] = 4096
    for _ in range(100):
        out.put(client, b"c", b"x" * 1000)
        out.put(internal, b"i", b"x" * 1000)
    out.flush()
    client_frames = sent[:len(sent) - 1]
    assert all(len(f) <= 4096 for f in client_frames) and len(client_frames) == 25
    assert len(sent[-1]) > 100_000                      # other sockets join up to the node's limit
