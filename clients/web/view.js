// The chat page's drawing: the channel list and one channel's messages as DOM nodes, from the
// models of the JS client (ChannelList, Timeline, Receipts).  No state of its own: app.js calls
// these again whenever something changed (a few hundred lines of chat redraw in well under a frame).
import { channelLabel, timeLabel } from "/js/src/client.js";
import { parseFileText } from "/js/src/media.js";

const IMAGE = /\.(png|jpe?g|gif|webp)$/i;       // names whose file the page previews inline

export const $ = (id) => document.getElementById(id);

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}

/** Why a request was refused, as a person would say it (the code stays in the tooltip). */
export function reason(code, message = "") {
  const says = {
    NOT_MEMBER: "you are not a member of this chat",
    TOO_BIG: "the file is too big",
    SHA_MISMATCH: "the file arrived damaged (its checksum does not match)",
    NO_MEDIA: "the file is gone (expired or never finished)",
    NO_CRYPTO: "this page cannot checksum files here (it needs https)",
    UNAVAILABLE: "the file server did not answer; try again",
    NO_CHANNEL: "this chat does not exist",
    BAD_CHANNEL: "this is not a valid chat name",
    RATE_LIMITED: "you are sending too fast; wait a moment",
    TOO_LONG: "the text is too long",
    EMPTY_TEXT: "the text is empty",
    FORBIDDEN: "you are not allowed to do that here",
    TOO_LATE: "it is too late to edit this message",
    NO_MESSAGE: "that message is gone",
    TOO_MANY: "the chat is too big for that",
    BAD_FIELD: "that is not a valid request",
    BUSY: "no answer from the server yet",
    TIMEOUT: "no answer from the server",
    DISCONNECTED: "the connection dropped",
  };
  return says[code] || message || code;
}

/** The list of chats: name, time and preview of the newest message, unread badge. */
export function drawList(items, me, open, onOpen) {
  const ul = $("channels");
  ul.textContent = "";
  for (const item of items) {
    const li = el("li", item.channel === open ? "chan open" : "chan");
    li.dataset.channel = item.channel;
    li.dataset.kind = item.kind || "room";
    const top = el("div", "top");
    top.append(el("span", "name", channelLabel(item, me)), el("time", "time", timeLabel(item.active)));
    const bottom = el("div", "bottom");
    const p = item.preview;
    const who = p && p.uin === me ? "you: " : p && item.kind !== "dm" ? `user ${p.uin}: ` : "";
    const file = p && parseFileText(p.text);
    const text = file ? `file: ${file.name}` : p?.text ?? "";
    bottom.append(el("span", "preview", p ? (p.deleted ? `${who}message deleted` : `${who}${text}`) : kindLine(item)));
    if (item.unread > 0) bottom.append(el("span", "badge", item.unread_more ? `${item.unread}+` : String(item.unread)));
    li.append(top, bottom);
    li.onclick = () => onOpen(item.channel);
    ul.append(li);
  }
}

function kindLine(item) {
  if (item.kind === "dm") return "direct chat";
  if (item.kind === "group") return `group · ${item.members || "?"} members`;
  return "room";
}

/**
 * One channel's messages and my sends still on their way.  `rows`: timeline messages (oldest
 * first); `pending`: [{entry, state, code, error}]; `seen`: {id, uins} for the "seen by" line
 * (the newest of my messages someone has read), or null; `actions`: {edit, del, retry}.
 */
export function drawMessages({ rows, pending, me, kind, seen, more, actions }) {
  const ol = $("messages");
  ol.textContent = "";
  const top = el("li", "top", more ? "Scroll up for older messages" : "Start of the conversation");
  top.id = "historytop";
  ol.append(top);
  let prev = null;
  for (const m of rows) {
    // a run of one sender's messages names the sender once
    ol.append(messageNode(m, me, kind, actions, seen && seen.id === m.id ? seen.uins : null, prev !== m.uin));
    prev = m.uin;
  }
  for (const p of pending) ol.append(pendingNode(p, actions));
}

function messageNode(m, me, kind, actions, seenBy, first) {
  const mine = m.uin === me;                       // mine from any device: on the right
  const li = el("li", mine ? "msg mine" : "msg");
  li.dataset.id = m.id;
  if (!mine && kind !== "dm" && first) li.append(el("span", "who", `user ${m.uin}`));
  if (m.deleted) {
    li.classList.add("deleted");
    li.append(el("span", "text", "message deleted"));
  } else if (parseFileText(m.text)) {
    li.append(fileNode(parseFileText(m.text), actions));
  } else {
    li.append(el("span", "text", m.text ?? ""));
  }
  const meta = el("span", "meta");
  if (m.edited && !m.deleted) meta.append(el("span", "edited", "edited"));
  meta.append(el("time", "time", timeLabel(m.stime)));
  if (mine && !m.deleted) meta.append(el("span", "state", "✓"));
  li.append(meta);
  if (mine && !m.deleted) {
    const bar = el("span", "actions");
    const edit = el("button", "edit", "Edit");
    edit.type = "button";
    edit.onclick = () => actions.edit(m);
    const del = el("button", "delete", "Delete");
    del.type = "button";
    del.onclick = () => {                          // two clicks: a stray tap does not delete
      if (del.classList.contains("sure")) actions.del(m);
      else { del.classList.add("sure"); del.textContent = "Delete?"; }
    };
    bar.append(edit, del);
    li.append(bar);
    li.onclick = (ev) => { if (!ev.target.closest("button")) li.classList.toggle("act"); };   // a tap shows them
  }
  if (seenBy && seenBy.length) {
    li.append(el("div", "seen", kind === "dm" ? "Seen" : `Seen by ${seenBy.map((u) => `user ${u}`).join(", ")}`));
  }
  return li;
}

/** A message carrying a file: a download link, and for an image a preview the page fetches
 *  (through the relay, sha256 checked) and caches -- actions.preview(file, img) fills it. */
function fileNode(file, actions) {
  const box = el("span", "text file");
  const link = el("a", "download", file.name);
  link.href = "#";
  link.dataset.ref = file.ref;
  link.onclick = (ev) => { ev.preventDefault(); actions.download(file); };
  box.append(link);
  if (IMAGE.test(file.name)) {
    const img = el("img", "preview");
    img.alt = file.name;
    img.onclick = () => actions.download(file);
    box.append(img);
    actions.preview(file, img);
  }
  return box;
}

function pendingNode({ entry, state, code, error }, actions) {
  const li = el("li", `msg mine ${state}`);
  li.dataset.id = "";
  li.dataset.key = entry.key;
  li.append(el("span", "text", entry.text));
  const meta = el("span", "meta");
  meta.append(el("span", "state", { pending: "sending…", unsure: "retrying…", failed: "not sent" }[state] || ""));
  li.append(meta);
  if (state === "failed") {
    const why = el("div", "why", `Not sent: ${reason(code, error)}`);
    why.title = error || code;
    const retry = el("button", "retry", "Retry");
    retry.type = "button";
    retry.onclick = () => actions.retry(entry);
    why.append(" ", retry);
    li.append(why);
  }
  return li;
}
