// What a kick notice does to the client, without a mesh: "kicked" (the app's backend ended the
// user's sessions over the HTTP API) and "replaced" end it -- no silent login with the same token --
// while "expired" only loses the session.  The kick end to end: tests/test_httpapi_mesh.py (Python
// client) and client.test.js ("replaced").
import assert from "node:assert/strict";
import { test } from "node:test";

import { ImeshClient } from "../src/client.js";

function fresh() {
  return new ImeshClient({ endpoints: ["ws://127.0.0.1:9"], token: "t" });
}

test("a kicked notice (reason kicked) ends the client: every call fails at once with the reason", async () => {
  const c = fresh();
  const seen = [];
  c.on("kicked", (m) => seen.push(m));
  c._dispatch({ t: "kicked", reason: "kicked", msg: "account closed" });
  assert.deepEqual(seen.map((m) => m.reason), ["kicked"]);
  assert.equal(c.fatal.code, "KICKED");
  await assert.rejects(c.send("lobby", "after the kick"),
                       (err) => err.code === "KICKED" && /^KICKED: kicked.*account closed/.test(err.message));
  await assert.rejects(c.request({ t: "hb" }), (err) => err.code === "KICKED");
});

test("an expired session is not the end of the client", () => {
  const c = fresh();
  c._dispatch({ t: "kicked", reason: "expired" });
  assert.equal(c.fatal, null);
});
