"""JWT login tokens (issue 25): PyJWT mints them here with keys made in the test; the
mesh's login path (nodes/protocol/auth.check_login, the same for brokers and relays) takes
them or refuses them with the codes v1 tokens get.  Core tests on a fixed ``now``; one
mesh test with real processes."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import jwt
import pytest
import yaml
from conftest import assert_no_tracebacks, write_topology
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from test_cli import run

from nodes.client.blocking import Client, ClientError
from nodes.cluster import topology
from nodes.protocol import auth, jwtokens, wire

SECRET = b"0123456789abcdef0123456789abcdef-test"
NOW = 1_800_000_000


def pem(key) -> str:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode()


RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
OTHER_EC_KEY = ec.generate_private_key(ec.SECP256R1())


def topo_with(tmp_path, section) -> topology.Topology:
    """A test topology with ``section`` as its ``jwt:`` (None: no section at all)."""
    cfg = write_topology(tmp_path)
    raw = yaml.safe_load(open(cfg))
    if section is not None:
        raw["jwt"] = section
    with open(cfg, "w") as f:
        yaml.safe_dump(raw, f)
    return topology.load(cfg)


@pytest.fixture
def config(tmp_path):
    """Every algorithm, an issuer and an audience: the RSA key inline, the EC key in a file."""
    (tmp_path / "app-ec.pem").write_text(pem(EC_KEY))
    return topo_with(tmp_path, {"issuer": "https://app.example", "audience": "imesh",
                                "public_keys": {"app-rsa": pem(RSA_KEY), "app-ec": "app-ec.pem"}}).jwt


def claims(**changes) -> dict:
    out = {"sub": "7", "exp": NOW + 60, "iat": NOW, "iss": "https://app.example", "aud": "imesh"}
    out.update(changes)
    return {k: v for k, v in out.items() if v is not None}


def mint(alg="RS256", **changes) -> str:
    key = {"HS256": SECRET, "RS256": RSA_KEY, "ES256": EC_KEY}[alg]
    kid = {"HS256": None, "RS256": "app-rsa", "ES256": "app-ec"}[alg]
    return jwt.encode(claims(**changes), key, algorithm=alg, headers={"kid": kid} if kid else None)


def login(token, jwt_config, now=NOW) -> int:
    return auth.check_login(SECRET, {"v": wire.PROTOCOL_VERSION, "token": token}, jwt_config, now=now)


def refused(token, jwt_config, now=NOW) -> str:
    with pytest.raises(wire.ProtocolError) as exc:
        login(token, jwt_config, now)
    return exc.value.code


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_made(key: bytes, payload: dict, header=None) -> str:
    """A token HMAC-SHA256-signed with any bytes under any header, which PyJWT would not mint
    (a PEM as an HMAC secret: the algorithm-confusion attack's token; a kid that is a list)."""
    header = header or {"alg": "HS256", "typ": "JWT"}
    signing = b64(json.dumps(header).encode()) + "." + b64(json.dumps(payload).encode())
    return signing + "." + b64(hmac.new(key, signing.encode(), hashlib.sha256).digest())


# --- accepted ------------------------------------------------------------------------

@pytest.mark.parametrize("alg", ["HS256", "RS256", "ES256"])
def test_each_algorithm_logs_in_as_its_sub(config, alg):
    assert login(mint(alg, sub="4294967295"), config) == 2**32 - 1


def test_v1_tokens_still_log_in_and_the_default_config_takes_hs256_only():
    assert login(auth.mint(SECRET, 9, 60, now=NOW), jwtokens.DEFAULT) == 9
    assert login(auth.mint(SECRET, 9, 60, now=NOW), None) == 9            # callers with no topology
    assert login(jwt.encode({"sub": "3", "exp": NOW + 5}, SECRET, algorithm="HS256"), None) == 3
    assert refused(mint("RS256", iss=None, aud=None), None) == wire.Err.AUTH_FAILED   # no keys, no RS256


def test_the_kid_may_be_left_out_when_one_key_serves_the_algorithm(config):
    token = jwt.encode(claims(), RSA_KEY, algorithm="RS256")
    assert login(token, config) == 7


# --- refused -------------------------------------------------------------------------

def tampered_payload() -> str:
    header, _payload, sig = mint().split(".")
    return ".".join((header, mint(sub="8").split(".")[1], sig))


def tampered_signature() -> str:
    token = mint("ES256")
    return token[:-6] + ("AAAAAA" if not token.endswith("AAAAAA") else "BBBBBB")


REFUSED = {
    "tampered payload": (tampered_payload, wire.Err.AUTH_FAILED),
    "tampered signature": (tampered_signature, wire.Err.AUTH_FAILED),
    "alg none": (lambda: jwt.encode(claims(), None, algorithm="none"), wire.Err.AUTH_FAILED),
    "alg confusion: the RSA public key as an HS256 secret":
        (lambda: hand_made(pem(RSA_KEY).encode(), claims()), wire.Err.AUTH_FAILED),
    "RS256 header on an EC key's kid":
        (lambda: jwt.encode(claims(), RSA_KEY, algorithm="RS256", headers={"kid": "app-ec"}), wire.Err.AUTH_FAILED),
    "alg not configured (HS512)": (lambda: jwt.encode(claims(), SECRET * 2, algorithm="HS512"), wire.Err.AUTH_FAILED),
    "unknown kid": (lambda: jwt.encode(claims(), EC_KEY, algorithm="ES256", headers={"kid": "nope"}),
                    wire.Err.AUTH_FAILED),
    "signed by a key not in the topology":
        (lambda: jwt.encode(claims(), OTHER_EC_KEY, algorithm="ES256", headers={"kid": "app-ec"}),
         wire.Err.AUTH_FAILED),
    "HS256 with another secret": (lambda: jwt.encode(claims(), b"another-secret-of-32-bytes-or-so!", algorithm="HS256"),
                                  wire.Err.AUTH_FAILED),
    "expired": (lambda: mint(exp=NOW - 1), wire.Err.TOKEN_EXPIRED),
    "expires now": (lambda: mint(exp=NOW), wire.Err.TOKEN_EXPIRED),
    "no exp": (lambda: mint(exp=None), wire.Err.AUTH_FAILED),
    "exp not a number": (lambda: mint(exp="soon"), wire.Err.AUTH_FAILED),
    "exp infinite": (lambda: mint(exp=float("inf")), wire.Err.AUTH_FAILED),
    "not before in the future": (lambda: mint(nbf=NOW + 30), wire.Err.AUTH_FAILED),
    "no sub": (lambda: mint(sub=None), wire.Err.AUTH_FAILED),
    "sub not a uin": (lambda: mint(sub="alice"), wire.Err.AUTH_FAILED),
    "sub over uint32": (lambda: mint(sub="4294967296"), wire.Err.AUTH_FAILED),
    "sub with a sign": (lambda: mint(sub="+7"), wire.Err.AUTH_FAILED),
    "sub a number, not a string": (lambda: mint(sub=7), wire.Err.AUTH_FAILED),
    "wrong aud": (lambda: mint(aud="another-service"), wire.Err.AUTH_FAILED),
    "no aud": (lambda: mint(aud=None), wire.Err.AUTH_FAILED),
    "wrong iss": (lambda: mint(iss="https://evil.example"), wire.Err.AUTH_FAILED),
    "no iss": (lambda: mint(iss=None), wire.Err.AUTH_FAILED),
    "a header that is not JSON": (lambda: "bm90IGpzb24." + mint().split(".", 1)[1], wire.Err.AUTH_FAILED),
    "a kid that is not a string": (lambda: hand_made(SECRET, claims(), {"alg": "RS256", "kid": ["x"]}),
                                   wire.Err.AUTH_FAILED),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_bad_tokens_get_the_codes_v1_tokens_get(config, case):
    make, code = REFUSED[case]
    assert refused(make(), config) == code


def test_an_expired_forgery_is_a_forgery(config):
    """The signature is checked before the time, as for v1 tokens: a forger learns nothing
    from TOKEN_EXPIRED."""
    token = jwt.encode(claims(exp=NOW - 100), OTHER_EC_KEY, algorithm="ES256", headers={"kid": "app-ec"})
    assert refused(token, config) == wire.Err.AUTH_FAILED


def test_algorithm_confusion_is_refused_also_without_hs256(tmp_path):
    only_rsa = topo_with(tmp_path, {"algorithms": ["RS256"], "public_keys": {"k": pem(RSA_KEY)}}).jwt
    assert refused(hand_made(pem(RSA_KEY).encode(), claims(iss=None, aud=None)), only_rsa) == wire.Err.AUTH_FAILED
    assert refused(jwt.encode(claims(iss=None, aud=None), SECRET, algorithm="HS256"), only_rsa) == wire.Err.AUTH_FAILED
    assert login(jwt.encode(claims(iss=None, aud=None), RSA_KEY, algorithm="RS256"), only_rsa) == 7
    assert login(auth.mint(SECRET, 7, 60, now=NOW), only_rsa) == 7        # v1 is not a JWT setting


def test_an_aud_is_refused_when_the_topology_names_none(tmp_path):
    plain = topo_with(tmp_path, None).jwt
    token = jwt.encode({"sub": "1", "exp": NOW + 5, "aud": "someone-else"}, SECRET, algorithm="HS256")
    assert refused(token, plain) == wire.Err.AUTH_FAILED


def test_leeway_allows_for_the_app_backends_clock(tmp_path):
    lenient = topo_with(tmp_path, {"leeway": 30}).jwt
    token = jwt.encode({"sub": "1", "exp": NOW, "nbf": NOW + 20}, SECRET, algorithm="HS256")
    assert login(token, lenient, now=NOW + 29) == 1 and login(token, lenient, now=NOW - 10) == 1
    assert refused(token, lenient, now=NOW + 30) == wire.Err.TOKEN_EXPIRED


def test_jwt_grants_no_admin_scope(config):
    """Admin requests take v1 admin tokens only: no JWT, whatever its claims say."""
    token = jwt.encode({"sub": "0", "exp": NOW + 60, "scope": "admin"}, SECRET, algorithm="HS256")
    with pytest.raises(wire.ProtocolError) as exc:
        auth.verify(SECRET, token, scope="admin", now=NOW)
    assert exc.value.code == wire.Err.AUTH_FAILED


def test_mint_hs256_carries_the_topologys_issuer_and_audience(config):
    token = auth.mint_login(SECRET, 12, 60, config, now=NOW)
    assert jwtokens.looks_like_jwt(token) and login(token, config) == 12
    assert jwt.decode(token, SECRET, algorithms=["HS256"], audience="imesh",
                      options={"verify_exp": False, "verify_iat": False})["iss"] == "https://app.example"
    assert auth.mint_login(SECRET, 12, 60, None, now=NOW) == auth.mint(SECRET, 12, 60, now=NOW)


# --- the topology's jwt section ------------------------------------------------------

BAD_SECTIONS = {
    "not a mapping": (["HS256"], "jwt", "must be a mapping"),
    "unknown key": ({"algs": ["HS256"]}, "jwt.algs", "unknown key"),
    "alg none": ({"algorithms": ["HS256", "none"]}, "jwt.algorithms", "none"),
    "alg not supported": ({"algorithms": ["HS512"]}, "jwt.algorithms", "HS256, RS256, ES256"),
    "RS256 without an RSA key": ({"algorithms": ["HS256", "RS256"]}, "jwt.algorithms", "RS256 needs"),
    "key for an algorithm left out": ({"algorithms": ["HS256"], "public_keys": {"k": pem(EC_KEY)}},
                                      "jwt.public_keys.k", "ES256 is not in jwt.algorithms"),
    "private key": ({"public_keys": {"k": RSA_KEY.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()}},
        "jwt.public_keys.k", "private key"),
    "not a PEM": ({"public_keys": {"k": "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"}},
                  "jwt.public_keys.k", "not a PEM public key"),
    "missing file": ({"public_keys": {"k": "nowhere.pem"}}, "jwt.public_keys.k", "nowhere.pem"),
    "EC key off P-256": ({"public_keys": {"k": pem(ec.generate_private_key(ec.SECP384R1()))}},
                         "jwt.public_keys.k", "P-256"),
    "empty issuer": ({"issuer": ""}, "jwt.issuer", "non-empty string"),
    "audience a list": ({"audience": ["a"]}, "jwt.audience", "non-empty string"),
    "negative leeway": ({"leeway": -1}, "jwt.leeway", "seconds"),
}


@pytest.mark.parametrize("case", list(BAD_SECTIONS))
def test_bad_jwt_sections_name_the_file_and_the_key(tmp_path, case):
    section, key, why = BAD_SECTIONS[case]
    with pytest.raises(topology.TopologyError) as exc:
        topo_with(tmp_path, section)
    assert f"topology.yaml: {key}: " in str(exc.value) and why in str(exc.value), str(exc.value)


def test_algorithms_default_to_hs256_and_the_keys_algorithms(tmp_path):
    assert topo_with(tmp_path, None).jwt.algorithms == ("HS256",)
    both = topo_with(tmp_path, {"public_keys": {"r": pem(RSA_KEY), "e": pem(EC_KEY)}}).jwt
    assert both.algorithms == ("HS256", "RS256", "ES256")
    assert topo_with(tmp_path, {"algorithms": []}).jwt.algorithms == ()       # JWT logins off


def test_mesh_check_and_token_with_a_jwt_section(tmp_path):
    cfg = write_topology(tmp_path)
    raw = yaml.safe_load(open(cfg))
    raw["jwt"] = {"algorithms": ["HS256", "ES256"], "audience": "imesh"}
    yaml.safe_dump(raw, open(cfg, "w"))
    r = run("mesh", "check", "-c", cfg)
    assert r.returncode == 1 and r.stderr.strip() == (
        f"error: {cfg}: jwt.algorithms: ES256 needs a P-256 (EC) public key under jwt.public_keys"), r.stderr
    (tmp_path / "app.pem").write_text(pem(EC_KEY))
    raw["jwt"]["public_keys"] = {"app": "app.pem"}
    yaml.safe_dump(raw, open(cfg, "w"))
    assert run("mesh", "check", "-c", cfg).returncode == 0
    secret = topology.load(cfg).read_secret()
    token = run("mesh", "token", "-c", cfg, "--uin", 5, "--jwt").stdout.strip()
    assert jwt.decode(token, secret, algorithms=["HS256"], audience="imesh")["sub"] == "5"
    assert run("mesh", "token", "-c", cfg, "--uin", 5).stdout.startswith("v1.user.5.")


def test_mesh_token_jwt_says_so_when_hs256_is_off(tmp_path):
    cfg = write_topology(tmp_path)
    raw = yaml.safe_load(open(cfg))
    raw["jwt"] = {"algorithms": []}
    yaml.safe_dump(raw, open(cfg, "w"))
    r = run("mesh", "token", "-c", cfg, "--uin", 5, "--jwt")
    assert r.returncode == 2 and r.stdout == "" and "HS256" in r.stderr and "Traceback" not in r.stderr


# --- a real mesh ---------------------------------------------------------------------

def test_a_pyjwt_rs256_token_logs_in_at_a_broker_and_a_relay(make_mesh):
    m = make_mesh(brokers=1, logics=1, relays=1,
                  jwt={"issuer": "https://app.example", "audience": "imesh", "public_keys": {"app-rsa": pem(RSA_KEY)}})
    now = int(time.time())                           # the nodes check exp against their wall clock

    def token(uin, **changes):
        return jwt.encode(claims(sub=str(uin), iat=now, exp=now + 3600, **changes), RSA_KEY, algorithm="RS256",
                          headers={"kid": "app-rsa"})
    sender = Client(m.broker(0), timeout=5.0)
    m.clients.append(sender)
    assert sender.login(token(1))["uin"] == 1
    m.wait_presence(1, 0, present=True)
    receiver = m.client(2)                            # a v1 token, beside it
    sender.send("lobby", "signed by the app's backend")
    got = receiver.recv(timeout=5.0)
    assert got is not None and got["text"] == "signed by the app's backend" and got["uin"] == 1, got
    header, _, sig = token(3).split(".")
    forged = ".".join((header, token(1).split(".")[1], sig))
    for endpoint in (m.broker(0), m.topo.node("m1").endpoint("client")):
        intruder = Client(endpoint, timeout=5.0)
        m.clients.append(intruder)
        with pytest.raises(ClientError) as exc:
            intruder.login(forged)
        assert exc.value.code == wire.Err.AUTH_FAILED
    media = Client(m.topo.node("m1").endpoint("client"), timeout=5.0)
    m.clients.append(media)
    assert media.login(token(4))["uin"] == 4
    assert_no_tracebacks(m.mesh)
