"""The client's conversation logic without a mesh: edits/deletes applied to held messages,
event buffers, watch renewal and typing throttle on a fake clock, the mailbox's event
entries (and an old mailbox file gaining their columns), what bin/chat prints."""
from __future__ import annotations

import asyncio
import sqlite3
import time

import pytest

from nodes.cli.chatroom import ChatState, event_line
from nodes.cli.chatsession import message_json, message_line
from nodes.cli.chatview import Seen, Typing, change_line, channel_line
from nodes.client.aclient import AsyncClient
from nodes.client.edits import Held, event_of
from nodes.client.ephemeral import TypingThrottle, Watches
from nodes.client.events import EventQueues
from nodes.client.mailbox import Mailbox


def msg(msg_id, text="hi", channel="dm:1:2", uin=1, **extra):
    return dict(t="msg", channel=channel, id=msg_id, uin=uin, device=0, ctime=msg_id, stime=1000 * msg_id, text=text,
                **extra)


def test_edit_then_delete_applied_to_a_held_message_and_never_undone():
    held = Held()
    held.hold(msg(5, "helo"))
    edited = held.apply(msg(6, "hello", kind="edit", ref=5))
    assert edited["text"] == "hello" and edited["edited"] == 6000 and edited["id"] == 5
    gone = held.apply(msg(7, "", kind="delete", ref=5))
    assert gone["deleted"] is True and gone["text"] == "" and "edited" not in gone
    late = held.apply(msg(8, "resurrected", kind="edit", ref=5))       # an edit after the delete
    assert late["deleted"] is True and late["text"] == ""
    assert held.apply(msg(9, "x", kind="edit", ref=4)) is None        # never held
    copy = held.get("dm:1:2", 5)
    copy["text"] = "changed by the app"                                # the app's copy is its own
    assert held.get("dm:1:2", 5)["text"] == ""


def test_held_keeps_the_newest_per_channel_and_events_name_their_message():
    held = Held(keep=3)
    for i in range(1, 6):
        held.hold(msg(i))
    assert held.get("dm:1:2", 2) is None and held.get("dm:1:2", 3) is not None
    event = event_of(msg(6, "new", kind="edit", ref=4, uin=2), held.apply(msg(6, "new", kind="edit", ref=4)))
    assert event == {"t": "edit", "channel": "dm:1:2", "id": 6, "ref": 4, "uin": 2, "device": 0,
                     "stime": 6000, "text": "new", "msg": held.get("dm:1:2", 4)}
    assert event_of(msg(7, "", kind="delete", ref=1), None)["msg"] is None


def test_event_queues_per_kind_bounded_and_in_arrival_order():
    async def run():
        seen = []
        q = EventQueues(cap=2, on_event=seen.append)
        for i in range(3):
            q.put({"t": "typing", "channel": "c", "uin": i})
        q.put({"t": "read", "channel": "c", "uin": 1, "id": 9})
        assert q.dropped["typing"] == 1 and len(seen) == 4
        assert (await q.get(["read"]))["id"] == 9                      # other kinds wait their turn
        got = [await q.get(["typing", "read"], timeout=0.1) for _ in range(3)]
        assert [e and e["uin"] for e in got] == [1, 2, None]          # the oldest typing was dropped
        waiter = asyncio.ensure_future(q.get(["presence"], timeout=5))
        await asyncio.sleep(0)
        q.put({"t": "presence", "channel": "c", "uin": 3, "online": True})
        assert (await waiter)["uin"] == 3
        with pytest.raises(ValueError, match="unknown event kind"):
            await q.get(["msg"])
    asyncio.run(run())


def test_watch_renewed_before_the_ttl_and_at_once_after_a_relogin():
    w = Watches(ttl=300.0)
    assert w.wait(now=0.0) == 60.0 and w.due(0.0) == []               # nothing watched: idle
    assert w.started("g", [2, 3], now=0.0) == []                       # a first watch reports no change
    assert w.wait(now=10.0) == 140.0 and w.due(149.0) == []
    assert w.due(150.0) == ["g"]                                        # half the TTL: renew
    w.pushed("g", 4, True)
    w.pushed("other", 9, True)                                          # not watched: not kept
    assert w.online == {"g": {2, 3, 4}}
    changes = w.started("g", [3, 4, 5], now=150.0)                      # the renewal's list
    assert changes == [{"t": "presence", "channel": "g", "uin": 5, "online": True},
                       {"t": "presence", "channel": "g", "uin": 2, "online": False}]
    assert w.due(200.0) == []
    w.renew_all()                                                       # a re-login
    assert w.due(200.0) == ["g"] and w.wait(200.0) == 0.0
    w.stopped("g")
    assert w.watched() == [] and w.due(1e9) == []


def test_typing_throttle_one_notice_per_channel_per_interval():
    t = TypingThrottle(every=2.0)
    assert t.ready("a", 0.0) and not t.ready("a", 1.9) and t.ready("b", 1.9)
    assert t.ready("a", 2.0) and not t.ready("a", 3.0)


