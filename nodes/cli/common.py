"""What the command-line tools share: the default topology, tokens, choosing a broker."""
from __future__ import annotations

import os
import sys

from .. import auth, curve, topology

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_CONFIG = os.environ.get("IMESH_CONFIG", os.path.join(ROOT, "config", "local.yaml"))


def add_config_arg(parser) -> None:
    parser.add_argument("-c", "--config", default=DEFAULT_CONFIG,
                        help="topology YAML (default: %(default)s)")


def load_topology(path: str) -> topology.Topology:
    try:
        return topology.load(path)
    except topology.TopologyError as exc:
        fail(str(exc))


def fail(message: str, code: int = 2):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def uin_arg(text: str) -> int:
    value = int(text)
    if not 0 <= value < 2**32:
        raise ValueError("uin must be 0..4294967295")
    return value


def token_for(topo: topology.Topology, uin: int, given: str | None) -> str:
    """The token given on the command line, or (local topologies only) one minted here."""
    if given:
        return given
    if not topo.local:
        fail(f"{topo.path} is not a local topology: pass --token (from `bin/mesh token`)")
    try:
        return auth.mint(topo.read_secret(), uin, topo.limits["token_lifetime"])
    except topology.TopologyError as exc:
        fail(f"{exc} (is the mesh up? `bin/mesh up` creates the secret)")


def broker_endpoint(topo: topology.Topology, uin: int, broker: str | None) -> str:
    """The chosen broker's client endpoint; by default spread users over brokers by uin."""
    brokers = topo.of_type("broker")
    if broker is None:
        return client_endpoint(topo, brokers[uin % len(brokers)].id)
    spec = topo.nodes.get(broker)
    if spec is None or spec.type != "broker":
        fail(f"no broker {broker!r} in {topo.path} (brokers: {', '.join(b.id for b in brokers)})")
    return client_endpoint(topo, broker)


def client_endpoint(topo: topology.Topology, node_id: str) -> str:
    """A broker's or relay's client endpoint, carrying its CURVE key when the topology says
    client_curve; a missing key is a clear error."""
    try:
        return curve.client_endpoint(topo, node_id)
    except curve.CurveError as exc:
        fail(str(exc))
