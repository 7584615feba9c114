"""A network namespace joined to the test's own by one veth pair: cut it by taking the link down.

Used by tests that cut some nodes off from the rest (tests/test_ha_partition.py,
tests/test_link_heal.py): the nodes inside bind on the namespace's address,
the others on the host side's, and ``ip link set LINK down`` is the cut.
Skipped when not root.  Everything made is removed on the way out, also when
the test fails.
"""
from __future__ import annotations

import os
import random
import re
import subprocess

import pytest


def ip(*args):
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def netns():
    """A namespace joined to this one by a veth pair: (namespace, host-side ip, ns-side ip, link)."""
    if os.geteuid() != 0:
        pytest.skip("needs root for ip netns (network namespaces and veth pairs)")
    tag = f"ha{os.getpid() % 100000}"
    shown = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
    used = {int(n) for n in re.findall(r"inet 10\.213\.(\d+)\.", shown)}     # a parallel run's
    net = random.choice([n for n in range(1, 250) if n not in used])
    ns, host_if, ns_if = f"imesh-{tag}", f"vh{tag}", f"vn{tag}"
    host_ip, ns_ip = f"10.213.{net}.1", f"10.213.{net}.2"
    try:
        ip("netns", "add", ns)
        ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        ip("link", "set", ns_if, "netns", ns)
        ip("addr", "add", f"{host_ip}/24", "dev", host_if)
        ip("link", "set", host_if, "up")
        ip("-n", ns, "addr", "add", f"{ns_ip}/24", "dev", ns_if)
        ip("-n", ns, "link", "set", ns_if, "up")
        ip("-n", ns, "link", "set", "lo", "up")
    except (subprocess.CalledProcessError, OSError) as exc:
        remove(ns, host_if)                # what the steps before the failed one made
        pytest.skip(f"cannot build a network namespace here: {exc}")
    try:
        yield ns, host_ip, ns_ip, host_if
    finally:
        remove(ns, host_if)


def remove(ns, host_if):
    """The veth pair (both ends go with the host side) and the namespace, whichever exist."""
    subprocess.run(["ip", "link", "del", host_if], capture_output=True)
    subprocess.run(["ip", "netns", "del", ns], capture_output=True)
