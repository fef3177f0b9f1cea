"""HTTP beside the WebSocket: static files (web phone, client library) and health."""

from __future__ import annotations

import mimetypes
from http import HTTPStatus
from pathlib import Path
from urllib.parse import unquote, urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

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


def static_file(path: str, root: Path = STATIC_ROOT) -> Response:
    relative = unquote(path).lstrip("/") or "index.html"
    if relative.endswith("/"):
        relative += "index.html"
    target = (root / relative).resolve()
    if not target.is_relative_to(root.resolve()) or not target.is_file():
        return _text(HTTPStatus.NOT_FOUND, "not found\n")
    if target.stat().st_size > MAX_STATIC_BYTES:
        return _text(HTTPStatus.FORBIDDEN, "too large\n")
    content_type = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
    if content_type.startswith("text/") or content_type in ("application/javascript",):
        content_type += "; charset=utf-8"
    return _response(HTTPStatus.OK, target.read_bytes(), content_type)


def make_request_handler(ws_path: str):  # type: ignore[no-untyped-def]
    """process_request hook: WebSocket upgrades on ws_path pass, the rest is plain HTTP."""

    def process_request(connection: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if path == ws_path:
            return None
        if path == "/healthz":
            return _text(HTTPStatus.OK, "ok\n")
        return static_file(path)

    return process_request
