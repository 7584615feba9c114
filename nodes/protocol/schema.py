"""Every frame kind of the protocol in one place: its fields, their types, required or optional, limits.

This is the one schema source.  nodes/protocol/wire.py compiles these tables
into the validators the dispatchers run (client and internal requests at
dispatch, PUB frames as they are read), and docs/protocol.md's "Frame
reference" is generated from them (``python -m nodes.protocol.schemadoc``;
tests/test_protocol_doc.py fails when the checked-in text differs).

A table maps a frame kind (the ``t`` field) to its fields, in the order they
are checked; each field is a ``Field``.  Kinds of field are named by string
(see wire.KINDS): a value of the wrong msgpack type or range is refused with
BAD_FIELD, except where a kind has its own code (``channel``: BAD_CHANNEL,
``frag``: BAD_FRAGMENT).  A ``limit`` is an int, or the name of a topology
limit the dispatcher is given when it is built (``Dispatcher(limits=...)``):
the text's bytes (TOO_LONG / EMPTY_TEXT), a map's entries (TOO_MANY), the
fragment count (BAD_FRAGMENT).  A named limit nobody bound is not checked
there (the handler still checks it).  Fields not listed are ignored (forward
compatibility).

Replies and pushes are listed with the same Field type; nothing validates
them at run time (the peer that sent the request trusts the node that
answers), but tests and the doc do.
"""
from __future__ import annotations

import msgspec


class Field(msgspec.Struct, frozen=True):
    kind: str                       # a key of wire.KINDS
    optional: bool = False          # may be left out
    limit: int | str | None = None  # an int, or the name of a topology limit bound at dispatch
    nil: bool = False               # nil is taken as absent (only for optional fields)
    doc: str = ""


def req(kind: str, doc: str = "", limit: int | str | None = None) -> Field:
    return Field(kind, False, limit, False, doc)


def opt(kind: str, doc: str = "", limit: int | str | None = None, nil: bool = False) -> Field:
    return Field(kind, True, limit, nil, doc)


RID = req("u64", "request id, echoed in the reply")
SID = req("u64", "the session's id from login_ok")
AUTH = req("str", "a token of scope admin")

# Named limits: where a dispatcher's ``limits`` come from in a topology (docs/deploy.md).
LIMIT_SOURCES = {
    "max_text": "limits.max_text",
    "max_fragments": "limits.max_fragments",
    "max_channels": "heartbeat.max_channels",
    "group_max_members": "limits.group_max_members",
}
PAGE_MAX = 100                  # items of a ``channels`` or ``history`` page at most
PAGE_DEFAULT = 50               # ... when the request names no ``limit``
TITLE_MAX = 64                  # bytes of a group's title
ROLES = ("owner", "admin", "member")
CREATE_KINDS = ("dm", "group")


# --- client -> broker ---------------------------------------------------------------------------

LOGIN = {"rid": RID, "v": req("u32", "protocol version"), "token": req("str", "login token"),
         "device": req("u32", "the client's device number")}

