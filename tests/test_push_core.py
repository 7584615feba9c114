"""Offline pushes without sockets (nodes/logic/pushes.py): who is notified, batching, the
backoff schedule, the bounded queue, rows that outlive a restart -- with a fake clock -- and
the HTTP outcomes of ``post`` against a real server on 127.0.0.1."""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import socket
import time

import pushreceiver
import pytest
from pushreceiver import Receiver

from nodes.cluster import topology
from nodes.cluster.topology import PushSettings
from nodes.logic import pushes
from nodes.logic.core import LogicCore
from nodes.logic.presence import PresenceReplica
from nodes.storage import shards, store as keys
from nodes.storage.store import Store
from tests.test_cores import Out, one_logic_topology, send

SECRET = b"push-secret-push-secret"


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def replica_with(online):
    """A real presence replica that has the snapshot of one router: ``online`` uins on device 0."""
    replica = PresenceReplica(["r1"], lambda _r: None)
    replica.on_snapshot({"router": "r1", "epoch": 1, "seq": 0, "entries": [[u, 0, "b1"] for u in online]})
    return replica


def make(tmp_path, online=(3,), store=None, **settings):
    topo = one_logic_topology(tmp_path)
    store = store or Store(str(tmp_path / "l1"))
    replica = replica_with(online)
    core = LogicCore("l1", topo, store, replica, Out(), b"secret-secret-secret")
    core.load()
    core.ids.on_ids("room", 1, 1001)
    clock = Clock()
    p = pushes.Pushes(PushSettings("http://127.0.0.1:9/push", "unused", **settings), SECRET, core.serving,
                      replica, store, core.stats, clock)
    core.sends.on_stored = p.on_stored
    return core, store, p, clock


def turn(core, store, clock):
    core.assign(clock.now)
    store.flush()
    core.commit(core.take_committed())
    store.flush()                               # what on_stored staged (the next turn's batch)


def stored_rows(store):
    return {keys.push_of_key(k): keys.decode(v) for k, v in store.scan(b"p")}


def test_offline_members_but_the_sender_and_those_who_muted_are_notified(tmp_path):
    core, store, p, clock = make(tmp_path, online=(3,))     # room: 1, 2, 3; 3 is online
    send(core, 1, 10, "hello there")
    turn(core, store, clock)
    assert stored_rows(store) == {("room", 1): {"sender": 1, "device": 0, "stime": int(clock.now * 1000),
                                                "preview": "hello there", "uins": [2]}}
    reply = pushes.mute(core.serving, store, {"rid": 5, "uin": 2, "channel": "room", "until": clock.now + 60},
                        clock.now)
    assert reply["until"] == clock.now + 60
    send(core, 1, 11)
    turn(core, store, clock)
    assert list(stored_rows(store)) == [("room", 1)]        # 2 muted, 3 online: nothing for id 2
    clock.now += 61                                          # the mute ran out
    send(core, 3, 12)
    turn(core, store, clock)
    assert stored_rows(store)[("room", 3)]["uins"] == [1, 2]
    assert list(store.scan(keys.mute_prefix("room"))) == []  # the spent mute row is gone
    with pytest.raises(Exception, match="not a member"):
        pushes.mute(core.serving, store, {"rid": 6, "uin": 9, "channel": "room", "until": clock.now + 9}, clock.now)


def test_everyone_online_or_muted_stores_nothing_and_preview_false_sends_no_text(tmp_path):
    core, store, p, clock = make(tmp_path, online=(2, 3), preview=0)
    send(core, 1, 10)
    turn(core, store, clock)
    assert stored_rows(store) == {} and not p.pending
    send(core, 2, 11, "secret text")                        # 1 is offline
    turn(core, store, clock)
    assert stored_rows(store)[("room", 2)]["preview"] is None


