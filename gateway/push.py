"""Push wake-up (json-v1 §8): wake-up tokens and the push services that deliver them.

When an incoming call arrives for a registration that stored a push token and has no
connection, the core

1. issues a wake-up token bound to (registration identifier, call identifier):
   `WakeupTokens.issue`;
2. sends `wakeup_data(...)` through the configured service: `PushSender.send` (FCM HTTP
   v1 with the OAuth2 service-account flow, or a generic HTTPS webhook);
3. when a connection arrives with `?wakeupToken=...&identifier=...`, redeems the token:
   `WakeupTokens.consume` returns the call identifier (once, before expiry, and only for
   the registration it was issued for).

`Push` bundles the three for the core. Nothing here raises to the caller on a delivery
problem: `send` returns a `PushResult` and logs one line per failure.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import OrderedDict
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final

import jwt

from gateway.config import VERSION, FcmServiceAccount, PushConfig

__all__ = [
    "FCM_SCOPE",
    "JWT_BEARER_GRANT",
    "MAX_NOTIFICATION_TOKEN",
    "MAX_NOTIFICATION_URL",
    "Push",
    "PushResult",
    "PushSender",
    "WakeupTokens",
    "valid_notification_token",
    "valid_notification_url",
    "wakeup_data",
]

logger = logging.getLogger(__name__)

FCM_SCOPE: Final[str] = "https://www.googleapis.com/auth/firebase.messaging"
JWT_BEARER_GRANT: Final[str] = "urn:ietf:params:oauth:grant-type:jwt-bearer"
#: Lifetime of the JWT assertion sent to the token endpoint (Google's maximum).
ASSERTION_LIFETIME: Final[int] = 3600
#: A cached access token is replaced this many seconds before it expires.
ACCESS_TOKEN_MARGIN: Final[float] = 60.0
#: Largest response body read from a push service or token endpoint.
MAX_RESPONSE_BYTES: Final[int] = 64 * 1024
#: Bounds on what a client may store (register/status notificationToken/notificationUrl).
MAX_NOTIFICATION_TOKEN: Final[int] = 4096
MAX_NOTIFICATION_URL: Final[int] = 2048
#: Outstanding wake-up tokens kept at most (the oldest are dropped beyond this).
MAX_WAKEUP_TOKENS: Final[int] = 10000
USER_AGENT: Final[str] = f"webrtc-gateway/{VERSION}"


def _printable(text: str) -> bool:
    return all(32 < ord(c) < 127 for c in text)


def valid_notification_token(token: object) -> bool:
    """A push token a client may store: 1..4096 printable ASCII characters, no spaces."""
    return isinstance(token, str) and 0 < len(token) <= MAX_NOTIFICATION_TOKEN and _printable(token)


def valid_notification_url(url: object) -> bool:
    """A notificationUrl a client may store: an http(s) URL of at most 2048 characters
    (it is only handed back to that client in the wake-up message)."""
    if not isinstance(url, str) or not 0 < len(url) <= MAX_NOTIFICATION_URL:
        return False
    if not _printable(url):
        return False
    parts = urllib.parse.urlsplit(url)
    return parts.scheme.lower() in ("http", "https") and bool(parts.netloc)


def wakeup_data(
    wakeup_token: str,
    identifier: str,
    call_identifier: str,
    caller: str,
    url: str | None,
) -> dict[str, str]:
    """The data message of a wake-up (json-v1 §8); every value is a string (FCM data)."""
    return {
        "wakeupToken": wakeup_token,
        "identifier": identifier,
        "callIdentifier": call_identifier,
        "caller": caller,
        "url": url or "",
    }


# --------------------------------------------------------------------------- tokens


@dataclass(frozen=True, slots=True)
class _Wakeup:
    identifier: str
    call_identifier: str
    expires: float


class WakeupTokens:
    """Single-use wake-up tokens bound to (registration identifier, call identifier).

    Tokens are `secrets.token_urlsafe(24)` (192 bits, json-v1 identifier alphabet) and
    expire `ttl` seconds after issue. At most `max_tokens` are outstanding; beyond that
    the oldest are forgotten. `clock` is a monotonic clock in seconds (injectable).
    """

    def __init__(
        self,
        ttl: float = 60.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_tokens: int = MAX_WAKEUP_TOKENS,
    ) -> None:
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        self.ttl = ttl
        self._clock = clock
        self._max = max_tokens
        self._tokens: OrderedDict[str, _Wakeup] = OrderedDict()  # in order of expiry

    def __len__(self) -> int:
        return len(self._tokens)

    def _purge(self, now: float) -> None:
        while self._tokens:
            token, wakeup = next(iter(self._tokens.items()))
            if wakeup.expires > now and len(self._tokens) <= self._max:
                break
            del self._tokens[token]

    def issue(self, identifier: str, call_identifier: str) -> str:
        """A new token for waking registration `identifier` for call `call_identifier`."""
        now = self._clock()
        self._purge(now)
        token = secrets.token_urlsafe(24)
        self._tokens[token] = _Wakeup(identifier, call_identifier, now + self.ttl)
        self._purge(now)
        return token

    def consume(self, token: str, identifier: str) -> str | None:
        """Redeem `token` presented with registration `identifier`: the call identifier,
        or None when the token is unknown, used, expired or issued for another
        registration. Any presentation uses the token up."""
        now = self._clock()
        self._purge(now)
        wakeup = self._tokens.pop(token, None) if isinstance(token, str) else None
        if wakeup is None or now >= wakeup.expires:
            return None
        if not isinstance(identifier, str) or not hmac.compare_digest(
            wakeup.identifier.encode(), identifier.encode()
        ):
            return None
        return wakeup.call_identifier

    def revoke(self, *, identifier: str | None = None, call_identifier: str | None = None) -> int:
        """Forget the tokens of a registration and/or a call (e.g. the call ended before
        the client woke up); returns how many were dropped."""
        doomed = [
            token
            for token, w in self._tokens.items()
            if (identifier is None or w.identifier == identifier)
            and (call_identifier is None or w.call_identifier == call_identifier)
        ]
        if identifier is None and call_identifier is None:
            doomed = []
        for token in doomed:
            del self._tokens[token]
        return len(doomed)


# --------------------------------------------------------------------------- HTTP


@dataclass(frozen=True, slots=True)
class PushResult:
    """The outcome of one push: `ok` on a 2xx from the push service; `status` is the
    last HTTP status seen (None when no answer came); `error` a one-line description."""

    ok: bool
    status: int | None = None
    error: str | None = None


class _HttpError(Exception):
    """No usable answer: `status` is the HTTP status when there was one."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        return None  # a 3xx is an answer like any other (never re-POST elsewhere)


