// The conversation layer of the JS client against a real mesh (two brokers): history, edits and
// deletes as events, typing and presence pushes, DMs and groups, channel lists with unread counts
// and read cursors that follow on a user's other device.
// Run: node --experimental-websocket --test clients/js/test/conversation_mesh.test.js
import assert from "node:assert/strict";
import { test } from "node:test";

import { ChannelList, ClientError, ImeshClient, Timeline } from "../src/client.js";
import { until, useMesh } from "../testing/mesh.js";

const shared = useMesh();
const clients = shared.clients;

async function client(uin, broker, device = 0) {
  const c = new ImeshClient({ endpoints: [shared.mesh.ws[broker]], token: shared.mesh.tokens[uin], device, timeoutMs: 3000 });
  c.got = { message: [], edit: [], delete: [], read: [], receipt: [], typing: [], presence: [] };
  for (const [ev, into] of Object.entries(c.got)) c.on(ev, (v) => into.push(v));
  clients.push(c);
  await c.start();
  return c;
}

test("history pages back with edits and deletes applied; the events reach the other user once", async () => {
  const a = await client(1, "b1");
  const b = await client(2, "b2");
  b.watch("lobby", (await b.sync("lobby", 0)).last);
  const ids = [];
  for (let i = 0; i < 7; i++) ids.push(await a.send("lobby", `h${i}`));
  const editId = await a.edit("lobby", ids[2], "h2 fixed");
  const delId = await a.delete("lobby", ids[4]);
  assert.ok(editId > ids[6] && delId > editId, "edits and deletes get their own ids in the channel's order");
  await until(() => b.got.delete.some((e) => e.id === delId), 10000, "the delete event");
  assert.deepEqual(b.got.edit.map((e) => [e.ref, e.text]), [[ids[2], "h2 fixed"]]);
  assert.equal(b.got.message.filter((m) => m.id === editId || m.id === delId).length, 0, "events are not messages");
  const tl = new Timeline();
  for (const m of b.got.message.concat(b.got.edit, b.got.delete).sort((x, y) => x.id - y.id)) tl.add(m);
  assert.equal(tl.msgs.get(ids[2]).text, "h2 fixed");
  assert.equal(tl.msgs.get(ids[4]).deleted, true);

  const first = await b.history("lobby", { limit: 3 });
  assert.deepEqual(first.msgs.map((m) => m.id), [ids[4], ids[5], ids[6]], "the newest page, oldest first, no events");
  assert.equal(first.msgs[0].deleted, true);
  assert.equal(first.msgs[0].text, undefined);
  const older = await b.history("lobby", { before: first.msgs[0].id, limit: 3 });
  assert.deepEqual(older.msgs.map((m) => m.text), ["h1", "h2 fixed", "h3"]);
  assert.ok(older.msgs[1].edited > 0);
  assert.equal(older.more, true);
});

test("only the author edits; an edit of a missing message is refused, and nothing is stored", async () => {
  const a = await client(3, "b1");
  const b = await client(4, "b2");
  const id = await a.send("lobby", "mine");
  await assert.rejects(b.edit("lobby", id, "yours?"), (err) => err instanceof ClientError && err.code === "FORBIDDEN");
  await assert.rejects(a.edit("lobby", 10 ** 9, "none"), (err) => err.code === "NO_MESSAGE");
  assert.deepEqual(a.mailbox.pending(), [], "a refused edit leaves the mailbox");
  const page = await a.history("lobby", { limit: 1 });
  assert.equal(page.msgs[0].text, "mine");
});

test("typing reaches the other members' sessions and is never stored", async () => {
  const a = await client(5, "b1");
  const b = await client(6, "b2");
  b.watch("lobby", (await b.sync("lobby", 0)).last);
  const before = (await a.sync("lobby", 0)).last;
  await a.typing("lobby");
  await until(() => b.got.typing.some((t) => t.uin === 5 && t.channel === "lobby"), 10000, "the typing push");
  assert.equal((await a.sync("lobby", 0)).last, before, "no id for a typing notice");
  assert.equal(a.got.typing.length, 0, "not to myself");
});

test("presence of a watched channel: who is online now, then changes", async () => {
  const a = await client(7, "b1");
  const online = await a.watchPresence("lobby");
  assert.ok(online.includes(7));
  const b = await client(8, "b2");
  await until(() => a.got.presence.some((p) => p.uin === 8 && p.online), 10000, "8 online");
  await b.stop();
  await until(() => a.got.presence.some((p) => p.uin === 8 && !p.online), 10000, "8 offline");
  await a.unwatchPresence("lobby");
});

test("a DM: the same channel for both users; unread and read cursors follow on my other device", async () => {
  const a = await client(9, "b1");
  const a2 = await client(9, "b2", 1);
  const b = await client(10, "b2");
  const dm = await a.createDm(10);
  assert.equal(dm.channel, "dm:9:10");
  assert.equal((await b.createDm(9)).channel, dm.channel);
  assert.equal((await b.createDm(9)).created, false);
  const ids = [];
  for (const text of ["one", "two", "three"]) ids.push(await b.send(dm.channel, text));
  const list = new ChannelList(9);
  list.load((await a2.allChannels()).items);
  const item = list.get(dm.channel);
  assert.equal(item.kind, "dm");
  assert.equal(item.unread, 3);
  assert.equal(item.preview.text, "three");
  assert.equal(await a.read(dm.channel, ids[1]), ids[1]);
  await until(() => a2.got.read.some((r) => r.channel === dm.channel && r.id === ids[1]), 10000, "the read push");
  await until(() => b.got.receipt.some((r) => r.uin === 9 && r.id === ids[1]), 10000, "the receipt");
  list.read(dm.channel, ids[1]);
  assert.deepEqual(await b.receipts(dm.channel, ids[1]), [9]);
  assert.equal((await a2.channels()).items.find((i) => i.channel === dm.channel).unread, 1);
  assert.equal(await a.read(dm.channel, ids[0]), ids[1], "never backwards");
});

test("a group: owner, invite, roles, and a member who is not admin cannot remove", async () => {
  const a = await client(11, "b1");
  const b = await client(12, "b2");
  const g = await a.createGroup({ name: "team", members: [12] });
  assert.equal(g.kind, "group");
  assert.equal(g.members, 2);
  const item = (await a.allChannels()).items.find((i) => i.channel === g.channel);
  assert.equal(item.role, "owner");
  assert.deepEqual((await a.invite(g.channel, [13, 12])).uins, [13]);
  await assert.rejects(b.remove(g.channel, [13]), (err) => err.code === "FORBIDDEN");
  await a.setRole(g.channel, 12, "admin");
  assert.deepEqual((await b.remove(g.channel, [13])).uins, [13]);
  await b.leave(g.channel);
  await assert.rejects(b.send(g.channel, "still here?"), (err) => err.code === "NOT_MEMBER");
});

// The client's `name` is the group's title: the broker forwards it as `title` to the logic node.
test("a group's title is in the create reply and in every member's channel list", async () => {
  const a = await client(14, "b1");
  const b = await client(15, "b2");
  const g = await a.createGroup({ name: "Weekend trip", members: [15] });
  assert.equal(g.title, "Weekend trip");
  const item = (await b.allChannels()).items.find((i) => i.channel === g.channel);
  assert.equal(item.title, "Weekend trip");
});
