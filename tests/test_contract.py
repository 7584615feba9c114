"""The client contract on real nodes (issue "Exactly-once you can rely on"), one test per observation.

1. an UNAVAILABLE send is an *unknown* outcome; its retry learns the original id, stored once
2. a retry gets its original id whatever the device sent after it
3. no single client time locks a device out
4. ids are never reissued (expiry + restart), and a SIGKILL of a logic node leaves no gap
5. any request keeps a session alive; a dropped session hears NOT_LOGGED_IN
6. one session per (uin, device) across brokers: the older one is kicked
7. a connection cannot inherit a session it did not log in on
8. a token with a non-ASCII signature is refused cleanly, and the rest of the frame is served
9. memory is bounded: slow readers are dropped, internal sockets refuse huge frames
10. heartbeats and sends answer fast when an owner is down
"""
from __future__ import annotations

import os
import signal
import time

import pytest
import zmq

from nodes.client.blocking import Client, ClientError
from nodes.ops.mesh import wait_for
from nodes.protocol import auth, wire


def drain(client, timeout=1.0):
    """Every pushed message that arrives until ``timeout`` passes with nothing new."""
    got = []
    while True:
        m = client.recv(timeout=timeout)
        if m is None:
            return got
        got.append(m)


def raw_send(client, channel, ctime, text="x", timeout=None):
    return client.request({"t": "send", "channel": channel, "ctime": ctime, "text": text}, timeout)


def pid_of(harness, node_id):
    return harness.mesh.procs[node_id].pid


# --- 1 ---------------------------------------------------------------------------------------

def test_unavailable_send_is_unknown_and_its_retry_gets_the_original_id_once(make_mesh):
    m = make_mesh(brokers=1, logics=1, limits={"request_timeout": 1.0})
    sender, reader = m.client(1), m.client(2)
    logic = m.owner_of("lobby")
    os.kill(pid_of(m, logic), signal.SIGSTOP)
    try:
        with pytest.raises(ClientError) as exc:
            raw_send(sender, "lobby", 5_000, "maybe stored", timeout=3.0)
        assert exc.value.code == wire.Err.UNAVAILABLE
        assert exc.value.code in wire.UNKNOWN_OUTCOME
    finally:
        os.kill(pid_of(m, logic), signal.SIGCONT)
    # the owner comes back and stores what it had received; the retry learns its id
    first = wait_for(lambda: _try_send(sender, "lobby", 5_000, "maybe stored"), what="retry acked")
    again = raw_send(sender, "lobby", 5_000, "maybe stored")["id"]
    assert again == first
    marker = sender.send("lobby", "marker")
    ids = [msg["id"] for msg in _until(reader, marker)]
    assert ids.count(first) == 1 and ids == sorted(ids)


def _try_send(client, channel, ctime, text):
    try:
        return raw_send(client, channel, ctime, text, timeout=3.0)["id"]
    except ClientError as exc:
        if exc.code in wire.UNKNOWN_OUTCOME or exc.code == "TIMEOUT":
            return None
        raise


def _until(reader, last_id, timeout=10.0):
    got = []
    deadline = time.monotonic() + timeout
    while not got or got[-1]["id"] < last_id:
        m = reader.recv(timeout=max(0.0, deadline - time.monotonic()))
        assert m is not None, f"message {last_id} never arrived; got {[g['id'] for g in got]}"
        got.append(m)
    return got


def test_refused_outcome_codes_and_unknown_outcome_codes_are_disjoint_and_known():
    assert not set(wire.REFUSED_OUTCOME) & set(wire.UNKNOWN_OUTCOME)
    assert set(wire.REFUSED_OUTCOME) | set(wire.UNKNOWN_OUTCOME) <= set(wire.Err.all())


# --- 2, 3 ------------------------------------------------------------------------------------

def test_a_retry_gets_its_original_id_after_later_sends(shared_mesh):
    shared_mesh.admin.channel("create", "retry2", [61, 62])
    c = shared_mesh.client(61, device=3)
    a = raw_send(c, "retry2", 100, "first")["id"]
    b = raw_send(c, "retry2", 200, "second")["id"]
    assert raw_send(c, "retry2", 100, "first")["id"] == a         # the ack of 100 was lost
    assert raw_send(c, "retry2", 200, "second")["id"] == b
    # a client time never seen before is a new message, even if older than the newest
    older = raw_send(c, "retry2", 150, "between")["id"]
    assert older == b + 1
    # the same ctime for another channel (of the same owner: dedup lives with the owner) is refused
    sibling = next(f"retry2-{i}" for i in range(100)
                   if shared_mesh.owner_of(f"retry2-{i}") == shared_mesh.owner_of("retry2"))
    shared_mesh.admin.channel("create", sibling, [61])
    with pytest.raises(ClientError) as exc:
        raw_send(c, sibling, 100, "first")
    assert exc.value.code == wire.Err.STALE


