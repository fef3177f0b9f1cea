"""Client authentication against the real gateway (json-v1 §2).

The upgrade is refused with 401 (and no WebSocket) without credentials, accepted with
Basic and with Digest (computed here from the 401 challenge), POST /api/token issues a
token that opens the WebSocket, and token mode refuses expired and unsigned tokens.
Plain HTTP goes through http.client and urllib on loopback.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import http.client
import json
import secrets
import time
import urllib.error
import urllib.request
from typing import Any

import jwt
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from gateway.auth import parse_auth_params

from .conftest import Gateway

SECRET = "e2e-secret-" + "x" * 32
ISSUER = "https://app.example.com"

PASSWORD = '[auth]\nmode = "password"\n'
TOKEN = f'[auth]\nmode = "token"\n[auth.jwt]\nissuer = "{ISSUER}"\nhs256_secret = "{SECRET}"\n'


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def digest(
    challenges: list[str], user: str, password: str, method: str, uri: str,
    algorithm: str = "SHA-256",
) -> str:
    """An Authorization value answering the Digest challenge of `algorithm`."""
    for value in challenges:
        if value.startswith("Digest ") and f"algorithm={algorithm}," in value:
            params = parse_auth_params(value[len("Digest "):])
            assert params is not None
            break
    else:
        raise AssertionError(f"no Digest {algorithm} challenge in {challenges}")
    h = {"SHA-256": hashlib.sha256, "MD5": hashlib.md5}[algorithm]
    ha1 = h(f"{user}:{params['realm']}:{password}".encode()).hexdigest()
    ha2 = h(f"{method}:{uri}".encode()).hexdigest()
    cnonce = secrets.token_hex(8)
    response = h(f"{ha1}:{params['nonce']}:00000001:{cnonce}:auth:{ha2}".encode()).hexdigest()
    return (
        f'Digest username="{user}", realm="{params["realm"]}", nonce="{params["nonce"]}", '
        f'uri="{uri}", algorithm={algorithm}, qop=auth, nc=00000001, cnonce="{cnonce}", '
        f'response="{response}"'
    )


async def refused(gw: Gateway, query: str = "", headers: dict[str, str] | None = None,
                  ) -> Any:
    with pytest.raises(InvalidStatus) as info:
        async with connect(gw.ws_url + query, additional_headers=headers, open_timeout=10):
            pass
    return info.value.response


async def opened(gw: Gateway, query: str = "", headers: dict[str, str] | None = None) -> None:
    async with connect(gw.ws_url + query, additional_headers=headers, open_timeout=10) as ws:
        await asyncio.wait_for(await ws.ping(), 5)


def token_request(
    gw: Gateway, authorization: str | None, body: bytes | None = None, path: str = "/api/token"
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(gw.host, gw.http_port, timeout=10)
    try:
        headers = {"Authorization": authorization} if authorization else {}
        if body is not None:
            headers["Content-Type"] = "application/json"
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        challenges = response.headers.get_all("WWW-Authenticate") or []
        data = response.read()
        result = dict(response.headers.items())
        result["WWW-Authenticate"] = "\n".join(challenges)
        return response.status, result, data
    finally:
        conn.close()


# ----------------------------------------------------------------------------- password


@pytest.mark.parametrize("gateway", [PASSWORD], indirect=True)
async def test_password_mode_upgrade(gateway: Gateway) -> None:
    response = await refused(gateway)
    assert response.status_code == 401
    challenges = response.headers.get_all("WWW-Authenticate")
    assert [c.split(" ", 1)[0] for c in challenges] == ["Digest", "Digest", "Basic"]
    # Basic
    await opened(gateway, headers={"Authorization": basic("alice", "alice-secret")})
    assert (await refused(gateway, headers={
        "Authorization": basic("alice", "wrong")
    })).status_code == 401
    # Digest, by hand from the challenge, both algorithms.
    for algorithm in ("SHA-256", "MD5"):
        response = await refused(gateway, "?x=1")
        value = digest(response.headers.get_all("WWW-Authenticate"), "bob", "bob-secret",
                       "GET", "/ws?x=1", algorithm)
        await opened(gateway, "?x=1", headers={"Authorization": value})
        # The same Authorization again is a replay.
        assert (await refused(gateway, "?x=1", headers={"Authorization": value})
                ).status_code == 401


@pytest.mark.parametrize("gateway", [PASSWORD], indirect=True)
async def test_token_endpoint_then_connect(gateway: Gateway) -> None:
    # No credentials: a challenge. http.client sends Content-Length: 0 for a bare POST.
    status, headers, _ = token_request(gateway, None)
    assert status == 401 and "Digest" in headers["WWW-Authenticate"]
    # Basic, with a JSON body (which the gateway ignores).
    status, headers, data = token_request(gateway, basic("alice", "alice-secret"), b'{"a": 1}')
    assert status == 200, data
    assert headers["Content-Type"] == "application/json"
    assert headers["Cache-Control"] == "no-store"
    grant = json.loads(data)
    assert set(grant) == {"access_token", "expires_in"} and grant["expires_in"] == 300
    claims = jwt.decode(grant["access_token"], options={"verify_signature": False})
    assert claims["sub"] == "alice" and claims["exp"] - claims["iat"] == 300
    await opened(gateway, f"?access_token={grant['access_token']}")
    # Digest through urllib: 401 with the challenge, then the answer.
    url = f"{gateway.http_url}/api/token"
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(urllib.request.Request(url, data=b"", method="POST"), timeout=10)
    assert info.value.code == 401
    value = digest(info.value.headers.get_all("WWW-Authenticate"), "bob", "bob-secret",
                   "POST", "/api/token")
    request = urllib.request.Request(url, data=b"", method="POST",
                                     headers={"Authorization": value})
    with urllib.request.urlopen(request, timeout=10) as response:
        grant = json.loads(response.read())
    await opened(gateway, f"?access_token={grant['access_token']}")
    # A forged token is refused; GET on the endpoint is not allowed.
    forged = jwt.encode({"sub": "alice", "exp": int(time.time()) + 60, "iss": "webrtc-gateway"},
                        "k" * 40, algorithm="HS256")
    assert (await refused(gateway, f"?access_token={forged}")).status_code == 401
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(url, timeout=10)
    assert info.value.code == 405 and info.value.headers["Allow"] == "POST"
    # The web phone is still served.
    with urllib.request.urlopen(f"{gateway.http_url}/healthz", timeout=10) as response:
        assert response.read() == b"ok\n"


@pytest.mark.parametrize("gateway", [PASSWORD], indirect=True)
async def test_failed_logins_are_throttled(gateway: Gateway) -> None:
    for _ in range(5):
        status, _, _ = token_request(gateway, basic("alice", "wrong"))
        assert status == 401
    status, headers, _ = token_request(gateway, basic("alice", "alice-secret"))
    assert status == 429 and int(headers["Retry-After"]) > 0
    response = await refused(gateway, headers={"Authorization": basic("alice", "alice-secret")})
    assert response.status_code == 429


# ----------------------------------------------------------------------------- HA1 only

# carol and 1004 are stored with HA1 values only: H(number:SIP realm:password).
# 1004's user name is its number and [auth] realm is the SIP realm, so its stored HA1 is
# also what a browser's Digest hashes; carol's is not (she logs in with Basic only).
HA1_REALM = "gw.example"


def _ha1(algorithm: str, number: str, password: str) -> str:
    h = {"SHA-256": hashlib.sha256, "MD5": hashlib.md5}[algorithm]
    return h(f"{number}:{HA1_REALM}:{password}".encode()).hexdigest()


HA1_USERS = f"""{PASSWORD}realm = "{HA1_REALM}"

