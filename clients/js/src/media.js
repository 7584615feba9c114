// Files through a relay, from a browser or Node: the relay's own protocol (login, up_begin,
// up_chunk, up_end, down_info, down; docs/protocol.md "Media") over a WebSocket to the relay's
// `ws` endpoint -- the same frames, limits and membership checks as the Python MediaClient
// (nodes/client/media.py).  The relays' WebSocket URLs come from a broker's GET /info
// ("relays": {relay id: ws url}).  A file travels in a normal message whose text carries its
// ref: fileText()/parseFileText() write and read that text ("[file] NAME (SIZE bytes) REF",
// as `bin/chat upload` writes it; "[file] NAME REF" is read too).
import { ClientError, PROTOCOL_VERSION } from "./client.js";
import { decodeFrame, encodeFrame } from "./codec.js";

export const REF_PREFIX = "imesh-media";
const DEFAULT_CHUNK = 256 * 1024;
const REPAIR_ROUNDS = 8;

/** {relay, media} of a media ref ("imesh-media:RELAY:16 hex digits"); null if it is not one. */
export function parseRef(ref) {
  const m = /^imesh-media:([^:\s]+):([0-9a-f]{16})$/.exec(String(ref));
  return m ? { relay: m[1], media: m[2] } : null;
}

/** The text of a message that carries a file (the form `bin/chat upload` sends). */
export function fileText(name, ref, size) {
  const clean = String(name).replace(/\s+/g, " ").trim() || "file";
  return `[file] ${clean}${size === undefined ? "" : ` (${size} bytes)`} ${ref}`;
}

/** {name, ref, size?} of a file message's text, or null for any other text. */
export function parseFileText(text) {
  const m = /^\[file\] (.+?)(?: \((\d+) bytes\))? (imesh-media:[^:\s]+:[0-9a-f]{16})$/.exec(String(text ?? ""));
  if (!m) return null;
  return m[2] === undefined ? { name: m[1], ref: m[3] } : { name: m[1], ref: m[3], size: Number(m[2]) };
}

/** Lowercase hex SHA-256 through WebCrypto (browsers in a secure context -- https or
 *  localhost -- and Node >= 18). */
export async function sha256Hex(bytes) {
  const subtle = globalThis.crypto?.subtle;
  if (!subtle) {
    throw new ClientError("NO_CRYPTO", "no WebCrypto here (a page served over plain http from a host other "
      + "than localhost has none): serve the page over https to send files");
  }
  const digest = new Uint8Array(await subtle.digest("SHA-256", bytes));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Run make(i) for each index with at most `window` in flight; results in index order. */
async function each(indexes, make, window) {
  const out = new Array(indexes.length);
  let next = 0;
  async function worker() {
    while (next < indexes.length) {
      const k = next++;
      out[k] = await make(indexes[k]);
    }
  }
  await Promise.all(Array.from({ length: Math.min(window, indexes.length) }, worker));
  return out;
}

/** One logged-in WebSocket to one relay: requests matched to replies by rid. */
class RelayLink {
  constructor(url, opts) {
    this.url = url.endsWith("/ws") ? url : `${url.replace(/\/$/, "")}/ws`;
    this.opts = opts;
    this.ws = null;
    this.sid = undefined;
    this.rid = 0;
    this.pending = new Map();      // rid -> {resolve, reject, timer}
    this.ready = null;             // the promise of the current connect + login
  }

  connect() {
    this.ready ||= this._open().catch((err) => { this.ready = null; throw err; });
    return this.ready;
  }

  _open() {
    const WS = this.opts.WebSocket ?? globalThis.WebSocket;
    if (typeof WS !== "function") return Promise.reject(new ClientError("NO_TRANSPORT", "no WebSocket in this runtime"));
    return new Promise((resolve, reject) => {
      const ws = new WS(this.url);
      ws.binaryType = "arraybuffer";
      const timer = setTimeout(() => { ws.close(); reject(new ClientError("UNAVAILABLE", `no WebSocket to ${this.url}`)); },
        this.opts.timeoutMs);
      ws.onopen = () => { clearTimeout(timer); this.ws = ws; resolve(); };
      ws.onerror = () => {};
      ws.onmessage = (ev) => {
        if (!(ev.data instanceof ArrayBuffer)) return;
        for (const msg of decodeFrame(new Uint8Array(ev.data))) this._reply(msg);
      };
      ws.onclose = (ev) => {
        clearTimeout(timer);
        if (this.ws !== ws) { reject(new ClientError("UNAVAILABLE", `WebSocket to ${this.url} failed`)); return; }
        this.ws = null;
        this.ready = null;         // the next request connects and logs in again
        this.sid = undefined;
        for (const p of this.pending.values()) {
          clearTimeout(p.timer);
          p.reject(new ClientError("UNAVAILABLE", `relay connection closed (${ev.code}); retry`));
        }
        this.pending.clear();
      };
    }).then(async () => {
      const reply = await this.request({ t: "login", v: PROTOCOL_VERSION, token: this.opts.token,
        device: this.opts.device, net: "wired" }, false);
      this.sid = reply.sid;
      return reply;
    });
  }

  _reply(msg) {
    const p = this.pending.get(msg.rid);
    if (!p) return;                // a notice, or a reply after its timeout
    this.pending.delete(msg.rid);
    clearTimeout(p.timer);
    if (msg.t === "err") p.reject(new ClientError(msg.code, msg.msg, msg));
    else p.resolve(msg);
  }

  async request(msg, login = true) {
    if (login) await this.connect();
    const rid = ++this.rid;
    const frame = { ...msg, rid, ...(this.sid !== undefined && msg.t !== "login" ? { sid: this.sid } : {}) };
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(rid);
        reject(new ClientError("TIMEOUT", `no answer from the relay to ${msg.t} in ${this.opts.timeoutMs} ms`));
      }, this.opts.timeoutMs);
      this.pending.set(rid, { resolve, reject, timer });
      try {
        if (!this.ws || this.ws.readyState !== 1) throw new Error("not connected");
        this.ws.send(encodeFrame(frame));
      } catch {
        this.pending.delete(rid);
        clearTimeout(timer);
        reject(new ClientError("UNAVAILABLE", "not connected to the relay; retry"));
      }
    });
  }

  close() {
    const ws = this.ws;
    if (ws) {
      this.request({ t: "logout" }, false).catch(() => {});
      ws.close();
    }
  }
}