def verify(job):
    """What a receiver does (docs/push.md): HMAC-SHA256 of the raw body with the push secret."""
    want = "sha256=" + hmac.new(SECRET, job.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(job.headers["X-Imesh-Signature"], want)
    return json.loads(job.body)


def test_due_pushes_leave_in_signed_batches_with_one_key_per_event(tmp_path):
    core, store, p, clock = make(tmp_path, batch=2)
    for i in range(5):
        send(core, 1, 10 + i, f"m{i}")
    turn(core, store, clock)
    jobs = p.take_jobs(room=10)
    assert [len(j.keys) for j in jobs] == [2, 2, 1]
    body = verify(jobs[0])
    assert body["events"][0] == {"key": "room:1", "channel": "room", "id": 1, "sender": 1, "device": 0,
                                 "stime": int(clock.now * 1000), "preview": "m0", "uins": [2]}
    assert jobs[0].headers["Idempotency-Key"] == "room:1,room:2"
    assert jobs[2].headers["Idempotency-Key"] == "room:5"
    assert p.take_jobs(room=10) == []                        # all in flight
    for job in jobs:
        p.on_answer(job.keys, pushes.OK, "HTTP 200")
    store.flush()
    assert stored_rows(store) == {} and not p.pending and p.jobs == 0
    assert p.status()["push_sent"] == 5 and p.status()["push_posts"] == 3


def test_failures_back_off_exponentially_up_to_the_cap_and_the_retry_is_the_same_post(tmp_path, caplog):
    assert [pushes.backoff(n, 1.0, 10.0) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]
    core, store, p, clock = make(tmp_path, retry_min=1.0, retry_max=4.0, alert_after=5.0)
    send(core, 1, 10)
    turn(core, store, clock)
    first = p.take_jobs(room=2)[0]
    caplog.set_level(logging.WARNING, logger="nodes.logic.pushes")
    waits = []
    for _ in range(5):
        p.on_answer(first.keys, pushes.RETRY, "HTTP 500")
        started = clock.now
        while not (job := p.take_jobs(room=2)):
            clock.now += 0.25
        waits.append(clock.now - started)
        assert job[0].body == first.body and job[0].headers == first.headers   # same key, same signature
    assert waits == [1.0, 2.0, 4.0, 4.0, 4.0]
    assert p.status()["push_down"] is True
    alerts = [r for r in caplog.records if r.levelno == logging.ERROR and "failing for" in r.getMessage()]
    assert len(alerts) >= 1 and "HTTP 500" in alerts[0].getMessage()
    p.on_answer(first.keys, pushes.OK, "HTTP 200")
    assert p.status()["push_down"] is False and not p.pending
    assert any("accepts again" in r.getMessage() for r in caplog.records)


def test_a_refusal_for_good_drops_the_event_and_says_so(tmp_path, caplog):
    core, store, p, clock = make(tmp_path)
    send(core, 1, 10)
    turn(core, store, clock)
    job = p.take_jobs(room=2)[0]
    p.on_answer(job.keys, pushes.REJECTED, "HTTP 400")
    store.flush()
    assert stored_rows(store) == {} and p.status()["push_rejected"] == 1
    assert any("refused" in r.getMessage() and r.levelno == logging.ERROR for r in caplog.records)


def test_the_queue_is_bounded_the_oldest_go_counted_and_logged_once_per_window(tmp_path, caplog):
    core, store, p, clock = make(tmp_path, max_pending=3, alert_after=60.0)
    caplog.set_level(logging.ERROR, logger="nodes.logic.pushes")
    for i in range(5):
        send(core, 1, 10 + i)
    turn(core, store, clock)
    assert sorted(stored_rows(store)) == [("room", 3), ("room", 4), ("room", 5)]
    assert p.status()["push_dropped"] == 2 and p.status()["push_pending"] == 3
    send(core, 1, 20)
    turn(core, store, clock)                                 # one more dropped: not logged again yet
    drops = [r for r in caplog.records if "queue full" in r.getMessage()]
    assert len(drops) == 1 and "dropped the 2 oldest" in drops[0].getMessage()
    assert p.status()["push_dropped"] == 3


def test_pending_rows_outlive_a_restart_and_only_served_channels_are_sent(tmp_path):
    core, store, p, clock = make(tmp_path)
    send(core, 1, 10)
    turn(core, store, clock)
    p.take_jobs(room=2)                                      # in flight when the node stops
    store.put(keys.push_key("elsewhere", 7), keys.encode({"uins": [5]}))   # a channel not served here
    store.close()
    core2, store2, p2, _clock = make(tmp_path, store=Store(str(tmp_path / "l1")))
    assert not p2.pending
    p2.rescan()
    assert [(e.channel, e.id) for e in p2.pending.values()] == [("room", 1)]
    assert verify(p2.take_jobs(room=2)[0])["events"][0]["key"] == "room:1"


def test_push_and_mute_rows_travel_with_their_channel(tmp_path):
    store = Store(str(tmp_path / "s"))
    store.start_capture()
    store.put(keys.push_key("room", 4), keys.encode({"uins": [2]}))
    store.put(keys.mute_key("room", 2), keys.encode(99.0))
    store.put(keys.channel_key("room"), keys.encode({"members": [1, 2]}))
    store.delete(keys.push_key("room", 4))
    split = shards.split(store.take_captured(), lambda ch: {"room": 3}[ch])
    assert [k for k, _v in split[3]] == [keys.push_key("room", 4), keys.mute_key("room", 2),
                                         keys.channel_key("room"), keys.push_key("room", 4)]
    store.flush()
    store.put(keys.push_key("room", 5), keys.encode({"uins": [2]}))
    store.put(keys.push_key("roomy", 1), keys.encode({"uins": [2]}))
    store.flush()
    rows = [k for k, _v in shards.channel_rows(store, {"room"}.__contains__)]
    assert keys.push_key("room", 5) in rows and keys.mute_key("room", 2) in rows
    assert keys.push_key("roomy", 1) not in rows
    assert keys.push_of_key(keys.push_key("a:b", 9)) == ("a:b", 9)
    assert keys.mute_uin(keys.mute_key("room", 70000)) == 70000


def test_the_push_section_is_checked(tmp_path):
    def parse(push):
        raw = {"local": True, "data_dir": str(tmp_path), "push": push,
               "idcs": {"a": {"brokers": [{"id": "b1", "client": "tcp://127.0.0.1:1", "rpc": "tcp://127.0.0.1:2"}],
                              "logics": [{"id": "l1", "rpc": "tcp://127.0.0.1:3", "pub": "tcp://127.0.0.1:4"}],
                              "routers": [{"id": "r", "rpc": "tcp://127.0.0.1:5", "pub": "tcp://127.0.0.1:6"}],
                              "counters": [{"id": "c", "rpc": "tcp://127.0.0.1:7"}]}}}
        return topology.parse(raw, str(tmp_path / "t.yaml"))
    got = parse({"webhook": "https://push.example/imesh", "preview": False, "batch": 10}).push
    assert (got.webhook, got.preview, got.batch, got.secret_file) == (
        "https://push.example/imesh", 0, 10, str(tmp_path / "push_secret"))
    assert parse({"webhook": "http://h/x"}).push.preview == 100
    for bad, where in [({"webhook": "ftp://h"}, "push.webhook"), ({"secret_file": "x"}, "push.webhook"),
                       ({"webhook": "http://h", "batch": 0}, "push.batch"),
                       ({"webhook": "http://h", "retry_min": 9, "retry_max": 2}, "push.retry_max"),
                       ({"webhook": "http://h", "preview": "yes"}, "push.preview"),
                       ({"webhook": "http://h", "colour": 1}, "push.colour"), ("http://h", "push")]:
        with pytest.raises(topology.TopologyError, match=where.replace(".", r"\.")):
            parse(bad)


# --- HTTP outcomes (the sender thread's view) --------------------------------------------------
@pytest.fixture
def receiver():
    with pushreceiver.serving() as url:
        yield url


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_post_outcomes_from_a_real_server(receiver):
    Receiver.codes[:] = [200, 500, 503, 429, 400, 302, 0]
    results = [pushes.post(receiver, b"{}", {"Content-Type": "application/json"}, 0.3)[0] for _ in range(7)]
    assert results == [pushes.OK, pushes.RETRY, pushes.RETRY, pushes.RETRY, pushes.REJECTED,
                       pushes.REJECTED, pushes.RETRY]            # the last one timed out
    assert pushes.post(f"http://127.0.0.1:{free_port()}/x", b"{}", {}, 1.0)[0] == pushes.RETRY   # refused


def test_the_sender_thread_posts_jobs_and_hands_answers_back(tmp_path, receiver):
    core, store, p, clock = make(tmp_path)
    Receiver.codes[:] = [500, 200]
    sender = pushes.Sender(receiver, 2.0)
    send(core, 1, 10)
    turn(core, store, clock)
    deadline = time.monotonic() + 10
    while p.pending and time.monotonic() < deadline:
        pushes.pump(p, sender)
        clock.now += 0.5                                     # the backoff passes in fake time
        time.sleep(0.02)
    sender.stop()
    assert not p.pending
    assert [(code, h["Idempotency-Key"]) for code, h, _b in Receiver.posts] == [(500, "room:1"), (200, "room:1")]
    assert Receiver.posts[0][2] == Receiver.posts[1][2]
