"""Tests for gateway.push: wake-up tokens, FCM HTTP v1 (OAuth2 service-account flow) and
the webhook, against a local HTTP server on 127.0.0.1 standing in for Google."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.config import PushConfig, parse_config
from gateway.push import (
    FCM_SCOPE,
    JWT_BEARER_GRANT,
    Push,
    PushResult,
    PushSender,
    WakeupTokens,
    valid_notification_token,
    valid_notification_url,
    wakeup_data,
)

IDENTIFIER = re.compile(r"^[A-Za-z0-9_-]{1,128}$")  # json-v1 §3


# ----------------------------------------------------------------------------- wake-up tokens


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_token_is_single_use() -> None:
    tokens = WakeupTokens(60)
    token = tokens.issue("reg-1", "call-1")
    assert tokens.consume(token, "reg-1") == "call-1"
    assert tokens.consume(token, "reg-1") is None
    assert len(tokens) == 0


def test_token_expires() -> None:
    clock = FakeClock()
    tokens = WakeupTokens(60, clock=clock)
    early = tokens.issue("reg-1", "call-1")
    late = tokens.issue("reg-1", "call-2")
    clock.now += 59.9
    assert tokens.consume(early, "reg-1") == "call-1"
    clock.now += 0.1  # exactly ttl after issue: expired
    assert tokens.consume(late, "reg-1") is None
    assert len(tokens) == 0  # expired tokens are forgotten


def test_expired_tokens_are_purged_on_issue() -> None:
    clock = FakeClock()
    tokens = WakeupTokens(10, clock=clock)
    for n in range(5):
        tokens.issue("reg", f"call-{n}")
    clock.now += 11
    tokens.issue("reg", "call-new")
    assert len(tokens) == 1


def test_token_is_bound_to_its_registration() -> None:
    tokens = WakeupTokens(60)
    token = tokens.issue("reg-1", "call-1")
    assert tokens.consume(token, "reg-2") is None
    # A presentation with the wrong identifier uses the token up.
    assert tokens.consume(token, "reg-1") is None
    other = tokens.issue("reg-1", "call-1")
    assert tokens.consume(other, "") is None
    assert tokens.consume("not-a-token", "reg-1") is None


def test_tokens_are_random_and_long_enough() -> None:
    tokens = WakeupTokens(60)
    issued = {tokens.issue("reg", f"call-{n}") for n in range(1000)}
    assert len(issued) == 1000
    for token in issued:
        assert IDENTIFIER.fullmatch(token), token
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        assert len(raw) * 8 >= 128


def test_token_count_is_bounded() -> None:
    tokens = WakeupTokens(60, max_tokens=3)
    first = tokens.issue("reg", "call-0")
    rest = [tokens.issue("reg", f"call-{n}") for n in range(1, 4)]
    assert len(tokens) == 3
    assert tokens.consume(first, "reg") is None  # the oldest was dropped
    assert tokens.consume(rest[-1], "reg") == "call-3"


def test_revoke() -> None:
    tokens = WakeupTokens(60)
    a = tokens.issue("reg-1", "call-1")
    b = tokens.issue("reg-1", "call-2")
    c = tokens.issue("reg-2", "call-3")
    assert tokens.revoke(call_identifier="call-1") == 1
    assert tokens.revoke() == 0  # no filter: nothing
    assert tokens.revoke(identifier="reg-2") == 1
    assert tokens.consume(a, "reg-1") is None
    assert tokens.consume(c, "reg-2") is None
    assert tokens.consume(b, "reg-1") == "call-2"


def test_ttl_must_be_positive() -> None:
    with pytest.raises(ValueError):
        WakeupTokens(0)


def test_wakeup_data() -> None:
    assert wakeup_data("tok", "reg", "call", "+4930123", "https://app.example.com/") == {
        "wakeupToken": "tok",
        "identifier": "reg",
        "callIdentifier": "call",
        "caller": "+4930123",
        "url": "https://app.example.com/",
    }
    assert wakeup_data("tok", "reg", "call", "sipp", None)["url"] == ""


def test_notification_token_and_url_checks() -> None:
    assert valid_notification_token("fcm:APA91b-xyz_123")
    assert not valid_notification_token("")
    assert not valid_notification_token("a b")
    assert not valid_notification_token("x" * 4097)
    assert not valid_notification_token(42)
    assert valid_notification_url("https://app.example.com/phone?x=1")
    assert valid_notification_url("http://127.0.0.1:8080/")
    assert not valid_notification_url("javascript:alert(1)")
    assert not valid_notification_url("https://" + "a" * 2048)
    assert not valid_notification_url(None)


# ----------------------------------------------------------------------------- stand-in server


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def form(self) -> dict[str, str]:
        return dict(urllib.parse.parse_qsl(self.body.decode(), strict_parsing=True))


Route = Callable[[Request], tuple[int, bytes]]


@dataclass
class Stub:
    """A local HTTP server: `routes[path](request) -> (status, body)`; records requests."""

    url: str = ""
    routes: dict[str, Route] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    tokens_issued: int = 0

    def on(self, path: str) -> list[Request]:
        return [r for r in self.requests if r.path == path]


def _json(status: int, data: object) -> tuple[int, bytes]:
    return status, json.dumps(data).encode()


@pytest.fixture
def stub() -> Iterator[Stub]:
    state = Stub()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            length = int(self.headers.get("Content-Length", "0"))
            request = Request(
                self.path, {k.lower(): v for k, v in self.headers.items()}, self.rfile.read(length)
            )
            state.requests.append(request)
            route = state.routes.get(self.path)
            status, body = route(request) if route else _json(404, {"error": "no route"})
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except OSError:
                pass  # the client gave up (timeout tests)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.url = f"http://127.0.0.1:{server.server_address[1]}"

    def token(request: Request) -> tuple[int, bytes]:
        state.tokens_issued += 1
        return _json(
            200,
            {
                "access_token": f"ya29.token-{state.tokens_issued}",
                "expires_in": 3599,
                "token_type": "Bearer",
            },
        )

    state.routes["/token"] = token
    state.routes["/v1/projects/proj-1/messages:send"] = lambda r: _json(
        200, {"name": "projects/proj-1/messages/0:1"}
    )
    state.routes["/hook"] = lambda r: (204, b"")
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _service_account(tmp_path: Path, key: rsa.RSAPrivateKey, token_uri: str) -> Path:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    path = tmp_path / "sa.json"
    path.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": "proj-1",
                "private_key_id": "key-id-1",
                "private_key": pem,
                "client_email": "push@proj-1.iam.gserviceaccount.com",
                "client_id": "1234",
                "token_uri": token_uri,
            }
        )
    )
    return path


def _fcm_config(tmp_path: Path, key: rsa.RSAPrivateKey, stub: Stub, **push: Any) -> PushConfig:
    _service_account(tmp_path, key, f"{stub.url}/token")
    table = {"fcm_service_account": "sa.json", "fcm_endpoint": stub.url, **push}
    return parse_config({"push": table}, str(tmp_path / "gw.toml")).push


DATA = wakeup_data("wake-tok", "reg-1", "call-1", "+4930123", "https://app.example.com/")


# ----------------------------------------------------------------------------- FCM


async def test_fcm_send(tmp_path: Path, rsa_key: rsa.RSAPrivateKey, stub: Stub) -> None:
    config = _fcm_config(tmp_path, rsa_key, stub)
    sender = PushSender(config)
    try:
        result = await sender.send("device-token-1", DATA)
    finally:
        await sender.close()
    assert result == PushResult(True, 200, None)

    # The OAuth2 JWT bearer grant with an RS256 assertion from the service account.
    [token_request] = stub.on("/token")
    assert token_request.headers["content-type"] == "application/x-www-form-urlencoded"
    form = token_request.form()
    assert form["grant_type"] == JWT_BEARER_GRANT == "urn:ietf:params:oauth:grant-type:jwt-bearer"
    assertion = form["assertion"]
    assert jwt.get_unverified_header(assertion) == {"alg": "RS256", "typ": "JWT", "kid": "key-id-1"}
    claims = jwt.decode(
        assertion,
        rsa_key.public_key(),
        algorithms=["RS256"],
        audience=f"{stub.url}/token",
        issuer="push@proj-1.iam.gserviceaccount.com",
    )
    assert claims["scope"] == FCM_SCOPE == "https://www.googleapis.com/auth/firebase.messaging"
    assert claims["exp"] - claims["iat"] == 3600
    assert abs(claims["iat"] - time.time()) < 60
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(
            assertion,
            other_key.public_key(),
            algorithms=["RS256"],
            audience=f"{stub.url}/token",
        )

    # The send call with the bearer token and the high-priority data message.
    [send] = stub.on("/v1/projects/proj-1/messages:send")
    assert send.headers["authorization"] == "Bearer ya29.token-1"
    assert send.headers["content-type"].startswith("application/json")
    assert send.json() == {
        "message": {
            "token": "device-token-1",
            "data": DATA,
            "android": {"priority": "high", "ttl": "60s"},
            "webpush": {"headers": {"Urgency": "high", "TTL": "60"}},
        }
    }
    assert all(isinstance(v, str) for v in send.json()["message"]["data"].values())


async def test_fcm_project_id_from_config(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey, stub: Stub
) -> None:
    stub.routes["/v1/projects/other-proj/messages:send"] = lambda r: _json(200, {})
    config = _fcm_config(tmp_path, rsa_key, stub, fcm_project_id="other-proj", token_ttl=30)
    sender = PushSender(config)
    try:
        assert (await sender.send("t", DATA)).ok
    finally:
        await sender.close()
    [send] = stub.on("/v1/projects/other-proj/messages:send")
    assert send.json()["message"]["webpush"]["headers"]["TTL"] == "30"


async def test_fcm_access_token_is_cached(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey, stub: Stub
) -> None:
    clock = FakeClock(time.time())
    sender = PushSender(_fcm_config(tmp_path, rsa_key, stub), clock=clock)
    try:
        assert (await sender.send("device-1", DATA)).ok
        clock.now += 3000  # still well before expiry (3599 s)
        assert (await sender.send("device-2", DATA)).ok
        assert len(stub.on("/token")) == 1
        sends = stub.on("/v1/projects/proj-1/messages:send")
        assert [s.headers["authorization"] for s in sends] == ["Bearer ya29.token-1"] * 2
        assert [s.json()["message"]["token"] for s in sends] == ["device-1", "device-2"]
        clock.now += 560  # within the last minute before expiry: fetched again
        assert (await sender.send("device-3", DATA)).ok
    finally:
        await sender.close()
    assert len(stub.on("/token")) == 2
    last = stub.on("/v1/projects/proj-1/messages:send")[-1]
    assert last.headers["authorization"] == "Bearer ya29.token-2"
    # The new assertion carries the new time.
    claims = jwt.decode(
        stub.on("/token")[1].form()["assertion"],
        rsa_key.public_key(),
        algorithms=["RS256"],
        audience=f"{stub.url}/token",
        options={"verify_iat": False},  # the fake clock is in the future
    )
    assert claims["iat"] == int(clock.now)


async def test_fcm_concurrent_sends_fetch_one_token(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey, stub: Stub
) -> None:
    import asyncio

    sender = PushSender(_fcm_config(tmp_path, rsa_key, stub))
    try:
        results = await asyncio.gather(*(sender.send(f"d{n}", DATA) for n in range(4)))
    finally:
        await sender.close()
    assert all(r.ok for r in results)
    assert len(stub.on("/token")) == 1
    assert len(stub.on("/v1/projects/proj-1/messages:send")) == 4


async def test_fcm_server_error_is_a_result(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey, stub: Stub, caplog: pytest.LogCaptureFixture
) -> None:
    stub.routes["/v1/projects/proj-1/messages:send"] = lambda r: _json(
        500, {"error": {"code": 500, "message": "Internal error.", "status": "INTERNAL"}}
    )
    sender = PushSender(_fcm_config(tmp_path, rsa_key, stub))
    with caplog.at_level(logging.WARNING, logger="gateway.push"):
        try:
            result = await sender.send("device-token-secret", DATA)
        finally:
            await sender.close()
    assert result.ok is False
    assert result.status == 500
    assert result.error == "FCM 500: INTERNAL Internal error."
    [record] = [r for r in caplog.records if r.name == "gateway.push"]
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    assert "\n" not in message and "FCM 500" in message
    assert "device-token-secret" not in message  # the device token stays out of logs
    assert len(stub.on("/v1/projects/proj-1/messages:send")) == 1  # no retry on 500


async def test_fcm_unregistered_token(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey, stub: Stub
) -> None:
    stub.routes["/v1/projects/proj-1/messages:send"] = lambda r: _json(
        404,
        {
            "error": {
                "code": 404,
                "message": "Requested entity was not found.",
                "status": "NOT_FOUND",
                "details": [
                    {
                        "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                        "errorCode": "UNREGISTERED",
                    }
                ],
            }
        },
    )
    sender = PushSender(_fcm_config(tmp_path, rsa_key, stub))
    try:
        result = await sender.send("stale", DATA)
    finally:
        await sender.close()
    assert result == PushResult(
        False, 404, "FCM 404: UNREGISTERED NOT_FOUND Requested entity was not found."
    )


async def test_fcm_401_refreshes_the_token_once(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey, stub: Stub
) -> None:
    def send(request: Request) -> tuple[int, bytes]:
        if request.headers["authorization"] == "Bearer ya29.token-1":
            return _json(401, {"error": {"code": 401, "status": "UNAUTHENTICATED"}})
        return _json(200, {})

    stub.routes["/v1/projects/proj-1/messages:send"] = send
    sender = PushSender(_fcm_config(tmp_path, rsa_key, stub))
    try:
        assert (await sender.send("d", DATA)).ok
        # Always 401: one retry, then a failed result.
        stub.routes["/v1/projects/proj-1/messages:send"] = lambda r: _json(401, {})
        result = await sender.send("d", DATA)
    finally:
        await sender.close()
    assert (result.ok, result.status) == (False, 401)
    assert len(stub.on("/token")) == 3
    assert len(stub.on("/v1/projects/proj-1/messages:send")) == 4


async def test_fcm_token_endpoint_refuses(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey, stub: Stub
) -> None:
    stub.routes["/token"] = lambda r: _json(
        400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}
    )
    sender = PushSender(_fcm_config(tmp_path, rsa_key, stub))
    try:
        result = await sender.send("d", DATA)
        stub.routes["/token"] = lambda r: (200, b"not json")
        garbled = await sender.send("d", DATA)
    finally:
        await sender.close()
    assert result == PushResult(
        False, 400, "OAuth2 token request 400: invalid_grant Invalid JWT Signature."
    )
    assert garbled.ok is False and garbled.status == 200
    assert garbled.error and garbled.error.startswith("OAuth2 token answer unusable")
    assert stub.on("/v1/projects/proj-1/messages:send") == []


async def test_fcm_timeout(tmp_path: Path, rsa_key: rsa.RSAPrivateKey, stub: Stub) -> None:
    release = threading.Event()

    def slow(request: Request) -> tuple[int, bytes]:
        release.wait(5)
        return _json(200, {})

    stub.routes["/v1/projects/proj-1/messages:send"] = slow
    sender = PushSender(_fcm_config(tmp_path, rsa_key, stub, timeout=0.3))
    started = time.monotonic()
    try:
        result = await sender.send("d", DATA)
    finally:
        release.set()
        await sender.close()
    assert time.monotonic() - started < 2
    assert result == PushResult(False, None, "timed out after 0.3 s")


async def test_unreachable_service(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = _fcm_config(tmp_path, rsa_key, Stub(url=f"http://127.0.0.1:{port}"))
    sender = PushSender(config)
    try:
        result = await sender.send("d", DATA)
    finally:
        await sender.close()
    assert result.ok is False and result.status is None
    assert result.error and result.error.startswith("cannot connect")


# ----------------------------------------------------------------------------- webhook


def _webhook_config(stub: Stub, **push: Any) -> PushConfig:
    return parse_config({"push": {"webhook_url": f"{stub.url}/hook", **push}}, "/x.toml").push


async def test_webhook_with_signature(stub: Stub) -> None:
    secret = "a webhook secret"
    sender = PushSender(_webhook_config(stub, webhook_secret=secret))
    try:
        result = await sender.send("device-token-1", DATA)
    finally:
        await sender.close()
    assert result == PushResult(True, 204, None)
    [hook] = stub.on("/hook")
    assert hook.headers["content-type"] == "application/json"
    assert hook.json() == {"token": "device-token-1", "data": DATA}
    expected = hmac.new(secret.encode(), hook.body, hashlib.sha256).hexdigest()
    assert hook.headers["x-signature"] == f"sha256={expected}"
    wrong = hmac.new(b"another secret", hook.body, hashlib.sha256).hexdigest()
    assert hook.headers["x-signature"] != f"sha256={wrong}"
    assert "authorization" not in hook.headers


async def test_webhook_without_secret_is_unsigned(stub: Stub) -> None:
    sender = PushSender(_webhook_config(stub))
    try:
        assert (await sender.send("t", DATA)).ok
    finally:
        await sender.close()
    [hook] = stub.on("/hook")
    assert "x-signature" not in hook.headers
    assert sender.signature(b"x") is None


async def test_webhook_errors(stub: Stub, caplog: pytest.LogCaptureFixture) -> None:
    stub.routes["/hook"] = lambda r: (503, b"busy\nnow")
    release = threading.Event()
    sender = PushSender(_webhook_config(stub, timeout=0.3))
    with caplog.at_level(logging.WARNING, logger="gateway.push"):
        try:
            refused = await sender.send("t", DATA)
            stub.routes["/hook"] = lambda r: (release.wait(5), (200, b""))[1]
            slow = await sender.send("t", DATA)
            stub.routes["/hook"] = lambda r: (302, b"")
            redirected = await sender.send("t", DATA)
        finally:
            release.set()
            await sender.close()
    assert refused == PushResult(False, 503, "webhook 503: busy now")
    assert slow == PushResult(False, None, "timed out after 0.3 s")
    assert (redirected.ok, redirected.status) == (False, 302)  # redirects are not followed
    assert len([r for r in caplog.records if r.name == "gateway.push"]) == 3


def test_sender_needs_a_service() -> None:
    with pytest.raises(ValueError):
        PushSender(PushConfig())


# ----------------------------------------------------------------------------- facade


async def test_push_wake_and_consume(stub: Stub) -> None:
    config = _webhook_config(stub, web_config={"apiKey": "k", "vapidKey": "v"})
    assert Push.create(PushConfig()) is None
    push = Push.create(config)
    assert push is not None
    try:
        conf = push.notification_configuration
        assert conf == {"apiKey": "k", "vapidKey": "v"}
        conf["apiKey"] = "changed"  # a copy: the configuration is untouched
        assert push.notification_configuration["apiKey"] == "k"
        result = await push.wake(
            identifier="reg-1",
            call_identifier="call-1",
            notification_token="device",
            caller="+4930123",
            url="https://app.example.com/",
        )
        assert result.ok
        data = stub.on("/hook")[0].json()["data"]
        assert data["identifier"] == "reg-1" and data["callIdentifier"] == "call-1"
        assert push.consume(data["wakeupToken"], "reg-1") == "call-1"
        assert push.consume(data["wakeupToken"], "reg-1") is None

        stub.routes["/hook"] = lambda r: (500, b"")
        failed = await push.wake(
            identifier="reg-1",
            call_identifier="call-2",
            notification_token="device",
            caller="1001",
            url=None,
        )
        assert failed.ok is False
        assert len(push.tokens) == 0  # the undelivered token was revoked
    finally:
        await push.close()
