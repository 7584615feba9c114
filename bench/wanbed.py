"""A WAN test bed on one machine: IDCs in network namespaces joined by a delaying forwarder.

Each IDC is a Linux bridge in the root namespace; every host (a node, a
client) is a network namespace of its own with one veth on its IDC's
bridge.  The IDCs' bridges are joined only through two TAP devices and
``WanLink``, a userspace forwarder that holds every Ethernet frame for the
one-way delay -- this kernel has no ``sch_netem``, so ``tc netem`` cannot
do it -- counts what crosses (frames, and TCP segments that carry data),
and can cut the link (drop everything) and heal it.

Addressing: IDC i is 10.<net>.<i>.0/24; hosts use 10.<net>.0.0/16 as
on-link (so a host reaches the other IDC straight through the WAN, by ARP
over the joined bridges); the root namespace holds 10.<net>.<i>.254 on
each IDC's bridge, so a test process reaches every IDC *without* crossing
the WAN (readiness checks and admin calls do not disturb the counters).

Everything made is named with a random tag and removed by ``close()``
(namespaces, bridges, TAPs), also when a test fails.  Needs root.
"""
from __future__ import annotations

import collections
import fcntl
import os
import random
import re
import select
import shutil
import struct
import subprocess
import threading
import time

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000


class WanError(RuntimeError):
    pass


def available() -> str | None:
    """None when a bed can be built here; else the reason it cannot."""
    if os.geteuid() != 0:
        return "the WAN test bed needs root (network namespaces, bridges, TAP devices)"
    if shutil.which("ip") is None:
        return "the WAN test bed needs iproute2's `ip`"
    if not os.path.exists("/dev/net/tun"):
        return "the WAN test bed needs /dev/net/tun"
    return None


def ip(*args: str) -> None:
    run = subprocess.run(["ip", *args], capture_output=True, text=True)
    if run.returncode != 0:
        raise WanError(f"ip {' '.join(args)}: {run.stderr.strip()}")


def free_net() -> int:
    """A second octet (100-199) no address of the root namespace uses yet: two beds on one machine
    (tests of parallel runs) sharing 10.<net> would route each other's hosts away."""
    shown = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
    used = {int(n) for n in re.findall(r"inet 10\.(\d+)\.", shown)}
    free = [n for n in range(100, 200) if n not in used]
    if not free:
        raise WanError("every 10.100-199 network is in use by other beds")
    return random.choice(free)


