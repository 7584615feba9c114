// The imesh client for browsers and Node: one connection manager over WebSocket (or the HTTP
// fallback), login, sends with retries and a mailbox, heartbeats on the server's interval,
// windows with gap sync, fragments, and the conversation layer (channel lists, read state,
// receipts, history, edit/delete, typing, presence, DMs and groups).  Speaks docs/protocol.md;
// see docs/client.md.
import { decodeFrame, encodeFrame } from "./codec.js";
import { Assembler, newGroupId, splitUtf8, utf8Length } from "./fragments.js";
import { MemoryMailbox } from "./mailbox.js";
import { HttpTransport, WsTransport, missingTransport } from "./transport.js";
import { Windows } from "./windows.js";

export const PROTOCOL_VERSION = 2;
// outcomes that leave a send unknown (maybe stored): retried with the same ctime
const RETRYABLE = new Set(["TIMEOUT", "UNAVAILABLE", "BUSY", "INTERNAL", "STORAGE_FULL", "DISCONNECTED",
                           "NOT_LOGGED_IN"]);
const FATAL_LOGIN = new Set(["AUTH_FAILED", "TOKEN_EXPIRED", "BAD_VERSION", "BAD_FIELD"]);
// errors that end the client (this.fatal): requests and sends fail at once with it
const ENDED = new Set(["KICKED", "STOPPED", "NO_TRANSPORT", ...FATAL_LOGIN]);
// kick reasons that end the client: another login took over, or the app's backend kicked the user
const ENDED_BY_OTHERS = new Set(["replaced", "kicked"]);
// pushes that are not messages (no rid; a reply of the same t carries its request's rid)
const PUSHES = new Set(["read", "receipt", "typing", "presence"]);

export class ClientError extends Error {
  constructor(code, message, reply = null) {
    super(`${code}: ${message}`);
    this.code = code;
    this.reply = reply;
  }
}

/** Client times for sends: microseconds since the epoch, strictly increasing. */
class Clock {
  constructor() { this.last = 0; }
  next() {
    this.last = Math.max(Date.now() * 1000, this.last + 1);
    return this.last;
  }
}