CLIENT_REQUESTS = {
    "login": dict(LOGIN, net=opt("str", "network type: picks the first heartbeat interval")),
    "ping": {"rid": RID},
    "send": {"rid": RID, "sid": SID, "channel": req("channel", "target channel"),
             "ctime": req("u64", "client time, unique per (uin, device) and message"),
             "text": req("text", "UTF-8 text", limit="max_text"),
             "frag": opt("frag", "fragment header [group, index, count]", limit="max_fragments")},
    "sync": {"rid": RID, "sid": SID, "channel": req("channel"), "after": req("u64", "newest id held")},
    "hb": {"rid": RID, "sid": SID,
           "channels": opt("windows", "per channel, the newest id the client holds", limit="max_channels"),
           "net": opt("str", "network type now")},
    "logout": {"rid": RID, "sid": SID},
    # --- conversations (docs/protocol.md "Conversations") ---
    "channels": {"rid": RID, "sid": SID,
                 "after": opt("str", "the `next` cursor of the previous page (opaque)"),
                 "limit": opt("page", "channels per page (default 50)", limit=PAGE_MAX)},
    "read": {"rid": RID, "sid": SID, "channel": req("channel"),
             "id": req("u64", "read up to this id (the cursor never moves back)")},
    "receipts": {"rid": RID, "sid": SID, "channel": req("channel"), "id": req("u64", "who has read up to this id")},
    "history": {"rid": RID, "sid": SID, "channel": req("channel"),
                "before": opt("u64", "older than this id (default: from the newest)"),
                "limit": opt("page", "messages per page (default 50)", limit=PAGE_MAX)},
    "edit": {"rid": RID, "sid": SID, "channel": req("channel"), "id": req("u64", "the message to edit"),
             "ctime": req("u64", "client time, as a send's"),
             "text": req("text", "the new text", limit="max_text")},
    "delete": {"rid": RID, "sid": SID, "channel": req("channel"), "id": req("u64", "the message to delete"),
               "ctime": req("u64", "client time, as a send's")},
    "typing": {"rid": RID, "sid": SID, "channel": req("channel")},
    "watch": {"rid": RID, "sid": SID, "channel": req("channel")},
    "unwatch": {"rid": RID, "sid": SID, "channel": req("channel")},
    "create": {"rid": RID, "sid": SID, "kind": req("str", "dm or group"), "ctime": req("u64", "client time"),
               "with": opt("u32", "dm: the other user"),
               "name": opt("text", "group: its title", limit=TITLE_MAX),
               "members": opt("u32list", "group: the other members", limit="group_max_members")},
    "invite": {"rid": RID, "sid": SID, "channel": req("channel"), "ctime": req("u64", "client time"),
               "uins": req("u32list", "users to add", limit="group_max_members")},
    "remove": {"rid": RID, "sid": SID, "channel": req("channel"), "ctime": req("u64", "client time"),
               "uins": req("u32list", "members to remove", limit="group_max_members")},
    "leave": {"rid": RID, "sid": SID, "channel": req("channel"), "ctime": req("u64", "client time")},
    "role": {"rid": RID, "sid": SID, "channel": req("channel"), "ctime": req("u64", "client time"),
             "uin": req("u32", "the member"), "role": req("str", "owner, admin or member")},
    "mute": {"rid": RID, "sid": SID, "channel": req("channel"),
             "until": req("number", "no offline pushes of the channel until then (seconds since the "
                          "epoch); 0: unmute")},
}
# Served without a session (everything else needs the login's ``sid``).
SESSIONLESS = frozenset(("login", "ping"))