def test_the_largest_client_time_does_not_lock_the_device_out(shared_mesh):
    shared_mesh.admin.channel("create", "clock", [63])
    c = shared_mesh.client(63, device=4)
    top = raw_send(c, "clock", wire.U64_MAX, "wrong clock")["id"]
    after = raw_send(c, "clock", 1_000, "clock fixed")["id"]
    assert after == top + 1
    assert raw_send(c, "clock", wire.U64_MAX, "wrong clock")["id"] == top


# --- 4 ---------------------------------------------------------------------------------------

def test_ids_are_not_reissued_after_expiry_and_a_restart(make_mesh):
    m = make_mesh(brokers=1, logics=1)
    m.admin.channel("create", "short", [1, 2], lifetime=1)
    c = m.client(1)
    ids = [c.send("short", f"m{i}") for i in range(3)]
    # wait until all three expired and were swept
    wait_for(lambda: c.sync("short", 0)["first"] > ids[-1], what="expiry")
    m.mesh.kill(m.owner_of("short"))
    m.mesh.start([m.owner_of("short")])
    m.mesh.wait_ready(15)
    again = [_send_retrying(c, "short", f"n{i}") for i in range(3)]
    assert again == [ids[-1] + 1, ids[-1] + 2, ids[-1] + 3]


