"""Thin helpers around the `sipmessage` model: safe parsing, encoding, responses.

`sipmessage` parses and serialises but neither validates the mandatory headers nor
writes Content-Length; these helpers add exactly that and nothing more.
"""

from __future__ import annotations

import re

from sipmessage import Address, Message, Request, Response, Via

REASONS: dict[int, str] = {
    100: "Trying",
    180: "Ringing",
    181: "Call Is Being Forwarded",
    182: "Queued",
    183: "Session Progress",
    200: "OK",
    202: "Accepted",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    416: "Unsupported URI Scheme",
    420: "Bad Extension",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    491: "Request Pending",
    500: "Server Internal Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    513: "Message Too Large",
    603: "Decline",
}

BRANCH_MAGIC = "z9hG4bK"
MAX_FORWARDS = 70
# Input caps (DESIGN.md §9): bigger messages get a stateless 513, more header lines 400.
MAX_MESSAGE = 65536
MAX_HEADER_LINES = 256

_FOLD = re.compile(rb"\r\n[ \t]+")
# Mandatory headers (RFC 3261 §8.1.1), long and compact forms, as written on the wire.
_HEADER_LINE = re.compile(rb"^([A-Za-z][A-Za-z0-9!%*_+`'~.-]*)[ \t]*:(.*)$")
_COMPACT = {b"v": b"via", b"f": b"from", b"t": b"to", b"i": b"call-id"}
_REQUIRED = (b"via", b"from", b"to", b"call-id", b"cseq")


class ParseError(ValueError):
    pass


def reason_phrase(code: int) -> str:
    return REASONS.get(code, "Unknown")


def parse(data: bytes) -> Request | Response:
    """Parse one datagram or framed message; raise ParseError on anything malformed."""
    try:
        head, sep, body = data.partition(b"\r\n\r\n")
        if not sep:
            raise ParseError("no end of headers")
        head = _FOLD.sub(b" ", head.lstrip(b"\r\n"))
        message = Message.parse(head + b"\r\n\r\n" + body)
        length = message.content_length
        if length is not None:
            if length < 0 or length > len(message.body):
                raise ParseError("body shorter than Content-Length")
            message.body = message.body[:length]
        _validate(message)
    except ParseError:
        raise
    except (ValueError, UnicodeDecodeError, KeyError, IndexError, TypeError) as exc:
        raise ParseError(str(exc) or type(exc).__name__) from exc
    return message


def _validate(message: Request | Response) -> None:
    vias = message.via
    if not vias:
        raise ParseError("missing Via")
    message.from_address  # noqa: B018  (parsing is the check)
    message.to_address  # noqa: B018
    if not message.call_id.strip():
        raise ParseError("empty Call-ID")
    cseq = message.cseq
    if isinstance(message, Request):
        if cseq.method != message.method:
            raise ParseError("CSeq method does not match")
        if message.uri.scheme not in ("sip", "sips", "tel"):
            raise ParseError("unsupported Request-URI scheme")
    elif not 100 <= message.code <= 699:
        raise ParseError("bad status code")


def encode(message: Request | Response) -> bytes:
    message.headers.set("Content-Length", str(len(message.body)))
    return bytes(message)


def top_via(message: Request | Response) -> Via:
    return message.via[0]


def branch_of(message: Request | Response) -> str:
    return top_via(message).parameters.get("branch") or ""


def tag_of(address: Address) -> str | None:
    return address.parameters.get("tag")


def to_tag(message: Request | Response) -> str | None:
    return tag_of(message.to_address)


def from_tag(message: Request | Response) -> str | None:
    return tag_of(message.from_address)


def make_response(
    request: Request,
    code: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    server: str | None = None,
    body: bytes = b"",
    content_type: str | None = None,
) -> Response:
    """A response copying Via, From, To, Call-ID and CSeq verbatim (RFC 3261 §8.2.6.2)."""
    response = Response(code, reason or reason_phrase(code), body)
    headers = response.headers
    headers.setlist("Via", list(request.headers.getlist("Via")))
    headers.set("From", request.headers["From"])
    to = request.headers["To"]
    if to_tag is not None and tag_of(request.to_address) is None:
        to = f"{to};tag={to_tag}"
    headers.set("To", to)
    headers.set("Call-ID", request.call_id)
    headers.set("CSeq", request.headers["CSeq"])
    if server:
        headers.set("Server", server)
    if content_type and body:
        headers.set("Content-Type", content_type)
    return response


def header_lines(data: bytes) -> int:
    """How many lines the header section of a raw message has (folded lines included)."""
    end = data.find(b"\r\n\r\n")
    head = data if end < 0 else data[:end]
    return head.count(b"\n")


def raw_bad_request(data: bytes, status: str = "400 Bad Request") -> bytes | None:
    """A stateless 400 for a request too broken to parse, if its headers allow one.

    Only the raw mandatory header lines are copied; nothing else of the request is
    trusted. Responses, ACKs and messages lacking any mandatory header get None.
    """
    try:
        head = _FOLD.sub(b" ", data.partition(b"\r\n\r\n")[0].lstrip(b"\r\n"))
        lines = head.split(b"\r\n")
        first = lines[0].split(b" ")
        if len(first) != 3 or first[2] != b"SIP/2.0" or first[0] in (b"ACK", b"SIP/2.0"):
            return None
        found: dict[bytes, list[bytes]] = {}
        for line in lines[1:]:
            match = _HEADER_LINE.match(line)
            if not match:
                continue
            name = match.group(1).lower()
            name = _COMPACT.get(name, name)
            if name in _REQUIRED:
                found.setdefault(name, []).append(match.group(2).strip())
        if any(name not in found for name in _REQUIRED):
            return None
        out = [b"SIP/2.0 " + status.encode()]
        names = {b"via": b"Via", b"from": b"From", b"to": b"To", b"call-id": b"Call-ID"}
        names[b"cseq"] = b"CSeq"
        for name in _REQUIRED:
            out.extend(names[name] + b": " + value for value in found[name])
        out.append(b"Content-Length: 0")
        return b"\r\n".join(out) + b"\r\n\r\n"
    except (ValueError, IndexError):
        return None