# broker -> client: replies (each also carries the request's ``rid``), pushes and notices
CLIENT_REPLIES = {
    "login_ok": {"rid": RID, "uin": req("u32"), "device": req("u32"), "sid": req("u64"),
                 "broker": req("str"), "idc": req("strnil"),
                 "hb": req("number", "heartbeat interval, seconds"),
                 "limits": req("map", "max_text, max_fragments, rate, burst, message_lifetime, edit_window, "
                           "typing_rate, typing_burst, watch_ttl, group_max_members, receipts_max_members, "
                           "presence_max_members")},
    "pong": {"rid": RID, "broker": req("str"), "idc": req("strnil")},
    "ack": {"rid": RID, "channel": req("str"), "device": req("u32"), "ctime": req("u64"),
            "id": req("u64", "the message's id")},
    "sync": {"rid": RID, "channel": req("str"), "msgs": req("list", "msg maps as pushed"),
             "first": req("u64"), "last": req("u64"), "upto": req("u64"), "more": req("bool")},
    "hb_ack": {"rid": RID, "interval": req("number"), "heads": req("windows"), "first": req("windows"),
               "upto": req("windows"), "more": req("channels"), "not_member": req("channels"),
               "unavailable": req("channels")},
    "bye": {"rid": RID},
    "channels": {"rid": RID, "items": req("list", "channel maps, most recently active first (see Conversations)"),
                 "next": opt("str", "cursor of the next page; absent on the last"),
                 "partial": opt("bool", "true: a logic node did not answer; its channels are missing")},
    "read": {"rid": RID, "channel": req("str"), "id": req("u64", "the cursor now")},
    "receipts": {"rid": RID, "channel": req("str"), "id": req("u64"),
                 "read_by": req("u32list", "other members whose cursor is at or past id")},
    "history": {"rid": RID, "channel": req("str"), "msgs": req("list", "msg maps, oldest first, edits applied"),
                "more": req("bool", "older stored messages exist"), "first": req("u64", "oldest id still stored")},
    "typing": {"rid": RID, "channel": req("str")},
    "watch": {"rid": RID, "channel": req("str"), "online": req("u32list", "members online now")},
    "unwatch": {"rid": RID, "channel": req("str")},
    "create": {"rid": RID, "channel": req("str"), "kind": req("str", "dm or group"),
               "created": req("bool", "false: it existed (a dm, or a retry)"),
               "title": opt("str"), "members": req("u32", "member count")},
    "invite": {"rid": RID, "channel": req("str"), "uins": req("u32list", "added now"),
               "members": req("u32", "member count")},
    "remove": {"rid": RID, "channel": req("str"), "uins": req("u32list", "removed now"),
               "members": req("u32", "member count")},
    "leave": {"rid": RID, "channel": req("str")},
    "role": {"rid": RID, "channel": req("str"), "uin": req("u32"), "role": req("str")},
    "mute": {"rid": RID, "channel": req("str"), "until": req("number", "0: not muted")},
    "err": {"rid": req("u64nil"), "code": req("str", "an error code"), "msg": req("str"),
            "limit": opt("u64"), "retry_after": opt("number"), "reason": opt("str"),
            "version": opt("u32")},
}
PUSHES = {
    "msg": {"channel": req("str"), "id": req("u64"), "uin": req("u32"), "device": req("u32"),
            "ctime": req("u64"), "stime": req("u64", "ms since the epoch"),
            "text": opt("str", "absent on a tombstone (deleted: true)"),
            "frag": opt("frag", "only on fragments"),
            "kind": opt("str", "edit or delete: an event on message `ref` (absent: a message)"),
            "ref": opt("u64", "edit/delete: the message it applies to"),
            "edited": opt("u64", "history: stime ms of the latest edit"),
            "deleted": opt("bool", "history: a tombstone (no text)")},
    "read": {"channel": req("str"), "uin": req("u32", "you, from another device"), "id": req("u64", "your cursor now")},
    "receipt": {"channel": req("str"), "uin": req("u32", "the reader"), "id": req("u64", "read up to")},
    "typing": {"channel": req("str"), "uin": req("u32", "who is typing")},
    "presence": {"channel": req("str", "a watched channel"), "uin": req("u32"), "online": req("bool")},
    "kicked": {"reason": req("str", "replaced, expired or kicked (by the HTTP API); a too_slow "
                             "client gets no notice"),
               "msg": opt("str")},
}

SYNC_PAGE = 200                # messages per sync reply at most

# --- between nodes: requests, each answered on the same DEALER ----------------------------------

# broker -> logic: the conversation layer's rooms, roles and read state (issue 24; nodes/logic/rooms.py,
# nodes/logic/readstate.py).  ``uin`` and ``device`` are the caller's, ``ctime`` the client's (a retry's
# dedup key); a role change names the member it changes ``target``.
_CALLER = {"rid": RID, "uin": req("u32", "the caller"), "device": req("u32", "the caller's device"),
           "ctime": req("u64", "client time: a retry with the same one gets the original answer")}
