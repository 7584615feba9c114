// The chat page: log in, my chats with unread badges (DMs, groups, rooms), start a DM or a
// group, a chat's history on opening and on scrolling up, live messages, edits and deletes,
// "seen by", typing, presence, failed sends with the reason and a retry, a reconnect banner.
// Everything protocol-related is the JS client (../js/src/client.js); drawing is view.js.
import {
  ChannelList, ImeshClient, Receipts, StorageMailbox, Timeline, Typing, channelLabel, dmPeer, typingLine,
} from "/js/src/client.js";
import { MediaClient, fileText } from "/js/src/media.js";
import { $, drawList, drawMessages, reason } from "/web/view.js";

let client = null;
let me = null;
let list = new ChannelList(null);
const timelines = new Map();      // channel -> Timeline (channels opened in this page)
const pending = new Map();        // mailbox key -> {entry, state, code?, error?}: my sends on their way
const typing = new Typing(5000);
const receipts = new Receipts();
const online = new Map();         // channel -> Set(uin) while its presence is watched
let open = null;                  // the channel on screen
let editing = null;               // {channel, id} while the compose box edits a message
let loadingOlder = false;
let lastTyping = 0;
let roomNames = [];               // the topology's channels (/info), listed as rooms
let media = null;                 // MediaClient to the relays' WebSockets (/info "relays"), or null
const files = new Map();          // media ref -> Promise of {data, mime, size, url}: fetched files

async function info() {
  const res = await fetch("/info");
  return res.json();
}

function deviceFor(uin) {
  // one device number per user per browser: a reload is the same device (same mailbox, dedup)
  const key = `imesh:device:${uin}`;
  let device = Number(localStorage.getItem(key));
  if (!device) {
    device = 1 + Math.floor(Math.random() * 65535);
    localStorage.setItem(key, String(device));
  }
  return device;
}

function uinOf(token) {
  const parts = token.split(".");
  return Number(parts[2]);
}

function timeline(channel) {
  if (!timelines.has(channel)) timelines.set(channel, new Timeline());
  return timelines.get(channel);
}

/** Receipts and "seen by" only where the server sends them: DMs and small groups. */
function small(channel) {
  const item = list.get(channel);
  const cap = client.limits.receipts_max_members || 50;
  return Boolean(item && (item.kind === "dm" || item.kind === "group") && (item.members || 0) <= cap);
}

function notice(text) {
  $("notice").textContent = text;
  $("notice").hidden = !text;
}

// --- drawing ------------------------------------------------------------------------
function drawChats() {
  drawList(list.sorted(), me, open, openChannel);
  const total = list.totalUnread();
  document.title = total ? `(${total}) imesh chat` : "imesh chat";
}

/** Redraw the open chat; `scroll`: "bottom" (jump down), "keep" (stay, or follow if at the
 *  bottom) or "anchor" (older messages came in above: what is on screen stays put). */
function drawChat(scroll = "keep") {
  if (!open) return;
  const ol = $("messages");
  const fromBottom = ol.scrollHeight - ol.scrollTop;
  const atBottom = fromBottom - ol.clientHeight < 40;
  const tl = timeline(open);
  const rows = tl.list();
  let seen = null;
  if (small(open)) {
    for (let i = rows.length - 1; i >= 0 && !seen; i--) {
      if (rows[i].uin !== me || rows[i].deleted) continue;
      const uins = receipts.seenBy(open, rows[i].id, me);
      if (uins.length) seen = { id: rows[i].id, uins };
    }
  }
  const mine = [...pending.values()].filter((p) => p.entry.channel === open);
  drawMessages({ rows, pending: mine, me, kind: list.get(open)?.kind, seen, more: tl.more,
                 actions: { edit: startEdit, del: deleteMessage, retry, download: saveFile, preview: previewFile } });
  if (scroll === "anchor") ol.scrollTop = ol.scrollHeight - fromBottom;
  else if (scroll === "bottom" || atBottom) ol.scrollTop = ol.scrollHeight;
  drawTyping();
}

function drawHeader() {
  const item = list.get(open) || { channel: open, kind: "room" };
  $("title").textContent = channelLabel(item, me);
  const here = online.get(open);
  let sub = item.kind === "group" ? `group · ${item.members || "?"} members` : item.kind === "dm" ? "direct chat" : "room";
  if (here && item.kind === "dm") sub = here.has(dmPeer(open, me)) ? "online" : "offline";
  else if (here) sub += ` · ${[...here].filter((u) => u !== me).length} online`;
  $("subtitle").textContent = sub;
}

function drawTyping() {
  $("typing").textContent = open ? typingLine(typing.who(open, Date.now()).filter((u) => u !== me)) : "";
}

// --- chats ----------------------------------------------------------------------------
let refreshTimer = null;