def _send_retrying(client, channel, text, timeout=15.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            return client.send(channel, text)
        except ClientError as exc:
            if time.monotonic() > deadline or exc.code not in wire.UNKNOWN_OUTCOME + (
                    "TIMEOUT", wire.Err.NOT_LOGGED_IN):
                raise
        time.sleep(0.05)                   # an immediate UNAVAILABLE: retry soon, not in a spin


def test_a_sigkill_of_the_logic_node_leaves_no_gap_in_ids(make_mesh):
    m = make_mesh(brokers=1, logics=1, limits={"id_block": 10})
    c = m.client(1)
    ids = [c.send("lobby", f"m{i}") for i in range(7)]             # the prefetch of a 2nd block ran
    for _round in range(2):
        m.mesh.kill(m.owner_of("lobby"))
        m.mesh.start([m.owner_of("lobby")])
        m.mesh.wait_ready(15)
        ids += [_send_retrying(c, "lobby", f"after kill {i}") for i in range(7)]
    assert ids == list(range(ids[0], ids[0] + len(ids)))


def test_sync_says_up_to_where_ids_it_did_not_return_are_gone(shared_mesh):
    shared_mesh.admin.channel("create", "upto", [64])
    c = shared_mesh.client(64)
    ids = [c.send("upto", f"m{i}") for i in range(3)]
    page = c.sync("upto", 0)
    assert page["upto"] == ids[-1] and not page["more"]
    page = c.sync("upto", ids[-1])
    assert page["msgs"] == [] and page["upto"] == ids[-1]


# --- 5 ---------------------------------------------------------------------------------------

FAST_HB = {"wired": 0.4, "default": 0.4, "min": 0.2, "session_timeout_factor": 3}


@pytest.mark.slow          # over 5 s (the fast lane: pytest -m 'not slow')
def test_any_request_keeps_a_session_alive_and_a_dropped_one_hears_not_logged_in(make_mesh):
    m = make_mesh(brokers=2, logics=1, heartbeat=FAST_HB)
    quiet = m.client(1, broker=0)          # never heartbeats, only syncs
    talker = m.client(2, broker=1)
    deadline = time.monotonic() + 3.0      # > 3 intervals of 0.4 s
    sent = []
    while time.monotonic() < deadline:
        quiet.sync("lobby", 0)
        sent.append(talker.send("lobby", "still there?"))
        got = quiet.recv(timeout=0.2)
        assert got is not None and got["id"] == sent[-1], "pushes stopped for a busy session"
    # silence: the session is dropped, and its next request says so
    wait_for(lambda: (m.admin.status("b1") or {}).get("sessions") == 0,    # None: not answered yet
             what="the quiet session dropped")
    with pytest.raises(ClientError) as exc:
        quiet.sync("lobby", 0)
    assert exc.value.code == wire.Err.NOT_LOGGED_IN
    m.wait_presence(1, 0, present=False)


# --- 6 ---------------------------------------------------------------------------------------

def test_a_login_on_another_broker_kicks_the_older_session(shared_mesh):
    shared_mesh.admin.channel("create", "twice", [65, 66])
    old = shared_mesh.client(65, broker=0, device=7)
    new = shared_mesh.client(65, broker=1, device=7, wait_online=False)
    wait_for(lambda: _kicked(old), what="kick notice")
    with pytest.raises(ClientError) as exc:
        old.sync("twice", 0)
    assert exc.value.code == wire.Err.NOT_LOGGED_IN
    other = shared_mesh.client(66, broker=0)
    ids = [other.send("twice", f"m{i}") for i in range(3)]
    assert [m["id"] for m in _until(new, ids[-1])] == ids
    assert old.recv(timeout=0.5) is None
    # the old session's heartbeat does not steal the device back
    new.heartbeat()
    last = other.send("twice", "still the new one")
    assert _until(new, last)[-1]["id"] == last


def _kicked(client):
    client._pump(0.2)
    return any(e.get("t") == "kicked" and e.get("reason") == "replaced" for e in client.events)


# --- 7 ---------------------------------------------------------------------------------------

def test_a_connection_cannot_inherit_a_session_by_its_routing_id(shared_mesh):
    ctx = zmq.Context.instance()
    ident = b"victim-" + os.urandom(4).hex().encode()
    victim = ctx.socket(zmq.DEALER)
    victim.setsockopt(zmq.IDENTITY, ident)
    victim.setsockopt(zmq.LINGER, 0)
    victim.connect(shared_mesh.broker(0))
    victim.send(wire.pack({"t": "login", "rid": 1, "v": wire.PROTOCOL_VERSION,
                           "token": shared_mesh.token(67), "device": 0}))
    assert victim.poll(5000)
    ok = wire.unpack(victim.recv())
    assert ok["t"] == "login_ok" and type(ok["sid"]) is int
    victim.close(0)

    def thief_asks(req):
        """One try from a fresh connection presenting the victim's routing id (the broker may
        refuse it as a duplicate until it has seen the victim's connection go)."""
        thief = ctx.socket(zmq.DEALER)
        thief.setsockopt(zmq.IDENTITY, ident)
        thief.setsockopt(zmq.LINGER, 0)
        thief.connect(shared_mesh.broker(0))
        try:
            thief.send(wire.pack(req))
            return wire.unpack(thief.recv()) if thief.poll(1000) else None
        finally:
            thief.close(0)
    for req in ({"t": "sync", "rid": 2, "channel": "lobby", "after": 0},
                {"t": "send", "rid": 3, "channel": "lobby", "ctime": 1, "text": "as 67",
                 "sid": ok["sid"] ^ 1}):
        reply = wait_for(lambda req=req: thief_asks(req), timeout=30, what="an answer to the thief")
        assert reply["t"] == "err" and reply["code"] == wire.Err.NOT_LOGGED_IN


# --- 8 ---------------------------------------------------------------------------------------

def test_a_non_ascii_token_signature_is_refused_and_the_rest_of_the_frame_served(shared_mesh):
    token = shared_mesh.token(68)
    bad = token[:-1] + "é"
    c = Client(shared_mesh.broker(0))
    shared_mesh.clients.append(c)
    c.sock.send(wire.pack([{"t": "login", "rid": 1, "v": wire.PROTOCOL_VERSION, "token": bad, "device": 0},
                           {"t": "ping", "rid": 2}]))
    replies = {}
    while len(replies) < 2:
        assert c._pump(5.0), f"only {replies} answered"
        while c.events:
            e = c.events.popleft()
            replies[e["rid"]] = e
    assert replies[1]["code"] == wire.Err.AUTH_FAILED
    assert replies[2]["t"] == "pong"
    admin_bad = auth.mint(shared_mesh.topo.read_secret(), 0, scope="admin")[:-1] + "é"
    reply = shared_mesh.admin.call(shared_mesh.owner_of("lobby"),
                                   {"t": "channel_show", "auth": admin_bad, "channel": "lobby"})
    assert reply["t"] == "err" and reply["code"] == wire.Err.AUTH_FAILED


# --- 9 ---------------------------------------------------------------------------------------

def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_readers_that_never_read_are_dropped_as_too_slow_and_memory_stays_bounded(make_mesh):
    m = make_mesh(brokers=1, logics=1, limits={"session_queue": 50})
    ctx = zmq.Context.instance()
    sleepers = []
    for uin in range(10, 15):
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.RCVBUF, 4096)
        s.setsockopt(zmq.RCVHWM, 10)
        s.connect(m.broker(0))
        s.send(wire.pack({"t": "login", "rid": 1, "v": wire.PROTOCOL_VERSION,
                          "token": m.token(uin), "device": 0}))
        assert s.poll(5000) and wire.unpack(s.recv())["t"] == "login_ok"
        m.wait_presence(uin, 0, present=True)
        sleepers.append(s)
    sender, reader = m.client(1), m.client(2)
    broker = pid_of(m, "b1")
    text = "y" * 1400
    try:
        for i in range(3000):
            sender.send("lobby", text)
            if i % 100 == 99:
                assert reader.recv(timeout=5) is not None
                drain(reader, timeout=0)
                if m.admin.status("b1")["kicked"].get("too_slow", 0) == len(sleepers):
                    break
        status = m.admin.status("b1")
        assert status["kicked"].get("too_slow", 0) == len(sleepers)
        assert status["sessions"] == 2
        assert rss_kib(broker) < 400 * 1024
        last = sender.send("lobby", "the reader is still served")
        assert _until(reader, last)[-1]["id"] == last
    finally:
        for s in sleepers:
            s.close(0)


