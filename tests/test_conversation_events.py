"""Edit and delete events, history, typing and watched presence in the logic core.

Real RocksDB in temp dirs, a fake clock (``now`` passed in), the recording ``Out``
of tests/test_cores.py: the rules of docs/protocol.md "Message kinds" and
"History", checked where they are decided.
"""
from __future__ import annotations

import pytest
from test_cores import OnlineAll, Out, Wiring, leased_logic, make_logic, one_logic_topology, send

from nodes.logic.core import LogicCore
from nodes.protocol import wire
from nodes.storage import store as keys
from nodes.storage.store import Store

T0 = 1_800_000_000.0


def at(core, store, now):
    """One turn at fake time ``now``."""
    core.assign(now)
    store.flush()
    core.commit(core.take_committed())


def edit(core, uin, msg_id, ctime, text, now, device=0, channel="room", rid=7):
    return core.sends.edit(b"b", {"rid": rid, "uin": uin, "device": device, "channel": channel,
                                  "id": msg_id, "ctime": ctime, "text": text}, now)


def delete(core, uin, msg_id, ctime, now, device=0, channel="room", rid=8):
    return core.sends.delete(b"b", {"rid": rid, "uin": uin, "device": device, "channel": channel,
                                    "id": msg_id, "ctime": ctime}, now)


def history(core, uin=2, now=T0, **more):
    return core.history.history(dict({"rid": 1, "uin": uin, "channel": "room"}, **more), now)


def acks(out):
    return [m for _i, m in out.replies if m["t"] == "ack"]


def code_of(fn, *args, **kw):
    with pytest.raises(wire.ProtocolError) as err:
        fn(*args, **kw)
    return err.value.code


def test_edit_and_delete_are_events_with_their_own_ids_and_rewrite_the_original(tmp_path):
    core, out, store = leased_logic(tmp_path)
    send(core, 1, 100, "hello")
    send(core, 2, 100, "hi")
    at(core, store, T0)
    assert edit(core, 1, 1, 101, "hello!", T0 + 1) is None
    at(core, store, T0 + 1)
    assert acks(out)[-1]["id"] == 3
    pushed = [p for _b, p in out.published]
    assert pushed[-1]["kind"] == "edit" and pushed[-1]["ref"] == 1 and pushed[-1]["text"] == "hello!"
    assert "kind" not in pushed[0]                          # a plain message: today's push shape
    raw = keys.decode(store.get(keys.message_key("room", 1)))
    assert raw[5] == "hello!" and raw[7]["edited"] == int((T0 + 1) * 1000)
    assert delete(core, 1, 1, 102, T0 + 2) is None
    at(core, store, T0 + 2)
    assert pushed != [p for _b, p in out.published]
    ev = out.published[-1][1]
    assert (ev["kind"], ev["ref"], ev["text"], ev["id"]) == ("delete", 1, "", 4)
    # the text is gone from storage: the original and its edit event
    assert keys.decode(store.get(keys.message_key("room", 1)))[5] == ""
    assert keys.decode(store.get(keys.message_key("room", 3)))[5] == ""
    assert b"hello" not in b"".join(v for _k, v in store.scan(keys.channel_prefix("room")))
    page = core.reads.sync({"rid": 1, "uin": 2, "channel": "room", "after": 0}, T0 + 3)
    tomb = page["msgs"][0]
    assert tomb["deleted"] is True and "text" not in tomb and [m["id"] for m in page["msgs"]] == [1, 2, 3, 4]
    # the deleted message no longer counts as unread, at once (not only after a restore)
    assert core.readstate.unread(core.channels["room"], 3) == (1, False)        # only 2's "hi"


def test_old_plain_rows_read_back_as_messages(tmp_path):
    core, _out, store = leased_logic(tmp_path)
    send(core, 1, 100, "old")
    at(core, store, T0)
    raw = keys.decode(store.get(keys.message_key("room", 1)))
    assert len(raw) == 7                                    # the row shape of before kinds
    assert history(core)["msgs"][0]["text"] == "old"
    assert edit(core, 1, 1, 101, "new", T0) is None


