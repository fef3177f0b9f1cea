"""Message bodies: the SDP of an INVITE, also inside multipart/mixed (SIP-I/SIP-T style
bodies carrying ISUP next to the SDP), and the Accept check (RFC 3261 §21.4.7/§21.4.16)."""

from __future__ import annotations

import re

SDP = "application/sdp"
_BOUNDARY = re.compile(r';\s*boundary\s*=\s*"?([^";]+)"?', re.I)


def media_type(content_type: str | None) -> str:
    """The media type of a Content-Type value, lower case, without parameters ("" if None)."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def _parts(content_type: str, body: bytes) -> list[tuple[str, bytes]]:
    match = _BOUNDARY.search(content_type)
    if match is None:
        return []
    delimiter = b"--" + match.group(1).strip().encode("latin-1")
    parts: list[tuple[str, bytes]] = []
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break
        chunk = chunk[2:] if chunk.startswith(b"\r\n") else chunk.lstrip(b"\n")
        head, sep, content = chunk.partition(b"\r\n\r\n")
        if not sep:
            head, sep, content = chunk.partition(b"\n\n")
            if not sep:
                continue
        part_type = ""
        for line in head.decode("latin-1").splitlines():
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-type":
                part_type = value
        if content.endswith(b"\r\n"):
            content = content[:-2]
        parts.append((media_type(part_type), content))
    return parts


def extract_sdp(content_type: str | None, body: bytes) -> bytes | None:
    """The SDP in a body: the body itself (application/sdp, or no Content-Type at all),
    or the application/sdp part of a multipart body; None when the body has no SDP."""
    if not body:
        return None
    kind = media_type(content_type)
    if kind in (SDP, ""):
        return body
    if kind.startswith("multipart/"):
        for part_type, content in _parts(content_type or "", body):
            if part_type == SDP and content:
                return content
    return None


def accepts(accept_values: list[str], wanted: str = SDP) -> bool:
    """Does an Accept header (all its values) allow `wanted`? No Accept header: yes."""
    ranges = [item.split(";", 1)[0].strip().lower() for v in accept_values for item in v.split(",")]
    ranges = [r for r in ranges if r]
    if not ranges:
        return True
    main = wanted.split("/", 1)[0]
    return any(r in (wanted, "*/*", f"{main}/*") for r in ranges)