export class MediaClient {
  /** relays: {relay id: ws url} (a broker's GET /info "relays"); token: the user's login token.
   *  window: chunks in flight per transfer. */
  constructor({ relays, token, device = 0, window = 4, timeoutMs = 15000, WebSocket = undefined }) {
    this.relays = { ...relays };
    if (!Object.keys(this.relays).length) throw new ClientError("NO_MEDIA", "no relay with a WebSocket endpoint");
    this.opts = { token, device, timeoutMs, WebSocket };
    this.window = window;
    this.links = new Map();        // relay id -> RelayLink
  }

  _link(relay) {
    const url = this.relays[relay];
    if (!url) throw new ClientError("NO_MEDIA", `unknown relay ${JSON.stringify(relay)}`);
    if (!this.links.has(relay)) this.links.set(relay, new RelayLink(url, this.opts));
    return this.links.get(relay);
  }

  /** Upload bytes (Uint8Array, ArrayBuffer or Blob/File) to a relay for `channel`; resend what
   *  the relay reports missing; resolve the ref to send in a message.  onProgress(sent, total). */
  async upload(source, channel, { mime = "application/octet-stream", relay = undefined, onProgress = () => {} } = {}) {
    const data = source instanceof Uint8Array ? source
      : new Uint8Array(source instanceof ArrayBuffer ? source : await source.arrayBuffer());
    if (!data.length) throw new ClientError("BAD_CHUNK", "nothing to upload: the file is empty");
    const link = this._link(relay ?? Object.keys(this.relays)[0]);
    const login = await link.connect();
    const limits = login.limits ?? {};
    if (limits.max_file !== undefined && data.length > limits.max_file) {
      throw new ClientError("TOO_BIG", `the file has ${data.length} bytes; this relay takes up to ${limits.max_file}`);
    }
    const chunk = Math.min(DEFAULT_CHUNK, limits.max_chunk ?? DEFAULT_CHUNK);
    const chunks = Math.ceil(data.length / chunk);
    const begin = await link.request({ t: "up_begin", size: data.length, chunk_size: chunk, chunks,
      sha256: await sha256Hex(data), mime: mime || "application/octet-stream", channel });
    let sent = 0;
    const put = async (i) => {
      const part = data.subarray(i * chunk, (i + 1) * chunk);
      await link.request({ t: "up_chunk", media: begin.media, index: i, data: part });
      sent += part.length;
      onProgress(Math.min(sent, data.length), data.length);
    };
    let todo = Array.from({ length: chunks }, (_, i) => i);
    for (let round = 0; round < REPAIR_ROUNDS; round++) {
      await each(todo, put, this.window);
      const end = await link.request({ t: "up_end", media: begin.media });
      if (end.t === "up_done") return end.ref;
      todo = end.missing;
    }
    throw new ClientError("BUSY", `upload did not complete after ${REPAIR_ROUNDS} repair rounds`);
  }

  /** Fetch a file by its ref; its sha256 is checked.  Resolves {data, mime, size}. */
  async download(ref, { onProgress = () => {} } = {}) {
    const where = parseRef(ref);
    if (!where) throw new ClientError("NO_MEDIA", `not a media ref: ${JSON.stringify(ref)}`);
    const link = this._link(where.relay);
    const info = await link.request({ t: "down_info", ref });
    let got = 0;
    const parts = await each(Array.from({ length: info.chunks }, (_, i) => i), async (i) => {
      const reply = await link.request({ t: "down", media: info.media, index: i });
      got += reply.data.length;
      onProgress(got, info.size);
      return reply.data;
    }, this.window);
    const data = new Uint8Array(info.size);
    let at = 0;
    for (const p of parts) {
      if (at + p.length > data.length) throw new ClientError("SHA_MISMATCH", "the relay sent more bytes than the file has");
      data.set(p, at);
      at += p.length;
    }
    if (at !== info.size || (await sha256Hex(data)) !== info.sha256) {
      throw new ClientError("SHA_MISMATCH", "the downloaded file does not match its sha256");
    }
    return { data, mime: info.mime, size: info.size };
  }

  close() {
    for (const link of this.links.values()) link.close();
    this.links.clear();
  }
}
