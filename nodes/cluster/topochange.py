"""A running mesh moves to a newer topology: which changes are allowed, and what a node keeps.

``bin/mesh reshard -c NEW.yaml --from OLD.yaml`` on a running mesh
(nodes/cli/reshard_cli.py) sends NEW's text to every node in two phases
(the ``topology`` request every internal endpoint serves, nodes/runtime/node.py):

- ``admit``: the node's CURVE allow-list takes NEW's keys too, so a node
  added by NEW can connect before anyone routes to it (libzmq does not retry
  a connection whose handshake was refused: a new node started before its
  key is admitted would stay cut off from that peer);
- ``adopt``: the node routes, places and admits by NEW from now on.

Only the logic nodes may differ between OLD and NEW (channels move between
logic nodes of their home IDC; brokers, routers, counters and relays stay),
``version`` must grow, and only with ``replication: 1`` (replicated shards
move by etcd leadership and snapshots).  Every node keeps the topology it
adopted in its data directory and starts from it while it is newer than
its config file (nodes/launch.py): a restart with the old file (by the
supervisor, say) cannot make a logic node serve, or seed empty, a channel it
handed over, a broker route to the old owner, or a router refuse the key of
a logic node added since.
"""
from __future__ import annotations

import logging
import os

from nodes.cluster import topology
from nodes.cluster.topology import Topology, TopologyError

log = logging.getLogger(__name__)

PHASES = ("admit", "adopt", "settle")
# what a running node took from its file once (its store, secret, keys, limits): a live change
# that altered them would be half applied, and undone by the next restart
UNCHANGED = ("data_dir", "secret_file", "keys_dir", "curve", "client_curve", "local", "limits",
             "heartbeat", "storage", "shards")
KEPT_NAME = "topology.yaml"


def _same_nodes(old: Topology, new: Topology, node_type: str) -> bool:
    def of(topo):
        return {n.id: (n.idc, tuple(sorted(n.endpoints.items()))) for n in topo.of_type(node_type)}
    return of(old) == of(new)


def check_change(old: Topology, new: Topology) -> None:
    """Raise TopologyError unless a running mesh on ``old`` may move to ``new``."""
    where = new.path
    if new.version <= old.version:
        raise TopologyError(f"{where}: version {new.version} must be greater than the running "
                            f"topology's ({old.version}): set `version: {old.version + 1}`")
    if new.cluster != old.cluster:
        raise TopologyError(f"{where}: cluster {new.cluster!r} is not the running one ({old.cluster!r})")
    if new.replicated or old.replicated:
        raise TopologyError(f"{where}: replication {max(new.replication, old.replication)}: replicated "
                            "shards move by etcd leadership and snapshots, not by reshard")
    for node_type in ("broker", "router", "counter", "relay"):
        if not _same_nodes(old, new, node_type):
            raise TopologyError(f"{where}: the {node_type}s differ from the running topology's; a live "
                                "change adds or removes logic nodes only (restart the mesh for others)")
    for field in UNCHANGED:
        if getattr(new, field) != getattr(old, field):
            raise TopologyError(f"{where}: {field} differs from the running topology's; a live change "
                                "adds or removes logic nodes only (restart the mesh for others)")
    if not new.of_type("logic"):
        raise TopologyError(f"{where}: no logic node left")
    if set(new.idcs_with("logic")) != set(old.idcs_with("logic")):
        raise TopologyError(f"{where}: the IDCs with logic nodes would change from "
                            f"{sorted(old.idcs_with('logic'))} to {sorted(new.idcs_with('logic'))}: "
                            "channels homed by them would change their home IDC; a channel stays in its IDC")
    for spec in new.of_type("logic"):
        was = old.nodes.get(spec.id)
        if was is not None and (was.type != "logic" or was.endpoints != spec.endpoints or was.idc != spec.idc):
            raise TopologyError(f"{where}: logic node {spec.id} changed its endpoints or IDC; add it "
                                "under a new id instead")
    for name in set(old.channels) | set(new.channels):      # declared in one file only: hashed in the other
        if old.home_of(name) != new.home_of(name):
            raise TopologyError(f"{where}: channel {name!r} would change its home IDC; a channel "
                                "stays in its IDC")


def parse_sent(text: str, running: Topology) -> Topology:
    """The topology a node was sent, read as if it were its own config file."""
    return topology.from_text(text, running.path)


def kept_path(topo: Topology, node_id: str) -> str:
    return os.path.join(topo.node_dir(node_id), KEPT_NAME)


def keep(topo: Topology, node_id: str) -> None:
    """Write the adopted topology into the node's data directory (atomically)."""
    path = kept_path(topo, node_id)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".new"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(topo.text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def kept(topo: Topology, node_id: str) -> Topology | None:
    """The topology this node adopted while running (read as if it were ``topo``'s file), if any."""
    path = kept_path(topo, node_id)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return None
    try:
        return topology.from_text(text, topo.path)
    except TopologyError as exc:
        log.error("ignoring %s: %s", path, exc)
        return None


def newest(topo: Topology, node_id: str) -> Topology:
    """``topo``, or the topology this node adopted later if that one is newer."""
    adopted = kept(topo, node_id)
    if adopted is None or adopted.version <= topo.version:
        return topo
    log.warning("%s: starting from the topology version %d adopted while running (%s has version %d); "
                "replace that file with it", node_id, adopted.version, topo.path, topo.version)
    return adopted


def check_offline(old: Topology, new: Topology) -> None:
    """Raise TopologyError if nodes keep a newer topology than ``new`` (offline reshard): they
    would start from it, not from ``new``, and serve by another layout than the stores'."""
    for node_id in dict.fromkeys([*old.nodes, *new.nodes]):
        adopted = kept(new, node_id)
        if adopted is not None and adopted.version > new.version:
            raise TopologyError(f"{new.path}: {node_id} keeps topology version {adopted.version} from a live "
                                f"change ({kept_path(new, node_id)}) and would start from it: set "
                                f"`version: {adopted.version + 1}` in {new.path}")
