"""Fan-out that crosses the WAN at most once per remote IDC (docs/ha.md "Home IDC").

A logic node's turn ends with, per broker, the deliveries for its online
members: ``{broker: [[packed, uins, sender uin, sender device], ...]}``.
Brokers of the logic node's own IDC each get their frame as before.  For a
remote IDC with several such brokers, one of them (the *gateway*: the
rendezvous owner of the logic node's id among them, so logic nodes spread
the work) gets one ``msgs_idc`` frame holding each message once (``packs``)
and, per broker of that IDC, which messages go to which uins (``to``); the
gateway delivers its own part and forwards the rest to its IDC peers over
their rpc endpoints (``fwd``), inside the IDC.

No sockets here: ``plan`` returns (broker, message) pairs to publish, and
``split`` turns a received ``msgs_idc`` into per-broker item lists.
"""
from __future__ import annotations

from nodes.cluster import rendezvous
from nodes.protocol import wire


def plan(outbox: dict, topo, own_idc: str | None, logic_id: str) -> list:
    """[(broker, message)] for one turn's outbox: one frame per own-IDC broker, one per remote IDC."""
    out: list = []
    remote: dict = {}
    for broker, items in outbox.items():
        spec = topo.nodes.get(broker)
        idc = spec.idc if spec is not None else own_idc
        if own_idc is None or idc == own_idc:
            out.append((broker, {"t": "msgs", "items": items, "logic": logic_id}))
        else:
            remote.setdefault(idc, {})[broker] = items
    for brokers in remote.values():
        if len(brokers) == 1:
            (broker, items), = brokers.items()
            out.append((broker, {"t": "msgs", "items": items, "logic": logic_id}))
            continue
        gateway = rendezvous.owner(sorted(brokers), logic_id)
        packs: list[bytes] = []
        index: dict[int, int] = {}
        to: dict[str, list] = {}
        for broker, items in brokers.items():
            rows = to[broker] = []
            for packed, uins, uin, device in items:
                k = index.get(id(packed))
                if k is None:
                    k = index[id(packed)] = len(packs)
                    packs.append(packed)
                rows.append([k, uins, uin, device])
        out.append((gateway, {"t": "msgs_idc", "packs": packs, "to": to, "logic": logic_id}))
    return out


def split(msg: dict) -> dict:
    """{broker: items} of a ``msgs_idc`` frame; ProtocolError when it is malformed."""
    packs, to = msg.get("packs"), msg.get("to")
    if not isinstance(packs, list) or not all(isinstance(p, bytes) for p in packs) or not isinstance(to, dict):
        raise wire.ProtocolError(wire.Err.BAD_FIELD, "msgs_idc needs 'packs' (list of bin) and 'to' (map)")
    out = {}
    for broker, rows in to.items():
        if not isinstance(broker, str) or not isinstance(rows, list):
            raise wire.ProtocolError(wire.Err.BAD_FIELD, "msgs_idc 'to' maps broker ids to lists")
        out[broker] = [[packs[k], uins, uin, device] for k, uins, uin, device in _rows(rows, len(packs))]
    return out


def check_items(items) -> list:
    """The items of a forwarded ``fwd`` request, checked: [[packed, [uin...], uin, device], ...]."""
    if not isinstance(items, list):
        raise wire.ProtocolError(wire.Err.BAD_FIELD, "field 'items' must be a list")
    for item in items:
        if not (isinstance(item, list) and len(item) == 4 and isinstance(item[0], bytes)
                and isinstance(item[1], list) and all(type(u) is int for u in item[1])
                and type(item[2]) is int and type(item[3]) is int):
            raise wire.ProtocolError(wire.Err.BAD_FIELD, "each item must be [bin, [uin, ...], uin, device]")
    return items


def _rows(rows, n_packs):
    for row in rows:
        if not (isinstance(row, list) and len(row) == 4 and type(row[0]) is int and 0 <= row[0] < n_packs
                and isinstance(row[1], list)):
            raise wire.ProtocolError(wire.Err.BAD_FIELD, "msgs_idc rows are [pack index, [uin, ...], uin, device]")
        yield row
