"""Caller identity and header pass-through between legs: P-Asserted-Identity (RFC 3325),
display names, and a configurable set of X- headers copied from one leg to the other."""

from __future__ import annotations

import re
from collections.abc import Iterable

from sipmessage import Address, Request

_SAFE_VALUE = re.compile(r"^[\x20-\x7e\t]{0,512}$")  # printable, bounded, no CR/LF


def asserted_identity(request: Request) -> tuple[str, str] | None:
    """(user, display name) from the first SIP P-Asserted-Identity, else None. Only trust
    it from a trusted peer (RFC 3325 §5): the caller decides."""
    for value in request.headers.getlist("P-Asserted-Identity"):
        try:
            addresses = Address.parse_many(value)
        except ValueError:
            continue
        for address in addresses:
            if address.uri.scheme in ("sip", "sips"):
                return address.uri.user or "", address.name or ""
            if address.uri.scheme == "tel":
                return address.uri.host, address.name or ""
    return None


def caller_identity(request: Request, trusted: bool) -> tuple[str, str]:
    """(user, display) to show for the caller: P-Asserted-Identity from a trusted peer,
    else From."""
    if trusted and (pai := asserted_identity(request)) is not None:
        return pai
    address = request.from_address
    return address.uri.user or "", address.name or ""


def asserted_identity_header(user: str, host: str, display: str = "") -> tuple[str, str]:
    """A P-Asserted-Identity header for an outgoing INVITE."""
    name = display.replace("\\", "\\\\").replace('"', '\\"')
    value = f'"{name}" <sip:{user}@{host}>' if name else f"<sip:{user}@{host}>"
    return "P-Asserted-Identity", value


def pass_through(request: Request, names: Iterable[str]) -> list[tuple[str, str]]:
    """The headers of `request` named in `names` (case-insensitive; only X- headers are
    allowed through), as (name, value) pairs to add to the other leg. Values with
    control characters or over 512 characters are dropped."""
    out: list[tuple[str, str]] = []
    for name in names:
        if not name.lower().startswith("x-"):
            continue
        for value in request.headers.getlist(name):
            if _SAFE_VALUE.match(value):
                out.append((name, value))
    return out[:32]
