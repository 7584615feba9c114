"""The cluster topology: one YAML file describing every node, its endpoints and the limits.

A node is started with the file and its own id; everything else (owners of
channels and uins, where to connect) is derived from this file, so every node
agrees without talking.  Loading validates everything and names the file and
the key in every error.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Any

import yaml
from zmq.utils import z85

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

# optional per-node keys: a broker may also serve WebSocket/HTTP clients (nodes/broker/webgate.py)
OPTIONAL_KEYS = {"broker": ("ws", "origins")}

DEFAULT_LIMITS = {
    "max_frame": 65536,          # bytes, ZMQ_MAXMSGSIZE on client-facing sockets
    "max_text": 1440,            # bytes of UTF-8 per message
    "max_pending": 10000,        # requests a broker keeps in flight before BUSY
    "session_inflight": 64,      # requests one session may have in flight at a broker before BUSY
    "request_timeout": 2.0,      # seconds a broker waits for an owning node (then UNAVAILABLE)
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
}

DEFAULT_HEARTBEAT = {           # seconds (fractions allowed)
    "wired": 10.0, "wifi": 30.0, "4g": 90.0, "3g": 90.0, "2g": 240.0,
    "default": 30.0,             # unknown network type
    "min": 5.0, "max": 600.0, "session_timeout_factor": 3.0,
    "max_channels": 1000,        # channels one heartbeat may list
}

DEFAULT_STORAGE = {"sync": False}
OWNER_CACHE = 1_000_000      # memoised owners per node type before the cache starts over

_TOP_KEYS = {"cluster", "secret_file", "data_dir", "local", "limits", "heartbeat",
             "storage", "idcs", "channels", "curve", "client_curve", "keys_dir", "public_keys",
             "replication", "shards", "etcd", "version"}
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
        IDC, and with replication also the IDC's router of second-highest weight (presence is
        soft state held twice; docs/ha.md).  ``idc`` None: over every router."""
        if not self.replicated:
            return [self.router_for(uin, idc)]
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
        try:
            with open(self.secret_file, "rb") as f:
                secret = f.read().strip()
        except OSError as exc:
            raise TopologyError(f"{self.path}: secret_file {self.secret_file}: {exc.strerror}") from None
        if len(secret) < 16:
            raise TopologyError(f"{self.path}: secret_file {self.secret_file} holds fewer than 16 bytes")
        return secret


def _fail(path, key, why):
    raise TopologyError(f"{path}: {key}: {why}")


def _flag(path, raw, key, default: bool) -> bool:
    value = raw.get(key, default)
    if not isinstance(value, bool):
        _fail(path, key, "must be true or false")
    return value


def _parse_public_keys(path, given) -> dict:
    """``public_keys: {name: Z85 public key}``: node ids, ``admin`` or other operator tools."""
    if given is None:
        return {}
    if not isinstance(given, dict):
        _fail(path, "public_keys", "must be a mapping of node id (or admin) -> Z85 public key")
    out = {}
    for name, key in given.items():
        if not isinstance(key, str) or len(key) != 40 or not set(key.encode()) <= set(z85.Z85CHARS):
            _fail(path, f"public_keys.{name}", "must be a 40-character Z85 CURVE public key "
                  "(the public-key line of a .key file made by `bin/mesh keys`)")
        out[str(name)] = key.encode()
    return out


def _merge_numbers(path, section, given, defaults, allow_zero=()):
    if given is None:
        given = {}
    if not isinstance(given, dict):
        _fail(path, section, "must be a mapping")
    out = dict(defaults)
    for key, value in given.items():
        if key not in defaults:
            _fail(path, f"{section}.{key}", f"unknown key (known: {', '.join(defaults)})")
        default = defaults[key]
        if isinstance(default, bool):
            if not isinstance(value, bool):
                _fail(path, f"{section}.{key}", "must be true or false")
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            _fail(path, f"{section}.{key}", f"must be a number, got {value!r}")
        elif value < 0 or (value == 0 and key not in allow_zero):
            _fail(path, f"{section}.{key}", f"must be positive, got {value!r}")
        elif isinstance(default, int) and not isinstance(default, bool) and value != int(value):
            _fail(path, f"{section}.{key}", f"must be a whole number, got {value!r}")
        out[key] = value
    return out