def test_edit_rules_author_window_and_a_live_plain_message(tmp_path):
    core, out, store = leased_logic(tmp_path, edit_window=60)
    send(core, 1, 100, "a")
    at(core, store, T0)
    assert code_of(edit, core, 2, 1, 200, "mine now", T0) == wire.Err.FORBIDDEN
    with pytest.raises(wire.ProtocolError) as late:
        edit(core, 1, 1, 101, "late", T0 + 61)
    assert late.value.code == wire.Err.TOO_LATE and late.value.extra.get("limit") == 60
    assert code_of(edit, core, 1, 99, 102, "x", T0) == wire.Err.NO_MESSAGE      # never stored
    assert code_of(edit, core, 4, 1, 103, "x", T0) == wire.Err.NOT_MEMBER
    edit(core, 1, 1, 104, "b", T0 + 1)
    at(core, store, T0 + 1)
    assert code_of(edit, core, 1, 2, 105, "x", T0 + 2) == wire.Err.NO_MESSAGE   # an event, not a message
    assert code_of(delete, core, 2, 1, 201, T0 + 2) == wire.Err.FORBIDDEN       # no roles in a room
    delete(core, 1, 1, 106, T0 + 2)
    at(core, store, T0 + 2)
    assert code_of(edit, core, 1, 1, 107, "again", T0 + 3) == wire.Err.NO_MESSAGE  # deleted
    assert code_of(delete, core, 1, 1, 108, T0 + 3) == wire.Err.NO_MESSAGE
    assert keys.decode(store.get(keys.message_key("room", 1)))[5] == ""         # nothing changed
    assert code_of(edit, core, 1, 1, 109, "x", T0 + 86400 * 2) == wire.Err.NO_MESSAGE  # expired


def test_a_retried_edit_or_delete_gets_the_original_ack_and_nothing_new(tmp_path):
    core, out, store = leased_logic(tmp_path)
    send(core, 1, 100, "a")
    at(core, store, T0)
    edit(core, 1, 1, 101, "b", T0)
    assert edit(core, 1, 1, 101, "b", T0) is None          # joins the one being stored
    at(core, store, T0)
    assert [a["id"] for a in acks(out)[-2:]] == [2, 2] and acks(out)[-1].get("retry")
    again = edit(core, 1, 1, 101, "b", T0 + 5000)          # past the window: the outcome stands
    assert again["id"] == 2 and again["retry"]
    assert code_of(edit, core, 1, 1, 101, "c", T0) == wire.Err.STALE      # another text: not a retry
    assert code_of(delete, core, 1, 1, 101, T0) == wire.Err.STALE         # another kind: not a retry
    delete(core, 1, 1, 102, T0)
    at(core, store, T0)
    assert delete(core, 1, 1, 102, T0)["id"] == 3           # deleted since: still its ack
    assert core.channels["room"].last_id == 3


def test_two_edits_and_a_delete_in_one_turn_build_on_each_other(tmp_path):
    core, out, store = leased_logic(tmp_path)
    send(core, 1, 100, "a")
    at(core, store, T0)
    edit(core, 1, 1, 101, "b", T0)
    edit(core, 1, 1, 102, "c", T0)
    at(core, store, T0)
    row = keys.decode(store.get(keys.message_key("room", 1)))
    assert row[5] == "c" and row[7]["edits"] == [2, 3]
    edit(core, 1, 1, 103, "d", T0)
    delete(core, 1, 1, 104, T0)
    edit(core, 1, 1, 105, "e", T0)                          # accepted before the delete was stored
    at(core, store, T0)
    texts = [keys.decode(v)[5] for _k, v in store.scan(keys.channel_prefix("room"))]
    assert texts == ["", "", "", "", "", ""]


def test_history_pages_backwards_with_edits_applied_and_tombstones(tmp_path):
    core, out, store = leased_logic(tmp_path)
    for i in range(10):
        send(core, 1, 100 + i, f"m{i}")
    at(core, store, T0)                                     # ids 1..10
    edit(core, 1, 3, 200, "m2 edited", T0 + 1)
    delete(core, 1, 4, 201, T0 + 1)
    at(core, store, T0 + 1)                                 # events 11, 12
    page = history(core, limit=4)
    assert [m["id"] for m in page["msgs"]] == [7, 8, 9, 10] and page["more"] and page["first"] == 1
    page = history(core, before=7, limit=4)
    assert [m["id"] for m in page["msgs"]] == [3, 4, 5, 6] and page["more"]
    assert page["msgs"][0]["text"] == "m2 edited" and page["msgs"][0]["edited"] == int((T0 + 1) * 1000)
    assert page["msgs"][1]["deleted"] and "text" not in page["msgs"][1]
    page = history(core, before=3, limit=4)
    assert [m["id"] for m in page["msgs"]] == [1, 2] and not page["more"]
    assert [m["id"] for m in history(core)["msgs"]] == list(range(1, 11))       # events not listed
    assert history(core, before=10**9, limit=1)["msgs"][0]["id"] == 10          # nothing past the newest
    assert code_of(history, core, uin=4) == wire.Err.NOT_MEMBER
    assert code_of(history, core, limit=101) == wire.Err.BAD_FIELD
    assert history(core, now=T0 + 86400 * 2)["msgs"] == []                      # expired, not yet swept


