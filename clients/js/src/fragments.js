// Long texts (a port of nodes/client/fragments.py): cut into pieces of at most `limit` bytes of UTF-8,
// only between characters; receivers join a group's pieces when all arrived.
const utf8 = new TextEncoder();
const fromUtf8 = new TextDecoder();

export function splitUtf8(text, limit) {
  if (limit < 4) throw new RangeError("limit must be at least 4 bytes");
  const data = utf8.encode(text);
  const pieces = [];
  let start = 0;
  while (start < data.length) {
    let end = Math.min(start + limit, data.length);
    while (end < data.length && (data[end] & 0xc0) === 0x80) end -= 1;   // continuation byte
    pieces.push(fromUtf8.decode(data.subarray(start, end)));
    start = end;
  }
  return pieces;
}

export function utf8Length(text) {
  return utf8.encode(text).length;
}

export function newGroupId() {
  return Math.floor(Math.random() * Number.MAX_SAFE_INTEGER);
}

export class Assembler {
  constructor(lifetimeMs = 86400e3) {
    this.lifetimeMs = lifetimeMs;
    this.groups = new Map();       // key -> {count, parts: Map(index -> msg), since}
  }

  /** A message in id order; the whole message to hand on, or null while incomplete. */
  add(msg, now = Date.now()) {
    if (!msg.frag) return msg;
    const [group, index, count] = msg.frag;
    const key = `${msg.channel}\u0000${msg.uin}\u0000${msg.device}\u0000${group}`;
    let state = this.groups.get(key);
    if (!state) this.groups.set(key, (state = { count, parts: new Map(), since: now }));
    if (state.count !== count) return null;
    state.parts.set(index, msg);
    if (state.parts.size < count) return null;
    this.groups.delete(key);
    const parts = [...Array(count).keys()].map((i) => state.parts.get(i));
    const { frag, ...whole } = parts[count - 1];
    whole.text = parts.map((p) => p.text).join("");
    whole.ids = parts.map((p) => p.id);
    return whole;
  }

  expire(now = Date.now()) {
    for (const [key, g] of this.groups) if (now - g.since > this.lifetimeMs) this.groups.delete(key);
  }
}
