"""CurveZMQ on the mesh (issue 12), with real nodes: outsiders get nothing done on any
internal endpoint, client_curve admits only clients with the server key, nodes refuse
bad key files, and `bin/mesh keys` makes what a deployment needs.

An outsider is a socket with no key or with a key the topology does not name (it knows
the server's public key, as anyone reading the topology does).  Each attack waits for
the socket monitor to report the refused handshake, then checks through the admin path
that nothing was stored, allocated, changed or received.
"""
from __future__ import annotations

import os
import pickle
import stat
import subprocess
import sys
import time

import pytest
import yaml
import zmq
import zmq.auth
from conftest import ROOT, MeshHarness, write_topology
from test_cli import run as run_tool
from test_heartbeat_sync import run as run_async
from zmq.utils.monitor import recv_monitor_message

from nodes.client.aclient import AsyncClient
from nodes.client.blocking import Client, ClientError
from nodes.cluster import topology
from nodes.protocol import wire
from nodes.runtime import curve

# the monitor events that end each outsider's handshake: libzmq reports a NULL peer of a CURVE
# server as a protocol error or without detail; a key refused by ZAP as an auth failure
REFUSED = {"no key": (zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL),
           "wrong key": (zmq.EVENT_HANDSHAKE_FAILED_AUTH,)}


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    harness = MeshHarness(write_topology(tmp_path_factory.mktemp("curve"), relays=1))
    try:
        harness.start()
        yield harness
    finally:
        harness.close()


class Outsider:
    """A socket connected to an internal endpoint without an admitted key, with a monitor."""

    def __init__(self, kind, topo, node_id, endpoint_name, how):
        self.sock = zmq.Context.instance().socket(kind)
        self.sock.setsockopt(zmq.LINGER, 0)
        if how == "wrong key":                     # knows the server's key, holds its own
            self.sock.curve_serverkey = curve.public_key(topo, node_id)
            self.sock.curve_publickey, self.sock.curve_secretkey = zmq.curve_keypair()
        if kind == zmq.SUB:
            self.sock.setsockopt(zmq.SUBSCRIBE, b"")
        self.monitor = self.sock.get_monitor_socket()
        self.sock.connect(topo.node(node_id).endpoint(endpoint_name))

    def wait_refused(self, timeout=20.0) -> int:
        """The handshake-failure event; fails on a completed handshake."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.monitor.poll(100):
                event = recv_monitor_message(self.monitor)["event"]
                assert event != zmq.EVENT_HANDSHAKE_SUCCEEDED, "an outsider completed the handshake"
                if event & (zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH
                            | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL):
                    return event
        raise AssertionError("no handshake failure reported")

    def close(self):
        self.sock.disable_monitor()
        self.monitor.close(0)
        self.sock.close(0)


@pytest.fixture
def outsiders():
    made = []

    def make(*args):
        o = Outsider(*args)
        made.append(o)
        return o
    yield make
    for o in made:
        o.close()


def attack(outsiders, topo, node_id, how, *requests) -> Outsider:
    """Send requests to a node's rpc endpoint as an outsider; return once it was refused."""
    o = outsiders(zmq.DEALER, topo, node_id, "rpc", how)
    for msg in requests:
        o.sock.send(wire.pack(msg))
    assert o.wait_refused() in REFUSED[how]
    return o


def alloc(admin, counter, channel, n):
    reply = admin.call(counter, {"t": "alloc", "channel": channel, "n": n, "have": 0})
    assert reply["t"] == "alloc", reply
    return reply["start"], reply["end"]


