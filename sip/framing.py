"""Reframing SIP messages from a byte stream (TCP/TLS) by Content-Length (RFC 3261 §18.3).

Sizes are capped so a peer cannot make us buffer without bound; on any violation the
framer raises FramingError and the connection should be closed.
"""

from __future__ import annotations

import re

MAX_MESSAGE = 65536
MAX_HEADERS = 16384

_CONTENT_LENGTH = re.compile(rb"^(?:content-length|l)[ \t]*:[ \t]*(\S*)[ \t]*\r?$", re.I | re.M)


class FramingError(ValueError):
    pass


class StreamFramer:
    def __init__(self, max_message: int = MAX_MESSAGE, max_headers: int = MAX_HEADERS) -> None:
        self.max_message = max_message
        self.max_headers = max_headers
        self._buffer = bytearray()
        self.keepalives = 0  # RFC 5626 double-CRLF pings seen; the owner may answer "\r\n"

    def feed(self, data: bytes) -> list[bytes]:
        """Add bytes; return every complete message now available, in order."""
        self._buffer += data
        messages: list[bytes] = []
        while True:
            message = self._next()
            if message is None:
                return messages
            messages.append(message)

    def _next(self) -> bytes | None:
        buffer = self._buffer
        # Keep-alive CRLFs between messages are not part of any message.
        stripped = 0
        while buffer[stripped : stripped + 2] == b"\r\n":
            stripped += 2
        if stripped:
            self.keepalives += stripped // 4
            del buffer[:stripped]
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > self.max_headers:
                raise FramingError("header section too large")
            return None
        if end > self.max_headers:
            raise FramingError("header section too large")
        head = bytes(buffer[:end])
        values = {m.group(1) for m in _CONTENT_LENGTH.finditer(head)}
        if len(values) > 1:
            raise FramingError("conflicting Content-Length headers")  # RFC 4475 mcl01
        length = 0
        if values:
            value = values.pop()
            if not value.isdigit():
                raise FramingError("bad Content-Length")
            length = int(value)
        # On streams Content-Length is mandatory (RFC 3261 §20.14); absent means no body.
        total = end + 4 + length
        if total > self.max_message:
            raise FramingError("message too large")
        if len(buffer) < total:
            return None
        message = bytes(buffer[:total])
        del buffer[:total]
        return message