CONVERSATION_LOGIC_REQUESTS = {
    "create": dict(_CALLER, kind=req("str", "dm or group"), channel=opt("channel", "the name the broker computed "
                   "(nodes/protocol/names.py); BAD_FIELD if another"),
                   **{"with": opt("u32", "dm: the other user")},
                   title=opt("str", "group: its title, <= 64 bytes"),
                   members=opt("u32list", "group: the other members (limits.group_max_members in all)")),
    "invite": dict(_CALLER, channel=req("channel"), uins=req("u32list", "uins to add")),
    "remove": dict(_CALLER, channel=req("channel"), uins=req("u32list", "members to remove")),
    "leave": dict(_CALLER, channel=req("channel")),
    "role": dict(_CALLER, channel=req("channel"), target=req("u32", "the member whose role changes"),
                 role=req("str", "owner, admin or member")),
    "read": {"rid": RID, "uin": req("u32"), "device": req("u32"), "channel": req("channel"),
             "id": req("u64", "read up to this id")},
    "receipts": {"rid": RID, "uin": req("u32"), "channel": req("channel"), "id": req("u64")},
    "my_channels": {"rid": RID, "uin": req("u32")},
}
# logic -> broker: their replies (each also carries ``rid``)
CONVERSATION_LOGIC_REPLIES = {
    "create": {"rid": RID, "channel": req("str"), "kind": req("str"), "created": req("bool", "false: it existed"),
               "members": req("u32list"), "role": req("str", "the caller's"), "title": opt("str")},
    "invite": {"rid": RID, "channel": req("str"), "added": req("u32list", "uins not members before"),
               "members": req("u32", "member count now")},
    "remove": {"rid": RID, "channel": req("str"), "removed": req("u32list", "uins that were members"),
               "members": req("u32", "member count now")},
    "leave": {"rid": RID, "channel": req("str"), "members": req("u32", "member count now")},
    "role": {"rid": RID, "channel": req("str"), "target": req("u32"), "role": req("str")},
    "read": {"rid": RID, "channel": req("str"), "id": req("u64", "the caller's cursor now")},
    "receipts": {"rid": RID, "channel": req("str"), "id": req("u64"),
                 "read_by": req("u32list", "members other than the caller with a cursor >= id")},
    "my_channels": {"rid": RID, "uin": req("u32"),
                    "items": req("list", "channel, kind, title?, role, members, last, read, unread, "
                                 "unread_more?, active (stime ms), preview? {id, uin, stime, text or deleted}"),
                    "truncated": opt("bool", "more than 10,000 channels here: the first by activity")},
}
# logic -> broker, in ``msgs`` items (delivered to the uins' sessions but the sender's device)
CONVERSATION_PUSHES = {
    "read": {"channel": req("str"), "uin": req("u32"), "id": req("u64", "the user's cursor now")},
    "receipt": {"channel": req("str"), "uin": req("u32", "who read"), "id": req("u64")},
}

