// The conversation model with no mesh (src/conversation.js) and how the client routes the
// conversation pushes: timelines with edits and deletes, unread counts that follow messages and
// cursors, typing on a fake clock, receipts.  Run: node --test clients/js/test/conversation.test.js
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  ChannelList, ImeshClient, Receipts, Timeline, Typing, channelLabel, dmPeer, requestOf, timeLabel, typingLine,
} from "../src/client.js";

const msg = (id, uin, text, extra = {}) => ({ t: "msg", channel: "dm:1:2", id, uin, device: 0, ctime: id, stime: 1000 + id, text, ...extra });

test("a DM is named after the other user, a group by its title, a room by its name", () => {
  assert.equal(dmPeer("dm:3:12", 3), 12);
  assert.equal(dmPeer("dm:3:12", 12), 3);
  assert.equal(dmPeer("lobby", 3), null);
  assert.equal(channelLabel({ channel: "dm:3:12", kind: "dm" }, 12), "user 3");
  assert.equal(channelLabel({ channel: "grp:3:99", kind: "group", title: "Trip" }, 12), "Trip");
  assert.equal(channelLabel({ channel: "lobby", kind: "room" }, 12), "lobby");
  assert.equal(channelLabel({ channel: "grp:3:99", kind: "group" }, 12), "group by user 3", "a group without a title");
});

test("times show the clock today and the date before", () => {
  const now = new Date(2026, 11, 6, 15, 0).getTime();
  assert.equal(timeLabel(new Date(2026, 11, 6, 9, 5).getTime(), now), "09:05");
  assert.equal(timeLabel(new Date(2026, 11, 3, 14, 3).getTime(), now), "3 Dec 14:03");
  assert.equal(timeLabel(0, now), "");
});

test("a timeline keeps each message once and applies edits and deletes to it", () => {
  const tl = new Timeline();
  tl.add(msg(5, 1, "five"));
  tl.addPage({ msgs: [msg(3, 2, "three"), msg(4, 1, "four"), msg(5, 1, "five")], more: true, first: 1 });
  assert.deepEqual(tl.list().map((m) => m.id), [3, 4, 5]);
  assert.equal(tl.oldest, 3);
  assert.equal(tl.more, true);
  tl.add(msg(6, 1, "fixed", { kind: "edit", ref: 4, stime: 7777 }));
  tl.add(msg(7, 2, "", { kind: "delete", ref: 3 }));
  assert.equal(tl.msgs.get(4).text, "fixed");
  assert.equal(tl.msgs.get(4).edited, 7777);
  assert.equal(tl.msgs.get(3).deleted, true);
  assert.equal(tl.msgs.get(3).text, undefined);
  assert.deepEqual(tl.list().map((m) => m.id), [3, 4, 5], "events are not listed as messages");
  // a history copy of a message deleted live stays a tombstone
  tl.add(msg(3, 2, "three"));
  assert.equal(tl.msgs.get(3).deleted, true);
  assert.equal(tl.add(msg(8, 2, "x", { kind: "edit", ref: 1 })), null, "an event on an unloaded id changes nothing");
  tl.addPage({ msgs: [], more: false, first: 3 });
  assert.equal(tl.more, false);
  assert.equal(tl.unreadAfter(3, 1), 0);
  assert.equal(tl.unreadAfter(2, 2), 2);
});

test("unread counts follow messages, my own sends and read cursors from any device", () => {
  const list = new ChannelList(1);
  list.load([{ channel: "lobby", kind: "room", role: "member", members: 5, last: 20, read: 10, unread: 10, active: 500 },
             { channel: "dm:1:2", kind: "dm", role: "member", members: 2, last: 4, read: 2, unread: 2, active: 400 }]);
  assert.deepEqual(list.sorted().map((i) => i.channel), ["lobby", "dm:1:2"]);
  const tl = new Timeline();
  for (const m of [msg(3, 2, "a"), msg(4, 2, "b"), msg(5, 2, "c")]) { tl.add(m); list.message(m); }
  assert.equal(list.get("dm:1:2").unread, 3);
  assert.equal(list.get("dm:1:2").preview.text, "c");
  assert.deepEqual(list.sorted().map((i) => i.channel), ["dm:1:2", "lobby"], "the newest activity first");
  list.message(msg(5, 2, "c"));
  assert.equal(list.get("dm:1:2").unread, 3, "a message seen twice counts once");
  tl.addPage({ msgs: [msg(1, 1, "x"), msg(2, 2, "y")], more: false });
  assert.equal(list.read("dm:1:2", 3, tl), false);
  assert.equal(list.get("dm:1:2").unread, 2);
  assert.equal(list.read("dm:1:2", 2, tl), false, "a cursor never moves back");
  assert.equal(list.get("dm:1:2").read, 3);
  list.message(msg(6, 1, "mine"));
  assert.equal(list.get("dm:1:2").unread, 0, "sending moves my own cursor");
  assert.equal(list.get("dm:1:2").read, 6);
  list.message(msg(7, 2, "late"));
  list.message(msg(8, 2, "later"));
  const gone = tl.add(msg(7, 2, "late")) && tl.msgs.get(7);
  list.message(msg(9, 2, "", { kind: "delete", ref: 7 }), gone);
  assert.equal(list.get("dm:1:2").unread, 1, "a deleted unread message stops counting");
  assert.equal(list.read("lobby", 15), true, "without the messages only the server knows the count");
  assert.equal(list.read("dm:1:2", 99), false);
  assert.equal(list.get("dm:1:2").unread, 0);
  list.message({ ...msg(1, 3, "hi"), channel: "grp:3:77" });
  assert.equal(list.get("grp:3:77").kind, "group", "a channel learnt from a push");
  assert.equal(list.totalUnread(), 11);
});

