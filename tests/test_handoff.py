"""The logic node's side of a live reshard on the cores alone (no sockets): adopt, page out,
take in, delete (nodes/logic/handoff.py)."""
from __future__ import annotations

import pytest
from test_cores import OnlineAll, Out, send, turn

from bench.handoff import topology_with
from nodes.logic import handoff
from nodes.logic.core import LogicCore
from nodes.protocol import auth, wire
from nodes.storage import shards, store as keys
from nodes.storage.store import Store

SECRET = b"secret-secret-secret"


def topo_with(tmp_path, logics, version):
    return topology_with(tmp_path, logics, version, channels={"lobby": {"members": [1, 2, 3]}})


def core_of(tmp_path, node_id, topo):
    out, store = Out(), Store(str(tmp_path / node_id))
    core = LogicCore(node_id, topo, store, OnlineAll(), out, SECRET)
    core.load()
    return core, out, store


def admin(**fields):
    return dict({"rid": 1, "auth": auth.mint(SECRET, 0, 300, scope="admin")}, **fields)


def moving_and_staying(tmp_path):
    """l1's core on a one-logic topology with two channels (ids leased): ``name`` moves to l2
    under the second topology, ``stay`` does not."""
    one, two = topo_with(tmp_path, ["l1"], 1), topo_with(tmp_path, ["l1", "l2"], 2)
    name = next(f"room{i}" for i in range(100) if two.logic_for(f"room{i}") == "l2")
    stay = next(f"room{i}" for i in range(100) if two.logic_for(f"room{i}") == "l1")
    core = core_of(tmp_path, "l1", one)
    for channel in (name, stay):
        core[0].members.channel_create(admin(channel=channel, members=[1, 2]))
        core[0].ids.on_ids(channel, 1, 1001)
    return one, two, name, stay, core


def test_a_channel_moves_with_its_ids_dedup_and_members(tmp_path, monkeypatch):
    one, two, name, stay, (src, src_out, src_store) = moving_and_staying(tmp_path)
    for n in range(1, 31):
        send(src, 1, 100 + n, f"m{n}", channel=name, rid=n)
    turn(src, src_store)
    assert [m["id"] for _i, m in src_out.replies][-1] == 30
    assert send(src, 2, 500, "waiting", channel=name, rid=99) is None     # not stored yet

    dst, dst_out, dst_store = core_of(tmp_path, "l2", two)
    leaving = src.adopt(two)
    assert leaving[name] == "l2" and stay not in leaving
    moving = sorted(leaving)
    assert src_out.replies[-1][1]["code"] == wire.Err.UNAVAILABLE          # the waiting send: unknown
    with pytest.raises(wire.ProtocolError) as exc:
        send(src, 1, 101, "m1", channel=name)
    assert exc.value.code == wire.Err.WRONG_OWNER
    heads = src.reads.heads({"rid": 1, "uin": 1, "channels": {name: 0, stay: 0}}, 0.0)
    assert heads["unavailable"] == [name] and stay in heads["heads"]
    assert send(src, 1, 900, "still", channel=stay) is None                # the others are served
    turn(src, src_store)
    assert src_out.replies[-1][1]["t"] == "ack"

    monkeypatch.setattr(handoff, "PAGE_BYTES", 200)                        # several pages
    out_side, in_side = handoff.Handoff(src, src_store), handoff.Handoff(dst, dst_store)
    after, first, pages = 0, True, 0
    while True:
        page = out_side.handle_handoff(b"", admin(to="l2", after=after))
        if pages == 1:                                                     # a page asked again (lost reply)
            again = handoff.Handoff(src, src_store).handle_handoff(b"", admin(to="l2", after=after))
            assert again["rows"] == page["rows"] and again["next"] == page["next"]
        assert page["channels"] == moving
        last = page["next"] == 0
        in_side.handle_take(b"", admin(channels=moving, rows=page["rows"], first=first, last=last))
        dst_store.flush()
        first, after, pages = False, page["next"], pages + 1
        if last:
            break
    assert pages > 2
    done = out_side.handle_done(b"", admin(to="l2", channels=moving))
    src_store.flush()
    assert done["channels"] == len(moving) and name not in src.channels and src.leaving() == {}
    held = {k[2:2 + k[1]].decode() for k, _v in src_store.scan(b"m")}
    assert held == {stay}                                                  # its messages are gone here

    assert dst.channels[name].members == {1, 2}
    assert send(dst, 1, 105, "m5", channel=name)["id"] == 5                 # a retry: its original id
    assert send(dst, 2, 500, "waiting", channel=name, rid=7) is None        # never stored: new
    turn(dst, dst_store)
    assert dst_out.replies[-1][1]["id"] == 31                              # ids go on from 30
    sync = dst.reads.sync({"rid": 1, "uin": 1, "channel": name, "after": 0}, 0.0)
    assert [m["id"] for m in sync["msgs"]] == list(range(1, 32))


