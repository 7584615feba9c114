"""What the command-line tools share: the default topology, tokens, choosing a broker."""
from __future__ import annotations

import argparse
import math
import os
import sys
from typing import NoReturn

from nodes import PACKAGE_DIR, __version__
from nodes.cluster import topology
from nodes.protocol import auth
from nodes.runtime import curve

ROOT = os.path.dirname(PACKAGE_DIR)
CHECKOUT_CONFIG = os.path.join(ROOT, "config", "local.yaml")
PACKAGED_CONFIG = os.path.join(PACKAGE_DIR, "config", "local.yaml")


def data_home() -> str:
    """Where an installed imesh keeps its default topology, secret and data: $IMESH_HOME, else
    $XDG_DATA_HOME/imesh, else ~/.local/share/imesh."""
    if os.environ.get("IMESH_HOME"):
        return os.path.abspath(os.environ["IMESH_HOME"])
    xdg = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(xdg, "imesh")


def default_config() -> str:
    """$IMESH_CONFIG; in a checkout config/local.yaml; installed: <data_home>/local.yaml."""
    if os.environ.get("IMESH_CONFIG"):
        return os.environ["IMESH_CONFIG"]
    if os.path.exists(CHECKOUT_CONFIG):
        return CHECKOUT_CONFIG
    return os.path.join(data_home(), "local.yaml")


def ensure_default_config(path: str) -> None:
    """First use of an installed package: copy the shipped local topology to the data home,
    its secret and data next to it (var/), so nothing is written into site-packages."""
    if os.path.exists(path) or path != os.path.join(data_home(), "local.yaml"):
        return
    with open(PACKAGED_CONFIG, encoding="utf-8") as f:
        text = f.read()
    text = text.replace("secret_file: ../var/secret", "secret_file: var/secret")
    text = text.replace("data_dir: ../var", "data_dir: var")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "x", encoding="utf-8") as f:
        f.write(text)
    print(f"created the default topology {path} (data under {os.path.dirname(path)}/var)", file=sys.stderr)


DEFAULT_CONFIG = default_config()


def prog_name(tool: str) -> str:
    """The name a command was started as: imesh-mesh (console script), bin/mesh (wrapper), ..."""
    given = os.environ.pop("IMESH_PROG", None)      # set by the bin/ wrappers; not inherited further
    base = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if base.startswith("imesh-"):
        return base
    return given or f"bin/{tool}"


def tool_name(tool: str) -> str:
    """How the user calls another of the tools in hints: ``imesh-TOOL`` when this one runs as a
    wheel's console script, else ``bin/TOOL`` (a source tree)."""
    base = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return f"imesh-{tool}" if base.startswith("imesh-") else f"bin/{tool}"


def add_version_arg(parser) -> None:
    parser.add_argument("--version", action="version", version=f"%(prog)s (imesh) {__version__}")


def add_config_arg(parser) -> None:
    parser.add_argument("-c", "--config", default=DEFAULT_CONFIG,
                        help="topology YAML (default: %(default)s)")


def load_topology(path: str) -> topology.Topology:
    try:
        ensure_default_config(path)
        return topology.load(path)
    except topology.TopologyError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"{path}: cannot create the default topology: {exc.strerror}")


def fail(message: str, code: int = 2) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def seconds_arg(text: str) -> float:
    """A number of seconds > 0 (a negative or zero wait, NaN or infinity is a typo, not a wish)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be a number of seconds > 0")
    return value


def msg_id_arg(text: str) -> int:
    """A message id: 0 .. 2**63-1 (what the server's ids can be)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a message id") from None
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"{text} is not a message id (0..{2**63 - 1})")
    return value


def uin_arg(text: str) -> int:
    value = int(text)
    if not 0 <= value < 2**32:
        raise ValueError("uin must be 0..4294967295")
    return value


def token_for(topo: topology.Topology, uin: int, given: str | None) -> str:
    """The token given on the command line, or (local topologies only) one minted here."""
    if given:
        minted_for = token_uin(given)
        if minted_for is not None and minted_for != uin:
            fail(f"--uin {uin} contradicts --token, which was minted for uin {minted_for}")
        return given
    if not topo.local:
        fail(f"{topo.path} is not a local topology: pass --token (from `{tool_name('mesh')} token`)")
    try:
        return auth.mint(topo.read_secret(), uin, topo.limits["token_lifetime"])
    except topology.TopologyError as exc:
        fail(f"{exc} (is the mesh up? `{tool_name('mesh')} up` creates the secret)")


def token_uin(token: str) -> int | None:
    """The uin a v1 user token names (unverified: the server checks the signature), or None."""
    parts = token.split(".")
    if len(parts) == 5 and parts[0] == "v1" and parts[1] == "user" and parts[2].isdigit():
        return int(parts[2])
    return None


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