/** Fetch my chats again (after a login, and when a count is known only to the server). */
function refreshChats(delayMs = 0) {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(async () => {
    try {
      const { items } = await client.allChannels();
      list.load(items);
    } catch (err) {
      notice(`Could not load your chats: ${reason(err.code, err.message)}`);
    }
    for (const name of roomNames) if (!list.get(name)) list.upsert({ channel: name, kind: "room" });
    for (const [channel, tl] of timelines) {       // messages that came while the list was on its way
      for (const m of tl.list()) list.message(m);
    }
    drawChats();
    if (open) { drawHeader(); markRead(); }
  }, delayMs);
}

async function openChannel(name) {
  if (open && open !== name && online.has(open)) {
    const was = open;
    online.delete(was);
    client.unwatchPresence(was).catch(() => {});
  }
  open = name;
  editing = null;
  $("editing").hidden = true;
  notice("");
  sessionStorage.setItem("imesh:open", name);
  document.body.classList.add("inconv");
  if (!list.get(name)) list.upsert({ channel: name, kind: name.startsWith("dm:") ? "dm" : name.startsWith("grp:") ? "group" : "room" });
  drawHeader();
  drawChats();
  const tl = timeline(name);
  drawChat("bottom");
  if (!tl.msgs.size) {
    try {
      const page = await client.history(name, { limit: 50 });
      tl.addPage(page);
      if (!client.windows.last.has(name)) client.watch(name, page.msgs.length ? page.msgs.at(-1).id : 0);
    } catch (err) {
      notice(`Could not load this chat: ${reason(err.code, err.message)}`);
      tl.more = false;
      if (!["NOT_MEMBER", "NO_CHANNEL", "BAD_CHANNEL"].includes(err.code)) client.watch(name, 0);
    }
  }
  if (open !== name) return;
  drawChat("bottom");
  fillScreen();
  markRead();
  if (small(name)) {
    const mineNewest = tl.list().filter((m) => m.uin === me).at(-1);
    if (mineNewest) client.receipts(name, mineNewest.id).then((by) => {
      receipts.replied({ channel: name, id: mineNewest.id, read_by: by });
      if (open === name) drawChat();
    }).catch(() => {});
  }
  if (list.get(name)?.kind !== "room") {
    client.watchPresence(name).then((uins) => {
      online.set(name, new Set(uins));
      if (open === name) drawHeader();
    }).catch(() => {});
  }
}

/** Older messages (scrolled to the top): one more history page above what is shown. */
async function loadOlder() {
  const tl = open && timeline(open);
  if (!tl || loadingOlder || !tl.more || tl.oldest === null) return;
  loadingOlder = true;
  const name = open;
  try {
    tl.addPage(await client.history(name, { before: tl.oldest, limit: 50 }));
    if (open === name) drawChat("anchor");
  } catch (err) {
    notice(`Could not load older messages: ${reason(err.code, err.message)}`);
  } finally {
    loadingOlder = false;
  }
  fillScreen();
}

/** While the messages do not fill the screen there is nothing to scroll: load older ones. */
function fillScreen() {
  const ol = $("messages");
  if (open && ol.scrollHeight <= ol.clientHeight + 60 && timeline(open).more) loadOlder();
}

const readSent = new Map();       // channel -> the newest id a read was sent for

/** The open chat is on screen: my cursor moves to its newest message. */
function markRead() {
  if (!open || document.visibilityState !== "visible" || !document.body.classList.contains("inconv")) return;
  const name = open;
  const tl = timeline(name);
  const newest = tl.newest;
  const item = list.get(name);
  if (!newest || (item && item.read >= newest && !item.unread) || (readSent.get(name) || 0) >= newest) return;
  readSent.set(name, newest);
  client.read(name, newest).then((id) => {
    list.read(name, id, tl);
    drawChats();
  }).catch(() => readSent.delete(name));
}

// --- my actions -------------------------------------------------------------------------
function startEdit(m) {
  editing = { channel: open, id: m.id };
  $("text").value = m.text ?? "";
  $("editing").hidden = false;
  $("text").focus();
}

function stopEdit() {
  editing = null;
  $("editing").hidden = true;
  $("text").value = "";
}

function deleteMessage(m) {
  client.delete(open, m.id).catch((err) => notice(`Not deleted: ${reason(err.code, err.message)}`));
}

function retry(entry) {
  pending.delete(entry.key);
  client.send(entry.channel, entry.text).catch(() => {});
  drawChat("bottom");
}