/** The request of a mailbox entry: a send, or an edit/delete of message `ref` (`op`). */
export function requestOf(entry) {
  const { channel, ctime, text } = entry;
  if (entry.op === "edit") return { t: "edit", channel, id: entry.ref, ctime, text };
  if (entry.op === "delete") return { t: "delete", channel, id: entry.ref, ctime };
  return { t: "send", channel, ctime, text, ...(entry.frag ? { frag: entry.frag } : {}) };
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export class ImeshClient {
  /**
   * endpoints: broker ws URLs ("ws://127.0.0.1:7601"), tried in turn;
   * transport: "ws", "http" (long-poll fallback) or "auto" (WebSocket, falling back to HTTP when a
   * WebSocket attempt fails before its login); mailbox: Memory/Storage/FileMailbox.
   */
  constructor({ endpoints, token, device = 0, net = "wired", transport = "ws", mailbox = null,
                timeoutMs = 3000, retries = 2, minBackoffMs = 200, maxBackoffMs = 5000, WebSocket = undefined }) {
    this.endpoints = Array.isArray(endpoints) ? endpoints : [endpoints];
    if (!this.endpoints.length) throw new Error("at least one broker endpoint is needed");
    Object.assign(this, { token, device, net, transportKind: transport, timeoutMs, retries,
                          minBackoffMs, maxBackoffMs, WebSocketImpl: WebSocket });
    this.mailbox = mailbox || new MemoryMailbox();
    this.windows = new Windows(this.mailbox.loadWindows());
    this.assembler = new Assembler();
    this.clock = new Clock();
    this.limits = { max_text: 1440, max_fragments: 100, message_lifetime: 86400 };
    this.version = PROTOCOL_VERSION;
    this.state = "idle";
    this.index = 0;
    this.reconnects = 0;
    this.syncs = 0;
    this.dropPush = null;          // test hook: (msg) => true drops a push
    this._listeners = new Map();
    this._pending = new Map();     // rid -> {resolve, reject, timer}
    this._rid = 0;
    this._syncing = new Set();
    this._inflight = new Set();    // mailbox keys being sent now
    this._transport = null;
    this._hbTimer = null;
    this._presence = new Set();    // channels whose presence is watched: watched again after a login
    this._presenceTimer = null;
    this.fatal = null;             // the ClientError that ended the client (kick, refused login, stop)
  }

  on(event, fn) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(fn);
    return () => this._listeners.get(event).delete(fn);
  }

  _emit(event, value) {
    for (const fn of this._listeners.get(event) || []) {
      try { fn(value); } catch (err) { console.error(`imesh: ${event} listener failed`, err); }
    }
  }

  _setState(state, detail = "") {
    this.state = state;
    this._emit("state", { state, detail, endpoint: this.endpoint });
  }

  // --- connection manager ---------------------------------------------------
  /** Connect and keep connected; resolves after the first login (rejects on a bad token, or
   *  with NO_TRANSPORT when this runtime lacks what the chosen transport needs). */
  start() {
    if (this.running) return this._started;
    const missing = missingTransport(this.transportKind, this.WebSocketImpl);
    if (missing) {
      this._end(new ClientError("NO_TRANSPORT", missing));
      return Promise.reject(this.fatal);
    }
    this.running = true;
    this.fatal = null;
    this._started = new Promise((resolve, reject) => { this._startWaiters = { resolve, reject }; });
    this._manage().catch((err) => {                 // a bug here must not be an uncaught rejection
      this._end(err instanceof ClientError ? err : new ClientError("INTERNAL", `client failed: ${err.message}`));
    });
    return this._started;
  }

  /** The client is over (kicked, login refused, no transport, stopped): say why, to start()
   *  if it still waits, and to every request and send from now on. */
  _end(err) {
    this.running = false;
    this.fatal = err;
    this._detach(err.message);
    this._setState("stopped", err.message);
    this._startWaiters?.reject(err);
    this._startWaiters = null;
  }

  async _manage() {
    let failures = 0;
    while (this.running) {
      const url = this.endpoints[this.index % this.endpoints.length];
      this.endpoint = url;
      this._setState("connecting", url);
      // "auto": WebSocket; after an attempt that failed before its login, the other transport
      // (a network that blocks WebSockets gets the HTTP long-poll fallback, and back)
      // (a runtime without a WebSocket, e.g. Node 20 without --experimental-websocket: HTTP only)
      const http = this.transportKind === "http"
        || (this.transportKind === "auto" && (this._httpNext || missingTransport("ws", this.WebSocketImpl)));
      this.transport = http ? "http" : "ws";
      const lost = new Promise((resolve) => { this._lost = resolve; });
      let loggedIn = false;
      try {
        const t = http ? new HttpTransport(url) : new WsTransport(url, this.WebSocketImpl);
        this._attach(t);
        await Promise.race([t.open(this.timeoutMs), lost.then((why) => { throw new Error(why); })]);
        await this._login();
        loggedIn = true;
        failures = 0;
        this._setState("online", url);
        this._startWaiters?.resolve(this.loginReply);
        this._startWaiters = null;
        this._afterLogin();
        const why = await lost;
        this._setState(this.running ? "offline" : "stopped", why);
      } catch (err) {
        if (err instanceof ClientError && ENDED.has(err.code)) {
          this._end(this.fatal || err);
          return;
        }
        this._setState("offline", err.message);
      }
      if (!loggedIn && this.transportKind === "auto") this._httpNext = !this._httpNext;
      this._detach("connection lost");
      if (!this.running) break;
      this.index += 1;                              // the next broker first: this one may be gone
      this.reconnects += 1;
      failures += 1;
      const base = Math.min(this.maxBackoffMs, this.minBackoffMs * 2 ** Math.min(failures - 1, 10));
      await sleep(base * (0.5 + Math.random()));    // jitter: clients of a dead broker spread out
    }
  }

  _attach(t) {
    this._transport = t;
    t.onframe = (bytes) => {
      let maps;
      try {
        maps = decodeFrame(bytes);
      } catch (err) {
        console.warn("imesh: undecodable frame dropped:", err.message);
        return;
      }
      for (const m of maps) this._dispatch(m);
    };
    t.onclose = (why) => {
      if (this._transport === t) {
        this._failPending(why);
        this._lost?.(why);
      }
    };
  }

  _detach(why) {
    clearTimeout(this._hbTimer);
    clearTimeout(this._presenceTimer);
    this._hbTimer = null;
    const t = this._transport;
    this._transport = null;
    this.sid = undefined;
    if (t) t.close();
    this._failPending(why);
  }

  _failPending(why) {
    for (const [rid, p] of this._pending) {
      clearTimeout(p.timer);
      p.reject(this.fatal || new ClientError("DISCONNECTED", why));
      this._pending.delete(rid);
    }
  }

  /** Drop the current connection (the manager moves to the next broker). */
  disconnect(why = "dropped by the client") {
    this._lost?.(why);
  }

  async _login() {
    for (;;) {
      try {
        const reply = await this._request({ t: "login", v: this.version, token: this.token,
                                            device: this.device, net: this.net });
        this.loginReply = reply;
        this.uin = reply.uin;
        this.sid = reply.sid;                       // protocol 2: echoed on every request
        this.interval = reply.hb;
        Object.assign(this.limits, reply.limits || {});
        this.assembler.lifetimeMs = this.limits.message_lifetime * 1000;
        return reply;
      } catch (err) {
        // a server of another version says which it speaks: use it if this client speaks it too
        const v = err.reply?.version;
        if (err.code === "BAD_VERSION" && (v === 1 || v === 2) && v !== this.version) {
          this.version = v;
          continue;
        }
        throw err;
      }
    }
  }

  _afterLogin() {
    this.heartbeat().catch(() => {});
    for (const channel of this.windows.last.keys()) this._syncSoon(channel);
    this._resumeMailbox();
    if (this._presence.size) this._rewatch();
  }

  // Send again (same ctime) what the mailbox still holds: after a login, and after every
  // heartbeat ack -- an owner that was down may be back while the connection never dropped.
  _resumeMailbox() {
    const oldest = Date.now() * 1000 - this.limits.message_lifetime * 1e6;
    for (const entry of this.mailbox.pending()) {
      if (entry.ctime < oldest) this.mailbox.remove(entry.key);      // past its lifetime: gone
      else if (!this._inflight.has(entry.key)) this._deliverEntry(entry).catch(() => {});
    }
  }

  // --- requests ---------------------------------------------------------------
  _request(msg, timeoutMs = this.timeoutMs) {
    const t = this._transport;
    if (!t) return Promise.reject(new ClientError("DISCONNECTED", "not connected"));
    const rid = ++this._rid;
    const frame = { ...msg, rid };
    if (this.sid !== undefined && msg.t !== "login") frame.sid = this.sid;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._pending.delete(rid);
        reject(new ClientError("TIMEOUT", `no reply to '${msg.t}' in ${timeoutMs} ms`));
      }, timeoutMs);
      this._pending.set(rid, { resolve, reject, timer });
      try {
        t.send(encodeFrame(frame));
      } catch (err) {
        clearTimeout(timer);
        this._pending.delete(rid);
        reject(new ClientError("DISCONNECTED", err.message));
      }
    }).then((reply) => {
      if (reply.t === "err") throw new ClientError(reply.code, reply.msg, reply);
      return reply;
    });
  }

  _whenOnline(timeoutMs) {
    if (this.fatal) return Promise.reject(this.fatal);
    if (this.state === "online") return Promise.resolve();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => { off(); reject(new ClientError("TIMEOUT", "offline")); }, timeoutMs);
      const off = this.on("state", ({ state }) => {
        if (state === "online") { clearTimeout(timer); off(); resolve(); }
        if (this.fatal) { clearTimeout(timer); off(); reject(this.fatal); }
      });
    });
  }

  /** One request once online; logs in again once if the broker forgot the session. */
  async request(msg, timeoutMs = this.timeoutMs) {
    await this._whenOnline(timeoutMs);
    try {
      return await this._request(msg, timeoutMs);
    } catch (err) {
      if (err.code !== "NOT_LOGGED_IN") throw err;
      if (ENDED_BY_OTHERS.has(err.reply?.reason)) {  // the kick notice was lost: the same verdict
        this._kicked({ reason: err.reply.reason, msg: err.reply.msg });
        throw this.fatal;
      }
    }
    this._relogin ||= this._login().finally(() => { this._relogin = null; });
    await this._relogin;
    return this._request(msg, timeoutMs);
  }

  _dispatch(msg) {
    if (msg.t === "msg") {
      if (!this.dropPush || !this.dropPush(msg)) this._accept(msg);
    } else if (msg.t === "kicked") {
      this._kicked(msg);
    } else if (msg.rid === undefined && PUSHES.has(msg.t)) {
      this._emit(msg.t, msg);
    } else {
      const p = this._pending.get(msg.rid);
      if (p) {
        this._pending.delete(msg.rid);
        clearTimeout(p.timer);
        p.resolve(msg);
      }
    }
  }

  _kicked(msg) {
    this._emit("kicked", msg);
    const reason = msg.reason || "replaced";
    if (ENDED_BY_OTHERS.has(reason)) {              // a newer login (protocol 1 gave no reason), or
      // the app's backend kicked the user (HTTP API): do not fight it -- a login with the same
      // token would undo the kick; the client is over and says so to every send; "expired",
      // "too_slow", ... just log in again
      this.running = false;
      const why = reason === "replaced" ? "replaced: another login of this user and device took over"
        : "kicked: the server ended this user's sessions";
      this.fatal = new ClientError("KICKED", `${why}${msg.msg ? ` (${msg.msg})` : ""}`, msg);
    }
    this._lost?.(`kicked (${reason}): ${msg.msg || ""}`);
  }

  // --- receiving ----------------------------------------------------------------
  _deliver(msgs) {
    for (const m of msgs) {
      const whole = this.assembler.add(m);
      // edit and delete events advance the window like messages but are their own events
      if (whole) this._emit(whole.kind === "edit" || whole.kind === "delete" ? whole.kind : "message", whole);
    }
  }

  _accept(msg) {
    const [ready, gap] = this.windows.accept(msg);
    this._deliver(ready);
    if (gap) this._syncSoon(msg.channel);
  }

  /** Follow a channel from `since` (0: everything stored): syncs what is stored after it. */
  watch(channel, since = 0) {
    this.windows.watch(channel, since);
    if (this.state === "online") this._syncSoon(channel);
  }

  _syncSoon(channel) {
    if (this._syncing.has(channel)) return;
    this._syncing.add(channel);
    this._catchUp(channel).finally(() => this._syncing.delete(channel));
  }

  async _catchUp(channel) {
    try {
      for (;;) {
        this.syncs += 1;
        const page = await this.request({ t: "sync", channel, after: this.windows.last.get(channel) ?? 0 });
        this._deliver(this.windows.jump(channel, page.first));
        for (const m of page.msgs) this._deliver(this.windows.accept(m)[0]);
        // what the page covers: ids in it that are not in msgs are gone for good (protocol 2
        // says `upto`; a protocol-1 page without `more` covers everything up to `last`)
        const upto = page.upto ?? (page.more ? Math.max(0, ...page.msgs.map((m) => m.id)) : page.last);
        this._deliver(this.windows.jump(channel, upto + 1));
        this.mailbox.saveWindows(this.windows.snapshot());
        if (!page.more) return;
      }
    } catch (err) {
      this._emit("warning", `sync of ${channel} deferred to the next heartbeat: ${err.message}`);
    }
  }

  // --- heartbeats ---------------------------------------------------------------
  async heartbeat() {
    const t = this._transport;
    clearTimeout(this._hbTimer);
    let ack;
    try {
      ack = await this.request({ t: "hb", net: this.net, channels: this.windows.snapshot() });
    } catch (err) {
      if (this._transport === t && t) this._lost?.(`heartbeat failed: ${err.message}`);
      throw err;
    }
    this.interval = ack.interval;
    for (const [channel, first] of Object.entries(ack.first || {})) this._deliver(this.windows.jump(channel, first));
    for (const [channel, upto] of Object.entries(ack.upto || {})) this._deliver(this.windows.jump(channel, upto + 1));
    for (const [channel, head] of Object.entries(ack.heads || {})) {
      if (this.windows.behind(channel, head)) this._syncSoon(channel);
    }
    for (const channel of ack.more || []) this._syncSoon(channel);
    this.assembler.expire();
    this.mailbox.saveWindows(this.windows.snapshot());
    this._resumeMailbox();
    if (this._transport === t) this._hbTimer = setTimeout(() => this.heartbeat().catch(() => {}), this.interval * 1000);
    return ack;
  }

  // --- sending ------------------------------------------------------------------
  /** Send; resolves with the message id once stored (a long text: the last fragment's id). */
  async send(channel, text) {
    if (this.fatal) throw this.fatal;               // over: refused before the mailbox
    if (utf8Length(text) <= this.limits.max_text) return this._deliverEntry(this._newEntry(channel, text));
    const pieces = splitUtf8(text, this.limits.max_text);
    if (pieces.length > this.limits.max_fragments) {
      throw new ClientError("TOO_LONG", `text needs ${pieces.length} fragments; the limit is ${this.limits.max_fragments}`);
    }
    const group = newGroupId();
    let id;
    for (const [index, piece] of pieces.entries()) {
      id = await this._deliverEntry(this._newEntry(channel, piece, [group, index, pieces.length]));
    }
    return id;
  }

  _newEntry(channel, text, frag, op = null) {
    const entry = { key: `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`,
                    channel, text, ctime: this.clock.next(), ...(frag ? { frag } : {}), ...(op || {}) };
    this.mailbox.put(entry);                         // before it leaves: a crash still retries it
    this._emit("pending", entry);
    return entry;
  }

  async _deliverEntry(entry) {
    this._inflight.add(entry.key);
    try {
      let last;
      for (let attempt = 0; attempt <= this.retries; attempt++) {
        try {
          const ack = await this.request(requestOf(entry));
          this.mailbox.remove(entry.key);
          this._emit("sent", { ...entry, id: ack.id });
          return ack.id;
        } catch (err) {
          if (err === this.fatal) throw err;        // the client ended: the entry stays for a restart
          if (!RETRYABLE.has(err.code)) {           // refused: guaranteed not stored
            this.mailbox.remove(entry.key);
            this._emit("failed", { ...entry, code: err.code, error: err.message });
            throw err;
          }
          last = err;
        }
      }
      // unknown outcome: it stays in the mailbox and is retried (same ctime) after the next
      // login or heartbeat
      this._emit("unsure", { ...entry, error: last.message });
      throw new ClientError("BUSY", `system busy: no ack after ${this.retries + 1} attempts (${last.message})`);
    } finally {
      this._inflight.delete(entry.key);
    }
  }

  async sync(channel, after) {
    return this.request({ t: "sync", channel, after });
  }

  // --- conversations (docs/protocol.md "Conversations") ------------------------------
  /** One page of my channels, most recently active first: {items, next?, partial?}. */
  async channels({ after, limit } = {}) {
    return this.request({ t: "channels", ...(after ? { after } : {}), ...(limit ? { limit } : {}) });
  }

  /** Every page of my channels: {items, partial} (partial: a logic node did not answer). */
  async allChannels(limit = 100) {
    const items = [];
    const seen = new Set();
    let partial = false;
    let after;
    do {
      const page = await this.channels({ after, limit });
      for (const it of page.items) if (!seen.has(it.channel)) { seen.add(it.channel); items.push(it); }
      partial ||= Boolean(page.partial);
      after = page.next;
    } while (after);
    return { items, partial };
  }

  /** I have read `channel` up to `id`: resolves with the cursor now (it never moves back). */
  async read(channel, id) {
    return (await this.request({ t: "read", channel, id })).id;
  }

  /** The other members who have read `channel` up to `id`: [uin]. */
  async receipts(channel, id) {
    return (await this.request({ t: "receipts", channel, id })).read_by;
  }

  /** Older messages: {msgs (oldest first, edits applied, deletes as tombstones), more, first}. */
  async history(channel, { before, limit } = {}) {
    return this.request({ t: "history", channel, ...(before ? { before } : {}), ...(limit ? { limit } : {}) });
  }

  /** Replace the text of my message `id`: resolves with the edit event's id.  Goes through the
   *  mailbox like a send (retried with the same ctime, applied once). */
  async edit(channel, id, text) {
    if (this.fatal) throw this.fatal;
    if (utf8Length(text) > this.limits.max_text) {
      throw new ClientError("TOO_LONG", `an edit is one frame: at most ${this.limits.max_text} bytes`);
    }
    return this._deliverEntry(this._newEntry(channel, text, null, { op: "edit", ref: id }));
  }

  /** Delete message `id` (mine; in a group also as owner or admin): resolves with the event's id. */
  async delete(channel, id) {
    if (this.fatal) throw this.fatal;
    return this._deliverEntry(this._newEntry(channel, "", null, { op: "delete", ref: id }));
  }

  /** Tell the other online members I am typing (call every few seconds while typing). */
  async typing(channel) {
    return this.request({ t: "typing", channel });
  }

  /** Who in `channel` is online: resolves with [uin]; then `presence` events while watched.
   *  The client renews the watch before `limits.watch_ttl` and after every login (each renewal
   *  emits a `watch` event with the full list). */
  async watchPresence(channel) {
    this._presence.add(channel);
    const reply = await this.request({ t: "watch", channel });
    this._schedulePresence();
    return reply.online;
  }

  async unwatchPresence(channel) {
    this._presence.delete(channel);
    await this.request({ t: "unwatch", channel });
  }

  _schedulePresence() {
    clearTimeout(this._presenceTimer);
    const ttl = this.limits.watch_ttl || 300;
    if (this._presence.size) this._presenceTimer = setTimeout(() => this._rewatch(), ttl * 500);
  }

  _rewatch() {
    for (const channel of this._presence) {
      this.request({ t: "watch", channel })
        .then((reply) => this._emit("watch", { channel, online: reply.online }))
        .catch((err) => this._emit("warning", `watch of ${channel} failed: ${err.message}`));
    }
    this._schedulePresence();
  }

  /** The DM channel of me and `uin` (the same one for both; made on first use):
   *  {channel, kind, created, members}. */
  async createDm(uin) {
    return await this._once({ t: "create", kind: "dm", with: uin });
  }

  /** A new group with me as owner: {channel, kind, created, title?, members}. */
  async createGroup({ name, members = [] } = {}) {
    return await this._once({ t: "create", kind: "group", ...(name ? { name } : {}), members });
  }

  /** Add users to my group (owner or admin): {channel, uins (added now), members (count)}. */
  async invite(channel, uins) { return await this._once({ t: "invite", channel, uins }); }

  /** Take users out of my group: {channel, uins (removed now), members (count)}. */
  async remove(channel, uins) { return await this._once({ t: "remove", channel, uins }); }

  async leave(channel) { return this._once({ t: "leave", channel }); }

  /** Give `uin` a role in my group (`owner` hands ownership over; I become admin). */
  async setRole(channel, uin, role) { return this._once({ t: "role", channel, uin, role }); }

  /** A request that changes state once: one ctime for every try, retried while the outcome is
   *  unknown (the server answers a repeat with the original result). */
  async _once(msg) {
    if (this.fatal) throw this.fatal;
    const frame = { ...msg, ctime: this.clock.next() };
    let last;
    for (let attempt = 0; attempt <= this.retries; attempt++) {
      try {
        return await this.request(frame);
      } catch (err) {
        if (err === this.fatal || !RETRYABLE.has(err.code)) throw err;
        last = err;
      }
    }
    throw new ClientError("BUSY", `system busy: no answer to '${msg.t}' after ${this.retries + 1} attempts (${last.message})`);
  }

  async stop({ logout = true } = {}) {
    this.running = false;
    if (logout && this.state === "online") {
      try { await this._request({ t: "logout" }, 1000); } catch { /* gone anyway */ }
    }
    this._lost?.("stopped");
    if (!this.fatal) this._end(new ClientError("STOPPED", "stop() was called"));
  }
}

export { MemoryMailbox, StorageMailbox, FileMailbox } from "./mailbox.js";
export { Windows } from "./windows.js";
export { ChannelList, Receipts, Timeline, Typing, channelLabel, dmPeer, timeLabel, typingLine }
  from "./conversation.js";
export { splitUtf8, Assembler } from "./fragments.js";
