"""The server HTTP API's one route table: what the dispatcher matches and validates, and the OpenAPI document.

Each ``Route`` names its method, path (``{name}`` a channel, ``{uin}`` a user),
the handler of nodes/broker/httpapi.py, a summary, the JSON Schema of its
request body and of its reply.  ``validate`` checks a body against the same
schema the document publishes (the subset of JSON Schema the table uses:
objects with ``properties``/``required``/``additionalProperties: false``,
strings with lengths and a pattern, integers with bounds, arrays of them), so
the document cannot promise what the handlers do not check.  ``openapi``
writes the OpenAPI 3.1 document served at ``/api/v1/openapi.json``.  No
sockets: tests use it directly.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from nodes.protocol.wire import MAX_CHANNEL_BYTES

PREFIX = "/api/v1"
U32_MAX = 2**32 - 1
KICK_REASON_MAX = 200           # characters of a kick's reason

CHANNEL: dict[str, Any] = {"type": "string", "pattern": f"^[A-Za-z0-9_.:@#-]{{1,{MAX_CHANNEL_BYTES}}}$",
           "description": f"1..{MAX_CHANNEL_BYTES} letters, digits and _-.:@#"}
UIN: dict[str, Any] = {"type": "integer", "minimum": 1, "maximum": U32_MAX,
                       "description": "a user (uin 0 is the system)"}
ROLE: dict[str, Any] = {"type": "string", "enum": ["owner", "admin", "member"],
                        "description": "a group's member: owner (one), admin or member"}
PARAMS: dict[str, dict[str, Any]] = {"name": CHANNEL, "uin": UIN}
ERROR = {"type": "object", "required": ["error", "message"],
         "properties": {"error": {"type": "string", "description": "a code: BAD_REQUEST, UNAUTHORIZED, "
                                  "NO_CHANNEL, CHANNEL_EXISTS, UNAVAILABLE, ... (docs/api.md)"},
                        "message": {"type": "string"}}}


def _obj(required: list[str], **props: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": props, "additionalProperties": False}


def _members(limit: int) -> dict[str, Any]:
    return {"type": "array", "items": UIN, "maxItems": limit}


@dataclass(frozen=True)
class Route:
    method: str
    path: str                           # under PREFIX, with {name} / {uin}
    handler: str                        # the method of httpapi.Api that answers it
    summary: str
    reply: dict[str, Any]
    body: dict[str, Any] | None = None
    body_required: bool = True          # False: an empty body is taken as {}
    status: int = 200
    auth: bool = True
    headers: dict[str, str] = field(default_factory=dict)    # optional request headers: name -> meaning
    statuses: dict[str, int] = field(default_factory=dict)   # a logic node's error code -> HTTP status,
                                                             # over httpapi.STATUS_OF for this route
    pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        regex = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(PREFIX + self.path))
        object.__setattr__(self, "pattern", re.compile(regex))

    @property
    def params(self) -> list[str]:
        return re.findall(r"\{(\w+)\}", self.path)

    def match(self, path: str) -> dict[str, Any] | None:
        """The path's parameters (validated, ``uin`` as int) if it is this route's, else None;
        ApiError for a parameter of the wrong shape."""
        m = self.pattern.fullmatch(path)
        if m is None:
            return None
        out: dict[str, Any] = {}
        for name, raw in m.groupdict().items():
            value: Any = unquote(raw)
            if PARAMS[name]["type"] == "integer":
                if not value.isdigit():
                    raise ApiError(400, "BAD_REQUEST", f"{name} in the path must be an integer")
                value = int(value)
            validate(PARAMS[name], value, name)
            out[name] = value
        return out


class ApiError(Exception):
    """An answer that is an error: HTTP status, code, message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def routes(limits: dict[str, Any]) -> list[Route]:
    """The table, with the topology's limits in the schemas (members, text length)."""
    members = _members(int(limits["max_members"]))
    channel = _obj(["channel", "members", "last", "lifetime", "kind", "roles"], channel=CHANNEL, members=members,
                   last={"type": "integer", "description": "newest message id"},
                   lifetime={"type": ["number", "null"], "description": "message lifetime in seconds "
                             "(null: the topology's)"},
                   kind={"type": "string", "enum": ["room", "group", "dm"],
                         "description": "room: made by the operator (this API, bin/mesh); group, dm: by users"},
                   roles={"type": "object", "additionalProperties": ROLE,
                          "description": "{uin: role} of every member (a room's are all member)"})
    return [
        Route("GET", "/openapi.json", "openapi", "This document", {"type": "object"}, auth=False),
        Route("POST", "/channels", "channel_create", "Create a channel", channel, status=201,
              body=_obj(["name"], name=CHANNEL, members=members,
                        lifetime={"type": "number", "minimum": 1, "description": "message lifetime in seconds"})),
        Route("GET", "/channels", "channel_list", "List every channel",
              _obj(["channels", "unavailable"], channels={"type": "array", "items": CHANNEL},
                   unavailable={"type": "array", "items": {"type": "string"},
                                "description": "logic nodes that did not answer: their channels are missing"})),
        Route("GET", "/channels/{name}", "channel_show", "Show a channel and its members", channel),
        Route("DELETE", "/channels/{name}", "channel_delete", "Delete a channel and its messages",
              _obj(["deleted"], deleted=CHANNEL)),
        Route("POST", "/channels/{name}/members", "members_add", "Add members", channel,
              body=_obj(["members"], members=members)),
        Route("DELETE", "/channels/{name}/members/{uin}", "member_remove", "Remove a member", channel),
        Route("PUT", "/channels/{name}/members/{uin}/role", "member_role",
              "Give a group's member a role (owner: hands ownership over, the old owner becomes admin)",
              _obj(["channel", "uin", "role"], channel=CHANNEL, uin=UIN, role=ROLE), body=_obj(["role"], role=ROLE),
              statuses={"FORBIDDEN": 409, "NOT_MEMBER": 404}),
        Route("GET", "/channels/{name}/online", "online", "Members with a live session",
              _obj(["channel", "online"], channel=CHANNEL,
                   online={"type": "object", "description": "{uin: {device: broker}}",
                           "additionalProperties": {"type": "object", "additionalProperties": {"type": "string"}}})),
        Route("POST", "/channels/{name}/messages", "system_message", "Send a system message (from uin 0)",
              _obj(["channel", "id", "duplicate"], channel=CHANNEL, id={"type": "integer"},
                   duplicate={"type": "boolean", "description": "true: a retry, stored before"}),
              status=201, body=_obj(["text"], text={"type": "string", "minLength": 1,
                                                    "maxLength": int(limits["max_text"])}),
              headers={"Idempotency-Key": "a retry with the same key (and text) stores the message once"}),
        Route("POST", "/tokens", "token", "Mint a login token for a user",
              _obj(["token", "uin", "expires"], token={"type": "string"}, uin=UIN, expires={"type": "integer"}),
              status=201, body=_obj(["uin"], uin=UIN,
                                    lifetime={"type": "integer", "minimum": 1, "maximum": 30 * 86400,
                                              "description": "seconds (default: the topology's token_lifetime)"},
                                    format={"type": "string", "enum": ["v1", "jwt"],
                                            "description": "v1 (default) or an HS256 JWT"})),
        Route("POST", "/users/{uin}/kick", "kick", "End every session of a user, on every broker",
              _obj(["uin", "sessions"], uin=UIN,
                   sessions={"type": "integer", "description": "sessions ended (that the routers knew of)"}),
              body=_obj([], reason={"type": "string", "maxLength": KICK_REASON_MAX,
                                    "description": "shown to the user's clients in their kicked notice"}),
              body_required=False),
    ]