def test_internal_sockets_refuse_huge_frames_and_the_node_stays_up(make_mesh):
    m = make_mesh(brokers=1, logics=1)
    logic = m.owner_of("lobby")
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    m.admin.identity.as_client(s, logic)            # an admitted CURVE key: the frame reaches the node
    s.connect(m.topo.node(logic).endpoint("rpc"))
    try:
        s.send(b"\xdd" + (32 * 2**20).to_bytes(4, "big") + b"\x90" * (32 * 2**20))
        assert not s.poll(1000)
    finally:
        s.close(0)
    assert m.admin.status(logic) is not None
    assert rss_kib(pid_of(m, logic)) < 300 * 1024
    c = m.client(1)
    assert c.send("lobby", "still serving") >= 1


def test_relay_sessions_expire(make_mesh):
    m = make_mesh(brokers=1, logics=1, relays=1, heartbeat=FAST_HB,
                  limits={"relay_session_timeout": 1.0})
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(m.topo.node("m1").endpoint("client"))
    try:
        s.send(wire.pack({"t": "login", "rid": 1, "v": wire.PROTOCOL_VERSION,
                          "token": m.token(1), "device": 0}))
        assert s.poll(5000)
        ok = wire.unpack(s.recv())
        assert ok["t"] == "login_ok"
        wait_for(lambda: (m.admin.status("m1") or {}).get("sessions") == 0, what="relay session expiry")
        s.send(wire.pack({"t": "down_info", "rid": 2, "sid": ok["sid"], "ref": "imesh-media:m1:00"}))
        assert s.poll(5000)
        assert wire.unpack(s.recv())["code"] == wire.Err.NOT_LOGGED_IN
    finally:
        s.close(0)


# --- 10 --------------------------------------------------------------------------------------

def test_heartbeats_and_sends_answer_fast_when_an_owner_is_down(make_mesh):
    m = make_mesh(brokers=1, logics=2, channels={})
    names = [f"room{i}" for i in range(40)]
    by_owner = {}
    for name in names:
        by_owner.setdefault(m.owner_of(name), name)
    assert len(by_owner) == 2
    down, up = by_owner["l1"], by_owner["l2"]
    for name in (down, up):
        m.admin.channel("create", name, [1])
    c = m.client(1)
    c.send(down, "before")
    c.send(up, "before")
    os.kill(pid_of(m, "l1"), signal.SIGSTOP)
    try:
        wait_for(lambda: "l1" not in (m.admin.status("b1") or {"logic_links": ["l1"]})["logic_links"],
                 what="l1 seen down")          # a status not answered (a loaded machine) is no answer yet
        ack = c.request({"t": "hb", "channels": {down: 0, up: 0}}, timeout=1.5)
        assert ack["unavailable"] == [down] and up in ack["heads"]
        with pytest.raises(ClientError) as exc:
            raw_send(c, down, 77, timeout=1.5)
        assert exc.value.code == wire.Err.UNAVAILABLE
    finally:
        os.kill(pid_of(m, "l1"), signal.SIGCONT)


def test_a_fragment_group_sent_again_from_its_start_gets_its_original_ids(shared_mesh):
    """Found in review: after an unknown outcome mid-group, resending the group from index 0
    (same group, same client times) got BAD_FRAGMENT -- 'refused' -- although pieces were stored."""
    shared_mesh.admin.channel("create", "frags", [69, 70])
    c = shared_mesh.client(69)
    reader = shared_mesh.client(70)

    def piece(index, text):
        return c.request({"t": "send", "channel": "frags", "ctime": 700 + index, "text": text,
                          "frag": [4242, index, 3]})["id"]
    first = [piece(0, "a" * 10), piece(1, "b" * 10)]                 # the ack of piece 1 was lost
    again = [piece(0, "a" * 10), piece(1, "b" * 10)]
    assert again == first
    last = piece(2, "c")
    pieces = [m for m in _until(reader, last) if m["channel"] == "frags"]
    assert [m["id"] for m in pieces] == first + [last]                # each piece stored once
