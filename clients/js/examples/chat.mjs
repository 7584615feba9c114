// Log in, print a channel's history and live messages, say hello, leave when someone says "bye".
// Run: IMESH_ENDPOINTS=ws://127.0.0.1:7601,ws://127.0.0.1:7602 IMESH_TOKEN=<token> node examples/chat.mjs
import fs from "node:fs";
import { FileMailbox, ImeshClient } from "imesh-client";

const channel = process.env.IMESH_CHANNEL || "lobby";
const client = new ImeshClient({
  endpoints: process.env.IMESH_ENDPOINTS.split(","),   // the brokers' ws endpoints, tried in turn
  token: process.env.IMESH_TOKEN,                      // from your backend: see "Tokens"
  device: 1,                                           // one session per (user, device)
  transport: "auto",                                   // WebSocket; HTTP long polling where it is blocked
  mailbox: new FileMailbox(fs, "imesh-mailbox.json"),  // unacked sends and windows survive a restart
});

client.on("state", ({ state, detail }) => console.log(`[${state}] ${detail}`));
client.on("message", (m) => {
  console.log(`${m.channel} #${m.id} <${m.uin}> ${m.text}`);
  if (m.text === "bye") client.stop().then(() => process.exit(0));
});

try {
  const login = await client.start();                  // resolves after the first login
  console.log(`logged in as ${login.uin} over ${client.transport}`);
} catch (err) {                                        // AUTH_FAILED, TOKEN_EXPIRED, NO_TRANSPORT, ...
  console.error(`cannot log in: ${err.message}`);
  process.exit(1);
}
client.watch(channel, 0);                              // what is stored (from id 0), then live
try {
  const id = await client.send(channel, "hello from node");
  console.log(`sent #${id}`);
} catch (err) {
  if (err.code === "BUSY") console.log(`not acked yet; the mailbox keeps sending it: ${err.message}`);
  else console.error(`not sent (${err.code}): ${err.message}`);  // NOT_MEMBER, RATE_LIMITED, KICKED, ...
}
