"""Lifetime and expiry, queue bound, long-text fragments and the per-user rate limit (real nodes)."""
from __future__ import annotations

import time

import pytest
from rocksdict import AccessType, Options, Rdict
from test_heartbeat_sync import collect, endpoints, run

from nodes.client.aclient import AsyncClient
from nodes.client.blocking import ClientError
from nodes.protocol import wire
from nodes.storage import store as keys

LONG = ("Grüße aus 北京 🌏🚀 — " * 400)[:10_000]                  # ~10 KB of mixed UTF-8


def test_long_text_arrives_whole_at_every_member_and_a_lost_fragment_is_synced(make_mesh):
    m = make_mesh()
    assert len(LONG.encode()) > 10_000

    async def main():
        sender = AsyncClient(endpoints(m, 0), m.token(1))
        readers = [AsyncClient(endpoints(m, i % 2), m.token(2 + i)) for i in range(2)]
        for c in [sender] + readers:
            await c.connect()
            m.wait_presence(c.uin, 0, present=True)
        dropped = []
        readers[1].drop_push = lambda msg: (msg.get("frag", [0, -1])[1] == 3 and not dropped
                                           and not dropped.append(msg["id"]))
        msg_id = await sender.send("lobby", LONG)
        for r in readers:
            got = (await collect(r, 1))[0]
            assert got["text"] == LONG and got["id"] == msg_id and "frag" not in got
            assert got["ids"] == list(range(msg_id - len(got["ids"]) + 1, msg_id + 1))
        assert dropped and readers[1].syncs >= 1            # the dropped piece came back by sync
        for c in [sender] + readers:
            await c.close()
    run(main())


def test_a_burst_of_20_gets_5_through_and_15_rate_limited(make_mesh):
    """The outcome end to end (who is refused, with what, nothing refused stored, counted).  The
    refill is one token per 1000 s here, so no token comes back however slowly this machine
    sends; the refill at 1/s and the retry_after it asks for are checked with a fake clock in
    tests/test_timing_rules.py."""
    m = make_mesh(brokers=1, logics=1, limits={"rate": 0.001, "burst": 5})
    c = m.client(1)
    accepted, refused = [], []
    for i in range(20):
        try:
            accepted.append(c.send("lobby", f"spam {i}", retries=0))
        except ClientError as exc:
            refused.append(exc)
    assert len(accepted) == 5 and len(refused) == 15
    assert {e.code for e in refused} == {wire.Err.RATE_LIMITED}
    assert 0 < refused[-1].reply["retry_after"] <= 1000.0
    assert [m["id"] for m in c.sync("lobby", 0)["msgs"]] == accepted       # refused: never stored
    assert m.client(2).send("lobby", "another user", retries=0) == accepted[-1] + 1    # per user
    broker = m.topo.ids("broker")[0]
    assert m.admin.status(broker)["refused"]["RATE_LIMITED"] == 15


def open_store_read_only(m, node_id):
    opts = Options(raw_mode=True)
    return Rdict(m.topo.node_dir(node_id), opts, access_type=AccessType.read_only())


def stored_ids(m, channel):
    db = open_store_read_only(m, m.owner_of(channel))
    try:
        prefix = keys.channel_prefix(channel)
        return [keys.unpack_u64(k[-8:]) for k in db.keys(from_key=prefix) if k.startswith(prefix)]
    finally:
        db.close()


def test_expired_messages_leave_sync_and_the_store_while_sends_continue(make_mesh):
    m = make_mesh(brokers=1, logics=1, channels={"lobby": {"members": "1-100"},
                                                 "brief": {"members": [1, 2], "lifetime": 2}})
    c = m.client(1)
    early = [c.send("brief", f"early {i}") for i in range(5)]
    deadline = time.monotonic() + 2.0
    later = []
    while time.monotonic() < deadline + 1.5:            # keep sending across the expiry,
        later.append(c.send("brief", f"later {len(later)}"))
        time.sleep(0.1)                                 # at a human pace (bounded: ~35 sends)
    logic = m.owner_of("brief")
    # wait (on the node's own counter) until the sweeper has deleted the early ones
    t_end = time.monotonic() + 15
    while m.admin.status(logic)["expired"] < len(early) and time.monotonic() < t_end:
        pass
    page = c.sync("brief", 0)
    live = [msg["id"] for msg in page["msgs"]]
    assert not set(early) & set(live) and page["first"] > early[-1]
    assert live and set(live) <= set(later) and live[-1] == later[-1] == page["last"]
    assert not set(early) & set(stored_ids(m, "brief"))
    assert m.admin.channel("show", "brief")["lifetime"] == 2
    assert c.sync("lobby", 0)["msgs"] == []            # other channels unaffected


