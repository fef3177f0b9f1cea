"""HTTP beside the WebSocket: static files, health, client auth and POST /api/token.

Everything is served through websockets' `process_request` hook, which sees every
request before the WebSocket handshake is checked:

- `ws_path` (GET): `Authenticator.check_upgrade` runs first. A failure is answered with
  its 401/403/429 (challenges in WWW-Authenticate, or Retry-After) and no WebSocket; a
  success is stored as `connection.auth` (an `AuthResult`) for the json-v1 session,
  then the handshake proceeds.
- `/api/token` (POST): Basic or Digest -> `{"access_token": "...", "expires_in": N}`.
- `/healthz` and static files (GET).

POST through websockets: its HTTP parser (websockets.http11.Request.parse) accepts any
method and hands the request to process_request, but refuses a request with a body (a
Content-Length other than 0, or Transfer-Encoding) by dropping the connection without an
answer. Body-less POSTs (browsers' fetch and http.client send `Content-Length: 0`, curl
none) pass as they are. For POSTs with a small body, `GatewayConnection` (passed as
`create_connection` to `serve`) gives the sans-I/O protocol a `_HeadReader`: when the
head of a non-GET request ends, it reads the body (at most MAX_BODY_BYTES, by
Content-Length) right away and hides Content-Length from the parser, so the body is
neither refused nor mistaken for WebSocket frames. GET requests (the WebSocket upgrade)
are untouched; chunked or larger bodies are still dropped by websockets. No second
HTTP server or port. Tested with http.client and urllib on loopback
(tests/e2e/test_auth.py).
"""

from __future__ import annotations

import json
import logging
import mimetypes
from collections.abc import Generator
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from websockets.streams import StreamReader

from gateway.auth import Authenticator, AuthFailure, AuthResult

logger = logging.getLogger(__name__)

TOKEN_PATH = "/api/token"
#: Largest request body accepted (and ignored) with a POST.
MAX_BODY_BYTES = 16 * 1024

STATIC_ROOT = Path(__file__).parent / "static"
# Static files are small; anything bigger is a mistake in the tree, not a feature.
MAX_STATIC_BYTES = 8 * 1024 * 1024


def _response(status: HTTPStatus, body: bytes, content_type: str) -> Response:
    headers = Headers([
        ("Content-Type", content_type),
        ("Content-Length", str(len(body))),
        ("Cache-Control", "no-cache"),
        ("X-Content-Type-Options", "nosniff"),
    ])
    return Response(status.value, status.phrase, headers, body)


def _text(status: HTTPStatus, text: str) -> Response:
    return _response(status, text.encode(), "text/plain; charset=utf-8")


# The platform's table maps .ts to MPEG transport streams; ours are TypeScript.
_CONTENT_TYPES = {
    ".ts": "application/typescript",
    ".js": "text/javascript",
    ".mjs": "text/javascript",
}


def static_file(path: str, root: Path = STATIC_ROOT) -> Response:
    relative = unquote(path).lstrip("/") or "index.html"
    if relative.endswith("/"):
        relative += "index.html"
    target = (root / relative).resolve()
    if not target.is_relative_to(root.resolve()) or not target.is_file():
        return _text(HTTPStatus.NOT_FOUND, "not found\n")
    if target.stat().st_size > MAX_STATIC_BYTES:
        return _text(HTTPStatus.FORBIDDEN, "too large\n")
    content_type = (
        _CONTENT_TYPES.get(target.suffix)
        or mimetypes.guess_type(target.name)[0]
        or "application/octet-stream"
    )
    if content_type.startswith("text/") or content_type == "application/typescript":
        content_type += "; charset=utf-8"
    return _response(HTTPStatus.OK, target.read_bytes(), content_type)


def _json(status: HTTPStatus, data: Any) -> Response:
    response = _response(status, json.dumps(data).encode(), "application/json")
    del response.headers["Cache-Control"]
    response.headers["Cache-Control"] = "no-store"  # tokens must not be cached
    return response


def _method_not_allowed(allow: str) -> Response:
    response = _text(HTTPStatus.METHOD_NOT_ALLOWED, "method not allowed\n")
    response.headers["Allow"] = allow
    return response


