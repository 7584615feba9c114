"""Cheap multipart send/recv on pyzmq's Cython backend.

pyzmq's ``send_multipart``/``recv_multipart`` cost ~1.8 µs per 2-frame
message on this machine, mostly in IntFlag arithmetic on the flags and in
the Python-level wrapper; calling the backend socket methods with plain int
flags costs ~0.4 µs.  On the hot paths (every request, reply and delivery)
that difference is a large share of a node's CPU per message.
"""
from __future__ import annotations

from collections.abc import Callable

import zmq
from zmq.backend import Socket as _Backend

NOBLOCK = int(zmq.NOBLOCK)
SNDMORE_NOBLOCK = int(zmq.SNDMORE) | NOBLOCK
RCVMORE = int(zmq.RCVMORE)

_send = _Backend.send
_recv = _Backend.recv
_get = _Backend.get


def send_pair(sock: zmq.Socket[bytes], first: bytes, second: bytes) -> None:
    """The common two-frame case (identity + body, topic + body)."""
    _send(sock, first, SNDMORE_NOBLOCK)
    _send(sock, second, NOBLOCK)


def send_one(sock: zmq.Socket[bytes], frame: bytes) -> None:
    _send(sock, frame, NOBLOCK)


def reader(kind: int) -> Callable[[zmq.Socket[bytes]], list[bytes]]:
    """A function receiving one whole message from a socket of this type (zmq.Again if none).

    ROUTER messages are [identity, body] and anyone may connect, so extra
    frames are drained and returned (the caller refuses them).  DEALER and
    SUB sockets here only ever talk to our own nodes' ROUTER and PUB sockets,
    whose messages have a fixed shape: one frame, or [topic, body].  PAIR
    messages are read whole: a monitor's have two frames.
    """
    if kind == zmq.ROUTER:
        return lambda sock: _rest(sock, [_recv(sock, NOBLOCK), _recv(sock, NOBLOCK)])
    if kind == zmq.SUB:
        return lambda sock: [_recv(sock, NOBLOCK), _recv(sock, NOBLOCK)]
    if kind == zmq.DEALER:
        return lambda sock: [_recv(sock, NOBLOCK)]
    if kind == zmq.PAIR:
        # a thread of the node (inproc, one frame) or a socket monitor (two frames: event and
        # endpoint; read one at a time, every event failed to parse -- issue 22)
        return lambda sock: _rest(sock, [_recv(sock, NOBLOCK)])
    raise ValueError(f"no reader for socket type {kind}")


def _rest(sock: zmq.Socket[bytes], frames: list[bytes]) -> list[bytes]:
    """``frames`` with the rest of the message they began."""
    while _get(sock, RCVMORE):
        frames.append(_recv(sock, NOBLOCK))
    return frames