test("a typing notice shows for five seconds, or until that user's message", () => {
  const t = new Typing(5000);
  t.notice("c", 7, 1000);
  t.notice("c", 3, 3000);
  assert.deepEqual(t.who("c", 2000), [3, 7]);
  assert.equal(typingLine(t.who("c", 2000)), "users 3 and 7 are typing…");
  assert.deepEqual(t.who("c", 6500), [3]);
  t.stopped("c", 3);
  assert.deepEqual(t.who("c", 6500), []);
  assert.equal(typingLine([]), "");
  assert.equal(typingLine([1, 2, 3]), "3 people are typing…");
});

test("seen by: the members whose cursor is at or past a message", () => {
  const r = new Receipts();
  r.receipt("g", 2, 10);
  r.receipt("g", 2, 4);                      // older receipts do not move it back
  r.replied({ channel: "g", id: 7, read_by: [3, 1] });
  assert.deepEqual(r.seenBy("g", 7, 1), [2, 3]);
  assert.deepEqual(r.seenBy("g", 9, 1), [2]);
  assert.deepEqual(r.seenBy("other", 1, 1), []);
});

test("edits and deletes in the mailbox go out as their requests, with the entry's ctime", () => {
  assert.deepEqual(requestOf({ channel: "c", ctime: 5, text: "t", op: "edit", ref: 3 }),
                   { t: "edit", channel: "c", id: 3, ctime: 5, text: "t" });
  assert.deepEqual(requestOf({ channel: "c", ctime: 5, text: "", op: "delete", ref: 3 }),
                   { t: "delete", channel: "c", id: 3, ctime: 5 });
  assert.deepEqual(requestOf({ channel: "c", ctime: 5, text: "t", frag: [1, 0, 2] }),
                   { t: "send", channel: "c", ctime: 5, text: "t", frag: [1, 0, 2] });
});

test("the client hands pushes and edit/delete events to their own events, replies to their requests", async () => {
  const c = new ImeshClient({ endpoints: ["ws://nowhere"], token: "x" });
  const got = [];
  for (const ev of ["message", "edit", "delete", "read", "receipt", "typing", "presence"]) c.on(ev, (v) => got.push([ev, v.id ?? v.uin]));
  c._dispatch({ t: "read", channel: "c", uin: 1, id: 9 });
  c._dispatch({ t: "receipt", channel: "c", uin: 2, id: 9 });
  c._dispatch({ t: "typing", channel: "c", uin: 3 });
  c._dispatch({ t: "presence", channel: "c", uin: 4, online: true });
  c._dispatch({ ...msg(1, 2, "hi"), channel: "c" });
  c._dispatch({ ...msg(2, 2, "fix", { kind: "edit", ref: 1 }), channel: "c" });
  c._dispatch({ ...msg(3, 2, "", { kind: "delete", ref: 1 }), channel: "c" });
  const reply = new Promise((resolve) => c._pending.set(7, { resolve, reject: () => {}, timer: null }));
  c._dispatch({ t: "read", channel: "c", id: 9, rid: 7 });
  assert.deepEqual(got, [["read", 9], ["receipt", 9], ["typing", 3], ["presence", 4], ["message", 1], ["edit", 2], ["delete", 3]]);
  assert.equal((await reply).id, 9, "a read reply goes to its request, not to listeners");
  assert.equal(c.windows.last.get("c"), 3, "edit and delete events move the window like messages");
});