def _parse_members(path, key, spec) -> list[int]:
    """Members as a list of uins and/or "A-B" ranges, or one "A-B" string."""
    items = spec if isinstance(spec, list) else [spec]
    members = set()
    for item in items:
        if isinstance(item, str) and "-" in item:
            lo, _, hi = item.partition("-")
            try:
                lo, hi = int(lo), int(hi)
            except ValueError:
                _fail(path, key, f"bad range {item!r}")
            if not 0 <= lo <= hi < 2**32 or hi - lo > 1_000_000:
                _fail(path, key, f"bad range {item!r}")
            members.update(range(lo, hi + 1))
        elif isinstance(item, int) and not isinstance(item, bool) and 0 <= item < 2**32:
            members.add(item)
        else:
            _fail(path, key, f"member {item!r} is not a uint32 or an 'A-B' range")
    return sorted(members)


def _port_error(port: str) -> str | None:
    if not port.isdigit() or not port.isascii():
        return f"port {port!r} is not a number"
    if not 1 <= int(port) <= 65535:
        return f"port {port} is outside 1..65535"
    return None


def _endpoint_error(ep) -> str | None:
    """Why ``ep`` is not a usable tcp://HOST:PORT endpoint, or None."""
    if not isinstance(ep, str) or not ep.startswith("tcp://"):
        return f"{ep!r} is not a tcp:// endpoint"
    host, sep, port = ep[len("tcp://"):].rpartition(":")
    if not sep or not host:
        return f"{ep!r} has no host:port"
    if host.startswith("[") != host.endswith("]") or any(c.isspace() or c in "/@?#" for c in host):
        return f"{ep!r} has a bad host {host!r}"
    return _port_error(port)


