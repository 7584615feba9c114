// The JS client against a real mesh (WebSocket and HTTP fallback on the brokers).
// Run: node --experimental-websocket --test clients/js/test/   (pytest runs it: tests/test_web.py)
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { test } from "node:test";

import { FileMailbox, ImeshClient } from "../src/client.js";
import { until, useMesh } from "../testing/mesh.js";

const shared = useMesh();
const clients = shared.clients;

function client(uin, brokers, opts = {}) {
  const c = new ImeshClient({ endpoints: brokers.map((b) => shared.mesh.ws[b]), token: shared.mesh.tokens[uin],
                              device: opts.device ?? 0, timeoutMs: 3000, ...opts });
  c.inbox = [];
  c.on("message", (m) => c.inbox.push(m));
  clients.push(c);
  return c;
}

test("two users on two brokers chat over WebSocket; a third over the HTTP fallback", async () => {
  const a = client(1, ["b1"]);
  const b = client(2, ["b2"]);
  const h = client(3, ["b2"], { transport: "http" });
  const login = await a.start();
  assert.equal(login.uin, 1);
  await b.start();
  await h.start();
  for (const c of [a, b, h]) c.watch("lobby", (await c.sync("lobby", 0)).last);
  const id = await a.send("lobby", "hello from a");
  await until(() => b.inbox.some((m) => m.id === id) && h.inbox.some((m) => m.id === id), 10000, "delivery");
  assert.equal(b.inbox.find((m) => m.id === id).text, "hello from a");
  const id2 = await h.send("lobby", "hello over http");
  await until(() => a.inbox.some((m) => m.id === id2), 10000, "delivery of the http send");
  assert.ok(id2 > id);
});

test("transport auto: where WebSockets are blocked the client falls back to HTTP long polling", async () => {
  class BlockedWebSocket {                                          // what a blocking proxy looks like
    constructor() { setTimeout(() => this.onclose?.({ code: 1006, reason: "" }), 10); }
    close() {}
  }
  const c = client(14, ["b1", "b2"], { transport: "auto", WebSocket: BlockedWebSocket });
  const d = client(15, ["b2"]);
  await c.start();
  await d.start();
  assert.equal(c.transport, "http");
  c.watch("lobby", (await c.sync("lobby", 0)).last);
  const id = await d.send("lobby", "to the long poller");
  await until(() => c.inbox.some((m) => m.id === id), 10000, "a push over HTTP");
  assert.ok((await c.send("lobby", "from the long poller")) > id);
});

test("a retried send (same ctime) is acked with the original id and delivered once", async () => {
  const a = client(4, ["b1"]);
  const b = client(5, ["b2"]);
  await a.start();
  await b.start();
  b.watch("lobby", (await b.sync("lobby", 0)).last);
  const ctime = Date.now() * 1000;
  const first = await a.request({ t: "send", channel: "lobby", ctime, text: "once" });
  const again = await a.request({ t: "send", channel: "lobby", ctime, text: "once" });
  assert.equal(again.id, first.id);
  const marker = await a.send("lobby", "after");
  await until(() => b.inbox.some((m) => m.id === marker), 10000, "marker");
  assert.equal(b.inbox.filter((m) => m.text === "once").length, 1);
});

test("lost pushes are fetched by gap sync: every message once, in order", async () => {
  const a = client(6, ["b1"]);
  const b = client(7, ["b2"]);
  await a.start();
  await b.start();
  b.watch("lobby", (await b.sync("lobby", 0)).last);
  const texts = Array.from({ length: 12 }, (_, i) => `gap ${i}`);
  b.dropPush = (m) => m.uin === 6 && /^gap ([3-8])$/.test(m.text);     // the network loses six
  const ids = [];
  for (const t of texts) ids.push(await a.send("lobby", t));
  await until(() => ids.every((id) => b.inbox.some((m) => m.id === id)), 10000, "all twelve");
  const got = b.inbox.filter((m) => m.uin === 6).map((m) => m.text);
  assert.deepEqual(got, texts);
  assert.ok(b.syncs >= 2, "a sync filled the gap");
});

