// What a chat screen keeps of the conversation layer (docs/protocol.md "Conversations"), with no
// I/O: a channel's loaded messages with edits and deletes applied (Timeline), the user's channel
// list with unread counts that follow messages and read cursors (ChannelList), who is typing
// (Typing, on a clock the caller passes) and who has read what (Receipts).  The client and the
// web page feed them; the tests drive them with plain maps and a fake clock.

/** A DM's name is `dm:{lo}:{hi}`: the uin that is not `me` (null for other names). */
export function dmPeer(name, me) {
  const m = /^dm:(\d+):(\d+)$/.exec(name);
  if (!m) return null;
  const [lo, hi] = [Number(m[1]), Number(m[2])];
  return lo === me ? hi : lo;
}

/** What a person calls a channel: the other user of a DM, a group's title, a room's name. */
export function channelLabel(item, me) {
  const peer = dmPeer(item.channel, me);
  if (item.kind === "dm" && peer !== null) return `user ${peer}`;
  if (item.kind === "group") return item.title || `group by user ${item.channel.split(":")[1]}`;   // grp:{creator}:{ctime}
  return item.channel;
}

/** A message's time for a chat line: "14:03" today, "3 Dec 14:03" before. */
export function timeLabel(stimeMs, nowMs = Date.now()) {
  if (!stimeMs) return "";
  const d = new Date(stimeMs);
  const now = new Date(nowMs);
  const hm = `${String(d.getHours()).padStart(2, "0")}:${String(d.getMinutes()).padStart(2, "0")}`;
  if (d.toDateString() === now.toDateString()) return hm;
  return `${d.getDate()} ${d.toLocaleString("en", { month: "short" })} ${hm}`;
}

/**
 * One channel's loaded messages by id, oldest first.  Live messages and history pages go in
 * the same map (a message is kept once, whatever brought it); an `edit` event replaces its
 * ref's text and marks it `edited`, a `delete` event turns it into a tombstone.  An event whose
 * ref is not loaded (yet) is remembered: the history page that brings the ref later carries
 * the change already, and a live ref cannot come after its own edit.
 */
export class Timeline {
  constructor() {
    this.msgs = new Map();          // id -> message
    this.more = true;               // older stored messages may exist (until a history page says no)
    this.oldest = null;             // smallest id loaded
  }

  /** A message or an edit/delete event; returns the message changed or added (or null). */
  add(m) {
    if (m.kind === "edit" || m.kind === "delete") return this._apply(m);
    const had = this.msgs.get(m.id);
    // a history copy (edits applied) may come after a live copy of the same id: keep the newer state
    const merged = had ? { ...had, ...m, ...(had.deleted ? { deleted: true, text: undefined } : {}) } : { ...m };
    this.msgs.set(m.id, merged);
    if (this.oldest === null || m.id < this.oldest) this.oldest = m.id;
    return merged;
  }

  _apply(ev) {
    const target = this.msgs.get(ev.ref);
    if (!target) return null;
    if (ev.kind === "delete") {
      target.deleted = true;
      delete target.text;
    } else if (!target.deleted) {
      target.text = ev.text;
      target.edited = ev.stime || Date.now();
    }
    return target;
  }

  /** A `history` reply: its messages, and whether older ones exist. */
  addPage(page) {
    for (const m of page.msgs) this.add(m);
    this.more = Boolean(page.more);
    if (!page.msgs.length) this.more = false;
  }

  get newest() {
    let top = 0;
    for (const id of this.msgs.keys()) if (id > top) top = id;
    return top;
  }

  list() {
    return [...this.msgs.values()].sort((a, b) => a.id - b.id);
  }

  /** Unread as the server counts it: messages after `read`, not mine, not deleted. */
  unreadAfter(read, me) {
    let n = 0;
    for (const m of this.msgs.values()) if (m.id > read && m.uin !== me && !m.deleted) n += 1;
    return n;
  }
}

/**
 * The user's channels (items of `channels` replies) kept current by what arrives: a message
 * moves its channel to the top with a new preview and, unless it is the user's own, one more
 * unread; a read cursor (own `read` reply or another device's `read` push) lowers the count.
 */
export class ChannelList {
  constructor(me) {
    this.me = me;
    this.items = new Map();         // channel -> item
  }

  /** Replace the list with the items of `channels` pages (a full reload). */
  load(items) {
    this.items = new Map(items.map((it) => [it.channel, { ...it }]));
  }

  /** One item (a `channels` item, or a reply of `create`); kept fields it does not carry. */
  upsert(item) {
    const had = this.items.get(item.channel) || { last: 0, read: 0, unread: 0, active: 0, role: "member" };
    const merged = { ...had, ...item };
    this.items.set(item.channel, merged);
    return merged;
  }

  get(channel) {
    return this.items.get(channel);
  }