def _parse_metrics(path, key, value):
    """A node's optional metrics server: a port (on 127.0.0.1) or http://HOST:PORT; (host, port)."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = f"http://127.0.0.1:{value}"
    if not isinstance(value, str) or not value.startswith("http://"):
        _fail(path, key, f"{value!r}: needs a port or http://HOST:PORT")
    host, sep, port = value[len("http://"):].rstrip("/").rpartition(":")
    why = "no host:port" if not sep or not host else _port_error(port)
    if why:
        _fail(path, key, f"{value!r}: {why}")
    return (host.strip("[]"), int(port))


WILDCARD_HOSTS = frozenset({"0.0.0.0", "*", "::"})


class _Binds:
    """Every (host, port) the nodes bind, whatever the endpoint kind (client, rpc, pub, ws,
    metrics): two on one port clash when their hosts are the same or either is a wildcard, a
    bind `check` would otherwise call ok and `up` would fail at."""

    def __init__(self, path):
        self.path = path
        self.by_port = {}                  # port -> [(host, node id, kind, shown endpoint)]

    def claim(self, key: str, shown: str, host: str, port: int, node_id: str, kind: str) -> None:
        host = host.strip("[]").lower()
        host = "127.0.0.1" if host == "localhost" else host
        for other, owner, other_kind, other_shown in self.by_port.get(port, ()):
            if other == host or other in WILDCARD_HOSTS or host in WILDCARD_HOSTS:
                _fail(self.path, key, f"endpoint {shown} already used by {owner} "
                      f"(its {other_kind} {other_shown}): every endpoint needs a port of its own")
        self.by_port.setdefault(port, []).append((host, node_id, kind, shown))

    def claim_url(self, key: str, url: str, node_id: str, kind: str) -> None:
        host, _sep, port = url.split("://", 1)[1].rstrip("/").rpartition(":")
        self.claim(key, url, host, int(port), node_id, kind)


def _parse_nodes(path, idcs):
    if not isinstance(idcs, dict) or not idcs:
        _fail(path, "idcs", "must be a non-empty mapping of idc name -> node lists")
    nodes = {}
    binds = _Binds(path)
    for idc, groups in idcs.items():
        if not isinstance(groups, dict):
            _fail(path, f"idcs.{idc}", "must be a mapping of node type -> list of nodes")
        for group, entries in groups.items():
            node_type = group[:-1] if group.endswith("s") else group
            if node_type not in NODE_TYPES:
                _fail(path, f"idcs.{idc}.{group}", f"unknown node type (known: "
                      f"{', '.join(t + 's' for t in NODE_TYPES)})")
            if not isinstance(entries, list):
                _fail(path, f"idcs.{idc}.{group}", "must be a list of nodes")
            for i, entry in enumerate(entries):
                key = f"idcs.{idc}.{group}[{i}]"
                if not isinstance(entry, dict) or not isinstance(entry.get("id"), str) or not entry["id"]:
                    _fail(path, key, "each node needs a string 'id'")
                node_id = entry["id"]
                if node_id in nodes:
                    _fail(path, key, f"duplicate node id {node_id!r}")
                endpoints = {}
                for name in ENDPOINTS[node_type]:
                    ep = entry.get(name)
                    why = _endpoint_error(ep)
                    if why:
                        _fail(path, f"{key}.{name}", f"{why}; needs an endpoint like tcp://127.0.0.1:7001")
                    binds.claim_url(f"{key}.{name}", ep, node_id, name)
                    endpoints[name] = ep
                metrics = _parse_metrics(path, f"{key}.metrics", entry.get("metrics"))
                if metrics is not None:
                    binds.claim(f"{key}.metrics", f"http://{metrics[0]}:{metrics[1]}", *metrics, node_id, "metrics")
                optional = OPTIONAL_KEYS.get(node_type, ())
                if "ws" in optional and entry.get("ws") is not None:
                    ep = entry["ws"]
                    host, sep, port = ep[5:].rstrip("/").rpartition(":") if isinstance(ep, str) else ("", "", "")
                    if not isinstance(ep, str) or not ep.startswith("ws://") or not sep or not host:
                        _fail(path, f"{key}.ws", "needs an endpoint like ws://127.0.0.1:7601")
                    why = _port_error(port)
                    if why:
                        _fail(path, f"{key}.ws", f"{ep!r}: {why}")
                    binds.claim_url(f"{key}.ws", ep, node_id, "ws")
                    endpoints["ws"] = ep
                origins = entry.get("origins", [])
                if not isinstance(origins, list) or not all(isinstance(o, str) and o for o in origins):
                    _fail(path, f"{key}.origins", "must be a list of origins like https://chat.example.com")
                extra = set(entry) - {"id", "metrics"} - set(ENDPOINTS[node_type]) - set(optional)
                if extra:
                    _fail(path, key, f"unknown keys {sorted(extra)}")
                nodes[node_id] = NodeSpec(node_id, node_type, idc, endpoints, metrics, tuple(origins))
    for node_type in REQUIRED_TYPES:
        if not any(n.type == node_type for n in nodes.values()):
            _fail(path, "idcs", f"needs at least one {node_type}")
    return nodes


def load(path: str) -> Topology:
    """Read and validate a topology file; relative paths in it are relative to the file."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise TopologyError(f"{path}: cannot read: {exc.strerror}") from None
    return from_text(text, path)


def from_text(text: str, path: str) -> Topology:
    """Parse a topology's YAML text as if it were the file at ``path`` (relative paths resolve
    from there): how a running node reads a topology sent to it."""
    try:
        raw: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise TopologyError(f"{path}: not valid YAML: {exc}") from None
    topo = parse(raw, path)
    topo.text = text
    return topo