def test_history_deep_in_a_long_channel_and_after_a_restart(tmp_path):
    core, out, store = leased_logic(tmp_path, channel_queue=2000)
    for i in range(900):
        send(core, 1, 100 + i, f"m{i}")
    at(core, store, T0)
    page = history(core, before=21, limit=10)
    assert [m["text"] for m in page["msgs"]] == [f"m{i}" for i in range(10, 20)] and page["more"]
    store.close()
    core2, _out, _store = make_logic(tmp_path, channel_queue=2000)
    page = history(core2, before=101, limit=100)
    assert [m["id"] for m in page["msgs"]] == list(range(1, 101)) and not page["more"]


def test_edits_and_deletes_move_with_a_live_handoff_and_survive_a_restart(tmp_path):
    from nodes.storage.shards import channel_rows
    core, out, store = leased_logic(tmp_path)
    send(core, 1, 100, "a")
    send(core, 1, 101, "b")
    at(core, store, T0)
    edit(core, 1, 1, 102, "a2", T0)
    delete(core, 1, 2, 103, T0)
    at(core, store, T0)
    rows = [r for r in channel_rows(store, lambda name: name == "room") if r is not None]
    other = Store(str(tmp_path / "other"))
    for key, value in rows:
        other.put(key, value)
    other.flush()
    core2 = LogicCore("l1", one_logic_topology(tmp_path / "t2"), other, OnlineAll(), Out(), b"s" * 20)
    core2.load()
    page = history(core2)
    assert [(m["id"], m.get("text"), m.get("deleted")) for m in page["msgs"]] == [(1, "a2", None), (2, None, True)]
    assert code_of(edit, core2, 1, 2, 104, "x", T0) == wire.Err.NO_MESSAGE
    assert edit(core2, 1, 1, 102, "a2", T0)["id"] == 3       # the dedup index moved too: a retry


def watched(tmp_path, **limits):
    topo = one_logic_topology(tmp_path, **limits)
    out, store, w = Out(), Store(str(tmp_path / "l1")), Wiring()
    w.router.publish = lambda m, *_to: w.deltas.append(m) if m["t"] == "delta" else None
    core = LogicCore("l1", topo, store, w.replica, out, b"secret-secret-secret")
    core.load()
    w.replica.start()
    w.answer_snapshot()
    return core, out, w


def ephemeral_pushes(out, kind):
    return [(b, p) for b, p in out.published if p["t"] == kind]


class EphemeralOut(Out):
    def publish(self, broker, msg):
        for packed, to, uin, device in msg["items"]:
            self.published.append((broker, dict(wire.unpack(packed), to=to, sender=(uin, device))))


def test_typing_goes_to_the_other_online_members_and_is_never_stored(tmp_path):
    core, out, w = watched(tmp_path)
    core.fanout.out = out = EphemeralOut()
    w.router.set_online(1, 0, "b1")
    w.router.set_online(2, 0, "b2")
    w.deliver()
    reply = core.ephemeral.typing({"rid": 3, "uin": 1, "device": 0, "channel": "room"}, T0)
    assert reply == {"t": "typing", "rid": 3, "channel": "room"}
    assert out.published == [("b2", {"t": "typing", "channel": "room", "uin": 1, "to": [2], "sender": (1, 0)})]
    assert list(core.store.scan(keys.channel_prefix("room"))) == [] and core.channels["room"].last_id == 0
    with pytest.raises(wire.ProtocolError) as err:
        core.ephemeral.typing({"rid": 3, "uin": 9, "device": 0, "channel": "room"}, T0)
    assert err.value.code == wire.Err.NOT_MEMBER


