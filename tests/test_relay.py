"""Media through a real relay: chunked upload with repair, download, limits, crash recovery."""
from __future__ import annotations

import asyncio
import hashlib
import os
import signal

import pytest
from test_heartbeat_sync import run

from nodes.client.blocking import ClientError
from nodes.client.media import MediaClient
from nodes.protocol import wire

CHUNK = 64 * 1024


@pytest.fixture
def relay_mesh(make_mesh):
    return make_mesh(brokers=1, logics=1, relays=1,
                     limits={"max_file": 8 * 2**20, "open_uploads": 3},
                     channels={"lobby": {"members": "1-100"}, "club": {"members": [1, 2]}})


async def refused(client, msg) -> str:
    """The error code a request gets (the test fails if it is accepted)."""
    with pytest.raises(ClientError) as exc:
        await client.request(msg)
    return exc.value.code


def media(m, uin, **kw):
    relays = {n.id: n.endpoint("client") for n in m.topo.of_type("relay")}
    return MediaClient(relays, m.token(uin), **kw)


def test_5_mib_with_10_percent_dropped_arrives_intact_after_repair(relay_mesh):
    m = relay_mesh
    data = os.urandom(5 * 2**20)

    async def main():
        up = media(m, 1)
        await up.connect()
        up.skip_chunk = lambda i: i % 10 == 7                 # 10% of the chunks lost on the first pass
        ref = await up.upload(data, "lobby", chunk_size=CHUNK)
        assert up.resent == 8                                 # 80 chunks, 8 reported missing and resent
        down = media(m, 2)
        await down.connect()
        assert await down.download(ref) == data
        await up.close()
        await down.close()
    run(main())


def test_sha_mismatch_is_refused_and_nothing_is_served(relay_mesh):
    m = relay_mesh

    async def main():
        c = media(m, 1)
        await c.connect()
        data = b"a" * 1000
        begin = await c.request({"t": "up_begin", "size": 1000, "chunk_size": 600, "chunks": 2,
                                 "sha256": hashlib.sha256(b"b" * 1000).hexdigest(), "mime": "x/y",
                                 "channel": "lobby"})
        for i in range(2):
            await c.request({"t": "up_chunk", "media": begin["media"], "index": i, "data": data[i * 600:(i + 1) * 600]})
        assert await refused(c, {"t": "up_end", "media": begin["media"]}) == wire.Err.SHA_MISMATCH
        # discarded: nothing to finish or fetch
        assert await refused(c, {"t": "up_end", "media": begin["media"]}) == wire.Err.NO_MEDIA
        assert await refused(c, {"t": "down", "media": begin["media"], "index": 0}) == wire.Err.NO_MEDIA
        await c.close()
    run(main())


def test_only_members_upload_to_and_download_from_a_channel(relay_mesh):
    m = relay_mesh

    async def main():
        owner = media(m, 1)
        await owner.connect()
        ref = await owner.upload(b"secret plans", "club")
        stranger = media(m, 50)                               # in lobby, not in club
        await stranger.connect()
        for request in ({"t": "down_info", "ref": ref},
                        {"t": "down", "media": ref.split(":")[2], "index": 0}):
            assert await refused(stranger, request) == wire.Err.NOT_MEMBER
        with pytest.raises(ClientError) as exc:
            await stranger.upload(b"x", "club")
        assert exc.value.code == wire.Err.NOT_MEMBER
        member = media(m, 2)
        await member.connect()
        assert await member.download(ref) == b"secret plans"
        for c in (owner, stranger, member):
            await c.close()
    run(main())