def parse(raw: Any, path: str) -> Topology:
    if not isinstance(raw, dict):
        _fail(path, "(top)", "must be a mapping")
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        _fail(path, sorted(unknown)[0], f"unknown key (known: {', '.join(sorted(_TOP_KEYS))})")
    base = os.path.dirname(os.path.abspath(path))

    def rel(key, default):
        value = raw.get(key, default)
        if not isinstance(value, str) or not value:
            _fail(path, key, "must be a path")
        return os.path.normpath(os.path.join(base, value))

    channels = {}
    for name, spec in (raw.get("channels") or {}).items():
        if not isinstance(spec, dict) or "members" not in spec:
            _fail(path, f"channels.{name}", "needs 'members'")
        extra = set(spec) - {"members", "lifetime", "idc"}
        if extra:
            _fail(path, f"channels.{name}.{sorted(extra)[0]}", "unknown key (known: members, lifetime, idc)")
        lifetime = spec.get("lifetime")
        if lifetime is not None and (isinstance(lifetime, bool) or not isinstance(lifetime, (int, float))
                                     or lifetime <= 0):
            _fail(path, f"channels.{name}.lifetime", f"must be a positive number of seconds, got {lifetime!r}")
        from nodes.protocol.wire import ProtocolError, check_channel_name
        try:
            check_channel_name(str(name))
        except ProtocolError as exc:
            _fail(path, f"channels.{name}", exc.msg)
        channels[str(name)] = {"members": _parse_members(path, f"channels.{name}.members", spec["members"]),
                               "lifetime": lifetime}
        if "idc" in spec:
            channels[str(name)]["idc"] = spec["idc"]

    local = raw.get("local", False)
    if not isinstance(local, bool):
        _fail(path, "local", "must be true or false")
    cluster = raw.get("cluster", "imesh")
    if not isinstance(cluster, str):
        _fail(path, "cluster", "must be a string")
    replication, shards, etcd = _parse_replication(path, raw)
    version = raw.get("version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        _fail(path, "version", f"must be a whole number from 1 (bump it for bin/mesh reshard), got {version!r}")
    nodes = _parse_nodes(path, raw.get("idcs"))
    for name in RESERVED_KEY_NAMES:
        if name in nodes:
            _fail(path, "idcs", f"node id {name!r} is reserved for the operator's key")
    for idc in dict.fromkeys(n.idc for n in nodes.values() if n.type == "logic"):
        logics = sum(1 for n in nodes.values() if n.type == "logic" and n.idc == idc)
        if replication > logics:       # a shard's replicas are in its home IDC (docs/ha.md)
            _fail(path, "replication", f"{replication} replicas need at least {replication} logic nodes "
                  f"in every IDC with logic nodes, IDC {idc!r} has {logics}")
    logic_idcs = {n.idc for n in nodes.values() if n.type == "logic"}
    for name, spec in channels.items():
        if "idc" in spec and spec["idc"] not in logic_idcs:
            _fail(path, f"channels.{name}.idc", f"must name an IDC with logic nodes "
                  f"({', '.join(sorted(logic_idcs))}), got {spec['idc']!r}")
    secret_file = rel("secret_file", "secret")
    return Topology(
        path=os.path.abspath(path),
        cluster=cluster,
        secret_file=secret_file,
        data_dir=rel("data_dir", "var"),
        local=local,
        limits=_merge_numbers(path, "limits", raw.get("limits"), DEFAULT_LIMITS),
        heartbeat=_merge_numbers(path, "heartbeat", raw.get("heartbeat"), DEFAULT_HEARTBEAT),
        storage=_merge_numbers(path, "storage", raw.get("storage"), DEFAULT_STORAGE),
        nodes=nodes,
        channels=channels,
        curve=_flag(path, raw, "curve", True),
        client_curve=_flag(path, raw, "client_curve", False),
        keys_dir=rel("keys_dir", os.path.join(os.path.dirname(secret_file), "keys")),
        public_keys=_parse_public_keys(path, raw.get("public_keys")),
        replication=replication,
        shards=shards,
        etcd=etcd,
        version=version,
    )


def _parse_replication(path, raw):
    """``replication`` (1..7), ``shards`` (1..65536) and ``etcd`` (list of http:// endpoints)."""
    replication = raw.get("replication", 1)
    if isinstance(replication, bool) or not isinstance(replication, int) or not 1 <= replication <= 7:
        _fail(path, "replication", f"must be a whole number from 1 to 7, got {replication!r}")
    shards = raw.get("shards", DEFAULT_SHARDS)
    if isinstance(shards, bool) or not isinstance(shards, int) or not 1 <= shards <= 65536:
        _fail(path, "shards", f"must be a whole number from 1 to 65536, got {shards!r}")
    etcd = raw.get("etcd", [])
    if not isinstance(etcd, list) or not all(isinstance(e, str) and e.startswith(("http://", "https://"))
                                             and ":" in e.split("//", 1)[1] for e in etcd):
        _fail(path, "etcd", "must be a list of endpoints like http://127.0.0.1:2379")
    local = raw.get("local", False)
    if replication > 1 and not etcd and local is not True:
        _fail(path, "etcd", f"replication {replication} needs etcd endpoints (only a local topology "
              "gets a local etcd from bin/mesh up)")
    return replication, shards, etcd
