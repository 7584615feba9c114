// The client on a runtime WITHOUT a global WebSocket (Node 20 run without --experimental-websocket):
// "auto" chats over the HTTP long-poll fallback, "ws" rejects start() naming what is missing, and
// nothing is ever an uncaught exception.  tests/test_web.py runs this file without the flag; on a
// runtime that has a WebSocket (the flagged run, Node >= 22) it is skipped.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { ImeshClient } from "../src/client.js";
import { startMesh, until } from "../testing/mesh.js";

const skip = typeof globalThis.WebSocket === "function"
  && "this runtime has a global WebSocket: run this file with Node 20 without --experimental-websocket";
let mesh;
const clients = [];
const uncaught = [];
const onUncaught = (err) => uncaught.push(err);

before(async () => {
  process.on("uncaughtException", onUncaught);
  process.on("unhandledRejection", onUncaught);
  if (!skip) mesh = await startMesh();
});
after(async () => {
  for (const c of clients) await c.stop({ logout: false }).catch(() => {});
  await mesh?.stop();
  process.off("uncaughtException", onUncaught);
  process.off("unhandledRejection", onUncaught);
});

function client(uin, opts = {}) {
  const c = new ImeshClient({ endpoints: [mesh.ws.b1, mesh.ws.b2], token: mesh.tokens[uin], timeoutMs: 3000, ...opts });
  c.inbox = [];
  c.on("message", (m) => c.inbox.push(m));
  clients.push(c);
  return c;
}

test("transport auto without a WebSocket logs in over HTTP, sends and receives", { skip }, async () => {
  const a = client(1, { transport: "auto" });
  const b = client(2, { transport: "auto" });
  assert.equal((await a.start()).uin, 1);
  await b.start();
  assert.equal(a.transport, "http");
  for (const c of [a, b]) c.watch("lobby", (await c.sync("lobby", 0)).last);
  const id = await a.send("lobby", "no WebSocket here");
  await until(() => b.inbox.some((m) => m.id === id), 10000, "delivery over HTTP");
  assert.ok((await b.send("lobby", "nor here")) > id);
  await until(() => a.inbox.some((m) => m.text === "nor here"), 10000, "the reply over HTTP");
  assert.deepEqual(uncaught, []);
});

test("transport ws without a WebSocket rejects start() naming what is missing", { skip }, async () => {
  const c = client(3, { transport: "ws" });
  await assert.rejects(c.start(), (err) => err.code === "NO_TRANSPORT" && /WebSocket/.test(err.message)
                                          && /--experimental-websocket/.test(err.message));
  assert.equal(c.state, "stopped");
  await assert.rejects(c.send("lobby", "x"), (err) => err.code === "NO_TRANSPORT");
  await new Promise((r) => setTimeout(r, 200));                  // a stray rejection would land now
  assert.deepEqual(uncaught, []);
});

test("with neither WebSocket nor fetch, start() rejects naming both", { skip }, async () => {
  const { fetch } = globalThis;
  delete globalThis.fetch;
  try {
    for (const transport of ["auto", "http"]) {
      const c = client(4, { transport });
      await assert.rejects(c.start(), (err) => err.code === "NO_TRANSPORT" && /fetch/.test(err.message)
                                              && (transport === "http" || /WebSocket/.test(err.message)));
    }
  } finally {
    globalThis.fetch = fetch;
  }
  assert.deepEqual(uncaught, []);
});