  /** Most recently active first, then by name (as the server orders them). */
  sorted() {
    return [...this.items.values()].sort((a, b) => (b.active - a.active) || (a.channel < b.channel ? -1 : 1));
  }

  /** A message or edit/delete event of a channel; returns the item (made if unknown).  For a
   *  delete, `target` is the deleted message when it is loaded: an unread one stops counting. */
  message(m, target = null) {
    const item = this.items.get(m.channel) || this.upsert({ channel: m.channel, kind: guessKind(m.channel) });
    if (m.id <= item.last && !(m.kind === "edit" || m.kind === "delete")) return item;   // seen
    item.last = Math.max(item.last, m.id);
    if (m.kind === "delete") {
      if (item.preview && item.preview.id === m.ref) item.preview = { ...item.preview, deleted: true, text: undefined };
      if (target && target.uin !== this.me && m.ref > item.read && item.unread > 0) item.unread -= 1;
      return item;
    }
    if (m.kind === "edit") {
      if (item.preview && item.preview.id === m.ref) item.preview = { ...item.preview, text: m.text.slice(0, 100) };
      return item;
    }
    item.active = Math.max(item.active || 0, m.stime || Date.now());
    item.preview = { id: m.id, uin: m.uin, text: (m.text || "").slice(0, 100), stime: m.stime };
    if (m.uin === this.me) {
      item.read = Math.max(item.read, m.id);                // sending moves my own cursor
      item.unread = 0;
      item.unread_more = false;
    } else if (m.id > item.read) {
      item.unread += 1;
    }
    return item;
  }

  /**
   * My read cursor of a channel moved to `id` (a reply or another device's push).  With the
   * channel's timeline the count is exact for what is loaded; without it, reading to the newest
   * id clears it.  Returns true when the count is only known by asking the server again.
   */
  read(channel, id, timeline = null) {
    const item = this.items.get(channel);
    if (!item || id <= item.read) return false;
    item.read = id;
    if (id >= item.last) {
      item.unread = 0;
      item.unread_more = false;
      return false;
    }
    if (timeline && timeline.oldest !== null && timeline.oldest <= id + 1) {
      item.unread = timeline.unreadAfter(id, this.me);
      return false;
    }
    return true;
  }

  /** A channel this user is no longer in (left, removed). */
  drop(channel) {
    this.items.delete(channel);
  }

  totalUnread() {
    let n = 0;
    for (const it of this.items.values()) n += it.unread || 0;
    return n;
  }
}

function guessKind(name) {
  if (name.startsWith("dm:")) return "dm";
  if (name.startsWith("grp:")) return "group";
  return "room";
}

/** Who is typing in which channel: a notice shows for `showMs` after it came (then it expires). */
export class Typing {
  constructor(showMs = 5000) {
    this.showMs = showMs;
    this.until = new Map();         // channel -> Map(uin -> expiry ms)
  }

  notice(channel, uin, nowMs) {
    if (!this.until.has(channel)) this.until.set(channel, new Map());
    this.until.get(channel).set(uin, nowMs + this.showMs);
  }

  /** A message from uin ends its typing at once. */
  stopped(channel, uin) {
    this.until.get(channel)?.delete(uin);
  }

  who(channel, nowMs) {
    const byUin = this.until.get(channel);
    if (!byUin) return [];
    for (const [uin, end] of byUin) if (end <= nowMs) byUin.delete(uin);
    return [...byUin.keys()].sort((a, b) => a - b);
  }
}

/** "user 7 is typing…", "users 7 and 9 are typing…", "3 people are typing…", or "". */
export function typingLine(uins) {
  if (!uins.length) return "";
  if (uins.length === 1) return `user ${uins[0]} is typing…`;
  if (uins.length === 2) return `users ${uins[0]} and ${uins[1]} are typing…`;
  return `${uins.length} people are typing…`;
}

/**
 * Where every other member has read up to in one channel (from `receipt` pushes and
 * `receipts` replies): who has seen a message is everyone whose cursor is at or past its id.
 */
export class Receipts {
  constructor() {
    this.cursor = new Map();        // channel -> Map(uin -> id)
  }

  receipt(channel, uin, id) {
    if (!this.cursor.has(channel)) this.cursor.set(channel, new Map());
    const byUin = this.cursor.get(channel);
    if (id > (byUin.get(uin) || 0)) byUin.set(uin, id);
  }

  /** A `receipts` reply: everyone in read_by has read at least `id`. */
  replied(reply) {
    for (const uin of reply.read_by) this.receipt(reply.channel, uin, reply.id);
  }

  seenBy(channel, id, me) {
    const byUin = this.cursor.get(channel);
    if (!byUin) return [];
    return [...byUin].filter(([uin, at]) => uin !== me && at >= id).map(([uin]) => uin).sort((a, b) => a - b);
  }
}