// --- files (through a relay: clients/js/src/media.js) ---------------------------------------
/** Upload the picked file into the open chat, then send the message that carries its ref. */
async function sendFile(file) {
  const channel = open;
  $("uploadname").textContent = `Sending ${file.name}…`;
  $("uploadbar").value = 0;
  $("upload").hidden = false;
  try {
    const ref = await media.upload(file, channel, { mime: file.type,
      onProgress: (sent, total) => { $("uploadbar").value = sent / total; } });
    client.send(channel, fileText(file.name, ref, file.size)).catch(() => {});   // pending/sent/failed as any send
  } catch (err) {
    notice(`File not sent: ${reason(err.code, err.message)}`);
  } finally {
    $("upload").hidden = true;
  }
}

/** A file by its ref, fetched once per page (sha256 checked by the MediaClient). */
function fetchFile(ref) {
  if (!files.has(ref)) {
    files.set(ref, media.download(ref).then((f) => ({ ...f, url: URL.createObjectURL(new Blob([f.data], { type: f.mime })) })));
    files.get(ref).catch(() => files.delete(ref));     // a failed fetch may be tried again
  }
  return files.get(ref);
}

function saveFile({ name, ref }) {
  if (!media) { notice("No file server (relay) with a WebSocket endpoint in this cluster"); return; }
  fetchFile(ref).then(({ url }) => {
    const a = document.createElement("a");
    a.href = url;
    a.download = name;
    document.body.append(a);
    a.click();
    a.remove();
  }).catch((err) => notice(`File not downloaded: ${reason(err.code, err.message)}`));
}

function previewFile({ ref }, img) {
  if (!media) return;
  fetchFile(ref).then(({ url, mime }) => { if (mime.startsWith("image/")) img.src = url; }).catch(() => {});
}

async function startDm(uin) {
  const reply = await client.createDm(uin);
  list.upsert({ channel: reply.channel, kind: "dm", members: reply.members });
  return reply.channel;
}

async function startGroup(title, members) {
  const reply = await client.createGroup({ name: title || undefined, members });
  list.upsert({ channel: reply.channel, kind: "group", title: reply.title ?? title, members: reply.members, role: "owner",
                active: Date.now() });
  return reply.channel;
}

// --- what arrives --------------------------------------------------------------------------
function wire(uin, device) {
  let wasOnline = false;
  client.on("state", ({ state, detail }) => {
    $("banner").hidden = state === "online" || state === "idle";
    $("banner").textContent = state === "stopped" ? `Disconnected: ${detail}`
      : wasOnline ? "Reconnecting…" : "Connecting…";
    if (state === "online" && wasOnline) refreshChats(200);      // counts may have moved meanwhile
    wasOnline ||= state === "online";
  });
  const arrived = (m) => {
    const target = timelines.get(m.channel)?.add(m) ?? null;
    list.message(m, target);
    if (!m.kind) typing.stopped(m.channel, m.uin);
    if (m.channel === open) { drawChat(); markRead(); }
    drawChats();
  };
  client.on("message", arrived);
  client.on("edit", arrived);
  client.on("delete", (m) => {
    const target = timelines.get(m.channel)?.msgs.get(m.ref);
    const wasUnread = target && !target.deleted ? { ...target } : null;
    timelines.get(m.channel)?.add(m);
    list.message(m, wasUnread);
    if (m.channel === open) drawChat();
    drawChats();
  });
  const mineNow = (e, extra) => ({ ...e, uin, device, ...extra });
  client.on("pending", (e) => {
    if (e.op) return;
    pending.set(e.key, { entry: e, state: "pending" });
    if (e.channel === open) drawChat("bottom");
  });
  client.on("sent", (e) => {
    pending.delete(e.key);
    if (e.op) {                                      // my edit/delete is not pushed back to me
      const ev = mineNow(e, { kind: e.op, ref: e.ref, id: e.id, stime: Date.now() });
      timelines.get(e.channel)?.add(ev);
      list.message(ev);
      if (e.op === "edit" && editing && editing.id === e.ref) stopEdit();
    } else {
      const m = mineNow(e, { id: e.id, stime: Date.now() });
      timelines.get(e.channel)?.add(m);
      list.message(m);
    }
    if (e.channel === open) drawChat();
    drawChats();
  });
  client.on("unsure", (e) => {
    if (e.op) return;
    pending.set(e.key, { entry: e, state: "unsure" });
    if (e.channel === open) drawChat();
  });
  client.on("failed", (e) => {
    if (e.op) {
      notice(`${e.op === "edit" ? "Not edited" : "Not deleted"}: ${reason(e.code, e.error)}`);
      return;
    }
    pending.set(e.key, { entry: e, state: "failed", code: e.code, error: e.error });
    if (e.channel === open) drawChat("bottom");
  });
  client.on("read", ({ channel, id }) => {           // I read it on another device
    if (list.read(channel, id, timelines.get(channel) || null)) refreshChats(300);
    drawChats();
  });
  client.on("receipt", ({ channel, uin: who, id }) => {
    receipts.receipt(channel, who, id);
    if (channel === open) drawChat();
  });
  client.on("typing", ({ channel, uin: who }) => {
    typing.notice(channel, who, Date.now());
    if (channel === open) drawTyping();
  });
  client.on("presence", ({ channel, uin: who, online: up }) => {
    const set = online.get(channel);
    if (!set) return;
    if (up) set.add(who); else set.delete(who);
    if (channel === open) drawHeader();
  });
  client.on("watch", ({ channel, online: uins }) => {
    if (online.has(channel)) online.set(channel, new Set(uins));
    if (channel === open) drawHeader();
  });
}