test("a long text goes as fragments and arrives whole", async () => {
  const a = client(8, ["b1"]);
  const b = client(9, ["b1"]);
  await a.start();
  await b.start();
  b.watch("lobby", (await b.sync("lobby", 0)).last);
  const text = "héllo wörld ✓ ".repeat(300);                     // > 1440 bytes of UTF-8
  const id = await a.send("lobby", text);
  await until(() => b.inbox.some((m) => m.id === id), 10000, "the whole text");
  assert.equal(b.inbox.find((m) => m.id === id).text, text);
});

test("a send left in a file mailbox is sent after a restart, once", async () => {
  const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), "imesh-mbox-")), "mailbox.json");
  try {
    const ctime = Date.now() * 1000;
    const box = new FileMailbox(fs, file);
    box.put({ key: "k1", channel: "lobby", text: "from the mailbox", ctime });
    const sent = [];
    const a = client(10, ["b1"], { mailbox: new FileMailbox(fs, file) });
    a.on("sent", (e) => sent.push(e));
    await a.start();
    await until(() => sent.length === 1, 10000, "the mailbox entry acked");
    assert.deepEqual(new FileMailbox(fs, file).pending(), []);
    const again = await a.request({ t: "send", channel: "lobby", ctime, text: "from the mailbox" });
    assert.equal(again.id, sent[0].id);
  } finally {
    fs.rmSync(path.dirname(file), { recursive: true, force: true });
  }
});

test("bad frames get clear errors and the connection stays usable", async () => {
  const ws = new WebSocket(`${shared.mesh.ws.b1}/ws`);
  ws.binaryType = "arraybuffer";
  const frames = [];
  ws.onmessage = (ev) => frames.push(ev.data);
  await new Promise((resolve, reject) => { ws.onopen = resolve; ws.onerror = reject; });
  ws.send(new Uint8Array([0xc1]));                                 // never valid msgpack
  await until(() => frames.length === 1, 5000, "an error frame");
  const { decodeFrame } = await import("../src/codec.js");
  assert.equal(decodeFrame(new Uint8Array(frames[0]))[0].code, "BAD_FRAME");
  ws.close();
});

test("a login of the same user and device elsewhere stops the older client (kicked: replaced)", async () => {
  const old = client(13, ["b1"], { device: 5 });
  const kicks = [];
  old.on("kicked", (m) => kicks.push(m));
  await old.start();
  const newer = client(13, ["b2"], { device: 5 });
  await newer.start();
  await until(() => old.state === "stopped", 10000, "the older client to stop");
  assert.equal(kicks[0].reason ?? "replaced", "replaced");
  const id = await newer.send("lobby", "the newer one works");
  assert.ok(id > 0);
  assert.equal(old.state, "stopped");                              // and it does not fight back
  // a send on the kicked client fails at once with the reason (not a ~9 s wait for "online")
  const t0 = Date.now();
  await assert.rejects(old.send("lobby", "after the kick"),
                       (err) => err.code === "KICKED" && /^KICKED: replaced/.test(err.message));
  assert.ok(Date.now() - t0 < 500, `send took ${Date.now() - t0} ms to fail`);
  assert.deepEqual(old.mailbox.pending(), []);                     // refused before the mailbox
  await assert.rejects(old.request({ t: "hb" }), (err) => err.code === "KICKED");
});