def test_mailbox_keeps_edit_and_delete_entries_and_upgrades_an_old_file(tmp_path):
    path = str(tmp_path / "old.sqlite")
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, uin INTEGER NOT NULL, "
               "device INTEGER NOT NULL, channel TEXT NOT NULL, text TEXT NOT NULL, ctimes TEXT NOT NULL, "
               "grp INTEGER, created REAL NOT NULL, tries INTEGER NOT NULL DEFAULT 0, error TEXT)")
    db.execute("INSERT INTO outbox (uin, device, channel, text, ctimes, created) VALUES (1, 0, 'c', 'old', '[5]', 1.0)")
    db.commit()
    db.close()
    box = Mailbox(path)
    old, = box.pending(1, 0)
    assert (old.text, old.kind, old.ref, old.ctime) == ("old", None, None, 5)
    box.add(1, 0, "c", "fixed", [7], kind="edit", ref=3)
    box.add(1, 0, "c", "", [8], kind="delete", ref=3)
    entries = box.pending(1, 0)
    assert [(e.kind, e.ref, e.text, e.ctime) for e in entries] == [(None, None, "old", 5), ("edit", 3, "fixed", 7),
                                                                     ("delete", 3, "", 8)]
    assert box.newest_ctime(1, 0) == 8
    box.close()
    assert Mailbox(path).pending(1, 0)[1].kind == "edit"               # reopened: still there, no second ALTER


def test_client_routes_pushes_to_events_and_applies_edits_to_delivered_messages():
    async def run():
        c = AsyncClient("tcp://127.0.0.1:1", "token")
        c._on_push(msg(1, "hi", uin=2))
        c._on_push(msg(2, "hi!", uin=2, kind="edit", ref=1))
        c._on_push({"t": "receipt", "channel": "dm:1:2", "uin": 2, "id": 1})
        c._on_push({"t": "typing", "channel": "dm:1:2", "uin": 2})
        assert (await c.recv(timeout=0.1))["text"] == "hi"
        assert await c.recv(timeout=0.05) is None                     # the edit is not a message
        edit = await c.next_event("edit", timeout=0.1)
        assert edit["msg"]["text"] == "hi!" and edit["ref"] == 1 and edit["id"] == 2
        assert [(await c.next_event(timeout=0.1))["t"] for _ in range(2)] == ["receipt", "typing"]
        assert c.windows.last["dm:1:2"] == 2                          # the event's id counts in the window
        with pytest.raises(ValueError):
            c._on_push({"t": "read", "channel": "dm:1:2", "uin": 2})   # a read push without an id
        await c.close(logout=False)
    asyncio.run(run())


def test_chat_shows_typing_seen_by_and_changes():
    t = Typing(shown=5.0)
    assert t.typing("g", 2, now=0.0) == "  2 is typing…"
    assert t.typing("g", 3, now=1.0) == "  2, 3 are typing…"
    assert t.line("g", now=5.5) == "  3 is typing…"
    t.stopped("g", 3)
    assert t.line("g", now=5.5) == ""
    s = Seen()
    s.sent("g", 10)
    s.sent("g", 12)
    assert s.receipt("g", 2, 9) == ""                                  # covers none of mine
    assert s.receipt("g", 2, 11) == "  #10 seen by 2"
    assert s.receipt("g", 3, 12) == "  #12 seen by 3"
    assert s.receipt("g", 2, 12) == "  #12 seen by 2, 3"
    assert change_line({"t": "edit", "channel": "g", "ref": 10, "uin": 1, "text": "x"}) == "[g #10] edited by 1: x"
    assert change_line({"t": "delete", "channel": "g", "ref": 10, "uin": 1}) == "[g #10] deleted by 1"
    line = channel_line({"channel": "grp:1:5", "kind": "group", "title": "team", "role": "owner", "members": 3,
                         "unread": 100, "unread_more": True, "preview": {"id": 9, "uin": 2, "text": "yo"}})
    assert line == '  grp:1:5 "team" [group, owner, 3 members] 100+ unread -- #9 2: yo'
    assert "read" in channel_line({"channel": "lobby", "unread": 0})
    tomb = msg(4, "", deleted=True)
    assert message_line(tomb).endswith(": (deleted)") and '"deleted": true' in message_json(tomb)
    assert message_line(msg(4, "x", edited=1)).endswith(": x (edited)")


def test_chat_event_lines_only_for_the_channel_in_view():
    class Args:
        channel = "g"
    state = ChatState(Args(), client=None)
    assert event_line(state, {"t": "typing", "channel": "g", "uin": 2}) == "  2 is typing…"
    assert event_line(state, {"t": "typing", "channel": "other", "uin": 2}) == ""
    assert event_line(state, {"t": "presence", "channel": "g", "uin": 2, "online": False}) == "  2 is offline"
    assert event_line(state, {"t": "read", "channel": "g", "uin": 1, "id": 3}) == ""
    state.hidden.add("old")
    assert event_line(state, {"t": "delete", "channel": "old", "ref": 1, "uin": 2}) == ""


def test_a_relogin_makes_every_watch_due_and_wakes_the_renewer():
    async def run():
        c = AsyncClient("tcp://127.0.0.1:1", "token")
        c.watches.started("g", [1, 2], now=time.monotonic())
        login = {"uin": 1, "hb": 10, "limits": {"watch_ttl": 60.0, "typing_rate": 0.25}}
        c.link.generation = 1
        c._logged_in(login)                                    # the first login: nothing to renew
        assert c.watches.due(time.monotonic()) == [] and not c._rewatch_now.is_set()
        assert c.watches.ttl == 60.0 and c.typing_throttle.every == 4.0
        c.link.generation = 2
        c._logged_in(login)                                    # a re-login (maybe another broker)
        assert c.watches.due(time.monotonic()) == ["g"] and c._rewatch_now.is_set()
        await c.close(logout=False)
    asyncio.run(run())