# --- validation: the subset of JSON Schema the table uses --------------------------------
_TYPES: dict[str, Any] = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


def _is(kind: str, value: Any) -> bool:
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, _TYPES[kind])


def validate(schema: dict[str, Any], value: Any, where: str = "body") -> None:
    """ApiError(400) naming the first part of ``value`` that ``schema`` does not allow."""
    kinds = schema.get("type")
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else kinds
        if not any(_is(k, value) for k in kinds):
            raise ApiError(400, "BAD_REQUEST", f"{where} must be {' or '.join(kinds)}")
    if "enum" in schema and value not in schema["enum"]:
        raise ApiError(400, "BAD_REQUEST", f"{where} must be one of {schema['enum']}")
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            raise ApiError(400, "BAD_REQUEST", f"{where} must not be empty")
        if len(value) > schema.get("maxLength", len(value)):
            raise ApiError(400, "TOO_LONG", f"{where} is over {schema['maxLength']} characters")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            raise ApiError(400, "BAD_REQUEST", f"{where}: {schema.get('description', 'bad format')}")
    elif _is("number", value):
        if value < schema.get("minimum", value) or value > schema.get("maximum", value):
            raise ApiError(400, "BAD_REQUEST", f"{where} must be within {schema.get('minimum')}.."
                           f"{schema.get('maximum')}")
    elif isinstance(value, list):
        if len(value) > schema.get("maxItems", len(value)):
            raise ApiError(400, "TOO_MANY", f"{where} has over {schema['maxItems']} items")
        for i, item in enumerate(value):
            validate(schema.get("items", {}), item, f"{where}[{i}]")
    elif isinstance(value, dict):
        props = schema.get("properties", {})
        for name in schema.get("required", ()):
            if name not in value:
                raise ApiError(400, "BAD_REQUEST", f"{where} needs {name!r}")
        for name, item in value.items():
            if name in props:
                validate(props[name], item, f"{where}.{name}")
            elif schema.get("additionalProperties") is False:
                raise ApiError(400, "BAD_REQUEST", f"{where}: unknown field {name!r} (known: {sorted(props)})")