# broker -> logic, admin -> logic, relay -> logic
LOGIC_REQUESTS = {
    "send": {"rid": RID, "uin": req("u32"), "device": req("u32"), "channel": req("channel"),
             "ctime": req("u64"), "text": req("str"), "frag": opt("frag", "as the client sent it"),
             "lookup": opt("bool", "true: the user is over the rate; answer a retry, store nothing "
                           "(else RATE_LIMITED)")},
    "sync": {"rid": RID, "uin": req("u32"), "channel": req("channel"), "after": req("u64")},
    "heads": {"rid": RID, "uin": req("u32"), "channels": req("windows")},
    "status": {"rid": RID, "reset_max": opt("any", "true: start a new max_turn window")},
    "channel_create": {"rid": RID, "auth": AUTH, "channel": req("channel"), "members": req("u32list"),
                       "lifetime": opt("seconds", "message lifetime of the channel", nil=True)},
    "channel_add": {"rid": RID, "auth": AUTH, "channel": req("channel"), "members": req("u32list")},
    "channel_remove": {"rid": RID, "auth": AUTH, "channel": req("channel"), "members": req("u32list")},
    "channel_show": {"rid": RID, "auth": AUTH, "channel": req("channel")},
    "presence": {"rid": RID, "uin": req("u32")},
    "member": {"rid": RID, "uin": req("u32"), "channel": req("channel")},
    # conversations (issue 24): edit/delete events (the send path: acked ``ack``), history,
    # typing and watched presence (ephemeral: nodes/logic/ephemeral.py)
    "edit": {"rid": RID, "uin": req("u32"), "device": req("u32"), "channel": req("channel"),
             "id": req("u64", "the message edited"), "ctime": req("u64"),
             "text": req("text", "the new text", limit="max_text"),
             "lookup": opt("bool", "as send's: over the rate, answer a retry only")},
    "delete": {"rid": RID, "uin": req("u32"), "device": req("u32"), "channel": req("channel"),
               "id": req("u64", "the message deleted"), "ctime": req("u64"),
               "lookup": opt("bool", "as send's: over the rate, answer a retry only")},
    "history": {"rid": RID, "uin": req("u32"), "channel": req("channel"),
                "before": opt("u64", "page below this id (default: the newest + 1)", nil=True),
                "limit": opt("u32", "messages, 1..100 (default 50)", nil=True)},
    "typing": {"rid": RID, "uin": req("u32"), "device": req("u32"), "channel": req("channel")},
    "watch": {"rid": RID, "uin": req("u32"), "device": req("u32"), "channel": req("channel")},
    "unwatch": {"rid": RID, "uin": req("u32"), "device": req("u32"), "channel": req("channel")},
    **CONVERSATION_LOGIC_REQUESTS,
    # the server HTTP API (nodes/broker/httpapi.py -> nodes/logic/admin_ops.py)
    "channel_delete": {"rid": RID, "auth": AUTH, "channel": req("channel")},
    "channel_list": {"rid": RID, "auth": AUTH},
    "channel_online": {"rid": RID, "auth": AUTH, "channel": req("channel")},
    "channel_role": {"rid": RID, "auth": AUTH, "channel": req("channel"), "uin": req("u32", "a member of the group"),
                     "role": req("str", "owner (hands ownership over), admin or member")},
    "system_send": {"rid": RID, "auth": AUTH, "channel": req("channel"),
                    "text": req("str", "at most max_text (checked by the broker)"),
                    "ctime": req("u64", "client time of the system message: a retry with the same one "
                                 "stores once")},
    "mute": {"rid": RID, "uin": req("u32"), "channel": req("channel"), "until": req("number")},
}

# broker -> router, logic -> router
ROUTER_REQUESTS = {
    "online": {"rid": RID, "uin": req("u32"), "device": req("u32"), "broker": req("str"),
               "net": opt("any", "network type (the default interval when not a known str)")},
    "hb": {"rid": RID, "uin": req("u32"), "device": req("u32"), "broker": req("str"),
           "net": opt("any", "network type now")},
    "touch": {"rid": RID, "broker": req("str"), "sessions": req("pairs")},
    "offline": {"rid": RID, "uin": req("u32"), "device": req("u32"), "broker": req("str")},
    "broker_reset": {"rid": RID, "broker": req("str")},
    # the HTTP API's kick (nodes/broker/httpapi.py): a ``kick`` (reason ``kicked``) to each broker
    # holding a session of the uin; answered ``kicks`` {sessions: [[device, broker]]}
    "kick_user": {"rid": RID, "auth": AUTH, "uin": req("u32"),
                  "msg": opt("str", "why, for the clients' kicked notice")},
    "snapshot": {"rid": RID},
    "status": {"rid": RID},
}

# logic -> counter
COUNTER_REQUESTS = {
    "alloc": {"rid": RID, "channel": req("channel"), "n": req("u32"), "have": req("u64")},
    "status": {"rid": RID},
}

# logic -> logic, replicated topologies (nodes/logic/replication.py)
REPLICATION_REQUESTS = {
    "rep": {"rid": RID, "shard": req("u32"), "epoch": req("u64"), "seq": req("u64"),
            "prev": opt("any", "[epoch, seq] the record follows"), "ops": opt("any", "[[key bin, value bin or nil]]"),
            "check": opt("any", "true: no record, does the follower hold (epoch, seq)?")},
    "rep_pos": {"rid": RID, "shard": req("u32"), "epoch": req("u64")},
    "snap": {"rid": RID, "shard": req("u32"), "epoch": req("u64"), "seq": req("u64"),
             "pos": opt("any", "[epoch, seq] of the snapshot"), "rows": opt("any", "[[key bin, value bin]]"),
             "part": opt("any", "page number (default 0)"), "parts": opt("any", "page count (default 1)")},
    "snap_req": {"rid": RID, "shard": req("u32"), "epoch": req("u64"),
                 "from": req("str", "the replica to send the shard to")},
}

