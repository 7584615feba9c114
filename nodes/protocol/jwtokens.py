"""JWT login tokens (RFC 7519) beside the v1 tokens of nodes/protocol/auth.py.

Why: an app's backend mints a JWT with its language's own library instead of copying
the v1 HMAC recipe, and with RS256/ES256 it keeps its private key while the topology
holds only the public one (``jwt.public_keys``).  PyJWT checks the signatures and the
``aud``/``iss``/required claims; nothing here is crypto.

What is trusted, whatever the token says: the algorithm must be one the topology lists
(``none`` never is), and it must be the algorithm of the key it is checked with: HS256
with the cluster secret (the v1 tokens' secret), RS256 with an RSA key, ES256 with a
P-256 key of ``jwt.public_keys`` (picked by ``kid``, which may be left out when one key
serves the algorithm).  PyJWT is handed that one algorithm, so a token cannot choose
another (an RSA public key used as an HMAC secret gets nowhere).

The times (``exp``, required, and ``nbf``) are checked here against the caller's ``now``
(the one clock v1 tokens use too, and what tests fake) after the signature, so a forger
never learns TOKEN_EXPIRED.  ``sub`` is the uin as a decimal string.  A JWT grants a
user login only: admin requests take v1 admin tokens (docs/security.md).
"""
from __future__ import annotations

import dataclasses
import math
import re
import time
from typing import TYPE_CHECKING, Any, NoReturn

import jwt

from nodes.protocol.wire import Err, ProtocolError

if TYPE_CHECKING:                    # cryptography is imported when a topology has public keys
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey

ALGORITHMS = ("HS256", "RS256", "ES256")        # the order the topology's default lists them in
ASYMMETRIC = {"RS256": "an RSA public key", "ES256": "a P-256 (EC) public key"}   # what each needs
_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")     # JWS compact: 3 base64url parts
_UIN = re.compile(r"0|[1-9][0-9]{0,9}")


@dataclasses.dataclass(frozen=True)
class JwtConfig:
    """The topology's ``jwt:`` section, keys loaded (nodes/cluster/topology.py ``_parse_jwt``)."""
    algorithms: tuple[str, ...] = ("HS256",)
    issuer: str | None = None        # when set, ``iss`` must equal it
    audience: str | None = None      # when set, ``aud`` must name it; when not, a token with ``aud`` is refused
    keys: dict[str, tuple[str, PublicKey]] = dataclasses.field(default_factory=dict)    # kid -> (algorithm, key)
    leeway: float = 0.0              # seconds allowed for the app backend's clock (exp, nbf)


DEFAULT = JwtConfig()                # no jwt section: HS256 with the cluster secret only


def looks_like_jwt(token: object) -> bool:
    """A JWT, not a v1 token: three base64url parts (a v1 token has five and dots only)."""
    return isinstance(token, str) and _SHAPE.fullmatch(token) is not None


def public_key(pem: bytes) -> tuple[str, PublicKey]:
    """(algorithm, key) of a PEM public key for ``jwt.public_keys``; ValueError says why not."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        if b"PRIVATE KEY" in pem:
            raise ValueError("is a private key: only the public key belongs in the topology "
                             "(the private key stays with the app's backend)") from None
        raise ValueError("is not a PEM public key (-----BEGIN PUBLIC KEY-----)") from None
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise ValueError(f"is an RSA key of {key.key_size} bits: RS256 needs at least 2048")
        return "RS256", key
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise ValueError(f"is an EC key on {key.curve.name}: ES256 needs P-256 (secp256r1)")
        return "ES256", key
    raise ValueError(f"is a {type(key).__name__}: only RSA (RS256) and P-256 (ES256) keys are accepted")


def _refuse(why: str, code: str = Err.AUTH_FAILED) -> NoReturn:
    raise ProtocolError(code, why)


def _key(secret: bytes, config: JwtConfig, header: dict[str, Any]) -> tuple[str, bytes | PublicKey]:
    """The one algorithm and key this token may be checked with, from the topology alone."""
    alg, kid = header.get("alg"), header.get("kid")
    if not isinstance(alg, str) or alg not in config.algorithms:
        _refuse(f"JWT alg {alg!r} is not accepted here (accepted: {', '.join(config.algorithms) or 'none'})")
    if alg == "HS256":
        return alg, secret
    if kid is not None:
        if not isinstance(kid, str) or kid not in config.keys:
            _refuse(f"JWT kid {kid!r} names no key of the topology's jwt.public_keys")
        key_alg, key = config.keys[kid]
        if key_alg != alg:
            _refuse(f"JWT alg {alg} does not fit key {kid!r} (a key for {key_alg})")
        return alg, key
    fitting = [key for key_alg, key in config.keys.values() if key_alg == alg]
    if len(fitting) != 1:
        _refuse(f"JWT without a kid: {len(fitting)} keys serve {alg}, name one with kid")
    return alg, fitting[0]


def _number(claims: dict[str, Any], name: str) -> float:
    value = claims[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        _refuse(f"JWT {name} must be a NumericDate (seconds since 1970), got {value!r}")
    return value


def verify(secret: bytes, config: JwtConfig, token: str, now: float | None = None) -> int:
    """The uin a JWT logs in as, or ProtocolError AUTH_FAILED / TOKEN_EXPIRED."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError as exc:
        _refuse(f"malformed JWT: {exc}")
    alg, key = _key(secret, config, header)
    try:
        claims = jwt.decode(token, key, algorithms=[alg], audience=config.audience, issuer=config.issuer,
                            options={"require": ["exp", "sub"], "verify_exp": False, "verify_nbf": False,
                                     "verify_iat": False})
    except jwt.InvalidTokenError as exc:
        _refuse(f"JWT refused: {exc}")
    now = time.time() if now is None else now
    if "nbf" in claims and now + config.leeway < _number(claims, "nbf"):
        _refuse("JWT not valid yet (nbf)")
    if now - config.leeway >= _number(claims, "exp"):
        _refuse("token expired", Err.TOKEN_EXPIRED)
    sub = claims["sub"]
    if not isinstance(sub, str) or not _UIN.fullmatch(sub) or int(sub) >= 2**32:
        _refuse(f"JWT sub must be a uin (decimal string, 0 .. 4294967295), got {sub!r}")
    return int(sub)


def mint(secret: bytes, config: JwtConfig, uin: int, lifetime: float, now: float | None = None) -> str:
    """An HS256 JWT with the cluster secret (``bin/mesh token --jwt``), carrying the
    topology's issuer and audience so that this cluster accepts it."""
    if "HS256" not in config.algorithms:
        raise ValueError(f"jwt.algorithms ({', '.join(config.algorithms) or 'empty'}) leaves out HS256: "
                         "this cluster takes no JWT signed with its secret")
    if not 0 <= uin < 2**32:
        raise ValueError("uin must be a uint32")
    issued = int(time.time() if now is None else now)
    claims: dict[str, str | int] = {"sub": str(uin), "iat": issued, "exp": int(issued + lifetime)}
    if config.issuer:
        claims["iss"] = config.issuer
    if config.audience:
        claims["aud"] = config.audience
    return jwt.encode(claims, secret, algorithm="HS256")