test("a send during an owner outage stays in the mailbox and goes out once the owner is back", async () => {
  const a = client(16, ["b1"], { retries: 1 });
  const b = client(17, ["b2"]);
  await a.start();
  await b.start();
  b.watch("lobby", (await b.sync("lobby", 0)).last);
  const owner = shared.mesh.pids[shared.mesh.owners.lobby];
  const reconnects = a.reconnects;
  process.kill(owner, "SIGSTOP");
  try {
    await assert.rejects(a.send("lobby", "while the owner sleeps"), (err) => err.code === "BUSY");
    assert.equal(a.mailbox.pending().length, 1);                     // kept, not lost
  } finally {
    process.kill(owner, "SIGCONT");
  }
  // no new login: the next heartbeat acks resume the mailbox (same ctime)
  await until(() => b.inbox.some((m) => m.text === "while the owner sleeps"), 20000, "the mailbox send");
  await until(() => a.mailbox.pending().length === 0, 10000, "the mailbox emptied");
  assert.equal(b.inbox.filter((m) => m.text === "while the owner sleeps").length, 1);
  assert.equal(a.reconnects, reconnects);
});

test("the README's example (examples/chat.mjs, included verbatim) chats with a real mesh", async () => {
  const root = path.join(path.dirname(new URL(import.meta.url).pathname), "..");
  const example = fs.readFileSync(path.join(root, "examples", "chat.mjs"), "utf8");
  const readme = fs.readFileSync(path.join(root, "README.md"), "utf8");
  assert.ok(readme.includes("<!-- examples/chat.mjs -->\n```js\n" + example + "```\n"),
            "README.md must carry examples/chat.mjs verbatim after <!-- examples/chat.mjs -->");
  const other = client(19, ["b2"]);
  await other.start();
  other.watch("lobby", (await other.sync("lobby", 0)).last);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "imesh-example-"));
  const run = spawn(process.execPath, [path.join(root, "examples", "chat.mjs")], {      // no flag: "auto"
    cwd: dir, env: { ...process.env, IMESH_ENDPOINTS: `${shared.mesh.ws.b1},${shared.mesh.ws.b2}`, IMESH_TOKEN: shared.mesh.tokens[18] },
  });
  let out = "";
  run.stdout.on("data", (d) => { out += d; });
  run.stderr.on("data", (d) => { out += d; });
  const exited = new Promise((resolve) => run.on("exit", resolve));
  try {
    await until(() => /sent #\d+/.test(out), 15000, `the example's send (output: ${out})`);
    assert.match(out, /logged in as 18 over (ws|http)/);
    await until(() => other.inbox.some((m) => m.uin === 18 && m.text === "hello from node"), 10000, "its hello");
    const bye = await other.send("lobby", "bye");
    assert.equal(await exited, 0, out);
    assert.ok(out.includes(`lobby #${bye} <19> bye`), out);
    assert.deepEqual(JSON.parse(fs.readFileSync(path.join(dir, "imesh-mailbox.json"), "utf8")).outbox, {});
  } finally {
    run.kill();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

// last: it kills a broker of the shared mesh
test("after a broker SIGKILL the client moves to the other broker and misses nothing", async () => {
  const a = client(11, ["b1", "b2"]);
  const b = client(12, ["b2"]);
  await a.start();
  await b.start();
  a.watch("lobby", (await a.sync("lobby", 0)).last);
  assert.equal(a.endpoint, shared.mesh.ws.b1);
  process.kill(shared.mesh.pids.b1, "SIGKILL");
  const during = [];
  for (let i = 0; i < 5; i++) during.push(await b.send("lobby", `while a moves ${i}`));
  await until(() => a.state === "online" && a.endpoint === shared.mesh.ws.b2, 15000, "a online on b2");
  await until(() => during.every((id) => a.inbox.some((m) => m.id === id)), 15000, "the messages sent meanwhile");
  const seen = a.inbox.filter((m) => during.includes(m.id)).map((m) => m.id);
  assert.deepEqual(seen, during);                                   // once each, in order
  const id = await a.send("lobby", "back");
  await until(() => b.inbox.some((m) => m.id === id), 10000, "a's send after the move");
  assert.ok(a.reconnects >= 1);
});
