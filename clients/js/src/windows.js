// Receive-side bookkeeping (a port of nodes/client/windows.py): per channel, the newest contiguous id
// held.  A message is handed on only when it is the next id of its channel; later ids wait until
// the gap is filled by a sync or the SERVER says the missing ids are gone (sync/hb `first` or
// `upto`).  Ids at or below the window, or already waiting, are duplicates and dropped.
export class Windows {
  constructor(initial = {}) {
    this.last = new Map(Object.entries(initial));   // channel -> newest contiguous id held
    this.held = new Map();                           // channel -> Map(id -> msg) beyond a gap
    this.duplicates = 0;
  }

  watch(channel, since) {
    this.last.set(channel, since);
    this.held.delete(channel);
  }

  /** One message; returns [messages now deliverable in order, gap open?]. */
  accept(msg) {
    const { channel, id } = msg;
    const last = this.last.get(channel);
    if (last === undefined) {
      this.last.set(channel, id);
      return [[msg], false];
    }
    const held = this.held.get(channel);
    if (id <= last || (held && held.has(id))) {
      this.duplicates += 1;
      return [[], Boolean(held && held.size)];
    }
    if (id !== last + 1) {
      if (!held) this.held.set(channel, new Map([[id, msg]]));
      else held.set(id, msg);
      return [[], true];
    }
    this.last.set(channel, id);
    const ready = [msg, ...this._flush(channel)];
    return [ready, Boolean(this.held.get(channel)?.size)];
  }

  /** The server says ids below `first` are gone for good: move the window up to first - 1. */
  jump(channel, first) {
    const last = this.last.get(channel);
    if (last === undefined || last >= first - 1) return [];
    const held = this.held.get(channel) || new Map();
    const ready = [...held.keys()].filter((i) => i < first).sort((a, b) => a - b).map((i) => {
      const m = held.get(i);
      held.delete(i);
      return m;
    });
    this.last.set(channel, first - 1);
    return [...ready, ...this._flush(channel)];
  }

  behind(channel, head) {
    const last = this.last.get(channel);
    return last !== undefined && last < head;
  }

  snapshot() {
    return Object.fromEntries(this.last);
  }

  _flush(channel) {
    const held = this.held.get(channel);
    const ready = [];
    while (held && held.size) {
      const next = this.last.get(channel) + 1;
      const m = held.get(next);
      if (m === undefined) break;
      held.delete(next);
      ready.push(m);
      this.last.set(channel, next);
    }
    if (held && !held.size) this.held.delete(channel);
    return ready;
  }
}