async function start(token) {
  const meta = await info();
  roomNames = meta.channels.length ? meta.channels : ["lobby"];
  const here = `ws://${location.host}`;
  const endpoints = [here, ...meta.ws.filter((u) => u !== here)];
  const uin = uinOf(token);
  const device = deviceFor(uin);
  client = new ImeshClient({ endpoints, token, device, transport: "auto",     // HTTP where WebSockets are blocked
                              mailbox: new StorageMailbox(localStorage, `imesh:${uin}:${device}`) });
  me = uin;
  media = Object.keys(meta.relays || {}).length ? new MediaClient({ relays: meta.relays, token, device }) : null;
  $("attach").hidden = !media;
  list = new ChannelList(uin);
  wire(uin, device);
  await client.start();
  sessionStorage.setItem("imesh:token", token);
  $("login").hidden = true;
  $("chat").hidden = false;
  $("me").textContent = `user ${uin} · device ${device}`;
  for (const name of roomNames) list.upsert({ channel: name, kind: "room" });
  drawChats();
  refreshChats();
  const last = sessionStorage.getItem("imesh:open");
  if (last) openChannel(last);
  setInterval(drawTyping, 1000);                   // typing lines expire
}

function fail(err) {
  $("loginerr").textContent = String(err.message || err);
}

$("devlogin").onclick = async () => {
  const res = await fetch("/dev/token", { method: "POST", body: JSON.stringify({ uin: Number($("uin").value) }) });
  if (!res.ok) return fail(await res.text());
  start((await res.json()).token).catch(fail);
};
$("tokenlogin").onclick = () => start($("token").value.trim()).catch(fail);
$("back").onclick = () => { document.body.classList.remove("inconv"); drawChats(); };
$("messages").onscroll = () => { if ($("messages").scrollTop < 80) loadOlder(); };
$("canceledit").onclick = stopEdit;
document.addEventListener("visibilitychange", markRead);

const started = (form, what) => form.then(openChannel).then(() => {
  $("start").open = false;
  $("starterr").textContent = "";
}).catch((err) => { $("starterr").textContent = `${what}: ${reason(err.code, err.message)}`; });

$("dmform").onsubmit = (ev) => {
  ev.preventDefault();
  const uin = Number($("dmuin").value);
  if ($("dmuin").value === "" || !Number.isInteger(uin)) return;
  started(startDm(uin), "No direct chat");
};
$("groupform").onsubmit = (ev) => {
  ev.preventDefault();
  const members = $("groupmembers").value.split(/[\s,]+/).filter(Boolean).map(Number);
  if (members.some((u) => !Number.isInteger(u) || u < 0)) {
    $("starterr").textContent = "members: user numbers separated by commas";
    return;
  }
  started(startGroup($("grouptitle").value.trim(), members), "No group");
};
$("roomform").onsubmit = (ev) => {
  ev.preventDefault();
  const name = $("otherchannel").value.trim();
  if (name) { $("start").open = false; openChannel(name); }
};
$("text").oninput = () => {
  const now = Date.now();
  if (!open || editing || now - lastTyping < 3000 || !$("text").value) return;
  lastTyping = now;
  client.typing(open).catch(() => {});            // over the typing rate: nothing to show
};
$("file").onchange = () => {
  const file = $("file").files[0];
  $("file").value = "";
  if (file && open && media) sendFile(file);
};
$("compose").onsubmit = (ev) => {
  ev.preventDefault();
  const text = $("text").value;
  if (!text.trim() || !open) return;
  if (editing) {
    const { channel, id } = editing;
    client.edit(channel, id, text).catch((err) => notice(`Not edited: ${reason(err.code, err.message)}`));
    return;                                        // the compose box clears when the edit is stored
  }
  $("text").value = "";
  lastTyping = 0;
  client.send(open, text).catch(() => {});        // the pending/sent/failed events show the outcome
};

info().then((meta) => { $("dev").hidden = !meta.local; }).catch(fail);
const saved = sessionStorage.getItem("imesh:token");
if (saved) start(saved).catch(fail);             // a reload stays logged in (this tab only)