# --- the OpenAPI document ------------------------------------------------------------------
_ERRORS = {"400": "the body or a path parameter is not valid", "401": "no API key, or a wrong one",
           "404": "no such channel (a role: or the uin is no member)", "409": "the channel exists, an "
           "Idempotency-Key was reused for another message, or a role for a channel that is not a group "
           "(or taking the owner's without naming another owner)", "413": "body too large",
           "415": "the body is not application/json",
           "503": "the owning node (a kick: every router of the user in an IDC) is down or busy: retry "
           "(same Idempotency-Key)"}


def openapi(table: list[Route], version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``table``."""
    paths: dict[str, dict[str, Any]] = {}
    for route in table:
        op: dict[str, Any] = {"operationId": route.handler, "summary": route.summary, "responses": {
            str(route.status): {"description": "done", "content": {"application/json": {"schema": route.reply}}}}}
        params = [{"name": p, "in": "path", "required": True, "schema": PARAMS[p]} for p in route.params]
        params += [{"name": h, "in": "header", "required": False, "description": d, "schema": {"type": "string"}}
                   for h, d in route.headers.items()]
        if params:
            op["parameters"] = params
        if route.body is not None:
            op["requestBody"] = {"required": route.body_required,
                                 "content": {"application/json": {"schema": route.body}}}
        if route.auth:
            op["security"] = [{"apiKey": []}]
            op["responses"].update({code: {"description": why, "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/Error"}}}} for code, why in _ERRORS.items()})
        paths.setdefault(PREFIX + route.path, {})[route.method.lower()] = op
    return {"openapi": "3.1.0",
            "info": {"title": "imesh server API", "version": version,
                     "description": "For an app's backend: channels, members, tokens, system messages, "
                                    "presence, kicks. Bearer API keys from `bin/mesh apikey` (docs/api.md)."},
            "paths": paths,
            "components": {"schemas": {"Error": ERROR},
                           "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}}}}
