"""The client's outgoing mailbox: every message is on disk before it is sent.

A send used to live only in the coroutine that sent it: when that ended in
"system busy" the message was gone from the client, even when the server
had stored it after all (issue 11, observation 5).  Now each message is
written here first, with the client time(s) it will carry, and stays until
the server settles it:

- **acked**: stored, id known -> removed;
- **refused**: the server says it was not stored (a code in ``REFUSED``) -> removed;
- **expired**: older than the message lifetime -> removed and reported,
  never sent again (a retry that late could only be STALE or a duplicate);
- **cancelled** by the application -> removed (if it was already stored,
  it stays stored: cancelling only stops the retries).

Everything else (timeouts, UNAVAILABLE, BUSY, INTERNAL, STORAGE_FULL, no connection) is
*unknown*: the entry stays and is sent again with the same client time
after a reconnect or a restart; the server acks such a retry with the
original id, so it is stored once.  A long text is one entry with one
client time per fragment and its fragment group id, all reused on resend.
An edit or a delete of a stored message is an entry too (``kind`` "edit" or
"delete", ``ref``: the message's id): it is a stored event with its own id, sent
and settled exactly like a message.

sqlite (stdlib) in WAL mode, each write committed before the send goes
out: an entry survives a crash of the process (with ``synchronous=NORMAL``
a power cut may lose the newest ones; ~45 µs per message for add + remove
on this machine).  ``":memory:"`` when the application wants no file.
Rows are per (uin, device): one file may serve several accounts.
"""
from __future__ import annotations

import dataclasses
import json
import sqlite3
import time

REFUSED = frozenset({"BAD_FRAME", "BAD_TYPE", "BAD_FIELD", "BAD_CHANNEL", "NO_CHANNEL", "NOT_MEMBER",
                     "TOO_LONG", "EMPTY_TEXT", "BAD_FRAGMENT", "RATE_LIMITED", "STALE",
                     "NOT_LOGGED_IN", "AUTH_FAILED", "TOKEN_EXPIRED", "TOO_MANY",
                     "FORBIDDEN", "NO_MESSAGE", "TOO_LATE"})        # the last three: edit/delete
UNKNOWN = frozenset({"UNAVAILABLE", "BUSY", "INTERNAL", "STORAGE_FULL", "TIMEOUT"})   # may be stored

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    uin      INTEGER NOT NULL,
    device   INTEGER NOT NULL,
    channel  TEXT NOT NULL,
    text     TEXT NOT NULL,
    ctimes   TEXT NOT NULL,          -- JSON list: one client time per piece (one for a short text)
    grp      INTEGER,                -- fragment group id, NULL for a short text
    created  REAL NOT NULL,          -- wall clock seconds when the app sent it
    tries    INTEGER NOT NULL DEFAULT 0,
    error    TEXT,                   -- last unknown outcome, for display
    kind     TEXT,                   -- NULL: a message; "edit" / "delete": an event on message ref
    ref      INTEGER
)
"""
ADDED = (("kind", "TEXT"), ("ref", "INTEGER"))    # columns newer than the first mailbox files


@dataclasses.dataclass
class Entry:
    seq: int
    uin: int
    device: int
    channel: str
    text: str
    ctimes: list
    group: int | None
    created: float
    tries: int = 0
    error: str | None = None
    kind: str | None = None          # None: a message; "edit" / "delete" of message ``ref``
    ref: int | None = None

    @property
    def ctime(self) -> int:
        """The client time of the message (its last piece, like its id)."""
        return self.ctimes[-1]


class Mailbox:
    def __init__(self, path: str = ":memory:"):
        self.path = path
        self.db = sqlite3.connect(path, isolation_level=None)     # autocommit: each write is durable
        if path != ":memory:":
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute(SCHEMA)
        have = {row[1] for row in self.db.execute("PRAGMA table_info(outbox)")}
        for name, sql_type in ADDED:               # a mailbox written by an older client
            if name not in have:
                self.db.execute(f"ALTER TABLE outbox ADD COLUMN {name} {sql_type}")

    def add(self, uin: int, device: int, channel: str, text: str, ctimes: list,
            group: int | None = None, created: float | None = None, kind: str | None = None,
            ref: int | None = None) -> Entry:
        """Write a message (or an edit/delete event: ``kind``, ``ref``) before it is sent; returns its entry."""
        created = time.time() if created is None else created
        cur = self.db.execute("INSERT INTO outbox (uin, device, channel, text, ctimes, grp, created, kind, ref) "
                              "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                              (uin, device, channel, text, json.dumps(ctimes), group, created, kind, ref))
        assert cur.lastrowid is not None             # an INSERT always has one
        return Entry(cur.lastrowid, uin, device, channel, text, list(ctimes), group, created, kind=kind, ref=ref)

    def pending(self, uin: int | None = None, device: int | None = None) -> list[Entry]:
        """Unsettled entries, oldest first (of one (uin, device) when given)."""
        sql: str = "SELECT * FROM outbox"
        args: tuple = ()
        if uin is not None:
            sql, args = sql + " WHERE uin = ? AND device = ?", (uin, device or 0)
        return [self._entry(row) for row in self.db.execute(sql + " ORDER BY seq", args)]

    def get(self, seq: int) -> Entry | None:
        row = self.db.execute("SELECT * FROM outbox WHERE seq = ?", (seq,)).fetchone()
        return self._entry(row) if row else None

    def tried(self, seq: int, error: str) -> int:
        """One more unsettled try; returns the count."""
        self.db.execute("UPDATE outbox SET tries = tries + 1, error = ? WHERE seq = ?", (error, seq))
        row = self.db.execute("SELECT tries FROM outbox WHERE seq = ?", (seq,)).fetchone()
        return row[0] if row else 0

    def remove(self, seq: int) -> bool:
        """Settled (acked, refused, expired) or cancelled: gone from the mailbox."""
        return self.db.execute("DELETE FROM outbox WHERE seq = ?", (seq,)).rowcount > 0

    def newest_ctime(self, uin: int, device: int) -> int:
        """The highest client time waiting here, so a restarted client never reuses one."""
        best = 0
        for (ctimes,) in self.db.execute("SELECT ctimes FROM outbox WHERE uin = ? AND device = ?",
                                         (uin, device)):
            best = max(best, *json.loads(ctimes))
        return best

    def close(self) -> None:
        self.db.close()

    @staticmethod
    def _entry(row) -> Entry:
        seq, uin, device, channel, text, ctimes, group, created, tries, error, kind, ref = row
        return Entry(seq, uin, device, channel, text, json.loads(ctimes), group, created, tries, error, kind, ref)
