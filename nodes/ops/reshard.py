"""Move channels between logic nodes' stores when the logic nodes of a topology change.

``bin/mesh reshard -c NEW.yaml --from OLD.yaml`` (nodes/cli/mesh.py), with
the logic nodes of the IDCs whose logic nodes change **stopped** (each of
their stores is opened here; a running node holds its store's lock and
the move is refused; other IDCs keep running): for
every channel stored on a logic node that does not own it under the new
topology, its whole state -- members, newest id, leased id blocks,
messages, the ``e``/``x`` rows of its sends -- is written to its new owner's
store and then deleted from the old one, and every ``d`` row (a device's
newest send, the dedup fast path) is copied to the new owner when newer.
So the old owner has stopped serving (it is not running, and it no longer
has the rows) before the new one starts; ids continue from the moved
newest id and leases (a counter never issues below what the logic node
holds, nodes/counter.py); a retry of a moved send finds its ``e`` row and
gets its original id.  Removing a node is the same move in reverse.

Only ``replication: 1``: replicated shards are placed and moved by etcd
leadership and snapshots, not by this tool.  Nothing here touches sockets.
"""
from __future__ import annotations

import os

from nodes.storage import shards
from nodes.storage.store import Store


class ReshardError(Exception):
    pass


def plan(stored: dict, new_topo) -> list:
    """[(channel, from node, to node)] for ``stored`` = {logic id: [channel, ...]}."""
    moves = []
    for node_id, names in sorted(stored.items()):
        for name in sorted(names):
            owner = new_topo.logic_for(name)
            if owner != node_id:
                moves.append((name, node_id, owner))
    return moves


def stored_channels(store) -> list:
    return [key[1:].decode() for key, _raw in store.scan(b"c")]


def affected_logic_nodes(old_topo, new_topo) -> list:
    """The logic nodes whose stores a change can touch: those of the IDCs whose logic nodes
    differ (a channel stays in its home IDC), or every one when the IDCs with logic nodes
    differ (names without a home are hashed over them)."""
    def by_idc(topo):
        out = {}
        for spec in topo.of_type("logic"):
            out.setdefault(spec.idc, set()).add(spec.id)
        return out
    old, new = by_idc(old_topo), by_idc(new_topo)
    if set(old) != set(new):
        return sorted(set(old_topo.ids("logic")) | set(new_topo.ids("logic")))
    return sorted(n for idc in old if old[idc] != new[idc] for n in old[idc] | new[idc])


def check_data_here(old_topo, new_topo) -> None:
    """Refuse the offline move unless the stopped logic nodes' data directories are on this
    machine.  The offline path runs when no logic node answers: that is a stopped mesh only if their data is
    here; otherwise the nodes are merely unreachable from this host (the operator's machine of
    docs/deploy.md), and opening their stores here would create empty ones and "move" nothing."""
    affected = [n for n in affected_logic_nodes(old_topo, new_topo) if n in old_topo.nodes]
    missing = [n for n in affected if not os.path.isdir(old_topo.node_dir(n))]
    if missing:
        raise ReshardError(
            f"no logic node of {old_topo.path} answers from this host ({', '.join(affected)}), and the "
            f"data of {', '.join(missing)} is not here (no {old_topo.node_dir(missing[0])}): if the mesh "
            "runs, run reshard where its nodes' rpc ports are reachable (a live reshard); if it is "
            "stopped, run it on the machine that holds the logic nodes' data directories (offline)")


class Moves(list):
    """[(channel, from, to)], with ``rows``: how many rows moved."""
    rows = 0


def move(old_topo, new_topo, dry_run: bool = False) -> Moves:
    """Move what the new topology places elsewhere; return the moves."""
    for topo in (old_topo, new_topo):
        if topo.replicated:
            raise ReshardError(f"{topo.path}: replication {topo.replication}: replicated shards move by "
                               "etcd leadership and snapshots, not by reshard")
    if old_topo.data_dir != new_topo.data_dir:
        raise ReshardError(f"data_dir differs ({old_topo.data_dir} vs {new_topo.data_dir}): run reshard "
                           "where the logic nodes' data directories are")
    check_data_here(old_topo, new_topo)
    ids = affected_logic_nodes(old_topo, new_topo)
    stores = {}
    try:
        for node_id in ids:
            try:
                stores[node_id] = Store(new_topo.node_dir(node_id), sync=True)
            except Exception as exc:          # rocksdict raises its own exception types
                raise ReshardError(f"cannot open the store of {node_id} ({exc}): stop every logic "
                                   "node before a reshard") from None
        moves = plan({n: stored_channels(s) for n, s in stores.items()}, new_topo)
        groups: dict = {}
        for name, src, dst in moves:
            groups.setdefault((src, dst), set()).add(name)
        rows_moved = 0
        for (src, dst), names in sorted(groups.items()):
            rows = list(shards.channel_rows(stores[src], names.__contains__))    # one scan per pair
            rows_moved += len(rows)
            if dry_run:
                continue
            for key, value in rows:
                stores[dst].put(key, value)
            shards.put_rows(stores[dst], shards.dedup_rows(stores[src]))
            stores[dst].flush()                 # the new owner holds it before the old one lets go
            for key, _value in rows:
                stores[src].delete(key)
            stores[src].flush()
        done = Moves(moves)
        done.rows = rows_moved
        return done
    finally:
        for store in stores.values():
            store.close()