# admin -> every node's internal endpoint: a live topology change (nodes/cluster/topochange.py)
TOPOLOGY_REQUESTS = {"topology": {"rid": RID, "auth": AUTH, "phase": req("str", "admit, adopt or settle"),
                                  "yaml": req("str", "the new topology's text"),
                                  "path": opt("any", "its file name, for messages")}}

# admin -> logic: channels handed over to their new owner in a live reshard (nodes/logic/handoff.py)
HANDOFF_REQUESTS = {
    "handoff": {"rid": RID, "auth": AUTH, "to": req("str"), "after": req("u64", "row position; 0 first")},
    "take": {"rid": RID, "auth": AUTH, "channels": opt("any", "[channel]"),
             "rows": opt("any", "[[key bin, value bin]]"),
             "first": opt("any", "true: clear what is held of them"), "last": opt("any", "true: load and serve them"),
             "boundaries": opt("any", "{channel: first id not held}")},
    "handoff_done": {"rid": RID, "auth": AUTH, "to": req("str"), "channels": opt("any", "[channel]")},
}

# broker's internal endpoint
BROKER_REQUESTS = {"status": {"rid": RID, "reset_max": opt("any")}}
BROKER_RPC = {**BROKER_REQUESTS,            # a broker's rpc: also deliveries a gateway broker
              "fwd": {"rid": RID,           # passes on in its IDC (nodes/cluster/idcfanout.py)
                      "items": req("list", "[[packed push, [uin], sender uin, sender device]]")}}

# client -> relay (after the same login as at a broker; a relay takes no ``net``)
RELAY_REQUESTS = {
    "login": LOGIN,
    "ping": CLIENT_REQUESTS["ping"],
    "logout": {"rid": RID, "sid": SID},
    "up_begin": {"rid": RID, "sid": SID, "size": req("u64"), "chunk_size": req("u32"), "chunks": req("u32"),
                 "sha256": req("sha256"), "mime": req("str"), "channel": req("channel")},
    "up_chunk": {"rid": RID, "sid": SID, "media": req("str"), "index": req("u32"), "data": req("bin")},
    "up_end": {"rid": RID, "sid": SID, "media": req("str")},
    "down_info": {"rid": RID, "sid": SID, "ref": req("str")},
    "down": {"rid": RID, "sid": SID, "media": req("str"), "index": req("u32")},
}

# --- PUB frames, by the type of node that publishes them (topic frame, then this map) ----------

PUB_FRAMES = {
    "logic": {
        "msgs": {"items": req("list", "[[packed push, [uin], sender uin, sender device]]"),
                 "logic": opt("str", "the publisher (a sign of life)")},
        "msgs_idc": {"packs": req("list", "[packed push]"),
                     "to": req("map", "{broker: [[pack index, [uin], uin, device]]}"),
                     "logic": opt("str")},
        "tick": {"logic": req("str"), "leads": opt("list", "[[shard, epoch]] led by the publisher"),
                 "stopping": opt("any", "true: take the publisher for down now")},
    },
    "router": {
        "delta": {"router": req("str"), "epoch": req("u64"), "seq": req("u64"), "uin": req("u32"),
                  "device": req("u32"), "broker": req("strnil", "nil: offline")},
        "tick": {"router": req("str"), "epoch": req("u64"), "seq": req("u64")},
        "kick": {"uin": req("u32"), "device": req("u32"), "broker": req("str"),
                 "by": req("str", "the broker of the newer login; api: the HTTP API's kick"),
                 "reason": opt("str", "absent: replaced; kicked: the HTTP API's kick"),
                 "msg": opt("str", "kicked: the text for the client's notice")},
    },
}
