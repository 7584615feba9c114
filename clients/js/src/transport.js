// The two ways to reach a broker's web endpoint.  Both carry the same frames (bytes) and report
// the same three things: open, a frame, closed.  WebSocket first; the HTTP long-poll fallback
// (POST /h/send, GET /h/poll) for networks that block WebSockets.

const NO_WEBSOCKET = "no WebSocket in this runtime (Node 20: run node with --experimental-websocket; "
  + "Node 22 and browsers have one; or pass a WHATWG WebSocket constructor as the WebSocket option)";
const NO_FETCH = "no fetch in this runtime, which the HTTP long-poll transport needs (Node >= 18 and browsers have it)";

/** What this runtime lacks for a transport kind ("ws", "http" or "auto"): a sentence saying so,
 *  or null when it can be used.  Checked before a connection is tried, so a missing global is a
 *  clear rejection of start() and never an exception thrown from inside the connection loop. */
export function missingTransport(kind, WebSocketImpl = undefined) {
  const ws = typeof (WebSocketImpl ?? globalThis.WebSocket) === "function";
  const http = typeof globalThis.fetch === "function";
  if (kind === "ws") return ws ? null : `transport "ws": ${NO_WEBSOCKET}`;
  if (kind === "http") return http ? null : `transport "http": ${NO_FETCH}`;
  if (kind === "auto") return ws || http ? null : `transport "auto": ${NO_WEBSOCKET}, and ${NO_FETCH}`;
  return `unknown transport ${JSON.stringify(kind)}: use "ws", "http" or "auto"`;
}

/** One WebSocket to ws://host:port/ws: the global WebSocket of browsers and Node 22, of Node 20
 *  with --experimental-websocket, or any WHATWG-compatible constructor passed in. */
export class WsTransport {
  constructor(url, WebSocketImpl = globalThis.WebSocket) {
    if (typeof WebSocketImpl !== "function") throw new Error(NO_WEBSOCKET);
    this.WebSocket = WebSocketImpl;
    this.url = url.endsWith("/ws") ? url : `${url.replace(/\/$/, "")}/ws`;
    this.onframe = () => {};
    this.onclose = () => {};
    this.ws = null;
  }

  open(timeoutMs) {
    return new Promise((resolve, reject) => {
      const ws = new this.WebSocket(this.url);
      ws.binaryType = "arraybuffer";
      this.ws = ws;
      let opened = false;
      const timer = setTimeout(() => {
        if (!opened) { ws.close(); reject(new Error(`no WebSocket to ${this.url} in ${timeoutMs} ms`)); }
      }, timeoutMs);
      ws.onopen = () => { opened = true; clearTimeout(timer); resolve(); };
      ws.onmessage = (ev) => {
        if (ev.data instanceof ArrayBuffer) this.onframe(new Uint8Array(ev.data));
      };
      ws.onerror = () => {};
      ws.onclose = (ev) => {
        clearTimeout(timer);
        if (!opened) reject(new Error(`WebSocket to ${this.url} failed`));
        else this.onclose(`closed (${ev.code}${ev.reason ? ` ${ev.reason}` : ""})`);
      };
    });
  }

  send(bytes) {
    if (this.ws && this.ws.readyState === 1) this.ws.send(bytes);
    else throw new Error("not connected");
  }

  close() {
    if (this.ws) {
      this.ws.onclose = () => {};
      this.ws.close();
      this.ws = null;
    }
  }
}

/** HTTP fallback: a channel opened with POST /h/open, frames POSTed, pushes long-polled. */
export class HttpTransport {
  constructor(url) {
    this.base = url.replace(/^ws/, "http").replace(/\/ws$/, "").replace(/\/$/, "");
    this.onframe = () => {};
    this.onclose = () => {};
    this.channel = null;
    this.closed = false;
  }

  async open(timeoutMs) {
    const res = await fetch(`${this.base}/h/open`, { method: "POST", signal: AbortSignal.timeout(timeoutMs) });
    if (!res.ok) throw new Error(`HTTP channel refused: ${res.status} ${await res.text()}`);
    this.channel = (await res.json()).c;
    this._poll();
  }

  async _poll() {
    while (!this.closed) {
      let res;
      try {
        res = await fetch(`${this.base}/h/poll?c=${this.channel}`, { signal: AbortSignal.timeout(40000) });
      } catch (err) {
        return this._end(`poll failed: ${err.message}`);
      }
      if (res.status === 200) this.onframe(new Uint8Array(await res.arrayBuffer()));
      else if (res.status !== 204) return this._end(`channel closed: ${res.status} ${await res.text()}`);
    }
  }

  _end(why) {
    if (!this.closed) {
      this.closed = true;
      this.onclose(why);
    }
  }

  send(bytes) {
    if (this.closed) throw new Error("not connected");
    fetch(`${this.base}/h/send?c=${this.channel}`, {
      method: "POST", body: bytes, headers: { "content-type": "application/msgpack" },
    }).then((res) => {
      if (res.status !== 202) this._end(`send refused: ${res.status}`);
    }, (err) => this._end(`send failed: ${err.message}`));
  }

  close() {
    if (!this.closed) {
      this.closed = true;
      fetch(`${this.base}/h/close?c=${this.channel}`, { method: "POST" }).catch(() => {});
    }
  }
}
