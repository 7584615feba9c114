"""Reading a topology file: YAML in, a validated ``Topology`` (nodes/cluster/topology.py) out.

Every check names the file and the key (``t.yaml: idcs.west.brokers[0].client: ...``), so
``bin/mesh check`` and a node that refuses to start say exactly what to fix.  Endpoints are
checked for shape and for clashes (two binds on one port) before any node tries to bind.
"""
from __future__ import annotations

import os
from typing import Any

import yaml
from zmq.utils import z85

from nodes.cluster.topology import (
    DEFAULT_HEARTBEAT,
    DEFAULT_LIMITS,
    DEFAULT_SHARDS,
    DEFAULT_STORAGE,
    ENDPOINTS,
    NODE_TYPES,
    OPTIONAL_KEYS,
    PUSH_DEFAULTS,
    REQUIRED_TYPES,
    RESERVED_KEY_NAMES,
    NodeSpec,
    PushSettings,
    Topology,
    TopologyError,
)

_TOP_KEYS = {"cluster", "secret_file", "data_dir", "local", "limits", "heartbeat",
             "storage", "idcs", "channels", "curve", "client_curve", "keys_dir", "public_keys",
             "replication", "shards", "etcd", "version", "jwt", "push"}


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



JWT_KEYS = ("algorithms", "issuer", "audience", "public_keys", "leeway")


def _parse_jwt(path, raw):
    """``jwt: {algorithms, issuer, audience, public_keys: {kid: PEM or file}, leeway}``: which
    JWT login tokens count (nodes/protocol/jwtokens.py, docs/security.md).  HS256 uses the
    cluster secret; every key is loaded here, so a bad one fails ``bin/mesh check``, not a
    login.  Without the section: HS256 only."""
    from nodes.protocol import jwtokens
    given = raw.get("jwt")
    if given is None:
        return jwtokens.DEFAULT
    if not isinstance(given, dict):
        _fail(path, "jwt", f"must be a mapping ({', '.join(JWT_KEYS)})")
    for name in given:
        if name not in JWT_KEYS:
            _fail(path, f"jwt.{name}", f"unknown key (known: {', '.join(JWT_KEYS)})")
    pems = given.get("public_keys") or {}
    if not isinstance(pems, dict):
        _fail(path, "jwt.public_keys", "must be a mapping of kid -> PEM public key or the path of a .pem file")
    keys = {}
    for kid, value in pems.items():
        key = f"jwt.public_keys.{kid}"
        if not isinstance(value, str) or not value.strip():
            _fail(path, key, "must be a PEM public key or the path of a .pem file")
        if value.lstrip().startswith("-----BEGIN"):
            pem = value.encode()
        else:
            file = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(path)), value))
            try:
                with open(file, "rb") as f:
                    pem = f.read()
            except OSError as exc:
                _fail(path, key, f"cannot read {file}: {exc.strerror}")
        try:
            keys[str(kid)] = jwtokens.public_key(pem)
        except ValueError as exc:
            _fail(path, key, str(exc))
    served = {alg for alg, _ in keys.values()}
    algorithms = given.get("algorithms", [a for a in jwtokens.ALGORITHMS if a == "HS256" or a in served])
    if not isinstance(algorithms, list) or not all(a in jwtokens.ALGORITHMS for a in algorithms):
        _fail(path, "jwt.algorithms", f"must be a list of {', '.join(jwtokens.ALGORITHMS)} "
              f"(never none), got {algorithms!r}")
    for alg in algorithms:
        if alg in jwtokens.ASYMMETRIC and alg not in served:
            _fail(path, "jwt.algorithms", f"{alg} needs {jwtokens.ASYMMETRIC[alg]} under jwt.public_keys")
    for kid, (alg, _key) in keys.items():
        if alg not in algorithms:
            _fail(path, f"jwt.public_keys.{kid}", f"a key for {alg}, but {alg} is not in jwt.algorithms")
    for name in ("issuer", "audience"):
        if given.get(name) is not None and (not isinstance(given[name], str) or not given[name]):
            _fail(path, f"jwt.{name}", f"must be a non-empty string, got {given[name]!r}")
    leeway = given.get("leeway", 0)
    if isinstance(leeway, bool) or not isinstance(leeway, (int, float)) or not 0 <= leeway <= 300:
        _fail(path, "jwt.leeway", f"must be a number of seconds from 0 to 300, got {leeway!r}")
    return jwtokens.JwtConfig(tuple(dict.fromkeys(algorithms)), given.get("issuer"), given.get("audience"),
                              keys, float(leeway))

def _parse_push(path, raw, base) -> PushSettings | None:
    """``push: {webhook: URL, secret_file: F, preview, timeout, batch, max_pending, retry_min,
    retry_max, alert_after}``: offline pushes (nodes/logic/pushes.py, docs/push.md).
    ``preview: false`` sends no text, a number that many characters (default 100);
    ``secret_file`` defaults to ``push_secret`` next to the cluster secret."""
    given = raw.get("push")
    if given is None:
        return None
    if not isinstance(given, dict):
        _fail(path, "push", "must be a mapping (webhook, secret_file, preview, ...)")
    webhook = given.get("webhook")
    if not isinstance(webhook, str) or not webhook.startswith(("http://", "https://")) \
            or not webhook.split("//", 1)[1].split("/", 1)[0]:
        _fail(path, "push.webhook", f"must be an http:// or https:// URL, got {webhook!r}")
    secret_file = given.get("secret_file", os.path.join(os.path.dirname(
        os.path.normpath(os.path.join(base, raw.get("secret_file", "secret")))), "push_secret"))
    if not isinstance(secret_file, str) or not secret_file:
        _fail(path, "push.secret_file", "must be a path")
    numbers = {k: v for k, v in given.items() if k not in ("webhook", "secret_file", "preview")}
    merged = _merge_numbers(path, "push", numbers, PUSH_DEFAULTS)
    preview = given.get("preview", True)
    if preview is True:
        merged["preview"] = PUSH_DEFAULTS["preview"]
    elif preview is False:
        merged["preview"] = 0
    elif isinstance(preview, int) and not isinstance(preview, bool) and 0 <= preview <= 4096:
        merged["preview"] = preview
    else:
        _fail(path, "push.preview", f"must be true, false or a number of characters (0..4096), got {preview!r}")
    if merged["retry_max"] < merged["retry_min"]:
        _fail(path, "push.retry_max", f"must be at least retry_min ({merged['retry_min']}), got {merged['retry_max']}")
    return PushSettings(webhook=webhook, secret_file=os.path.normpath(os.path.join(base, secret_file)), **merged)


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
    members: set[int] = set()
    for item in items:
        if isinstance(item, str) and "-" in item:
            first, _, last = item.partition("-")
            try:
                lo, hi = int(first), int(last)
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
        limits=_merge_numbers(path, "limits", raw.get("limits"), DEFAULT_LIMITS, allow_zero=("gather_ms",)),
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
        jwt=_parse_jwt(path, raw),
        push=_parse_push(path, raw, base),
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
