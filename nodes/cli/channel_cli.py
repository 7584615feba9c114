"""bin/mesh channel: create a channel (homed in an IDC: named, given, or the nearest one
measured from here), add or remove members, show one -- through the owning logic node
(nodes/ops/admin.py)."""
from __future__ import annotations

import json
import sys

from nodes.cli.common import fail, load_topology, uin_arg
from nodes.ops.admin import Admin, AdminError, nearest_home
from nodes.protocol import wire
from nodes.protocol.wire import ProtocolError


def members_arg(text: str) -> list[int]:
    """--members 1,2,3: the uins of a new channel."""
    return [uin_arg(x) for x in text.split(",") if x.strip()]


def homed_name(topo, name: str, idc: str) -> str:
    """``NAME@IDC``: the channel's home IDC is part of its name, so every node routes it
    without a lookup (docs/ha.md "Home IDC")."""
    idcs = topo.idcs_with("logic")
    if idc not in idcs:
        fail(f"--idc {idc!r}: no such IDC with logic nodes in {topo.path} (known: {', '.join(idcs)})")
    if "@" in name and name.rpartition("@")[2] in idcs:
        if name.rpartition("@")[2] != idc:
            fail(f"channel {name!r} is homed in {name.rpartition('@')[2]!r} by its name, not {idc!r}")
        return name
    return f"{name}@{idc}"


def measured_home(topo, admin: Admin, name: str) -> dict | None:
    """For ``channel create NAME`` without --idc: in a topology with logic nodes in more than
    one IDC, a NAME with no home yet (no ``@IDC`` suffix, not a topology channel) is homed in
    the IDC of the nearest logic node, measured from here (nodes/ops/admin.py ``nearest_home``);
    None when the name already has its home or there is one IDC."""
    idcs = topo.idcs_with("logic")
    if len(idcs) < 2 or name in topo.channels or name.rpartition("@")[2] in idcs:
        return None
    logics = topo.ids("logic")
    rtts = admin.round_trips(logics, rounds=3)
    home = nearest_home(topo, name, rtts)
    for _ in range(MORE_PASSES):
        if home["by"] != "nearest_tie" or min(r for r in rtts.values() if r is not None) < LAN_RTT:
            break                            # a clear choice, or a LAN/loopback tie the hash settles
        again = admin.round_trips(logics, rounds=3)        # tied over a WAN: a busy moment? once more
        rtts = {n: min((r for r in (rtts[n], again[n]) if r is not None), default=None) for n in logics}
        home = nearest_home(topo, name, rtts)
    return home


MORE_PASSES = 2      # best of 3 more round trips, twice at most, while IDCs far apart look tied
LAN_RTT = 0.001      # seconds: a best round trip below this is one LAN (or loopback): a tie is real


def cmd_channel(args) -> int:
    topo = load_topology(args.config)
    members: list[int] = []
    if args.op == "create":
        members = args.members or []
    elif args.op in ("add", "remove"):
        if not args.uins:
            fail(f"channel {args.op} needs at least one UIN")
        members = args.uins
    name, home = args.name, None
    if args.idc is not None:
        if args.op != "create":
            fail("--idc applies to channel create only (a channel's home is part of its name)")
        name = homed_name(topo, name, args.idc)
    admin = Admin(topo)
    try:
        if args.lifetime is not None and args.op != "create":
            fail("--lifetime applies to channel create only")
        if args.op == "create" and args.idc is None:
            wire.check_channel_name(name)
            home = measured_home(topo, admin, name)
            if home is not None:
                name = homed_name(topo, name, home["idc"])
                print(f"home IDC {home['idc']}: {home['why']}; the channel is {name}", file=sys.stderr)
        reply = admin.channel(args.op, name, members, args.lifetime)
    except (AdminError, ProtocolError) as exc:
        print(f"error: {exc.code}: {exc.msg}", file=sys.stderr)
        return 1
    shown = {"channel": reply["channel"], "members": reply["members"],
             "last_id": reply["last"], "lifetime": reply.get("lifetime")}
    shown.update({k: reply[k] for k in ("shard", "replicas", "leader", "epoch") if k in reply})
    shown["idc"] = topo.home_of(reply["channel"])
    if home is not None:
        shown["home"] = {k: home[k] for k in ("by", "logic", "why", "rtt_ms")}
    print(json.dumps(shown) if args.json or args.op != "show" else channel_text(shown))
    return 0


def channel_text(shown: dict) -> str:
    """`channel show` for a person: members, newest id, lifetime, home; replicated: its shard."""
    members = shown["members"]
    listed = ", ".join(map(str, members[:50])) + (f" ... ({len(members)} in all)" if len(members) > 50 else "")
    lifetime = "the topology's default" if shown["lifetime"] is None else f"{shown['lifetime']:g} s"
    lines = [f"channel {shown['channel']} (home IDC {shown['idc']})",
             f"  members ({len(members)}): {listed or 'none'}",
             f"  newest id {shown['last_id']}; messages live {lifetime}"]
    if "shard" in shown:
        lines.append(f"  shard {shown['shard']}: replicas {' '.join(shown.get('replicas') or [])}, "
                     f"leader {shown.get('leader')}, epoch {shown.get('epoch')}")
    return "\n".join(lines)