def open_tap(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    return fd


def carries_tcp_data(frame: bytes) -> bool:
    """An IPv4 TCP segment with payload (ZeroMQ traffic, not bare ACKs or ARP)."""
    if len(frame) < 34 or frame[12:14] != b"\x08\x00" or frame[23] != 6:
        return False
    ihl = (frame[14] & 0x0F) * 4
    total = struct.unpack_from(">H", frame, 16)[0]
    tcp = 14 + ihl
    if len(frame) < tcp + 13:
        return False
    return total - ihl - (frame[tcp + 12] >> 4) * 4 > 0


class WanLink:
    """Forward frames between two TAP fds, each held ``delay`` seconds; count; cut; heal."""

    def __init__(self, fd_a: int, fd_b: int, delay: float, clock=time.monotonic):
        self.fds = (fd_a, fd_b)
        self.delay = delay
        self.clock = clock                        # tests give a fake one (tests/test_timing_rules.py)
        self.cut = False
        self.counts = collections.Counter()       # frames, data_frames, bytes, dropped (per direction)
        self.marks = collections.Counter()        # watched byte string -> times seen crossing
        self._queues = {fd_a: collections.deque(), fd_b: collections.deque()}   # to fd: (due, frame)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wanlink", daemon=True)

    def start(self) -> WanLink:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def reset(self) -> None:
        self.counts.clear()
        for mark in self.marks:
            self.marks[mark] = 0

    def watch(self, mark: bytes) -> None:
        """Count how often ``mark`` crosses (in any frame, either way): with CURVE off and a
        unique text, how many copies of one message crossed, whatever else (heartbeats,
        ticks) shares the link."""
        self.marks[mark] = 0

    def crossed(self, mark: bytes) -> int:
        return self.marks[mark]

    def data_frames(self) -> int:
        return self.counts["a>b data_frames"] + self.counts["b>a data_frames"]

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self.turn():
                return

    def turn(self, wait_max: float = 0.05) -> bool:
        """Read what arrived (waiting up to the next due frame, at most ``wait_max``), forward
        what is due; False once a TAP is gone."""
        a, b = self.fds
        other = {a: b, b: a}
        name = {a: "a>b", b: "b>a"}
        now = self.clock()
        dues = [q[0][0] for q in self._queues.values() if q]
        timeout = max(0.0, min(dues) - now) if dues else wait_max
        readable, _, _ = select.select([a, b], [], [], min(timeout, wait_max))
        now = self.clock()
        for fd in readable:
            while True:
                try:
                    frame = os.read(fd, 65536)
                except BlockingIOError:
                    break
                except OSError:
                    return False
                way = name[fd]
                if self.cut:
                    self.counts[f"{way} dropped"] += 1
                    continue
                self.counts[f"{way} frames"] += 1
                self.counts[f"{way} bytes"] += len(frame)
                if carries_tcp_data(frame):
                    self.counts[f"{way} data_frames"] += 1
                    for mark in list(self.marks):
                        self.marks[mark] += frame.count(mark)
                self._queues[other[fd]].append((now + self.delay, frame))
        for fd, queue in self._queues.items():
            while queue and queue[0][0] <= now:
                _due, frame = queue.popleft()
                try:
                    os.write(fd, frame)
                except OSError:
                    self.counts["write errors"] += 1
        return True


class WanBed:
    """Two (or more) IDCs of namespaced hosts joined by one delaying ``WanLink``."""

    def __init__(self, idcs=("east", "west"), delay: float = 0.020):
        if len(idcs) != 2:
            raise WanError("the bed joins exactly two IDCs")
        self.tag = f"{random.getrandbits(16):04x}"
        self.net = None                            # 10.<net>.*: a free one, chosen by start()
        self.idcs = list(idcs)
        self.delay = delay
        self.hosts = {}                            # host name -> (namespace, address, idc)
        self._bridges, self._taps, self._tap_fds, self._veths = [], [], [], []
        self.link = None

    # --- building ---------------------------------------------------------------
    def start(self) -> WanBed:
        reason = available()
        if reason:
            raise WanError(reason)
        try:
            self.net = free_net()
            for i, _idc in enumerate(self.idcs, start=1):
                bridge = f"imb{self.tag}{i}"
                ip("link", "add", bridge, "type", "bridge")
                self._bridges.append(bridge)
                ip("addr", "add", f"10.{self.net}.{i}.254/24", "dev", bridge)
                ip("link", "set", bridge, "up")
                tap = f"imt{self.tag}{i}"
                self._tap_fds.append(open_tap(tap))
                self._taps.append(tap)
                ip("link", "set", tap, "master", bridge)
                ip("link", "set", tap, "up")
            self.link = WanLink(*self._tap_fds, self.delay).start()
        except Exception:
            self.close()
            raise
        return self

    def host(self, name: str, idc: str) -> str:
        """A namespace on ``idc``'s bridge; its address."""
        if name in self.hosts:
            return self.hosts[name][1]
        i = self.idcs.index(idc) + 1
        n = 1 + sum(1 for _ns, _a, c in self.hosts.values() if c == idc)
        if n > 250:
            raise WanError("at most 250 hosts per IDC")
        ns = f"imn{self.tag}{i}h{n}"
        address = f"10.{self.net}.{i}.{n}"
        veth, peer = f"imv{self.tag}{i}h{n}", f"imp{self.tag}{i}h{n}"
        ip("netns", "add", ns)
        self.hosts[name] = (ns, address, idc)
        ip("link", "add", veth, "type", "veth", "peer", "name", peer)
        self._veths.append(veth)
        ip("link", "set", peer, "netns", ns)
        ip("link", "set", veth, "master", self._bridges[i - 1])
        ip("link", "set", veth, "up")
        ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", ns, "link", "set", peer, "name", "eth0")
        ip("-n", ns, "addr", "add", f"{address}/16", "dev", "eth0")
        ip("-n", ns, "link", "set", "eth0", "up")
        return address

    def wrap(self, name: str) -> list[str]:
        """The argv prefix that runs a command on host ``name``."""
        return ["ip", "netns", "exec", self.hosts[name][0]]

    def run(self, name: str, argv, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(self.wrap(name) + list(argv), **kwargs)

    # --- the link ---------------------------------------------------------------
    def cut(self) -> None:
        self.link.cut = True

    def heal(self) -> None:
        self.link.cut = False

    # --- teardown ---------------------------------------------------------------
    def close(self) -> None:
        if self.link is not None:
            self.link.stop()
            self.link = None
        for ns, _address, _idc in self.hosts.values():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        for fd in self._tap_fds:
            os.close(fd)
        for dev in self._veths + self._taps + self._bridges:     # a veth can outlive its namespace
            subprocess.run(["ip", "link", "del", dev], capture_output=True)
        self.hosts, self._tap_fds, self._taps, self._bridges, self._veths = {}, [], [], [], []

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()


ENDPOINT_PORTS = {"client": 7101, "rpc": 7111, "pub": 7211, "ws": 7601}


def write_wan_topology(bed: WanBed, directory: str, layout: dict, limits=None, channels=None,
                       **extra) -> str:
    """A local topology whose nodes each live on their own host of ``bed``.

    ``layout``: {idc: {"brokers": n, "logics": n, "routers": n, "counters": n}}; node ids are
    ``<idc>-<type letter><n>`` (e.g. east-b1).  Every host has its own address, so every node
    uses the same ports.  ``extra``: more top-level keys (e.g. ``curve=False``).  Returns the
    topology's path.
    """
    import yaml  # noqa: PLC0415  (bench code, loaded on use)

    from nodes.cluster.topology import ENDPOINTS
    from nodes.protocol import auth
    idcs = {}
    for idc, counts in layout.items():
        groups = {}
        for group, n in counts.items():
            node_type = group[:-1]
            for k in range(1, n + 1):
                node_id = f"{idc}-{node_type[0]}{k}"
                address = bed.host(node_id, idc)
                entry = {"id": node_id}
                for name in ENDPOINTS[node_type]:
                    entry[name] = f"tcp://{address}:{ENDPOINT_PORTS[name]}"
                groups.setdefault(group, []).append(entry)
        idcs[idc] = groups
    raw = {"cluster": f"wan-{bed.tag}", "local": True, "secret_file": "secret", "data_dir": "data",
           "limits": {"rate": 10000.0, "burst": 10000, "session_inflight": 10000, **(limits or {})},
           "channels": channels if channels is not None else {"lobby": {"members": "1-100"}},
           "idcs": idcs, **extra}
    path = os.path.join(directory, "topology.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(raw, f)
    auth.ensure_secret(os.path.join(directory, "secret"))
    return path