@pytest.mark.parametrize("how", sorted(REFUSED))
def test_outsider_gets_nothing_done_on_any_rpc_endpoint(mesh, outsiders, how):
    topo, admin = mesh.topo, mesh.admin
    owner, counter, router = topo.logic_for("lobby"), topo.ids("counter")[0], topo.ids("router")[0]
    victim = mesh.client(5)
    stored = admin.status(owner)["stored"]
    last = admin.channel("show", "lobby")["last"]
    _, probe_end = alloc(admin, counter, "curve-probe", 1)
    router_sessions = admin.status(router)["sessions"]
    refused = {n: admin.status(n)["refused_keys"] for n in topo.nodes}

    hits = [attack(outsiders, topo, owner, how,
                   {"t": "send", "rid": 1, "uin": 42, "device": 0, "channel": "lobby",
                    "ctime": 1, "text": "forged"},
                   {"t": "sync", "rid": 2, "uin": 1, "channel": "lobby", "after": 0},
                   {"t": "presence", "rid": 3, "uin": 5}),
            attack(outsiders, topo, counter, how,
                   *({"t": "alloc", "rid": i, "channel": c, "n": 1_000_000, "have": 0}
                     for i, c in enumerate(("curve-probe", "lobby", "curve-probe")))),
            attack(outsiders, topo, router, how,
                   {"t": "online", "rid": 1, "uin": 77, "device": 5, "broker": "b1"},
                   {"t": "broker_reset", "rid": 2, "broker": "b1"},
                   {"t": "offline", "rid": 3, "uin": 5, "device": 0, "broker": "b1"}),
            attack(outsiders, topo, "b1", how, {"t": "status", "rid": 1}),
            attack(outsiders, topo, "m1", how, {"t": "status", "rid": 1})]

    assert admin.status(owner)["stored"] == stored                 # nothing stored
    assert admin.channel("show", "lobby")["last"] == last
    assert alloc(admin, counter, "curve-probe", 1)[0] == probe_end  # no ids allocated
    assert all(not v for v in admin.presence(77).values())         # no forged presence
    assert all(0 in v for v in admin.presence(5).values())         # nobody reset or removed
    assert admin.status(router)["sessions"] == router_sessions
    assert all(not h.sock.poll(0) for h in hits)                   # no replies
    after = {n: admin.status(n)["refused_keys"] for n in topo.nodes}
    for node_id in (owner, counter, router, "b1", "m1"):           # wrong keys are counted
        assert after[node_id] - refused[node_id] == (1 if how == "wrong key" else 0), node_id
    sender = mesh.client(6)                                        # the mesh still serves
    msg_id = sender.send("lobby", "after the attacks")
    assert msg_id == last + 1
    got = victim.recv(timeout=10)
    assert got is not None and got["id"] == msg_id


def published(sock, timeout):
    """Messages read from a SUB within timeout (each frame may hold several)."""
    out = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and sock.poll(100):
        out += wire.unpack_many(sock.recv_multipart()[-1], 2**30)
    return out


@pytest.mark.parametrize("how", sorted(REFUSED))
def test_outsider_subscriber_reads_nothing_from_logic_or_router_pub(mesh, outsiders, how):
    topo = mesh.topo
    owner, router = topo.logic_for("lobby"), topo.ids("router")[0]
    spies = [outsiders(zmq.SUB, topo, owner, "pub", how), outsiders(zmq.SUB, topo, router, "pub", how)]
    for spy in spies:
        assert spy.wait_refused() in REFUSED[how]
    # the control: the admin key is admitted and reads both publishers
    ctx = zmq.Context.instance()
    control = ctx.socket(zmq.SUB)
    control.setsockopt(zmq.LINGER, 0)
    control.setsockopt(zmq.SUBSCRIBE, b"")
    try:
        for node_id in (owner, router):
            mesh.admin.identity.as_client(control, node_id)
            control.connect(topo.node(node_id).endpoint("pub"))
        reader = mesh.client(8)
        sender = mesh.client(7)
        seen, text = [], f"secret {how}"

        def fanned_out():
            return any(m.get("t") == "msgs" and any(text.encode() in p for p, *_ in m["items"]) for m in seen)

        def router_spoke():                            # presence deltas and ticks
            return any(m.get("router") == router for m in seen)
        deadline = time.monotonic() + 30
        while not (fanned_out() and router_spoke()):
            assert time.monotonic() < deadline, f"the control subscriber read only {seen}"
            if not fanned_out():
                sender.send("lobby", text)             # again until the control has joined
            seen += published(control, 1.0)
        assert reader.recv(timeout=10) is not None
        for spy in spies:
            assert not spy.sock.poll(0)
    finally:
        control.close(0)


