"""The server HTTP API under ``/api/v1/``: what an app's backend calls, on a broker's web endpoint.

Why on the broker: it already parses HTTP (nodes/runtime/webgate.py, h11), knows
which logic node serves a channel and whether it is up (nodes/broker/owners.py)
and talks to them.  A call becomes an internal request to the owning logic node
with an admin token minted from the cluster secret -- the requests ``bin/mesh
channel`` sends (nodes/ops/admin.py) plus those of nodes/logic/admin_ops.py; a kick
asks the user's routers of every IDC (nodes/router.py ``kick_user``) -- and
the HTTP response is written when the reply comes back: meanwhile the connection
is parked like a long poll (nothing pipelined behind it is read).  ``GET
/channels`` asks every logic node and merges.

Every route but the OpenAPI document needs ``Authorization: Bearer <key>`` with
a key of the topology's ``api_keys`` file (nodes/protocol/apikeys.py); a missing
or wrong key gets 401 before the body is even read, so it changes nothing.
Routes, body schemas and the OpenAPI document come from one table
(nodes/broker/apispec.py).  Errors are ``{"error": CODE, "message": TEXT}``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from nodes import __version__
from nodes.broker import apispec
from nodes.broker.apispec import PREFIX, ApiError, Route
from nodes.protocol import apikeys, auth, wire

log = logging.getLogger(__name__)

KICK_TEXT = "ended by the server"    # a kick's notice text when the call gives no reason
MAX_INFLIGHT = 256              # API calls waiting for logic nodes, per broker
ADMIN_TOKEN_LIFETIME = 300      # seconds; a new admin token is minted when half of this is gone
Reply = dict[str, Any]

# a logic node's error code -> HTTP status (anything else: 503, retry later)
STATUS_OF = {wire.Err.NO_CHANNEL: 404, wire.Err.CHANNEL_EXISTS: 409, wire.Err.STALE: 409,
             wire.Err.BAD_FIELD: 400, wire.Err.BAD_CHANNEL: 400, wire.Err.TOO_LONG: 400,
             wire.Err.TOO_MANY: 400, wire.Err.EMPTY_TEXT: 400, wire.Err.NOT_MEMBER: 403,
             wire.Err.FORBIDDEN: 403}


def routers_by_idc(topo: Any, uin: int) -> dict[str, list[str]]:
    """{IDC: the routers keeping the uin's presence for sessions on its brokers}: a kick asks them all."""
    return {idc: topo.routers_for(uin, idc) for idc in topo.idcs_with("broker")}


class _Parked:
    """``conn.parked`` while an API call waits for a logic node: the gate reads nothing more
    of the connection (nodes/runtime/webgate.py ``http_events``) until it is answered."""


PARKED = _Parked()


def idempotent_ctime(channel: str, key: str) -> int:
    """The client time of a system message sent with an ``Idempotency-Key``: the same key
    to the same channel is the same (uin 0, device 0, ctime), so a retry stores once."""
    return int.from_bytes(hashlib.sha256(f"{channel}\0{key}".encode()).digest()[:8], "big") >> 1


class Api:
    def __init__(self, gate: Any, node: Any) -> None:
        self.gate, self.node = gate, node
        self.table = apispec.routes(node.topo.limits)
        self.document = json.dumps(apispec.openapi(self.table, __version__)).encode()
        self.keys = apikeys.ApiKeys(apikeys.path_for(node.topo.secret_file))
        self.timeout = float(node.topo.limits["request_timeout"])
        self.inflight = 0
        self.stats: Counter[str] = Counter()
        self._admin: tuple[float, str] = (0.0, "")

    @staticmethod
    def owns(path: str) -> bool:
        return path == PREFIX or path.startswith(PREFIX + "/")

    # --- dispatch ----------------------------------------------------------------
    def handle(self, conn: Any, method: str, path: str, headers: dict[bytes, bytes], body: bytes) -> None:
        self.stats["calls"] += 1
        try:
            route, params = self._route(method, path)
            if route.auth:
                self._authorize(headers)
            data = self._body(route, headers, body)
            result = getattr(self, route.handler)(conn, params, data, headers)
        except ApiError as exc:
            self.stats[f"http_{exc.status}"] += 1
            self._respond(conn, exc.status, {"error": exc.code, "message": exc.message},
                          (("www-authenticate", 'Bearer realm="imesh"'),) if exc.status == 401 else ())
            return
        if result is not None:
            self._respond(conn, route.status, result)

    def _route(self, method: str, path: str) -> tuple[Route, dict[str, Any]]:
        allowed = []
        for route in self.table:
            params = route.match(path)
            if params is not None:
                if route.method == method:
                    return route, params
                allowed.append(route.method)
        if allowed:
            raise ApiError(405, "METHOD_NOT_ALLOWED", f"{method} not allowed on {path} (allowed: "
                           f"{', '.join(allowed)})")
        raise ApiError(404, "NO_ROUTE", f"no such API path {path}; see {PREFIX}/openapi.json")

    def _authorize(self, headers: dict[bytes, bytes]) -> None:
        scheme, _, key = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise ApiError(401, "UNAUTHORIZED", "send Authorization: Bearer <API key> (bin/mesh apikey)")
        if self.keys.check(key.strip()) is None:
            raise ApiError(401, "UNAUTHORIZED", "not an API key of this cluster")

    @staticmethod
    def _body(route: Route, headers: dict[bytes, bytes], body: bytes) -> Any:
        if route.body is None:
            return None
        if not body and not route.body_required:
            return {}
        ctype = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if ctype != b"application/json":
            raise ApiError(415, "UNSUPPORTED_MEDIA_TYPE", "send the body as application/json")
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(400, "BAD_JSON", f"the body is not JSON: {exc}") from None
        apispec.validate(route.body, data)
        return data

    def _respond(self, conn: Any, status: int, body: Reply, headers: tuple[tuple[str, str], ...] = ()) -> None:
        self.gate.respond(conn, status, json.dumps(body), "application/json",
                          headers=tuple(getattr(conn, "cors", ())) + headers)

    # --- asking logic nodes ------------------------------------------------------------
    def _admin_token(self) -> str:
        now = time.time()
        minted, token = self._admin
        if now - minted > ADMIN_TOKEN_LIFETIME / 2:
            token = auth.mint(self.node.core.secret, 0, lifetime=ADMIN_TOKEN_LIFETIME, scope="admin", now=now)
            self._admin = (now, token)
        return token

    def _park(self, conn: Any) -> None:
        if self.inflight >= MAX_INFLIGHT:
            raise ApiError(503, "BUSY", f"more than {MAX_INFLIGHT} API calls waiting on this broker; retry")
        self.inflight += 1
        conn.parked = PARKED

    def _finish(self, conn: Any, status: int, body: Reply) -> None:
        self.inflight -= 1
        if conn.parked is PARKED:
            conn.parked = None
        if conn.closed:
            return
        self.stats[f"http_{status}"] += 1
        self._respond(conn, status, body)
        self.gate.http_events(conn)                  # requests pipelined behind this one

    def _ask(self, conn: Any, route: Route, channel: str, msg: Reply, shape: Callable[[Reply], Reply]) -> None:
        """Send ``msg`` to the logic node serving ``channel``; answer the call with ``shape(reply)``."""
        owners = self.node.core.owners
        try:
            owner = owners.serving(channel, self.node.clock())
        except wire.ProtocolError as exc:
            raise ApiError(503, exc.code, exc.msg) from None
        self._park(conn)

        def done(reply: Reply) -> None:
            if reply.get("code") == wire.Err.WRONG_OWNER:
                reply = owners.moved(channel, reply)
            if reply.get("t") == "err":
                code = reply.get("code", wire.Err.UNAVAILABLE)
                status = route.statuses.get(code) or STATUS_OF.get(code, 503)
                self._finish(conn, status, {"error": code, "message": reply.get("msg", "")})
            else:
                self._finish(conn, route.status, shape(reply))
        self.node.to_logic(owner, dict(msg, auth=self._admin_token(), channel=channel), done, self.timeout)

    def _route_of(self, handler: str) -> Route:
        return next(r for r in self.table if r.handler == handler)

    # --- handlers: (conn, path params, body, headers) -> reply now, or None (answered later) ----
    def openapi(self, conn: Any, _params: Reply, _data: Any, _headers: Any) -> None:
        self.gate.respond(conn, 200, self.document, "application/json", headers=tuple(getattr(conn, "cors", ())))

    @staticmethod
    def _channel(reply: Reply) -> Reply:
        return {k: reply[k] for k in ("channel", "members", "last", "lifetime", "kind", "roles")}

    def channel_create(self, conn: Any, _params: Reply, data: Reply, _headers: Any) -> None:
        msg: Reply = {"t": "channel_create", "members": sorted(set(data.get("members", ())))}
        if "lifetime" in data:
            msg["lifetime"] = data["lifetime"]
        self._ask(conn, self._route_of("channel_create"), data["name"], msg, self._channel)

    def channel_show(self, conn: Any, params: Reply, _data: Any, _headers: Any) -> None:
        self._ask(conn, self._route_of("channel_show"), params["name"], {"t": "channel_show"}, self._channel)

    def channel_delete(self, conn: Any, params: Reply, _data: Any, _headers: Any) -> None:
        self._ask(conn, self._route_of("channel_delete"), params["name"], {"t": "channel_delete"},
                  lambda reply: {"deleted": reply["channel"]})

    def members_add(self, conn: Any, params: Reply, data: Reply, _headers: Any) -> None:
        self._ask(conn, self._route_of("members_add"), params["name"],
                  {"t": "channel_add", "members": sorted(set(data["members"]))}, self._channel)

    def member_remove(self, conn: Any, params: Reply, _data: Any, _headers: Any) -> None:
        self._ask(conn, self._route_of("member_remove"), params["name"],
                  {"t": "channel_remove", "members": [params["uin"]]}, self._channel)

    def member_role(self, conn: Any, params: Reply, data: Reply, _headers: Any) -> None:
        self._ask(conn, self._route_of("member_role"), params["name"],
                  {"t": "channel_role", "uin": params["uin"], "role": data["role"]},
                  lambda reply: {k: reply[k] for k in ("channel", "uin", "role")})

    def online(self, conn: Any, params: Reply, _data: Any, _headers: Any) -> None:
        self._ask(conn, self._route_of("online"), params["name"], {"t": "channel_online"},
                  lambda reply: {"channel": reply["channel"], "online": reply["online"]})

    def system_message(self, conn: Any, params: Reply, data: Reply, headers: dict[bytes, bytes]) -> None:
        key = headers.get(b"idempotency-key")
        channel = params["name"]
        # no key: a time-based client time, unique enough (two calls in one microsecond collide)
        ctime = idempotent_ctime(channel, key.decode("latin-1")) if key else time.time_ns() // 1000
        self._ask(conn, self._route_of("system_message"), channel,
                  {"t": "system_send", "text": data["text"], "ctime": ctime},
                  lambda reply: {"channel": reply["channel"], "id": reply["id"],
                                 "duplicate": bool(reply.get("retry"))})

    def channel_list(self, conn: Any, _params: Reply, _data: Any, _headers: Any) -> Reply | None:
        logics = list(self.node.logics)
        if not logics:
            return {"channels": [], "unavailable": []}
        self._park(conn)
        names: set[str] = set()
        missing: list[str] = []
        waiting = [len(logics)]

        def one(logic_id: str) -> Callable[[Reply], None]:
            def done(reply: Reply) -> None:
                if reply.get("t") == "channels":
                    names.update(reply["channels"])
                else:
                    missing.append(logic_id)
                waiting[0] -= 1
                if waiting[0] == 0:
                    self._finish(conn, 200, {"channels": sorted(names), "unavailable": sorted(missing)})
            return done
        token = self._admin_token()
        for logic_id in logics:
            self.node.to_logic(logic_id, {"t": "channel_list", "auth": token}, one(logic_id), self.timeout)
        return None

    def token(self, _conn: Any, _params: Reply, data: Reply, _headers: Any) -> Reply:
        topo = self.node.topo
        lifetime = data.get("lifetime", int(topo.limits["token_lifetime"]))
        jwt = data.get("format") == "jwt"
        if jwt and topo.jwt is None:
            raise ApiError(400, "BAD_REQUEST", "this topology takes no JWT (no jwt section); ask for format v1")
        now = time.time()
        try:
            token = auth.mint_login(self.node.core.secret, data["uin"], lifetime, topo.jwt if jwt else None, now=now)
        except ValueError as exc:
            raise ApiError(400, "BAD_REQUEST", str(exc)) from None
        return {"token": token, "uin": data["uin"], "expires": int(now + lifetime)}

    def kick(self, conn: Any, params: Reply, data: Reply, _headers: Any) -> None:
        """Ask the uin's routers of every IDC to kick its sessions (each publishes a ``kick`` to
        the brokers holding one).  Replicated presence holds a session on two routers: sessions
        are counted once.  503 when no router of some IDC answered (a retry kicks what is left)."""
        uin = params["uin"]
        by_idc = routers_by_idc(self.node.topo, uin)
        asked = sorted({r for routers in by_idc.values() for r in routers})
        self._park(conn)
        sessions: set[tuple[int, str]] = set()
        answered: set[str] = set()
        waiting = [len(asked)]

        def one(router: str) -> Callable[[Reply], None]:
            def done(reply: Reply) -> None:
                if reply.get("t") == "kicks":
                    answered.add(router)
                    sessions.update((device, broker) for device, broker in reply["sessions"])
                waiting[0] -= 1
                if waiting[0]:
                    return
                silent = sorted(idc for idc, routers in by_idc.items() if answered.isdisjoint(routers))
                if silent:
                    self._finish(conn, 503, {"error": wire.Err.UNAVAILABLE, "message": "no router of the user "
                                             f"answered in {', '.join(silent)}: sessions there may be left; retry"})
                else:
                    self._finish(conn, 200, {"uin": uin, "sessions": len(sessions)})
            return done
        msg = {"t": "kick_user", "uin": uin, "msg": data.get("reason") or KICK_TEXT, "auth": self._admin_token()}
        for router in asked:
            self.node.ask_router(router, dict(msg), one(router), self.timeout)

    def status(self) -> dict[str, int]:
        return dict(self.stats, inflight=self.inflight)