def _failure(failure: AuthFailure) -> Response:
    response = _text(HTTPStatus(failure.status), failure.reason + "\n")
    for name, value in failure.headers:
        response.headers[name] = value
    return response


class _HeadReader(StreamReader):
    """A StreamReader that reads the body of a non-GET request together with its head
    and hides its Content-Length from websockets' request parser (see the module
    docstring). Only `read_line` is changed, and only until the end of the head."""

    def __init__(self) -> None:
        super().__init__()
        self._method: bytes | None = None
        self._in_head = True
        self._lengths: list[bytes] = []
        self.body = b""  # the body of a non-GET request, read with its head

    def read_line(
        self, m: int, too_long_exc_type: type[Exception] = RuntimeError
    ) -> Generator[None, None, bytearray]:
        while True:
            line = yield from super().read_line(m, too_long_exc_type)
            if not self._in_head:
                return line
            if self._method is None:
                self._method = bytes(line.split(b" ", 1)[0])
                return line
            if line in (b"\r\n", b"\n"):
                self._in_head = False
                if self._lengths:
                    self.body = bytes((yield from self.read_exact(int(self._lengths[0]))))
                return line
            name, _, value = line.partition(b":")
            value = value.strip()
            if (
                self._method != b"GET"
                and name.strip().lower() == b"content-length"
                and value.isdigit()
                and int(value) <= MAX_BODY_BYTES
                and all(v == value for v in self._lengths)
                and len(self._lengths) < 4
            ):
                self._lengths.append(bytes(value))
                continue
            return line


class GatewayConnection(ServerConnection):
    """The server's connection class (`serve(create_connection=GatewayConnection)`).

    `auth` is the `AuthResult` of the upgrade, set by the request handler before the
    WebSocket handler runs.
    """

    def __init__(self, protocol: Any, server: Any, **kwargs: Any) -> None:
        # Restart the sans-I/O parser on a _HeadReader before any data has arrived.
        protocol.reader = _HeadReader()
        protocol.parser = protocol.parse()
        next(protocol.parser)
        super().__init__(protocol, server, **kwargs)
        self.auth: AuthResult | None = None


def _remote_host(connection: ServerConnection) -> str | None:
    try:
        address = connection.remote_address
    except Exception:  # noqa: BLE001 - transport gone
        return None
    if isinstance(address, tuple) and address:
        return str(address[0])
    return None


def make_request_handler(  # type: ignore[no-untyped-def]
    ws_path: str, authenticator: Authenticator | None = None
):
    """process_request hook: authenticated WebSocket upgrades on ws_path pass (with
    `connection.auth` set), the token endpoint and the rest are plain HTTP.

    Without an authenticator every upgrade is anonymous (`AuthResult(None, "none")`).
    """

    def process_request(connection: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        method = getattr(request, "method", "GET")
        if path == ws_path:
            if method != "GET":
                return _method_not_allowed("GET")
            result: AuthResult | AuthFailure
            if authenticator is None:
                result = AuthResult(None, "none")
            else:
                result = authenticator.check_upgrade(
                    request.path, request.headers, _remote_host(connection)
                )
            if isinstance(result, AuthFailure):
                logger.info("upgrade from %s refused: %d %s", _remote_host(connection),
                            result.status, result.reason)
                return _failure(result)
            connection.auth = result  # type: ignore[attr-defined]
            logger.debug("upgrade from %s: %s login as %r", _remote_host(connection),
                         result.method, result.username)
            return None
        if path == TOKEN_PATH:
            if method != "POST":
                return _method_not_allowed("POST")
            if authenticator is None:
                return _text(HTTPStatus.NOT_FOUND, "not found\n")
            grant = authenticator.issue_token(
                request.path, method, request.headers, _remote_host(connection)
            )
            if isinstance(grant, AuthFailure):
                if grant.status != 401 or any(
                    h.lower() == "authorization" for h in request.headers
                ):
                    logger.info("token for %s refused: %d %s", _remote_host(connection),
                                grant.status, grant.reason)
                return _failure(grant)
            logger.info("token issued to %r (%s)", grant.username, _remote_host(connection))
            return _json(HTTPStatus.OK, grant.body())
        if method != "GET":
            return _method_not_allowed("GET")
        if path == "/healthz":
            return _text(HTTPStatus.OK, "ok\n")
        return static_file(path)

    return process_request