def test_take_refuses_what_is_not_its_own_and_bad_rows(tmp_path):
    two = topo_with(tmp_path, ["l1", "l2"], 2)
    dst, _out, dst_store = core_of(tmp_path, "l2", two)
    side = handoff.Handoff(dst, dst_store)
    theirs = next(f"room{i}" for i in range(100) if two.logic_for(f"room{i}") == "l1")
    with pytest.raises(wire.ProtocolError) as exc:
        side.handle_take(b"", admin(channels=[theirs], rows=[], first=True, last=True))
    assert exc.value.code == wire.Err.WRONG_OWNER
    mine = next(f"room{i}" for i in range(100) if two.logic_for(f"room{i}") == "l2")
    for rows in ([["k", "v"]], [[b"", b"v"]], [[b"zz", b"v"]], "rows"):
        with pytest.raises(wire.ProtocolError) as exc:
            side.handle_take(b"", admin(channels=[mine], rows=rows))
        assert exc.value.code == wire.Err.BAD_FIELD
    with pytest.raises(wire.ProtocolError) as exc:
        side.handle_take(b"", admin(channels=["bad name!"], rows=[]))
    assert exc.value.code == wire.Err.BAD_CHANNEL
    with pytest.raises(wire.ProtocolError) as exc:
        side.handle_take(b"", {"rid": 1, "auth": auth.mint(SECRET, 5, 300), "channels": [mine]})
    assert exc.value.code == wire.Err.AUTH_FAILED


def test_take_stores_only_rows_of_the_channels_it_names(tmp_path):
    """``take`` names its channels, and its rows are written as they come: a row of another
    channel (one this node serves, say) or one that cannot be read would overwrite live
    state, or stop the node at the load and at every restart after it.  Refused, nothing
    written."""
    two = topo_with(tmp_path, ["l1", "l2"], 2)
    dst, _out, dst_store = core_of(tmp_path, "l2", two)
    mine = [f"room{i}" for i in range(100) if two.logic_for(f"room{i}") == "l2"]
    moving, served = mine[0], mine[1]
    dst.members.channel_create(admin(channel=served, members=[1, 2]))
    dst_store.flush()
    side = handoff.Handoff(dst, dst_store)
    stored = dict(dst_store.scan(b"c"))
    forged = keys.encode({"members": [9], "lifetime": None})
    bad = {"another channel's members": [[keys.channel_key(served), forged]],
           "another channel's messages": [[keys.message_key(served, 1), keys.encode([9, 0, 1, 0, 1e12, "x", None])]],
           "another channel's send index": [[keys.sent_key(9, 0, 1), keys.sent_value(served, 1, 0)]],
           "members that cannot be read": [[keys.channel_key(moving), b"\xc1"]],
           "a dedup row that cannot be read": [[keys.dedup_key(9, 0), b"\xc1"]]}
    for what, rows in bad.items():
        with pytest.raises(wire.ProtocolError) as exc:
            side.handle_take(b"", admin(channels=[moving], rows=rows, first=True, last=True))
        assert exc.value.code == wire.Err.BAD_FIELD, what
        dst_store.flush()
        assert dict(dst_store.scan(b"c")) == stored, what
        assert dst.channels[served].members == {1, 2}, what
    reopened = LogicCore("l2", two, dst_store, OnlineAll(), Out(), SECRET)
    reopened.load()                                                    # a restart still starts
    assert reopened.channels[served].members == {1, 2}


