// Files through the relay's WebSocket endpoint against a real mesh (tests/webmesh.py: two
// brokers, one relay with a ws endpoint): an upload in chunks with its sha256, a normal message
// carrying the ref, the other member's download checked against the sha256; the relay's rules
// (members only, size limits) hold over WebSocket as over ZeroMQ.
// Run: node --experimental-websocket --test clients/js/test/media_mesh.test.js
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { after, before, test } from "node:test";

import { ClientError, ImeshClient } from "../src/client.js";
import { MediaClient, fileText, parseFileText, parseRef } from "../src/media.js";
import { startMesh, until } from "../testing/mesh.js";

let mesh;
const closers = [];

before(async () => { mesh = await startMesh(); });
after(async () => {
  for (const c of closers) await c().catch(() => {});
  await mesh?.stop();
});

async function chat(uin, broker) {
  const c = new ImeshClient({ endpoints: [mesh.ws[broker]], token: mesh.tokens[uin], timeoutMs: 3000 });
  c.got = [];
  c.on("message", (m) => c.got.push(m));
  closers.push(() => c.stop({ logout: false }));
  await c.start();
  return c;
}

function media(uin) {
  const m = new MediaClient({ relays: mesh.relays, token: mesh.tokens[uin], window: 3 });
  closers.push(async () => m.close());
  return m;
}

function bytes(n) {
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = (i * 31 + (i >> 9)) & 0xff;
  return out;
}

const sha = (data) => createHash("sha256").update(data).digest("hex");

test("a file uploaded in chunks reaches another member through a message and downloads intact", async () => {
  const a = await chat(1, "b1");
  const b = await chat(2, "b2");
  b.watch("lobby", (await b.sync("lobby", 0)).last);
  const data = bytes(600 * 1024 + 123);          // 3 chunks of 256 KiB, the last one short
  const progress = [];
  const ref = await media(1).upload(data, "lobby", { mime: "application/x-test", onProgress: (s, t) => progress.push([s, t]) });
  assert.ok(parseRef(ref), ref);
  assert.deepEqual(progress.at(-1), [data.length, data.length]);
  assert.equal(progress.length, 3);
  await a.send("lobby", fileText("test file.bin", ref, data.length));

  await until(() => b.got.some((m) => parseFileText(m.text)), 10000, "the file message");
  const file = parseFileText(b.got.find((m) => parseFileText(m.text)).text);
  assert.deepEqual(file, { name: "test file.bin", ref, size: data.length });
  assert.deepEqual(parseFileText(`[file] a (b) c.txt ${ref}`), { name: "a (b) c.txt", ref }, "the Python docs' form");
  assert.equal(parseFileText(`look at ${ref}`), null);
  const got = await media(2).download(file.ref);
  assert.equal(got.size, data.length);
  assert.equal(got.mime, "application/x-test");
  assert.equal(sha(got.data), sha(data));
});

test("members only, both ways; a file over the limit and an unknown ref are refused", async () => {
  const owner = await chat(3, "b1");
  const group = await owner.createGroup({ name: "pics", members: [4] });
  const ref = await media(4).upload(bytes(1000), group.channel);
  const outsider = media(5);
  await assert.rejects(outsider.download(ref), (err) => err instanceof ClientError && err.code === "NOT_MEMBER");
  await assert.rejects(outsider.upload(bytes(10), group.channel),
    (err) => err instanceof ClientError && err.code === "NOT_MEMBER");
  assert.equal(sha((await media(3).download(ref)).data), sha(bytes(1000)));
  const m = media(6);
  const link = m._link(Object.keys(mesh.relays)[0]);
  const { limits } = await link.connect();
  const size = limits.max_file + 1;                  // the relay's own check, not the client's
  await assert.rejects(link.request({ t: "up_begin", size, chunk_size: limits.max_chunk,
    chunks: Math.ceil(size / limits.max_chunk), sha256: "0".repeat(64), mime: "x", channel: "lobby" }),
  (err) => err instanceof ClientError && err.code === "TOO_BIG");
  await assert.rejects(m.download(ref.replace(/[0-9a-f]{16}$/, "0123456789abcdef")),
    (err) => err instanceof ClientError && err.code === "NO_MEDIA");
});
