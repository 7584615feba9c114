"""A lean, blocking-send WebSocket client socket for the load generators (websockets' sans-I/O
ClientProtocol over a plain TCP socket), shaped like the DEALER the generators use: ``send(bytes)``,
``recv(flags)`` raising ``zmq.Again`` when no whole message is there, ``fileno()`` for a
``zmq.Poller``.  Not a client library: no reconnects, no timeouts beyond the handshake's."""
from __future__ import annotations

import collections
import socket

import zmq
from websockets.client import ClientProtocol
from websockets.frames import Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri


class WsSock:
    def __init__(self, url: str, timeout: float = 30.0):
        uri = parse_uri(url if url.endswith("/ws") else url + "/ws")
        self.proto = ClientProtocol(uri, max_size=None)
        self.sock = socket.create_connection((uri.host, uri.port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.frames = collections.deque()
        self.proto.send_request(self.proto.connect())
        self._flush()
        while True:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError(f"{url}: closed during the handshake")
            self.proto.receive_data(data)
            events = self.proto.events_received()
            if any(isinstance(e, Response) for e in events):
                break
        if self.proto.handshake_exc is not None:
            raise ConnectionError(f"{url}: handshake failed: {self.proto.handshake_exc}")
        self.sock.settimeout(None)
        self._take(events)

    def _flush(self) -> None:
        out = self.proto.data_to_send()
        if out:
            self.sock.sendall(b"".join(out))

    def _take(self, events) -> None:
        for e in events:
            if getattr(e, "opcode", None) is Opcode.BINARY:
                self.frames.append(e.data)

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, data: bytes) -> None:
        self.proto.send_binary(data)
        self._flush()

    def recv(self, flags: int = 0) -> bytes:
        if not self.frames:
            try:
                data = self.sock.recv(1 << 20, socket.MSG_DONTWAIT if flags else 0)
            except BlockingIOError:
                raise zmq.Again() from None
            if not data:
                raise ConnectionError("WebSocket closed by the broker")
            self.proto.receive_data(data)
            self._take(self.proto.events_received())
            self._flush()                                  # pongs, close replies
            if not self.frames:
                raise zmq.Again()
        return self.frames.popleft()

    def close(self, _linger=0) -> None:
        self.sock.close()
