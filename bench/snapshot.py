"""bin/bench snapshot: what a replica rejoining empty costs its shard's leader (docs/ha.md "Snapshots").

A replicated mesh (3 logic nodes, ``replication: 3``, a local etcd) whose
channel ``lobby`` already holds ``--rows`` messages (with their ``e``/``x``
send rows and the senders' ``d`` rows): the rows are written into every
replica's store before the mesh starts, all three at the same position, so
no snapshot is needed to start.  One user sends to ``lobby`` in a closed
loop.  Each repeat SIGKILLs a follower of the shard, deletes its data
directory, restarts it and waits until it holds the shard's newest record
again; the leader streams it the whole shard.  Measured per repeat:

- the leader's longest loop turn from the restart until the follower caught
  up (the node's ``max_turn_ms``, its window reset before the restart):
  every channel of the shard waits that long;
- the snapshot's time: from the leader's first look at the wiped follower
  (its snapshot count goes up) until the follower installed it and holds
  the shard's newest record (status polled every 50 ms);
- the sender's longest gap between acks in that window.
Medians over ``--repeats``.
"""
from __future__ import annotations

import shutil
import signal
import statistics
import time

from nodes.ops.localtopo import write_topology
from nodes.ops.mesh import Mesh, wait_for
from nodes.storage import shards, store as keys
from nodes.storage.store import Store

from .failover import Sender, caught_up, channel_leader
from .report import kept_on_failure, machine, parser as bench_parser, table, write_json

CHANNEL = "lobby"
MEMBERS = 100


def seed(path: str, shard: int, rows: int) -> None:
    """``rows`` messages of CHANNEL as the logic node writes them, at position (1, 1)."""
    store = Store(path)
    now = time.time()
    expiry = now + 7 * 86400
    store.put(keys.channel_key(CHANNEL), keys.encode({"members": list(range(1, MEMBERS + 1)), "lifetime": None}))
    prefix = keys.channel_prefix(CHANNEL)
    for msg_id in range(1, rows + 1):
        uin, ctime = 1 + msg_id % MEMBERS, 10 ** 12 + msg_id
        text = f"seeded message {msg_id} " + "x" * 40
        store.put(prefix + keys.pack_u64(msg_id), keys.encode([uin, 0, ctime, int(now * 1000), expiry, text, None]))
        store.put(keys.sent_key(uin, 0, ctime), keys.sent_value(CHANNEL, msg_id, keys.text_digest(text)))
        store.put(keys.sent_expiry_key(int(expiry * 1000), uin, 0, ctime), b"")
        store.put(keys.dedup_key(uin, 0), keys.encode([ctime, CHANNEL, msg_id, int(now * 1000)]))
        if msg_id % 10000 == 0:
            store.flush()
    store.put(keys.last_id_key(CHANNEL), keys.pack_u64(rows))
    shards.put_position(store, shard, (1, 1))
    store.close()


def snapshots_sent(admin, node) -> int:
    return ((admin.status(node) or {}).get("replication") or {}).get("snapshots_sent", 0)


def installed(admin, node) -> bool:
    return ((admin.status(node) or {}).get("replication") or {}).get("snapshots_installed", 0) > 0


def one_size(args, rows: int) -> dict:
    with kept_on_failure("snapshot") as directory:
        return measure(args, rows, directory)


def measure(args, rows: int, directory: str) -> dict:
    mesh = Mesh(write_topology(directory, logics=3, replication=3, shards=args.shards,
                               limits={"channel_queue": 100000, "rate": 1e9, "burst": 1e9}))
    topo = mesh.topo
    shard = topo.shard_of(CHANNEL)
    for node in topo.replicas_of(shard):
        seed(topo.node_dir(node), shard, rows)
    sender, turns, times, gaps = None, [], [], []
    try:
        mesh.start()
        mesh.wait_ready(60)
        admin = mesh.admin
        from nodes.protocol import auth
        broker = topo.of_type("broker")[0].endpoint("client")
        sender = Sender(broker, auth.mint(topo.read_secret(), 1, 3600), 1, CHANNEL)
        sender.start()
        for _ in range(args.repeats):
            since = time.monotonic()
            wait_for(lambda since=since: sender.acks_after(since) >= 20 or sender.errors, 60, "acks before the wipe")
            if sender.errors:
                raise RuntimeError(f"the sender stopped: {sender.errors[0]!r}")
            shown = wait_for(lambda: channel_leader(admin, CHANNEL), 30, "a leader")
            leader = shown["leader"]
            victim = next(n for n in topo.replicas_of(shard) if n != leader)
            mesh.signal(victim, signal.SIGKILL)
            shutil.rmtree(topo.node_dir(victim), ignore_errors=True)
            admin.call(leader, {"t": "status", "reset_max": True})
            sent_before = snapshots_sent(admin, leader)
            mesh.start([victim])
            mesh.wait_ready(60, [victim])
            # the leader learns of the wipe at its next look at the follower (<= 1 s): until then
            # its lag still reads 0, so wait for the snapshot to start, then for the catch-up
            wait_for(lambda leader=leader, sent_before=sent_before: snapshots_sent(admin, leader) > sent_before,
                     30, "the snapshot to start")
            started = time.monotonic()
            wait_for(lambda victim=victim: installed(admin, victim) and caught_up(admin, topo, shard, victim),
                     120, "the snapshot")
            took = time.monotonic() - started
            status = admin.status(leader) or {}
            if status.get("shards", {}).get(str(shard), {}).get("leader") != leader:
                raise RuntimeError("the leader changed during the snapshot; run again")
            turns.append(status["max_turn_ms"])
            times.append(took)
            gaps.append(sender.longest_stall_after(started) * 1000)
        errors = len(sender.errors)
    finally:
        if sender is not None:
            sender.close()
        mesh.close()
    return {"rows": rows, "snapshot_rows": 4 * rows + MEMBERS + 2,
            "leader_max_turn_ms": round(statistics.median(turns), 1), "leader_max_turn_ms_all": turns,
            "snapshot_s": round(statistics.median(times), 3), "snapshot_s_all": [round(t, 3) for t in times],
            "send_gap_ms": round(statistics.median(gaps), 1), "send_gap_ms_all": [round(g, 1) for g in gaps],
            "errors": errors}


def render(r: dict) -> str:
    rows = [[s["rows"], s["snapshot_rows"], f"{s['leader_max_turn_ms']} ({s['leader_max_turn_ms_all']})",
             f"{s['snapshot_s']} ({s['snapshot_s_all']})", f"{s['send_gap_ms']} ({s['send_gap_ms_all']})"]
            for s in r["sizes"]]
    return f"{r['machine']}\nmedians of {r['repeats']}\n\n" + table(
        ["messages", "rows sent", "leader longest turn ms", "snapshot s", "longest send gap ms"], rows)


def main(argv=None) -> int:
    parser = bench_parser("snapshot", __doc__)
    parser.add_argument("--rows", default="50000,200000", help="messages in the shard, comma-separated sizes")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    sizes = [int(x) for x in args.rows.split(",") if x]
    if not sizes or min(sizes) < 1 or args.repeats < 1 or args.shards < 1:
        parser.error("sizes, --repeats and --shards must be >= 1")
    result = {"repeats": args.repeats, "sizes": [one_size(args, n) for n in sizes], "machine": machine()}
    print(render(result))
    if args.json:
        write_json(args.json, result)
    return 0 if all(s["errors"] == 0 for s in result["sizes"]) else 1