def test_typing_and_watch_refuse_channels_over_the_presence_size(tmp_path):
    core, out, w = watched(tmp_path, presence_max_members=2)
    for fn in (core.ephemeral.typing, core.ephemeral.watch):
        with pytest.raises(wire.ProtocolError) as err:
            fn({"rid": 3, "uin": 1, "device": 0, "channel": "room"}, T0)
        assert err.value.code == wire.Err.TOO_MANY and err.value.extra.get("limit") == 2


def test_watch_answers_who_is_online_then_pushes_changes_until_its_ttl(tmp_path):
    core, out, w = watched(tmp_path, watch_ttl=300)
    core.fanout.out = out = EphemeralOut()
    w.router.set_online(1, 0, "b1")
    w.router.set_online(2, 0, "b2")
    w.deliver()
    reply = core.ephemeral.watch({"rid": 3, "uin": 1, "device": 0, "channel": "room"}, T0)
    assert reply["online"] == [1, 2]
    w.router.set_online(3, 0, "b2")
    w.router.set_online(3, 1, "b1")                     # a second device: no change of state
    w.router.set_offline(2, 0, "b2")
    w.deliver()
    assert [(b, p["uin"], p["online"], p["to"]) for b, p in ephemeral_pushes(out, "presence")] == [
        ("b1", 3, True, [1]), ("b1", 2, False, [1])]
    out.published.clear()
    core.ephemeral.expire(T0 + 200)
    core.ephemeral.watch({"rid": 4, "uin": 1, "device": 0, "channel": "room"}, T0 + 200)   # renewed
    core.ephemeral.expire(T0 + 400)
    w.router.set_online(2, 0, "b2")
    w.deliver()
    assert len(ephemeral_pushes(out, "presence")) == 1
    core.ephemeral.expire(T0 + 501)                     # 300 s after the renewal: gone
    w.router.set_offline(2, 0, "b2")
    w.deliver()
    assert len(ephemeral_pushes(out, "presence")) == 1 and core.ephemeral.watches == {}
    core.ephemeral.watch({"rid": 5, "uin": 1, "device": 0, "channel": "room"}, T0 + 600)
    assert core.ephemeral.unwatch({"rid": 6, "uin": 1, "device": 0, "channel": "room"}, T0)["t"] == "unwatch"
    w.router.set_online(2, 0, "b2")
    w.deliver()
    assert len(ephemeral_pushes(out, "presence")) == 1


def test_an_edit_over_the_rate_is_dedup_only(tmp_path):
    core, out, store = leased_logic(tmp_path)
    send(core, 1, 100, "a")
    at(core, store, T0)
    edit(core, 1, 1, 101, "b", T0)
    at(core, store, T0)
    over = {"rid": 9, "uin": 1, "device": 0, "channel": "room", "id": 1, "ctime": 101, "text": "b", "lookup": True}
    assert core.sends.edit(b"b", over, T0)["id"] == 2                   # a retry: answered
    with pytest.raises(wire.ProtocolError) as err:
        core.sends.edit(b"b", dict(over, ctime=102, text="c"), T0)
    assert err.value.code == wire.Err.RATE_LIMITED
    at(core, store, T0)
    assert core.channels["room"].last_id == 2


def test_edits_and_deletes_replicate_and_the_next_leader_shows_them(tmp_path):
    import time

    from test_replication_core import Cluster, room_rows, stored
    c = Cluster(tmp_path)
    leader = c.lead("l1", 5)
    stored(leader, 1, 10, rid=1)
    stored(leader, 1, 11, rid=2)
    c.pump()
    now = time.time()
    edit(leader.core, 1, 1, 12, "fixed", now)
    leader.turn_end()
    delete(leader.core, 1, 2, 13, now)
    leader.turn_end()
    c.pump()
    assert [a["id"] for a in leader.acks()] == [1, 2, 3, 4]
    assert room_rows(c.nodes["l2"]) == room_rows(leader) == room_rows(c.nodes["l3"])
    nxt = c.elect("l2", 6)
    page = history(nxt.core, uin=1, now=now)
    assert [(m["id"], m.get("text"), m.get("deleted")) for m in page["msgs"]] == [(1, "fixed", None),
                                                                                (2, None, True)]
    assert edit(nxt.core, 1, 1, 12, "fixed", now)["id"] == 3           # a retry at the new leader
