"""Relay node: chunked media upload and download with missing-chunk repair.

Upload: ``up_begin`` declares size, chunk size, chunk count, sha256, mime
and the channel (the uploader must be a member) and gets a media id;
``up_chunk`` stores chunks in any order, several in flight, each acked only
once stored; ``up_end`` answers the missing indexes, or -- when all are
there and the assembled bytes match the sha256 -- the file's ``ref``.
Download (``down_info``, ``down``) is for members of the channel, and only
of finished files: a partial file is never served.  Files and unfinished
uploads expire with the message lifetime.

Clients: ZeroMQ on the ``client`` endpoint (nodes/client/media.py) and, when the topology
gives the relay a ``ws`` endpoint, WebSocket (browsers, clients/js/src/media.js) through the
brokers' web gateway (nodes/runtime/webgate.py): the same frames, dispatcher, sessions and
membership checks; a closed WebSocket ends its session.  Why a WebSocket of the relay's own
and not a proxy in the brokers: docs/design-notes.md ("Files from the web page").

Keys in the relay's RocksDB (media id = 8 random bytes):

- ``f`` + media  -> msgpack {uin, channel, size, chunk_size, chunks, sha256, mime, expiry, done}
- ``k`` + media + index:u32 -> chunk bytes
"""
from __future__ import annotations

import collections
import hashlib
import heapq
import logging
import os

import zmq

from nodes.cluster.placement import Placement
from nodes.protocol import auth, schema, wire
from nodes.protocol.mediaref import make_ref, parse_ref
from nodes.runtime import clock as expiry_clock
from nodes.runtime.node import Node
from nodes.runtime.rpc import Requests
from nodes.runtime.sessions import SessionTable
from nodes.runtime.webgate import PlainRoutes, WebGate, page_origins
from nodes.storage import store as keys

log = logging.getLogger(__name__)

MEMBER_TTL = 10.0                # seconds a membership answer from logic is reused
SWEEP_INTERVAL = 0.2
MISSING_LIST = 4096              # missing indexes listed in one up_end reply at most


def meta_key(media: bytes) -> bytes:
    return b"f" + media


def chunk_key(media: bytes, index: int) -> bytes:
    return b"k" + media + index.to_bytes(4, "big")


def media_id(text) -> bytes:
    try:
        raw = bytes.fromhex(text)
    except (TypeError, ValueError):
        raw = b""
    if len(raw) != 8:
        raise wire.ProtocolError(wire.Err.NO_MEDIA, f"not a media id: {text!r}")
    return raw


class Upload:
    """In-memory state of an unfinished upload (rebuilt from the store after a restart)."""

    __slots__ = ("media", "meta", "received", "hasher", "hashed")

    def __init__(self, media: bytes, meta: dict):
        self.media, self.meta = media, meta
        self.received: set[int] = set()
        self.hasher = hashlib.sha256()
        self.hashed = 0                       # chunks 0..hashed-1 are in the hasher

    def expected_size(self, index: int) -> int:
        m = self.meta
        return m["chunk_size"] if index < m["chunks"] - 1 else m["size"] - m["chunk_size"] * (m["chunks"] - 1)

    def missing(self) -> list[int]:
        return [i for i in range(self.meta["chunks"]) if i not in self.received]


