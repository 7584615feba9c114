"""CurveZMQ on the mesh's sockets: which key each process holds, who may connect, socket setup.

Every node, and the operator's tools (name ``admin``), has a keypair in the
topology's ``keys_dir``, written by ``zmq.auth.create_certificates``:
``<name>.key`` (public, copy it anywhere) and ``<name>.key_secret`` (private,
mode 0600, only on the machine that runs ``<name>``).  Public keys may also
be given inline under ``public_keys:`` in the topology; inline wins.

Internal sockets (rpc ROUTER/DEALER, PUB/SUB): the binding node is the CURVE
server; a ZAP authenticator (pyzmq's ThreadAuthenticator) admits on domain
``INTERNAL`` only the public keys the topology names (its nodes, ``admin``,
and any other name under ``public_keys``).  A peer without a key, with a key
not in the topology, or expecting another server key never completes the
handshake, so none of its frames reach the node.

Client sockets (broker and relay ``client`` endpoints) with ``client_curve:
true``: the node's own keypair, any client key (domain ``CLIENT``); users are
authenticated by their login tokens, CURVE encrypts and proves the server.
Clients find the server key on the endpoint itself: ``client_endpoint``
returns an ``Endpoint`` (a str carrying ``server_key``) and
``connect_client`` sets the standard CURVE options from it.

Trap: ``Authenticator.configure_curve(domain, CURVE_ALLOW_ANY)`` sets one flag
for *every* domain, so it would open the internal sockets too; both domains
here use ``configure_curve_callback``.  Write no crypto: this module only
chooses keys and sets libzmq's options.
"""
from __future__ import annotations

import logging
import os
import pwd
import shutil
import stat
import tempfile
from collections.abc import Callable
from typing import TypeVar

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from nodes.cluster.topology import RESERVED_KEY_NAMES, NodeSpec, Topology, TopologyError

log = logging.getLogger(__name__)

ADMIN = RESERVED_KEY_NAMES[0]
INTERNAL = "imesh-internal"
CLIENT = "imesh-client"
MAX_LOGGED_KEYS = 1000        # refused keys named in the log, then only counted


class CurveError(TopologyError):
    """A key file is missing, unreadable or too open (the message names the file)."""


# --- key files ----------------------------------------------------------------
def key_files(topo: Topology, name: str) -> tuple[str, str]:
    """(public, private) key file paths of ``name`` (a node id or ``admin``)."""
    base = os.path.join(topo.keys_dir, name)
    return base + ".key", base + ".key_secret"


def key_names(topo: Topology) -> list[str]:
    """Every keypair a deployment of the topology needs: its nodes and the operator's."""
    return list(topo.nodes) + [ADMIN]


def ensure_keys(topo: Topology) -> list[str]:
    """Create the keypairs that are missing (private files mode 0600); the names created.

    A pair is made in a private temporary folder and its private file linked
    into place, so two processes doing this at once never mix two pairs.  A
    public key file without its private half is a pair made elsewhere (the
    operator's host after docs/deploy.md step 1 deleted the other nodes'
    private keys): replacing it would lock that node out, so it is left
    alone (``held_elsewhere`` names them).
    """
    os.makedirs(topo.keys_dir, mode=0o700, exist_ok=True)
    created = []
    for name in key_names(topo):
        public, private = key_files(topo, name)
        if os.path.exists(private) or os.path.exists(public) or name in topo.public_keys:
            continue                           # made here before, or made elsewhere and published
        scratch = tempfile.mkdtemp(prefix=".new-", dir=topo.keys_dir)
        try:
            new_public, new_private = zmq.auth.create_certificates(scratch, name)
            os.chmod(new_private, 0o600)
            try:
                os.link(new_private, private)
            except FileExistsError:
                continue
            os.replace(new_public, public)
            created.append(name)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return created


def held_elsewhere(topo: Topology) -> list[str]:
    """The names whose public key is here (file or inline) but whose private key is not: pairs
    another machine holds, which `keys` must never replace."""
    out = []
    for name in key_names(topo):
        public, private = key_files(topo, name)
        if not os.path.exists(private) and (os.path.exists(public) or name in topo.public_keys):
            out.append(name)
    return out


