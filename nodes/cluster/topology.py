"""The cluster topology: one YAML file describing every node, its endpoints and the limits.

A node is started with the file and its own id; everything else (owners of
channels and uins, where to connect) is derived from this file, so every node
agrees without talking.  This module is the model (the file's defaults, ``Topology`` and
its lookups); nodes/cluster/topofile.py reads and validates a file into it and names the
file and the key in every error.  ``load``, ``from_text`` and ``parse`` here hand over to it,
so every caller keeps one import.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Any

from nodes.cluster import rendezvous

NODE_TYPES = ("broker", "logic", "router", "counter", "relay")
REQUIRED_TYPES = ("broker", "logic", "router", "counter")      # relays are optional

# endpoints each node type binds (all tcp://host:port)
ENDPOINTS = {
    "broker": ("client", "rpc"),
    "logic": ("rpc", "pub"),
    "router": ("rpc", "pub"),
    "counter": ("rpc",),
    "relay": ("client", "rpc"),
}

# optional per-node keys: a broker may also serve WebSocket/HTTP clients (nodes/runtime/webgate.py)
OPTIONAL_KEYS = {"broker": ("ws", "origins"), "relay": ("ws", "origins")}

DEFAULT_LIMITS = {
    "max_frame": 65536,          # bytes, ZMQ_MAXMSGSIZE on client-facing sockets
    "max_text": 1440,            # bytes of UTF-8 per message
    "max_pending": 10000,        # requests a broker keeps in flight before BUSY
    "session_inflight": 64,      # requests one session may have in flight at a broker before BUSY
    "request_timeout": 2.0,      # seconds a broker waits for an owning node (then UNAVAILABLE)
    "gather_ms": 10.0,           # a busy broker or logic node waits this long before a turn's reads, so
    #                              the turn carries more (less CPU per message under load; 0: never)
    "gather_frames": 32,         # frames read in one turn that make a broker or logic node busy
    "session_queue": 1000,       # frames queued for one client session before it is dropped as too slow
    "session_queue_bytes": 4 * 2**20,   # bytes queued for one client connection at most (ZeroMQ: the
    #                                     HWM is this over max_frame frames, each frame at most max_frame)
    "prelogin_rate": 5.0,        # replies per second to a connection that has not logged in
    "prelogin_burst": 20,        # of which at once
    "prelogin_bytes": 65536,     # bytes of replies a connection gets before it logs in, in all
    "login_window": 60.0,        # seconds from a connection's first frame to log in (then dropped)
    "max_internal_frame": 16 * 2**20,   # bytes of one frame between nodes, both ways (the one limit:
    #                                     ZMQ_MAXMSGSIZE on internal sockets anyone may reach, replies, PUB)
    "relay_session_timeout": 300.0,     # seconds a relay session lives without a request
    "id_block": 1000,            # ids leased from the counter per alloc
    "channel_queue": 1000,       # newest ids a channel keeps (older ones are trimmed)
    "message_lifetime": 86400.0, # seconds a message lives (a channel may set its own)
    "rate": 1.0,                 # messages per second per uin, sustained (token bucket at the broker)
    "burst": 5,                  # messages a uin may send at once
    "max_fragments": 100,        # fragments of one long text
    "max_file": 100 * 2**20,     # bytes of one media file (relay)
    "max_chunk": 256 * 2**10,    # bytes of one media chunk (relay)
    "open_uploads": 8,           # unfinished uploads one user may have at a relay
    "open_upload_bytes": 2**30,  # declared bytes of one user's unfinished uploads at a relay
    "max_members": 100000,       # members of one channel
    "token_lifetime": 86400,     # seconds a minted token is valid
    # the conversation layer (docs/protocol.md "Conversations")
    "group_max_members": 1000,   # members of a group a user creates or invites into
    "receipts_max_members": 50,  # dm/group channels up to this size push read receipts to the others
    "edit_window": 3600.0,       # seconds after sending that its author may edit a message
    "typing_rate": 0.5,          # typing notices per second per user (token bucket at the broker)
    "typing_burst": 2,           # of which at once
    "presence_max_members": 500, # channels up to this size take typing and watch
    "watch_ttl": 300.0,          # seconds a watch lasts unless renewed
}

DEFAULT_HEARTBEAT = {           # seconds (fractions allowed)
    "wired": 10.0, "wifi": 30.0, "4g": 90.0, "3g": 90.0, "2g": 240.0,
    "default": 30.0,             # unknown network type
    "min": 5.0, "max": 600.0, "session_timeout_factor": 3.0,
    "max_channels": 1000,        # channels one heartbeat may list
}

DEFAULT_STORAGE = {"sync": False}
OWNER_CACHE = 1_000_000      # memoised owners per node type before the cache starts over

RESERVED_KEY_NAMES = ("admin",)    # keys of the operator's tools (bin/mesh), not node ids
DEFAULT_SHARDS = 64          # channel -> shard is fixed for the life of a cluster (docs/ha.md)


class TopologyError(ValueError):
    """The topology file is missing, unreadable or invalid (message names file and key)."""


@dataclasses.dataclass(frozen=True)
class NodeSpec:
    id: str
    type: str
    idc: str
    endpoints: dict
    metrics: tuple | None = None     # (host, port) of its Prometheus /metrics server, if any
    origins: tuple = ()     # browser origins a broker's ws endpoint accepts besides its own page

    def endpoint(self, name: str) -> str:
        return self.endpoints[name]


@dataclasses.dataclass(frozen=True)
class PushSettings:
    """The ``push`` section: where offline pushes go and how hard to try (nodes/logic/pushes.py,
    docs/push.md).  Parsed and checked by nodes/cluster/topofile.py; the secret is read when
    a logic node starts (``read_push_secret``)."""
    webhook: str                   # http(s) URL the batches are POSTed to
    secret_file: str               # HMAC-SHA256 key of the X-Imesh-Signature header
    preview: int = 100             # characters of the text sent as the preview; 0: none
    timeout: float = 5.0           # seconds per POST (connect + answer)
    batch: int = 50                # events per POST at most
    max_pending: int = 10000       # pushes kept per logic node; beyond it the oldest are dropped
    retry_min: float = 1.0         # first retry after this many seconds, doubled per failure
    retry_max: float = 300.0       # ... up to this
    alert_after: float = 60.0      # a receiver failing this long is logged at ERROR (again every as long)


PUSH_DEFAULTS = {f.name: f.default for f in dataclasses.fields(PushSettings)
                 if f.name not in ("webhook", "secret_file")}


@dataclasses.dataclass
class Topology:
    path: str
    cluster: str
    secret_file: str
    data_dir: str
    local: bool
    limits: dict
    heartbeat: dict
    storage: dict
    nodes: dict            # id -> NodeSpec, in file order
    channels: dict         # name -> {"members": [uin, ...]}, seeded by owning logic
    curve: bool = True             # CurveZMQ on every node-to-node socket (nodes/runtime/curve.py)
    client_curve: bool = False     # CurveZMQ on the broker and relay client sockets too
    keys_dir: str = ""             # <name>.key (public) and <name>.key_secret files
    public_keys: dict = dataclasses.field(default_factory=dict)   # name -> Z85 key given inline
    replication: int = 1   # replicas per shard; 1 = one owner per channel, no etcd (docs/ha.md)
    shards: int = DEFAULT_SHARDS
    etcd: list = dataclasses.field(default_factory=list)   # endpoints; empty + local: bin/mesh starts one
    jwt: Any = None        # nodes.protocol.jwtokens.JwtConfig: which JWT login tokens count (topofile._parse_jwt)
    push: PushSettings | None = None   # offline push webhook (docs/push.md); None: no pushes
    version: int = 1       # bumped by the operator for a live change (bin/mesh reshard, nodes/cluster/topochange.py)
    text: str = ""         # the YAML this was read from: what a live change sends to running nodes
    _owners: dict = dataclasses.field(default_factory=dict, repr=False)

    # --- lookups ---------------------------------------------------------
    def of_type(self, node_type: str) -> list[NodeSpec]:
        return [n for n in self.nodes.values() if n.type == node_type]

    def ids(self, node_type: str) -> list[str]:
        return [n.id for n in self.of_type(node_type)]

    def node(self, node_id: str) -> NodeSpec:
        try:
            return self.nodes[node_id]
        except KeyError:
            raise TopologyError(f"{self.path}: no node with id {node_id!r} "
                                f"(known: {', '.join(self.nodes)})") from None

    # --- placement by IDC (docs/ha.md "Home IDC") --------------------------
    def idcs_with(self, node_type: str) -> list[str]:
        """The IDCs that have nodes of a type, in file order."""
        return list(dict.fromkeys(n.idc for n in self.of_type(node_type)))

    def home_of(self, channel: str) -> str:
        """A channel's home IDC, known from its name alone wherever routing happens: the
        ``idc`` the topology gives it, else the suffix after its last ``@`` when that names an
        IDC with logic nodes (``bin/mesh channel create team --idc west`` creates
        ``team@west``), else an IDC chosen by rendezvous hashing (the only one, in a one-IDC
        topology)."""
        homes = self._owners.setdefault("home", {})
        home = homes.get(channel)
        if home is None:
            if len(homes) > OWNER_CACHE:
                homes.clear()
            idcs = self.idcs_with("logic")
            declared = self.channels.get(channel, {}).get("idc")
            suffix = channel.rpartition("@")[2] if "@" in channel else None
            home = homes[channel] = (declared if declared in idcs else suffix if suffix in idcs
                                     else rendezvous.owner(idcs, channel))
        return home

    def ids_in(self, node_type: str, idc: str | None) -> list[str]:
        """Node ids of a type in ``idc``; every one of the type when the IDC has none."""
        ids = [n.id for n in self.of_type(node_type) if n.idc == idc]
        return ids or self.ids(node_type)

    def logic_for(self, channel: str) -> str:
        return self._owner("logic", channel, self.home_of(channel))

    def counter_for(self, channel: str) -> str:
        return self._owner("counter", channel, self.home_of(channel))

    def router_for(self, uin: int, idc: str | None = None) -> str:
        """The router keeping a uin's presence for sessions on brokers of ``idc``."""
        return self._owner("router", uin, idc)

    def routers_for(self, uin: int, idc: str | None = None) -> list[str]:
        """Where a uin's presence lives for sessions on brokers of ``idc``: its router of that
        IDC, and also the IDC's router of second-highest weight when it has one, with or without
        replication (presence is soft state held twice, so a dead router blocks no login;
        docs/ha.md "Routers").  ``idc`` None: over every router."""
        cache = self._owners.setdefault(("routers", idc), {})
        routers = cache.get(uin)
        if routers is None:
            if len(cache) > OWNER_CACHE:
                cache.clear()
            key = rendezvous.uin_key(uin)
            ranked = sorted(self.ids_in("router", idc) if idc else self.ids("router"),
                            key=lambda n: (rendezvous.weight(n, key), n), reverse=True)
            routers = cache[uin] = ranked[:2]
        return routers

    def _owner(self, node_type: str, key, idc: str | None = None) -> str:
        """Rendezvous owner of a channel (str) or uin (int) among a type's nodes of ``idc``
        (all of them when None), memoised: asked on every request."""
        cache = self._owners.get((node_type, idc))
        if cache is None:
            cache = self._owners[(node_type, idc)] = {}
        owner = cache.get(key)
        if owner is None:
            if len(cache) > OWNER_CACHE:
                cache.clear()
            ids = self.ids_in(node_type, idc) if idc else self.ids(node_type)
            owner = cache[key] = rendezvous.owner(ids, rendezvous.uin_key(key) if isinstance(key, int) else key)
        return owner

    # --- replicated topologies (docs/ha.md) --------------------------------
    @property
    def replicated(self) -> bool:
        return self.replication > 1

    def shard_of(self, channel: str) -> int:
        """Per-IDC shard spaces: the k-th IDC with logic nodes owns shards k*shards ..
        (k+1)*shards-1 (in a one-IDC topology: 0 .. shards-1, as before)."""
        cache = self._owners.setdefault("shard", {})
        shard = cache.get(channel)
        if shard is None:
            if len(cache) > OWNER_CACHE:
                cache.clear()
            digest = hashlib.blake2b(channel.encode(), digest_size=8).digest()
            base = self.idcs_with("logic").index(self.home_of(channel)) * self.shards
            shard = cache[channel] = base + int.from_bytes(digest, "big") % self.shards
        return shard

    def all_shards(self) -> range:
        return range(len(self.idcs_with("logic")) * self.shards)

    def shard_idc(self, shard: int) -> str:
        return self.idcs_with("logic")[shard // self.shards]

    def replicas_of(self, shard: int) -> list[str]:
        """The shard's replica set: the N highest rendezvous weights among the logic nodes of
        the shard's IDC; the first is the preferred leader."""
        cache = self._owners.setdefault("replicas", {})
        replicas = cache.get(shard)
        if replicas is None:
            key = b"shard:" + shard.to_bytes(4, "big")
            ranked = sorted(self.ids_in("logic", self.shard_idc(shard)),
                            key=lambda n: (rendezvous.weight(n, key), n), reverse=True)
            replicas = cache[shard] = ranked[:self.replication]
        return replicas

    def shards_of(self, node_id: str) -> list[int]:
        return [s for s in self.all_shards() if node_id in self.replicas_of(s)]

    def etcd_endpoints(self) -> list[str]:
        """The topology's ``etcd`` list, else the one ``bin/mesh up`` wrote for a local etcd."""
        if self.etcd:
            return list(self.etcd)
        try:
            with open(self.etcd_endpoints_file(), encoding="utf-8") as f:
                return [line.strip() for line in f if line.strip()]
        except OSError:
            raise TopologyError(f"{self.path}: replication {self.replication} needs etcd: no 'etcd' "
                                f"endpoints and no local etcd started ({self.etcd_endpoints_file()})") from None

    def etcd_endpoints_file(self) -> str:
        return os.path.join(self.data_dir, "etcd", "endpoints")

    def node_dir(self, node_id: str) -> str:
        return os.path.join(self.data_dir, node_id)

    def read_secret(self) -> bytes:
        return self._read_secret(self.secret_file, "secret_file")

    def read_push_secret(self) -> bytes:
        """The key that signs offline pushes (``push.secret_file``); the topology has a push section."""
        assert self.push is not None
        return self._read_secret(self.push.secret_file, "push.secret_file")

    def _read_secret(self, path: str, key: str) -> bytes:
        try:
            with open(path, "rb") as f:
                secret = f.read().strip()
        except OSError as exc:
            raise TopologyError(f"{self.path}: {key} {path}: {exc.strerror}") from None
        if len(secret) < 16:
            raise TopologyError(f"{self.path}: {key} {path} holds fewer than 16 bytes")
        return secret


# --- reading a file (nodes/cluster/topofile.py; imported on call: it imports this model) ---
def load(path: str) -> Topology:
    """Read and validate a topology file; relative paths in it are relative to the file."""
    from nodes.cluster import topofile
    return topofile.load(path)


def from_text(text: str, path: str) -> Topology:
    """Parse a topology's YAML text as if it were the file at ``path`` (how a running node
    reads a topology sent to it)."""
    from nodes.cluster import topofile
    return topofile.from_text(text, path)


def parse(raw, path: str) -> Topology:
    """Validate an already-loaded YAML mapping as the file at ``path``."""
    from nodes.cluster import topofile
    return topofile.parse(raw, path)
