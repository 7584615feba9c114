"""Login tokens: HMAC-SHA256 over (scope, uin, expiry) with the cluster secret.

Format (ASCII): ``v1.<scope>.<uin>.<expiry>.<hex signature>`` where scope is
``user`` (client login) or ``admin`` (membership changes), expiry is a Unix
time in seconds and the signature is HMAC-SHA256(secret, "v1.<scope>.<uin>.<expiry>").

A login also takes a JWT in the same ``token`` field (nodes/protocol/jwtokens.py, told
apart by its shape); admin requests take v1 admin tokens only.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from typing import Any

from nodes.protocol import jwtokens
from nodes.protocol.wire import PROTOCOL_VERSION, Err, ProtocolError

SCOPES = ("user", "admin")


def mint(secret: bytes, uin: int, lifetime: float = 86400, scope: str = "user", now: float | None = None) -> str:
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}")
    if not 0 <= uin < 2**32:
        raise ValueError("uin must be a uint32")
    expiry = int((time.time() if now is None else now) + lifetime)
    body = f"v1.{scope}.{uin}.{expiry}"
    sig = hmac.new(secret, body.encode(), hashlib.sha256).hexdigest()
    return f"{body}.{sig}"


def verify(secret: bytes, token: str, scope: str = "user", now: float | None = None) -> int:
    """Return the uin the token was minted for, or raise ProtocolError."""
    parts = token.split(".") if isinstance(token, str) else []
    if len(parts) != 5 or parts[0] != "v1" or not parts[2].isdigit() or not parts[3].isdigit():
        raise ProtocolError(Err.AUTH_FAILED, "malformed token")
    if not token.isascii():                    # compare_digest refuses non-ASCII str (TypeError)
        raise ProtocolError(Err.AUTH_FAILED, "malformed token: not ASCII")
    body = ".".join(parts[:4])
    expected = hmac.new(secret, body.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, parts[4]):
        raise ProtocolError(Err.AUTH_FAILED, "token signature does not match")
    if parts[1] != scope:
        raise ProtocolError(Err.AUTH_FAILED, f"token scope is {parts[1]!r}, need {scope!r}")
    uin = int(parts[2])
    if uin >= 2**32:
        raise ProtocolError(Err.AUTH_FAILED, "token uin out of range")
    if int(parts[3]) < (time.time() if now is None else now):
        raise ProtocolError(Err.TOKEN_EXPIRED, "token expired")
    return uin


def ensure_secret(path: str) -> bool:
    """Create a random secret file (mode 0600) if none exists; True if created."""
    if os.path.exists(path):
        return False
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32) + "\n")
    return True


def mint_login(secret: bytes, uin: int, lifetime: float, jwt_config: Any = None,
               now: float | None = None) -> str:
    """A user login token: v1, or an HS256 JWT fit for ``jwt_config`` (the topology's
    ``jwt``) when one is given (``bin/mesh token [--jwt]``); ValueError says why not."""
    if jwt_config is None:
        return mint(secret, uin, lifetime, now=now)
    return jwtokens.mint(secret, jwt_config, uin, lifetime, now=now)


def check_login(secret: bytes, msg: dict[str, Any], jwt_config: Any = None, now: float | None = None) -> int:
    """A validated login request: the protocol version we speak and a good token, v1 or a
    JWT (checked against ``jwt_config``, the topology's ``jwt``; None: HS256 only); the uin."""
    if msg["v"] != PROTOCOL_VERSION:
        raise ProtocolError(Err.BAD_VERSION, f"server speaks protocol version {PROTOCOL_VERSION}",
                            version=PROTOCOL_VERSION)
    token = msg["token"]
    if jwtokens.looks_like_jwt(token):
        return jwtokens.verify(secret, jwtokens.DEFAULT if jwt_config is None else jwt_config, token,
                               now=now)
    return verify(secret, token, now=now)