def _opener(url: str) -> urllib.request.OpenerDirector:
    host = urllib.parse.urlsplit(url).hostname or ""
    try:
        loopback = host.lower() == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    handlers: list[urllib.request.BaseHandler] = [_NoRedirect()]
    if loopback:  # never through an environment proxy
        handlers.append(urllib.request.ProxyHandler({}))
    return urllib.request.build_opener(*handlers)


def _post_blocking(
    url: str, body: bytes, headers: Mapping[str, str], timeout: float
) -> tuple[int, bytes]:
    """POST and read the answer within `timeout` seconds overall; (status, body).
    Non-2xx statuses are returned, not raised."""
    deadline = time.monotonic() + timeout
    request = urllib.request.Request(url, data=body, method="POST")
    request.add_header("User-Agent", USER_AGENT)
    for name, value in headers.items():
        request.add_header(name, value)
    try:
        response = _opener(url).open(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        response = e  # carries status and body
    with response:
        status = int(response.status)
        chunks: list[bytes] = []
        size = 0
        while size < MAX_RESPONSE_BYTES:
            if time.monotonic() > deadline:
                raise TimeoutError("timed out reading the response")
            chunk = response.read(min(16384, MAX_RESPONSE_BYTES - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    return status, b"".join(chunks)


def _describe(e: BaseException) -> str:
    if isinstance(e, TimeoutError):
        return "timed out"
    if isinstance(e, urllib.error.URLError):
        reason = e.reason
        if isinstance(reason, TimeoutError):
            return "timed out"
        return f"cannot connect: {getattr(reason, 'strerror', None) or reason}"
    if isinstance(e, OSError):
        return f"network error: {e.strerror or e}"
    return f"{type(e).__name__}: {e}"


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _error_detail(body: bytes) -> str:
    """A short description of an error answer: Google's {"error": ...} or the text."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return _one_line(body.decode("utf-8", "replace"))
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict):  # FCM: {"error": {"code", "message", "status", "details"}}
            parts = [str(error.get("status") or ""), str(error.get("message") or "")]
            for detail in error.get("details") or ():
                if isinstance(detail, dict) and detail.get("errorCode"):
                    parts.insert(0, str(detail["errorCode"]))  # e.g. UNREGISTERED
            return _one_line(" ".join(p for p in parts if p))
        if isinstance(error, str):  # OAuth2: {"error": "invalid_grant", ...}
            return _one_line(f"{error} {data.get('error_description') or ''}")
    return _one_line(body.decode("utf-8", "replace"))


def _redact(token: str) -> str:
    return token[:8] + "..." if len(token) > 12 else "***"


class PushSender:
    """Delivers data messages through the configured push service (async, never raises).

    `clock` is the wall clock (seconds since the epoch) used for JWT times and for the
    access token cache. HTTP runs in a small private thread pool; `close()` ends it.
    """

    def __init__(
        self,
        config: PushConfig,
        *,
        clock: Callable[[], float] = time.time,
        max_workers: int = 4,
    ) -> None:
        if config.service not in ("fcm", "webhook"):
            raise ValueError("push is not configured ([push] service)")
        self.config = config
        self._clock = clock
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="push")
        self._access_token: str | None = None
        self._access_expires = 0.0
        self._token_lock = asyncio.Lock()
        self._private_key: Any = None
        if config.service == "fcm":
            from cryptography.hazmat.primitives import serialization

            account = config.fcm_credentials
            if account is None or not config.fcm_project_id:
                raise ValueError("[push] service fcm needs a service account and a project id")
            self._private_key = serialization.load_pem_private_key(
                account.private_key_pem, password=None
            )

    async def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _post(self, url: str, body: bytes, headers: Mapping[str, str]) -> tuple[int, bytes]:
        timeout = self.config.timeout
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(
            self._executor, _post_blocking, url, body, dict(headers), timeout
        )
        try:
            # The thread enforces the timeout too; this bounds the wait should it not.
            return await asyncio.wait_for(future, timeout + 1.0)
        except Exception as e:  # noqa: BLE001 - every network problem becomes a result
            problem = _describe(e)
            if problem == "timed out":
                problem = f"timed out after {timeout:g} s"
            raise _HttpError(problem) from None

    async def send(self, notification_token: str, data: Mapping[str, str]) -> PushResult:
        """Send `data` to the device or browser `notification_token`. Never raises
        (except CancelledError); logs one warning line per failure."""
        service = self.config.service
        try:
            payload = {str(k): str(v) for k, v in data.items()}
            if service == "fcm":
                result = await self._send_fcm(notification_token, payload)
            else:
                result = await self._send_webhook(notification_token, payload)
        except asyncio.CancelledError:
            raise
        except _HttpError as e:
            result = PushResult(False, e.status, str(e))
        except Exception as e:  # noqa: BLE001 - a push problem must not reach the call
            result = PushResult(False, None, f"{type(e).__name__}: {e}")
        if not result.ok:
            logger.warning(
                "push via %s to %s failed: %s",
                service,
                _redact(notification_token),
                result.error,
            )
        return result

    # ----------------------------------------------------------------- webhook

    def signature(self, body: bytes) -> str | None:
        """The X-Signature header value for `body` ("sha256=<hex>"), None without secret."""
        secret = self.config.webhook_secret
        if not secret:
            return None
        return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()

    async def _send_webhook(self, notification_token: str, data: dict[str, str]) -> PushResult:
        url = self.config.webhook_url
        assert url is not None
        body = json.dumps({"token": notification_token, "data": data}).encode()
        headers = {"Content-Type": "application/json"}
        signature = self.signature(body)
        if signature is not None:
            headers["X-Signature"] = signature
        status, answer = await self._post(url, body, headers)
        if 200 <= status < 300:
            return PushResult(True, status)
        return PushResult(False, status, f"webhook {status}: {_error_detail(answer)}")

    # ----------------------------------------------------------------- FCM HTTP v1

    @property
    def _account(self) -> FcmServiceAccount:
        account = self.config.fcm_credentials
        assert account is not None
        return account

    def _assertion(self, now: int) -> str:
        account = self._account
        claims = {
            "iss": account.client_email,
            "scope": FCM_SCOPE,
            "aud": account.token_uri,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME,
        }
        headers = {"kid": account.private_key_id} if account.private_key_id else None
        return jwt.encode(claims, self._private_key, algorithm="RS256", headers=headers)

    async def access_token(self, *, refresh: bool = False) -> str:
        """The OAuth2 access token for FCM, fetched with the service account's JWT and
        cached until shortly before it expires. Raises `_HttpError`."""
        async with self._token_lock:
            now = self._clock()
            if not refresh and self._access_token and now < self._access_expires:
                return self._access_token
            body = urllib.parse.urlencode(
                {"grant_type": JWT_BEARER_GRANT, "assertion": self._assertion(int(now))}
            ).encode()
            status, answer = await self._post(
                self._account.token_uri,
                body,
                {"Content-Type": "application/x-www-form-urlencoded"},
            )
            if not 200 <= status < 300:
                raise _HttpError(f"OAuth2 token request {status}: {_error_detail(answer)}", status)
            try:
                data = json.loads(answer)
                token = data["access_token"]
                expires_in = float(data.get("expires_in", 3600))
                if not isinstance(token, str) or not token:
                    raise ValueError("empty access_token")
            except (ValueError, KeyError, TypeError) as e:
                raise _HttpError(f"OAuth2 token answer unusable: {e}", status) from None
            self._access_token = token
            margin = min(ACCESS_TOKEN_MARGIN, expires_in / 2)
            self._access_expires = now + expires_in - margin
            return token

    def fcm_message(self, notification_token: str, data: Mapping[str, str]) -> dict[str, Any]:
        """The FCM HTTP v1 send request body for a high-priority data message."""
        ttl = max(1, int(self.config.token_ttl))
        return {
            "message": {
                "token": notification_token,
                "data": dict(data),
                "android": {"priority": "high", "ttl": f"{ttl}s"},
                "webpush": {"headers": {"Urgency": "high", "TTL": str(ttl)}},
            }
        }

    async def _send_fcm(self, notification_token: str, data: dict[str, str]) -> PushResult:
        project = urllib.parse.quote(str(self.config.fcm_project_id), safe="")
        url = f"{self.config.fcm_endpoint}/v1/projects/{project}/messages:send"
        body = json.dumps(self.fcm_message(notification_token, data)).encode()
        for attempt in (1, 2):
            token = await self.access_token(refresh=attempt == 2)
            headers = {
                "Content-Type": "application/json; charset=UTF-8",
                "Authorization": f"Bearer {token}",
            }
            status, answer = await self._post(url, body, headers)
            if 200 <= status < 300:
                return PushResult(True, status)
            if status == 401 and attempt == 1:
                continue  # the access token was revoked or expired early: fetch a new one
            return PushResult(False, status, f"FCM {status}: {_error_detail(answer)}")
        raise AssertionError("unreachable")  # pragma: no cover


# --------------------------------------------------------------------------- facade


class Push:
    """Wake-up tokens plus the sender, as the core uses them.

    `Push.create(config)` is None when [push] is not configured."""

    def __init__(
        self,
        config: PushConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.tokens = WakeupTokens(config.token_ttl, clock=clock)
        self.sender = PushSender(config, clock=wall_clock)

    @classmethod
    def create(cls, config: PushConfig) -> Push | None:
        return cls(config) if config.enabled else None

    @property
    def notification_configuration(self) -> dict[str, Any]:
        """register/status `notificationConfiguration` (a copy of [push] web_config)."""
        return json.loads(json.dumps(self.config.web_config or {}))

    async def wake(
        self,
        *,
        identifier: str,
        call_identifier: str,
        notification_token: str,
        caller: str,
        url: str | None,
    ) -> PushResult:
        """Issue a wake-up token for the call and send it; on failure the token is
        revoked again. Never raises (except CancelledError)."""
        token = self.tokens.issue(identifier, call_identifier)
        data = wakeup_data(token, identifier, call_identifier, caller, url)
        result = await self.sender.send(notification_token, data)
        if not result.ok:
            self.tokens.revoke(identifier=identifier, call_identifier=call_identifier)
        return result

    def consume(self, wakeup_token: str, identifier: str) -> str | None:
        """`WakeupTokens.consume`: the call identifier for a waking connection, or None."""
        return self.tokens.consume(wakeup_token, identifier)

    async def close(self) -> None:
        await self.sender.close()