[sip]
realm = "{HA1_REALM}"

[[users]]
username = "carol"
number = "1003"
ha1_md5 = "{_ha1("MD5", "1003", "carol-secret")}"
ha1_sha256 = "{_ha1("SHA-256", "1003", "carol-secret")}"

[[users]]
username = "1004"
number = "1004"
ha1_sha256 = "{_ha1("SHA-256", "1004", "dave-secret")}"
"""


@pytest.mark.parametrize("gateway", [HA1_USERS], indirect=True)
async def test_ha1_only_users_log_in(gateway: Gateway) -> None:
    # Basic: the typed password is hashed with the number and SIP realm and compared.
    await opened(gateway, headers={"Authorization": basic("carol", "carol-secret")})
    assert (await refused(gateway, headers={
        "Authorization": basic("carol", "carol-SECRET")
    })).status_code == 401
    status, _, data = token_request(gateway, basic("carol", "carol-secret"))
    assert status == 200, data
    token = json.loads(data)["access_token"]
    assert jwt.decode(token, options={"verify_signature": False})["sub"] == "carol"
    await opened(gateway, f"?access_token={token}")
    # Digest cannot be checked against carol's HA1 (it hashes "1003", not "carol"): 401
    # like a wrong password, and a warning in the log that says why.
    response = await refused(gateway)
    value = digest(response.headers.get_all("WWW-Authenticate"), "carol", "carol-secret",
                   "GET", "/ws")
    response = await refused(gateway, headers={"Authorization": value})
    assert response.status_code == 401 and b"wrong user name or password" in response.body
    deadline = time.monotonic() + 5
    while "Digest SHA-256 login as 'carol' refused: only HA1 values" not in gateway.log():
        assert time.monotonic() < deadline, gateway.log()[-3000:]
        await asyncio.sleep(0.1)
    # 1004 (user name = number, [auth] realm = SIP realm): Digest with the stored SHA-256.
    response = await refused(gateway)
    value = digest(response.headers.get_all("WWW-Authenticate"), "1004", "dave-secret",
                   "GET", "/ws")
    await opened(gateway, headers={"Authorization": value})
    # ... but not MD5, which is not stored for it.
    response = await refused(gateway)
    value = digest(response.headers.get_all("WWW-Authenticate"), "1004", "dave-secret",
                   "GET", "/ws", "MD5")
    assert (await refused(gateway, headers={"Authorization": value})).status_code == 401
    await opened(gateway, headers={"Authorization": basic("1004", "dave-secret")})


# ----------------------------------------------------------------------------- token


@pytest.mark.parametrize("gateway", [TOKEN], indirect=True)
async def test_token_mode(gateway: Gateway) -> None:
    now = int(time.time())
    good = jwt.encode({"iss": ISSUER, "sub": "alice", "exp": now + 60}, SECRET,
                      algorithm="HS256", headers={"nonce": "n1"})
    await opened(gateway, f"?access_token={good}")
    expired = jwt.encode({"iss": ISSUER, "sub": "alice", "exp": now - 120}, SECRET,
                         algorithm="HS256")
    response = await refused(gateway, f"?access_token={expired}")
    assert response.status_code == 401
    assert b"token expired" in response.body
    wrong_issuer = jwt.encode({"iss": "https://evil.example", "exp": now + 60}, SECRET,
                              algorithm="HS256")
    assert (await refused(gateway, f"?access_token={wrong_issuer}")).status_code == 401
    unsigned = jwt.encode({"iss": ISSUER, "exp": now + 60}, None, algorithm="none")
    assert (await refused(gateway, f"?access_token={unsigned}")).status_code == 401
    response = await refused(gateway)
    assert response.status_code == 401
    assert response.headers.get_all("WWW-Authenticate") == ['Bearer realm="webrtc-gateway"']
    # Passwords are not a login method in token mode.
    response = await refused(gateway, headers={"Authorization": basic("alice", "alice-secret")})
    assert response.status_code == 403
    status, _, _ = token_request(gateway, basic("alice", "alice-secret"))
    assert status == 403
