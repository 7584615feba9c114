"""The yardstick of ``bin/bench e2e --baseline``: a minimal in-memory fan-out server.

One process, one ROUTER socket, a dict of channel -> member uins and one of
uin -> connection.  A send is answered with an ack and pushed as one frame
to every other logged-in member; nothing is stored, numbered or
deduplicated, and there is no rate limit, no heartbeat and no failover.  It
speaks just enough of protocol 2 (login with a token, ``sid`` on every
request, ``ack`` and ``msg`` frames) for the same generator to drive it, so
the e2e report can divide imesh's figures by this server's, measured in the
same run on the same machine.  It drains its socket the way the nodes do
(poll, then NOBLOCK until EAGAIN), so it is not handicapped by a slow loop.
"""
from __future__ import annotations

import secrets

import msgpack
import zmq

from nodes.protocol import auth, wire


class FanoutServer:
    def __init__(self, endpoint: str, members: dict, secret: bytes):
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 100000)
        self.sock.setsockopt(zmq.RCVHWM, 100000)
        self.sock.bind(endpoint)
        self.members = members                 # channel -> [uin, ...]
        self.secret = secret
        self.conn = {}                         # uin -> routing id
        self.session = {}                      # routing id -> (uin, sid)

    def handle(self, ident: bytes, msg: dict) -> None:
        send = self.sock.send
        t = msg.get("t")
        if t == "send":
            uin, sid = self.session.get(ident, (None, None))
            if sid is None or msg.get("sid") != sid:
                reply = wire.error(msg.get("rid"), wire.Err.NOT_LOGGED_IN, "log in first")
            elif uin not in self.members.get(msg.get("channel"), ()):
                reply = wire.error(msg.get("rid"), wire.Err.NOT_MEMBER, "not a member")
            else:
                push = msgpack.packb({"t": "msg", "channel": msg["channel"], "uin": uin, "device": 0,
                                      "ctime": msg["ctime"], "text": msg["text"]})
                for member in self.members[msg["channel"]]:
                    to = self.conn.get(member)
                    if to is not None and member != uin:
                        send(to, zmq.SNDMORE)
                        send(push)
                reply = {"t": "ack", "rid": msg["rid"], "channel": msg["channel"], "ctime": msg["ctime"]}
        elif t == "login":
            try:
                uin = auth.verify(self.secret, msg.get("token"))
            except wire.ProtocolError as exc:
                reply = wire.error_from(msg.get("rid"), exc)
            else:
                sid = secrets.randbits(63) + 1
                self.conn[uin] = ident
                self.session[ident] = (uin, sid)
                reply = wire.reply("login_ok", msg.get("rid"), uin=uin, device=0, sid=sid)
        else:
            reply = wire.error(msg.get("rid"), wire.Err.BAD_TYPE, f"unknown message type {t!r}")
        send(ident, zmq.SNDMORE)
        send(msgpack.packb(reply))

    def serve(self, stop) -> None:
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        recv = self.sock.recv
        while not stop.is_set():
            if not poller.poll(100):
                continue
            for _ in range(512):
                try:
                    ident = recv(zmq.NOBLOCK)
                    frame = recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                try:
                    msg = msgpack.unpackb(frame)
                except Exception:
                    continue                   # a yardstick, not a hardened server
                if type(msg) is dict:
                    self.handle(ident, msg)

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()


def serve_main(endpoint: str, members: dict, secret: bytes, ready, stop) -> None:
    """Process entry point: bind, say so on ``ready``, serve until ``stop`` is set."""
    server = FanoutServer(endpoint, members, secret)
    try:
        ready.put(True)
        server.serve(stop)
    finally:
        server.close()