def test_a_channel_queue_of_10_keeps_only_the_newest_10(make_mesh):
    m = make_mesh(brokers=1, logics=1, limits={"channel_queue": 10})
    c = m.client(1)
    ids = [c.send("lobby", f"q{i}") for i in range(25)]
    page = c.sync("lobby", 0)
    assert [msg["id"] for msg in page["msgs"]] == ids[-10:] and page["first"] == ids[-10]
    assert stored_ids(m, "lobby") == ids[-10:]
    assert m.admin.status(m.owner_of("lobby"))["trimmed"] == 15


@pytest.mark.parametrize("change,code", [
    ({"text": ""}, wire.Err.EMPTY_TEXT),
    ({"frag": [1, 2, 2]}, wire.Err.BAD_FRAGMENT),           # index >= count
    ({"frag": [1, 0, 1]}, wire.Err.BAD_FRAGMENT),           # a group of one is not a group
    ({"frag": [1, 0, 10**6]}, wire.Err.BAD_FRAGMENT),       # over max_fragments
    ({"frag": [1, 1, 3]}, wire.Err.BAD_FRAGMENT),           # unknown group
    ({"frag": [1, -1, 3]}, wire.Err.BAD_FRAGMENT),
    ({"frag": "x"}, wire.Err.BAD_FRAGMENT),
    ({"frag": [1, 0]}, wire.Err.BAD_FRAGMENT),
])
def test_bad_texts_and_fragment_headers_are_refused_and_not_stored(shared_frag_mesh, change, code):
    m, c = shared_frag_mesh
    before = c.sync("lobby", 0)["last"]
    msg = {"t": "send", "channel": "lobby", "ctime": c.clock.next(), "text": "piece"}
    msg.update(change)
    with pytest.raises(ClientError) as exc:
        c.request(msg)
    assert exc.value.code == code
    assert c.sync("lobby", 0)["last"] == before


def test_fragments_must_keep_their_count_and_order(shared_frag_mesh):
    m, c = shared_frag_mesh
    start = c.request({"t": "send", "channel": "lobby", "ctime": c.clock.next(), "text": "a",
                       "frag": [77, 0, 3]})
    for frag in ([77, 1, 4], [77, 2, 3], [77, 0, 3]):       # mixed count, skipped index, restart
        with pytest.raises(ClientError) as exc:
            c.request({"t": "send", "channel": "lobby", "ctime": c.clock.next(), "text": "b", "frag": frag})
        assert exc.value.code == wire.Err.BAD_FRAGMENT
    nxt = c.request({"t": "send", "channel": "lobby", "ctime": c.clock.next(), "text": "b", "frag": [77, 1, 3]})
    assert nxt["id"] == start["id"] + 1
    stored = c.sync("lobby", start["id"] - 1)["msgs"]
    assert [s["frag"] for s in stored] == [[77, 0, 3], [77, 1, 3]]


def test_invalid_utf8_text_is_refused(shared_frag_mesh):
    m, c = shared_frag_mesh
    frame = wire.pack({"t": "send", "rid": 99, "channel": "lobby", "ctime": c.clock.next(), "text": "ok"})
    bad = frame.replace(b"\xa2ok", b"\xa2\xff\xfe")
    c.sock.send(bad)
    assert c.sock.poll(5000)
    reply = wire.unpack(c.sock.recv())
    assert reply["code"] == wire.Err.BAD_FRAME and "UTF-8" in reply["msg"]


@pytest.fixture(scope="module")
def shared_frag_mesh(tmp_path_factory):
    from conftest import MeshHarness, write_topology
    harness = MeshHarness(write_topology(tmp_path_factory.mktemp("frag"), brokers=1, logics=1))
    try:
        harness.start()
        yield harness, harness.client(1)
    finally:
        harness.close()
