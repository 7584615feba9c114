// The chat page: log in, pick a channel, history (sync), live messages, own pending/sent state,
// a reconnect banner.  Everything protocol-related is the JS client (../js/src/client.js).
import { ImeshClient, StorageMailbox } from "/js/src/client.js";

const $ = (id) => document.getElementById(id);
let client = null;
let channel = null;
const shown = new Map();          // "uin:device:ctime" -> <li>, so each message shows once

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

function place(li, id) {
  const list = $("messages");
  li.dataset.id = id ?? "";
  if (id === undefined) {
    list.append(li);
  } else {
    const after = [...list.children].find((el) => el !== li && (el.dataset.id === "" || Number(el.dataset.id) > id));
    list.insertBefore(li, after || null);
  }
  list.scrollTop = list.scrollHeight;
}

function render(m, state) {
  const key = `${m.uin}:${m.device}:${m.ctime}`;
  let li = shown.get(key);
  const mine = m.uin === client.uin && m.device === client.device;
  if (!li) {
    li = document.createElement("li");
    li.innerHTML = '<span class="who"></span><span class="text"></span><span class="state"></span>';
    li.querySelector(".who").textContent = mine ? "me" : `user ${m.uin}`;
    li.querySelector(".text").textContent = m.text;
    if (mine) li.classList.add("mine");
    shown.set(key, li);
  }
  li.classList.toggle("pending", state === "pending");
  li.classList.toggle("failed", state === "failed");
  li.querySelector(".state").textContent = mine ? { pending: "sending…", failed: "not sent", unsure: "retrying…" }[state] || "✓" : "";
  if (state !== "unsure" && (state !== "failed")) place(li, m.id);
  return li;
}

function openChannel(name) {
  channel = name;
  shown.clear();
  $("messages").textContent = "";
  client.watch(name, 0);                       // the whole stored history, then live
}

async function start(token) {
  const meta = await info();
  const here = `ws://${location.host}`;
  const endpoints = [here, ...meta.ws.filter((u) => u !== here)];
  const uin = uinOf(token);
  const device = deviceFor(uin);
  client = new ImeshClient({ endpoints, token, device, transport: "auto",     // HTTP where WebSockets are blocked
                              mailbox: new StorageMailbox(localStorage, `imesh:${uin}:${device}`) });
  let wasOnline = false;
  client.on("state", ({ state, detail }) => {
    wasOnline ||= state === "online";
    $("banner").hidden = state === "online" || state === "idle";
    $("banner").textContent = state === "stopped" ? `Disconnected: ${detail}`
      : wasOnline ? "Reconnecting…" : "Connecting…";
  });
  client.on("message", (m) => { if (m.channel === channel) render(m); });
  client.on("pending", (e) => { if (e.channel === channel) render({ ...e, uin, device }, "pending"); });
  client.on("sent", (e) => { if (e.channel === channel) render({ ...e, uin, device }); });
  client.on("unsure", (e) => { if (e.channel === channel) render({ ...e, uin, device }, "unsure"); });
  client.on("failed", (e) => { if (e.channel === channel) render({ ...e, uin, device, text: `${e.text} (${e.code})` }, "failed"); });
  await client.start();
  sessionStorage.setItem("imesh:token", token);
  $("login").hidden = true;
  $("chat").hidden = false;
  $("me").textContent = `user ${uin} · device ${device}`;
  const select = $("channel");
  select.textContent = "";
  for (const name of meta.channels.length ? meta.channels : ["lobby"]) select.append(new Option(name, name));
  openChannel(select.value);
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
$("channel").onchange = () => openChannel($("channel").value);
$("otherchannel").onchange = () => {
  const name = $("otherchannel").value.trim();
  if (name) { $("channel").append(new Option(name, name, true, true)); openChannel(name); }
};
$("compose").onsubmit = (ev) => {
  ev.preventDefault();
  const text = $("text").value;
  if (!text.trim()) return;
  $("text").value = "";
  client.send(channel, text).catch(() => {});    // the pending/sent/failed events show the outcome
};

info().then((meta) => { $("dev").hidden = !meta.local; }).catch(fail);
const saved = sessionStorage.getItem("imesh:token");
if (saved) start(saved).catch(fail);             // a reload stays logged in (this tab only)