def test_client_curve_admits_only_clients_with_the_server_key(make_mesh, outsiders, tmp_path):
    m = make_mesh(client_curve=True, relays=1)
    endpoint = m.broker(0)
    assert isinstance(endpoint, curve.Endpoint) and endpoint.server_key == curve.public_key(m.topo, "b1")
    plain = outsiders(zmq.DEALER, m.topo, "b1", "client", "no key")
    plain.sock.send(wire.pack({"t": "login", "rid": 1, "v": wire.PROTOCOL_VERSION,
                               "token": m.token(1), "device": 0}))
    assert plain.wait_refused() in REFUSED["no key"]
    wrong = Client(curve.Endpoint(str(endpoint), zmq.curve_keypair()[0]), timeout=1.0, retries=0)
    try:
        with pytest.raises(ClientError):
            wrong.login(m.token(1))
    finally:
        wrong.close(logout=False)
    a, b = m.client(1), m.client(2, broker=1)
    msg_id = a.send("lobby", "over curve")
    got = b.recv(timeout=10)
    assert got["id"] == msg_id and got["text"] == "over curve"
    assert not plain.sock.poll(0)
    # bin/chat finds the keys itself, the relay's too
    sent = run_tool("chat", "send", "-c", m.mesh.config, "--uin", 3, "--channel", "lobby", "via chat")
    assert sent.returncode == 0, sent.stderr
    assert b.recv(timeout=10)["id"] == int(sent.stdout)
    src = tmp_path / "blob"
    src.write_bytes(os.urandom(3000))
    up = run_tool("chat", "upload", "-c", m.mesh.config, "--uin", 3, "--channel", "lobby", src)
    assert up.returncode == 0, up.stderr
    # failover: each broker has its own key, and the client takes the next one's with its endpoint
    m.mesh.kill("b1")
    run_async(failover_over_curve(m, a, b))


async def failover_over_curve(m, a, b):
    endpoints = [curve.client_endpoint(m.topo, n) for n in ("b1", "b2")]
    client = AsyncClient(endpoints, m.token(4), timeout=1.0)
    try:
        await client.connect()                         # b1 is down: logs in at b2
        assert client.endpoint == endpoints[1]             # (a CURVE server answers only its own key)
        msg_id = await client.send("lobby", "after failover")
    finally:
        await client.close()
    got = b.recv(timeout=10)                           # b is on b2 (the upload's message first)
    while got is not None and got["id"] < msg_id:
        got = b.recv(timeout=10)
    assert got is not None and got["id"] == msg_id and got["text"] == "after failover"


def launch(config, node_id):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", "nodes.launch", "--config", config, "--id", node_id],
                          capture_output=True, text=True, timeout=60, env=env)


def test_node_refuses_a_private_key_others_can_read(tmp_path):
    topo = topology.load(write_topology(tmp_path))
    curve.ensure_keys(topo)
    private = curve.key_files(topo, "c1")[1]
    os.chmod(private, 0o644)
    run = launch(topo.path, "c1")
    assert run.returncode == 1
    assert private in run.stderr and "chmod 600" in run.stderr
    assert not os.path.exists(topo.node_dir("c1"))          # refused before opening its store