class RelayCore:
    """Uploads, downloads and expiry; ``store`` is the relay's RocksDB."""

    def __init__(self, relay_id: str, store, limits: dict):
        self.id = relay_id
        self.store = store
        self.limits = limits
        self.lifetime = float(limits["message_lifetime"])
        self.uploads: dict[bytes, Upload] = {}        # media -> Upload (unfinished)
        self.expiries: list[tuple[float, bytes]] = []  # heap of (expiry, media)
        self.stats: collections.Counter[str] = collections.Counter()

    # --- start -----------------------------------------------------------------
    def load(self) -> None:
        for key, raw in self.store.scan(b"f"):
            media, meta = key[1:], keys.decode(raw)
            heapq.heappush(self.expiries, (meta["expiry"], media))
            if not meta["done"]:
                up = self.uploads[media] = Upload(media, meta)
                for ckey, _ in self.store.scan(b"k" + media):
                    up.received.add(int.from_bytes(ckey[-4:], "big"))

    # --- upload ----------------------------------------------------------------
    def open_by(self, uin: int) -> tuple[int, int]:
        ups = [u for u in self.uploads.values() if u.meta["uin"] == uin]
        return len(ups), sum(u.meta["size"] for u in ups)

    def begin(self, uin: int, msg: dict, now: float) -> dict:
        size, chunk_size, chunks = msg["size"], msg["chunk_size"], msg["chunks"]
        if size > self.limits["max_file"]:
            raise wire.ProtocolError(wire.Err.TOO_BIG, f"file of {size} bytes exceeds {self.limits['max_file']}",
                                     limit=self.limits["max_file"])
        if not 0 < chunk_size <= self.limits["max_chunk"]:
            raise wire.ProtocolError(wire.Err.TOO_BIG, f"chunk size must be 1..{self.limits['max_chunk']}",
                                     limit=self.limits["max_chunk"])
        if size == 0 or chunks != -(-size // chunk_size):
            raise wire.ProtocolError(wire.Err.BAD_CHUNK, f"{size} bytes in chunks of {chunk_size} make "
                                     f"{-(-size // chunk_size)} chunks, not {chunks}")
        count, declared = self.open_by(uin)
        if count >= self.limits["open_uploads"] or declared + size > self.limits["open_upload_bytes"]:
            raise wire.ProtocolError(wire.Err.TOO_MANY, "too many unfinished uploads; finish or wait for "
                                     "them to expire", limit=self.limits["open_uploads"])
        media = os.urandom(8)
        meta = {"uin": uin, "channel": msg["channel"], "size": size, "chunk_size": chunk_size,
                "chunks": chunks, "sha256": msg["sha256"], "mime": msg["mime"][:255],
                "expiry": now + self.lifetime, "done": False}
        self.store.put(meta_key(media), keys.encode(meta))
        self.uploads[media] = Upload(media, meta)
        heapq.heappush(self.expiries, (meta["expiry"], media))
        self.stats["uploads"] += 1
        return wire.reply("up_ok", msg["rid"], media=media.hex())

    def _upload_of(self, uin: int, text) -> Upload:
        up = self.uploads.get(media_id(text))
        if up is None or up.meta["uin"] != uin:
            raise wire.ProtocolError(wire.Err.NO_MEDIA, f"no unfinished upload {text!r} of yours")
        return up

    def chunk(self, uin: int, msg: dict) -> dict:
        up = self._upload_of(uin, msg["media"])
        index, data = msg["index"], msg["data"]
        if index >= up.meta["chunks"]:
            raise wire.ProtocolError(wire.Err.BAD_CHUNK, f"index {index} >= chunk count {up.meta['chunks']}")
        if len(data) != up.expected_size(index):
            raise wire.ProtocolError(wire.Err.BAD_CHUNK, f"chunk {index} must be {up.expected_size(index)} "
                                     f"bytes, got {len(data)}")
        if index not in up.received:           # a resent chunk is acked again, stored once
            self.store.put(chunk_key(up.media, index), data)
            up.received.add(index)
            if index == up.hashed:              # in-order arrival: hash as we go
                up.hasher.update(data)
                up.hashed += 1
        return wire.reply("chunk_ok", msg["rid"], media=msg["media"], index=index)

    def end(self, uin: int, msg: dict, now: float) -> dict:
        up = self._upload_of(uin, msg["media"])
        missing = up.missing()
        if missing:
            return wire.reply("up_missing", msg["rid"], media=msg["media"], missing=missing[:MISSING_LIST],
                              count=len(missing))
        self.store.flush()                          # chunks staged in this turn must be readable
        for index in range(up.hashed, up.meta["chunks"]):     # chunks that came out of order
            up.hasher.update(self.store.get(chunk_key(up.media, index)))
        up.hashed = up.meta["chunks"]
        if up.hasher.hexdigest() != up.meta["sha256"]:
            self._delete(up.media, up.meta)
            self.stats["sha_mismatch"] += 1
            raise wire.ProtocolError(wire.Err.SHA_MISMATCH, "the assembled file does not match its sha256; "
                                     "the upload was discarded")
        meta = dict(up.meta, done=True, expiry=now + self.lifetime)
        self.store.put(meta_key(up.media), keys.encode(meta))
        heapq.heappush(self.expiries, (meta["expiry"], up.media))
        del self.uploads[up.media]
        self.stats["files"] += 1
        return wire.reply("up_done", msg["rid"], media=msg["media"], ref=make_ref(self.id, up.media))

    # --- download --------------------------------------------------------------
    def finished(self, media: bytes, now: float) -> dict:
        raw = self.store.get(meta_key(media))
        meta = keys.decode(raw) if raw is not None else None
        if meta is None or not meta["done"] or meta["expiry"] < now:
            raise wire.ProtocolError(wire.Err.NO_MEDIA, "no such file (unknown, unfinished or expired)")
        return meta

    def info(self, msg: dict, media: bytes, meta: dict) -> dict:
        return wire.reply("down_info", msg["rid"], media=media.hex(), size=meta["size"],
                          chunk_size=meta["chunk_size"], chunks=meta["chunks"], sha256=meta["sha256"],
                          mime=meta["mime"], channel=meta["channel"])

    def read_chunk(self, msg: dict, media: bytes, meta: dict) -> dict:
        if msg["index"] >= meta["chunks"]:
            raise wire.ProtocolError(wire.Err.BAD_CHUNK, f"index {msg['index']} >= chunk count {meta['chunks']}")
        data = self.store.get(chunk_key(media, msg["index"]))
        if data is None:
            raise wire.ProtocolError(wire.Err.NO_MEDIA, "file expired")
        return wire.reply("chunk", msg["rid"], media=msg["media"], index=msg["index"], data=data)

    # --- expiry ----------------------------------------------------------------
    def _delete(self, media: bytes, meta: dict) -> None:
        self.store.delete(meta_key(media))
        for index in range(meta["chunks"]):
            self.store.delete(chunk_key(media, index))
        self.uploads.pop(media, None)

    def sweep(self, now: float, max_items: int = 64) -> int:
        """Delete files and unfinished uploads whose lifetime is over (a few per call)."""
        gone = 0
        while self.expiries and self.expiries[0][0] <= now and gone < max_items:
            expiry, media = heapq.heappop(self.expiries)
            raw = self.store.get(meta_key(media))
            if raw is None:
                continue
            meta = keys.decode(raw)
            if meta["expiry"] != expiry:
                continue                          # a newer expiry (upload finished) is queued
            self._delete(media, meta)
            gone += 1
        self.stats["expired"] += gone
        return gone


class RelayNode(Node):
    """Sessions and the membership cache run on the monotonic clock (the ``now`` requests get);
    file expiries on the expiry clock (nodes/runtime/clock.py), which a wall-clock step does
    not move."""
    type = "relay"

    def __init__(self, topo, node_id):
        super().__init__(topo, node_id)
        self.expiry = expiry_clock.attach(self)
        self.secret = topo.read_secret()
        self.core = RelayCore(node_id, self.store, topo.limits)
        self.core.load()
        # one session model with the brokers: a login's sid on every request, expiry by silence
        self.sessions = SessionTable(1.0)
        self.session_timeout = float(topo.limits["relay_session_timeout"])
        self.members = {}                       # (uin, channel) -> (is member, checked at)
        self.placement = Placement(topo)        # which logic node to ask (leaders replicas named)
        self.requests = Requests(topo.limits["request_timeout"], self.max_internal_frame, self.outbox)
        self.logics = self.peers("logic")
        self.max_frame = int(topo.limits["max_chunk"]) + 4096
        self.client = self.bind(zmq.ROUTER, self.spec.endpoint("client"), maxmsgsize=self.max_frame)
        self.clients = self.serve(self.client, schema.RELAY_REQUESTS, {
            "login": self.handle_login, "ping": self.handle_ping, "logout": self.handle_logout,
            "up_begin": self.handle_begin, "up_chunk": self.handle_chunk, "up_end": self.handle_end,
            "down_info": self.handle_info, "down": self.handle_down},
            max_len=self.max_frame, guard=self.guard, refuse_ident=WebGate.owns)
        ws = self.spec.endpoints.get("ws")
        # browsers: the brokers' pages may connect; replies of a download window (8 chunks in
        # flight, as the clients send) must fit the gate's per-connection bound twice over
        self.web = WebGate(self, ws, lambda gate: PlainRoutes(gate, page_origins(topo, self.spec)[1], node_id),
                           self.max_frame, self.session_timeout, out_bound=16 * self.max_frame) if ws else None
        rpc = self.bind(zmq.ROUTER, self.spec.endpoint("rpc"))
        self.serve(rpc, schema.BROKER_REQUESTS, {"status": self.handle_status})
        self.loop.every(SWEEP_INTERVAL, self.housekeeping)

    def on_topology(self, old, new):
        """A live reshard: ask the new owners about membership."""
        self.placement.topo = new
        self.refresh_peers(self.logics, "logic")
        return None

    # --- WebSocket clients (nodes/runtime/webgate.py calls these) -----------------
    def web_frame(self, ident: bytes, frame: bytes) -> None:
        self.clients.frame(ident, frame, self.clock(), lambda i, m: self.queue_reply(self.client, i, m),
                           self.max_frame, 1024)

    def web_gone(self, ident: bytes, _slow: bool) -> None:
        session = self.sessions.by_ident.get(ident)
        if session is not None:
            self.sessions.end(session, "gone")

    def queue_reply(self, sock, ident, msg):
        """Every reply of the client endpoint goes through here: a web connection's to its gate."""
        if sock is self.client and self.web is not None and WebGate.owns(ident):
            self.web.reply(ident, msg)
        else:
            super().queue_reply(sock, ident, msg)

    # --- sessions --------------------------------------------------------------
    def guard(self, ident, t, msg, now):
        return ident if t in wire.SESSIONLESS else self.sessions.check(ident, msg.get("sid"), now)

    def handle_login(self, ident, msg, now):
        uin = auth.check_login(self.secret, msg, self.topo.jwt)
        for old in (self.sessions.by_ident.get(ident), self.sessions.by_key.get((uin, msg["device"]))):
            if old is not None:
                self.sessions.end(old, "replaced")
        session = self.sessions.open(ident, uin, msg["device"], None, self.session_timeout, now)
        return wire.reply("login_ok", msg["rid"], uin=uin, device=msg["device"], relay=self.id, sid=session.sid,
                          hb=None, limits={k: self.topo.limits[k] for k in ("max_file", "max_chunk")})

    def handle_ping(self, _ident, msg, _now):
        return wire.reply("pong", msg["rid"], relay=self.id, idc=self.spec.idc)

    def handle_logout(self, session, msg, _now):
        self.sessions.end(session)
        return wire.reply("bye", msg["rid"])

    # --- membership, asked of the channel's logic node -----------------------------
    def when_member(self, ident, uin, channel, rid, now, then) -> None:
        """Run ``then()`` (its reply goes to ident) if uin is a member of channel, else NOT_MEMBER."""
        def answer(is_member):
            try:
                if not is_member:
                    raise wire.ProtocolError(wire.Err.NOT_MEMBER, f"uin {uin} is not a member of {channel!r}")
                reply = then()
            except wire.ProtocolError as exc:
                reply = wire.error_from(rid, exc)
            self.queue_reply(self.client, ident, reply)
        known = self.members.get((uin, channel))
        if known is not None and now - known[1] < MEMBER_TTL:
            answer(known[0])
            return

        def ask(logic, follow):
            def done(reply):
                leader = reply.get("leader")
                if reply.get("code") == wire.Err.WRONG_OWNER and follow and leader in self.logics:
                    self.placement.moved(channel, leader)          # replicated: its shard moved
                    ask(leader, False)
                elif reply.get("t") == "member":
                    self.members[(uin, channel)] = (reply["member"], now)
                    answer(reply["member"])
                elif reply.get("code") == wire.Err.NO_CHANNEL:
                    answer(False)
                else:
                    self.queue_reply(self.client, ident, wire.error(rid, wire.Err.UNAVAILABLE,
                                                                    "membership check failed; retry"))
            self.requests.send(self.logics[logic], {"t": "member", "uin": uin, "channel": channel}, done)
        ask(self.placement.server(channel), self.topo.replicated)

    # --- requests --------------------------------------------------------------
    def handle_begin(self, session, msg, now):
        uin = session.uin
        self.when_member(session.ident, uin, msg["channel"], msg["rid"], now,
                         lambda: self.core.begin(uin, msg, self.expiry.now()))

    def handle_chunk(self, session, msg, _now):
        return self.core.chunk(session.uin, msg)

    def handle_end(self, session, msg, now):
        return self.core.end(session.uin, msg, self.expiry.now())

    def handle_info(self, session, msg, now):
        relay, media = parse_ref(msg["ref"])
        if relay != self.id:
            raise wire.ProtocolError(wire.Err.WRONG_OWNER, f"the file is at relay {relay}")
        meta = self.core.finished(media, self.expiry.now())
        self.when_member(session.ident, session.uin, meta["channel"], msg["rid"], now,
                         lambda: self.core.info(msg, media, meta))

    def handle_down(self, session, msg, now):
        media = media_id(msg["media"])
        meta = self.core.finished(media, self.expiry.now())
        self.when_member(session.ident, session.uin, meta["channel"], msg["rid"], now,
                         lambda: self.core.read_chunk(msg, media, meta))

    def housekeeping(self):
        self.requests.expire()
        self.core.sweep(self.expiry.check())
        for session in self.sessions.expired(self.clock()):
            self.sessions.end(session, "expired")

    def status(self):
        c = self.core
        return dict(super().status(), open_uploads=len(c.uploads), files=c.stats["files"],
                    expired=c.stats["expired"], sessions=len(self.sessions), clock=self.expiry.status(),
                    **({"web": self.web.status()} if self.web is not None else {}))
