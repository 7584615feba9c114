"""Media client: upload a file to a relay in parallel chunks with repair, download and verify it.

    media = MediaClient(relay_endpoints, token)       # {relay id: endpoint}
    await media.connect()
    ref = await media.upload(data_or_path, "lobby")   # then send a message carrying ``ref``
    data = await media.download(ref)                  # checked against its sha256
    await media.close()
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import os

from nodes.client.blocking import ClientError, login_request
from nodes.client.connection import Link
from nodes.client.nearest import Brokers
from nodes.protocol import wire
from nodes.protocol.mediaref import parse_ref

DEFAULT_CHUNK = 256 * 1024

log = logging.getLogger(__name__)


class MediaClient:
    """Uploads and downloads over one ``Link`` to the relays (the same connection owner as
    the chat client: one reconnect at a time, a new login when a relay forgot the session)."""

    def __init__(self, relays: dict, token, window: int = 8, timeout: float = 10.0, device: int = 0,
                 net: str = "wired", ctx=None):
        """``relays``: {relay id: client endpoint}; uploads go to the nearest that answers."""
        self.relays = dict(relays)
        self.link = Link(Brokers(list(self.relays.values())), lambda: login_request(token, device, net),
                         self._logged_in, self._on_push, timeout=timeout, ctx=ctx)
        self.window = window
        self.limits = {"max_chunk": DEFAULT_CHUNK}
        self.skip_chunk = None             # test hook: callable(index) -> True skips it on the first pass
        self.resent = 0                    # chunks sent again because the relay reported them missing

    @property
    def endpoint(self) -> str | None:
        return self.link.endpoint

    def _logged_in(self, reply: dict) -> None:
        self.limits.update(reply.get("limits", {}))

    @staticmethod
    def _on_push(msg: dict) -> None:
        log.info("ignored a %r notice from a relay", msg.get("t"))

    async def connect(self) -> dict:
        return await self.link.start()

    async def request(self, msg: dict, timeout: float | None = None) -> dict:
        return await self.link.request(msg, timeout)

    async def _use_relay(self, relay_id: str) -> None:
        endpoint = self.relays.get(relay_id)
        if endpoint is None:
            raise ClientError(wire.Err.NO_MEDIA, f"unknown relay {relay_id!r}")
        await self.link.use(endpoint)

    async def _each(self, indexes, make, window: int) -> list:
        """Run make(index) for every index with at most ``window`` in flight."""
        gate = asyncio.Semaphore(window)

        async def one(i):
            async with gate:
                return await make(i)
        return await asyncio.gather(*(one(i) for i in indexes))

    async def upload(self, source, channel: str, mime: str = "application/octet-stream",
                     chunk_size: int | None = None) -> str:
        """Upload bytes (or a file path); resend what the relay reports missing; return the ref."""
        data = source if isinstance(source, (bytes, bytearray, memoryview)) else open(source, "rb").read()
        data = bytes(data)
        size = len(data)
        if size == 0:
            raise ClientError(wire.Err.BAD_CHUNK, "nothing to upload: the file is empty")
        chunk = min(chunk_size or self.limits["max_chunk"], self.limits["max_chunk"])
        chunks = -(-size // chunk)
        begin = await self.request({"t": "up_begin", "size": size, "chunk_size": chunk, "chunks": chunks,
                                    "sha256": hashlib.sha256(data).hexdigest(), "mime": mime,
                                    "channel": channel})
        media = begin["media"]

        async def put(i):
            await self.request({"t": "up_chunk", "media": media, "index": i,
                                "data": data[i * chunk:(i + 1) * chunk]})
        first = [i for i in range(chunks) if self.skip_chunk is None or not self.skip_chunk(i)]
        await self._each(first, put, self.window)
        for _round in range(8):
            end = await self.request({"t": "up_end", "media": media})
            if end["t"] == "up_done":
                return end["ref"]
            self.resent += len(end["missing"])
            await self._each(end["missing"], put, self.window)
        raise ClientError(wire.Err.BUSY, "upload did not complete after 8 repair rounds")

    async def download(self, ref: str) -> bytes:
        """Fetch every chunk (in parallel) and check the sha256; ClientError on any mismatch."""
        try:
            relay_id, _media = parse_ref(ref)
        except wire.ProtocolError as exc:
            raise ClientError(exc.code, exc.msg) from None
        await self._use_relay(relay_id)
        info = await self.request({"t": "down_info", "ref": ref})

        async def get(i):
            return (await self.request({"t": "down", "media": info["media"], "index": i}))["data"]
        parts = await self._each(range(info["chunks"]), get, self.window)
        data = b"".join(parts)
        if len(data) != info["size"] or hashlib.sha256(data).hexdigest() != info["sha256"]:
            raise ClientError(wire.Err.SHA_MISMATCH, "downloaded file does not match its sha256")
        return data

    async def close(self) -> None:
        if self.link.connected.is_set():
            try:
                await self.link.request({"t": "logout"}, timeout=1.0)
            except ClientError:
                pass
        await self.link.close()


def save(data: bytes, path: str) -> None:
    """Write a downloaded file atomically (no partial file under the final name)."""
    tmp = f"{path}.part"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