def as_nobody(fn) -> str:
    """Run ``fn`` in a forked child that became user nobody; the CurveError it raised, as text."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:                                          # the child: no pytest from here on
        said = "no error"
        try:
            os.setgid(65534)
            os.setuid(65534)
            fn()
        except curve.CurveError as exc:
            said = str(exc)
        except BaseException as exc:                      # noqa: BLE001  (reported to the parent)
            said = f"unexpected {exc!r}"
        os.write(write_end, said.encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        said = f.read().decode()
    os.waitpid(pid, 0)
    return said


def test_a_key_the_node_user_may_not_read_is_named_unreadable_not_missing():
    """Keys copied by root into a 0700 keys_dir, a node run as its own user (deploy/*.service):
    the error says permission denied for that user, not "missing" (the file is there)."""
    import shutil
    import tempfile
    directory = tempfile.mkdtemp(prefix="imesh-keyperm-")
    try:
        topo = topology.load(write_topology(directory))
        curve.ensure_keys(topo)                                  # keys_dir mode 0700, owner: us
        private = curve.key_files(topo, "c1")[1]
        if os.geteuid() == 0:                                    # root reads anything: be nobody
            said = as_nobody(lambda: curve.load_pair(topo, "c1"))
        else:
            os.chmod(topo.keys_dir, 0)
            try:
                with pytest.raises(curve.CurveError) as refused:
                    curve.load_pair(topo, "c1")
                said = str(refused.value)
            finally:
                os.chmod(topo.keys_dir, 0o700)
        assert private in said and "permission denied to user" in said and "missing" not in said, said
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def non_local_topology(directory):
    """A test topology marked as a real deployment: nothing makes its keys by itself."""
    path = write_topology(directory)
    raw = yaml.safe_load(open(path))
    raw["local"] = False
    with open(path, "w") as f:
        yaml.safe_dump(raw, f)
    return path, topology.load(path)


def test_node_of_a_non_local_topology_refuses_missing_keys(tmp_path):
    path, topo = non_local_topology(tmp_path)
    run = launch(path, "r1")
    assert run.returncode == 1 and curve.key_files(topo, "r1")[1] in run.stderr
    curve.ensure_keys(topo)
    os.remove(curve.key_files(topo, "l2")[0])               # a peer's public key not copied here
    os.remove(curve.key_files(topo, "l2")[1])
    run = launch(path, "r1")
    assert run.returncode == 1 and curve.key_files(topo, "l2")[0] in run.stderr


def mesh_cli(*args):
    return run_tool("mesh", *args)


def test_bin_mesh_keys_creates_missing_pairs_and_says_what_goes_where(tmp_path):
    path, topo = non_local_topology(tmp_path)
    no_admin_key = mesh_cli("status", "-c", path)
    assert no_admin_key.returncode == 2 and curve.key_files(topo, "admin")[1] in no_admin_key.stderr
    first = mesh_cli("keys", "-c", path)
    assert first.returncode == 0, first.stderr
    for name in list(topo.nodes) + ["admin"]:
        public, private = curve.key_files(topo, name)
        assert stat.S_IMODE(os.stat(private).st_mode) == 0o600
        assert f'{name}: "{curve.public_key(topo, name).decode()}"' in first.stdout
        assert zmq.auth.load_certificate(public)[0] == zmq.auth.load_certificate(private)[0]
    assert "key_secret" in first.stdout and "public_keys:" in first.stdout
    before = {n: open(curve.key_files(topo, n)[1]).read() for n in topo.nodes}
    again = mesh_cli("keys", "-c", path)
    assert again.returncode == 0 and "created none" in again.stdout
    assert before == {n: open(curve.key_files(topo, n)[1]).read() for n in topo.nodes}
    os.chmod(curve.key_files(topo, "b2")[1], 0o640)
    opened = mesh_cli("keys", "-c", path)
    assert opened.returncode == 1 and curve.key_files(topo, "b2")[1] in opened.stderr


def test_topology_curve_keys_and_inline_public_keys(tmp_path):
    path = write_topology(tmp_path)
    topo = topology.load(path)
    assert topo.curve and not topo.client_curve and topo.keys_dir == os.path.join(str(tmp_path), "keys")
    curve.ensure_keys(topo)
    raw = yaml.safe_load(open(path))
    inline, ops = (zmq.curve_keypair()[0].decode() for _ in range(2))
    raw["public_keys"] = {"b1": inline, "ops-laptop": ops}
    bad = dict(raw, public_keys={"b1": "short"})
    for broken, key in ((bad, "public_keys.b1"), (dict(raw, curve="yes"), "curve"),
                        (dict(raw, idcs={"x": {**raw["idcs"]["test"],
                                               "counters": [{"id": "admin", "rpc": "tcp://127.0.0.1:9"}]}}),
                         "idcs")):
        with pytest.raises(topology.TopologyError, match=key):
            topology.parse(broken, path)
    topo = topology.parse(raw, path)
    assert curve.public_key(topo, "b1") == inline.encode()          # inline wins over the file
    with pytest.raises(curve.CurveError, match="b1.key_secret.*not the one published"):
        curve.Identity(topo, "b1")                     # b1's own pair no longer matches what peers use
    names = curve.admitted(topo)
    assert names[inline.encode()] == "b1" and names[ops.encode()] == "ops-laptop"   # another operator tool
    assert len(names) == len(topo.nodes) + 2
    ep = curve.client_endpoint(topology.parse(dict(raw, client_curve=True), path), "b1")
    copy = pickle.loads(pickle.dumps(ep))                  # bench workers get endpoints by pickle
    assert copy == ep and copy.server_key == inline.encode()
