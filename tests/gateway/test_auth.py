"""Tests for gateway.auth: Basic, Digest, JWT, token issuing and throttling (pure)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from websockets.datastructures import Headers

from gateway.auth import (
    DEFAULT_ISSUER,
    MAX_NONCES,
    NONCE_LIFETIME,
    Authenticator,
    AuthFailure,
    AuthResult,
    StoredCredentials,
    Throttle,
    TokenGrant,
    digest_response,
    parse_auth_params,
)
from gateway.config import AuthConfig, JwtConfig

PASSWORDS = {"alice": "alice-secret", "bob": "bob-secret", "zoë": "pässword"}
SECRET = "s" * 40
ISSUER = "https://app.example.com"
ADDR = "192.0.2.7"


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def rsa_private() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def rsa_public_pem(rsa_private: rsa.RSAPrivateKey) -> bytes:
    return rsa_private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def make_auth(
    mode: str = "both",
    *,
    clock: FakeClock | None = None,
    issuer: str | None = ISSUER,
    secret: str | None = SECRET,
    pem: bytes | None = None,
    lifetime: int = 300,
) -> Authenticator:
    config = AuthConfig(
        mode=mode,
        realm="webrtc-gateway",
        jwt=JwtConfig(
            issuer=issuer,
            hs256_secret=secret,
            rs256_public_key="/x.pem" if pem else None,
            rs256_public_key_pem=pem,
            token_lifetime=lifetime,
        ),
    )
    return Authenticator(config, PASSWORDS.get, clock=clock or FakeClock())


def basic(user: str, password: str) -> Headers:
    raw = base64.b64encode(f"{user}:{password}".encode()).decode()
    return Headers([("Authorization", f"Basic {raw}")])


def challenge_params(failure: AuthFailure, algorithm: str) -> dict[str, str]:
    for name, value in failure.headers:
        if name == "WWW-Authenticate" and value.startswith("Digest ") and (
            f"algorithm={algorithm}," in value
        ):
            params = parse_auth_params(value[len("Digest "):])
            assert params is not None
            return params
    raise AssertionError(f"no Digest {algorithm} challenge in {failure.headers}")


def digest_header(
    challenge: dict[str, str],
    user: str,
    password: str,
    *,
    uri: str = "/ws",
    method: str = "GET",
    nc: int = 1,
    algorithm: str = "SHA-256",
    realm: str | None = None,
) -> Headers:
    realm = realm or challenge["realm"]
    h = hashlib.sha256 if algorithm == "SHA-256" else hashlib.md5
    ha1 = h(f"{user}:{realm}:{password}".encode()).hexdigest()
    cnonce = secrets.token_hex(8)
    ncs = f"{nc:08x}"
    response = digest_response(algorithm, ha1, method, uri, challenge["nonce"], ncs, cnonce)
    value = (
        f'Digest username="{user}", realm="{realm}", nonce="{challenge["nonce"]}", '
        f'uri="{uri}", algorithm={algorithm}, qop=auth, nc={ncs}, cnonce="{cnonce}", '
        f'response="{response}"'
    )
    return Headers([("Authorization", value)])


def hs256(claims: dict[str, Any], key: str | bytes = SECRET, **headers: Any) -> str:
    return jwt.encode(claims, key, algorithm="HS256", headers=headers or None)


def claims(clock: FakeClock, **extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"iss": ISSUER, "sub": "alice", "exp": int(clock.now) + 60}
    base.update(extra)
    return {k: v for k, v in base.items() if v is not None}


def raw_jwt(header: dict[str, Any], payload: dict[str, Any], sign: Any = None) -> str:
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).decode().rstrip("=")

    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    signature = sign(signing_input.encode()) if sign else b""
    return f"{signing_input}.{b64(signature)}"


def failed(result: object, status: int = 401) -> AuthFailure:
    assert isinstance(result, AuthFailure), result
    assert result.status == status, result
    return result


# ----------------------------------------------------------------------------- modes


def test_mode_none_is_anonymous() -> None:
    auth = make_auth("none", secret=None)
    assert auth.check_upgrade("/ws", Headers(), ADDR) == AuthResult(None, "none")


def test_no_credentials_challenges_per_mode() -> None:
    f = failed(make_auth("password").check_upgrade("/ws", Headers(), ADDR))
    values = [v for k, v in f.headers if k == "WWW-Authenticate"]
    assert values[0].startswith('Digest realm="webrtc-gateway", qop="auth", algorithm=SHA-256')
    assert "algorithm=MD5" in values[1]
    assert values[2] == 'Basic realm="webrtc-gateway", charset="UTF-8"'
    assert len(values) == 3
    f = failed(make_auth("token").check_upgrade("/ws", Headers(), ADDR))
    assert [v for k, v in f.headers] == ['Bearer realm="webrtc-gateway"']
    f = failed(make_auth("both").check_upgrade("/ws", Headers(), ADDR))
    assert len([k for k, v in f.headers if k == "WWW-Authenticate"]) == 4


def test_password_in_token_mode_is_forbidden() -> None:
    failed(make_auth("token").check_upgrade("/ws", basic("alice", "alice-secret"), ADDR), 403)


# ----------------------------------------------------------------------------- Basic


def test_basic_accepted() -> None:
    auth = make_auth("password")
    assert auth.check_upgrade("/ws", basic("alice", "alice-secret"), ADDR) == AuthResult(
        "alice", "basic"
    )
    assert auth.check_upgrade("/ws", basic("zoë", "pässword"), ADDR) == AuthResult(
        "zoë", "basic"
    )


@pytest.mark.parametrize(
    "headers",
    [
        basic("alice", "wrong"),
        basic("mallory", "alice-secret"),
        basic("alice", ""),
        Headers([("Authorization", "Basic !!!notbase64")]),
        Headers([("Authorization", "Basic " + base64.b64encode(b"nocolon").decode())]),
        Headers([("Authorization", "Negotiate abc")]),
        Headers([("Authorization", "Basic x"), ("Authorization", "Basic y")]),
    ],
    ids=["wrong-password", "unknown-user", "empty", "bad-b64", "no-colon", "scheme", "twice"],
)
def test_basic_refused(headers: Headers) -> None:
    f = failed(make_auth("password").check_upgrade("/ws", headers, ADDR))
    assert any(k == "WWW-Authenticate" for k, _ in f.headers)


# ----------------------------------------------------------------------------- Digest


@pytest.mark.parametrize("algorithm", ["SHA-256", "MD5"])
def test_digest_accepted(algorithm: str) -> None:
    auth = make_auth("password")
    ch = challenge_params(failed(auth.check_upgrade("/ws?x=1", Headers(), ADDR)), algorithm)
    assert ch["qop"] == "auth" and ch["realm"] == "webrtc-gateway"
    headers = digest_header(ch, "alice", "alice-secret", uri="/ws?x=1", algorithm=algorithm)
    assert auth.check_upgrade("/ws?x=1", headers, ADDR) == AuthResult("alice", "digest")
    # The next nc on the same nonce is fine.
    headers = digest_header(ch, "alice", "alice-secret", uri="/ws?x=1", algorithm=algorithm,
                            nc=2)
    assert auth.check_upgrade("/ws?x=1", headers, ADDR) == AuthResult("alice", "digest")


def test_digest_username_star() -> None:
    auth = make_auth("password")
    ch = challenge_params(failed(auth.check_upgrade("/ws", Headers(), ADDR)), "SHA-256")
    headers = digest_header(ch, "zoë", "pässword")
    value = headers["Authorization"].replace('username="zoë"', "username*=UTF-8''zo%C3%AB")
    assert auth.check_upgrade("/ws", Headers([("Authorization", value)]), ADDR) == AuthResult(
        "zoë", "digest"
    )


def test_digest_wrong_password_and_unknown_user() -> None:
    auth = make_auth("password")
    ch = challenge_params(failed(auth.check_upgrade("/ws", Headers(), ADDR)), "SHA-256")
    failed(auth.check_upgrade("/ws", digest_header(ch, "alice", "nope"), ADDR))
    failed(auth.check_upgrade("/ws", digest_header(ch, "mallory", "alice-secret"), ADDR))


def test_digest_forged_nonce_wrong_uri_wrong_realm() -> None:
    auth = make_auth("password")
    other = make_auth("password")  # another process: another nonce key
    ch = challenge_params(failed(other.check_upgrade("/ws", Headers(), ADDR)), "SHA-256")
    failed(auth.check_upgrade("/ws", digest_header(ch, "alice", "alice-secret"), ADDR))
    ch = challenge_params(failed(auth.check_upgrade("/ws", Headers(), ADDR)), "SHA-256")
    failed(auth.check_upgrade("/ws", digest_header(ch, "alice", "alice-secret", uri="/x"), ADDR))
    failed(auth.check_upgrade(
        "/ws", digest_header(ch, "alice", "alice-secret", realm="other"), ADDR
    ))
    # The request method is part of the hash: a POST response does not open a GET.
    failed(auth.check_upgrade(
        "/ws", digest_header(ch, "alice", "alice-secret", method="POST"), ADDR
    ))


def test_digest_stale_nonce() -> None:
    clock = FakeClock()
    auth = make_auth("password", clock=clock)
    ch = challenge_params(failed(auth.check_upgrade("/ws", Headers(), ADDR)), "SHA-256")
    clock.now += NONCE_LIFETIME + 1
    f = failed(auth.check_upgrade("/ws", digest_header(ch, "alice", "alice-secret"), ADDR))
    digest = [v for k, v in f.headers if v.startswith("Digest")]
    assert digest and all(v.endswith("stale=true") for v in digest)
    # A stale nonce with a wrong password is a plain failure, not "stale".
    f = failed(auth.check_upgrade("/ws", digest_header(ch, "alice", "bad"), ADDR))
    assert not any("stale" in v for _, v in f.headers)
    # The fresh nonce from the stale answer works.
    fresh = challenge_params(f, "SHA-256")
    assert auth.check_upgrade(
        "/ws", digest_header(fresh, "alice", "alice-secret"), ADDR
    ) == AuthResult("alice", "digest")
    # Stale answers are not counted as failures.
    assert auth.throttle.blocked_for(f"addr {ADDR}") == 0


def test_digest_nc_replay_refused() -> None:
    auth = make_auth("password")
    ch = challenge_params(failed(auth.check_upgrade("/ws", Headers(), ADDR)), "SHA-256")
    headers = digest_header(ch, "alice", "alice-secret", nc=3)
    assert isinstance(auth.check_upgrade("/ws", headers, ADDR), AuthResult)
    f = failed(auth.check_upgrade("/ws", headers, ADDR))  # the very same request again
    assert "replayed" in f.reason
    failed(auth.check_upgrade("/ws", digest_header(ch, "alice", "alice-secret", nc=2), ADDR))
    assert isinstance(
        auth.check_upgrade("/ws", digest_header(ch, "alice", "alice-secret", nc=4), ADDR),
        AuthResult,
    )


def test_digest_nonce_table_bounded_evicted_nonce_is_stale() -> None:
    clock = FakeClock()
    auth = make_auth("password", clock=clock)
    first = challenge_params(failed(auth.check_upgrade("/ws", Headers(), ADDR)), "SHA-256")
    assert isinstance(
        auth.check_upgrade("/ws", digest_header(first, "alice", "alice-secret"), ADDR),
        AuthResult,
    )
    clock.now += 0.001
    for _ in range(MAX_NONCES):
        auth._remember_nc(auth.new_nonce(), 1, int(clock.now * 1000))
    assert len(auth._nc_seen) == MAX_NONCES
    assert first["nonce"] not in auth._nc_seen
    # Replaying the evicted nonce's first request does not work: it is stale now.
    f = failed(auth.check_upgrade("/ws", digest_header(first, "alice", "alice-secret"), ADDR))
    assert any("stale=true" in v for _, v in f.headers)


def test_digest_malformed() -> None:
    auth = make_auth("password")
    for value in ('Digest username="alice"', "Digest ,,,", 'Digest a="unterminated'):
        failed(auth.check_upgrade("/ws", Headers([("Authorization", value)]), ADDR))


def test_parse_auth_params() -> None:
    assert parse_auth_params('a=b, c="d, \\"e\\"" ,f=') == {"a": "b", "c": 'd, "e"', "f": ""}
    assert parse_auth_params("a=b, a=c") is None


# ----------------------------------------------------------------------------- tokens


def test_hs256_token_accepted_with_binding_and_nonce() -> None:
    clock = FakeClock()
    auth = make_auth("token", clock=clock)
    token = hs256(claims(clock), nonce="refresh-1")
    result = auth.check_upgrade(f"/ws?access_token={token}", Headers(), ADDR)
    assert result == AuthResult("alice", "token", "refresh-1")
    assert isinstance(result, AuthResult) and result.claims is not None
    token = hs256(claims(clock, sub=None, username="bob"))
    assert auth.check_upgrade(f"/ws?access_token={token}", Headers(), ADDR) == AuthResult(
        "bob", "token"
    )
    # Neither sub nor username: outgoing-only login.
    token = hs256(claims(clock, sub=None))
    assert auth.check_upgrade(f"/ws?access_token={token}", Headers(), ADDR) == AuthResult(
        None, "token"
    )


def test_rs256_token_accepted(rsa_private: rsa.RSAPrivateKey, rsa_public_pem: bytes) -> None:
    clock = FakeClock()
    auth = make_auth("token", clock=clock, secret=None, pem=rsa_public_pem)
    token = jwt.encode(claims(clock), rsa_private, algorithm="RS256")
    assert auth.check_upgrade(f"/ws?access_token={token}", Headers(), ADDR) == AuthResult(
        "alice", "token"
    )


def test_expired_token_refused_with_leeway() -> None:
    clock = FakeClock()
    auth = make_auth("token", clock=clock)
    token = hs256(claims(clock, exp=int(clock.now) - 5))  # within the 10 s leeway
    assert isinstance(auth.check_upgrade(f"/ws?access_token={token}", Headers(), ADDR),
                      AuthResult)
    token = hs256(claims(clock, exp=int(clock.now) - 60))
    f = failed(auth.check_upgrade(f"/ws?access_token={token}", Headers(), ADDR))
    assert f.reason == "token expired"
    assert ("WWW-Authenticate", 'Bearer realm="webrtc-gateway", error="invalid_token"') in (
        f.headers
    )


def test_token_expiry_follows_injected_clock() -> None:
    clock = FakeClock()
    auth = make_auth("token", clock=clock)
    token = hs256(claims(clock))
    assert isinstance(auth.check_upgrade(f"/ws?access_token={token}", Headers(), ADDR),
                      AuthResult)
    clock.now += 120
    failed(auth.check_upgrade(f"/ws?access_token={token}", Headers(), ADDR))


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"iss": "https://evil.example.com"}, "wrong issuer"),
        ({"iss": None}, "missing claim iss"),
        ({"exp": None}, "missing claim exp"),
        ({"exp": "tomorrow"}, "exp is not a number"),
        ({"nbf": 1_800_000_000}, "token not yet valid"),
        ({"sub": 42}, "invalid token: Subject must be a string"),
        ({"username": "x\ny"}, "username is not a valid user name"),
    ],
)
def test_bad_claims_refused(change: dict[str, Any], reason: str) -> None:
    clock = FakeClock()
    auth = make_auth("token", clock=clock)
    token = hs256(claims(clock, **change))
    f = failed(auth.check_upgrade(f"/ws?access_token={token}", Headers(), ADDR))
    assert f.reason.startswith(reason), f.reason


def test_any_issuer_when_none_configured() -> None:
    clock = FakeClock()
    auth = make_auth("token", clock=clock, issuer=None)
    token = hs256(claims(clock, iss="whoever"))
    assert isinstance(auth.check_upgrade(f"/ws?access_token={token}", Headers(), ADDR),
                      AuthResult)


def test_bad_signature_refused() -> None:
    clock = FakeClock()
    auth = make_auth("token", clock=clock)
    token = hs256(claims(clock), key="x" * 40)
    assert failed(auth.check_upgrade(f"/ws?access_token={token}", Headers(), ADDR)).reason == (
        "bad signature"
    )
    good = hs256(claims(clock))
    head, payload, sig = good.split(".")
    forged_payload = base64.urlsafe_b64encode(
        json.dumps(claims(clock, sub="bob")).encode()
    ).decode().rstrip("=")
    failed(auth.check_upgrade(f"/ws?access_token={head}.{forged_payload}.{sig}", Headers(),
                              ADDR))


def test_alg_none_refused() -> None:
    clock = FakeClock()
    auth = make_auth("both", clock=clock)
    for alg in ("none", "None", "NONE"):
        token = raw_jwt({"alg": alg, "typ": "JWT"}, claims(clock))
        f = failed(auth.check_upgrade(f"/ws?access_token={token}", Headers(), ADDR))
        assert "not accepted" in f.reason
    token = jwt.encode(claims(clock), None, algorithm="none")
    failed(auth.check_upgrade(f"/ws?access_token={token}", Headers(), ADDR))


@pytest.mark.parametrize("alg", ["HS384", "HS512", "RS512", "ES256", "PS256", "hs256"])
def test_other_algorithms_refused(alg: str) -> None:
    clock = FakeClock()
    auth = make_auth("token", clock=clock)
    token = raw_jwt(
        {"alg": alg, "typ": "JWT"},
        claims(clock),
        lambda data: hmac.new(SECRET.encode(), data, hashlib.sha512).digest(),
    )
    failed(auth.check_upgrade(f"/ws?access_token={token}", Headers(), ADDR))


@pytest.mark.parametrize("with_secret", [False, True])
def test_hs256_signed_with_rs256_public_key_refused(
    rsa_public_pem: bytes, with_secret: bool
) -> None:
    clock = FakeClock()
    auth = make_auth("token", clock=clock, secret=SECRET if with_secret else None,
                     pem=rsa_public_pem)
    token = raw_jwt(
        {"alg": "HS256", "typ": "JWT"},
        claims(clock),
        lambda data: hmac.new(rsa_public_pem, data, hashlib.sha256).digest(),
    )
    f = failed(auth.check_upgrade(f"/ws?access_token={token}", Headers(), ADDR))
    assert f.reason == "bad signature"


def test_rs256_without_key_refused(rsa_private: rsa.RSAPrivateKey) -> None:
    clock = FakeClock()
    auth = make_auth("token", clock=clock)  # HS256 only
    token = jwt.encode(claims(clock), rsa_private, algorithm="RS256")
    failed(auth.check_upgrade(f"/ws?access_token={token}", Headers(), ADDR))


def test_malformed_tokens_refused() -> None:
    auth = make_auth("token")
    for query in ("access_token=", "access_token=abc", "access_token=a.b.c",
                  "access_token=x&access_token=y", "access_token=" + "a" * 9000):
        failed(auth.check_upgrade(f"/ws?{query}", Headers(), ADDR))


# ----------------------------------------------------------------------------- issuing


def test_issue_token_with_basic_then_connect() -> None:
    clock = FakeClock()
    auth = make_auth("both", clock=clock, lifetime=120)
    grant = auth.issue_token("/api/token", "POST", basic("alice", "alice-secret"), ADDR)
    assert isinstance(grant, TokenGrant)
    assert grant.expires_in == 120 and grant.username == "alice"
    assert set(grant.body()) == {"access_token", "expires_in"}
    decoded = jwt.decode(grant.access_token, SECRET, algorithms=["HS256"], issuer=ISSUER,
                         options={"verify_exp": False})
    assert decoded["sub"] == "alice" and decoded["iss"] == ISSUER
    assert decoded["exp"] - decoded["iat"] == 120
    assert auth.check_upgrade(f"/ws?access_token={grant.access_token}", Headers(), ADDR) == (
        AuthResult("alice", "token")
    )
    clock.now += 131
    failed(auth.check_upgrade(f"/ws?access_token={grant.access_token}", Headers(), ADDR))


def test_issue_token_with_digest_and_nonce() -> None:
    auth = make_auth("password", secret=None, issuer=None)
    f = failed(auth.issue_token("/api/token?nonce=n-1", "POST", Headers(), ADDR))
    assert not any(v.startswith("Bearer") for _, v in f.headers)
    ch = challenge_params(f, "SHA-256")
    headers = digest_header(ch, "bob", "bob-secret", uri="/api/token?nonce=n-1", method="POST")
    grant = auth.issue_token("/api/token?nonce=n-1", "POST", headers, ADDR)
    assert isinstance(grant, TokenGrant)
    assert jwt.get_unverified_header(grant.access_token)["nonce"] == "n-1"
    assert jwt.decode(grant.access_token, options={"verify_signature": False})["iss"] == (
        DEFAULT_ISSUER
    )
    # Password mode accepts the gateway's own tokens (signed with its random key) ...
    assert auth.check_upgrade(f"/ws?access_token={grant.access_token}", Headers(), ADDR) == (
        AuthResult("bob", "token", "n-1")
    )


def test_password_mode_refuses_foreign_tokens(rsa_private: rsa.RSAPrivateKey,
                                              rsa_public_pem: bytes) -> None:
    clock = FakeClock()
    auth = make_auth("password", clock=clock, secret=None, pem=rsa_public_pem)
    token = jwt.encode(claims(clock), rsa_private, algorithm="RS256")
    failed(auth.check_upgrade(f"/ws?access_token={token}", Headers(), ADDR))
    token = hs256(claims(clock, iss=DEFAULT_ISSUER), key="k" * 40)
    failed(auth.check_upgrade(f"/ws?access_token={token}", Headers(), ADDR))


def test_issue_token_refusals() -> None:
    auth = make_auth("both")
    failed(auth.issue_token("/api/token", "POST", basic("alice", "nope"), ADDR))
    failed(auth.issue_token("/api/token?nonce=a%20b", "POST", basic("alice", "alice-secret"),
                            ADDR), 400)
    failed(make_auth("token").issue_token("/api/token", "POST",
                                          basic("alice", "alice-secret"), ADDR), 403)


# ----------------------------------------------------------------------------- throttling


def test_throttle_grows_and_forgets() -> None:
    clock = FakeClock(0.0)
    t = Throttle(clock, max_failures=5, window=60, base_block=30, max_block=100,
                 forget_after=1000)
    for _ in range(4):
        t.failure("k")
    assert t.blocked_for("k") == 0
    t.failure("k")
    assert t.blocked_for("k") == 30
    clock.now += 30
    assert t.blocked_for("k") == 0
    for _ in range(5):
        t.failure("k")
    assert t.blocked_for("k") == 60
    clock.now += 60
    for _ in range(5):
        t.failure("k")
    assert t.blocked_for("k") == 100  # capped
    # Failures spread wider than the window never block.
    clock.now += 2000
    for _ in range(10):
        t.failure("slow")
        clock.now += 15
    assert t.blocked_for("slow") == 0
    assert t.blocked_for("k") == 0
    t.success("slow")
    assert "slow" not in t._records


def test_throttle_bounded() -> None:
    clock = FakeClock(0.0)
    t = Throttle(clock, max_keys=100)
    for i in range(1000):
        t.failure(f"addr {i}")
    assert len(t) <= 100


def test_throttle_per_address_and_per_user() -> None:
    clock = FakeClock()
    auth = make_auth("password", clock=clock)
    for _ in range(5):
        failed(auth.check_upgrade("/ws", basic("alice", "wrong"), ADDR))
    # The address is blocked, even for right credentials and for another user.
    f = failed(auth.check_upgrade("/ws", basic("alice", "alice-secret"), ADDR), 429)
    assert ("Retry-After", "30") in f.headers
    failed(auth.check_upgrade("/ws", basic("bob", "bob-secret"), ADDR), 429)
    # The user is blocked from another address too; other users are not.
    failed(auth.check_upgrade("/ws", basic("alice", "alice-secret"), "198.51.100.1"), 429)
    assert auth.check_upgrade("/ws", basic("bob", "bob-secret"), "198.51.100.1") == (
        AuthResult("bob", "basic")
    )
    clock.now += 31
    assert auth.check_upgrade("/ws", basic("alice", "alice-secret"), ADDR) == AuthResult(
        "alice", "basic"
    )
    # The second block lasts twice as long.
    for _ in range(5):
        failed(auth.check_upgrade("/ws", basic("alice", "wrong"), ADDR))
    f = failed(auth.check_upgrade("/ws", basic("alice", "alice-secret"), ADDR), 429)
    assert ("Retry-After", "60") in f.headers


def test_throttle_counts_bad_tokens_per_address() -> None:
    clock = FakeClock()
    auth = make_auth("token", clock=clock)
    for _ in range(5):
        failed(auth.check_upgrade("/ws?access_token=bad", Headers(), ADDR))
    good = hs256(claims(clock))
    failed(auth.check_upgrade(f"/ws?access_token={good}", Headers(), ADDR), 429)
    assert isinstance(auth.check_upgrade(f"/ws?access_token={good}", Headers(), "::1"),
                      AuthResult)


def test_missing_credentials_not_counted() -> None:
    auth = make_auth("password")
    for _ in range(20):
        failed(auth.check_upgrade("/ws", Headers(), ADDR))
    assert auth.check_upgrade("/ws", basic("alice", "alice-secret"), ADDR) == AuthResult(
        "alice", "basic"
    )


# ----------------------------------------------------------------------------- HA1 only

SIP_REALM = "gw.example"


def _stored(number: str, password: str, *, md5: bool = True, sha256: bool = True,
            realm: str | None = SIP_REALM) -> StoredCredentials:
    text = f"{number}:{realm}:{password}".encode()
    return StoredCredentials(
        None,
        hashlib.md5(text).hexdigest() if md5 else None,
        hashlib.sha256(text).hexdigest() if sha256 else None,
        number,
        realm,
    )


CREDENTIALS: dict[str, str | StoredCredentials] = {
    "alice": "alice-secret",  # a plain password still works
    "carol": _stored("1003", "carol-pw"),
    "md5only": _stored("1007", "m-pw", sha256=False),
    "1004": _stored("1004", "dave-pw", md5=False),  # username = number
    "norealm": _stored("1008", "n-pw", realm=None),
    "bob": StoredCredentials("bob-secret", ha1_username="1002", ha1_realm=SIP_REALM),
}


def make_ha1_auth(realm: str = SIP_REALM) -> Authenticator:
    return Authenticator(AuthConfig(mode="password", realm=realm), CREDENTIALS.get,
                         clock=FakeClock())


@pytest.mark.parametrize(
    ("user", "password", "ok"),
    [
        ("carol", "carol-pw", True),  # compared with the stored SHA-256 HA1
        ("carol", "carol-PW", False),
        ("carol", "", False),
        ("md5only", "m-pw", True),  # only MD5 stored
        ("md5only", "x", False),
        ("1004", "dave-pw", True),
        ("norealm", "n-pw", False),  # the realm of the HA1 is unknown: cannot check
        ("bob", "bob-secret", True),  # a stored password wins
        ("alice", "alice-secret", True),
        ("mallory", "carol-pw", False),
    ],
)
def test_basic_with_stored_ha1(user: str, password: str, ok: bool) -> None:
    result = make_ha1_auth("webrtc-gateway").check_upgrade("/ws", basic(user, password), ADDR)
    if ok:
        assert result == AuthResult(user, "basic")
    else:
        failed(result)


def test_token_with_basic_for_ha1_only_user() -> None:
    grant = make_ha1_auth("webrtc-gateway").issue_token(
        "/api/token", "POST", basic("carol", "carol-pw"), ADDR
    )
    assert isinstance(grant, TokenGrant) and grant.username == "carol"


def test_digest_for_ha1_only_users(caplog: pytest.LogCaptureFixture) -> None:
    # [auth] realm = SIP realm and user name = number: the stored HA1 checks the response,
    # for the algorithm that is stored.
    auth = make_ha1_auth()
    ch = challenge_params(failed(auth.check_upgrade("/ws", Headers(), ADDR)), "SHA-256")
    assert auth.check_upgrade("/ws", digest_header(ch, "1004", "dave-pw"), ADDR) == AuthResult(
        "1004", "digest"
    )
    failed(auth.check_upgrade("/ws", digest_header(ch, "1004", "wrong", nc=2), ADDR))
    with caplog.at_level(logging.WARNING, logger="gateway.auth"):
        ch = challenge_params(failed(auth.check_upgrade("/ws", Headers(), ADDR)), "MD5")
        f = failed(auth.check_upgrade(
            "/ws", digest_header(ch, "1004", "dave-pw", algorithm="MD5"), ADDR
        ))
        assert f.reason == "wrong user name or password"
        # carol's HA1 hashes "1003", not "carol": Digest cannot be checked.
        ch = challenge_params(failed(auth.check_upgrade("/ws", Headers(), ADDR)), "SHA-256")
        f = failed(auth.check_upgrade("/ws", digest_header(ch, "carol", "carol-pw"), ADDR))
        assert f.reason == "wrong user name or password"  # does not tell the user exists
    assert [r.getMessage() for r in caplog.records] == [
        "Digest MD5 login as '1004' refused: only HA1 values are stored for this user, and "
        "none for MD5; log in with Basic (or store the password)",
        "Digest SHA-256 login as 'carol' refused: only HA1 values are stored for this user, "
        "hashed with number '1003' and SIP realm 'gw.example', not user name 'carol' and "
        "realm 'gw.example'; log in with Basic (or store the password)",
    ]
    # Another web realm: even user name = number cannot use the stored HA1.
    other = make_ha1_auth("webrtc-gateway")
    ch = challenge_params(failed(other.check_upgrade("/ws", Headers(), ADDR)), "SHA-256")
    failed(other.check_upgrade("/ws", digest_header(ch, "1004", "dave-pw"), ADDR))
    # These refusals count as failures, like wrong passwords.
    assert auth.throttle._records["user carol"].failures


def test_digest_with_stored_password_unchanged() -> None:
    auth = make_ha1_auth("webrtc-gateway")
    ch = challenge_params(failed(auth.check_upgrade("/ws", Headers(), ADDR)), "SHA-256")
    assert auth.check_upgrade("/ws", digest_header(ch, "bob", "bob-secret"), ADDR) == (
        AuthResult("bob", "digest")
    )