def _read(path: str, what: str, hint: str) -> tuple[bytes, bytes | None]:
    try:
        os.stat(path)                      # load_certificate says "invalid" for missing and unreadable
        return zmq.auth.load_certificate(path)
    except FileNotFoundError:
        raise CurveError(f"{path}: missing {what} ({hint})") from None
    except PermissionError:
        # os.path.exists() is False for a file in a folder this user may not search: "missing"
        # would send the operator to copy a file that is there (a node running as its own user
        # with keys copied by root)
        raise CurveError(f"{path}: cannot read {what}: permission denied to user {_user()} "
                         f"(the node's user must own {os.path.dirname(path)} and its .key_secret)") from None
    except (OSError, ValueError) as exc:
        raise CurveError(f"{path}: cannot read {what}: {exc}") from None


def _user() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return f"uid {os.geteuid()}"


def check_private_mode(path: str) -> None:
    """Refuse a private key file that anyone but its owner may read or write."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return                                 # _read names the missing file
    if mode & 0o077:
        raise CurveError(f"{path}: private key is open to others (mode {mode:04o}); "
                         f"run: chmod 600 {path}")


def load_pair(topo: Topology, name: str) -> tuple[bytes, bytes]:
    """The (public, secret) Z85 keys of ``name`` from its private key file."""
    _public, private = key_files(topo, name)
    check_private_mode(private)
    pub, secret = _read(private, f"private key of {name}",
                        f"create keys with `bin/mesh keys -c {topo.path}`; each machine needs "
                        f"the .key_secret of the nodes it runs")
    if not secret:
        raise CurveError(f"{private}: holds no secret-key line")
    return pub, secret


def public_key(topo: Topology, name: str) -> bytes:
    """The Z85 public key of ``name``: inline under public_keys, else its .key file
    (else its private file, when this machine has it)."""
    if name in topo.public_keys:
        key: bytes = topo.public_keys[name]
        return key
    public, private = key_files(topo, name)
    if not os.path.exists(public) and os.path.exists(private):
        return load_pair(topo, name)[0]
    return _read(public, f"public key of {name}",
                 f"copy it from where `bin/mesh keys` ran, or list it under public_keys: in {topo.path}")[0]


def admitted(topo: Topology) -> dict[bytes, str]:
    """{Z85 public key: name} of everyone the internal sockets admit."""
    names = key_names(topo) + [n for n in topo.public_keys if n not in topo.nodes and n != ADMIN]
    return {public_key(topo, n): n for n in names}


# --- sockets ------------------------------------------------------------------
class Identity:
    """The keys one process uses on internal sockets: its own pair and the nodes' public keys.

    ``connect(sock, endpoint)`` connects as a CURVE client of the node bound at
    that endpoint (``as_client(sock, node_id)`` only sets the options); plain
    when the topology has ``curve: false``.
    """

    def __init__(self, topo: Topology, name: str, own_pair: bool = True) -> None:
        self.topo, self.name = topo, name
        self.public: bytes | None = None
        self.secret: bytes | None = None
        if own_pair:
            self.public, self.secret = load_pair(topo, name)
            published = topo.public_keys.get(name)
            if published is not None and published != self.public:
                raise CurveError(f"{key_files(topo, name)[1]}: its public key is not the one published "
                                 f"for {name} under public_keys: in {topo.path}; peers would refuse it")
        self._servers: dict[str, bytes] = {}
        self._bound_at: dict[str, str] | None = None   # endpoint -> node id, built on first use
        self.coming: Topology | None = None                     # a newer topology admitted (its nodes' keys known too)

    @classmethod
    def admin(cls, topo: Topology) -> Identity:
        """The operator tools' identity (bin/mesh, tests, benchmarks); on a local
        topology the keys are made on first use, like the secret."""
        if not topo.curve:
            return cls(topo, ADMIN, own_pair=False)
        if topo.local:
            ensure_keys(topo)
        return cls(topo, ADMIN)

    def server_key(self, node_id: str) -> bytes:
        key = self._servers.get(node_id)
        if key is None:
            topo = self.topo if node_id in self.topo.nodes or self.coming is None else self.coming
            key = self._servers[node_id] = public_key(topo, node_id)
        return key

    def as_client(self, sock: zmq.Socket[bytes], node_id: str) -> None:
        if self.topo.curve:
            sock.curve_serverkey = self.server_key(node_id)
            sock.curve_publickey, sock.curve_secretkey = self.public, self.secret

    def connect(self, sock: zmq.Socket[bytes], endpoint: str) -> None:
        """Connect to a node's internal endpoint as a CURVE client of that node (options
        apply per connect, so one SUB may connect to several publishers this way); any
        other endpoint (a client endpoint: see ``connect_client``) is connected as it is."""
        bound_at = self._bound_at
        if bound_at is None:
            nodes: list[NodeSpec] = list(self.coming.nodes.values()) if self.coming is not None else []
            bound_at = self._bound_at = {ep: n.id for n in nodes + list(self.topo.nodes.values())
                                         for name, ep in n.endpoints.items() if name != "client"}
        node_id = bound_at.get(endpoint)
        if node_id is not None:
            self.as_client(sock, node_id)
        sock.connect(endpoint)


class NodeSecurity(Identity):
    """A node's CURVE setup: its identity plus the ZAP authenticator of its context.

    All keys are read when the node starts, so a missing or too open key file
    stops it before it binds anything.  The authenticator starts before the
    first server socket binds: libzmq admits anyone while no ZAP handler runs.
    """

    def __init__(self, topo: Topology, node_id: str, ctx: zmq.Context[zmq.Socket[bytes]],
                 host: NodeSecurity | None = None) -> None:
        serves_clients = topo.client_curve and "client" in topo.node(node_id).endpoints
        super().__init__(topo, node_id, own_pair=topo.curve or serves_clients)
        self.ctx = ctx
        self.allowed = admitted(topo) if topo.curve else {}
        self.auth: ThreadAuthenticator | None = None
        # a co-located node (nodes/runtime/colocate.py) shares its host's context, and a context
        # has one ZAP handler: the host's authenticator answers for both, admitting what either
        # admits (a live topology change reaches each node on its own)
        self.host = host
        self.guests: list[NodeSecurity] = []
        if host is not None:
            host.guests.append(self)
        self.refused = 0                      # handshakes with a key not in the topology
        self._logged: set[bytes] = set()

    def as_server(self, sock: zmq.Socket[bytes], client_facing: bool) -> None:
        """Before ``bind``: CURVE server on an internal socket, or on a client socket
        when the topology says client_curve."""
        if not (self.topo.client_curve if client_facing else self.topo.curve):
            return
        if self.host is not None:
            self.host.start_authenticator()
        else:
            self.start_authenticator()
        sock.curve_server = True
        sock.curve_publickey, sock.curve_secretkey = self.public, self.secret
        sock.zap_domain = (CLIENT if client_facing else INTERNAL).encode()

    def start_authenticator(self) -> None:
        """The context's ZAP handler, started before the first CURVE server socket binds."""
        if self.auth is None:
            self.auth = auth = ThreadAuthenticator(self.ctx, log=logging.getLogger("zmq.auth"))
            auth.start()
            auth.configure_curve_callback(INTERNAL, _Check(self.check_internal))
            auth.configure_curve_callback(CLIENT, _Check(lambda _key: True))

    def admit(self, topo: Topology) -> None:
        """Admit the keys of a newer topology as well (before its new nodes connect)."""
        if topo.curve:
            self.allowed = {**self.allowed, **admitted(topo)}
        self.coming, self._bound_at = topo, None     # its new nodes may be connected to already

    def adopt(self, topo: Topology) -> None:
        """Run by a newer topology: its keys only, its nodes' server keys and endpoints."""
        allowed = admitted(topo) if topo.curve else {}      # a missing key file fails before anything changes
        self.topo, self.allowed = topo, allowed
        self._servers, self._bound_at, self.coming = {}, None, None

    def check_internal(self, key: bytes) -> bool:
        """ZAP verdict for an internal socket (runs in the authenticator's thread)."""
        if key in self.allowed or any(key in guest.allowed for guest in self.guests):
            return True
        self.refused += 1
        if key not in self._logged and len(self._logged) < MAX_LOGGED_KEYS:
            self._logged.add(key)
            log.warning("refused a CURVE handshake from key %s: not a key of %s",
                        key.decode(), self.topo.path)
        return False

    def stop(self) -> None:
        """Stop the authenticator thread (before the context is destroyed)."""
        if self.auth is not None:
            self.auth.stop()
            self.auth = None