def test_relay_killed_mid_upload_lets_the_client_finish_with_the_missing_list(relay_mesh):
    m = relay_mesh
    relay = m.topo.ids("relay")[0]
    data = os.urandom(2 * 2**20 + 77)
    chunks = -(-len(data) // CHUNK)

    async def main():
        c = media(m, 1)
        await c.connect()
        begin = await c.request({"t": "up_begin", "size": len(data), "chunk_size": CHUNK, "chunks": chunks,
                                 "sha256": hashlib.sha256(data).hexdigest(), "mime": "x/y", "channel": "lobby"})
        sent = list(range(0, chunks, 2))                      # half the chunks, then the crash
        for i in sent:
            await c.request({"t": "up_chunk", "media": begin["media"], "index": i,
                             "data": data[i * CHUNK:(i + 1) * CHUNK]})
        m.mesh.signal(relay, signal.SIGKILL)
        m.mesh.start([relay])
        m.mesh.wait_ready(15, [relay])
        end = await c.request({"t": "up_end", "media": begin["media"]})   # logs in again by itself
        assert end["t"] == "up_missing" and end["missing"] == [i for i in range(chunks) if i not in sent]
        for i in end["missing"]:
            await c.request({"t": "up_chunk", "media": begin["media"], "index": i,
                             "data": data[i * CHUNK:(i + 1) * CHUNK]})
        done = await c.request({"t": "up_end", "media": begin["media"]})
        assert done["t"] == "up_done"
        assert await c.download(done["ref"]) == data
        await c.close()
    run(main())


def test_bad_media_requests_get_clear_codes(relay_mesh):
    m = relay_mesh

    async def main():
        c = media(m, 1)
        await c.connect()
        sha = "0" * 64

        async def code(msg):
            return await refused(c, msg)
        begin = {"t": "up_begin", "mime": "x/y", "channel": "lobby", "sha256": sha}
        assert await code(dict(begin, size=9 * 2**20, chunk_size=CHUNK, chunks=144)) == wire.Err.TOO_BIG
        assert await code(dict(begin, size=2**20, chunk_size=2**20, chunks=1)) == wire.Err.TOO_BIG
        assert await code(dict(begin, size=1000, chunk_size=100, chunks=9)) == wire.Err.BAD_CHUNK
        assert await code(dict(begin, size=0, chunk_size=100, chunks=0)) == wire.Err.BAD_CHUNK
        assert await code(dict(begin, size=10, chunk_size=10, chunks=1, sha256="XYZ")) == wire.Err.BAD_FIELD
        assert await code(dict(begin, size=10, chunk_size=10, chunks=1, channel="nope")) == wire.Err.NOT_MEMBER
        ok = await c.request(dict(begin, size=1000, chunk_size=600, chunks=2))
        media_id = ok["media"]
        assert await code({"t": "up_chunk", "media": media_id, "index": 2, "data": b"x"}) == wire.Err.BAD_CHUNK
        assert await code({"t": "up_chunk", "media": media_id, "index": 1, "data": b"x" * 600}) == wire.Err.BAD_CHUNK
        assert await code({"t": "up_chunk", "media": media_id, "index": 0, "data": "text"}) == wire.Err.BAD_FIELD
        assert await code({"t": "up_chunk", "media": "00" * 8, "index": 0, "data": b"x"}) == wire.Err.NO_MEDIA
        assert await code({"t": "up_chunk", "media": "zz", "index": 0, "data": b"x"}) == wire.Err.NO_MEDIA
        assert await code({"t": "down", "media": media_id, "index": 0}) == wire.Err.NO_MEDIA   # unfinished
        assert await code({"t": "down_info", "ref": "not-a-ref"}) == wire.Err.NO_MEDIA
        for _ in range(2):                                    # open_uploads is 3 in this topology
            await c.request(dict(begin, size=10, chunk_size=10, chunks=1))
        assert await code(dict(begin, size=10, chunk_size=10, chunks=1)) == wire.Err.TOO_MANY
        await c.close()
        fresh = media(m, 1)
        fresh.link._attach(next(iter(fresh.relays.values())))   # connected but not logged in
        reply = await fresh.link._exchange({"t": "up_end", "media": media_id}, 5.0)
        assert reply["t"] == "err" and reply["code"] == wire.Err.NOT_LOGGED_IN
        fresh.link._detach()
    run(main())


def test_files_and_unfinished_uploads_expire(make_mesh):
    m = make_mesh(brokers=1, logics=1, relays=1, limits={"message_lifetime": 1.0})
    relay = m.topo.ids("relay")[0]

    async def main():
        c = media(m, 1)
        await c.connect()
        ref = await c.upload(b"short-lived", "lobby")
        await c.request({"t": "up_begin", "size": 10, "chunk_size": 10, "chunks": 1, "sha256": "0" * 64,
                         "mime": "x/y", "channel": "lobby"})
        while m.admin.status(relay)["expired"] < 2:           # the relay's own sweeper counter
            await asyncio.sleep(0.05)
        with pytest.raises(ClientError) as exc:
            await c.download(ref)
        assert exc.value.code == wire.Err.NO_MEDIA
        assert m.admin.status(relay)["open_uploads"] == 0
        await c.close()
    run(main())
