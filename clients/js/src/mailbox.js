// Where unacknowledged sends wait: a send is put here before it leaves and removed when the
// server acks or refuses it, so a reload, a crash or a reconnect retries it with the SAME ctime
// (the server acks a retry with the original id: never stored twice).  The client's windows are
// kept here too, so a restarted client syncs what it missed instead of starting over.
export class MemoryMailbox {
  constructor() {
    this.items = new Map();
    this.windows = {};
  }
  put(entry) { this.items.set(entry.key, entry); }
  remove(key) { this.items.delete(key); }
  pending() { return [...this.items.values()].sort((a, b) => a.ctime - b.ctime); }
  saveWindows(windows) { this.windows = { ...windows }; }
  loadWindows() { return { ...this.windows }; }
}

/** A mailbox in a Storage (window.localStorage in a browser) under a prefix. */
export class StorageMailbox {
  constructor(storage, prefix = "imesh") {
    this.storage = storage;
    this.prefix = prefix;
  }
  _read(name, fallback) {
    try {
      return JSON.parse(this.storage.getItem(`${this.prefix}:${name}`)) ?? fallback;
    } catch {
      return fallback;
    }
  }
  _write(name, value) { this.storage.setItem(`${this.prefix}:${name}`, JSON.stringify(value)); }
  put(entry) { this._write("outbox", { ...this._read("outbox", {}), [entry.key]: entry }); }
  remove(key) {
    const items = this._read("outbox", {});
    delete items[key];
    this._write("outbox", items);
  }
  pending() { return Object.values(this._read("outbox", {})).sort((a, b) => a.ctime - b.ctime); }
  saveWindows(windows) { this._write("windows", windows); }
  loadWindows() { return this._read("windows", {}); }
}

/** Node: a mailbox in a JSON file, rewritten (write + rename) on every change. */
export class FileMailbox {
  constructor(fs, path) {
    this.fs = fs;                 // pass `await import("node:fs")`: keeps this module browser-safe
    this.path = path;
    try {
      this.state = JSON.parse(fs.readFileSync(path, "utf8"));
    } catch {
      this.state = { outbox: {}, windows: {} };
    }
  }
  _save() {
    this.fs.writeFileSync(`${this.path}.tmp`, JSON.stringify(this.state));
    this.fs.renameSync(`${this.path}.tmp`, this.path);
  }
  put(entry) { this.state.outbox[entry.key] = entry; this._save(); }
  remove(key) { delete this.state.outbox[key]; this._save(); }
  pending() { return Object.values(this.state.outbox).sort((a, b) => a.ctime - b.ctime); }
  saveWindows(windows) { this.state.windows = { ...windows }; this._save(); }
  loadWindows() { return { ...this.state.windows }; }
}