class _Check:
    """A credentials provider for ``configure_curve_callback``: ``callback(domain, key)``."""

    def __init__(self, verdict: Callable[[bytes], bool]) -> None:
        self.verdict = verdict

    def callback(self, _domain: str, key: bytes) -> bool:
        return self.verdict(key)


# --- the client plane ---------------------------------------------------------
_R = TypeVar("_R")       # what a socket's recv returns: a blocking socket's or an asyncio one's


class Endpoint(str):
    """A client endpoint that carries its server's CURVE public key (``server_key``).

    A str, so everything that lists, compares or prints endpoints keeps working;
    ``connect_client`` reads the key.
    """
    server_key: bytes

    def __new__(cls, endpoint: str, server_key: bytes) -> Endpoint:
        self = super().__new__(cls, endpoint)
        self.server_key = server_key
        return self

    def __reduce__(self) -> tuple[type[Endpoint], tuple[str, bytes]]:
        return Endpoint, (str(self), self.server_key)


def client_endpoint(topo: Topology, node_id: str) -> str:
    """The ``client`` endpoint of a broker or relay, with its public key when client_curve."""
    endpoint = topo.node(node_id).endpoint("client")
    return Endpoint(endpoint, public_key(topo, node_id)) if topo.client_curve else endpoint


def connect_client(sock: zmq.Socket[_R], endpoint: str) -> None:        # blocking or asyncio
    """Connect a client socket; a CURVE client with a throwaway keypair when the endpoint
    carries a server key (logins are authenticated by token, not by client key)."""
    server_key = getattr(endpoint, "server_key", None)
    if server_key:
        sock.curve_serverkey = server_key
        sock.curve_publickey, sock.curve_secretkey = zmq.curve_keypair()
    sock.connect(str(endpoint))