def test_a_channel_being_taken_in_is_not_served_until_it_is_loaded(tmp_path):
    """Between the first and the last page the new owner holds part of a channel.  An admin
    request reaching it then (bin/mesh follows the old owner's WRONG_OWNER to the new owner)
    must be answered UNAVAILABLE, not served on nothing: a ``channel_create`` would be acked
    and its members would replace the moved ones when the channel is loaded."""
    one, two = topo_with(tmp_path, ["l1"], 1), topo_with(tmp_path, ["l1", "l2"], 2)
    name = next(f"room{i}" for i in range(100) if two.logic_for(f"room{i}") == "l2")
    src, _out, src_store = core_of(tmp_path, "l1", one)
    src.members.channel_create(admin(channel=name, members=[1, 2]))
    src.ids.on_ids(name, 1, 1001)
    send(src, 1, 100, "m1", channel=name)
    turn(src, src_store)
    dst, _dst_out, dst_store = core_of(tmp_path, "l2", two)
    src.adopt(two)
    page = handoff.Handoff(src, src_store).handle_handoff(b"", admin(to="l2", after=0))
    side = handoff.Handoff(dst, dst_store)
    side.handle_take(b"", admin(channels=page["channels"], rows=page["rows"], first=True, last=False))
    dst_store.flush()
    for request in (lambda: dst.members.channel_create(admin(channel=name, members=[9])),
                    lambda: dst.members.channel_add(admin(channel=name, members=[9]))):
        with pytest.raises(wire.ProtocolError) as exc:
            request()
        assert exc.value.code == wire.Err.UNAVAILABLE
    dst_store.flush()
    side.handle_take(b"", admin(channels=page["channels"], rows=[], first=False, last=True))
    assert dst.channels[name].members == {1, 2}
    assert dst.members.channel_add(admin(channel=name, members=[9]))["members"] == [1, 2, 9]   # served now


def test_a_take_cut_short_leaves_no_partial_channel_that_a_restart_serves_or_hands_on(tmp_path, monkeypatch):
    """The new owner dies between the first and the last page (the moving channel's members
    and some of its messages arrived).  Restarted, it must not load that partial copy: the
    operator may then remove the node again (the old owner, which still holds the whole
    channel, serves it once more), and a partial copy the restarted node held would be
    handed back over the whole one -- messages lost, ids back."""
    one, two, three = (topo_with(tmp_path, ["l1"], 1), topo_with(tmp_path, ["l1", "l2"], 2),
                       topo_with(tmp_path, ["l1"], 3))
    name = next(f"room{i}" for i in range(100) if two.logic_for(f"room{i}") == "l2")
    src, _out, src_store = core_of(tmp_path, "l1", one)
    src.members.channel_create(admin(channel=name, members=[1, 2]))
    src.ids.on_ids(name, 1, 1001)
    for n in range(1, 31):
        send(src, 1, 100 + n, f"m{n}", channel=name, rid=n)
    turn(src, src_store)
    dst, _dst_out, dst_store = core_of(tmp_path, "l2", two)
    src.adopt(two)
    monkeypatch.setattr(handoff, "PAGE_BYTES", 200)
    page = handoff.Handoff(src, src_store).handle_handoff(b"", admin(to="l2", after=0))
    assert page["next"] != 0
    handoff.Handoff(dst, dst_store).handle_take(b"", admin(channels=page["channels"], rows=page["rows"],
                                                           first=True, last=False))
    dst_store.flush()                                                  # ... and l2 dies here

    restarted = LogicCore("l2", two, dst_store, OnlineAll(), Out(), SECRET)
    restarted.load()
    assert name not in restarted.channels                              # not served, not handed on
    with pytest.raises(wire.ProtocolError) as exc:
        send(restarted, 1, 500, "new", channel=name)
    assert exc.value.code == wire.Err.UNAVAILABLE
    src.adopt(three)                                                   # the node is removed again
    assert src.leaving() == {} and restarted.adopt(three) == {}
    sync = src.reads.sync({"rid": 1, "uin": 1, "channel": name, "after": 0}, 0.0)
    assert [m["id"] for m in sync["msgs"]] == list(range(1, 31))


def hand_over(src, src_store, dst, dst_store, to):
    """What bin/mesh reshard does for one old and new owner (nodes/ops/livereshard.py): pages,
    then done.  Returns the last take reply."""
    out_side, in_side = handoff.Handoff(src, src_store), handoff.Handoff(dst, dst_store)
    after, first = 0, True
    while True:
        page = out_side.handle_handoff(b"", admin(to=to, after=after))
        last = page["next"] == 0
        took = in_side.handle_take(b"", admin(channels=page["channels"], rows=page["rows"], first=first,
                                              last=last, boundaries=page.get("boundaries", {})))
        dst_store.flush()
        first, after = False, page["next"]
        if last:
            break
    out_side.handle_done(b"", admin(to=to, channels=page["channels"]))
    src_store.flush()
    return took


