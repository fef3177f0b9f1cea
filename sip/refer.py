"""REFER (RFC 3515) and Replaces (RFC 3891) pieces: Refer-To values, sipfrag bodies, Event ids.

Pure string handling; the user agent core decides when to send what.
"""

from __future__ import annotations

import re
from urllib.parse import quote, unquote

SIPFRAG = "message/sipfrag"
# Characters left unescaped inside a URI header value (RFC 3261 hnv-unreserved + unreserved).
_HEADER_SAFE = "-_.!~*'()[]/?:+$"
_STATUS_LINE = re.compile(r"^\s*SIP/2\.0\s+(\d{3})(?:\s|$)")


def replaces_value(call_id: str, to_tag: str, from_tag: str) -> str:
    """A Replaces header value (RFC 3891 §6.1): call-id;to-tag=..;from-tag=..

    The tags are seen from the side that will receive the INVITE with Replaces: for a
    dialog of ours, to-tag is our remote tag and from-tag our local tag.
    """
    return f"{call_id};to-tag={to_tag};from-tag={from_tag}"


def refer_to_value(target: str, replaces: str | None = None) -> str:
    """The Refer-To header value, with Replaces embedded as an escaped URI header."""
    uri = target.strip()
    if uri.startswith("<") and uri.endswith(">"):
        uri = uri[1:-1]
    if replaces:
        separator = "&" if "?" in uri else "?"
        uri = f"{uri}{separator}Replaces={quote(replaces, safe=_HEADER_SAFE)}"
    return f"<{uri}>"


def parse_refer_to(value: str) -> tuple[str, str | None]:
    """Split a Refer-To value into the target URI (no header part) and a Replaces value.

    Raises ValueError when there is no usable URI.
    """
    text = value.strip()
    if "<" in text:
        start = text.index("<")
        end = text.find(">", start)
        if end < 0:
            raise ValueError("unterminated Refer-To")
        text = text[start + 1 : end]
    else:
        text = text.split(";", 1)[0] if "?" not in text else text
    target, _, header_part = text.partition("?")
    target = target.strip()
    if ":" not in target:
        raise ValueError("Refer-To without a URI")
    replaces: str | None = None
    for item in header_part.split("&") if header_part else []:
        name, _, raw = item.partition("=")
        if name.strip().lower() == "replaces":
            replaces = unquote(raw)
    return target, replaces


def parse_replaces(value: str) -> tuple[str, str, str] | None:
    """(call-id, to-tag, from-tag) of a Replaces value, or None when incomplete."""
    call_id, *params = (part.strip() for part in value.split(";"))
    tags: dict[str, str] = {}
    for param in params:
        name, _, raw = param.partition("=")
        tags[name.strip().lower()] = raw.strip()
    if not call_id or "to-tag" not in tags or "from-tag" not in tags:
        return None
    return call_id, tags["to-tag"], tags["from-tag"]


def sipfrag(code: int, reason: str) -> bytes:
    """A message/sipfrag body holding just a status line (RFC 3515 §2.4.5)."""
    return f"SIP/2.0 {code} {reason}\r\n".encode()


def sipfrag_status(body: bytes) -> int | None:
    """The status code of a sipfrag body's status line, None when it has none."""
    try:
        first = body.decode("utf-8", "replace").splitlines()[0]
    except IndexError:
        return None
    match = _STATUS_LINE.match(first)
    return int(match.group(1)) if match else None


def event_id(event: str) -> tuple[str, int | None]:
    """The package and numeric id of an Event header ("refer;id=93809824")."""
    package, *params = (part.strip() for part in event.split(";"))
    for param in params:
        name, _, raw = param.partition("=")
        if name.strip().lower() == "id" and raw.strip().isdigit():
            return package.lower(), int(raw.strip())
    return package.lower(), None


def subscription_terminated(state: str) -> bool:
    """Does a Subscription-State value end the implicit subscription?"""
    return state.split(";", 1)[0].strip().lower() == "terminated"