# --- bin/mesh keys ------------------------------------------------------------
def deployment_guide(topo: Topology, created: list[str]) -> str:
    """What `bin/mesh keys` prints: which files were made and what goes to which machine."""
    names = key_names(topo)
    for name in names:
        private = key_files(topo, name)[1]
        if os.path.exists(private):
            check_private_mode(private)
    elsewhere = held_elsewhere(topo)
    present = [n for n in names if n not in created and n not in elsewhere]
    lines = [f"keys in {topo.keys_dir}: created {', '.join(created) or 'none'}"
             + (f"; already there: {', '.join(present)}" if present else "")]
    if elsewhere:
        lines.append(f"skipped {', '.join(elsewhere)}: public key here, private key not (held by "
                     "its machine); left as they are -- to replace one, delete its .key first")
    if not topo.curve and not topo.client_curve:
        lines.append(f"note: {topo.path} turns CURVE off (curve: false): the nodes will not use them")
    if topo.local:
        lines.append("local topology: `bin/mesh up` uses these as they are; nothing to copy.")
    else:
        lines += [
            "Copy to the machine of each node, into its keys_dir (mode 0700, owned by the user the nodes",
            "run as, e.g. imesh for deploy/*.service):",
            "  <id>.key_secret   its own private key only (mode 0600, same owner; refused if others may read it)",
            "  *.key             the public keys of every node and of admin",
            "                    (or publish them in the topology with the public_keys: block below)",
            "The operator's machine (bin/mesh status, channel ...) needs admin.key_secret, the *.key files",
            "and the secret file (tokens and channel commands are minted from it).",
        ]
    if topo.client_curve:
        lines.append("client_curve: clients need the public keys of the brokers and relays (public_keys: below);"
                     " see docs/protocol.md.")
    lines.append("public_keys:")
    lines += [f'  {name}: "{public_key(topo, name).decode()}"' for name in names]
    return "\n".join(lines)