def test_a_stale_copy_never_replaces_the_newer_channel_its_new_owner_holds(tmp_path):
    """A logic node added live seeds the YAML channels it will own (empty) when it starts.
    If the operator then removes it again before ``lobby`` was handed to it (the move failed
    half way, say), the removal hands its empty ``lobby`` back to the old owner -- which still
    holds the real one and serves it again.  That copy is behind (ids would go back, messages
    and members vanish): the new owner keeps its own, and the stale copy is deleted."""
    one, two, three = (topo_with(tmp_path, ["l1"], 1), topo_with(tmp_path, ["l1", "l2"], 2),
                       topo_with(tmp_path, ["l1"], 3))
    assert two.logic_for("lobby") == "l2"
    l1, l1_out, l1_store = core_of(tmp_path, "l1", one)
    l1.ids.on_ids("lobby", 1, 1001)
    l1.members.channel_add(admin(channel="lobby", members=[4]))
    for n in range(1, 6):
        send(l1, 1, 100 + n, f"m{n}", channel="lobby", rid=n)
    turn(l1, l1_store)
    l2, _out2, l2_store = core_of(tmp_path, "l2", two)             # started with the new file
    assert l2.channels["lobby"].last_id == 0                        # its seeded, empty lobby
    l1.adopt(two)                                                   # ... and the move stops here
    l1.adopt(three)
    assert l2.adopt(three) == {"lobby": "l1"}
    took = hand_over(l2, l2_store, l1, l1_store, "l1")
    sync = l1.reads.sync({"rid": 1, "uin": 1, "channel": "lobby", "after": 0}, 0.0)
    assert [m["id"] for m in sync["msgs"]] == [1, 2, 3, 4, 5]
    assert l1.channels["lobby"].members == {1, 2, 3, 4}
    assert took["kept"] == ["lobby"]
    assert send(l1, 1, 200, "next", channel="lobby") is None
    turn(l1, l1_store)
    assert l1_out.replies[-1][1]["id"] == 6                        # ids go on, never back
    assert "lobby" not in l2.channels and l2.leaving() == {}        # the stale copy is gone


def test_pages_read_in_time_slices_still_carry_every_row(tmp_path, monkeypatch):
    """Reading a page stops when its time is up (here: at once, and the send rows of other
    channels are looked at one by one), so pages may be short or empty; together they are
    still every row of the move, in order, and the last one says so."""
    one, two, name, stay, (src, _out, src_store) = moving_and_staying(tmp_path)
    for n in range(1, 201):                                    # other channels' sends to scan past
        send(src, 2, 5000 + n, f"s{n}", channel=stay, rid=n)
        if n % 20 == 0:
            send(src, 1, 100 + n, f"m{n}", channel=name, rid=n)
    turn(src, src_store)
    leaving = sorted(src.adopt(two))
    expected = [[k, v] for k, v in shards.channel_rows(src_store, set(leaving).__contains__)]
    expected += [[k, v] for k, v in src_store.scan(b"d")]
    monkeypatch.setattr(handoff, "PAGE_SECONDS", 0.0)
    monkeypatch.setattr(handoff, "PAUSE_EVERY", 1)
    side, got, after, empty = handoff.Handoff(src, src_store), [], 0, 0
    for _ in range(10000):
        page = side.handle_handoff(b"", admin(to="l2", after=after))
        got += page["rows"]
        empty += not page["rows"]
        if page["next"] == 0:
            break
        after = page["next"]
    assert got == expected and empty > 0


def test_a_channel_moves_with_its_read_cursors_pending_pushes_and_mutes(tmp_path):
    """Every per-channel row kind goes with the channel in a live reshard: read cursors
    (``u``), pending offline pushes (``p``) and mutes (``q``) are channel state like its
    messages -- ``take`` must accept them, or the move of such a channel fails."""
    _one, two, name, _stay, (src, _out, src_store) = moving_and_staying(tmp_path)
    rows = {keys.cursor_key(name, 1): keys.encode(3),
            keys.push_key(name, 3): keys.encode([1, 0, 0, "hi", [2]]),
            keys.mute_key(name, 2): keys.encode(2e9)}
    for key, value in rows.items():
        src_store.put(key, value)
    src_store.flush()
    src.adopt(two)
    dst, _out2, dst_store = core_of(tmp_path, "l2", two)
    hand_over(src, src_store, dst, dst_store, "l2")
    for key, value in rows.items():
        assert dst_store.get(key) == value, key[:1]
