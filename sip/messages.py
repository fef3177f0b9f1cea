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
    406: "Not Acceptable",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    416: "Unsupported URI Scheme",
    415: "Unsupported Media Type",
    420: "Bad Extension",
    422: "Session Interval Too Small",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    491: "Request Pending",
    500: "Server Internal Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    505: "Version Not Supported",
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
# Via values with LWS around separators ("SIP / 2.0 / UDP host ; branch = x , ...", legal
# per RFC 3261 §25 and used by RFC 4475 wsinv) are tightened before sipmessage sees them.
_VIA_LINE = re.compile(rb"^(via|v)([ \t]*:)([^\r\n]*)", re.I | re.M)
_NAME_SPACE = re.compile(rb"^([A-Za-z0-9!%*_+`'~.-]+)[ \t]+:", re.M)  # "From   : x"
_VIA_SEPARATOR = re.compile(rb"[ \t]*([,;=/])[ \t]*")
# Headers that may appear once only (RFC 3261 §7.3.1; RFC 4475 multi01, mcl01).
_SINGLE = ("Call-ID", "From", "To", "CSeq", "Max-Forwards", "Content-Length", "Content-Type")
MAX_CSEQ = 2**31 - 1  # RFC 3261 §8.1.1.5: the sequence number is below 2**31
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


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
        head = _VIA_LINE.sub(_tighten_via, _NAME_SPACE.sub(rb"\1:", head))
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


def _tighten_via(match: re.Match[bytes]) -> bytes:
    value = _VIA_SEPARATOR.sub(rb"\1", match.group(3).strip())
    return match.group(1) + match.group(2) + b" " + value


def _validate(message: Request | Response) -> None:
    headers = message.headers
    for name in _SINGLE:
        if len(headers.getlist(name)) > 1:
            raise ParseError(f"more than one {name}")
    max_forwards = headers.get("Max-Forwards")
    if max_forwards is not None:
        value = max_forwards.strip()
        if not value.isdigit() or int(value) > 255:
            raise ParseError("bad Max-Forwards")
    vias = message.via
    if not vias:
        raise ParseError("missing Via")
    message.from_address  # noqa: B018  (parsing is the check)
    message.to_address  # noqa: B018
    if not message.call_id.strip():
        raise ParseError("empty Call-ID")
    cseq = message.cseq
    if not 0 <= cseq.sequence <= MAX_CSEQ:
        raise ParseError("CSeq number out of range")
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


def rejection_status(data: bytes) -> str:
    """The status line for a request that failed to parse: 505 for another SIP version,
    416 for a Request-URI of a scheme we do not serve (RFC 4475 unkscm, novelsc, badvers),
    else 400."""
    first = data.lstrip(b"\r\n").partition(b"\r\n")[0].split(b" ")
    if len(first) == 3:
        version = first[2]
        if version.startswith(b"SIP/") and version != b"SIP/2.0":
            return "505 Version Not Supported"
        uri = first[1].decode("utf-8", "replace")
        scheme = _SCHEME.match(uri)
        if scheme and scheme.group(0)[:-1].lower() not in ("sip", "sips", "tel"):
            return "416 Unsupported URI Scheme"
    return "400 Bad Request"


def raw_bad_request(data: bytes, status: str = "400 Bad Request") -> bytes | None:
    """A stateless 400 for a request too broken to parse, if its headers allow one.

    Only the raw mandatory header lines are copied; nothing else of the request is
    trusted. Responses, ACKs and messages lacking any mandatory header get None.
    """
    try:
        head = _FOLD.sub(b" ", data.partition(b"\r\n\r\n")[0].lstrip(b"\r\n"))
        lines = head.split(b"\r\n")
        first = lines[0].split()
        if len(first) < 3 or not first[-1].startswith(b"SIP/") or first[0] in (b"ACK",):
            return None
        if first[0].startswith(b"SIP/"):
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
